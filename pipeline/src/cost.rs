//! What a config's GPU stages cost before they run, from the plan alone:
//! image passes per train and evaluate stage (the params say which task,
//! which classes, how many epochs, what memory; the dataset's images per
//! class come from its source or profile, so no dataset need be present),
//! and the time of those passes on a device from a throughput calibration
//! (`store::calibration`).
//!
//! What one train stage passes, as `train/src/stage/train.rs` and
//! `finetune.rs` run it (N: the task's new images, the new classes times
//! their images per class; M: the memory it starts from, the old classes
//! times min(m, images per class) where m is the budget per class after the
//! previous task; E: the recipe's epochs):
//!
//! | phase | pass | images |
//! |---|---|---|
//! | main training | train (forward, backward, step) | E x (N + M) |
//! | the old model's outputs for distillation (task > 0) | forward | E x (N + M) |
//! | imprinting the new classes (LUCIR, PODNet, task > 0) | forward | N |
//! | class-balanced fine-tuning (task > 0, where on) | fine-tune (backbone forward only, head trained) | F x (seen classes x min(m', images per class)), m' the budget after this task |
//! | its herding of the new classes | forward | N |
//! | the memory's herding of the new classes (herding selection) | forward | N |
//! | NME class means, each image and its flip | forward | 2 x seen classes x min(m', images per class); without memory 2 x N |
//!
//! An evaluate stage passes the test images of every class seen so far
//! once (CNN and NME share the forward pass).
//!
//! Hours: train passes at the calibrated training rate, fine-tuning and
//! forward passes at the calibrated forward rate (fine-tuning runs the
//! backbone without gradients). The data path, the heads' own cost (a
//! linear head is measured) and stage start-up are left out: an estimate.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::catalog::StageKind;
use crate::config::{Config, DatasetDef, DatasetSource};
use crate::params::{
    Augmentation, EvalParams, Network, PrepareParams, Preset, Profile, Selection, TrainParams,
    IMAGENET_CROP,
};
use crate::plan::Plan;
use crate::store::calibration::Throughput;

/// ILSVRC-2012: 1,281,167 training images over 1,000 classes (732 to 1,300
/// each), 50 validation images per class.
const ILSVRC_TRAIN_IMAGES: f64 = 1_281_167.0;
const ILSVRC_CLASSES: f64 = 1000.0;
const ILSVRC_VAL_PER_CLASS: f64 = 50.0;
/// CIFAR-100: 500 training and 100 test images per class.
const CIFAR100_TRAIN_PER_CLASS: f64 = 500.0;
const CIFAR100_TEST_PER_CLASS: f64 = 100.0;

#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error(
        "datasets.{dataset}: an image folder with profile {profile}: its images per class are not \
         known before it is prepared (profiles imagenet100 and imagenet1k use ILSVRC-2012's); run \
         `bsce-pipe run` until its prepare stage is stored, then ask again"
    )]
    UnknownCounts { dataset: String, profile: String },
    #[error("stage {label}: its params do not parse as a {kind} stage's: {message}")]
    BadParams {
        label: String,
        kind: StageKind,
        message: String,
    },
}

/// A dataset's images per class (a mean where classes differ), and where
/// the figures come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImagesPerClass {
    pub train: f64,
    pub test: f64,
    /// `synthetic spec`, CIFAR-100's or ILSVRC-2012's counts, or the
    /// prepared dataset's.
    pub basis: String,
}

