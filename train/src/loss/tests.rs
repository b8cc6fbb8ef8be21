//! Expected values are hand computations in plain f64 (written out in
//! each test) or, where named, numbers from the reference code run in
//! the project venv's torch 2.13.

use super::*;
use bsce_pipeline::params::NcaPrior;

/// A (rows, columns) f64 tensor.
pub fn mat(rows: &[&[f64]]) -> Tensor {
    let columns = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat()).view([-1, columns])
}

/// Like [`mat`], but a leaf that records its gradient.
pub fn leaf(rows: &[&[f64]]) -> Tensor {
    mat(rows).set_requires_grad(true)
}

pub fn labels(y: &[i64]) -> Tensor {
    Tensor::from_slice(y)
}

pub fn scalar(t: &Tensor) -> f64 {
    assert_eq!(t.size(), Vec::<i64>::new(), "losses are 0-d tensors");
    t.double_value(&[])
}

pub fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(tch::Kind::Double).flatten(0, -1)).unwrap()
}

pub fn assert_close(actual: f64, expected: f64, tol: f64) {
    assert!(
        (actual - expected).abs() <= tol,
        "got {actual}, expected {expected} (tolerance {tol})"
    );
}

pub fn assert_all_close(actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol,
            "element {i}: got {a}, expected {e} (tolerance {tol}); all: {actual:?}"
        );
    }
}

mod bsce {
    use super::*;

    /// -log(n_y e^{z_y} / Σ_c n_c e^{z_c}) averaged over rows, and its
    /// gradient (p - onehot)/B with p_c = n_c e^{z_c} / Σ n e^z, written from
    /// the Balanced Softmax paper's form rather than the log-shift the code
    /// uses.
    fn hand_balanced(z: &[&[f64]], y: &[usize], n: &[f64]) -> (f64, Vec<f64>) {
        let b = z.len() as f64;
        let mut loss = 0.0;
        let mut grad = Vec::new();
        for (row, &label) in z.iter().zip(y) {
            let weights: Vec<f64> = row.iter().zip(n).map(|(z, n)| n * z.exp()).collect();
            let total: f64 = weights.iter().sum();
            loss -= (weights[label] / total).ln() / b;
            for (c, w) in weights.iter().enumerate() {
                let onehot = if c == label { 1.0 } else { 0.0 };
                grad.push((w / total - onehot) / b);
            }
        }
        (loss, grad)
    }

    fn loss_and_grad(f: impl Fn(&Tensor) -> Tensor, z: &[&[f64]]) -> (f64, Vec<f64>) {
        let logits = leaf(z);
        let loss = f(&logits);
        loss.backward();
        (scalar(&loss), values(&logits.grad()))
    }

    #[test]
    fn cross_entropy_matches_hand_value_and_keeps_f64() {
        let z: &[&[f64]] = &[&[1.0, 2.0, 3.0], &[0.5, 0.0, -0.5]];
        let loss = cross_entropy(&mat(z), &labels(&[0, 1]));
        assert_eq!(loss.kind(), Kind::Double);
        assert_eq!(loss.size(), Vec::<i64>::new());
        let row0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 1.0;
        let row1 = (0.5f64.exp() + 1.0 + (-0.5f64).exp()).ln();
        assert_close(scalar(&loss), (row0 + row1) / 2.0, 1e-12);
    }

    #[test]
    fn balanced_softmax_value_and_gradient_match_hand_computation() {
        let z: &[&[f64]] = &[&[0.2, -1.0, 0.5], &[1.5, 0.3, -0.7], &[0.0, 0.1, 0.2]];
        let y = [2usize, 1, 0];
        let n = [500.0, 20.0, 3.0];
        let counts = Tensor::from_slice(&[500i64, 20, 3]);
        let targets = labels(&[2, 1, 0]);
        let (loss, grad) = loss_and_grad(|l| balanced_softmax(l, &targets, &counts), z);
        let (want_loss, want_grad) = hand_balanced(z, &y, &n);
        assert_close(loss, want_loss, 1e-12);
        assert_all_close(&grad, &want_grad, 1e-12);
    }

