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
