//! The `train` stage: one incremental task of one method.

use std::time::Instant;

use bsce_pipeline::exec::job::{ChildReporter, StageJob};
use bsce_pipeline::registry::files;
use bsce_stages::dataset::artefact::{MappedDataset, SplitName};
use bsce_stages::order::read_order;
use bsce_stages::task_artefacts::{finite, EpochLog, LogEntry, TrainLog};
use serde_json::json;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::steps::{
    classification, classifier_input, extract, freeze_unlearned_scale, images_of_class,
    keeps_margin_ranking, sgd_step,
};
use super::{positions, tapped, write_json, Memory, Model, ModelInfo};
use crate::classifier::HeadSpec;
use crate::data::{load, substream, Batches, Shape};
use crate::loss;
use crate::memory::{class_mean, herding, random_selection, MemoryBudget};
use crate::method::{augment_spec, Preset, Selection, TrainParams};
use crate::net::BackboneOut;
use crate::runtime;
use crate::{Result, StageError};
use bsce_pipeline::params::IcarlDistillation;
use bsce_stages::tensorboard::LiveEvents;

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
    let pos = positions(&order.classes, meta.num_classes());
    let labels = ds.labels(SplitName::Train);
    let aug = augment_spec(p.augment, p.crop, p.normalize.as_ref())?;
    aug.validate(Shape::of(meta))?;
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
            let info = ModelInfo::untrained(&p);
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
    // Every choice this task's computation reads (hyper-parameters,
    // fine-tuning, BSCE combination, feature tap), as the plan resolved it.
    reporter.provenance("method", json!(p.method));

    // Grow the head: new classes, imprinted from their mean features where
    // the method does so (LUCIR, PODNet from task 1 on).
    // The classifier's input, and the features herding and NME use.
    let feature_of = |out: &BackboneOut| classifier_input(preset, out);
    let tap = p.method.features;
    info.features = Some(tap);
    let memory_feature_of = |out: &BackboneOut| tapped(out, tap);
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
    grow(&p, &mut model, &mut info, imprint.as_ref())?;
    info.classes
        .extend_from_slice(&order.classes[p.start..p.end]);

    let log_counts = loss::log_count_adjustment(&counts, device);
    let count_tensor =
        Tensor::from_slice(&counts.iter().map(|&c| c as i64).collect::<Vec<_>>()).to(device);
    let recipe = &p.recipe;
    let mut opt = optimizer(&p, &model)?;
    let mut log: TrainLog = Vec::new();
    let mut live = LiveEvents::open(&job.live, p.task, &format!("{:016x}", job.seed));
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
            let x = load(
                ds.images(SplitName::Train),
                batch.indices,
                &aug,
                true,
                batch.augment_seed,
                device,
            );
            let y = Tensor::from_slice(batch.labels).to(device);
            let terms = main_step(
                &p,
                &model,
                old.as_ref(),
                &x,
                &y,
                &count_tensor,
                &log_counts,
                &feature_of,
                &mut opt,
            )?;
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
        log.push(LogEntry::Epoch(EpochLog {
            epoch,
            lr,
            seconds: started.elapsed().as_secs_f64(),
            device: job.device.clone(),
            losses: sums
                .into_iter()
                .map(|(k, v)| (k.to_string(), finite(v / seen.max(1) as f64)))
                .collect(),
        }));
        live.update(&log);
    }

    // Memory budget: m exemplars per class once this task's classes are in.
    let budget = match (p.method.memory_per_class, p.method.memory_total) {
        (_, Some(total)) => Some(MemoryBudget::Total(total)),
        (Some(n), None) => Some(MemoryBudget::PerClass(n)),
        (None, None) => None,
    };
    if let (true, Some(spec)) = (p.method.balanced_finetune && p.task > 0, &p.method.finetune) {
        let m = budget.map(|b| b.per_class(p.end)).ok_or_else(|| {
            StageError::param(
                "method.balanced_finetune",
                "needs a memory: its balanced set is m exemplars per class",
            )
        })?;
        super::finetune::run(
            &super::finetune::Finetune {
                p: &p,
                spec,
                seed: job.seed,
                ds: &ds,
                aug: &aug,
                device,
                per_class: m,
                old_exemplars: &memory.exemplars,
                counts: &count_tensor,
                log_counts: &log_counts,
                feature_of: &feature_of,
                memory_feature_of: &memory_feature_of,
                target_of: &target_of,
                labels,
            },
            &mut model,
            &mut log,
            &mut live,
        )?;
    }

    // Memory: exemplars for the new classes, old classes cut to the budget.
    if let Some(budget) = budget {
        let m = budget.per_class(p.end);
        for ex in memory.exemplars.values_mut() {
            ex.truncate(m);
        }
        for c in p.start..p.end {
            let idx = images_of_class(labels.len(), &target_of, c);
            let chosen = match p.method.selection {
                Selection::Herding => {
                    let f = extract(&model, &ds, &idx, &aug, device, false, &memory_feature_of);
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
            _ => images_of_class(labels.len(), &target_of, c),
        };
        let f = extract(&model, &ds, &idx, &aug, device, false, &memory_feature_of);
        let ff = extract(&model, &ds, &idx, &aug, device, true, &memory_feature_of);
        means.push(
            Vec::<f32>::try_from(class_mean(&f, Some(&ff)).to_device(Device::Cpu))
                .unwrap_or_default(),
        );
    }
    memory.class_means = means;

    // A run's curve steps through its tasks' entries by this count (live
    // and in the report): a log of another length would misplace them.
    if log.len() as u64 != p.log_entries() {
        return Err(StageError::Other(format!(
            "internal: log.json has {} entries where TrainParams::log_entries says {}",
            log.len(),
            p.log_entries()
        )));
    }
    crate::checkpoint::save(&model.vs, &job.out_dir.join(files::WEIGHTS))?;
    write_json(&job.out_dir.join(files::MODEL), &info)?;
    write_json(&job.out_dir.join(files::MEMORY), &memory)?;
    write_json(&job.out_dir.join(files::TRAIN_LOG), &log)?;
    Ok(())
}

/// A preset's hyper-parameter, which the plan always sets for it.
pub(super) fn hyper(value: Option<f64>, name: &str) -> Result<f64> {
    value.ok_or_else(|| {
        StageError::param(
            format!("method.hyper.{name}"),
            "missing: the plan sets it for this preset",
        )
    })
}

/// Grows the head by this task's classes (imprinted where the method does
/// so) and freezes what the method keeps: old class weights in LUCIR and
/// PODNet, an unlearned scale.
pub fn grow(
    p: &TrainParams,
    model: &mut Model,
    info: &mut ModelInfo,
    imprint: Option<&Tensor>,
) -> Result<()> {
    let new = (p.end - p.start) as i64;
    model
        .head
        .add_classes(&(model.vs.root() / "head"), new, imprint)?;
    info.blocks.push(new);
    // Old classes' weights stay as they are in LUCIR and PODNet.
    if matches!(p.method.preset, Preset::Lucir | Preset::Podnet) {
        model.head.set_old_blocks_trainable(false);
    }
    freeze_unlearned_scale(p, model);
    Ok(())
}

/// The main phase's optimiser: SGD with the recipe's momentum and weight
/// decay over the trainable variables.
pub fn optimizer(p: &TrainParams, model: &Model) -> Result<nn::Optimizer> {
    nn::Sgd {
        momentum: p.recipe.momentum,
        dampening: 0.0,
        wd: p.recipe.weight_decay,
        nesterov: false,
    }
    .build(&model.vs, p.recipe.lr)
    .map_err(|e| StageError::Other(format!("optimizer: {e}")))
}

/// One step of the main phase on a batch `x` (network input) with labels
/// `y`: the model in train mode, the old model (if any) in eval mode
/// without gradients, the preset's loss terms, one SGD step on their sum.
#[allow(clippy::too_many_arguments)]
pub fn main_step(
    p: &TrainParams,
    model: &Model,
    old: Option<&Model>,
    x: &Tensor,
    y: &Tensor,
    counts: &Tensor,
    log_counts: &Tensor,
    feature_of: &dyn Fn(&BackboneOut) -> Tensor,
    opt: &mut nn::Optimizer,
) -> Result<Vec<(&'static str, Tensor)>> {
    let out = model.backbone.forward_t(x, true);
    let logits = model.head.forward(&feature_of(&out));
    let old_out = old.map(|o| {
        tch::no_grad(|| {
            let oo = o.backbone.forward_t(x, false);
            let ol = o.head.forward(&feature_of(&oo));
            (oo, ol)
        })
    });
    let terms = task_loss(
        p,
        model,
        &out,
        &logits,
        y,
        old_out.as_ref(),
        counts,
        log_counts,
        feature_of,
    )?;
    let total = terms.iter().fold(
        Tensor::zeros([], (Kind::Float, x.device())),
        |acc, (_, t)| acc + t,
    );
    sgd_step(opt, &model.vs, &total, p.method.hyper.gradient_clamp);
    Ok(terms)
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
    let choices = p.method.bsce_choices.clone().unwrap_or_default();
    let (start, end) = (p.start as i64, p.end as i64);
    let mut terms = vec![];
    match p.method.preset {
        Preset::Finetune => terms.push(classification(p, model, logits, y, counts, log_counts)),
        Preset::Icarl if bsce => {
            terms.push(classification(p, model, logits, y, counts, log_counts));
            if let Some((_, old_logits)) = old {
                let student = logits.narrow(1, 0, start);
                terms.push(match choices.icarl_distillation {
                    Some(IcarlDistillation::SigmoidBce { weight }) => (
                        "kd_bce",
                        loss::icarl::sigmoid_distillation(&student, old_logits) * weight,
                    ),
                    Some(IcarlDistillation::SoftmaxKd {
                        temperature,
                        weight,
                    }) => (
                        "kd",
                        loss::kd_logits(&student, old_logits, temperature) * weight,
                    ),
                    None => {
                        return Err(StageError::param(
                            "method.bsce_choices.icarl_distillation",
                            "missing: the plan sets it for iCaRL+BSCE after the base task",
                        ))
                    }
                });
            }
        }
        Preset::Icarl => terms.push(("bce", loss::icarl_bce(logits, y, old.map(|o| &o.1), start))),
        Preset::Lucir => {
            terms.push(classification(p, model, logits, y, counts, log_counts));
            if let Some((old_out, _)) = old {
                let base = hyper(p.method.hyper.less_forget, "less_forget")?;
                let lambda = loss::lucir_lambda(base, start, end - start);
                terms.push((
                    "less_forget",
                    loss::lucir_less_forget(&feature_of(out), &feature_of(old_out), lambda),
                ));
                if keeps_margin_ranking(p) {
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
        }
        Preset::Podnet => {
            terms.push(classification(p, model, logits, y, counts, log_counts));
            if let Some((old_out, _)) = old {
                let flat = hyper(p.method.hyper.pod_flat, "pod_flat")?;
                let spatial = hyper(p.method.hyper.pod_spatial, "pod_spatial")?;
                terms.push((
                    "pod_flat",
                    loss::pod_flat(&out.raw, &old_out.raw)
                        * loss::pod_factor(flat, end, end - start),
                ));
                terms.push((
                    "pod_spatial",
                    loss::pod_spatial(&out.attention, &old_out.attention)
                        * loss::pod_factor(spatial, end, end - start),
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
