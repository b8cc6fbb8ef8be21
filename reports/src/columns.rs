//! The frames' column names, declared once: `aggregate` writes the frames
//! with them, and `plot`, `render`, `results` and the report read them.
//! A metric's column is `Metric::column` and a table field's
//! `Field::column` (`bsce_pipeline::params`, shared with the config).
//!
//! Frames (`tidy`, `groups`, `runs`, `summary`; the README lists their
//! columns): a run is identified by [`RUN_KEYS`], a summary row by
//! [`SUMMARY_KEYS`].

pub const EXPERIMENT: &str = "experiment";
pub const DATASET: &str = "dataset";
pub const ORDER: &str = "order";
pub const SETTING: &str = "setting";
pub const METHOD: &str = "method";
/// The method a BSCE variant extends (itself for a base method).
pub const BASE_METHOD: &str = "base_method";
pub const BSCE: &str = "bsce";
pub const SEED: &str = "seed";
/// `cnn` or `nme` (`Classifier::name`).
pub const CLASSIFIER: &str = "classifier";
pub const TASK: &str = "task";
pub const CLASSES_SEEN: &str = "classes_seen";
/// Top-1 accuracy (%) on every class seen (tidy), or on one task group
/// (groups).
pub const TOP1: &str = "top1";
pub const TOP5: &str = "top5";
/// Top-1 on the classes learnt before the task / in it.
pub const OLD: &str = "old";
pub const NEW: &str = "new";
pub const PREDICTED_NEW_SHARE: &str = "predicted_new_share";
pub const TRUE_NEW_SHARE: &str = "true_new_share";
pub const TRAIN_SECONDS: &str = "train_seconds";
pub const GPU_HOURS: &str = "gpu_hours";
/// The task that added a group's classes (groups frame).
pub const GROUP: &str = "group";
/// Tasks a run has (runs, summary).
pub const TASKS: &str = "tasks";
/// Runs, class orders and seeds a summary row is over.
pub const RUNS: &str = "runs";
pub const ORDERS: &str = "orders";
pub const SEEDS: &str = "seeds";

/// `train` or `finetune` (epochs frame): which phase of a task's training
/// an epoch belongs to.
pub const PHASE: &str = "phase";
/// 0-based, within its phase (epochs frame).
pub const EPOCH: &str = "epoch";
/// The run's step of the entry within its phase: training epochs and
/// fine-tuning epochs each counted through the run's tasks in turn, as in
/// TensorBoard (epochs frame; `task_artefacts::Steps`).
pub const STEP: &str = "step";
/// A loss term's name, `total` (their sum), `lr` or `seconds` (epochs
/// frame), with its [`VALUE`] (null where the loss was not finite).
pub const QUANTITY: &str = "quantity";
pub const VALUE: &str = "value";

/// The identity columns of a run, in every frame.
pub const RUN_KEYS: &[&str] = &[
    EXPERIMENT,
    DATASET,
    ORDER,
    SETTING,
    METHOD,
    BASE_METHOD,
    BSCE,
    SEED,
    CLASSIFIER,
];

/// The columns a summary groups by.
pub const SUMMARY_KEYS: &[&str] = &[
    EXPERIMENT,
    DATASET,
    SETTING,
    METHOD,
    BASE_METHOD,
    BSCE,
    CLASSIFIER,
];

/// A summary's column for a metric's mean or std over runs.
pub fn summary_column(metric: &str, stat: &str) -> String {
    format!("{metric}_{stat}")
}

#[cfg(test)]
mod tests {
    use bsce_pipeline::params::Field;

    #[test]
    fn table_fields_name_the_frames_columns() {
        for (f, c) in [
            (Field::Experiment, super::EXPERIMENT),
            (Field::Dataset, super::DATASET),
            (Field::Setting, super::SETTING),
            (Field::Method, super::METHOD),
        ] {
            assert_eq!(f.column(), c);
        }
    }
}
