//! LUCIR's losses (reference L, `incremental_train_and_eval_MR_LF.py`).

use tch::{Kind, Tensor};

use super::{check_batch, mean_one_minus_cosine};

// The less-forget base (L's `--lamda`: 5 on CIFAR, 10 on ImageNet) comes
// with the stage's params (`MethodHyper::less_forget`).
/// Margin ranking: L's `--K 2` hard negatives, `--dist 0.5` margin.
pub const MARGIN_RANKING_K: i64 = 2;
pub const MARGIN: f64 = 0.5;

// ---------------------------------------------------------------------------
// LUCIR (reference L, incremental_train_and_eval_MR_LF.py)
// ---------------------------------------------------------------------------

/// Less-forget (§4.3): `λ · (1/B) Σ_b (1 - cos(f_b, f*_b))` over every
/// sample, new and exemplar. `features` and `old_features` are the (B, D)
/// classifier inputs of the current and the old model; libtorch's
/// cosine-embedding loss with target +1 normalises them itself (with its
/// 1e-12 guard), exactly as L's `nn.CosineEmbeddingLoss` call does.
pub fn lucir_less_forget(features: &Tensor, old_features: &Tensor, lambda: f64) -> Tensor {
    mean_one_minus_cosine(features, old_features) * lambda
}

/// LUCIR's adaptive less-forget weight (§4.3): `base · sqrt(C_old / C_new)`,
/// with C_old the output width of the previous classifier (L uses old/new;
/// A's re-implementation uses seen/new, §4.7, which is [`pod_factor`]).
pub fn lucir_lambda(base: f64, num_old: i64, num_new: i64) -> f64 {
    assert!(
        num_old >= 0 && num_new > 0,
        "lucir_lambda: {num_old} old, {num_new} new classes"
    );
    base * (num_old as f64 / num_new as f64).sqrt()
}

/// Margin ranking (§4.3), without L's `lw_mr` weight (1 there; the caller's).
///
/// `cos_logits` are the (B, C_seen) cosines **before σ**, old classes in the
/// first `num_old` columns. Only samples labelled with an old class take
/// part (H of them); each is paired with its K largest new-class cosines:
/// `(1/(H·K)) Σ_b Σ_k max(0, margin - cos_{b,y_b} + n_{b,k})`.
/// A batch without old-class samples gives an exact 0 (L returns a constant
/// zero there too), a 0-d tensor outside the graph.
///
/// L's code asks `topk(K)` of the new columns and would fail when a step
/// adds fewer than K classes; here K is capped at the number of new classes.
pub fn lucir_margin_ranking(
    cos_logits: &Tensor,
    targets: &Tensor,
    num_old: i64,
    k: i64,
    margin: f64,
) -> Tensor {
    let (_, classes) = check_batch(cos_logits, targets);
    let num_new = classes - num_old;
    assert!(
        num_old >= 0 && num_new > 0 && k > 0,
        "lucir_margin_ranking: {num_old} old of {classes} classes, K = {k}"
    );
    let hard = targets.lt(num_old).nonzero().squeeze_dim(1);
    if hard.size()[0] == 0 {
        return Tensor::zeros([], (cos_logits.kind(), cos_logits.device()));
    }
    let scores = cos_logits.index_select(0, &hard);
    let ground_truth = scores.gather(1, &targets.index_select(0, &hard).unsqueeze(1), false);
    let (hard_negatives, _) =
        scores
            .narrow(1, num_old, num_new)
            .topk(k.min(num_new), 1, true, true);
    (hard_negatives - ground_truth + margin)
        .clamp_min(0.0)
        .mean(None::<Kind>)
}