    #[test]
    fn balanced_softmax_is_cross_entropy_when_counts_are_equal() {
        let z: &[&[f64]] = &[&[0.2, -1.0, 0.5], &[1.5, 0.3, -0.7]];
        let targets = labels(&[2, 1]);
        let counts = Tensor::from_slice(&[20i64, 20, 20]);
        let (bs, bs_grad) = loss_and_grad(|l| balanced_softmax(l, &targets, &counts), z);
        let (ce, ce_grad) = loss_and_grad(|l| cross_entropy(l, &targets), z);
        assert_close(bs, ce, 1e-12);
        assert_all_close(&bs_grad, &ce_grad, 1e-12);
    }

    #[test]
    fn balanced_softmax_shifts_the_gradient_toward_rare_classes() {
        // Class 2 is rare (an old class with 20 exemplars); row 0 is one of
        // its exemplars, row 1 a sample of the frequent class 0.
        let z: &[&[f64]] = &[&[0.1, 0.2, 0.3], &[0.3, 0.1, 0.2]];
        let targets = labels(&[2, 0]);
        let counts = Tensor::from_slice(&[500i64, 500, 20]);
        let (bs, bs_grad) = loss_and_grad(|l| balanced_softmax(l, &targets, &counts), z);
        let (ce, ce_grad) = loss_and_grad(|l| cross_entropy(l, &targets), z);
        assert!(bs - ce > 0.5, "BSCE {bs} should exceed CE {ce} here");
        // The rare exemplar's own logit is pushed up harder ...
        assert!(bs_grad[2] < ce_grad[2] - 0.1, "{bs_grad:?} vs {ce_grad:?}");
        // ... and a frequent sample pushes the rare logit down less.
        assert!(bs_grad[5] > 0.0 && bs_grad[5] < ce_grad[5] / 5.0);
    }

    #[test]
    fn zero_counts_are_priced_as_one_sample() {
        let z: &[&[f64]] = &[&[0.2, -1.0, 0.5], &[1.5, 0.3, -0.7]];
        let targets = labels(&[0, 1]);
        let with_zero = balanced_softmax(&mat(z), &targets, &Tensor::from_slice(&[0i64, 5, 7]));
        let with_one = balanced_softmax(&mat(z), &targets, &Tensor::from_slice(&[1i64, 5, 7]));
        assert!(scalar(&with_zero).is_finite());
        assert_close(scalar(&with_zero), scalar(&with_one), 1e-12);

        let prior = log_count_adjustment(&[0, 1, 20, 500], Device::Cpu);
        assert_eq!(prior.kind(), Kind::Float);
        let want = [0.0, 0.0, 20f64.ln(), 500f64.ln()];
        assert_all_close(&values(&prior), &want, 1e-6);
    }

    #[test]
    fn a_precomputed_prior_gives_the_same_loss_as_raw_counts() {
        let z: &[&[f64]] = &[&[0.2, -1.0, 0.5], &[1.5, 0.3, -0.7]];
        let targets = labels(&[2, 0]);
        let counts = Tensor::from_slice(&[500i64, 20, 0]);
        let prior = log_count_adjustment(&[500, 20, 0], Device::Cpu);
        let from_counts = balanced_softmax(&mat(z), &targets, &counts);
        let from_prior = balanced_softmax_log_prior(&mat(z), &targets, &prior);
        // The f32 prior limits the agreement.
        assert_close(scalar(&from_prior), scalar(&from_counts), 1e-6);
    }

    #[test]
    #[should_panic(expected = "integer sample counts")]
    fn balanced_softmax_refuses_a_prior_in_place_of_counts() {
        let prior = log_count_adjustment(&[500, 20, 20], Device::Cpu);
        let _ = balanced_softmax(&mat(&[&[0.0, 1.0, 2.0]]), &labels(&[0]), &prior);
    }
}

mod icarl {
    use super::*;

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Mean over all entries of -[t log σ(x) + (1-t) log(1-σ(x))].
    fn hand_bce(x: &[&[f64]], t: &[&[f64]]) -> f64 {
        let (mut sum, mut count) = (0.0, 0.0);
        for (xr, tr) in x.iter().zip(t) {
            for (&x, &t) in xr.iter().zip(tr.iter()) {
                sum -= t * sigmoid(x).ln() + (1.0 - t) * (1.0 - sigmoid(x)).ln();
                count += 1.0;
            }
        }
        sum / count
    }

