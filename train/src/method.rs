//! What a train or evaluate stage reads from its params, and the preset
//! choices behind each method (network, head, losses, memory).

use serde::{Deserialize, Serialize};

use crate::classifier::HeadSpec;
use crate::data::AugmentSpec;
use crate::net::NetSpec;
use crate::{Result, StageError};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
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

impl Recipe {
    /// Learning rate during `epoch` (0-based), per epoch as the reference
    /// schedulers step.
    pub fn lr_at(&self, epoch: u32) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let t = epoch as f64 / self.epochs.max(1) as f64;
                0.5 * self.lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Multistep => {
                let passed = self.milestones.iter().filter(|&&m| epoch >= m).count() as i32;
                self.lr * self.gamma.powi(passed)
            }
        }
    }
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

pub fn net_spec(name: &str) -> Result<NetSpec> {
    Ok(match name {
        "resnet32" => NetSpec::resnet32(),
        "resnet32_lucir" => NetSpec::resnet32_lucir(),
        "resnet18" => NetSpec::resnet18(),
        "tiny" => NetSpec::tiny(),
        // Between tiny and ResNet-32: learns the synthetic quickstart set
        // well in seconds per task on 2 CPU cores.
        "small" => NetSpec {
            width: 8,
            blocks: 2,
            ..NetSpec::tiny()
        },
        other => {
            return Err(StageError::param(
                "network",
                format!("unknown network {other:?}"),
            ))
        }
    })
}

pub fn augment_spec(name: &str) -> Result<AugmentSpec> {
    Ok(match name {
        "cifar_podnet" => AugmentSpec::cifar_podnet(),
        "cifar_lucir" => AugmentSpec::cifar_lucir(),
        "imagenet" => AugmentSpec::imagenet(),
        other => {
            return Err(StageError::param(
                "augment",
                format!("unknown augmentation {other:?}"),
            ))
        }
    })
}

/// The classifier each preset uses (cil-protocols.md section 2).
pub fn head_spec(preset: Preset) -> HeadSpec {
    match preset {
        Preset::Finetune | Preset::Icarl => HeadSpec::Linear,
        Preset::Lucir => HeadSpec::Cosine,
        Preset::Podnet => HeadSpec::LocalSimilarity {
            proxies: 10,
            scaling: 1.0,
        },
    }
}

/// PODNet and LUCIR classify the pre-ReLU features; the linear heads the
/// post-ReLU ones.
pub fn uses_raw_features(preset: Preset) -> bool {
    matches!(preset, Preset::Lucir | Preset::Podnet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(schedule: Schedule) -> Recipe {
        Recipe {
            epochs: 160,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule,
            milestones: vec![80, 120],
            gamma: 0.1,
        }
    }

    #[test]
    fn schedules_follow_the_recipes() {
        let m = recipe(Schedule::Multistep);
        assert_eq!(m.lr_at(0), 0.1);
        assert!((m.lr_at(80) - 0.01).abs() < 1e-12);
        assert!((m.lr_at(159) - 0.001).abs() < 1e-12);
        let c = recipe(Schedule::Cosine);
        assert_eq!(c.lr_at(0), 0.1);
        assert!((c.lr_at(80) - 0.05).abs() < 1e-12);
        assert!(c.lr_at(159) < 0.0001);
    }
}
