//! Exemplar memory: which training images a class keeps (iCaRL herding or a
//! seeded random draw), how many (the budget), and the nearest-mean-of-
//! exemplars (NME) classifier built from them.
//!
//! Formulas: ../shared/reference/method-formulas.md §5.1 (herding), §5.3
//! (class means), §5.4 (NME rule). Where R, L and A differ only by the ε
//! added to norms, A's ε is used: it changes nothing but an all-zero
//! feature, which it maps to zero instead of NaN.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::SplitMix64;

/// A's `icarl_selection` and `compute_examplar_mean` add this to every norm.
const NORM_EPS: f64 = 1e-8;

/// A's herding loop gives up after this many iterations, repeats included.
const HERDING_MAX_ITERATIONS: usize = 1000;

/// iCaRL herding (method-formulas §5.1, as R, L and A code it): the indices
/// of the `min(m, n)` rows of `features` ([n, d]) that herding ranks first,
/// in rank order. Each row is L2-normalised; starting from w = μ (the mean
/// of the normalised rows, not re-normalised), each iteration picks
/// argmax_i ⟨w, φ̂_i⟩ (first index on ties), ranks it if it is new, and
/// sets w ← w + μ − φ̂_i even when the pick is a repeat, so a repeat stays
/// in the running sum (PyCIL's variant, §5.2, would skip it instead).
///
/// Ranks depend only on the features, so a prefix of the ranking is what
/// a smaller budget keeps later (memory reduction slices the result).
/// Samples still unranked after A's 1000 iterations follow in index order;
/// A leaves their order to an unstable argsort of equal keys.
///
/// Runs on the CPU in f64: n is a class's images (≈500 CIFAR, ≤1300
/// ImageNet) and one argmax per iteration would cost a device sync each.
pub fn herding(features: &Tensor, m: usize) -> Vec<usize> {
    let (n, d) = features
        .size2()
        .expect("herding takes a feature matrix [n, d]");
    let (n, d) = (n as usize, d as usize);
    let want = m.min(n);
    let mut phi = Vec::<f64>::try_from(
        features
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .reshape([-1]),
    )
    .expect("a CPU f64 vector copies out");
    for row in phi.chunks_exact_mut(d.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt() + NORM_EPS;
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let row = |i: usize| &phi[i * d..(i + 1) * d];
    let mut mu = vec![0.0; d];
    for i in 0..n {
        mu.iter_mut().zip(row(i)).for_each(|(m, v)| *m += v);
    }
    mu.iter_mut().for_each(|m| *m /= n.max(1) as f64);

    let mut w = mu.clone();
    let mut ranked = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut iterations = 0;
    while order.len() < want && iterations < HERDING_MAX_ITERATIONS {
        iterations += 1;
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for i in 0..n {
            let score: f64 = w.iter().zip(row(i)).map(|(a, b)| a * b).sum();
            if score > best_score {
                best = i;
                best_score = score;
            }
        }
        if !ranked[best] {
            ranked[best] = true;
            order.push(best);
        }
        for ((w, m), p) in w.iter_mut().zip(&mu).zip(row(best)) {
            *w += m - p;
        }
    }
    order.extend((0..n).filter(|&i| !ranked[i]).take(want - order.len()));
    order
}

/// `min(m, n)` distinct indices below `n`, drawn uniformly without
/// replacement, in draw order: the first `min(m, n)` entries of a
/// Fisher–Yates shuffle seeded by `seed`. A prefix is again a uniform
/// draw, so memory reduction can slice the result as it does for herding.
pub fn random_selection(n: usize, m: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut all: Vec<usize> = (0..n).collect();
    let take = m.min(n);
    // Forward Fisher–Yates: position k is final once it is filled, so the
    // loop can stop after `take` positions.
    for k in 0..take {
        let j = k + rng.below((n - k) as u64) as usize;
        all.swap(k, j);
    }
    all.truncate(take);
    all
}

/// How many exemplars the memory holds. `PerClass(20)` is LUCIR's growing
/// memory and PODNet's `--fixed-memory` 2000/100; `Total(2000)` is
/// iCaRL's fixed budget shared by the classes seen so far.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryBudget {
    PerClass(usize),
    Total(usize),
}

impl MemoryBudget {
    /// Exemplars per class once `seen_classes` classes have been learnt:
    /// ⌊total / seen⌋ for a total budget (A's `fixed_total_mem`, P's
    /// iCaRL); 0 before any class is seen.
    pub fn per_class(&self, seen_classes: usize) -> usize {
        match *self {
            MemoryBudget::PerClass(m) => m,
            MemoryBudget::Total(total) => total.checked_div(seen_classes).unwrap_or(0),
        }
    }
}

