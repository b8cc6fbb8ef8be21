//! What the references publish, in one place: each method's CIFAR-100 and
//! ImageNet training recipe with the loss it is for and its source
//! ([`RECIPES`]), and each preset's
//! loss weights, scales and class-balanced fine-tuning per dataset profile
//! ([`method_params`]). A method's `hyper:`, `finetune:` and
//! `bsce_choices:` override the defaults field by field.

use super::resolve::MethodDef;
use crate::params::{
    BsceChoices, FeatureTap, FinetuneSpec, IcarlDistillation, MethodHyper, MethodParams, NcaPrior,
    Preset, Profile, Recipe, Schedule,
};

/// Which loss a recipe's learning rate is for. iCaRL's binary
/// cross-entropy is averaged over batch x classes, so each logit's gradient
/// is about 1/C (C = 50..1000 seen classes) of softmax cross-entropy's:
/// its published learning rates (1.0-2.0) are 10-20x a softmax one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LossFamily {
    /// iCaRL without BSCE.
    Bce,
    /// Everything else: softmax cross-entropy (BSCE, LUCIR's cosine CE,
    /// PODNet's NCA, plain fine-tuning), iCaRL+BSCE included.
    Softmax,
}

impl LossFamily {
    pub(crate) fn of(preset: Preset, bsce: bool) -> LossFamily {
        match (preset, bsce) {
            (Preset::Icarl, false) => LossFamily::Bce,
            _ => LossFamily::Softmax,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            LossFamily::Bce => "iCaRL's binary cross-entropy",
            LossFamily::Softmax => "a softmax cross-entropy",
        }
    }
}

/// A built-in recipe: the numbers, the loss they are for, where they come
/// from. An experiment or a method may name one without defining it under
/// `recipes:`; a config's own entry of the same name wins (and is the
/// user's choice: no loss check).
pub(crate) struct BuiltinRecipe {
    pub name: &'static str,
    pub family: LossFamily,
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub milestones: &'static [u32],
    pub gamma: f64,
    /// Where the numbers come from: the table's citation, which a test
    /// checks every row has; no code path reads it.
    #[allow(dead_code)]
    pub source: &'static str,
}

