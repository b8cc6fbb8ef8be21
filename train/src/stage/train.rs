//! The `train` stage: one incremental task of one method.

use std::time::Instant;

use bsce_pipeline::exec::job::{ChildReporter, StageJob};
use bsce_stages::dataset::artefact::{MappedDataset, SplitName};
use bsce_stages::order::read_order;
use serde_json::{json, Value};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::{positions, write_json, Memory, Model, ModelInfo};
use crate::classifier::HeadSpec;
use crate::data::{augment, flip_horizontal, gather, substream, AugmentSpec, Batches};
use crate::loss;
use crate::memory::{class_mean, herding, random_selection, MemoryBudget};
use crate::method::{augment_spec, head_spec, uses_raw_features, Preset, Selection, TrainParams};
use crate::net::BackboneOut;
use crate::runtime;
use crate::{Result, StageError};

/// Images per forward pass when extracting features (no gradients).
const EXTRACT_BATCH: usize = 256;

pub fn run(job: &StageJob, reporter: &ChildReporter) -> Result<()> {
    let p: TrainParams = serde_json::from_value(job.params.clone())
        .map_err(|e| StageError::param("train", format!("bad stage params: {e}")))?;
    let device = runtime::parse_device(&job.device)?;
    reporter.provenance(
        "runtime",
        runtime::configure(device, p.deterministic, job.seed),
    );
    let input = |name: &str| {
        job.input(name)
            .ok_or_else(|| StageError::Other(format!("train stage has no {name} input")))
    };
    let ds = MappedDataset::open(input("dataset")?)?;
    let order = read_order(input("order")?)?;
    if p.end > order.classes.len() || p.start >= p.end {
        return Err(StageError::param(
            "setting",
            format!(
                "task {} learns order positions {}..{}, but the order has {} classes",
                p.task,
                p.start,
                p.end,
                order.classes.len()
            ),
        ));
    }
    let meta = &ds.meta;
    let hwc = (meta.height as i64, meta.width as i64, meta.channels as i64);
    let pos = positions(&order.classes, meta.num_classes());
    let labels = ds.labels(SplitName::Train);
    let aug = augment_spec(&p.augment, p.crop)?;
    aug.validate(hwc)?;
    let preset = p.method.preset;

    // Previous task: its model (grown below), a frozen copy for
    // distillation, and its memory.
    let (mut model, old, mut memory, mut info) = match job.input("previous") {
        Some(dir) => {
            let (model, info, memory) = Model::load(dir, device)?;
            let (mut old, _, _) = Model::load(dir, device)?;
            old.vs.freeze();
            (model, Some(old), memory, info)
        }
        None => {
            let info = ModelInfo {
                preset,
                network: p.network.clone(),
                augment: p.augment.clone(),
                crop: p.crop,
                head: head_spec(preset),
                blocks: vec![],
                classes: vec![],
            };
            (Model::build(&info, device)?, None, Memory::default(), info)
        }
    };
    if info.classes.len() != p.start {
        return Err(StageError::Other(format!(
            "previous model knows {} classes; task {} starts at {}",
            info.classes.len(),
            p.task,
            p.start
        )));
    }

    // This task's training set: every image of the new classes, plus the
    // exemplars of the old ones.
    let mut train_idx: Vec<usize> = (0..labels.len())
        .filter(|&i| (p.start..p.end).contains(&pos[labels[i] as usize]))
        .collect();
    for ex in memory.exemplars.values() {
        train_idx.extend_from_slice(ex);
    }
    train_idx.sort_unstable();
    let target_of = |i: usize| pos[labels[i] as usize] as i64;
    let mut counts = vec![0u64; p.end];
    for &i in &train_idx {
        counts[target_of(i) as usize] += 1;
    }
    reporter.provenance("class_counts", json!(counts));

    // Grow the head: new classes, imprinted from their mean features where
    // the method does so (LUCIR, PODNet from task 1 on).
    let new = (p.end - p.start) as i64;
    let feature_of = |out: &BackboneOut| {
        if uses_raw_features(preset) {
            out.raw.shallow_clone()
        } else {
            out.features.shallow_clone()
        }
    };
    let imprint = if p.task > 0 && matches!(preset, Preset::Lucir | Preset::Podnet) {
        let proxies = match info.head {
            HeadSpec::LocalSimilarity { proxies, .. } => proxies,
            _ => 1,
        };
        let mut rows = Vec::new();
        for c in p.start..p.end {
            let idx: Vec<usize> = train_idx
                .iter()
                .copied()
                .filter(|&i| target_of(i) as usize == c)
                .collect();
            let f = l2_normalise(&extract(
                &model,
                &ds,
                hwc,
                &idx,
                &aug,
                device,
                false,
                &feature_of,
            ));
            // LUCIR: the mean direction; PODNet: k-means centres, one per proxy.
            rows.push(if proxies == 1 {
                f.mean_dim(0, true, Kind::Float)
            } else {
                kmeans(&f, proxies, 20)
            });
        }
        Some(Tensor::cat(&rows, 0))
    } else {
        None
    };
    model
        .head
        .add_classes(&(model.vs.root() / "head"), new, imprint.as_ref())?;
    info.blocks.push(new);
    info.classes
        .extend_from_slice(&order.classes[p.start..p.end]);
    // Old classes' weights stay as they are in LUCIR and PODNet.
    if matches!(preset, Preset::Lucir | Preset::Podnet) {
        model.head.set_old_blocks_trainable(false);
    }

    let log_counts = loss::log_count_adjustment(&counts, device);
    let count_tensor =
        Tensor::from_slice(&counts.iter().map(|&c| c as i64).collect::<Vec<_>>()).to(device);
    let recipe = &p.recipe;
    let mut opt = nn::Sgd {
        momentum: recipe.momentum,
        dampening: 0.0,
        wd: recipe.weight_decay,
        nesterov: false,
    }
    .build(&model.vs, recipe.lr)
    .map_err(|e| StageError::Other(format!("optimizer: {e}")))?;
    let mut log: Vec<Value> = Vec::new();
    let samples: Vec<(usize, i64)> = train_idx.iter().map(|&i| (i, target_of(i))).collect();
    let mut batches = Batches::new(samples, recipe.batch_size as usize, job.seed)?;
    let batches_per_epoch = batches.batches_per_epoch();
    let total_iters = batches_per_epoch as u64 * recipe.epochs as u64;
    let mut iter = 0u64;
    for epoch in 0..recipe.epochs {
        let lr = crate::method::lr_at(recipe, epoch);
        opt.set_lr(lr);
        let started = Instant::now();
        let mut sums: std::collections::BTreeMap<&'static str, f64> = Default::default();
        let mut seen = 0usize;
        for (b, batch) in batches.epoch(epoch as u64).enumerate() {
            let x = augment(
                &gather(ds.images(SplitName::Train), hwc, batch.indices, device),
                &aug,
                true,
                batch.augment_seed,
            );
            let y = Tensor::from_slice(batch.labels).to(device);
            let out = model.backbone.forward_t(&x, true);
            let logits = model.head.forward(&feature_of(&out));
            let old_out = old.as_ref().map(|o| {
                tch::no_grad(|| {
                    let oo = o.backbone.forward_t(&x, false);
                    let ol = o.head.forward(&feature_of(&oo));
                    (oo, ol)
                })
            });
            let terms = task_loss(
                &p,
                &model,
                &out,
                &logits,
                &y,
                old_out.as_ref(),
                &count_tensor,
                &log_counts,
                &feature_of,
            )?;
            let total = terms
                .iter()
                .fold(Tensor::zeros([], (Kind::Float, device)), |acc, (_, t)| {
                    acc + t
                });
            opt.backward_step(&total);
            for (name, t) in &terms {
                *sums.entry(name).or_default() += t.double_value(&[]) * batch.indices.len() as f64;
            }
            seen += batch.indices.len();
            iter += 1;
            if b % 10 == 0 || b + 1 == batches_per_epoch {
                reporter.progress(
                    iter,
                    Some(total_iters),
                    &format!("iterations (epoch {}/{})", epoch + 1, recipe.epochs),
                );
            }
        }
        let mut entry = json!({"epoch": epoch, "lr": lr, "seconds": started.elapsed().as_secs_f64(),
                   "device": job.device});
        for (k, v) in sums {
            entry[k] = json!(v / seen.max(1) as f64);
        }
        log.push(entry);
    }

    if p.method.balanced_finetune && p.task > 0 {
        balanced_finetune(
            &p,
            job.seed,
            &mut model,
            &ds,
            hwc,
            &aug,
            device,
            &train_idx,
            &target_of,
            &feature_of,
            &mut log,
        )?;
    }

    // Memory: exemplars for the new classes, old classes cut to the budget.
    let budget = match (p.method.memory_per_class, p.method.memory_total) {
        (_, Some(total)) => Some(MemoryBudget::Total(total)),
        (Some(n), None) => Some(MemoryBudget::PerClass(n)),
        (None, None) => None,
    };
    if let Some(budget) = budget {
        let m = budget.per_class(p.end);
        for ex in memory.exemplars.values_mut() {
            ex.truncate(m);
        }
        for c in p.start..p.end {
            let idx: Vec<usize> = (0..labels.len())
                .filter(|&i| target_of(i) as usize == c)
                .collect();
            let chosen = match p.method.selection {
                Selection::Herding => {
                    let f = extract(&model, &ds, hwc, &idx, &aug, device, false, &feature_of);
                    herding(&f, m)
                }
                Selection::Random => random_selection(idx.len(), m, substream(job.seed, c as u64)),
            };
            memory
                .exemplars
                .insert(c, chosen.into_iter().map(|k| idx[k]).collect());
        }
    }
    // NME class means from exemplars (with flipped copies). A method that
    // keeps no memory has no old images any more: its old classes keep the
    // means computed when they were learnt, and new classes use all their
    // images, which this task has.
    let previous_means = std::mem::take(&mut memory.class_means);
    let mut means = Vec::with_capacity(p.end);
    for c in 0..p.end {
        let idx: Vec<usize> = match memory.exemplars.get(&c) {
            Some(ex) if !ex.is_empty() => ex.clone(),
            _ if c < p.start => {
                let old = previous_means.get(c).cloned().ok_or_else(|| {
                    StageError::Other(format!(
                        "previous memory has no exemplars nor mean for class {c}"
                    ))
                })?;
                means.push(old);
                continue;
            }
            _ => (0..labels.len())
                .filter(|&i| target_of(i) as usize == c)
                .collect(),
        };
        let f = extract(&model, &ds, hwc, &idx, &aug, device, false, &feature_of);
        let ff = extract(&model, &ds, hwc, &idx, &aug, device, true, &feature_of);
        means.push(
            Vec::<f32>::try_from(class_mean(&f, Some(&ff)).to_device(Device::Cpu))
                .unwrap_or_default(),
        );
    }
    memory.class_means = means;

    crate::checkpoint::save(&model.vs, &job.out_dir.join("model.safetensors"))?;
    write_json(&job.out_dir.join("model.json"), &info)?;
    write_json(&job.out_dir.join("memory.json"), &memory)?;
    write_json(
        &job.out_dir.join(bsce_pipeline::registry::files::TRAIN_LOG),
        &log,
    )?;
    Ok(())
}

