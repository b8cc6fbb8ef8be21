//! The preset choices behind each method (network, head, losses, memory)
//! and the recipe's learning-rate schedule. The params themselves are
//! typed in `bsce_pipeline::params`, shared with the plan that writes them.

pub use bsce_pipeline::params::{
    Augmentation, EvalParams, EvaluationParams, FinetuneSpec, MethodParams, Network, Normalization,
    Preset, Recipe, Schedule, Selection, TrainParams,
};

use crate::classifier::HeadSpec;
use crate::data::AugmentSpec;
use crate::net::NetSpec;
use crate::{Result, StageError};

/// Learning rate during `epoch` (0-based), per epoch as the reference
/// schedulers step.
pub fn lr_at(recipe: &Recipe, epoch: u32) -> f64 {
    match recipe.schedule {
        Schedule::Constant => recipe.lr,
        Schedule::Cosine => {
            let t = epoch as f64 / recipe.epochs.max(1) as f64;
            0.5 * recipe.lr * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Multistep => {
            let passed = recipe.milestones.iter().filter(|&&m| epoch >= m).count() as i32;
            recipe.lr * recipe.gamma.powi(passed)
        }
    }
}

pub fn net_spec(network: Network) -> NetSpec {
    match network {
        Network::Resnet32 => NetSpec::resnet32(),
        Network::Resnet32Lucir => NetSpec::resnet32_lucir(),
        Network::Resnet18 => NetSpec::resnet18(),
        Network::Resnet18Podnet => NetSpec::resnet18_podnet(),
        Network::Tiny => NetSpec::tiny(),
        // Between tiny and ResNet-32: learns the synthetic quickstart set
        // well in seconds per task on 2 CPU cores.
        Network::Small => NetSpec {
            width: 8,
            blocks: 2,
            ..NetSpec::tiny()
        },
    }
}

/// The augmentation, with its crop replaced by `crop` when given (an
/// image folder whose images are smaller than ImageNet's) and its
/// normalisation by the dataset's own when it has one.
pub fn augment_spec(
    augmentation: Augmentation,
    crop: Option<u32>,
    normalize: Option<&Normalization>,
) -> Result<AugmentSpec> {
    let mut spec = match augmentation {
        Augmentation::CifarPodnet => AugmentSpec::cifar_podnet(),
        Augmentation::CifarLucir => AugmentSpec::cifar_lucir(),
        Augmentation::Imagenet => AugmentSpec::imagenet(),
        Augmentation::ImagenetPodnet => AugmentSpec::imagenet_podnet(),
    };
    if let Some(c) = crop {
        if spec.random_resized_crop.is_none() {
            return Err(StageError::param(
                "crop",
                format!("is {c}, but augmentation {augmentation:?} takes no crop size"),
            ));
        }
        spec.random_resized_crop = Some(i64::from(c));
        spec.center_crop = Some(i64::from(c));
    }
    if let Some(n) = normalize {
        spec.mean = n.mean;
        spec.std = n.std;
    }
    Ok(spec)
}

/// The classifier each preset uses (cil-protocols.md section 2), with
/// PODNet's classifier scaling (1, or 3 in its NME configuration).
pub fn head_spec(method: &MethodParams) -> HeadSpec {
    match method.preset {
        Preset::Finetune | Preset::Icarl => HeadSpec::Linear,
        Preset::Lucir => HeadSpec::Cosine,
        Preset::Podnet => HeadSpec::LocalSimilarity {
            proxies: 10,
            scaling: method.hyper.classifier_scaling.unwrap_or(1.0),
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
    fn a_datasets_own_normalisation_replaces_the_references() {
        let reference = augment_spec(Augmentation::CifarLucir, None, None).unwrap();
        assert_eq!(reference.mean, [0.5071, 0.4866, 0.4409]);
        let own = Normalization {
            mean: [0.1, 0.2, 0.3],
            std: [0.4, 0.5, 0.6],
        };
        let spec = augment_spec(Augmentation::CifarLucir, None, Some(&own)).unwrap();
        assert_eq!((spec.mean, spec.std), (own.mean, own.std));
        // The rest of the augmentation is the reference's.
        assert_eq!(spec.crop_padding, reference.crop_padding);
        assert_eq!(spec.flip, reference.flip);
    }

    #[test]
    fn schedules_follow_the_recipes() {
        let m = recipe(Schedule::Multistep);
        assert_eq!(lr_at(&m, 0), 0.1);
        assert!((lr_at(&m, 80) - 0.01).abs() < 1e-12);
        assert!((lr_at(&m, 159) - 0.001).abs() < 1e-12);
        let c = recipe(Schedule::Cosine);
        assert_eq!(lr_at(&c, 0), 0.1);
        assert!((lr_at(&c, 80) - 0.05).abs() < 1e-12);
        assert!(lr_at(&c, 159) < 0.0001);
    }
}
