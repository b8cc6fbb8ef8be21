//! Residual backbones: the CIFAR ResNet-32 variants of method-formulas.md
//! section 2 and an ImageNet ResNet-18.
//!
//! Variable names are the checkpoint format, so they are fixed and
//! positional: `stem.{conv,bn}.*` and
//! `stage{s}.block{b}.{a,b,shortcut}.{conv,bn}.*`, stages from 1, blocks
//! from 0. `Backbone::new` refuses a path that already holds them rather
//! than let tch rename a duplicate.
//!
//! Every residual sum is returned pre-activation: the ReLU that some variants
//! apply after a block is applied by the stage loop, after the attention
//! map has been taken, as in PODNet's `Stage`.

use serde::{Deserialize, Serialize};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, ConvConfig, Init};
use tch::Tensor;

use crate::{Result, StageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// 3x3 stem (stride 1), three stages of `w, 2w, 4w` channels; 32x32 input.
    CifarResnet,
    /// 7x7 stride-2 stem and 3x3 stride-2 max-pool, four stages of
    /// `w, 2w, 4w, 8w` channels (torchvision's layout, as LUCIR uses).
    ImagenetResnet,
    /// PODNet's ImageNet ResNet (A `inclearn/convnet/resnet.py` `ResNet`,
    /// `initial_kernel=3`, `last_relu=False`): a 3x3 stride-1 stem, then
    /// the 3x3 stride-2 max-pool and the four stages (a 224 input ends at
    /// 14x14, not 7x7). Within a stage every block but the last applies its
    /// ReLU; a stage's last block does not, and no ReLU joins two stages
    /// (`end_relu` is off), so each stage reads the previous one's
    /// pre-activation output. `last_relu` of the spec is not read.
    ImagenetResnetPodnet,
}

/// The shortcut of a block that halves the resolution and doubles the
/// channels; the other blocks use the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortcut {
    /// Parameter-free: subsample `x[:, :, ::2, ::2]`, then append as many zero
    /// channels after `x` (PODNet's `rebuffi`, PyCIL's `resnet32`).
    A,
    /// 1x1 convolution with stride 2, then BatchNorm (LUCIR, torchvision).
    B,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    pub arch: Arch,
    /// Channels of the stem and the first stage.
    pub width: i64,
    /// Basic blocks per stage.
    pub blocks: i64,
    pub shortcut: Shortcut,
    /// `true`: every block except the network's final one applies a ReLU to
    /// its residual sum (LUCIR; PODNet's `rebuffi` with `last_relu=True`).
    /// `false`: no block does (PODNet's `rebuffi` default, A#24). The final
    /// block never does, so [`BackboneOut::raw`] is always pre-ReLU and a
    /// variant with a ReLU there too (PyCIL's `resnet32`) uses
    /// [`BackboneOut::features`].
    pub last_relu: bool,
    /// Zero-initialise the second BatchNorm's gamma in every block, so each
    /// block starts as its shortcut.
    pub zero_init_residual: bool,
}

impl NetSpec {
    /// ResNet-32 as PODNet's `rebuffi`: 463,504 parameters.
    pub fn resnet32() -> NetSpec {
        NetSpec {
            arch: Arch::CifarResnet,
            width: 16,
            blocks: 5,
            shortcut: Shortcut::A,
            last_relu: false,
            zero_init_residual: true,
        }
    }

    /// ResNet-32 as LUCIR's `modified_resnet_cifar.resnet32`: 466,256
    /// parameters.
    pub fn resnet32_lucir() -> NetSpec {
        NetSpec {
            arch: Arch::CifarResnet,
            width: 16,
            blocks: 5,
            shortcut: Shortcut::B,
            last_relu: true,
            zero_init_residual: false,
        }
    }

    /// ResNet-18 as LUCIR's ImageNet `modified_resnet` (torchvision's, with
    /// no ReLU after the final block): 11,176,512 parameters. PODNet's
    /// ImageNet ResNet differs (3x3 stride-1 stem, other ReLU placement).
    pub fn resnet18() -> NetSpec {
        NetSpec {
            arch: Arch::ImagenetResnet,
            width: 64,
            blocks: 2,
            shortcut: Shortcut::B,
            last_relu: true,
            zero_init_residual: false,
        }
    }

