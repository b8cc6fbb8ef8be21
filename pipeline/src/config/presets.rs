//! Built-in training recipes: each method's published CIFAR-100 and
//! ImageNet recipe (cil-protocols.md section 2). An experiment may name one
//! without defining it under `recipes:`; a config's own entry of the same
//! name wins.

use crate::params::{Recipe, Schedule};

pub const RECIPE_NAMES: [&str; 6] = [
    "icarl_cifar100",
    "lucir_cifar100",
    "podnet_cifar100",
    "lucir_imagenet",
    "podnet_imagenet",
    "icarl_imagenet",
];

/// The resolved form of a built-in recipe, as `resolve_recipe` makes it.
pub fn recipe(name: &str) -> Option<Recipe> {
    let r = |epochs: u32,
             batch: u32,
             lr: f64,
             wd: f64,
             schedule: Schedule,
             milestones: &[u32],
             gamma: f64| Recipe {
        epochs,
        batch_size: batch,
        lr,
        momentum: 0.9,
        weight_decay: wd,
        schedule,
        milestones: milestones.to_vec(),
        gamma,
    };
    Some(match name {
        // iCaRL's original: lr 2.0, divided by 5 at epochs 49 and 63.
        "icarl_cifar100" => r(70, 128, 2.0, 1e-5, Schedule::Multistep, &[49, 63], 0.2),
        "lucir_cifar100" => r(160, 128, 0.1, 5e-4, Schedule::Multistep, &[80, 120], 0.1),
        "podnet_cifar100" => r(160, 128, 0.1, 5e-4, Schedule::Cosine, &[], 0.1),
        "lucir_imagenet" => r(90, 128, 0.1, 1e-4, Schedule::Multistep, &[30, 60], 0.1),
        "podnet_imagenet" => r(90, 64, 0.05, 1e-4, Schedule::Cosine, &[], 0.1),
        // LUCIR's ImageNet recipe, which iCaRL reproductions on ImageNet use.
        "icarl_imagenet" => r(90, 128, 0.1, 1e-4, Schedule::Multistep, &[30, 60], 0.1),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_recipe_exists_and_follows_the_protocol() {
        for n in RECIPE_NAMES {
            assert!(recipe(n).is_some(), "{n}");
        }
        let podnet = recipe("podnet_cifar100").unwrap();
        assert_eq!(podnet.epochs, 160);
        assert_eq!(podnet.schedule, Schedule::Cosine);
        let lucir = recipe("lucir_cifar100").unwrap();
        assert_eq!(lucir.milestones, vec![80, 120]);
        assert!(recipe("nope").is_none());
    }
}
