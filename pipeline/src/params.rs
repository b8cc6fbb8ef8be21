//! The parameters the plan hands each stage kind, typed once and shared by
//! both sides: the plan serialises them into the job (and the key), the
//! stage deserialises them. A field added on one side and not the other
//! fails to compile instead of failing at run time. Data, plus one
//! function ([`MethodParams::for_task`]) that keeps of a method's fields
//! exactly those a task's computation reads: the file is on the registry's
//! NO_OUTPUT_EFFECT list, because whatever it decides reaches keys through
//! the params themselves.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Finetune,
    Icarl,
    Lucir,
    Podnet,
}

/// The published settings a dataset's methods follow: the references set
/// loss weights, fine-tuning and weight decay per dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    Cifar100,
    Imagenet100,
    Imagenet1k,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    Herding,
    Random,
}

/// Which pooled features herding, the NME class means and NME
/// classification use. The classifier's own input is the preset's
/// (pre-activation for LUCIR and PODNet, post-activation for the linear
/// heads) whatever this says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureTap {
    /// Global average pooling of the last block's output before its ReLU:
    /// what iCaRL (`main_cifar_100_theano.py`, the network's last layer has
    /// no ReLU), LUCIR (`compute_features.py` on the network without its
    /// last ReLU) and PODNet (`extract_no_act=True`, inclearn
    /// `lib/network/basenet.py`) take. The default for every preset.
    PreActivation,
    /// Pooling after the ReLU (what this tool used before 2026-12).
    PostActivation,
}

/// Where Balanced Softmax's prior log n_c enters PODNet's NCA loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NcaPrior {
    /// a_c = η(z_c − m) + log n_c: the prior's strength does not ride on
    /// the learned η, as in standard Balanced Softmax (the default).
    AfterScale,
    /// a_c = η(z_c − m + log n_c): the prior scaled with the logits.
    BeforeScale,
    /// No NCA: Balanced Softmax cross-entropy on the scaled logits,
    /// CE(η·z + log n, y), without NCA's margin: A `podnet.py`
    /// `_compute_loss`'s softmax path (`F.cross_entropy` on
    /// `post_process(logits)`) with the prior. The as-coded NCA puts
    /// e^{a_max} in place of e^{a_y} for a misclassified sample, so with
    /// the prior in it, it is not the Balanced Softmax loss; this is.
    BalancedSoftmax,
}

/// iCaRL+BSCE's distillation of the old classes. iCaRL's own loss is
/// BCE with the old model's sigmoid outputs as targets; BSCE is a softmax
/// loss, so the paper pairs it with a softmax distillation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum IcarlDistillation {
    /// `weight * KD(student old logits, teacher logits, T)` (PyCIL
    /// `models/icarl.py` `_KD_loss`: class sum, batch mean, no T²). The
    /// default: temperature 2, weight 1, as PyCIL's iCaRL.
    SoftmaxKd { temperature: f64, weight: f64 },
    /// iCaRL's own distillation kept beside BSCE: BCE between the sigmoids
    /// of the old columns and the old model's sigmoids, mean over batch x
    /// old classes, times `weight`.
    SigmoidBce { weight: f64 },
}

/// How BSCE is combined with a method where the paper's text is the only
/// source (no public code of the BSCE authors; fidelity-review.md). Each
/// field is present only where the task's computation reads it, so it is
/// in the key exactly then.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BsceChoices {
    /// PODNet (every task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nca_prior: Option<NcaPrior>,
    /// LUCIR, tasks with old classes: whether margin ranking stays beside
    /// BSCE (default true: BSCE replaces the classification loss only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_ranking: Option<bool>,
    /// iCaRL, tasks with old classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icarl_distillation: Option<IcarlDistillation>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodParams {
    pub preset: Preset,
    pub bsce: bool,
    pub balanced_finetune: bool,
    pub memory_per_class: Option<usize>,
    pub memory_total: Option<usize>,
    pub selection: Selection,
    /// Features for herding and NME.
    pub features: FeatureTap,
    /// The preset's loss weights and scales, per dataset profile.
    pub hyper: MethodHyper,
    /// Class-balanced fine-tuning, where `balanced_finetune` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneSpec>,
    /// With `bsce`: the choices that apply to this preset and task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bsce_choices: Option<BsceChoices>,
}