/// Every built-in recipe (momentum 0.9 everywhere). Sources: R iCaRL @
/// 7a3d254, L LUCIR @ e5a90ae, A PODNet's inclearn @ c09fc54.
pub(crate) const RECIPES: &[BuiltinRecipe] = &[
    BuiltinRecipe {
        name: "icarl_cifar100",
        family: LossFamily::Bce,
        epochs: 70,
        batch_size: 128,
        lr: 2.0,
        weight_decay: 1e-5,
        schedule: Schedule::Multistep,
        milestones: &[49, 63],
        gamma: 0.2,
        source: "R iCaRL-TheanoLasagne/main_cifar_100_theano.py (module constants: lr 2.0, /5 at 49 and 63, wght_decay 1e-5)",
    },
    BuiltinRecipe {
        name: "icarl_imagenet",
        family: LossFamily::Bce,
        epochs: 60,
        batch_size: 64,
        lr: 1.0,
        weight_decay: 1e-5,
        schedule: Schedule::Multistep,
        milestones: &[20, 30, 40, 50],
        gamma: 0.2,
        source: "A options/icarl/icarl_imagenet100.yaml and icarl_imagenet1000.yaml (R main_resnet_tf.py: lr 2.0, batch 128)",
    },
    BuiltinRecipe {
        name: "icarl_bsce_cifar100",
        family: LossFamily::Softmax,
        epochs: 160,
        batch_size: 128,
        lr: 0.1,
        weight_decay: 5e-4,
        schedule: Schedule::Multistep,
        milestones: &[80, 120],
        gamma: 0.1,
        source: "our choice for iCaRL's softmax + KD: L cifar100-class-incremental/class_incremental_cifar100.py, the CE + KD iCaRL baseline (module constants); PyCIL models/icarl.py also trains it at lr 0.1",
    },
    BuiltinRecipe {
        name: "icarl_bsce_imagenet",
        family: LossFamily::Softmax,
        epochs: 90,
        batch_size: 128,
        lr: 0.1,
        weight_decay: 1e-4,
        schedule: Schedule::Multistep,
        milestones: &[30, 60],
        gamma: 0.1,
        source: "our choice for iCaRL's softmax + KD: L imagenet-class-incremental/class_incremental_imagenet.py, the CE + KD iCaRL baseline (module constants)",
    },
    BuiltinRecipe {
        name: "lucir_cifar100",
        family: LossFamily::Softmax,
        epochs: 160,
        batch_size: 128,
        lr: 0.1,
        weight_decay: 5e-4,
        schedule: Schedule::Multistep,
        milestones: &[80, 120],
        gamma: 0.1,
        source: "L cifar100-class-incremental/class_incremental_cosine_cifar100.py (module constants)",
    },
    BuiltinRecipe {
        name: "lucir_imagenet",
        family: LossFamily::Softmax,
        epochs: 90,
        batch_size: 128,
        lr: 0.1,
        weight_decay: 1e-4,
        schedule: Schedule::Multistep,
        milestones: &[30, 60],
        gamma: 0.1,
        source: "L imagenet-class-incremental/class_incremental_cosine_imagenet.py (module constants)",
    },
    BuiltinRecipe {
        name: "podnet_cifar100",
        family: LossFamily::Softmax,
        epochs: 160,
        batch_size: 128,
        lr: 0.1,
        weight_decay: 5e-4,
        schedule: Schedule::Cosine,
        milestones: &[],
        gamma: 0.1,
        source: "A options/podnet/podnet_cnn_cifar100.yaml",
    },
    BuiltinRecipe {
        name: "podnet_imagenet100",
        family: LossFamily::Softmax,
        epochs: 90,
        batch_size: 64,
        lr: 0.05,
        weight_decay: 5e-4,
        schedule: Schedule::Cosine,
        milestones: &[],
        gamma: 0.1,
        source: "A options/podnet/podnet_cnn_imagenet100.yaml",
    },
    BuiltinRecipe {
        name: "podnet_imagenet1k",
        family: LossFamily::Softmax,
        epochs: 90,
        batch_size: 64,
        lr: 0.05,
        weight_decay: 1e-4,
        schedule: Schedule::Cosine,
        milestones: &[],
        gamma: 0.1,
        source: "A options/podnet/podnet_cnn_imagenet1000.yaml",
    },
    BuiltinRecipe {
        name: "podnet_imagenet",
        family: LossFamily::Softmax,
        epochs: 90,
        batch_size: 64,
        lr: 0.05,
        weight_decay: 1e-4,
        schedule: Schedule::Cosine,
        milestones: &[],
        gamma: 0.1,
        source: "= podnet_imagenet1k (its name before the two ImageNet recipes were told apart)",
    },
];

impl BuiltinRecipe {
    pub(crate) fn recipe(&self) -> Recipe {
        Recipe {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            momentum: 0.9,
            weight_decay: self.weight_decay,
            schedule: self.schedule,
            milestones: self.milestones.to_vec(),
            gamma: self.gamma,
        }
    }
}

/// A built-in recipe by name.
pub(crate) fn builtin_recipe(name: &str) -> Option<&'static BuiltinRecipe> {
    RECIPES.iter().find(|r| r.name == name)
}