impl ImagesPerClass {
    /// From the config alone: a synthetic set's spec, CIFAR-100's published
    /// counts, ILSVRC-2012's means for an image folder with an ImageNet
    /// profile (a subset's classes are taken as average ones).
    pub fn of(ds: &DatasetDef) -> Result<ImagesPerClass, CostError> {
        match &ds.source {
            DatasetSource::Synthetic(s) => Ok(ImagesPerClass {
                train: f64::from(s.train_per_class),
                test: f64::from(s.test_per_class),
                basis: "synthetic spec".into(),
            }),
            DatasetSource::Cifar100 { .. } => Ok(ImagesPerClass {
                train: CIFAR100_TRAIN_PER_CLASS,
                test: CIFAR100_TEST_PER_CLASS,
                basis: "CIFAR-100's published counts".into(),
            }),
            DatasetSource::ImageFolder { .. } => match ds.profile {
                Profile::Imagenet100 | Profile::Imagenet1k => Ok(ImagesPerClass {
                    train: ILSVRC_TRAIN_IMAGES / ILSVRC_CLASSES,
                    test: ILSVRC_VAL_PER_CLASS,
                    basis:
                        "ILSVRC-2012's mean: 1,281,167 train images over 1,000 classes, 50 val each"
                            .into(),
                }),
                Profile::Cifar100 => Err(CostError::UnknownCounts {
                    dataset: ds.name.clone(),
                    profile: "cifar100".into(),
                }),
            },
        }
    }

    /// From a prepared dataset's counts (exact totals; a mean per class).
    pub fn prepared(train_count: u64, test_count: u64, classes: usize) -> ImagesPerClass {
        let c = classes.max(1) as f64;
        ImagesPerClass {
            train: train_count as f64 / c,
            test: test_count as f64 / c,
            basis: format!(
                "prepared dataset: {train_count} train, {test_count} test over {classes} classes"
            ),
        }
    }
}

/// Image passes: each image through the network once counts one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Work {
    /// Main training: forward, backward and an optimiser step.
    pub train: f64,
    /// Class-balanced fine-tuning (backbone forward, head trained).
    pub finetune: f64,
    /// Forward alone: evaluation, herding, class means, imprinting, the
    /// old model's outputs.
    pub forward: f64,
}

impl Work {
    /// Epochs x images, fine-tuning included: what the issue calls the
    /// work's image passes.
    pub fn epoch_passes(&self) -> f64 {
        self.train + self.finetune
    }

    /// Hours on a device whose throughput for the stage's network is `t`.
    pub fn hours(&self, t: &Throughput) -> f64 {
        (self.train / t.train_images_per_s
            + (self.finetune + self.forward) / t.forward_images_per_s)
            / 3600.0
    }
}

impl std::ops::AddAssign for Work {
    fn add_assign(&mut self, o: Work) {
        self.train += o.train;
        self.finetune += o.finetune;
        self.forward += o.forward;
    }
}

/// A network at the side of its input: what a calibration measures
/// (`resnet32@32`, `resnet18@224`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetKey {
    pub network: Network,
    pub side: u32,
}

impl NetKey {
    pub fn network_name(self) -> String {
        serde_json::to_value(self.network)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Parses `name@side`.
    pub fn parse(s: &str) -> Option<NetKey> {
        let (name, side) = s.split_once('@')?;
        let network = serde_json::from_value(serde_json::Value::String(name.into())).ok()?;
        let side = side.parse().ok().filter(|&s| s > 0)?;
        Some(NetKey { network, side })
    }
}

impl fmt::Display for NetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.network_name(), self.side)
    }
}

impl Serialize for NetKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One GPU stage's work and the network it runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageCost {
    pub work: Work,
    pub net: NetKey,
}

