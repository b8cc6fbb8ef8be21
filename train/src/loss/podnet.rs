//! PODNet's losses (reference A, `losses/base.py` `nca`,
//! `losses/distillation.py` `pod`).

use bsce_pipeline::params::NcaPrior;
use tch::{Kind, Tensor};

use super::{check_batch, mean_one_minus_cosine};

/// NCA margin of A's configs (`nca: margin: 0.6`, CIFAR and ImageNet).
/// The POD factors, which differ per dataset, come with the stage's params
/// (`MethodHyper`, defaults in `pipeline/src/config/presets.rs`).
pub const NCA_MARGIN: f64 = 0.6;

// ---------------------------------------------------------------------------
// PODNet (reference A, losses/base.py `nca`, losses/distillation.py `pod`)
// ---------------------------------------------------------------------------

/// PODNet's NCA loss, mean over the batch.
///
/// `logits` are the merged, unscaled LSC similarities z (§3.3), `scale` the
/// learned η (a 0-d or one-element tensor; gradient flows into it), `margin`
/// m (0.6 in A's configs).
///
/// `as_coded = true` replays A's `nca` step by step (§3.4): a = η(z − m) for
/// **every** class (the per-class margin vector is built and never used,
/// A#59), a stability shift by the non-detached row max, and
/// `-a_y + log(1 + Σ_{c≠y} e^{a_c})`, the 1 being the zeroed target column.
/// Its closed form is `log(e^{a_max} + Σ_{c≠y} e^{a_c}) − a_y`: the margin
/// cancels and the arg-max class is counted twice when it is not the target.
///
/// `as_coded = false` is the paper's hinged NCA:
/// `[log Σ_{c≠y} e^{a_c} − a_y]₊` with a = η(z − m·𝟙[c = y]).
///
/// `log_counts` (ln n_c per class, from [`log_count_adjustment`]) is
/// Balanced Softmax's prior. BSCE replaces the classification loss, and for
/// PODNet that loss is this NCA, so the prior is added to a after the scale
/// and the margin (§8): its strength then does not ride on the learned η,
/// as in standard Balanced Softmax. This placement is our reading; the
/// paper does not spell it out.
pub fn podnet_nca(
    logits: &Tensor,
    targets: &Tensor,
    scale: &Tensor,
    margin: f64,
    as_coded: bool,
    log_counts: Option<&Tensor>,
) -> Tensor {
    podnet_nca_with_prior(
        logits,
        targets,
        scale,
        margin,
        as_coded,
        log_counts,
        NcaPrior::AfterScale,
    )
}

/// [`podnet_nca`] with the prior's place chosen: `AfterScale` gives
/// a = η(z − m) + log n_c (the default, [`podnet_nca`]); `BeforeScale`
/// gives a = η(z − m + log n_c), the prior scaled with the logits by the
/// learned η; `BalancedSoftmax` replaces the NCA by Balanced Softmax
/// cross-entropy on η·z (no margin). Without a prior the three are the same
/// loss, the NCA.
pub fn podnet_nca_with_prior(
    logits: &Tensor,
    targets: &Tensor,
    scale: &Tensor,
    margin: f64,
    as_coded: bool,
    log_counts: Option<&Tensor>,
    placement: NcaPrior,
) -> Tensor {
    let (_, classes) = check_batch(logits, targets);
    assert_eq!(scale.numel(), 1, "podnet_nca: the scale η is one number");
    let is_target = targets.one_hot(classes).to_kind(Kind::Bool);
    let prior = log_counts.map(|log_n| {
        assert_eq!(
            log_n.size(),
            [classes],
            "podnet_nca: one log count per class"
        );
        log_n.to_device(logits.device()).to_kind(logits.kind())
    });
    if let (Some(p), NcaPrior::BalancedSoftmax) = (&prior, placement) {
        return super::balanced_softmax_log_prior(&(logits * scale), targets, p);
    }
    // `shifted` is z minus the margin, before the scale.
    let with_prior = |shifted: Tensor| match (&prior, placement) {
        (None, _) => shifted * scale,
        (Some(p), NcaPrior::AfterScale | NcaPrior::BalancedSoftmax) => shifted * scale + p,
        (Some(p), NcaPrior::BeforeScale) => (shifted + p) * scale,
    };
    let target_column = targets.unsqueeze(1);
    if as_coded {
        let a = with_prior(logits - margin);
        let a = &a - a.amax([1], true);
        let a_y = a.gather(1, &target_column, false).squeeze_dim(1);
        let denominator = a.masked_fill(&is_target, 0.0);
        (denominator
            .exp()
            .sum_dim_intlist(1, false, None::<Kind>)
            .log()
            - a_y)
            .mean(None::<Kind>)
    } else {
        assert!(
            classes >= 2,
            "podnet_nca: the paper's NCA needs a non-target class"
        );
        let target_margin = is_target.to_kind(logits.kind()) * margin;
        let a = with_prior(logits - target_margin);
        let a_y = a.gather(1, &target_column, false).squeeze_dim(1);
        let others = a
            .masked_fill(&is_target, f64::NEG_INFINITY)
            .logsumexp([1], false);
        (others - a_y).clamp_min(0.0).mean(None::<Kind>)
    }
}

