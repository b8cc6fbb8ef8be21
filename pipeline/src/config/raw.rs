//! The YAML as written: plain serde types, unknown keys denied, no
//! `untagged`/`flatten` (they ruin error messages). Resolution into a
//! validated plan happens in `resolve`. What an absent key means is
//! `defaults`'s: the serde attributes below name its functions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub datasets: BTreeMap<String, RawDataset>,
    #[serde(default)]
    pub orders: BTreeMap<String, RawOrder>,
    #[serde(default)]
    pub settings: BTreeMap<String, RawSetting>,
    #[serde(default)]
    pub methods: BTreeMap<String, RawMethod>,
    #[serde(default)]
    pub recipes: BTreeMap<String, RawRecipe>,
    pub experiments: BTreeMap<String, RawExperiment>,
    #[serde(default)]
    pub evaluation: RawEvaluation,
    #[serde(default)]
    pub tables: BTreeMap<String, RawTable>,
    #[serde(default)]
    pub store: RawStore,
    /// How many stages of a kind share one GPU under `--gpus` (stage kind ->
    /// N; default 1, or `--stages-per-gpu`).
    #[serde(default)]
    pub stages_per_gpu: BTreeMap<String, u32>,
    /// Where stages run: this machine (default) or Slurm jobs.
    #[serde(default)]
    pub executor: RawExecutor,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorName {
    #[default]
    Local,
    Slurm,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExecutor {
    /// `local` (default) or `slurm`; `--executor` overrides.
    #[serde(default, rename = "use")]
    pub use_: ExecutorName,
    #[serde(default)]
    pub slurm: Option<RawSlurm>,
}

/// `executor.slurm`: what every job asks of `sbatch`, per-kind overrides,
/// and how jobs are followed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlurm {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub mem: Option<String>,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub gres: Option<String>,
    #[serde(default)]
    pub extra: Vec<String>,
    /// Stage kind -> resources that replace the ones above for it.
    #[serde(default)]
    pub kinds: BTreeMap<String, crate::config::executor::SlurmResources>,
    #[serde(default = "super::defaults::max_retries")]
    pub max_retries: u32,
    #[serde(default = "super::defaults::poll_seconds")]
    pub poll_seconds: f64,
    #[serde(default)]
    pub node_store: Option<String>,
    #[serde(default)]
    pub group: crate::config::executor::SlurmGroup,
    /// Stage kind names; absent: `defaults::local_kinds`.
    #[serde(default)]
    pub local_kinds: Option<Vec<String>>,
    #[serde(default = "super::defaults::max_jobs")]
    pub max_jobs: u32,
}

/// A dataset source: exactly one of the fields (`synthetic: {...}`).
/// One-of choices are structs of options rather than enums: serde_yaml
/// wants `!tags` for enums, and an unknown key then gets "did you mean".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDataset {
    #[serde(default)]
    pub synthetic: Option<crate::params::SyntheticSpec>,
    #[serde(default)]
    pub cifar100: Option<RawCifar100>,
    #[serde(default)]
    pub image_folder: Option<RawImageFolder>,
    /// Which published settings its methods follow: cifar100 |
    /// imagenet100 | imagenet1k. Default: cifar100 for synthetic and CIFAR
    /// data; for an image folder imagenet100 with a `subset` list,
    /// imagenet1k without.
    #[serde(default)]
    pub profile: Option<crate::params::Profile>,
    /// The input normalisation, `{mean: [r, g, b], std: [r, g, b]}` of
    /// pixel / 255. Default: the statistics of the augmentation's reference
    /// (CIFAR-100's for CIFAR-style training, ImageNet's for ImageNet-style).
    #[serde(default)]
    pub normalize: Option<crate::params::Normalization>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCifar100 {
    /// Archive file (either official format) or extracted directory,
    /// relative to the config file.
    #[serde(default)]
    pub path: Option<String>,
    /// Official URL; the archive is downloaded into the store's downloads
    /// when `path` is absent or missing. Requires `sha256`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImageFolder {
    pub root: String,
    #[serde(default = "super::defaults::train_dir")]
    pub train_dir: String,
    /// Default `{folders: val}`.
    #[serde(default)]
    pub val: Option<RawVal>,
    /// Class-subset list file (one wnid per line): the ImageNet-Subset protocol.
    #[serde(default)]
    pub subset: Option<String>,
    /// Images are resized so the short side is `size`, then centre-cropped
    /// to `size x size`.
    #[serde(default = "super::defaults::image_size")]
    pub size: u32,
    /// The training crop (RandomResizedCrop) and evaluation centre crop, in
    /// pixels. Default: 224 (ImageNet's) where `size` allows it, else
    /// `size`, so small images train at their own size.
    #[serde(default)]
    pub crop: Option<u32>,
    /// Training augmentation: `imagenet` (RandomResizedCrop + flip, the
    /// default) or `cifar` (RandomCrop with 4 px of padding + flip, as the
    /// CIFAR-100 references: for small images).
    #[serde(default)]
    pub augment: AugmentStyle,
}