/// The loss terms of one batch, named for the log.
#[allow(clippy::too_many_arguments)]
fn task_loss(
    p: &TrainParams,
    model: &Model,
    out: &BackboneOut,
    logits: &Tensor,
    y: &Tensor,
    old: Option<&(BackboneOut, Tensor)>,
    counts: &Tensor,
    log_counts: &Tensor,
    feature_of: &dyn Fn(&BackboneOut) -> Tensor,
) -> Result<Vec<(&'static str, Tensor)>> {
    let bsce = p.method.bsce;
    let (start, end) = (p.start as i64, p.end as i64);
    let classification = |logits: &Tensor| {
        if bsce {
            ("bsce", loss::balanced_softmax(logits, y, counts))
        } else {
            ("ce", loss::cross_entropy(logits, y))
        }
    };
    let mut terms = Vec::new();
    match p.method.preset {
        Preset::Finetune => terms.push(classification(logits)),
        Preset::Icarl => match (bsce, old) {
            (true, Some((_, old_logits))) => {
                terms.push(classification(logits));
                terms.push((
                    "kd",
                    loss::kd_logits(
                        &logits.narrow(1, 0, start),
                        old_logits,
                        loss::icarl::KD_TEMPERATURE,
                    ),
                ));
            }
            (true, None) => terms.push(classification(logits)),
            (false, old) => {
                terms.push(("bce", loss::icarl_bce(logits, y, old.map(|o| &o.1), start)))
            }
        },
        Preset::Lucir => {
            terms.push(classification(logits));
            if let Some((old_out, _)) = old {
                let lambda = loss::lucir_lambda(loss::lucir::LESS_FORGET_BASE, start, end - start);
                terms.push((
                    "less_forget",
                    loss::lucir_less_forget(&feature_of(out), &feature_of(old_out), lambda),
                ));
                let cos = model.head.similarities(&feature_of(out));
                terms.push((
                    "margin_ranking",
                    loss::lucir_margin_ranking(
                        &cos,
                        y,
                        start,
                        loss::lucir::MARGIN_RANKING_K,
                        loss::lucir::MARGIN,
                    ),
                ));
            }
        }
        Preset::Podnet => {
            let eta = model
                .head
                .scale()
                .unwrap_or_else(|| Tensor::ones([], (Kind::Float, logits.device())));
            let adj = bsce.then_some(log_counts);
            terms.push((
                "nca",
                loss::podnet_nca(logits, y, &eta, loss::podnet::NCA_MARGIN, true, adj),
            ));
            if let Some((old_out, _)) = old {
                terms.push((
                    "pod_flat",
                    loss::pod_flat(&out.raw, &old_out.raw)
                        * loss::pod_factor(loss::podnet::POD_FLAT_FACTOR, end, end - start),
                ));
                terms.push((
                    "pod_spatial",
                    loss::pod_spatial(&out.attention, &old_out.attention)
                        * loss::pod_factor(loss::podnet::POD_SPATIAL_FACTOR, end, end - start),
                ));
            }
        }
    }
    Ok(terms)
}