/// A method's params for a dataset of `profile`: the preset's published
/// defaults, with the config's overrides on top. Tasks then keep what they
/// read ([`MethodParams::for_task`]).
///
/// | | CIFAR-100 | ImageNet-100 | ImageNet-1k | source |
/// |---|---|---|---|---|
/// | LUCIR less-forget base | 5 | 10 | 10 | L `run.sh`, `--lamda` |
/// | LUCIR balanced fine-tuning | off | off | 20 epochs, lr 0.01, x0.1 at 10 | L `run_all.sh` runs `cbf_class_incremental_cosine_imagenet.py` for ImageNet-Full only |
/// | PODNet POD-flat / POD-spatial | 1 / 3 (NME config: 5) | 10 / 8 | 10 / 8 | A `options/podnet/*.yaml` |
/// | PODNet balanced fine-tuning | 20 epochs, lr 0.05 | 20 epochs, lr 0.01 | 20 epochs, lr 0.01 | A yaml `finetuning_config` |
/// | PODNet gradient clamp | ±5 | ±5 | ±5 | A `podnet.py` `_train_task` |
/// | PODNet classifier scaling, learned η | 1, yes (NME config: 3, no) | 1, yes | 1, yes | A yaml |
pub(crate) fn method_params(m: &MethodDef, profile: Profile) -> MethodParams {
    let imagenet = profile != Profile::Cifar100;
    let o = &m.hyper;
    let hyper = match m.preset {
        Preset::Lucir => MethodHyper {
            less_forget: Some(o.less_forget.unwrap_or(if imagenet { 10.0 } else { 5.0 })),
            ..Default::default()
        },
        Preset::Podnet => MethodHyper {
            pod_flat: Some(o.pod_flat.unwrap_or(if imagenet { 10.0 } else { 1.0 })),
            pod_spatial: Some(o.pod_spatial.unwrap_or(match (imagenet, m.nme_config) {
                (true, _) => 8.0,
                (false, true) => 5.0,
                (false, false) => 3.0,
            })),
            classifier_scaling: Some(o.classifier_scaling.unwrap_or(if m.nme_config {
                3.0
            } else {
                1.0
            })),
            learned_scale: Some(o.learned_scale.unwrap_or(!m.nme_config)),
            gradient_clamp: Some(o.gradient_clamp.unwrap_or(5.0)),
            ..Default::default()
        },
        Preset::Finetune | Preset::Icarl => MethodHyper::default(),
    };
    // BSCE variants go without: correcting the old/new bias is their point.
    let balanced_finetune = m.balanced_finetune.unwrap_or(
        !m.bsce
            && match m.preset {
                Preset::Podnet => true,
                Preset::Lucir => profile == Profile::Imagenet1k,
                Preset::Finetune | Preset::Icarl => false,
            },
    );
    let finetune = balanced_finetune.then(|| {
        let (lr, milestones) = match m.preset {
            Preset::Lucir => (0.01, vec![10]),
            _ if imagenet => (0.01, vec![]),
            _ => (0.05, vec![]),
        };
        let f = &m.finetune;
        FinetuneSpec {
            epochs: f.epochs.unwrap_or(20),
            lr: f.lr.unwrap_or(lr),
            milestones: f.milestones.clone().unwrap_or(milestones),
            gamma: f.gamma.unwrap_or(0.1),
        }
    });
    let c = &m.bsce_choices;
    let bsce_choices = m.bsce.then(|| BsceChoices {
        nca_prior: Some(c.nca_prior.unwrap_or(NcaPrior::AfterScale)),
        margin_ranking: Some(c.margin_ranking.unwrap_or(true)),
        icarl_distillation: Some(
            c.icarl_distillation
                .unwrap_or(IcarlDistillation::SoftmaxKd {
                    temperature: 2.0,
                    weight: 1.0,
                }),
        ),
    });
    MethodParams {
        preset: m.preset,
        bsce: m.bsce,
        balanced_finetune,
        memory_per_class: m.memory_per_class.map(|n| n as usize),
        memory_total: m.memory_total.map(|n| n as usize),
        selection: m.selection,
        // Each reference's own tap; finetune has none: its classifier's input.
        features: m.features.unwrap_or(match m.preset {
            Preset::Finetune => FeatureTap::PostActivation,
            _ => FeatureTap::PreActivation,
        }),
        hyper,
        finetune,
        bsce_choices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(preset: Preset, bsce: bool) -> MethodDef {
        MethodDef {
            name: "m".into(),
            preset,
            nme_config: false,
            bsce,
            balanced_finetune: None,
            finetune: Default::default(),
            features: None,
            hyper: MethodHyper::default(),
            bsce_choices: BsceChoices::default(),
            memory_per_class: Some(20),
            memory_total: None,
            selection: crate::params::Selection::Herding,
            base_method: "m".into(),
            recipe: None,
        }
    }

    fn json(m: &MethodParams) -> String {
        serde_json::to_string(m).unwrap()
    }

    #[test]
    fn lucir_follows_its_scripts_per_dataset() {
        // L run.sh: --lamda 5 on CIFAR, 10 on ImageNet; CBF only in
        // run_all.sh (ImageNet-Full): 20 epochs, lr 0.01, x0.1 at 10.
        let cifar = method_params(&method(Preset::Lucir, false), Profile::Cifar100);
        assert_eq!(cifar.hyper.less_forget, Some(5.0));
        assert!(!cifar.balanced_finetune && cifar.finetune.is_none());
        let subset = method_params(&method(Preset::Lucir, false), Profile::Imagenet100);
        assert_eq!(subset.hyper.less_forget, Some(10.0));
        assert!(!subset.balanced_finetune);
        let full = method_params(&method(Preset::Lucir, false), Profile::Imagenet1k);
        assert_eq!(
            full.finetune,
            Some(FinetuneSpec {
                epochs: 20,
                lr: 0.01,
                milestones: vec![10],
                gamma: 0.1
            })
        );
        // A BSCE variant goes without, unless asked.
        assert!(
            !method_params(&method(Preset::Lucir, true), Profile::Imagenet1k).balanced_finetune
        );
        let mut asked = method(Preset::Lucir, false);
        asked.balanced_finetune = Some(true);
        asked.finetune.lr = Some(0.02);
        let asked = method_params(&asked, Profile::Cifar100);
        assert_eq!(asked.finetune.unwrap().lr, 0.02);
    }

    #[test]
    fn podnet_follows_its_yaml_per_dataset_and_its_nme_config() {
        let p = |profile, nme| {
            let mut m = method(Preset::Podnet, false);
            m.nme_config = nme;
            method_params(&m, profile)
        };
        let cifar = p(Profile::Cifar100, false);
        assert_eq!(
            (cifar.hyper.pod_flat, cifar.hyper.pod_spatial),
            (Some(1.0), Some(3.0))
        );
        assert_eq!(cifar.hyper.gradient_clamp, Some(5.0));
        assert_eq!(cifar.hyper.classifier_scaling, Some(1.0));
        assert_eq!(cifar.hyper.learned_scale, Some(true));
        let ft = cifar.finetune.unwrap();
        assert_eq!((ft.epochs, ft.lr, ft.milestones.len()), (20, 0.05, 0));
        let imagenet = p(Profile::Imagenet100, false);
        assert_eq!(
            (imagenet.hyper.pod_flat, imagenet.hyper.pod_spatial),
            (Some(10.0), Some(8.0))
        );
        assert_eq!(imagenet.finetune.unwrap().lr, 0.01);
        let nme = p(Profile::Cifar100, true);
        assert_eq!(nme.hyper.pod_spatial, Some(5.0));
        assert_eq!(nme.hyper.classifier_scaling, Some(3.0));
        assert_eq!(nme.hyper.learned_scale, Some(false));
        // Weight decay: ImageNet-100 5e-4, ImageNet-1k 1e-4.
        assert_eq!(
            builtin_recipe("podnet_imagenet100").unwrap().weight_decay,
            5e-4
        );
        assert_eq!(
            builtin_recipe("podnet_imagenet1k").unwrap().weight_decay,
            1e-4
        );
    }

    #[test]
    fn herding_features_are_each_references_and_hyper_fields_belong_to_their_preset() {
        for preset in [Preset::Icarl, Preset::Lucir, Preset::Podnet] {
            let m = method_params(&method(preset, false), Profile::Cifar100);
            assert_eq!(m.features, FeatureTap::PreActivation, "{preset:?}");
        }
        let f = method_params(&method(Preset::Finetune, false), Profile::Cifar100);
        assert_eq!(f.features, FeatureTap::PostActivation);
        assert_eq!(f.hyper, MethodHyper::default());
        let l = method_params(&method(Preset::Lucir, false), Profile::Cifar100);
        assert!(l.hyper.pod_flat.is_none() && l.hyper.gradient_clamp.is_none());
    }

    #[test]
    fn a_base_task_is_shared_exactly_when_its_computation_is_the_same() {
        for preset in [Preset::Finetune, Preset::Lucir, Preset::Podnet] {
            let plain = method_params(&method(preset, false), Profile::Cifar100);
            let bsce = method_params(&method(preset, true), Profile::Cifar100);
            assert_eq!(
                json(&plain.for_task(0, true)),
                json(&bsce.for_task(0, true)),
                "{preset:?}: BSCE on equal counts is the plain softmax loss"
            );
            assert_ne!(
                json(&plain.for_task(0, false)),
                json(&bsce.for_task(0, false))
            );
            assert_ne!(
                json(&plain.for_task(1, true)),
                json(&bsce.for_task(1, true))
            );
        }
        // iCaRL's plain loss is BCE: never the same as BSCE.
        let plain = method_params(&method(Preset::Icarl, false), Profile::Cifar100);
        let bsce = method_params(&method(Preset::Icarl, true), Profile::Cifar100);
        assert_ne!(
            json(&plain.for_task(0, true)),
            json(&bsce.for_task(0, true))
        );
        assert!(bsce.for_task(0, true).bsce);
    }

    #[test]
    fn bsce_choices_are_in_a_task_exactly_where_it_reads_them() {
        let choices = |preset, task| {
            method_params(&method(preset, true), Profile::Cifar100)
                .for_task(task, false)
                .bsce_choices
        };
        assert_eq!(
            choices(Preset::Podnet, 0).unwrap().nca_prior,
            Some(NcaPrior::AfterScale)
        );
        assert!(
            choices(Preset::Lucir, 0).is_none(),
            "no margin ranking without old classes"
        );
        assert_eq!(
            choices(Preset::Lucir, 1).unwrap().margin_ranking,
            Some(true)
        );
        assert!(choices(Preset::Icarl, 0).is_none());
        assert_eq!(
            choices(Preset::Icarl, 2).unwrap(),
            BsceChoices {
                icarl_distillation: Some(IcarlDistillation::SoftmaxKd {
                    temperature: 2.0,
                    weight: 1.0
                }),
                ..Default::default()
            }
        );
        assert!(choices(Preset::Finetune, 1).is_none());
        // A choice set in the config replaces the default.
        let mut m = method(Preset::Podnet, true);
        m.bsce_choices.nca_prior = Some(NcaPrior::BeforeScale);
        let p = method_params(&m, Profile::Cifar100).for_task(1, true);
        assert_eq!(
            p.bsce_choices.unwrap().nca_prior,
            Some(NcaPrior::BeforeScale)
        );
    }

    #[test]
    fn built_in_recipes_follow_the_protocol_and_name_their_loss() {
        let r = |n| builtin_recipe(n).unwrap_or_else(|| panic!("{n}"));
        let podnet = r("podnet_cifar100").recipe();
        assert_eq!(podnet.epochs, 160);
        assert_eq!(podnet.schedule, Schedule::Cosine);
        assert_eq!(r("lucir_cifar100").milestones, &[80, 120]);
        // iCaRL's BCE at its references' rates; its BSCE variant at a
        // softmax rate, 20x and 10x lower.
        assert_eq!(
            (r("icarl_cifar100").lr, r("icarl_cifar100").family),
            (2.0, LossFamily::Bce)
        );
        assert_eq!(
            (r("icarl_imagenet").lr, r("icarl_imagenet").family),
            (1.0, LossFamily::Bce)
        );
        assert_eq!(r("icarl_imagenet").milestones, &[20, 30, 40, 50]);
        for n in ["icarl_bsce_cifar100", "icarl_bsce_imagenet"] {
            assert_eq!((r(n).lr, r(n).family), (0.1, LossFamily::Softmax), "{n}");
        }
        assert!(builtin_recipe("nope").is_none());
        let names: std::collections::BTreeSet<_> = RECIPES.iter().map(|r| r.name).collect();
        assert_eq!(names.len(), RECIPES.len(), "one entry per name");
        assert!(RECIPES.iter().all(|r| !r.source.is_empty()));
        assert_eq!(LossFamily::of(Preset::Icarl, false), LossFamily::Bce);
        assert_eq!(LossFamily::of(Preset::Icarl, true), LossFamily::Softmax);
        assert_eq!(LossFamily::of(Preset::Lucir, false), LossFamily::Softmax);
    }
}