/// Loss weights and classifier scales that the references set per
/// dataset. Each field is present only for the preset that reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodHyper {
    /// LUCIR: less-forget base, λ = base·sqrt(old/new) (L `run.sh`:
    /// `--lamda 5` on CIFAR, `--lamda 10` in the ImageNet scripts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub less_forget: Option<f64>,
    /// PODNet: POD-flat factor, times sqrt(seen/new) (A yaml
    /// `pod_flat.scheduled_factor`: 1 CIFAR, 10 ImageNet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_flat: Option<f64>,
    /// PODNet: POD-spatial factor (3 CIFAR, 8 ImageNet, 5 NME config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_spatial: Option<f64>,
    /// PODNet: the classifier's feature and proxy scaling after
    /// normalisation (A `CosineClassifier` `scaling`: 1, 3 in the NME
    /// config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_scaling: Option<f64>,
    /// PODNet: whether NCA's scale is a learned η (A `postprocessor_config:
    /// learned_scaling`) or the constant 1 (the NME config has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_scale: Option<bool>,
    /// PODNet: every gradient element clamped to ±this before the step (A
    /// `podnet.py` `_train_task`: `torch.clamp(grad, -5., 5.)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_clamp: Option<f64>,
}

/// Class-balanced fine-tuning after a task's main training. What is
/// trained, with which loss and BatchNorm mode, is the preset's (see
/// `train/src/stage/finetune.rs`); these are the numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSpec {
    pub epochs: u32,
    pub lr: f64,
    /// Epochs at which the lr is multiplied by `gamma` (LUCIR: [10]).
    pub milestones: Vec<u32>,
    pub gamma: f64,
}

impl MethodParams {
    /// The method as task `task` computes it: fields that task cannot read
    /// are reset, so two methods whose task computes the same thing get
    /// the same params, hence the same key, and share the stage. This is
    /// how a method and its +bsce variant share their base model, derived
    /// rather than decided by the planner:
    ///
    /// - balanced fine-tuning runs from task 1 on;
    /// - on the base task with every class equally frequent
    ///   (`counts_equal`, known before preparation for CIFAR and synthetic
    ///   data), log n_c is the same constant on every logit, so BSCE is
    ///   exactly the softmax loss it replaces: for finetune, LUCIR and
    ///   PODNet the base task is the plain method's. Not for iCaRL, whose
    ///   plain loss is BCE, a different computation;
    /// - a BSCE choice is kept only for the preset it concerns, and
    ///   distillation and margin-ranking choices only where there are old
    ///   classes.
    pub(crate) fn for_task(&self, task: usize, counts_equal: bool) -> MethodParams {
        let mut m = self.clone();
        let base = task == 0;
        if base || !m.balanced_finetune {
            m.balanced_finetune = false;
            m.finetune = None;
        }
        if m.bsce && base && counts_equal && m.preset != Preset::Icarl {
            m.bsce = false;
        }
        m.bsce_choices = match (m.bsce, &self.bsce_choices) {
            (true, Some(c)) => Some(BsceChoices {
                nca_prior: c.nca_prior.filter(|_| m.preset == Preset::Podnet),
                margin_ranking: c
                    .margin_ranking
                    .filter(|_| m.preset == Preset::Lucir && !base),
                icarl_distillation: c
                    .icarl_distillation
                    .filter(|_| m.preset == Preset::Icarl && !base),
            }),
            _ => None,
        }
        .filter(|c| *c != BsceChoices::default());
        m
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    Cosine,
    Multistep,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub milestones: Vec<u32>,
    pub gamma: f64,
}

/// The `prepare` stage: which source becomes the dataset artefact.
/// Externally tagged (`{"synthetic": {...}}`): the shape the key hashes.
/// Files the stage reads are its sources, not params.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PrepareParams {
    Synthetic(SyntheticSpec),
    /// The archive or extracted folder is the stage's `archive` source.
    Cifar100 {},
    /// The tree is the stage's `root` source (a subset list, when given,
    /// its `subset` source).
    ImageFolder {
        /// The folder of class folders, under the root.
        train_dir: String,
        val: ValParams,
        /// Short side the images are resized to.
        size: u32,
        /// What of each resized image is stored.
        keep: Keep,
    },
}

/// What an image folder's preparation stores of each image resized to a
/// short side of `size` (torchvision's `Resize(size)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The whole image, aspect ratio kept (`augment: imagenet`: training's
    /// RandomResizedCrop samples the whole field of view, evaluation takes
    /// the centre crop of it).
    Whole,
    /// The central `size x size` window (`augment: cifar`).
    CentreSquare,
}

impl Keep {
    pub(crate) fn for_style(style: AugmentStyle) -> Keep {
        match style {
            AugmentStyle::Imagenet => Keep::Whole,
            AugmentStyle::Cifar => Keep::CentreSquare,
        }
    }
}

/// Where an image folder's test images are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ValParams {
    /// Class folders under this folder of the root, named as the training
    /// set's.
    Folders(String),
    /// Flat images under `dir`, labelled by the stage's `val_labels`
    /// source (`<file> <class folder>` per line).
    LabelList { dir: String },
}