fn l2_normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}

/// `k` centres of `points` ([n, d]) by Lloyd's algorithm, started from `k`
/// evenly spaced points so the result is deterministic; an empty cluster
/// keeps its previous centre.
fn kmeans(points: &Tensor, k: i64, iterations: usize) -> Tensor {
    let n = points.size()[0];
    let start: Vec<i64> = (0..k).map(|j| (j * n / k).min(n - 1)).collect();
    let mut centres = points.index_select(0, &Tensor::from_slice(&start).to(points.device()));
    for _ in 0..iterations {
        let assign = Tensor::cdist(points, &centres, 2.0, None).argmin(1, false);
        let mut next = Vec::with_capacity(k as usize);
        for j in 0..k {
            let members = points.index_select(0, &assign.eq(j).nonzero().squeeze_dim(1));
            next.push(if members.size()[0] == 0 {
                centres.get(j)
            } else {
                members.mean_dim(0, false, Kind::Float)
            });
        }
        centres = Tensor::stack(&next, 0);
    }
    centres
}

/// Features of `idx` training images in eval mode, batch by batch.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    model: &Model,
    ds: &MappedDataset,
    hwc: (i64, i64, i64),
    idx: &[usize],
    aug: &AugmentSpec,
    device: Device,
    flipped: bool,
    feature_of: &dyn Fn(&BackboneOut) -> Tensor,
) -> Tensor {
    tch::no_grad(|| {
        let parts: Vec<Tensor> = idx
            .chunks(EXTRACT_BATCH)
            .map(|chunk| {
                let mut x = augment(
                    &gather(ds.images(SplitName::Train), hwc, chunk, device),
                    aug,
                    false,
                    0,
                );
                if flipped {
                    x = flip_horizontal(&x);
                }
                feature_of(&model.backbone.forward_t(&x, false))
            })
            .collect();
        Tensor::cat(&parts, 0)
    })
}

