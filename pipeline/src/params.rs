//! The parameters the plan hands each stage kind, typed once and shared by
//! both sides: the plan serialises them into the job (and the key), the
//! stage deserialises them. A field added on one side and not the other
//! fails to compile instead of failing at run time. Data only: no logic
//! here, so the file is on the registry's NO_OUTPUT_EFFECT list (a change
//! reaches keys through the params themselves).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Finetune,
    Icarl,
    Lucir,
    Podnet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    Herding,
    Random,
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
    pub network: String,
    pub augment: String,
    /// The augmentation's crop, where the dataset's differs from it (an
    /// image folder with `crop:` other than 224). Absent otherwise, so the
    /// keys of every other stage stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<u32>,
    pub seed: u64,
    pub deterministic: bool,
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
    pub classifiers: Vec<String>,
    pub top_k: Vec<i64>,
}

/// The `order` stage: the order spec, as `bsce_stages::order::OrderSpec`
/// reads it (validated there against the dataset's class count).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderParams {
    pub spec: serde_json::Value,
}

/// The `tasks` stage: an incremental setting.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksParams {
    pub base: u32,
    pub increment: u32,
    /// Default: as many as the classes allow.
    pub steps: Option<u32>,
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
    pub classifier: String,
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
    pub classifier: String,
}
