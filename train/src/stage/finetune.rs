//! Class-balanced fine-tuning after a task's main training, as each
//! reference does it. The numbers (epochs, lr, milestones) come with the
//! params (`FinetuneSpec`, defaults in `pipeline/src/config/presets.rs`);
//! what is trained, with which loss, in which BatchNorm mode, is here.
//!
//! Both build the balanced set the same way: m exemplars per seen class,
//! the old classes' first m in their stored herding order, the new classes
//! herded now with the network just trained. Training augmentation,
//! shuffled, the recipe's batch size, SGD with momentum and the recipe's
//! weight decay.
//!
//! PODNet (A `inclearn/models/podnet.py` `PODNet._train_task`, yaml
//! `finetuning_config: {sampling: undersampling, tuning: classifier}`):
//! - trained: every proxy block, old and new
//!   (`self._network.classifier.parameters()`); neither η nor the convnet
//!   is in the optimiser;
//! - BatchNorm in training mode: the network stays in `train()`, so the
//!   running statistics are re-estimated on the balanced set;
//! - loss: `_compute_loss`, NCA on the η-scaled logits. Its POD terms have
//!   no gradient into the classifier, so they are not computed here;
//! - constant lr (`self._scheduler = None`); the gradient clamp stays on.
//!
//! LUCIR (L `cbf_class_incremental_cosine_imagenet.py` with `--ft_flag 2`,
//! training through `incremental_train_and_eval_MR_LF.py` with
//! `fix_bn=True`):
//! - trained: the old and new class embeddings (`fc1`, `fc2`); σ is in no
//!   parameter group and the backbone has lr 0;
//! - BatchNorm in eval mode;
//! - loss: the full one, CE on σ·cos plus margin ranking on the raw
//!   cosines. Less-forget compares features, which a frozen backbone
//!   cannot change, so it has no gradient here and is not computed;
//! - lr 0.01, times 0.1 at epoch 10 (`--ft_lr_strat [10]`).

use std::collections::BTreeMap;
use std::time::Instant;

use bsce_stages::dataset::artefact::{MappedDataset, SplitName};
use bsce_stages::task_artefacts::{finite, FinetuneLog, LogEntry, TrainLog};
use bsce_stages::tensorboard::LiveEvents;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::steps::{
    classification, extract, freeze_unlearned_scale, images_of_class, keeps_margin_ranking,
    sgd_step,
};
use super::Model;
use crate::data::{load, AugmentSpec, Batches};
use crate::loss;
use crate::memory::herding;
use crate::method::{FinetuneSpec, Preset, TrainParams};
use crate::net::BackboneOut;
use crate::{Result, StageError};

/// What fine-tuning reads of the task that precedes it.
pub struct Finetune<'a> {
    pub p: &'a TrainParams,
    pub spec: &'a FinetuneSpec,
    pub seed: u64,
    pub ds: &'a MappedDataset,
    pub aug: &'a AugmentSpec,
    pub device: Device,
    /// m: exemplars per class in the balanced set.
    pub per_class: usize,
    /// The previous task's memory (incremental class -> exemplars, in
    /// herding order).
    pub old_exemplars: &'a BTreeMap<usize, Vec<usize>>,
    pub counts: &'a Tensor,
    pub log_counts: &'a Tensor,
    /// The classifier's input, and the features herding uses.
    pub feature_of: &'a dyn Fn(&BackboneOut) -> Tensor,
    pub memory_feature_of: &'a dyn Fn(&BackboneOut) -> Tensor,
    pub target_of: &'a dyn Fn(usize) -> i64,
    pub labels: &'a [u16],
}

/// The lr of fine-tuning epoch `epoch`: `lr * gamma^(milestones passed)`.
pub fn lr_at(spec: &FinetuneSpec, epoch: u32) -> f64 {
    let passed = spec.milestones.iter().filter(|&&m| epoch >= m).count() as i32;
    spec.lr * spec.gamma.powi(passed)
}

/// The balanced set: per class in `0..end`, the first `m` old exemplars
/// or, for a new class (`start..end`), its first `m` images in herding
/// order under `herd` (which ranks a class's image indices).
pub fn balanced_set(
    start: usize,
    end: usize,
    m: usize,
    old_exemplars: &BTreeMap<usize, Vec<usize>>,
    mut herd: impl FnMut(usize) -> Result<Vec<usize>>,
) -> Result<Vec<(usize, i64)>> {
    let mut set = Vec::with_capacity(end * m);
    for c in 0..end {
        let chosen = if c < start {
            old_exemplars.get(&c).cloned().ok_or_else(|| {
                StageError::Other(format!(
                    "balanced fine-tuning: the previous memory has no exemplars for class {c}"
                ))
            })?
        } else {
            herd(c)?
        };
        set.extend(chosen.into_iter().take(m).map(|i| (i, c as i64)));
    }
    Ok(set)
}