/// One class's NME mean (method-formulas §5.3) from the features of its
/// exemplars ([m, d]), as a unit vector [d]:
///
/// μ = normalise( ½ [ mean_i φ̂(x_i) + mean_i φ̂(flip(x_i)) ] )
///
/// with every feature normalised on its own first (A's
/// `compute_examplar_mean`, R). Without `flipped_features` it is
/// normalise(mean_i φ̂(x_i)), PyCIL's rule and L's ImageNet one (L sets the
/// flipped copy to the original, which gives the same vector). L's CIFAR
/// script passes an RGB↔BGR swap as the "flip" (§4.5); callers reproduce
/// that by passing the features of the swapped images here.
pub fn class_mean(features: &Tensor, flipped_features: Option<&Tensor>) -> Tensor {
    tch::no_grad(|| {
        let mean = normalise_rows(features).mean_dim(0, false, None::<Kind>);
        let mean = match flipped_features {
            Some(flipped) => {
                (mean + normalise_rows(flipped).mean_dim(0, false, None::<Kind>)) / 2.0
            }
            None => mean,
        };
        let norm = mean.norm() + NORM_EPS;
        mean / norm
    })
}

/// NME scores [B, C]: the cosine ⟨φ̂(x), μ_c⟩ of each feature row with each
/// class mean. `class_means` rows must be unit vectors (as
/// [`class_mean`] returns them); then the ranking equals A's
/// −‖φ̂ − μ_c‖² (which is 2⟨φ̂, μ_c⟩ − 2), so top-k on these scores is A's
/// and P's top-k.
pub fn nme_scores(features: &Tensor, class_means: &Tensor) -> Tensor {
    tch::no_grad(|| normalise_rows(features).matmul(&class_means.transpose(0, 1)))
}

/// NME prediction (method-formulas §5.4): for each feature row, the row of
/// `class_means` with the highest [`nme_scores`] (first on ties), as i64
/// [B] on the features' device.
pub fn nme_predict(features: &Tensor, class_means: &Tensor) -> Tensor {
    nme_scores(features, class_means).argmax(1, false)
}