    /// ResNet-18 as PODNet's ImageNet `resnet18` (`nf: 64` in its
    /// ImageNet yaml; shortcut B, zero-initialised residual BatchNorm).
    pub fn resnet18_podnet() -> NetSpec {
        NetSpec {
            arch: Arch::ImagenetResnetPodnet,
            width: 64,
            blocks: 2,
            shortcut: Shortcut::B,
            last_relu: false,
            zero_init_residual: true,
        }
    }

    /// A `resnet32` shrunk to 4 channels and one block per stage, for tests
    /// and the quickstart.
    pub fn tiny() -> NetSpec {
        NetSpec {
            width: 4,
            blocks: 1,
            ..NetSpec::resnet32()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.width < 1 {
            return Err(StageError::param(
                "network.width",
                format!("{} is not a positive channel count", self.width),
            ));
        }
        if self.blocks < 1 {
            return Err(StageError::param(
                "network.blocks",
                format!(
                    "{} is not a positive number of blocks per stage",
                    self.blocks
                ),
            ));
        }
        Ok(())
    }

    fn stages(&self) -> i64 {
        match self.arch {
            Arch::CifarResnet => 3,
            Arch::ImagenetResnet | Arch::ImagenetResnetPodnet => 4,
        }
    }
}

pub struct BackboneOut {
    /// GAP of the final block's output, pre-ReLU: `[B, d]`.
    pub raw: Tensor,
    /// GAP(ReLU(final block's output)): `[B, d]`.
    pub features: Tensor,
    /// Pre-activation block outputs for POD-spatial, shallow to deep.
    /// ImageNet: the last block of each of the 4 stages. CIFAR: PODNet's 4
    /// maps, because its `rebuffi` splits the last stage into `stage_3` and a
    /// one-block `stage_4`: the last block of stages 1 and 2, then the last
    /// two blocks of stage 3 (only 3 maps when `blocks` is 1).
    pub attention: Vec<Tensor>,
}

struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBn {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, gamma: f64) -> ConvBn {
        let conv = nn::conv2d(
            p / "conv",
            c_in,
            c_out,
            k,
            ConvConfig {
                stride,
                padding: k / 2,
                bias: false,
                ws_init: Init::Kaiming {
                    dist: NormalOrUniform::Normal,
                    fan: FanInOut::FanOut,
                    non_linearity: NonLinearity::ReLU,
                },
                ..Default::default()
            },
        );
        ConvBn {
            conv,
            bn: batch_norm(&(p / "bn"), c_out, gamma),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        x.apply(&self.conv).apply_t(&self.bn, train)
    }
}

fn batch_norm(p: &nn::Path, c: i64, gamma: f64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig {
            ws_init: Init::Const(gamma),
            bs_init: Init::Const(0.0),
            ..Default::default()
        },
    )
}

enum Downsample {
    Pad,
    Conv(Box<ConvBn>),
}

struct Block {
    a: ConvBn,
    b: ConvBn,
    downsample: Option<Downsample>,
    relu: bool,
}

impl Block {
    fn new(p: &nn::Path, spec: &NetSpec, c_in: i64, c_out: i64, relu: bool) -> Block {
        // Only a stage's first block changes the width, and every such block
        // also halves the resolution (ImageNet's first stage keeps both).
        let stride = if c_in == c_out { 1 } else { 2 };
        let gamma_b = if spec.zero_init_residual { 0.0 } else { 1.0 };
        let downsample = (c_in != c_out).then(|| match spec.shortcut {
            Shortcut::A => Downsample::Pad,
            Shortcut::B => Downsample::Conv(Box::new(ConvBn::new(
                &(p / "shortcut"),
                c_in,
                c_out,
                1,
                2,
                1.0,
            ))),
        });
        Block {
            a: ConvBn::new(&(p / "a"), c_in, c_out, 3, stride, 1.0),
            b: ConvBn::new(&(p / "b"), c_out, c_out, 3, 1, gamma_b),
            downsample,
            relu,
        }
    }