pub(crate) use crate::params::AugmentStyle;

/// Exactly one of the fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVal {
    /// `val/<wnid>/*.JPEG`
    #[serde(default)]
    pub folders: Option<String>,
    /// A flat folder plus a label list file (`filename wnid` per line).
    #[serde(default)]
    pub label_list: Option<RawLabelList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLabelList {
    pub dir: String,
    pub labels: String,
}

/// Exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOrder {
    /// An explicit list of class ids.
    #[serde(default)]
    pub explicit: Option<Vec<u32>>,
    /// numpy's legacy `RandomState(seed).shuffle(arange(classes))`.
    #[serde(default)]
    pub numpy_seed: Option<u32>,
    /// A built-in order (`bsce-pipe order show --list`).
    #[serde(default)]
    pub named: Option<String>,
    /// The original iCaRL code's order for a seed.
    #[serde(default)]
    pub icarl: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSetting {
    /// Classes learnt in the first task.
    pub base: u32,
    /// Classes added by each later task.
    pub increment: u32,
    /// Number of incremental steps after the base task; default: as many as
    /// the dataset's classes allow.
    #[serde(default)]
    pub steps: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMethod {
    /// Another method this one starts from; its fields override.
    #[serde(default)]
    pub extends: Option<String>,
    #[serde(default)]
    pub preset: Option<RawPreset>,
    /// Replace the classification loss by Balanced Softmax Cross-Entropy.
    #[serde(default)]
    pub bsce: Option<bool>,
    /// Class-balanced fine-tuning after each task; default: the preset's
    /// choice for the dataset's profile, off for BSCE variants.
    #[serde(default)]
    pub balanced_finetune: Option<bool>,
    /// Its numbers (epochs, lr, milestones, gamma), field by field over the
    /// preset's.
    #[serde(default)]
    pub finetune: Option<RawFinetune>,
    #[serde(default)]
    pub memory: Option<RawMemory>,
    /// Features for herding and NME: pre_activation | post_activation.
    #[serde(default)]
    pub features: Option<FeatureTap>,
    /// Loss weights and scales, field by field over the preset's defaults
    /// for the dataset's profile.
    #[serde(default)]
    pub hyper: Option<MethodHyper>,
    /// How BSCE combines with the preset, field by field over the defaults.
    #[serde(default)]
    pub bsce_choices: Option<BsceChoices>,
    /// Its recipe (a name under `recipes:` or built in), carried by
    /// `extends`; an experiment's `method_recipes` wins over it, and it
    /// wins over the experiment's `recipe`.
    #[serde(default)]
    pub recipe: Option<String>,
}

pub use crate::params::Preset as MethodPreset;
pub(crate) use crate::params::{BsceChoices, FeatureTap, MethodHyper};

/// A preset as a config names it: the four methods, and PODNet's NME
/// configuration (A `podnet_nme_cifar100.yaml`: classifier scaling 3, no
/// learned η, POD-spatial 5), which is PODNet with other hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawPreset {
    Finetune,
    Icarl,
    Lucir,
    Podnet,
    PodnetNme,
}