    /// -(1/B) Σ_b Σ_c softmax(old/T)_c log softmax(new[..C_old]/T)_c.
    fn hand_kd(new: &[&[f64]], old: &[&[f64]], t: f64) -> f64 {
        let softmax = |v: &[f64]| {
            let e: Vec<f64> = v.iter().map(|x| (x / t).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|e| e / s).collect::<Vec<_>>()
        };
        let mut total = 0.0;
        for (n, o) in new.iter().zip(old) {
            let p = softmax(o);
            let q = softmax(&n[..o.len()]);
            total -= p.iter().zip(&q).map(|(p, q)| p * q.ln()).sum::<f64>();
        }
        total / new.len() as f64
    }

    const LOGITS: &[&[f64]] = &[&[0.5, -1.0, 2.0, 0.0], &[-0.3, 0.8, -1.5, 1.2]];

    #[test]
    fn icarl_bce_task_zero_is_one_hot_bce_over_batch_times_classes() {
        let loss = icarl_bce(&mat(LOGITS), &labels(&[2, 0]), None, 0);
        let want = hand_bce(LOGITS, &[&[0.0, 0.0, 1.0, 0.0], &[1.0, 0.0, 0.0, 0.0]]);
        assert_close(scalar(&loss), want, 1e-12);
    }

    #[test]
    fn icarl_bce_replaces_old_columns_by_old_sigmoids_even_for_exemplars() {
        // Row 0 is an exemplar of old class 0: its own column's target is
        // σ(1.0), not 1. Row 1 is a new-class sample (label 3).
        let old: &[&[f64]] = &[&[1.0, -2.0], &[0.0, 0.4]];
        let loss = icarl_bce(&mat(LOGITS), &labels(&[0, 3]), Some(&mat(old)), 2);
        let want = hand_bce(
            LOGITS,
            &[
                &[sigmoid(1.0), sigmoid(-2.0), 0.0, 0.0],
                &[sigmoid(0.0), sigmoid(0.4), 0.0, 1.0],
            ],
        );
        assert_close(scalar(&loss), want, 1e-12);

        // R's old network is as wide as the new one; its extra columns are ignored.
        let wide: &[&[f64]] = &[&[1.0, -2.0, 9.0, 9.0], &[0.0, 0.4, -9.0, 9.0]];
        let loss_wide = icarl_bce(&mat(LOGITS), &labels(&[0, 3]), Some(&mat(wide)), 2);
        assert_close(scalar(&loss_wide), want, 1e-12);
    }

    #[test]
    fn icarl_bce_sends_no_gradient_to_the_old_model() {
        let old = leaf(&[&[1.0, -2.0], &[0.0, 0.4]]);
        let logits = leaf(LOGITS);
        icarl_bce(&logits, &labels(&[0, 3]), Some(&old), 2).backward();
        assert!(logits.grad().defined());
        assert!(!old.grad().defined());
    }

    #[test]
    fn kd_logits_matches_hand_value_without_t_squared() {
        let new: &[&[f64]] = &[&[0.5, 1.0, -0.5], &[2.0, 0.0, 1.0]];
        let old: &[&[f64]] = &[&[1.0, 0.0], &[0.3, -0.6]];
        let loss = kd_logits(&mat(new), &mat(old), 2.0);
        assert_close(scalar(&loss), hand_kd(new, old, 2.0), 1e-12);
    }

    #[test]
    fn sigmoid_distillation_is_bce_on_the_old_columns_with_old_sigmoid_targets() {
        let student: &[&[f64]] = &[&[0.5, -1.0], &[-0.3, 0.8]];
        // A wider teacher: only its first two columns are read.
        let old: &[&[f64]] = &[&[1.0, 0.0, 9.0], &[0.3, -0.6, -9.0]];
        let targets: Vec<Vec<f64>> = old
            .iter()
            .map(|r| r[..2].iter().map(|&x| sigmoid(x)).collect())
            .collect();
        let targets: Vec<&[f64]> = targets.iter().map(Vec::as_slice).collect();
        let loss = crate::loss::icarl::sigmoid_distillation(&mat(student), &mat(old));
        assert_close(scalar(&loss), hand_bce(student, &targets), 1e-12);
    }

    #[test]
    fn kd_logits_gradient_vanishes_when_student_matches_teacher() {
        // At z[..C_old] = z*, the loss is the teacher's entropy (unscaled by
        // T²) and its gradient (q - p)/(T B) is zero; the new column is
        // outside the distillation.
        let old: &[&[f64]] = &[&[1.0, 0.0], &[0.3, -0.6]];
        let new = leaf(&[&[1.0, 0.0, 5.0], &[0.3, -0.6, -2.0]]);
        let loss = kd_logits(&new, &mat(old), 2.0);
        loss.backward();
        assert_all_close(&values(&new.grad()), &[0.0; 6], 1e-12);
        let entropy = hand_kd(old, old, 2.0);
        assert!(entropy > 0.5);
        assert_close(scalar(&loss), entropy, 1e-12);
    }
}