/// Per plan node, the cost of the train and evaluate stages (`None` for
/// the other kinds, which run on the CPU in seconds). `images` holds every
/// dataset of the plan's runs, by name.
pub fn stage_costs(
    plan: &Plan,
    images: &BTreeMap<String, ImagesPerClass>,
) -> Result<Vec<Option<StageCost>>, CostError> {
    let mut dataset_of: Vec<Option<&str>> = vec![None; plan.nodes.len()];
    for run in &plan.runs {
        for &n in run.trains.iter().chain(&run.evaluations) {
            dataset_of[n] = Some(&run.dataset);
        }
    }
    let mut costs: Vec<Option<StageCost>> = vec![None; plan.nodes.len()];
    let order = plan
        .topo_order()
        .unwrap_or_else(|_| (0..plan.nodes.len()).collect());
    for id in order {
        let node = &plan.nodes[id];
        let bad = |message: String| CostError::BadParams {
            label: node.label.clone(),
            kind: node.kind,
            message,
        };
        let per_class = || {
            dataset_of[id]
                .and_then(|d| images.get(d))
                .ok_or_else(|| bad("no dataset of a run of the plan reaches it".into()))
        };
        let input = |name: &str| node.inputs.iter().find(|i| i.name == name).map(|i| i.node);
        match node.kind {
            StageKind::Train => {
                let p: TrainParams =
                    serde_json::from_value(node.params.clone()).map_err(|e| bad(e.to_string()))?;
                let prepare = input("dataset")
                    .and_then(|d| {
                        serde_json::from_value::<PrepareParams>(plan.nodes[d].params.clone()).ok()
                    })
                    .ok_or_else(|| bad("no prepare stage as its dataset input".into()))?;
                costs[id] = Some(StageCost {
                    work: train_work(&p, per_class()?),
                    net: NetKey {
                        network: p.network,
                        side: input_side(&p, &prepare),
                    },
                });
            }
            StageKind::Evaluate => {
                let p: EvalParams =
                    serde_json::from_value(node.params.clone()).map_err(|e| bad(e.to_string()))?;
                let net = input("model")
                    .and_then(|m| costs[m].as_ref())
                    .map(|c| c.net)
                    .ok_or_else(|| bad("no train stage as its model input".into()))?;
                costs[id] = Some(StageCost {
                    work: evaluate_work(&p, per_class()?),
                    net,
                });
            }
            _ => {}
        }
    }
    Ok(costs)
}