/// The synthetic generator's spec, as a config writes it and the prepare
/// stage reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    pub classes: u32,
    pub train_per_class: u32,
    pub test_per_class: u32,
    /// Side of the square RGB images, in pixels (default 32).
    #[serde(default = "default_synthetic_size")]
    pub image_size: u32,
    #[serde(default)]
    pub seed: u64,
}

fn default_synthetic_size() -> u32 {
    32
}

/// A class order as the `order` stage reads it. Externally tagged, e.g.
/// `{numpy_seed: {seed: 1993}}`, so a typo in the variant or a field is
/// reported by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OrderSpec {
    Explicit {
        classes: Vec<u32>,
    },
    /// `np.random.seed(seed); np.random.shuffle(np.arange(num_classes))`.
    NumpySeed {
        seed: u32,
    },
    /// A built-in order (`bsce-pipe order show --list`).
    Named {
        name: String,
    },
    /// The original iCaRL CIFAR-100 script's order for this seed.
    Icarl {
        seed: u32,
    },
}

/// A backbone, by the name configs and `model.json` give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// ResNet-32, PODNet's variant (shortcut A, no ReLU after sums).
    Resnet32,
    /// ResNet-32, LUCIR's variant (shortcut B, last ReLU removed).
    Resnet32Lucir,
    /// ResNet-18 as torchvision's (LUCIR's ImageNet network).
    Resnet18,
    /// ResNet-18 as PODNet's ImageNet network (A `convnet/resnet.py`: 3x3
    /// stride-1 stem, no ReLU at the end of a stage).
    Resnet18Podnet,
    /// A very small CIFAR-style ResNet (width 4, 1 block per stage) for tests.
    Tiny,
    /// A small CIFAR-style ResNet (width 8, 2 blocks per stage) for the quickstart.
    Small,
}

/// How an evaluation classifies: the network's own head (`cnn`) or the
/// nearest mean of exemplars (`nme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Classifier {
    Cnn,
    Nme,
}

impl Classifier {
    pub const ALL: [Classifier; 2] = [Classifier::Cnn, Classifier::Nme];

    /// Its name in configs, `eval.json` and the frames' `classifier` column.
    pub fn name(self) -> &'static str {
        match self {
            Classifier::Cnn => "cnn",
            Classifier::Nme => "nme",
        }
    }
}

/// A train stage's augmentation: the dataset's style
/// ([`AugmentStyle`]) in the variant of its method's reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Augmentation {
    /// PODNet's CIFAR-100 pipeline: random crop with padding 4, flip,
    /// brightness jitter, PODNet's statistics.
    CifarPodnet,
    /// LUCIR's CIFAR-100 pipeline: random crop with padding 4, flip,
    /// LUCIR's statistics.
    CifarLucir,
    /// RandomResizedCrop and flip, evaluation on the central crop,
    /// ImageNet statistics (LUCIR's ImageNet pipeline).
    Imagenet,
    /// [`Augmentation::Imagenet`] with PODNet's brightness jitter.
    ImagenetPodnet,
}

/// Per-channel normalisation of the network's input, `(pixel / 255 - mean)
/// / std` (RGB), where a dataset's statistics are not the ones its
/// augmentation's reference uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// How an image-folder dataset is augmented in training; each preset then
/// takes its reference's variant (normalisation, colour jitter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentStyle {
    /// RandomResizedCrop(crop) + flip; evaluation Resize + CenterCrop.
    #[default]
    Imagenet,
    /// RandomCrop(size, padding 4) + flip; evaluation on the whole image.
    Cifar,
}

/// The crop of the `imagenet` augmentation (RandomResizedCrop(224) for
/// training, the central 224 window for evaluation).
pub const IMAGENET_CROP: u32 = 224;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    pub task: usize,
    /// Order positions learnt in this task: `start..end`; `0..start` are old.
    pub start: usize,
    pub end: usize,
    pub method: MethodParams,
    pub recipe: Recipe,
    pub network: Network,
    pub augment: Augmentation,
    /// The augmentation's crop, where the dataset's differs from it (an
    /// image folder with `crop:` other than 224). Absent otherwise, so the
    /// keys of every other stage stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<u32>,
    /// The dataset's own normalisation, where its config gives one; absent:
    /// the augmentation's reference statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalization>,
    pub seed: u64,
    pub deterministic: bool,
}

impl TrainParams {
    /// The entries the stage's `log.json` gets: one per training epoch,
    /// then one per epoch of class-balanced fine-tuning.
    pub fn log_entries(&self) -> u64 {
        self.train_epochs() + self.finetune_epochs()
    }

    /// The training epochs of this task. A run's curves count training and
    /// fine-tuning epochs apart, through its tasks in turn, so task `t`'s
    /// training starts at the training epochs of tasks `0..t`, live and in
    /// the report alike.
    pub fn train_epochs(&self) -> u64 {
        u64::from(self.recipe.epochs)
    }

