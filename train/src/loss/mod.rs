//! Training losses of the three base methods and of Balanced Softmax, as pure
//! functions of tch tensors. Each returns a 0-d tensor on the device and in
//! the float kind of its first argument. Section numbers (§) refer to
//! ../shared/reference/method-formulas.md.
//!
//! | function                       | method        | reduction                                 | §        |
//! |--------------------------------|---------------|-------------------------------------------|----------|
//! | [`cross_entropy`]              | LUCIR, PyCIL  | mean over the batch                       | 4.3, 6.3 |
//! | [`balanced_softmax`]           | BSCE          | mean over the batch                       | 8        |
//! | [`balanced_softmax_log_prior`] | BSCE          | mean over the batch                       | 8        |
//! | [`icarl_bce`]                  | iCaRL (A, R)  | mean over batch x classes                 | 6.1, 6.2 |
//! | [`kd_logits`]                  | iCaRL (PyCIL) | sum over old classes, mean over the batch | 6.3      |
//! | [`lucir_less_forget`]          | LUCIR         | mean over the batch, times lambda         | 4.3      |
//! | [`lucir_margin_ranking`]       | LUCIR         | mean over hard samples x K                | 4.3      |
//! | [`podnet_nca`]                 | PODNet        | mean over the batch                       | 3.4, 8   |
//! | [`pod_flat`]                   | PODNet        | mean over the batch                       | 3.5      |
//! | [`pod_spatial`]                | PODNet        | batch mean per layer, mean over layers    | 3.5      |
//!
//! Conventions shared by all of them:
//! - `targets` are `Int64` class indices into the logit columns.
//! - Old-model (teacher) inputs are detached here, so gradient can never
//!   reach the frozen model even if the caller forgot `no_grad`.
//! - Shapes are preconditions checked with assertions: a mismatch is a bug
//!   in the training loop, not something a user's config can cause, so it
//!   panics rather than returning a `StageError`.
//! - Loss weights (lw_mr, λ_flat, λ_spatial) are the caller's, except LUCIR's
//!   less-forget λ which the reference folds into the term itself.
//!
//! One module per method, each with the constants its reference uses, so
//! the registry can give a train stage the code digest of its own method:
//! this file (shared: CE, BSCE, feature distillation) is in every train
//! stage's digest, `icarl.rs`, `lucir.rs` and `podnet.rs` only in their
//! method's. An edit to LUCIR's losses reruns LUCIR's stages, no other.

use tch::{Device, Kind, Reduction, Tensor};

// ---------------------------------------------------------------------------
// Cross-entropy and Balanced Softmax
// ---------------------------------------------------------------------------

/// Softmax cross-entropy, mean over the batch (LUCIR §4.3, PyCIL iCaRL
/// §6.3). Keeps the logits' float kind: tch's `cross_entropy_for_logits`
/// would silently compute in f32.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    check_batch(logits, targets);
    logits.log_softmax(-1, None::<Kind>).nll_loss(targets)
}

/// Balanced Softmax (§8; Ren et al. 2020 eq. 4): cross-entropy on
/// `logits + log n_c`, mean over the batch, i.e.
/// `-(1/B) Σ_b log(n_y e^{z_y} / Σ_c n_c e^{z_c})`.
///
/// `class_counts` holds, per logit column, the number of samples of that
/// class in the current task's training set (new data plus memory), as an
/// integer tensor. A count of 0 is treated as 1 (see
/// [`log_count_adjustment`]). Training only: predictions use the plain
/// logits.
///
/// Integer counts are required so that a prior that is already a logarithm
/// cannot be logged a second time without notice: for that, use
/// [`balanced_softmax_log_prior`].
pub fn balanced_softmax(logits: &Tensor, targets: &Tensor, class_counts: &Tensor) -> Tensor {
    assert!(
        !class_counts.is_floating_point(),
        "balanced_softmax: class_counts must be integer sample counts, got {:?}; \
         pass a ln(n) prior (log_count_adjustment) to balanced_softmax_log_prior",
        class_counts.kind()
    );
    let log_n = class_counts
        .to_device(logits.device())
        .to_kind(logits.kind())
        .clamp_min(1.0)
        .log();
    balanced_softmax_log_prior(logits, targets, &log_n)
}

/// [`balanced_softmax`] with the prior already computed, `log_counts` being
/// ln n_c per logit column (from [`log_count_adjustment`], once per task).
pub fn balanced_softmax_log_prior(
    logits: &Tensor,
    targets: &Tensor,
    log_counts: &Tensor,
) -> Tensor {
    let (_, classes) = check_batch(logits, targets);
    assert_eq!(
        log_counts.size(),
        [classes],
        "balanced_softmax: one count per logit column"
    );
    let prior = log_counts.to_device(logits.device()).to_kind(logits.kind());
    cross_entropy(&(logits + prior), targets)
}

/// `ln(max(n_c, 1))` per class, as an f32 vector on `device`: the prior that
/// [`balanced_softmax_log_prior`] and [`podnet_nca`] take as `log_counts`
/// (and that [`balanced_softmax`] computes itself from raw counts).
///
/// Why a floor of 1 rather than `ln 0 = -inf`: the exact limit n_c -> 0
/// removes the class from every softmax normaliser, but an infinite logit
/// turns into NaN as soon as it meets `0 * inf` (one-hot products, the NCA
/// max shift of a row whose arg-max is the class, an all-absent row). A
/// class with no sample (a memory-free step) is instead priced as if it had
/// one: its logit is still pushed down, as in plain cross-entropy, but
/// ln(500) ≈ 6.2 below a new class, the strongest correction any count gives.
pub fn log_count_adjustment(counts: &[u64], device: Device) -> Tensor {
    let logs: Vec<f32> = counts
        .iter()
        .map(|&n| (n.max(1) as f64).ln() as f32)
        .collect();
    Tensor::from_slice(&logs).to_device(device)
}

/// Asserts `logits` is (B, C) and `targets` is (B,) of `Int64`; returns (B, C).
pub(crate) fn check_batch(logits: &Tensor, targets: &Tensor) -> (i64, i64) {
    let size = logits.size();
    assert_eq!(
        size.len(),
        2,
        "logits must be (batch, classes), got {size:?}"
    );
    assert_eq!(
        targets.size(),
        [size[0]],
        "targets must hold one label per logit row"
    );
    assert_eq!(targets.kind(), Kind::Int64, "targets must be Int64 labels");
    (size[0], size[1])
}

/// `(1/B) Σ_b (1 - cos(x_b, old_b))`: libtorch's cosine-embedding loss with
/// target +1, as L (less-forget) and A (POD-flat) call it.
pub(crate) fn mean_one_minus_cosine(x: &Tensor, old: &Tensor) -> Tensor {
    let size = x.size();
    assert!(
        size.len() == 2 && old.size() == size,
        "feature distillation needs two (batch, dim) tensors of one shape, got {size:?} and {:?}",
        old.size()
    );
    let same = Tensor::ones([size[0]], (x.kind(), x.device()));
    Tensor::cosine_embedding_loss(x, &old.detach(), &same, 0.0, Reduction::Mean)
}

pub mod icarl;
pub mod lucir;
pub mod podnet;

pub use icarl::{icarl_bce, kd_logits};
pub use lucir::{lucir_lambda, lucir_less_forget, lucir_margin_ranking};
pub use podnet::{pod_factor, pod_flat, pod_spatial, podnet_nca};

#[cfg(test)]
mod tests;