    /// The residual sum, before any ReLU.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.a.forward_t(x, train).relu();
        let y = self.b.forward_t(&y, train);
        let shortcut = match &self.downsample {
            None => x.shallow_clone(),
            Some(Downsample::Pad) => {
                let s = x.slice(2, 0, None, 2).slice(3, 0, None, 2);
                Tensor::cat(&[&s, &s.zeros_like()], 1)
            }
            Some(Downsample::Conv(c)) => c.forward_t(x, train),
        };
        y + shortcut
    }
}

pub struct Backbone {
    arch: Arch,
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
    out_dim: i64,
}

impl Backbone {
    /// Convolutions get Kaiming-normal (fan_out, ReLU) weights, BatchNorm
    /// gamma 1 and beta 0 (gamma 0 in each block's second BN with
    /// `zero_init_residual`), as PODNet's and LUCIR's networks do.
    pub fn new(p: &nn::Path, spec: &NetSpec) -> Result<Backbone> {
        spec.validate()?;
        if (p / "stem" / "conv").get("weight").is_some() {
            return Err(StageError::Other(format!(
                "a backbone already exists at {}; checkpoints need unique variable names",
                p.path("stem")
            )));
        }
        let w = spec.width;
        let stem = match spec.arch {
            Arch::CifarResnet => ConvBn::new(&(p / "stem"), 3, w, 3, 1, 1.0),
            Arch::ImagenetResnet => ConvBn::new(&(p / "stem"), 3, w, 7, 2, 1.0),
            Arch::ImagenetResnetPodnet => ConvBn::new(&(p / "stem"), 3, w, 3, 1, 1.0),
        };
        let n_stages = spec.stages();
        let mut stages = Vec::new();
        let mut c_in = w;
        for s in 0..n_stages {
            let c_out = w << s;
            let stage = (0..spec.blocks)
                .map(|b| {
                    let last = s + 1 == n_stages && b + 1 == spec.blocks;
                    let path = p / format!("stage{}", s + 1) / format!("block{b}");
                    let c = if b == 0 { c_in } else { c_out };
                    let relu = match spec.arch {
                        Arch::ImagenetResnetPodnet => b + 1 < spec.blocks,
                        _ => spec.last_relu && !last,
                    };
                    Block::new(&path, spec, c, c_out, relu)
                })
                .collect();
            stages.push(stage);
            c_in = c_out;
        }
        Ok(Backbone {
            arch: spec.arch,
            stem,
            stages,
            out_dim: c_in,
        })
    }