/// Only the class weights learn, old classes' included: the backbone and
/// the scale (η, σ) are frozen. Returns the variables it froze, to be
/// unfrozen after the phase.
pub fn freeze_all_but_class_weights(model: &mut Model) -> Vec<Tensor> {
    let blocks: Vec<_> = model
        .head
        .block_parameters()
        .iter()
        .map(Tensor::data_ptr)
        .collect();
    let frozen: Vec<Tensor> = model
        .vs
        .trainable_variables()
        .into_iter()
        .filter(|v| !blocks.contains(&v.data_ptr()))
        .collect();
    for v in &frozen {
        let _ = v.set_requires_grad(false);
    }
    model.head.set_old_blocks_trainable(true);
    frozen
}

/// Fine-tuning's optimiser: the recipe's momentum and weight decay at the
/// phase's own learning rate.
pub fn optimizer(p: &TrainParams, spec: &FinetuneSpec, model: &Model) -> Result<nn::Optimizer> {
    nn::Sgd {
        momentum: p.recipe.momentum,
        dampening: 0.0,
        wd: p.recipe.weight_decay,
        nesterov: false,
    }
    .build(&model.vs, spec.lr)
    .map_err(|e| StageError::Other(format!("optimizer: {e}")))
}

/// PODNet re-estimates BatchNorm statistics on the balanced set; LUCIR
/// keeps them.
pub fn bn_train(preset: Preset) -> bool {
    preset == Preset::Podnet
}

/// One fine-tuning step on a batch: features without gradients, the
/// classification term (and LUCIR's margin ranking), one SGD step.
#[allow(clippy::too_many_arguments)]
pub fn finetune_step(
    p: &TrainParams,
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    bn_train: bool,
    counts: &Tensor,
    log_counts: &Tensor,
    feature_of: &dyn Fn(&BackboneOut) -> Tensor,
    opt: &mut nn::Optimizer,
) -> Vec<(&'static str, Tensor)> {
    let feats = tch::no_grad(|| feature_of(&model.backbone.forward_t(x, bn_train)));
    let logits = model.head.forward(&feats);
    let mut terms = vec![classification(p, model, &logits, y, counts, log_counts)];
    if p.method.preset == Preset::Lucir && keeps_margin_ranking(p) {
        terms.push((
            "margin_ranking",
            loss::lucir_margin_ranking(
                &model.head.similarities(&feats),
                y,
                p.start as i64,
                loss::lucir::MARGIN_RANKING_K,
                loss::lucir::MARGIN,
            ),
        ));
    }
    let total = terms.iter().fold(
        Tensor::zeros([], (Kind::Float, x.device())),
        |acc, (_, t)| acc + t,
    );
    sgd_step(opt, &model.vs, &total, p.method.hyper.gradient_clamp);
    terms
}