/// POD-flat (§3.5): `(1/B) Σ_b (1 − cos(h_b, h*_b))` on the (B, D) raw
/// (pre-ReLU GAP) features of the current and the old model; every sample.
pub fn pod_flat(raw: &Tensor, old_raw: &Tensor) -> Tensor {
    mean_one_minus_cosine(raw, old_raw)
}

/// POD-spatial (§3.5, collapse "spatial"), over matching lists of (B, C, H, W)
/// attention maps of the current and the old model. Per layer: square,
/// height profile Σ_w and width profile Σ_h, flattened channel-major and
/// concatenated, the whole C(H+W) vector L2-normalised, then the plain
/// (unsquared) L2 distance, averaged over the batch. Layers are averaged,
/// not summed.
pub fn pod_spatial(attention: &[Tensor], old_attention: &[Tensor]) -> Tensor {
    assert!(
        !attention.is_empty() && attention.len() == old_attention.len(),
        "pod_spatial: {} maps against {} old maps",
        attention.len(),
        old_attention.len()
    );
    let per_layer: Vec<Tensor> = attention
        .iter()
        .zip(old_attention)
        .map(|(new, old)| {
            assert!(
                new.dim() == 4 && new.size() == old.size(),
                "pod_spatial: maps {:?} and {:?} must be one (B, C, H, W) shape",
                new.size(),
                old.size()
            );
            (spatial_profile(new) - spatial_profile(&old.detach()))
                .norm_scalaropt_dim(2, [1], false)
                .mean(None::<Kind>)
        })
        .collect();
    Tensor::stack(&per_layer, 0).mean(None::<Kind>)
}

/// PODNet's distillation weight (§3.5): `base · sqrt(C_seen / C_new)`, with
/// C_seen including the current task's classes.
pub fn pod_factor(base: f64, seen: i64, new: i64) -> f64 {
    assert!(
        seen >= new && new > 0,
        "pod_factor: {seen} seen, {new} new classes"
    );
    base * (seen as f64 / new as f64).sqrt()
}

/// The L2-normalised [height profile ‖ width profile] of squared activations.
fn spatial_profile(map: &Tensor) -> Tensor {
    let energy = map.square();
    let batch = map.size()[0];
    let height = energy
        .sum_dim_intlist(3, false, None::<Kind>)
        .reshape([batch, -1]);
    let width = energy
        .sum_dim_intlist(2, false, None::<Kind>)
        .reshape([batch, -1]);
    let profile = Tensor::cat(&[height, width], 1);
    // F.normalize's guard: an all-zero map stays zero instead of NaN.
    let norm = profile.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    profile / norm
}
