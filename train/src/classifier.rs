//! Classifier heads that grow by one parameter block per task.
//!
//! Block `k` holds the classes added by the `k`-th call to
//! [`Head::add_classes`], under `block{k}.weight` (and `block{k}.bias` for
//! the linear head), so the checkpoint of task t-1 loads into a head rebuilt
//! with the same blocks, which is then grown for task t. The learned scale is
//! `sigma` (cosine) or `eta` (local similarity).
//!
//! Old classes are frozen by switching off their gradient
//! ([`Head::set_old_blocks_trainable`]): libtorch's SGD skips a parameter
//! without a gradient, which is LUCIR's "lr 0 and weight decay 0" for fc1
//! and PODNet's `old_weights: 0` group factor.

use serde::{Deserialize, Serialize};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::{Result, StageError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HeadSpec {
    /// `x W^T + b`, as PyCIL's `SimpleLinear` (Kaiming-uniform weights with
    /// gain 1, zero bias).
    Linear,
    /// LUCIR's `CosineLinear`: `sigma * cos(x, w_c)`, weights from
    /// U(-1/sqrt(d), 1/sqrt(d)), one learnable `sigma` initialised to 1.
    Cosine,
    /// PODNet's local similarity classifier (method-formulas.md 3.3):
    /// `proxies` rows per class stored class-major, similarity
    /// `-||s x^ - s w^||^2` with `s = scaling` (1 for cnn, 3 for nme),
    /// merged per class by a softmax over its proxies (gamma 1). The learned
    /// `eta` (PODNet's FactorScalar, initialised to 1) is not applied by the
    /// head; the NCA loss uses it as its scale.
    LocalSimilarity { proxies: i64, scaling: f64 },
}

impl HeadSpec {
    pub fn validate(&self) -> Result<()> {
        if let HeadSpec::LocalSimilarity { proxies, scaling } = *self {
            if proxies < 1 {
                return Err(StageError::param(
                    "head.local_similarity.proxies",
                    format!("{proxies} is not a positive number of proxies per class"),
                ));
            }
            if !(scaling.is_finite() && scaling > 0.0) {
                return Err(StageError::param(
                    "head.local_similarity.scaling",
                    format!("{scaling} is not a positive finite scale"),
                ));
            }
        }
        Ok(())
    }

    fn rows_per_class(&self) -> i64 {
        match self {
            HeadSpec::LocalSimilarity { proxies, .. } => *proxies,
            HeadSpec::Linear | HeadSpec::Cosine => 1,
        }
    }
}

struct Block {
    weight: Tensor,
    bias: Option<Tensor>,
    classes: i64,
}

pub struct Head {
    spec: HeadSpec,
    in_dim: i64,
    blocks: Vec<Block>,
    scale: Option<Tensor>,
}

impl Head {
    /// A head with no classes yet. `p` must be the path later passed to
    /// [`Head::add_classes`].
    pub fn new(p: &nn::Path, spec: &HeadSpec, in_dim: i64) -> Result<Head> {
        spec.validate()?;
        if in_dim < 1 {
            return Err(StageError::Other(format!(
                "classifier input dimension {in_dim} is not positive"
            )));
        }
        let scale_name = match spec {
            HeadSpec::Linear => None,
            HeadSpec::Cosine => Some("sigma"),
            HeadSpec::LocalSimilarity { .. } => Some("eta"),
        };
        let taken = |q: &nn::Path, name: &str| q.get(name).map(|_| q.path(name));
        let clash = scale_name
            .and_then(|name| taken(p, name))
            .or_else(|| taken(&(p / "block0"), "weight"));
        if let Some(name) = clash {
            return Err(StageError::Other(format!(
                "{name} already exists: a classifier was built at this path before"
            )));
        }
        Ok(Head {
            spec: spec.clone(),
            in_dim,
            blocks: Vec::new(),
            scale: scale_name.map(|name| p.var(name, &[1], Init::Const(1.0))),
        })
    }

    /// Appends a block of `n` classes.
    ///
    /// `imprint` gives the new weights' directions instead of a random init,
    /// scaled to the mean L2 norm of all existing weight rows (so it needs a
    /// previous block):
    /// - cosine: `[n, d]`, the mean of each class's L2-normalised features;
    ///   each row is normalised (LUCIR);
    /// - local similarity: `[n * K, d]` class-major, K = `proxies`. With
    ///   K = 1 the rows are class means as for cosine and are normalised;
    ///   with K > 1 they are used as given (PODNet's k-means centres of
    ///   normalised features, not re-normalised);
    /// - linear: not supported.
    pub fn add_classes(&mut self, p: &nn::Path, n: i64, imprint: Option<&Tensor>) -> Result<()> {
        if n < 1 {
            return Err(StageError::Other(format!(
                "cannot add {n} classes to a classifier"
            )));
        }
        let bp = p / format!("block{}", self.blocks.len());
        if bp.get("weight").is_some() {
            return Err(StageError::Other(format!(
                "{} already exists: another classifier grows at this path",
                bp.path("weight")
            )));
        }
        let rows = n * self.spec.rows_per_class();
        let weight = match imprint {
            None => bp.var("weight", &[rows, self.in_dim], self.random_init()),
            Some(directions) => bp.var_copy("weight", &self.imprinted(directions, rows)?),
        };
        let bias = (self.spec == HeadSpec::Linear).then(|| bp.zeros("bias", &[rows]));
        self.blocks.push(Block {
            weight,
            bias,
            classes: n,
        });
        Ok(())
    }

    fn random_init(&self) -> Init {
        match self.spec {
            HeadSpec::Linear => Init::Kaiming {
                dist: NormalOrUniform::Uniform,
                fan: FanInOut::FanIn,
                non_linearity: NonLinearity::Linear,
            },
            HeadSpec::Cosine => {
                let bound = 1.0 / (self.in_dim as f64).sqrt();
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                }
            }
            HeadSpec::LocalSimilarity { .. } => Init::Kaiming {
                dist: NormalOrUniform::Normal,
                fan: FanInOut::FanIn,
                non_linearity: NonLinearity::Linear,
            },
        }
    }

    fn imprinted(&self, directions: &Tensor, rows: i64) -> Result<Tensor> {
        let normalise = match self.spec {
            HeadSpec::Linear => {
                return Err(StageError::Other(
                    "a linear classifier cannot be imprinted".to_string(),
                ))
            }
            HeadSpec::Cosine => true,
            HeadSpec::LocalSimilarity { proxies, .. } => proxies == 1,
        };
        if directions.size() != [rows, self.in_dim] {
            return Err(StageError::Other(format!(
                "imprinting needs [{rows}, {}] class directions, got {:?}",
                self.in_dim,
                directions.size()
            )));
        }
        if self.blocks.is_empty() {
            return Err(StageError::Other(
                "imprinting scales to the old weights' norm, but the classifier has none yet"
                    .to_string(),
            ));
        }
        Ok(tch::no_grad(|| {
            let old = self.weights(directions.device());
            let mean_norm = old.norm_scalaropt_dim(2, [1], false).mean(Kind::Float);
            let d = directions.to_kind(Kind::Float).to_device(old.device());
            let d = if normalise { l2_normalise(&d) } else { d };
            d * mean_norm
        }))
    }

    pub fn num_classes(&self) -> i64 {
        self.blocks.iter().map(|b| b.classes).sum()
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// All weight rows, `[C * K, d]`.
    fn weights(&self, device: tch::Device) -> Tensor {
        if self.blocks.is_empty() {
            return Tensor::zeros([0, self.in_dim], (Kind::Float, device));
        }
        Tensor::cat(
            &self.blocks.iter().map(|b| &b.weight).collect::<Vec<_>>(),
            0,
        )
    }

    /// Per-class scores before any learned scale, `[B, C]`: linear logits,
    /// raw cosines in [-1, 1] (LUCIR's margin ranking uses these), or the
    /// merged local similarity in [-4s^2, 0].
    pub fn similarities(&self, features: &Tensor) -> Tensor {
        let weights = self.weights(features.device());
        match self.spec {
            HeadSpec::Linear => {
                let bias: Vec<&Tensor> =
                    self.blocks.iter().filter_map(|b| b.bias.as_ref()).collect();
                let bias = if bias.is_empty() {
                    Tensor::zeros([0], (Kind::Float, features.device()))
                } else {
                    Tensor::cat(&bias, 0)
                };
                features.linear(&weights, Some(&bias))
            }
            HeadSpec::Cosine => l2_normalise(features).mm(&l2_normalise(&weights).tr()),
            HeadSpec::LocalSimilarity { proxies, scaling } => {
                let u = l2_normalise(features) * scaling;
                let v = l2_normalise(&weights) * scaling;
                let squared = |t: &Tensor| t.square().sum_dim_intlist(1i64, true, None);
                let distance =
                    (squared(&u) + squared(&v).tr() - u.mm(&v.tr()) * 2.0).clamp_min(0.0);
                let per_proxy = distance.neg().view([-1, self.num_classes(), proxies]);
                (per_proxy.softmax(-1, None) * &per_proxy).sum_dim_intlist(-1i64, false, None)
            }
        }
    }

    /// Logits over all seen classes, `[B, C]`: `similarities` times `sigma`
    /// for the cosine head; for local similarity the merged similarity
    /// without `eta`, which PODNet evaluates and feeds to NCA.
    pub fn forward(&self, features: &Tensor) -> Tensor {
        let s = self.similarities(features);
        match (&self.spec, &self.scale) {
            (HeadSpec::Cosine, Some(sigma)) => s * sigma,
            _ => s,
        }
    }

    /// `sigma` (cosine) or `eta` (local similarity), a `[1]` variable.
    pub fn scale(&self) -> Option<Tensor> {
        self.scale.as_ref().map(Tensor::shallow_clone)
    }

    /// Weights and biases of every block, oldest first, without the scale:
    /// what PODNet's balanced finetuning optimises.
    pub fn block_parameters(&self) -> Vec<Tensor> {
        self.blocks
            .iter()
            .flat_map(|b| std::iter::once(&b.weight).chain(b.bias.as_ref()))
            .map(Tensor::shallow_clone)
            .collect()
    }

    /// Switches the gradient of every block but the newest; call after each
    /// `add_classes` (LUCIR and PODNet main phase: `false`) and before PODNet's
    /// finetuning (`true`). Gradients already accumulated are left alone: zero
    /// them first (tch's `zero_grad` sets them to none).
    pub fn set_old_blocks_trainable(&self, trainable: bool) {
        let old = self.blocks.len().saturating_sub(1);
        for b in &self.blocks[..old] {
            let _ = b.weight.set_requires_grad(trainable);
            if let Some(bias) = &b.bias {
                let _ = bias.set_requires_grad(trainable);
            }
        }
    }
}

/// `x / max(||x||, 1e-12)` row-wise, as `F.normalize`.
fn l2_normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn head(spec: HeadSpec, blocks: &[(i64, Option<&Tensor>)]) -> (nn::VarStore, Head) {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root() / "head";
        let mut h = Head::new(&p, &spec, 2).expect("valid");
        for &(n, imprint) in blocks {
            h.add_classes(&p, n, imprint).expect("grows");
        }
        (vs, h)
    }

    fn t(rows: &[[f64; 2]]) -> Tensor {
        Tensor::from_slice(&rows.concat())
            .view([-1, 2])
            .to_kind(Kind::Float)
    }

    fn set(var: &Tensor, value: &Tensor) {
        tch::no_grad(|| var.shallow_clone().copy_(value));
    }

    fn values(x: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(x.flatten(0, -1).to_kind(Kind::Double)).expect("f64")
    }

    fn assert_close(actual: &Tensor, expected: &[f64]) {
        let actual = values(actual);
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-5, "{actual:?} vs {expected:?}");
        }
    }

    #[test]
    fn cosine_logits_are_sigma_times_cosine() {
        let (_, h) = head(HeadSpec::Cosine, &[(2, None)]);
        set(&h.block_parameters()[0], &t(&[[1.0, 0.0], [0.0, 2.0]]));
        set(&h.scale().expect("sigma"), &Tensor::from_slice(&[2.0f32]));
        let x = t(&[[3.0, 4.0], [-1.0, 0.0]]);
        assert_close(&h.similarities(&x), &[0.6, 0.8, -1.0, 0.0]);
        assert_close(&h.forward(&x), &[1.2, 1.6, -2.0, 0.0]);
    }

    #[test]
    fn linear_logits() {
        let (_, h) = head(HeadSpec::Linear, &[(1, None), (1, None)]);
        let params = h.block_parameters();
        set(&params[0], &t(&[[1.0, 2.0]]));
        set(&params[1], &Tensor::from_slice(&[0.5f32]));
        set(&params[2], &t(&[[0.0, -1.0]]));
        assert!(h.scale().is_none());
        assert_close(&h.forward(&t(&[[3.0, 4.0]])), &[11.5, -4.0]);
    }

    /// method-formulas.md 3.3's equivalent form, computed independently:
    /// z_c = 2 s^2 (sum_k a_k cos_k - 1), a = softmax_k(2 s^2 cos_k).
    fn lsc_closed_form(cosines: &[f64], s: f64) -> f64 {
        let e: Vec<f64> = cosines.iter().map(|c| (2.0 * s * s * c).exp()).collect();
        let total: f64 = e.iter().sum();
        let mean_cos: f64 = e.iter().zip(cosines).map(|(w, c)| w / total * c).sum();
        2.0 * s * s * (mean_cos - 1.0)
    }

    #[test]
    fn local_similarity_equals_the_closed_form() {
        for scaling in [1.0, 3.0] {
            let spec = HeadSpec::LocalSimilarity {
                proxies: 2,
                scaling,
            };
            let (_, h) = head(spec, &[(2, None)]);
            // Class 0: proxies along x and y; class 1: at 60 and 180 degrees,
            // with norms that the head must ignore.
            let half = 3f64.sqrt() / 2.0;
            set(
                &h.block_parameters()[0],
                &t(&[[1.0, 0.0], [0.0, 5.0], [0.5, half], [-2.0, 0.0]]),
            );
            let x = t(&[[2.0, 0.0]]);
            let expected = [
                lsc_closed_form(&[1.0, 0.0], scaling),
                lsc_closed_form(&[0.5, -1.0], scaling),
            ];
            assert_close(&h.forward(&x), &expected);
            assert_close(&h.similarities(&x), &expected);
        }
        let (_, h) = head(
            HeadSpec::LocalSimilarity {
                proxies: 1,
                scaling: 1.0,
            },
            &[(1, None)],
        );
        set(&h.block_parameters()[0], &t(&[[0.0, 1.0]]));
        assert_close(
            &h.forward(&t(&[[1.0, 1.0]])),
            &[2.0 * (0.5f64.sqrt() - 1.0)],
        );
        set(&h.scale().expect("eta"), &Tensor::from_slice(&[4.0f32]));
        assert_close(
            &h.forward(&t(&[[1.0, 1.0]])),
            &[2.0 * (0.5f64.sqrt() - 1.0)],
        );
    }

    #[test]
    fn growth_keeps_old_weights_and_names_blocks_by_index() {
        tch::manual_seed(3);
        for spec in [
            HeadSpec::Linear,
            HeadSpec::Cosine,
            HeadSpec::LocalSimilarity {
                proxies: 3,
                scaling: 1.0,
            },
        ] {
            let (vs, mut h) = head(spec.clone(), &[(2, None)]);
            let x = t(&[[0.3, -1.0], [2.0, 0.5]]);
            let before = h.forward(&x);
            let old = h.block_parameters()[0].copy();
            h.add_classes(&(vs.root() / "head"), 3, None)
                .expect("grows");
            assert_eq!((h.num_classes(), h.num_blocks()), (5, 2));
            assert!(h.block_parameters()[0].equal(&old), "{spec:?}");
            let after = h.forward(&x);
            assert_eq!(after.size(), [2, 5]);
            assert!(
                after.narrow(1, 0, 2).allclose(&before, 1e-6, 1e-6, false),
                "{spec:?}"
            );
            let vars = vs.variables();
            assert_eq!(
                vars["head.block1.weight"].size(),
                [3 * spec.rows_per_class(), 2]
            );
            assert_eq!(
                vars.contains_key("head.block1.bias"),
                spec == HeadSpec::Linear
            );
        }
    }

    #[test]
    fn empty_head_gives_no_logits() {
        let (_, h) = head(HeadSpec::Cosine, &[]);
        assert_eq!(h.forward(&t(&[[1.0, 0.0]])).size(), [1, 0]);
    }

    #[test]
    fn cosine_imprinting_scales_normalised_means_to_the_old_norm() {
        let (vs, mut h) = head(HeadSpec::Cosine, &[(2, None)]);
        set(&h.block_parameters()[0], &t(&[[2.0, 0.0], [0.0, 4.0]]));
        let means = t(&[[3.0, 4.0]]);
        h.add_classes(&(vs.root() / "head"), 1, Some(&means))
            .expect("imprints");
        assert_close(&h.block_parameters()[1], &[1.8, 2.4]);
        assert!(h.block_parameters()[1].requires_grad());
    }

    #[test]
    fn proxy_imprinting_keeps_k_means_centres_unnormalised() {
        let spec = HeadSpec::LocalSimilarity {
            proxies: 2,
            scaling: 1.0,
        };
        let (vs, mut h) = head(spec, &[(1, None)]);
        set(&h.block_parameters()[0], &t(&[[1.0, 0.0], [0.0, 3.0]]));
        let centres = t(&[[0.5, 0.0], [0.0, 0.25]]);
        h.add_classes(&(vs.root() / "head"), 1, Some(&centres))
            .expect("imprints");
        assert_close(&h.block_parameters()[1], &[1.0, 0.0, 0.0, 0.5]);

        let spec = HeadSpec::LocalSimilarity {
            proxies: 1,
            scaling: 1.0,
        };
        let (vs, mut h) = head(spec, &[(1, None)]);
        set(&h.block_parameters()[0], &t(&[[0.0, 3.0]]));
        h.add_classes(&(vs.root() / "head"), 1, Some(&t(&[[0.5, 0.0]])))
            .expect("imprints");
        assert_close(&h.block_parameters()[1], &[3.0, 0.0]);
    }

    #[test]
    fn imprinting_errors_say_what_is_wrong() {
        let message = |spec: HeadSpec, blocks: &[(i64, Option<&Tensor>)], imprint: &Tensor| {
            let (vs, mut h) = head(spec, blocks);
            let err = h.add_classes(&(vs.root() / "head"), 1, Some(imprint));
            err.expect_err("refused").to_string()
        };
        let row = t(&[[1.0, 0.0]]);
        assert!(message(HeadSpec::Cosine, &[], &row).contains("has none yet"));
        assert!(message(HeadSpec::Linear, &[(1, None)], &row).contains("linear"));
        let lsc = HeadSpec::LocalSimilarity {
            proxies: 2,
            scaling: 1.0,
        };
        assert!(message(lsc, &[(1, None)], &row).contains("[2, 2] class directions, got [1, 2]"));
    }

    #[test]
    fn old_blocks_can_be_frozen_and_released() {
        let (vs, mut h) = head(HeadSpec::Cosine, &[(2, None)]);
        h.add_classes(&(vs.root() / "head"), 2, None)
            .expect("grows");
        h.set_old_blocks_trainable(false);
        h.forward(&t(&[[1.0, 2.0]])).sum(Kind::Float).backward();
        let params = h.block_parameters();
        assert!(!params[0].grad().defined());
        assert!(params[1].grad().defined());
        assert!(h.scale().expect("sigma").grad().defined());
        h.set_old_blocks_trainable(true);
        assert!(params[0].requires_grad());
    }

    #[test]
    fn parameter_counts_at_100_classes_match_the_formula_sheet() {
        let grown = |spec: HeadSpec| {
            let vs = nn::VarStore::new(Device::Cpu);
            let p = vs.root();
            let mut h = Head::new(&p, &spec, 64).expect("valid");
            for n in [50, 10, 10, 10, 10, 10] {
                h.add_classes(&p, n, None).expect("grows");
            }
            let count: i64 = vs
                .trainable_variables()
                .iter()
                .map(|t| t.numel() as i64)
                .sum();
            count
        };
        assert_eq!(grown(HeadSpec::Linear), 6_500);
        assert_eq!(grown(HeadSpec::Cosine), 6_401);
        assert_eq!(
            grown(HeadSpec::LocalSimilarity {
                proxies: 10,
                scaling: 1.0
            }),
            64_001
        );
    }

    #[test]
    fn random_init_scales() {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = HeadSpec::LocalSimilarity {
            proxies: 10,
            scaling: 1.0,
        };
        let mut h = Head::new(&vs.root(), &spec, 64).expect("valid");
        h.add_classes(&vs.root(), 100, None).expect("grows");
        let std = h.block_parameters()[0].std(true).double_value(&[]);
        assert!((std - 0.125).abs() < 0.003, "std {std}");
        let mut c = Head::new(&(vs.root() / "c"), &HeadSpec::Cosine, 64).expect("valid");
        c.add_classes(&(vs.root() / "c"), 100, None).expect("grows");
        let max = c.block_parameters()[0].abs().max().double_value(&[]);
        assert!(max <= 0.125 && max > 0.12, "max {max}");
    }

    #[test]
    fn spec_serde_and_validation() {
        let lsc = HeadSpec::LocalSimilarity {
            proxies: 10,
            scaling: 3.0,
        };
        let json = serde_json::to_string(&[HeadSpec::Linear, HeadSpec::Cosine, lsc.clone()])
            .expect("serialises");
        assert_eq!(
            json,
            r#"["linear","cosine",{"local_similarity":{"proxies":10,"scaling":3.0}}]"#
        );
        let bad = r#"{"local_similarity":{"proxies":10,"scaling":3.0,"gamma":1.0}}"#;
        assert!(serde_json::from_str::<HeadSpec>(bad).is_err());
        let zero = HeadSpec::LocalSimilarity {
            proxies: 0,
            scaling: 1.0,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let err = Head::new(&vs.root(), &zero, 64).err().expect("refused");
        assert!(err.to_string().contains("proxies"), "{err}");
        Head::new(&vs.root(), &lsc, 64).expect("first");
        let err = Head::new(&vs.root(), &lsc, 64).err().expect("duplicate");
        assert!(err.to_string().contains("eta"), "{err}");
    }
}