fn normalise_rows(x: &Tensor) -> Tensor {
    let norm = x.norm_scalaropt_dim(2.0, [1], true) + NORM_EPS;
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[[f64; 2]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    fn close(a: &Tensor, b: &[f64]) -> bool {
        let a = Vec::<f64>::try_from(a.to_kind(Kind::Double).reshape([-1])).unwrap();
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-7)
    }

    #[test]
    fn herding_picks_the_point_nearest_the_mean_then_balances_it() {
        // Normalised: a (0, 1), b (.8, .6), c (-.6, -.8); μ = (.2, .8)/3.
        // w1 = μ: a .27, b .21, c -.25 -> a, the nearest to the mean.
        // w2 = 2μ - a = (.13, -.47): a -.47, b -.17, c .29 -> c, far from
        // the mean but it pulls the selection's mean back towards it.
        // w3 = 3μ - a - c = (.8, .6) -> b.
        let f = matrix(&[[0.0, 5.0], [4.0, 3.0], [-3.0, -4.0]]);
        assert_eq!(herding(&f, 3), vec![0, 2, 1]);
        assert_eq!(herding(&f, 1), vec![0]);
    }

    #[test]
    fn herding_keeps_a_repeat_in_its_running_sum() {
        // Normalised: a (1, 0), b (.6, .8), c (.8, .6), d (.6, -.8);
        // μ = (.75, .15). Scores ⟨w, ·⟩ for a, b, c, d:
        // w1 = μ            : .75 .57 .69 .33      -> a
        // w2 = 2μ-a   (.5,.3): .50 .54 .58 .06      -> c
        // w3 = 3μ-a-c (.45,-.15): .45 .15 .27 .39   -> a again (repeat)
        // w4 = 4μ-2a-c (.2, 0): .20 .12 .16 .12     -> a again (repeat)
        // w5 = 5μ-3a-c (-.05,.15): -.05 .09 .05 -.15 -> b
        // w6 = 6μ-3a-b-c (.1,-.5): ... d .46 (best) -> d
        // PyCIL's variant, which never re-picks, would rank d third.
        let f = matrix(&[[2.0, 0.0], [3.0, 4.0], [8.0, 6.0], [0.06, -0.08]]);
        assert_eq!(herding(&f, 4), vec![0, 2, 1, 3]);
        assert_eq!(herding(&f, 10), vec![0, 2, 1, 3]);
        assert_eq!(herding(&f, 2), vec![0, 2]);
    }

    #[test]
    fn herding_ranks_every_sample_once_even_when_the_loop_gives_up() {
        // Rows 0 and 1 tie on every w, so argmax never reaches row 1; it is
        // appended after the 1000-iteration cap.
        let f = matrix(&[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]);
        assert_eq!(herding(&f, 3), vec![0, 2, 1]);
        assert_eq!(herding(&f, 0), Vec::<usize>::new());
    }

    #[test]
    fn herding_accepts_f32_features() {
        let f = matrix(&[[2.0, 0.0], [3.0, 4.0], [8.0, 6.0], [0.06, -0.08]]).to_kind(Kind::Float);
        assert_eq!(herding(&f, 4), vec![0, 2, 1, 3]);
    }

    #[test]
    fn random_selection_is_a_seeded_draw_without_repeats() {
        let a = random_selection(500, 20, 7);
        assert_eq!(a, random_selection(500, 20, 7));
        assert_ne!(a, random_selection(500, 20, 8));
        assert_eq!(a.len(), 20);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        assert!(a.iter().all(|&i| i < 500));
        // A smaller budget keeps a prefix.
        assert_eq!(random_selection(500, 5, 7), a[..5]);
        let mut all = random_selection(30, 100, 3);
        assert_ne!(all, (0..30).collect::<Vec<_>>(), "not shuffled");
        all.sort_unstable();
        assert_eq!(all, (0..30).collect::<Vec<_>>());
    }

    #[test]
    fn total_budget_is_floored_over_seen_classes() {
        assert_eq!(MemoryBudget::PerClass(20).per_class(60), 20);
        assert_eq!(MemoryBudget::Total(2000).per_class(60), 33);
        assert_eq!(MemoryBudget::Total(2000).per_class(100), 20);
        assert_eq!(MemoryBudget::Total(2000).per_class(0), 0);
        let json = serde_json::to_string(&MemoryBudget::PerClass(20)).unwrap();
        assert_eq!(json, r#"{"per_class":20}"#);
        let back: MemoryBudget = serde_json::from_str(r#"{"total":2000}"#).unwrap();
        assert_eq!(back, MemoryBudget::Total(2000));
    }

    #[test]
    fn class_mean_normalises_each_feature_then_the_mean() {
        // φ̂: (1, 0) and (0, 1); mean (.5, .5); normalised (1/√2, 1/√2).
        // Without per-feature normalisation the mean would lean to x.
        let f = matrix(&[[10.0, 0.0], [0.0, 1.0]]);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!(close(&class_mean(&f, None), &[h, h]));
        // Flipped φ̂: (0, 1) twice; ½[(.5, .5) + (0, 1)] = (.25, .75);
        // normalised: (1, 3)/√10.
        let flipped = matrix(&[[0.0, 3.0], [0.0, 0.5]]);
        let s = 10f64.sqrt();
        assert!(close(&class_mean(&f, Some(&flipped)), &[1.0 / s, 3.0 / s]));
        // Flipped copies equal to the originals give the unflipped mean (L's
        // ImageNet rule).
        assert!(close(&class_mean(&f, Some(&f)), &[h, h]));
    }

    #[test]
    fn nme_picks_the_nearest_normalised_mean() {
        let means = Tensor::stack(
            &[
                class_mean(&matrix(&[[1.0, 0.0]]), None),
                class_mean(&matrix(&[[0.0, 1.0]]), None),
                class_mean(&matrix(&[[-1.0, -1.0]]), None),
            ],
            0,
        );
        // The second row is long but points near class 0: only its direction
        // counts.
        let x = matrix(&[[0.1, 2.0], [100.0, 1.0], [-3.0, -2.0]]);
        let pred = Vec::<i64>::try_from(nme_predict(&x, &means)).unwrap();
        assert_eq!(pred, vec![1, 0, 2]);
        let scores = nme_scores(&x, &means);
        assert_eq!(scores.size(), vec![3, 3]);
        let norm = (0.01f64 + 4.0).sqrt();
        assert!(close(
            &scores.get(0).narrow(0, 0, 2),
            &[0.1 / norm, 2.0 / norm]
        ));
    }
}