    pub fn out_dim(&self) -> i64 {
        self.out_dim
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> BackboneOut {
        let mut x = self.stem.forward_t(x, train).relu();
        if self.arch != Arch::CifarResnet {
            x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        let mut attention = Vec::with_capacity(4);
        let n_stages = self.stages.len();
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let sum = block.forward_t(&x, train);
                let split_stage_end =
                    self.arch == Arch::CifarResnet && s + 1 == n_stages && b + 2 == stage.len();
                if b + 1 == stage.len() || split_stage_end {
                    attention.push(sum.shallow_clone());
                }
                x = if block.relu { sum.relu() } else { sum };
            }
        }
        let gap = |t: &Tensor| t.mean_dim(&[2i64, 3][..], false, None);
        BackboneOut {
            raw: gap(&x),
            features: gap(&x.relu()),
            attention,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn build(spec: &NetSpec) -> (nn::VarStore, Backbone) {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Backbone::new(&vs.root(), spec).expect("valid spec");
        (vs, net)
    }

    fn trainable(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn parameter_counts_match_the_formula_sheet() {
        assert_eq!(trainable(&build(&NetSpec::resnet32()).0), 463_504);
        assert_eq!(trainable(&build(&NetSpec::resnet32_lucir()).0), 466_256);
        assert_eq!(trainable(&build(&NetSpec::resnet18()).0), 11_176_512);
    }

    #[test]
    fn names_are_positional_and_running_stats_are_buffers() {
        let (vs, _) = build(&NetSpec::resnet32_lucir());
        let vars = vs.variables();
        for name in [
            "stem.conv.weight",
            "stage1.block0.a.conv.weight",
            "stage3.block4.b.bn.weight",
            "stage3.block4.b.bn.running_var",
            "stage2.block0.shortcut.conv.weight",
            "stage3.block0.shortcut.bn.bias",
        ] {
            assert!(vars.contains_key(name), "{name} missing");
        }
        assert!(!vars.contains_key("stage2.block1.shortcut.conv.weight"));
        let bn_vars = vars.keys().filter(|k| k.contains(".bn.")).count();
        let bn_trainable = vars
            .iter()
            .filter(|(k, t)| k.contains(".bn.") && t.requires_grad())
            .count();
        assert_eq!(bn_trainable * 2, bn_vars);
    }

    #[test]
    fn init_follows_the_references() {
        let (vs, _) = build(&NetSpec::resnet32());
        let vars = vs.variables();
        let mean = |n: &str| vars[n].mean(Kind::Float).double_value(&[]);
        assert_eq!(mean("stage2.block3.b.bn.weight"), 0.0);
        assert_eq!(mean("stage2.block3.a.bn.weight"), 1.0);
        assert_eq!(mean("stage2.block3.a.bn.bias"), 0.0);
        // Kaiming fan_out: std = sqrt(2 / (9 * 64)) for a 64-channel 3x3 conv.
        let std = vars["stage3.block1.a.conv.weight"]
            .std(true)
            .double_value(&[]);
        assert!((std - (2.0f64 / 576.0).sqrt()).abs() < 0.003, "std {std}");
        let (vs, _) = build(&NetSpec::resnet32_lucir());
        let gamma = vs.variables()["stage2.block3.b.bn.weight"].mean(Kind::Float);
        assert_eq!(gamma.double_value(&[]), 1.0);
    }

    #[test]
    fn cifar_shapes_and_podnet_attention_maps() {
        tch::manual_seed(0);
        let (_, net) = build(&NetSpec::resnet32());
        assert_eq!(net.out_dim(), 64);
        let out = net.forward_t(&Tensor::randn([2, 3, 32, 32], tch::kind::FLOAT_CPU), true);
        assert_eq!(out.raw.size(), [2, 64]);
        assert_eq!(out.features.size(), [2, 64]);
        let shapes: Vec<_> = out.attention.iter().map(|a| a.size()).collect();
        assert_eq!(
            shapes,
            [
                vec![2, 16, 32, 32],
                vec![2, 32, 16, 16],
                vec![2, 64, 8, 8],
                vec![2, 64, 8, 8]
            ]
        );
        let last = out.attention.last().expect("maps");
        assert!(last
            .mean_dim(&[2i64, 3][..], false, None)
            .allclose(&out.raw, 1e-6, 1e-6, false));
        assert!(last.relu().mean_dim(&[2i64, 3][..], false, None).allclose(
            &out.features,
            1e-6,
            1e-6,
            false
        ));
    }

    #[test]
    fn tiny_has_three_maps_and_a_16_d_feature() {
        let (_, net) = build(&NetSpec::tiny());
        let out = net.forward_t(&Tensor::randn([3, 3, 32, 32], tch::kind::FLOAT_CPU), false);
        assert_eq!(out.raw.size(), [3, 16]);
        let channels: Vec<_> = out.attention.iter().map(|a| a.size()[1]).collect();
        assert_eq!(channels, [4, 8, 16]);
    }

    #[test]
    fn imagenet_shapes() {
        let spec = NetSpec {
            width: 8,
            ..NetSpec::resnet18()
        };
        let (_, net) = build(&spec);
        assert_eq!(net.out_dim(), 64);
        let out = net.forward_t(&Tensor::randn([2, 3, 64, 64], tch::kind::FLOAT_CPU), true);
        assert_eq!(out.raw.size(), [2, 64]);
        let shapes: Vec<_> = out.attention.iter().map(|a| a.size()).collect();
        assert_eq!(
            shapes,
            [
                vec![2, 8, 16, 16],
                vec![2, 16, 8, 8],
                vec![2, 32, 4, 4],
                vec![2, 64, 2, 2]
            ]
        );
    }

    #[test]
    fn podnet_imagenet_resnet_has_its_stem_and_relu_placement() {
        let spec = NetSpec {
            width: 4,
            ..NetSpec::resnet18_podnet()
        };
        let (vs, net) = build(&spec);
        // A `resnet.py`: conv1 is 3x3 (initial_kernel=3) at stride 1.
        assert_eq!(vs.variables()["stem.conv.weight"].size(), [4, 3, 3, 3]);
        // Within each stage the first block applies its ReLU, the last
        // does not, and nothing joins the stages (end_relu off).
        for stage in &net.stages {
            let relus: Vec<bool> = stage.iter().map(|b| b.relu).collect();
            assert_eq!(relus, vec![true, false]);
        }
        // 32 px: stride-1 stem, max-pool to 16, then 16, 8, 4, 2; the
        // torchvision stem would end at 1.
        let out = net.forward_t(
            &Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
            false,
        );
        let sides: Vec<i64> = out.attention.iter().map(|a| a.size()[2]).collect();
        assert_eq!(sides, vec![16, 8, 4, 2]);
        assert_eq!(out.raw.size(), [2, 32]);
        let tv = build(&NetSpec {
            width: 4,
            ..NetSpec::resnet18()
        })
        .1;
        let tv_out = tv.forward_t(
            &Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
            false,
        );
        assert_eq!(tv_out.attention.last().unwrap().size()[2], 1);
    }

    #[test]
    fn last_relu_keeps_the_maps_and_the_raw_feature_pre_activation() {
        tch::manual_seed(1);
        let (_, net) = build(&NetSpec::resnet32_lucir());
        let out = net.forward_t(&Tensor::randn([2, 3, 32, 32], tch::kind::FLOAT_CPU), true);
        for map in &out.attention {
            assert!(map.min().double_value(&[]) < 0.0);
        }
        let relu_gain = (&out.features - &out.raw).min().double_value(&[]);
        assert!(relu_gain >= 0.0 && !out.features.equal(&out.raw));
    }

    #[test]
    fn train_and_eval_differ_only_through_batch_norm() {
        tch::manual_seed(2);
        let spec = NetSpec {
            zero_init_residual: false,
            ..NetSpec::tiny()
        };
        let (vs, net) = build(&spec);
        let x = Tensor::randn([4, 3, 32, 32], tch::kind::FLOAT_CPU) * 3.0 + 1.0;
        let eval = |x: &Tensor| tch::no_grad(|| net.forward_t(x, false).raw);
        let e0 = eval(&x);
        // Eval mode is a per-sample function with no randomness ...
        assert!(eval(&x.narrow(0, 1, 1)).allclose(&e0.narrow(0, 1, 1), 1e-5, 1e-6, false));
        assert!(eval(&x).equal(&e0));
        // ... train mode normalises with the batch and is deterministic too ...
        let t0 = tch::no_grad(|| net.forward_t(&x, true).raw);
        assert!(!t0.allclose(&e0, 1e-3, 1e-3, false));
        let single = tch::no_grad(|| net.forward_t(&x.narrow(0, 0, 2), true).raw);
        assert!(!single.allclose(&t0.narrow(0, 0, 2), 1e-3, 1e-3, false));
        // ... and only BN's running statistics carry state from one to the other.
        let before = vs.variables()["stem.bn.running_mean"].copy();
        let _ = tch::no_grad(|| net.forward_t(&x, true));
        assert!(!vs.variables()["stem.bn.running_mean"].equal(&before));
        assert!(!eval(&x).equal(&e0));
    }

    #[test]
    fn invalid_specs_and_duplicate_paths_are_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bad = NetSpec {
            blocks: 0,
            ..NetSpec::tiny()
        };
        let err = Backbone::new(&vs.root(), &bad).err().expect("refused");
        assert!(err.to_string().contains("network.blocks"), "{err}");
        Backbone::new(&(vs.root() / "backbone"), &NetSpec::tiny()).expect("first");
        let err = Backbone::new(&(vs.root() / "backbone"), &NetSpec::tiny())
            .err()
            .expect("dup");
        assert!(err.to_string().contains("backbone.stem"), "{err}");
    }

    #[test]
    fn spec_serde_is_strict() {
        let json = serde_json::to_string(&NetSpec::resnet32()).expect("serialises");
        assert_eq!(
            json,
            r#"{"arch":"cifar_resnet","width":16,"blocks":5,"shortcut":"a","last_relu":false,"zero_init_residual":true}"#
        );
        let extra = json.replace("}", r#","dropout":0.1}"#);
        assert!(serde_json::from_str::<NetSpec>(&extra).is_err());
        assert_eq!(
            serde_json::from_str::<NetSpec>(&json).expect("parses"),
            NetSpec::resnet32()
        );
    }
}