/// Class-balanced fine-tuning of the classifier only (PODNet's 20 epochs
/// on balanced memory, LUCIR's CBF): every class cut to the smallest
/// class's count, 1/8 of the recipe's epochs, lr/10.
#[allow(clippy::too_many_arguments)]
fn balanced_finetune(
    p: &TrainParams,
    job_seed: u64,
    model: &mut Model,
    ds: &MappedDataset,
    hwc: (i64, i64, i64),
    aug: &AugmentSpec,
    device: Device,
    train_idx: &[usize],
    target_of: &dyn Fn(usize) -> i64,
    feature_of: &dyn Fn(&BackboneOut) -> Tensor,
    log: &mut Vec<Value>,
) -> Result<()> {
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); p.end];
    for &i in train_idx {
        per_class[target_of(i) as usize].push(i);
    }
    let m = per_class
        .iter()
        .map(Vec::len)
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(0);
    let balanced: Vec<usize> = per_class
        .iter()
        .flat_map(|v| v.iter().take(m).copied())
        .collect();
    let epochs = (p.recipe.epochs / 8).max(1);
    let lr = p.recipe.lr / 10.0;
    let mut opt = nn::Sgd {
        momentum: p.recipe.momentum,
        dampening: 0.0,
        wd: p.recipe.weight_decay,
        nesterov: false,
    }
    .build(&model.vs, lr)
    .map_err(|e| StageError::Other(format!("optimizer: {e}")))?;
    // Only the classifier learns: the backbone is frozen for the phase.
    let backbone: Vec<Tensor> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with("backbone."))
        .map(|(_, v)| v)
        .collect();
    for v in &backbone {
        let _ = v.set_requires_grad(false);
    }
    model.head.set_old_blocks_trainable(true);
    let samples: Vec<(usize, i64)> = balanced.iter().map(|&i| (i, target_of(i))).collect();
    let mut batches = Batches::new(samples, p.recipe.batch_size as usize, job_seed ^ 0xba1a)?;
    for epoch in 0..epochs {
        let started = Instant::now();
        let mut sum = 0.0;
        for batch in batches.epoch(epoch as u64) {
            let x = augment(
                &gather(ds.images(SplitName::Train), hwc, batch.indices, device),
                aug,
                true,
                batch.augment_seed,
            );
            let y = Tensor::from_slice(batch.labels).to(device);
            let feats = tch::no_grad(|| feature_of(&model.backbone.forward_t(&x, false)));
            let logits = model.head.forward(&feats);
            let l = loss::cross_entropy(&logits, &y);
            opt.backward_step(&l);
            sum += l.double_value(&[]) * batch.indices.len() as f64;
        }
        log.push(
            json!({"finetune_epoch": epoch, "lr": lr, "ce": sum / balanced.len().max(1) as f64,
                         "seconds": started.elapsed().as_secs_f64()}),
        );
    }
    for v in &backbone {
        let _ = v.set_requires_grad(true);
    }
    Ok(())
}