mod lucir {
    use super::*;

    #[test]
    fn less_forget_is_lambda_times_mean_one_minus_cosine() {
        // cos = 0 for row 0, 1 for row 1 (whatever the norms): mean 0.5.
        let f = leaf(&[&[3.0, 0.0], &[2.0, 2.0]]);
        let old = leaf(&[&[0.0, 1.0], &[1.0, 1.0]]);
        let loss = lucir_less_forget(&f, &old, 2.5);
        assert_close(scalar(&loss), 2.5 * 0.5, 1e-12);
        loss.backward();
        assert!(f.grad().defined());
        assert!(
            !old.grad().defined(),
            "the old model's features are a constant"
        );
    }

    #[test]
    fn lucir_lambda_is_base_times_sqrt_old_over_new() {
        assert_close(lucir_lambda(5.0, 50, 10), 5.0 * 5f64.sqrt(), 1e-12);
        assert_close(lucir_lambda(5.0, 90, 10), 15.0, 1e-12);
        assert_close(lucir_lambda(5.0, 0, 50), 0.0, 0.0);
    }

    /// Classes 0-1 old, 2-4 new; margin 0.5, K = 2.
    /// Row 0 (old class 0): g = 0.9, top-2 new 0.8, 0.5 -> hinges 0.4, 0.1.
    /// Row 1 (new class 3): not a hard sample, large scores must not count.
    /// Row 2 (old class 1): g = 0.95, top-2 new 0.2, 0.0 -> hinges 0, 0.
    /// Mean over H·K = 4 pairs: 0.5 / 4 = 0.125 (over B·K it would be 0.083).
    const COS: &[&[f64]] = &[
        &[0.9, 0.1, 0.8, 0.3, 0.5],
        &[0.9, 0.9, 0.9, -1.0, 0.9],
        &[0.2, 0.95, -0.1, 0.0, 0.2],
    ];

    #[test]
    fn margin_ranking_averages_over_hard_pairs_only() {
        let cos = leaf(COS);
        let loss = lucir_margin_ranking(&cos, &labels(&[0, 3, 1]), 2, 2, 0.5);
        assert_close(scalar(&loss), 0.125, 1e-12);
        // Each active pair pulls its ground truth up and its negative down
        // by 1/(H·K).
        loss.backward();
        let want = [
            -0.5, 0.0, 0.25, 0.0, 0.25, //
            0.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        assert_all_close(&values(&cos.grad()), &want, 1e-12);
    }

    #[test]
    fn margin_ranking_is_zero_without_old_samples() {
        let loss = lucir_margin_ranking(&mat(COS), &labels(&[2, 3, 4]), 2, 2, 0.5);
        assert_eq!(scalar(&loss), 0.0);
        assert_eq!(loss.kind(), tch::Kind::Double);
    }

    #[test]
    fn margin_ranking_caps_k_at_the_number_of_new_classes() {
        // One new class, K = 2: only the single negative counts,
        // max(0, 0.5 - 0.6 + 0.4) = 0.3 over H·1 pairs.
        let cos = mat(&[&[0.6, 0.1, 0.4]]);
        let loss = lucir_margin_ranking(&cos, &labels(&[0]), 2, 2, 0.5);
        assert_close(scalar(&loss), 0.3, 1e-12);
    }
}

mod podnet {
    use super::*;

    /// Merged LSC logits z ∈ [−4, 0]. Row 0: target 2, arg-max 0. Row 1:
    /// target 0 = arg-max. Row 2: target 3, arg-max 1.
    const Z: &[&[f64]] = &[
        &[-0.5, -1.2, -0.9, -2.0],
        &[-0.3, -0.4, -3.1, -1.0],
        &[-1.5, -0.2, -0.8, -0.9],
    ];
    const Y: [i64; 3] = [2, 0, 3];
    const ETA: f64 = 1.7;
    const COUNTS: [f64; 4] = [500.0, 20.0, 20.0, 500.0];

    fn eta() -> Tensor {
        Tensor::from(ETA).set_requires_grad(true)
    }