/// The networks the plan's train stages run, each once, in plan order:
/// what `calibrate CONFIG` measures.
pub fn networks(plan: &Plan) -> Vec<NetKey> {
    let mut out: Vec<NetKey> = Vec::new();
    for node in plan.nodes.iter().filter(|n| n.kind == StageKind::Train) {
        let Ok(p) = serde_json::from_value::<TrainParams>(node.params.clone()) else {
            continue;
        };
        let prepare = node
            .inputs
            .iter()
            .find(|i| i.name == "dataset")
            .and_then(|i| {
                serde_json::from_value::<PrepareParams>(plan.nodes[i.node].params.clone()).ok()
            });
        if let Some(prepare) = prepare {
            let k = NetKey {
                network: p.network,
                side: input_side(&p, &prepare),
            };
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}

/// The side of the images the network sees: the crop for ImageNet-style
/// training, the stored images' side for CIFAR-style.
fn input_side(p: &TrainParams, prepare: &PrepareParams) -> u32 {
    match p.augment {
        Augmentation::Imagenet | Augmentation::ImagenetPodnet => p.crop.unwrap_or(IMAGENET_CROP),
        Augmentation::CifarPodnet | Augmentation::CifarLucir => match prepare {
            PrepareParams::Synthetic(s) => s.image_size,
            PrepareParams::Cifar100 {} => 32,
            PrepareParams::ImageFolder { size, .. } => *size,
        },
    }
}

/// Exemplars per class kept once `seen` classes are learnt (as
/// `train/src/memory.rs` `MemoryBudget::per_class`: a total wins over a
/// per-class budget and is split evenly, rounded down).
fn memory_per_class(p: &TrainParams, seen: usize) -> Option<f64> {
    match (p.method.memory_per_class, p.method.memory_total) {
        (_, Some(total)) => Some(total.checked_div(seen).unwrap_or(0) as f64),
        (Some(m), None) => Some(m as f64),
        (None, None) => None,
    }
}

/// One train stage's passes (the table in the module's doc).
pub(crate) fn train_work(p: &TrainParams, images: &ImagesPerClass) -> Work {
    let per_class = images.train;
    let new = (p.end - p.start) as f64 * per_class;
    let kept = |seen: usize| memory_per_class(p, seen).map(|m| m.min(per_class));
    let memory = match (p.task, kept(p.start)) {
        (0, _) | (_, None) => 0.0,
        (_, Some(m)) => p.start as f64 * m,
    };
    let epochs = f64::from(p.recipe.epochs);
    let seen_set = new + memory;
    let mut w = Work {
        train: epochs * seen_set,
        ..Work::default()
    };
    if p.task > 0 {
        // The frozen old model runs on every batch.
        w.forward += epochs * seen_set;
        if matches!(p.method.preset, Preset::Lucir | Preset::Podnet) {
            w.forward += new;
        }
    }
    let after = kept(p.end);
    if let (true, Some(spec), Some(m)) = (
        p.method.balanced_finetune && p.task > 0,
        &p.method.finetune,
        after,
    ) {
        w.finetune += f64::from(spec.epochs) * p.end as f64 * m;
        w.forward += new;
    }
    match after {
        Some(m) => {
            if p.method.selection == Selection::Herding {
                w.forward += new;
            }
            w.forward += 2.0 * p.end as f64 * m;
        }
        None => w.forward += 2.0 * new,
    }
    w
}

/// One evaluate stage's passes: the test images of the classes seen.
pub(crate) fn evaluate_work(p: &EvalParams, images: &ImagesPerClass) -> Work {
    let seen = p.ends.get(p.task).copied().unwrap_or(0);
    Work {
        forward: seen as f64 * images.test,
        ..Work::default()
    }
}

/// Every dataset of `config` that a run uses, with its images per class
/// from the config alone; `prepared` replaces a dataset's figures (those of
/// its stored prepared artefact).
pub fn images_per_dataset(
    config: &Config,
    prepared: &BTreeMap<String, ImagesPerClass>,
) -> Result<BTreeMap<String, ImagesPerClass>, CostError> {
    let mut out = BTreeMap::new();
    for exp in &config.experiments {
        if out.contains_key(&exp.dataset) {
            continue;
        }
        let figures = match prepared.get(&exp.dataset) {
            Some(p) => p.clone(),
            None => ImagesPerClass::of(&config.datasets[&exp.dataset])?,
        };
        out.insert(exp.dataset.clone(), figures);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::catalog::TestCatalog as Catalog;

    /// 6 classes of 40 training and 10 test images; 2 base classes then
    /// two steps of 2; 3 epochs; 5 exemplars per class (herding).
    const CONFIG: &str = "datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 40, test_per_class: 10, image_size: 8}
orders:
  a: {numpy_seed: 1993}
settings:
  s: {base: 2, increment: 2}
methods:
  ft: {preset: finetune, memory: {per_class: 5}}
  lucir: {preset: lucir, memory: {per_class: 5}, balanced_finetune: true, finetune: {epochs: 2}}
recipes:
  r: {epochs: 3, batch_size: 4, lr: 0.1}
experiments:
  e: {dataset: synth, orders: [a], settings: [s], methods: [METHOD], recipe: r, network: tiny}
";

    fn costs(method: &str) -> (Plan, Vec<Option<StageCost>>) {
        let text = CONFIG.replace("METHOD", method);
        let cfg = crate::config::parse(&text, Path::new("/c.yaml"), &Catalog).unwrap();
        let plan = Plan::from_config(&cfg);
        let images = images_per_dataset(&cfg, &BTreeMap::new()).unwrap();
        let c = stage_costs(&plan, &images).unwrap();
        (plan, c)
    }

    fn work(plan: &Plan, costs: &[Option<StageCost>], label_prefix: &str) -> Vec<Work> {
        plan.nodes
            .iter()
            .zip(costs)
            .filter(|(n, _)| n.label.starts_with(label_prefix))
            .map(|(_, c)| c.as_ref().unwrap().work)
            .collect()
    }

    fn w(train: f64, finetune: f64, forward: f64) -> Work {
        Work {
            train,
            finetune,
            forward,
        }
    }

    #[test]
    fn image_passes_of_a_small_finetune_run_by_hand() {
        let (plan, c) = costs("ft");
        // Task 0: 2 classes x 40 = 80 new images, no memory; 3 epochs.
        // Forward: herding 80, class means 2 x 2 classes x 5 = 20.
        // Task 1: 80 new + 2 x 5 memory = 90, 3 epochs = 270, the old
        // model on each = 270; herding 80; means 2 x 4 x 5 = 40.
        // Task 2: 80 + 4 x 5 = 100: 300, 300; 80; 2 x 6 x 5 = 60.
        assert_eq!(
            work(&plan, &c, "train/"),
            vec![
                w(240.0, 0.0, 100.0),
                w(270.0, 0.0, 390.0),
                w(300.0, 0.0, 440.0)
            ]
        );
        // Test images of the classes seen: 2, 4, 6 classes x 10.
        assert_eq!(
            work(&plan, &c, "evaluate/"),
            vec![w(0.0, 0.0, 20.0), w(0.0, 0.0, 40.0), w(0.0, 0.0, 60.0)]
        );
        let net = c.iter().flatten().map(|s| s.net.to_string()).next();
        assert_eq!(net.as_deref(), Some("tiny@8"));
        assert_eq!(networks(&plan), vec![NetKey::parse("tiny@8").unwrap()]);
    }

    #[test]
    fn fine_tuning_and_imprinting_count_from_the_second_task() {
        let (plan, c) = costs("lucir");
        // Task 1: main 270 and the old model 270, imprinting 80; fine-tuning
        // 2 epochs x 4 classes x 5 = 40, its herding 80; memory herding
        // 80; means 40. Task 2: 300, 300, 80; 2 x 6 x 5 = 60, 80; 80; 60.
        assert_eq!(
            work(&plan, &c, "train/"),
            vec![
                w(240.0, 0.0, 100.0),
                w(270.0, 40.0, 550.0),
                w(300.0, 60.0, 600.0)
            ]
        );
        assert_eq!(
            c.iter().flatten().next().unwrap().work.epoch_passes(),
            240.0
        );
    }

    #[test]
    fn a_total_budget_is_split_over_the_classes_seen() {
        let text = CONFIG
            .replace("METHOD", "ft")
            .replace("{per_class: 5}}\n  lucir", "{total: 12}}\n  lucir");
        let cfg = crate::config::parse(&text, Path::new("/c.yaml"), &Catalog).unwrap();
        let plan = Plan::from_config(&cfg);
        let c = stage_costs(&plan, &images_per_dataset(&cfg, &BTreeMap::new()).unwrap()).unwrap();
        // After task 0: 12 / 2 = 6 per class; after task 1: 12 / 4 = 3;
        // after task 2: 12 / 6 = 2.
        // Task 1: (80 + 2 x 6) x 3 = 276; forward 276 + 80 + 2 x 4 x 3.
        // Task 2: (80 + 4 x 3) x 3 = 276; forward 276 + 80 + 2 x 6 x 2.
        assert_eq!(
            work(&plan, &c, "train/"),
            vec![
                w(240.0, 0.0, 80.0 + 24.0),
                w(276.0, 0.0, 276.0 + 80.0 + 24.0),
                w(276.0, 0.0, 276.0 + 80.0 + 24.0)
            ]
        );
    }

    #[test]
    fn hours_take_training_at_the_training_rate_and_the_rest_at_the_forward_rate() {
        let t = Throughput {
            train_images_per_s: 100.0,
            forward_images_per_s: 400.0,
            batch: 1,
            device: "cpu".into(),
            threads: 1,
            host: "h".into(),
            measured_unix_ms: 0,
            seconds: 1.0,
        };
        let h = w(360_000.0, 720_000.0, 720_000.0).hours(&t);
        assert!((h - (1.0 + 1.0)).abs() < 1e-12, "{h}");
    }

    #[test]
    fn net_keys_read_back() {
        let k = NetKey::parse("resnet32_lucir@32").unwrap();
        assert_eq!(k.network, Network::Resnet32Lucir);
        assert_eq!(k.to_string(), "resnet32_lucir@32");
        assert!(NetKey::parse("resnet99@32").is_none());
        assert!(NetKey::parse("small@0").is_none());
    }
}