    /// The epochs of class-balanced fine-tuning after this task's training
    /// (tasks after the first, where the method has it).
    pub fn finetune_epochs(&self) -> u64 {
        match (&self.method.finetune, self.method.balanced_finetune) {
            (Some(f), true) if self.task > 0 => u64::from(f.epochs),
            _ => 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalParams {
    pub task: usize,
    /// Class count after each task so far (task groups for accuracy).
    pub ends: Vec<usize>,
    pub evaluation: EvaluationParams,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationParams {
    pub classifiers: Vec<Classifier>,
    pub top_k: Vec<i64>,
}

/// The `order` stage: the order spec (validated by the stage against the
/// dataset's class count).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderParams {
    pub spec: OrderSpec,
}

/// The `tasks` stage: an incremental setting.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksParams {
    pub base: u32,
    pub increment: u32,
    /// Default: as many as the classes allow ([`max_steps`]).
    pub steps: Option<u32>,
}

/// The increments of `increment` classes that fit after `base` classes
/// in `classes`: a setting's steps when it names none.
pub fn max_steps(classes: u32, base: u32, increment: u32) -> u32 {
    classes.saturating_sub(base) / increment.max(1)
}

/// One training run inside an `aggregate` stage: its identity and, per
/// task, the inputs `eval.<run>.<task>` (evaluation) and `log.<run>.<task>`
/// (training log) of the stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateRun {
    pub order: String,
    pub setting: String,
    pub method: String,
    /// The method a BSCE variant extends (itself for a base method): plots
    /// draw a variant in its base method's colour.
    pub base_method: String,
    pub bsce: bool,
    pub seed: u64,
    pub tasks: usize,
}

/// The `aggregate` stage: every complete run of one experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateParams {
    pub experiment: String,
    pub dataset: String,
    pub runs: Vec<AggregateRun>,
}

/// What a table's cells show (per run, then mean and std over runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Mean top-1 over all tasks, base task included (PODNet, LUCIR).
    AverageIncrementalAccuracy,
    /// Top-1 after the last task.
    LastAccuracy,
    /// Chaudhry et al.: per old task group, best earlier accuracy minus
    /// final accuracy, averaged over the groups.
    AverageForgetting,
    /// Training wall time of the whole run, in hours.
    TrainHours,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::AverageIncrementalAccuracy,
        Metric::LastAccuracy,
        Metric::AverageForgetting,
        Metric::TrainHours,
    ];
    /// The column of the summary frame (`<name>_mean`, `<name>_std`).
    pub fn column(self) -> &'static str {
        match self {
            Metric::AverageIncrementalAccuracy => "average_incremental_accuracy",
            Metric::LastAccuracy => "last_accuracy",
            Metric::AverageForgetting => "average_forgetting",
            Metric::TrainHours => "train_hours",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            Metric::AverageIncrementalAccuracy => "average incremental accuracy (%)",
            Metric::LastAccuracy => "last-task accuracy (%)",
            Metric::AverageForgetting => "average forgetting (%)",
            Metric::TrainHours => "training time (h)",
        }
    }
    /// Whether a larger value is better (for the bold best per column).
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::AverageIncrementalAccuracy | Metric::LastAccuracy
        )
    }
}

/// Run identity fields a table's rows and columns are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Experiment,
    Dataset,
    Setting,
    Method,
}

impl Field {
    pub fn column(self) -> &'static str {
        match self {
            Field::Experiment => "experiment",
            Field::Dataset => "dataset",
            Field::Setting => "setting",
            Field::Method => "method",
        }
    }
}

/// A published value shown beside ours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValue {
    /// Row and column labels (row fields, column fields joined by `/`).
    pub row: String,
    pub column: String,
    pub mean: f64,
    pub std: Option<f64>,
}

/// A table as declared in the config, resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableParams {
    pub name: String,
    pub caption: String,
    pub label: String,
    pub metric: Metric,
    pub classifier: Classifier,
    pub rows: Vec<Field>,
    pub columns: Vec<Field>,
    /// Adds a column with each row's training time (hours, summed over
    /// the table's columns), to show what a method costs.
    pub time_column: bool,
    pub reference: Vec<ReferenceValue>,
    pub reference_source: Option<String>,
    /// Every row and column the table has, in declaration order: a cell
    /// with no complete run shows as missing.
    pub row_labels: Vec<String>,
    pub column_labels: Vec<String>,
}

/// The `render` stage: a table declaration and its two templates (their
/// text, so editing a template reruns rendering and nothing else).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderParams {
    pub table: TableParams,
    pub markdown_template: String,
    pub latex_template: String,
}

/// The `plot` stage: accuracy against classes seen for one dataset x
/// setting of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotParams {
    pub experiment: String,
    pub dataset: String,
    pub setting: String,
    pub classifier: Classifier,
}