    fn log_counts() -> Tensor {
        Tensor::from_slice(&COUNTS.map(f64::ln))
    }

    fn logsumexp(v: impl IntoIterator<Item = f64>) -> f64 {
        v.into_iter().map(f64::exp).sum::<f64>().ln()
    }

    /// Per-row a_c = η(z_c − m·[c = y when `target_only`]) + ln n_c.
    fn adjusted(row: &[f64], y: usize, margin: f64, target_only: bool, log_n: &[f64]) -> Vec<f64> {
        (0..row.len())
            .map(|c| {
                let m = if target_only && c != y { 0.0 } else { margin };
                ETA * (row[c] - m) + log_n[c]
            })
            .collect()
    }

    /// §3.4's closed form, mean over rows: log(e^{a_max} + Σ_{c≠y} e^{a_c}) − a_y.
    fn closed_form(z: &[&[f64]], y: &[i64], margin: f64, log_n: &[f64]) -> f64 {
        let rows = z.iter().zip(y).map(|(row, &y)| {
            let y = y as usize;
            let a = adjusted(row, y, margin, false, log_n);
            let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let others = (0..a.len()).filter(|&c| c != y).map(|c| a[c]);
            logsumexp(std::iter::once(max).chain(others)) - a[y]
        });
        rows.sum::<f64>() / z.len() as f64
    }

    /// The paper's hinged NCA, mean over rows: [log Σ_{c≠y} e^{a_c} − a_y]₊.
    fn paper_form(z: &[&[f64]], y: &[i64], margin: f64, log_n: &[f64]) -> f64 {
        let rows = z.iter().zip(y).map(|(row, &y)| {
            let y = y as usize;
            let a = adjusted(row, y, margin, true, log_n);
            let others = (0..a.len()).filter(|&c| c != y).map(|c| a[c]);
            (logsumexp(others) - a[y]).max(0.0)
        });
        rows.sum::<f64>() / z.len() as f64
    }

    fn nca(margin: f64, as_coded: bool, log_n: Option<&Tensor>) -> f64 {
        scalar(&podnet_nca(
            &mat(Z),
            &labels(&Y),
            &eta(),
            margin,
            as_coded,
            log_n,
        ))
    }

    #[test]
    fn nca_as_coded_reproduces_reference_code_numbers() {
        // Value and gradients (wrt z and η) from A's `nca` run verbatim in
        // torch 2.13, f64, scale 1.7, margin 0.6; the second case adds
        // ln[500, 20, 20, 500] after scale and margin.
        let cases: [(Option<Tensor>, f64, [f64; 12], f64); 2] = [
            (
                None,
                1.4702898624583278,
                [
                    0.4757301512872888,
                    0.07236361398963173,
                    -0.5666666666666667,
                    0.01857290138974608,
                    -0.30388931381497997,
                    0.22169600719930146,
                    0.0022508481630360714,
                    0.07994245845264242,
                    0.025164478740966143,
                    0.4587845027626786,
                    0.08271768516302182,
                    -0.5666666666666667,
                ],
                0.222378424412719,
            ),
            (
                Some(log_counts()),
                1.786339724237109,
                [
                    0.5421997623502223,
                    0.003298973941577024,
                    -0.5666666666666667,
                    0.02116793037486734,
                    -0.14324723248711035,
                    0.014288963171217594,
                    0.00014507381937966873,
                    0.1288131954965131,
                    0.13273037304078653,
                    0.04839729749529013,
                    0.017451820594852813,
                    -0.1985794911309295,
                ],
                0.033286009392961224,
            ),
        ];
        for (log_n, want, want_dz, want_deta) in cases {
            let (z, eta) = (leaf(Z), eta());
            let loss = podnet_nca(&z, &labels(&Y), &eta, 0.6, true, log_n.as_ref());
            loss.backward();
            assert_close(scalar(&loss), want, 1e-12);
            assert_all_close(&values(&z.grad()), &want_dz, 1e-12);
            assert_close(eta.grad().double_value(&[]), want_deta, 1e-12);
        }
    }

