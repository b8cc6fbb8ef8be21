//! iCaRL's losses (reference R, and A's re-implementation), and the
//! logit distillation iCaRL+BSCE uses (PyCIL).

use tch::{Kind, Reduction, Tensor};

use super::check_batch;

// ---------------------------------------------------------------------------
// iCaRL: BCE with old-model sigmoid targets (R, A); softmax KD (PyCIL)
// ---------------------------------------------------------------------------

/// iCaRL's binary cross-entropy (§6.1 R, §6.2 A `_compute_loss`), mean over
/// batch x classes.
///
/// Targets are one-hot over the logit columns, except that columns
/// `[0, num_old)` hold the old model's sigmoid outputs for every sample,
/// exemplars included, so an exemplar's own old class gets σ(z*) and not 1.
/// A's head has the seen classes only; R's has all 100 outputs from the
/// start, so its unseen columns get target 0: both are this function with
/// the caller's logits. `old_logits` may be wider than `num_old` (R's old
/// network has 100 outputs); only its first `num_old` columns are read.
/// `None` (task 0) requires `num_old == 0`.
pub fn icarl_bce(
    logits: &Tensor,
    targets: &Tensor,
    old_logits: Option<&Tensor>,
    num_old: i64,
) -> Tensor {
    let (batch, classes) = check_batch(logits, targets);
    let onehot = targets.one_hot(classes).to_kind(logits.kind());
    let soft = match old_logits {
        None => {
            assert_eq!(
                num_old, 0,
                "icarl_bce: old classes need the old model's logits"
            );
            onehot
        }
        Some(old) => {
            assert!(
                (0..=classes).contains(&num_old),
                "icarl_bce: {num_old} old classes but {classes} logit columns"
            );
            let size = old.size();
            assert!(
                size.len() == 2 && size[0] == batch && size[1] >= num_old,
                "icarl_bce: old logits {size:?} do not cover {num_old} old classes"
            );
            let old_targets = old
                .detach()
                .narrow(1, 0, num_old)
                .sigmoid()
                .to_kind(logits.kind());
            Tensor::cat(
                &[old_targets, onehot.narrow(1, num_old, classes - num_old)],
                1,
            )
        }
    };
    logits.binary_cross_entropy_with_logits::<Tensor>(&soft, None, None, Reduction::Mean)
}

/// Softmax knowledge distillation as in PyCIL's iCaRL (§6.3):
/// `-(1/B) Σ_b Σ_{c<C_old} softmax(z*_b/T)_c log softmax(z_b[..C_old]/T)_c`,
/// where C_old is the width of `old_logits` and only the first C_old columns
/// of `new_logits` take part. Summed over classes, averaged over the batch,
/// **no T² factor** (PyCIL has none; weight 1 with T = 2).
///
/// LUCIR's non-cosine baseline (§6.4, β T² C_old · KLDiv_mean with β = 0.25,
/// T = 2) has overall coefficient 1 and differs from this only by the
/// teacher's entropy, a constant: same gradients.
pub fn kd_logits(new_logits: &Tensor, old_logits: &Tensor, temperature: f64) -> Tensor {
    let (new_size, old_size) = (new_logits.size(), old_logits.size());
    assert!(
        new_size.len() == 2
            && old_size.len() == 2
            && new_size[0] == old_size[0]
            && new_size[1] >= old_size[1],
        "kd_logits: new logits {new_size:?} do not cover old logits {old_size:?}"
    );
    assert!(temperature > 0.0, "kd_logits: temperature must be positive");
    let teacher = (old_logits.detach() / temperature)
        .softmax(-1, None::<Kind>)
        .to_kind(new_logits.kind());
    let student =
        (new_logits.narrow(1, 0, old_size[1]) / temperature).log_softmax(-1, None::<Kind>);
    -(teacher * student)
        .sum_dim_intlist(1, false, None::<Kind>)
        .mean(None::<Kind>)
}

/// iCaRL's distillation on its own, for iCaRL+BSCE's `sigmoid_bce` choice:
/// binary cross-entropy between the sigmoids of the student's old-class
/// logits and the old model's sigmoids, mean over batch x old classes
/// (the old-column part of [`icarl_bce`], §6.1). `old_logits` may be wider
/// than `student_old` (only its first columns are read).
pub fn sigmoid_distillation(student_old: &Tensor, old_logits: &Tensor) -> Tensor {
    let size = student_old.size();
    assert_eq!(
        size.len(),
        2,
        "sigmoid_distillation: (batch, old classes) logits"
    );
    let teacher = old_logits
        .detach()
        .narrow(1, 0, size[1])
        .sigmoid()
        .to_kind(student_old.kind());
    student_old.binary_cross_entropy_with_logits::<Tensor>(&teacher, None, None, Reduction::Mean)
}