impl RawPreset {
    pub(crate) fn preset(self) -> MethodPreset {
        match self {
            RawPreset::Finetune => MethodPreset::Finetune,
            RawPreset::Icarl => MethodPreset::Icarl,
            RawPreset::Lucir => MethodPreset::Lucir,
            RawPreset::Podnet | RawPreset::PodnetNme => MethodPreset::Podnet,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFinetune {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestones: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMemory {
    #[serde(default)]
    pub per_class: Option<u32>,
    #[serde(default)]
    pub total: Option<u32>,
    #[serde(default)]
    pub selection: Option<MemorySelection>,
}

pub use crate::params::Selection as MemorySelection;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecipe {
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    #[serde(default = "super::defaults::momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub schedule: Schedule,
    /// Epochs at which a multistep schedule multiplies the lr by `gamma`.
    #[serde(default)]
    pub milestones: Vec<u32>,
    #[serde(default = "super::defaults::gamma")]
    pub gamma: f64,
}

pub(crate) use crate::params::Schedule;

/// One sweep: every combination of its lists is a run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExperiment {
    pub dataset: String,
    pub orders: Vec<String>,
    pub settings: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// The recipe of its methods that have none of their own.
    #[serde(default)]
    pub recipe: Option<String>,
    /// Method -> its recipe in this experiment (over the method's own and
    /// the experiment's `recipe`).
    #[serde(default)]
    pub method_recipes: BTreeMap<String, String>,
    #[serde(default = "super::defaults::seeds")]
    pub seeds: Vec<u64>,
    /// Backbone; absent: `defaults::network`.
    #[serde(default)]
    pub network: Option<Network>,
    /// Deterministic libtorch algorithms (slower; recorded with results).
    #[serde(default)]
    pub deterministic: bool,
}

pub use crate::params::Network;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvaluation {
    #[serde(default = "super::defaults::classifiers")]
    pub classifiers: Vec<Classifier>,
    #[serde(default = "super::defaults::top_k")]
    pub top_k: Vec<u32>,
}

impl Default for RawEvaluation {
    fn default() -> Self {
        RawEvaluation {
            classifiers: super::defaults::classifiers(),
            top_k: super::defaults::top_k(),
        }
    }
}

pub use crate::params::Classifier;

/// A table of the report (README's config reference lists every key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTable {
    pub caption: String,
    /// LaTeX label; default `tab:<name>`.
    #[serde(default)]
    pub label: Option<String>,
    pub experiments: Vec<String>,
    /// Default: the first of `evaluation.classifiers`.
    #[serde(default)]
    pub classifier: Option<Classifier>,
    #[serde(default = "super::defaults::metric")]
    pub metric: crate::params::Metric,
    #[serde(default = "super::defaults::rows")]
    pub rows: Vec<crate::params::Field>,
    #[serde(default = "super::defaults::columns")]
    pub columns: Vec<crate::params::Field>,
    /// A column with each row's training time, summed over the columns.
    #[serde(default)]
    pub time_column: bool,
    /// Published numbers to print beside ours: row label -> column label
    /// -> "mean", "mean +- std" or a number. Labels join the row and
    /// column fields' values with `/`.
    #[serde(default)]
    pub reference: BTreeMap<String, BTreeMap<String, RawNumber>>,
    /// Where the reference values come from (printed in the table note).
    #[serde(default)]
    pub reference_source: Option<String>,
    /// Own templates instead of `reports/templates/table.md.j2` / `reports/templates/table.tex.j2`,
    /// relative to the config.
    #[serde(default)]
    pub templates: RawTemplates,
}

/// A number written as a YAML number or as text (`"64.83 +- 0.51"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawNumber {
    Number(f64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTemplates {
    #[serde(default)]
    pub markdown: Option<String>,
    #[serde(default)]
    pub latex: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    /// Store directory, relative to the config file; default `.bsce`.
    /// `--store` and `BSCE_STORE` override it.
    #[serde(default)]
    pub path: Option<String>,
    /// A remote cache: `file:///path`, `http(s)://host/prefix`,
    /// `s3://bucket/prefix`. `--remote` and `BSCE_REMOTE` override it.
    #[serde(default)]
    pub remote: Option<String>,
    /// Pull from the remote, never push.
    #[serde(default)]
    pub remote_read_only: bool,
}