    #[test]
    fn nca_as_coded_equals_its_closed_form_counting_the_max_twice() {
        let none = [0.0; 4];
        let ln_n = COUNTS.map(f64::ln);
        assert_close(nca(0.6, true, None), closed_form(Z, &Y, 0.6, &none), 1e-12);
        assert_close(
            nca(0.6, true, Some(&log_counts())),
            closed_form(Z, &Y, 0.6, &ln_n),
            1e-12,
        );

        // Where the target is the arg-max it is softmax cross-entropy on ηz;
        // where it is not, the loss exceeds it (row 0).
        let ce_row = |r: usize| {
            let y = Y[r] as usize;
            logsumexp(Z[r].iter().map(|z| ETA * z)) - ETA * Z[r][y]
        };
        let row = |r: usize| {
            let z = mat(&[Z[r]]);
            scalar(&podnet_nca(&z, &labels(&[Y[r]]), &eta(), 0.6, true, None))
        };
        assert_close(row(1), ce_row(1), 1e-12);
        assert!(row(0) > ce_row(0) + 0.1, "{} vs {}", row(0), ce_row(0));
    }

    #[test]
    fn nca_margin_has_no_effect_as_coded_but_does_in_the_paper_form() {
        let coded = nca(0.0, true, None);
        assert_close(nca(0.6, true, None), coded, 1e-12);
        assert_close(nca(5.0, true, None), coded, 1e-12);
        assert!(nca(0.6, false, None) > nca(0.0, false, None) + 0.1);
    }

    #[test]
    fn nca_paper_form_matches_hand_value_and_hinges_at_zero() {
        let none = [0.0; 4];
        let ln_n = COUNTS.map(f64::ln);
        assert_close(nca(0.6, false, None), paper_form(Z, &Y, 0.6, &none), 1e-12);
        assert_close(
            nca(0.6, false, Some(&log_counts())),
            paper_form(Z, &Y, 0.6, &ln_n),
            1e-12,
        );

        // log(2 e^{−6.8}) + 1.02 < 0: a confidently right sample costs nothing.
        let easy = podnet_nca(
            &mat(&[&[0.0, -4.0, -4.0]]),
            &labels(&[0]),
            &eta(),
            0.6,
            false,
            None,
        );
        assert_eq!(scalar(&easy), 0.0);
    }

    /// The NCA (or its replacement) on Z, Y, η and margin 0.6.
    fn nca_on_z(as_coded: bool, prior: Option<&Tensor>, placement: NcaPrior) -> f64 {
        scalar(&crate::loss::podnet::podnet_nca_with_prior(
            &mat(Z),
            &labels(&Y),
            &eta(),
            0.6,
            as_coded,
            prior,
            placement,
        ))
    }

    #[test]
    fn nca_prior_before_the_scale_is_scaled_with_the_logits() {
        // a_c = η(z_c − m + ln n_c): the closed form with η·ln n as prior.
        let scaled: Vec<f64> = COUNTS.iter().map(|n| ETA * n.ln()).collect();
        let plain: Vec<f64> = COUNTS.iter().map(|n| n.ln()).collect();
        for (as_coded, form) in [
            (
                true,
                closed_form as fn(&[&[f64]], &[i64], f64, &[f64]) -> f64,
            ),
            (false, paper_form),
        ] {
            let at = |placement| nca_on_z(as_coded, Some(&log_counts()), placement);
            assert_close(at(NcaPrior::BeforeScale), form(Z, &Y, 0.6, &scaled), 1e-12);
            assert_close(at(NcaPrior::AfterScale), form(Z, &Y, 0.6, &plain), 1e-12);
            assert!((at(NcaPrior::BeforeScale) - at(NcaPrior::AfterScale)).abs() > 1e-3);
        }
    }

    #[test]
    fn nca_replaced_by_balanced_softmax_is_cross_entropy_on_scaled_logits_plus_the_prior() {
        // -(1/B) Σ_b log(e^{η z_y + ln n_y} / Σ_c e^{η z_c + ln n_c}), by hand;
        // no margin, and as_coded does not matter.
        let mut expected = 0.0;
        for (row, &y) in Z.iter().zip(Y.iter()) {
            let a: Vec<f64> = row
                .iter()
                .zip(COUNTS.iter())
                .map(|(z, n)| ETA * z + n.ln())
                .collect();
            let lse = a.iter().map(|x| x.exp()).sum::<f64>().ln();
            expected += lse - a[y as usize];
        }
        expected /= Z.len() as f64;
        for as_coded in [true, false] {
            let got = nca_on_z(as_coded, Some(&log_counts()), NcaPrior::BalancedSoftmax);
            assert_close(got, expected, 1e-12);
        }
        // Without a prior (no BSCE) it is the NCA.
        let nca = |placement| nca_on_z(true, None, placement);
        assert_close(
            nca(NcaPrior::BalancedSoftmax),
            nca(NcaPrior::AfterScale),
            1e-12,
        );
    }

