//! The steps the main phase (`train.rs`) and the class-balanced
//! fine-tuning phases (`finetune.rs`) share: the classification term, one
//! SGD step, feature extraction and the images of a class.

use bsce_pipeline::params::NcaPrior;
use bsce_stages::dataset::artefact::{MappedDataset, SplitName};
use tch::{nn, Device, Kind, Tensor};

use super::Model;
use crate::data::{flip_horizontal, load, AugmentSpec};
use crate::loss;
use crate::method::{Preset, TrainParams};
use crate::net::BackboneOut;

/// Images per forward pass when extracting features (no gradients).
const EXTRACT_BATCH: usize = 256;

/// PODNet's NME configuration has no learned η: NCA's scale stays 1, so
/// η is kept out of every optimiser step.
pub(super) fn freeze_unlearned_scale(p: &TrainParams, model: &Model) {
    if p.method.hyper.learned_scale == Some(false) {
        if let Some(eta) = model.head.scale() {
            let _ = eta.set_requires_grad(false);
        }
    }
}

/// The classifier's input: the pre-activation features for LUCIR and
/// PODNet, the post-ReLU ones for the linear heads.
pub(crate) fn classifier_input(preset: Preset, out: &BackboneOut) -> Tensor {
    if crate::method::uses_raw_features(preset) {
        out.raw.shallow_clone()
    } else {
        out.features.shallow_clone()
    }
}

/// Whether LUCIR's margin ranking is in the loss: always without BSCE;
/// with it, unless `bsce_choices.margin_ranking` turns it off. The main
/// phase and fine-tuning both ask here.
pub(crate) fn keeps_margin_ranking(p: &TrainParams) -> bool {
    !p.method.bsce
        || p.method
            .bsce_choices
            .as_ref()
            .and_then(|c| c.margin_ranking)
            != Some(false)
}

/// The training images (of `n`) whose incremental class is `c`.
pub(super) fn images_of_class(n: usize, target_of: &dyn Fn(usize) -> i64, c: usize) -> Vec<usize> {
    (0..n).filter(|&i| target_of(i) as usize == c).collect()
}

/// PODNet's NCA scale: the learned η, or the constant 1 of its NME
/// configuration (no post-processor).
pub(super) fn nca_scale(p: &TrainParams, model: &Model, device: Device) -> Tensor {
    match (p.method.hyper.learned_scale, model.head.scale()) {
        (Some(true), Some(eta)) => eta,
        _ => Tensor::ones([1], (Kind::Float, device)),
    }
}

/// The classification term: the preset's softmax loss, or BSCE.
pub(super) fn classification(
    p: &TrainParams,
    model: &Model,
    logits: &Tensor,
    y: &Tensor,
    counts: &Tensor,
    log_counts: &Tensor,
) -> (&'static str, Tensor) {
    let bsce = p.method.bsce;
    match p.method.preset {
        Preset::Podnet => {
            let eta = nca_scale(p, model, logits.device());
            let placement = p
                .method
                .bsce_choices
                .as_ref()
                .and_then(|c| c.nca_prior)
                .unwrap_or(NcaPrior::AfterScale);
            let name = match placement {
                NcaPrior::BalancedSoftmax if bsce => "bsce",
                _ => "nca",
            };
            (
                name,
                loss::podnet::podnet_nca_with_prior(
                    logits,
                    y,
                    &eta,
                    loss::podnet::NCA_MARGIN,
                    true,
                    bsce.then_some(log_counts),
                    placement,
                ),
            )
        }
        _ if bsce => ("bsce", loss::balanced_softmax(logits, y, counts)),
        _ => ("ce", loss::cross_entropy(logits, y)),
    }
}

/// One SGD step on `loss`, with every gradient element first clamped to
/// ±`clamp` where the method does so (PODNet: A `podnet.py` `_train_task`
/// registers `torch.clamp(grad, -5., 5.)` as a hook on every trainable
/// parameter, so the clamp applies before SGD adds weight decay, as here).
pub(super) fn sgd_step(
    opt: &mut nn::Optimizer,
    vs: &nn::VarStore,
    loss: &Tensor,
    clamp: Option<f64>,
) {
    opt.zero_grad();
    loss.backward();
    if let Some(c) = clamp {
        tch::no_grad(|| {
            for v in vs.trainable_variables() {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.clamp_(-c, c);
                }
            }
        });
    }
    opt.step();
}

/// Features of `idx` training images in eval mode, batch by batch.
#[allow(clippy::too_many_arguments)]
pub(super) fn extract(
    model: &Model,
    ds: &MappedDataset,
    idx: &[usize],
    aug: &AugmentSpec,
    device: Device,
    flipped: bool,
    feature_of: &dyn Fn(&BackboneOut) -> Tensor,
) -> Tensor {
    tch::no_grad(|| {
        let parts: Vec<Tensor> = idx
            .chunks(EXTRACT_BATCH)
            .map(|chunk| {
                let mut x = load(ds.images(SplitName::Train), chunk, aug, false, 0, device);
                if flipped {
                    x = flip_horizontal(&x);
                }
                feature_of(&model.backbone.forward_t(&x, false))
            })
            .collect();
        Tensor::cat(&parts, 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;

    #[test]
    fn the_gradient_clamp_applies_before_weight_decay_as_the_reference_hook_does() {
        let step = |clamp| {
            let vs = nn::VarStore::new(Device::Cpu);
            let w = vs.root().var("w", &[2], nn::Init::Const(1.0));
            let mut opt = nn::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                wd: 0.01,
                nesterov: false,
            }
            .build(&vs, 0.1)
            .unwrap();
            let loss = (&w * Tensor::from_slice(&[100f32, 1.0])).sum(Kind::Float);
            sgd_step(&mut opt, &vs, &loss, clamp);
            Vec::<f32>::try_from(&w).unwrap()
        };
        // torch: the hook turns grad [100, 1] into [5, 1]; SGD then adds
        // wd·w: d = [5.01, 1.01], w = 1 - 0.1·d.
        let clamped = step(Some(5.0));
        assert!(
            (clamped[0] - 0.499).abs() < 1e-6 && (clamped[1] - 0.899).abs() < 1e-6,
            "{clamped:?}"
        );
        let free = step(None);
        assert!((free[0] - (1.0 - 0.1 * 100.01)).abs() < 1e-4, "{free:?}");
    }
}