pub fn run(
    f: &Finetune<'_>,
    model: &mut Model,
    log: &mut TrainLog,
    live: &mut LiveEvents,
) -> Result<()> {
    let p = f.p;
    let preset = p.method.preset;
    if !matches!(preset, Preset::Lucir | Preset::Podnet) {
        return Err(StageError::param(
            "method.balanced_finetune",
            format!("{preset:?} has no class-balanced fine-tuning"),
        ));
    }
    let samples = balanced_set(p.start, p.end, f.per_class, f.old_exemplars, |c| {
        let idx = images_of_class(f.labels.len(), f.target_of, c);
        let feats = extract(
            model,
            f.ds,
            &idx,
            f.aug,
            f.device,
            false,
            f.memory_feature_of,
        );
        Ok(herding(&feats, f.per_class)
            .into_iter()
            .map(|k| idx[k])
            .collect())
    })?;
    let size = samples.len();

    let frozen = freeze_all_but_class_weights(model);
    let mut opt = optimizer(p, f.spec, model)?;
    let bn_train = bn_train(preset);
    let mut batches = Batches::new(samples, p.recipe.batch_size as usize, f.seed ^ 0xba1a)?;
    for epoch in 0..f.spec.epochs {
        let lr = lr_at(f.spec, epoch);
        opt.set_lr(lr);
        let started = Instant::now();
        let mut sums: BTreeMap<&'static str, f64> = BTreeMap::new();
        for batch in batches.epoch(epoch as u64) {
            let x = load(
                f.ds.images(SplitName::Train),
                batch.indices,
                f.aug,
                true,
                batch.augment_seed,
                f.device,
            );
            let y = Tensor::from_slice(batch.labels).to(f.device);
            let terms = finetune_step(
                p,
                model,
                &x,
                &y,
                bn_train,
                f.counts,
                f.log_counts,
                f.feature_of,
                &mut opt,
            );
            for (name, t) in &terms {
                *sums.entry(name).or_default() += t.double_value(&[]) * batch.indices.len() as f64;
            }
        }
        log.push(LogEntry::Finetune(FinetuneLog {
            finetune_epoch: epoch,
            lr,
            images: size,
            seconds: started.elapsed().as_secs_f64(),
            losses: sums
                .into_iter()
                .map(|(k, v)| (k.to_string(), finite(v / size.max(1) as f64)))
                .collect(),
        }));
        live.update(log);
    }
    for v in &frozen {
        let _ = v.set_requires_grad(true);
    }
    // Back to the main phase's freezing for whoever reads the model next.
    model.head.set_old_blocks_trainable(false);
    freeze_unlearned_scale(p, model);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::HeadSpec;
    use crate::method::{augment_spec, Augmentation, MethodParams, Recipe, Schedule, Selection};
    use crate::stage::ModelInfo;
    use bsce_pipeline::params::{FeatureTap, MethodHyper};
    use bsce_stages::dataset::synthetic::{generate, SyntheticSpec};

    /// Fine-tunes a tiny two-task model (4 classes, 2 old) on a synthetic
    /// set; returns every variable before and after, and the log.
    fn finetune(
        preset: Preset,
        head: HeadSpec,
        hyper: MethodHyper,
    ) -> (
        BTreeMap<String, Tensor>,
        BTreeMap<String, Tensor>,
        Vec<serde_json::Value>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let data = generate(&SyntheticSpec {
            classes: 4,
            train_per_class: 10,
            test_per_class: 1,
            image_size: 8,
            seed: 3,
        })
        .unwrap();
        data.write(dir.path()).unwrap();
        let ds = MappedDataset::open(dir.path()).unwrap();
        let info = ModelInfo {
            preset,
            network: crate::method::Network::Tiny,
            augment: Augmentation::CifarPodnet,
            crop: None,
            normalize: None,
            head,
            blocks: vec![2, 2],
            classes: vec![0, 1, 2, 3],
            features: Some(FeatureTap::PreActivation),
        };
        let mut model = Model::build(&info, Device::Cpu).unwrap();
        let spec = FinetuneSpec {
            epochs: 2,
            lr: 0.05,
            milestones: vec![1],
            gamma: 0.1,
        };
        let p = TrainParams {
            task: 1,
            start: 2,
            end: 4,
            method: MethodParams {
                preset,
                bsce: false,
                balanced_finetune: true,
                memory_per_class: Some(3),
                memory_total: None,
                selection: Selection::Herding,
                features: FeatureTap::PreActivation,
                hyper,
                finetune: Some(spec.clone()),
                bsce_choices: None,
            },
            recipe: Recipe {
                epochs: 1,
                batch_size: 4,
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 5e-4,
                schedule: Schedule::Constant,
                milestones: vec![],
                gamma: 0.1,
            },
            network: crate::method::Network::Tiny,
            augment: Augmentation::CifarPodnet,
            crop: None,
            normalize: None,
            seed: 1,
            deterministic: true,
        };
        let labels = ds.labels(SplitName::Train).to_vec();
        let old: BTreeMap<usize, Vec<usize>> = (0..2)
            .map(|c| {
                (
                    c,
                    (0..labels.len())
                        .filter(|&i| labels[i] as usize == c)
                        .collect(),
                )
            })
            .collect();
        let aug = augment_spec(Augmentation::CifarPodnet, None, None).unwrap();
        let raw = |o: &BackboneOut| o.raw.shallow_clone();
        let target = |i: usize| labels[i] as i64;
        let counts = Tensor::from_slice(&[3i64; 4]);
        let log_counts = loss::log_count_adjustment(&[3; 4], Device::Cpu);
        let snapshot = |m: &Model| -> BTreeMap<String, Tensor> {
            m.vs.variables()
                .into_iter()
                .map(|(k, v)| (k, v.copy()))
                .collect()
        };
        let before = snapshot(&model);
        let mut log = vec![];
        run(
            &Finetune {
                p: &p,
                spec: &spec,
                seed: 1,
                ds: &ds,
                aug: &aug,
                device: Device::Cpu,
                per_class: 3,
                old_exemplars: &old,
                counts: &counts,
                log_counts: &log_counts,
                feature_of: &raw,
                memory_feature_of: &raw,
                target_of: &target,
                labels: &labels,
            },
            &mut model,
            &mut log,
            &mut LiveEvents::none(),
        )
        .unwrap();
        // As the result stages see it.
        let log = serde_json::from_value(serde_json::to_value(&log).unwrap()).unwrap();
        (before, snapshot(&model), log)
    }

    fn changed(before: &BTreeMap<String, Tensor>, after: &BTreeMap<String, Tensor>) -> Vec<String> {
        before
            .iter()
            .filter(|(k, v)| !v.equal(&after[*k]))
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[test]
    fn podnet_tunes_every_proxy_with_batchnorm_in_training_mode() {
        let (before, after, log) = finetune(
            Preset::Podnet,
            HeadSpec::LocalSimilarity {
                proxies: 2,
                scaling: 1.0,
            },
            MethodHyper {
                learned_scale: Some(true),
                gradient_clamp: Some(5.0),
                ..Default::default()
            },
        );
        let changed = changed(&before, &after);
        // A `podnet.py`: old and new proxies learn; η and the convnet's
        // weights do not, its BatchNorm statistics do (train mode).
        assert!(
            changed.iter().any(|k| k == "head.block0.weight"),
            "{changed:?}"
        );
        assert!(
            changed.iter().any(|k| k == "head.block1.weight"),
            "{changed:?}"
        );
        assert!(!changed.iter().any(|k| k == "head.eta"), "{changed:?}");
        assert!(
            changed.iter().any(|k| k.ends_with("running_mean")),
            "{changed:?}"
        );
        assert!(
            changed.iter().all(|k| k.starts_with("head.block")
                || k.contains("running_")
                || k.contains("num_batches")),
            "only proxies and BatchNorm statistics change: {changed:?}"
        );
        assert_eq!(log.len(), 2);
        assert_eq!(log[0]["images"], 12, "3 per class x 4 classes");
        assert!(log[0]["nca"].as_f64().unwrap().is_finite());
        assert_eq!(log[0]["lr"], 0.05);
        assert!((log[1]["lr"].as_f64().unwrap() - 0.005).abs() < 1e-12);
    }

    #[test]
    fn lucir_tunes_the_embeddings_with_its_full_loss_and_frozen_batchnorm() {
        let (before, after, log) = finetune(
            Preset::Lucir,
            HeadSpec::Cosine,
            MethodHyper {
                less_forget: Some(5.0),
                ..Default::default()
            },
        );
        let changed = changed(&before, &after);
        // L `--ft_flag 2`, `fix_bn=True`: fc1 and fc2 learn, σ and the
        // backbone (weights and BatchNorm statistics) stay.
        assert_eq!(
            changed,
            vec![
                "head.block0.weight".to_string(),
                "head.block1.weight".to_string()
            ]
        );
        assert!(log[0]["ce"].as_f64().unwrap() > 0.0);
        assert!(log[0].get("margin_ranking").is_some(), "{}", log[0]);
    }

    #[test]
    fn lr_steps_at_the_milestones() {
        let lucir = FinetuneSpec {
            epochs: 20,
            lr: 0.01,
            milestones: vec![10],
            gamma: 0.1,
        };
        assert_eq!(lr_at(&lucir, 0), 0.01);
        assert_eq!(lr_at(&lucir, 9), 0.01);
        assert!((lr_at(&lucir, 10) - 0.001).abs() < 1e-15);
        assert!((lr_at(&lucir, 19) - 0.001).abs() < 1e-15);
        let podnet = FinetuneSpec {
            milestones: vec![],
            lr: 0.05,
            ..lucir
        };
        assert_eq!(lr_at(&podnet, 19), 0.05);
    }

    #[test]
    fn balanced_set_takes_old_exemplars_in_order_and_herds_new_classes() {
        let old: BTreeMap<usize, Vec<usize>> = [(0, vec![5, 3, 9]), (1, vec![7, 1, 2])]
            .into_iter()
            .collect();
        let mut herded = vec![];
        let set = balanced_set(2, 4, 2, &old, |c| {
            herded.push(c);
            Ok(vec![100 + c, 200 + c, 300 + c])
        })
        .unwrap();
        assert_eq!(herded, vec![2, 3], "only the new classes are herded");
        assert_eq!(
            set,
            vec![
                (5, 0),
                (3, 0),
                (7, 1),
                (1, 1),
                (102, 2),
                (202, 2),
                (103, 3),
                (203, 3)
            ]
        );
        let missing = balanced_set(2, 3, 2, &BTreeMap::new(), |_| Ok(vec![])).unwrap_err();
        assert!(missing.to_string().contains("class 0"), "{missing}");
    }
}