    #[test]
    fn nca_ignores_a_constant_prior() {
        let flat = Tensor::from_slice(&[20f64.ln(); 4]);
        for as_coded in [true, false] {
            assert_close(
                nca(0.6, as_coded, Some(&flat)),
                nca(0.6, as_coded, None),
                1e-12,
            );
        }
    }

    #[test]
    fn pod_flat_is_mean_one_minus_cosine() {
        // cos = 24/25 and 0: (0.04 + 1) / 2.
        let raw = leaf(&[&[3.0, 4.0], &[1.0, 0.0]]);
        let old = leaf(&[&[4.0, 3.0], &[0.0, 2.0]]);
        let loss = pod_flat(&raw, &old);
        assert_close(scalar(&loss), 0.52, 1e-12);
        loss.backward();
        assert!(!old.grad().defined());
    }

    #[test]
    fn pod_spatial_matches_hand_computation() {
        // One sample, one channel, 2x2. New [[1, 2], [3, 0]] squares to
        // [[1, 4], [9, 0]]: height sums [5, 9], width sums [10, 4], norm
        // √222. Old [[1, 0], [0, 1]] gives [1, 1, 1, 1] / 2. A second,
        // identical layer contributes 0, so the mean over layers halves it.
        let map = |v: [f64; 4]| Tensor::from_slice(&v).view([1, 1, 2, 2]);
        let new = [map([1.0, 2.0, 3.0, 0.0]), map([0.5, -1.0, 2.0, 1.0])];
        let old = [map([1.0, 0.0, 0.0, 1.0]), map([0.5, -1.0, 2.0, 1.0])];
        let norm = 222f64.sqrt();
        let distance = [5.0, 9.0, 10.0, 4.0]
            .iter()
            .map(|p| (p / norm - 0.5f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert_close(scalar(&pod_spatial(&new, &old)), distance / 2.0, 1e-12);
    }

    #[test]
    fn pod_spatial_reproduces_reference_code_numbers() {
        // A's `pod` (collapse "spatial", normalize) run in torch 2.13, f64,
        // on maps filled with sin(f·i + φ) in row-major order.
        let ramp = |shape: [i64; 4], f: f64, phase: f64| {
            let n = shape.iter().product::<i64>();
            let v: Vec<f64> = (0..n).map(|i| (f * i as f64 + phase).sin()).collect();
            Tensor::from_slice(&v).view(shape)
        };
        let new = [
            ramp([2, 2, 3, 3], 0.7, 0.0).set_requires_grad(true),
            ramp([2, 3, 2, 2], 1.3, 0.5).set_requires_grad(true),
        ];
        let old = [ramp([2, 2, 3, 3], 0.9, 0.2), ramp([2, 3, 2, 2], 1.1, 0.1)];
        let loss = pod_spatial(&new, &old);
        assert_close(scalar(&loss), 0.43898046215044206, 1e-12);
        loss.backward();
        let grad = values(&new[0].grad());
        let want = [
            0.0,
            -0.005203328914115382,
            -0.05992736297508666,
            0.01180764100990392,
            -0.004517571829213794,
            0.023229212561989114,
        ];
        assert_all_close(&grad[..6], &want, 1e-12);
    }

    #[test]
    fn pod_spatial_of_identical_maps_is_zero_with_finite_gradient() {
        // At the start of a task the new model is a copy of the old one.
        let maps = [
            Tensor::from_slice(&[0.3, -1.2, 0.8, 2.0, 0.0, 1.1, -0.4, 0.9])
                .view([1, 2, 2, 2])
                .set_requires_grad(true),
        ];
        let loss = pod_spatial(&maps, &[maps[0].detach().copy()]);
        assert_eq!(scalar(&loss), 0.0);
        loss.backward();
        assert!(values(&maps[0].grad()).iter().all(|g| g.is_finite()));
    }

    #[test]
    fn pod_factor_is_base_times_sqrt_seen_over_new() {
        assert_close(pod_factor(3.0, 60, 10), 3.0 * 6f64.sqrt(), 1e-12);
        assert_close(pod_factor(1.0, 51, 1), 51f64.sqrt(), 1e-12);
        assert_close(pod_factor(5.0, 10, 10), 5.0, 1e-12);
    }
}
