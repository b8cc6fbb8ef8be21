//! What a task's train and evaluate stages write for the result stages:
//! `eval.json` ([`Evaluation`]) and `log.json` ([`TrainLog`]). Declared
//! once here: `bsce_train` writes them and `bsce_reports` reads them
//! through these types, so a field renamed on one side fails to compile
//! instead of failing a report.

use std::collections::BTreeMap;

use bsce_pipeline::params::Classifier;
use serde::{Deserialize, Serialize};

/// `eval.json`: a task's model on the test images of every class seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub task: usize,
    pub classes_seen: usize,
    pub test_images: usize,
    /// Per classifier the config evaluates.
    pub results: BTreeMap<Classifier, ClassifierResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierResult {
    /// k -> top-k accuracy on all seen classes, in percent.
    pub top: BTreeMap<String, f64>,
    /// Top-1 accuracy on the classes learnt before this task / in it.
    pub old: Option<f64>,
    pub new: f64,
    /// Top-1 accuracy per task group (classes added by task 0, 1, ...).
    pub per_task: Vec<f64>,
    /// Top-1 accuracy per class, incremental order.
    pub per_class: Vec<f64>,
    /// Share of predictions that fall on this task's new classes, against
    /// their share of the test images: the bias BSCE is meant to remove.
    pub predicted_new_share: f64,
    pub true_new_share: f64,
    /// Rows: true class, columns: predicted class (incremental order).
    pub confusion: Vec<Vec<u32>>,
}

/// `log.json`: one entry per training epoch, then one per epoch of
/// class-balanced fine-tuning (where the method has it).
pub type TrainLog = Vec<LogEntry>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogEntry {
    Epoch(EpochLog),
    Finetune(FinetuneLog),
}

/// A run's step of each log entry, for its curves: training epochs and
/// fine-tuning epochs are counted apart, through the run's tasks in turn,
/// so that the training curves of a method that fine-tunes and of one that
/// does not line up epoch for epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steps {
    /// The next training epoch's step.
    pub train: u64,
    /// The next fine-tuning epoch's step.
    pub finetune: u64,
}

impl Steps {
    /// The step of `entry`; the count of its phase moves past it.
    pub fn next(&mut self, entry: &LogEntry) -> u64 {
        let n = match entry {
            LogEntry::Epoch(_) => &mut self.train,
            LogEntry::Finetune(_) => &mut self.finetune,
        };
        *n += 1;
        *n - 1
    }
}

impl LogEntry {
    /// Wall time of the epoch, in seconds.
    pub fn seconds(&self) -> f64 {
        match self {
            LogEntry::Epoch(e) => e.seconds,
            LogEntry::Finetune(f) => f.seconds,
        }
    }

    /// `train` or `finetune`: the phase of the task's training it logs.
    pub fn phase(&self) -> &'static str {
        match self {
            LogEntry::Epoch(_) => "train",
            LogEntry::Finetune(_) => "finetune",
        }
    }

    /// 0-based, within its phase.
    pub fn epoch(&self) -> u32 {
        match self {
            LogEntry::Epoch(e) => e.epoch,
            LogEntry::Finetune(f) => f.finetune_epoch,
        }
    }

    pub fn lr(&self) -> f64 {
        match self {
            LogEntry::Epoch(e) => e.lr,
            LogEntry::Finetune(f) => f.lr,
        }
    }

    pub fn losses(&self) -> &Losses {
        match self {
            LogEntry::Epoch(e) => &e.losses,
            LogEntry::Finetune(f) => &f.losses,
        }
    }

    /// The sum of the loss terms (the loss the step minimised); `None`
    /// where a term was not finite.
    pub fn total(&self) -> Option<f64> {
        self.losses()
            .values()
            .try_fold(0.0, |sum, v| v.map(|v| sum + v))
    }
}

/// Loss terms by name (`ce`, `kd`, `nca`, `pod_flat`, ...): each term's
/// mean over the epoch's images. `None` where it was not finite (JSON has
/// no NaN or infinity): a diverged run stays readable.
pub type Losses = BTreeMap<String, Option<f64>>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 0-based.
    pub epoch: u32,
    pub lr: f64,
    pub seconds: f64,
    /// Where it trained (`cpu`, `cuda:0`).
    pub device: String,
    #[serde(flatten)]
    pub losses: Losses,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneLog {
    /// 0-based.
    pub finetune_epoch: u32,
    pub lr: f64,
    /// Images in the class-balanced set.
    pub images: usize,
    pub seconds: f64,
    #[serde(flatten)]
    pub losses: Losses,
}

/// A mean for [`Losses`]: `None` unless finite.
pub fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_of_log_entry_read_back_as_written() {
        let log: TrainLog = vec![
            LogEntry::Epoch(EpochLog {
                epoch: 0,
                lr: 0.1,
                seconds: 1.5,
                device: "cpu".into(),
                losses: [("ce".to_string(), Some(2.3)), ("kd".into(), None)].into(),
            }),
            LogEntry::Finetune(FinetuneLog {
                finetune_epoch: 0,
                lr: 0.01,
                images: 12,
                seconds: 0.5,
                losses: [("nca".to_string(), Some(0.7))].into(),
            }),
        ];
        let text = serde_json::to_string(&log).unwrap();
        assert!(text.contains(r#""kd":null"#), "{text}");
        assert!(text.contains(r#""finetune_epoch":0"#), "{text}");
        let back: TrainLog = serde_json::from_str(&text).unwrap();
        assert_eq!(back, log);
        assert_eq!(back[1].seconds(), 0.5);
        assert_eq!((back[0].phase(), back[1].phase()), ("train", "finetune"));
        assert_eq!((back[1].epoch(), back[1].lr()), (0, 0.01));
        assert_eq!(back[0].total(), None, "kd was not finite");
        assert_eq!(back[1].total(), Some(0.7));
    }

    #[test]
    fn an_entry_with_a_field_of_the_wrong_type_is_refused() {
        let bad = r#"[{"epoch": 0, "lr": 0.1, "seconds": 1, "device": "cpu", "ce": "high"}]"#;
        assert!(serde_json::from_str::<TrainLog>(bad).is_err());
    }

    #[test]
    fn results_are_keyed_by_classifier_name() {
        let r = ClassifierResult {
            top: [("1".to_string(), 50.0)].into(),
            old: None,
            new: 50.0,
            per_task: vec![50.0],
            per_class: vec![50.0, 50.0],
            predicted_new_share: 1.0,
            true_new_share: 1.0,
            confusion: vec![vec![1, 1], vec![1, 1]],
        };
        let e = Evaluation {
            task: 0,
            classes_seen: 2,
            test_images: 4,
            results: [(Classifier::Nme, r)].into(),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains(r#""results":{"nme":"#), "{text}");
        assert_eq!(serde_json::from_str::<Evaluation>(&text).unwrap(), e);
    }
}
