//! `bsce-torch bench-train` and `bench-loader`: the measurements behind
//! bench/run.sh's training figures and scripts/gpu-check.sh. The peer is
//! bench/train_step.py, the same step in PyTorch on the same libtorch.
//!
//! Two networks, each at the input size it trains at: `resnet32` (PODNet's
//! CIFAR ResNet-32, 32x32 inputs, CIFAR augmentation) and `resnet18`
//! (LUCIR's ImageNet ResNet-18, 224x224 inputs, ImageNet augmentation from
//! 256x256 stored images). Both with a 100-way linear head.

use std::time::Instant;

use serde_json::{json, Value};
use tch::{nn, nn::OptimizerConfig, Cuda, Device, Kind, Tensor};

use crate::classifier::{Head, HeadSpec};
use crate::data::{augment, gather, AugmentSpec};
use crate::loss;
use crate::net::{Backbone, NetSpec};
use crate::{Result, StageError};

/// The network a benchmark runs, with its input size and data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchNet {
    /// `NetSpec::resnet32()` on 32x32 inputs; loader: CIFAR-sized u8
    /// images, `AugmentSpec::cifar_podnet()`.
    Resnet32,
    /// `NetSpec::resnet18()` on 224x224 inputs; loader: 256x256 u8 images
    /// (what image-folder preparation stores), `AugmentSpec::imagenet()`
    /// (random-resized crop to 224, flip).
    Resnet18,
}

impl BenchNet {
    pub fn parse(s: &str) -> Result<BenchNet> {
        match s {
            "resnet32" => Ok(BenchNet::Resnet32),
            "resnet18" => Ok(BenchNet::Resnet18),
            _ => Err(StageError::param(
                "net",
                format!("{s:?} is not resnet32 or resnet18"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BenchNet::Resnet32 => "resnet32",
            BenchNet::Resnet18 => "resnet18",
        }
    }

    fn spec(self) -> NetSpec {
        match self {
            BenchNet::Resnet32 => NetSpec::resnet32(),
            BenchNet::Resnet18 => NetSpec::resnet18(),
        }
    }

    /// The network's input side.
    pub fn input_size(self) -> i64 {
        match self {
            BenchNet::Resnet32 => 32,
            BenchNet::Resnet18 => i64::from(bsce_pipeline::params::IMAGENET_CROP),
        }
    }

    /// The side of the stored images the loader reads, and how many it
    /// holds (256x256 x 1,024 is 200 MB; CIFAR's 50,000 are 150 MB).
    fn stored(self) -> (i64, usize) {
        match self {
            BenchNet::Resnet32 => (32, 50_000),
            BenchNet::Resnet18 => (256, 1_024),
        }
    }

    fn augment(self) -> AugmentSpec {
        match self {
            BenchNet::Resnet32 => AugmentSpec::cifar_podnet(),
            BenchNet::Resnet18 => AugmentSpec::imagenet(),
        }
    }
}

/// On a GPU, cuDNN's benchmark mode as the training stages use it (on
/// unless `deterministic`); bench/train_step.py sets the same.
fn setup(device: Device) {
    tch::manual_seed(0);
    if device.is_cuda() {
        Cuda::cudnn_set_benchmark(true);
    }
}

/// `cpu` or `cuda:N`, as `--device` and the scheduler write it.
fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}"),
    }
}

/// Waits for the device's queued work, so a timing covers it.
fn sync(device: Device) {
    if let Device::Cuda(n) = device {
        Cuda::synchronize(n as i64);
    }
}

/// Images/s of a full training step (forward, CE, backward, SGD momentum
/// 0.9, wd 5e-4) of `net` on random inputs of its size, after `warmup`
/// untimed steps. Each step reads the loss back, as a training loop that
/// logs it does (and as the peer's `loss.item()` does).
pub fn train_step(
    net: BenchNet,
    batch: i64,
    iters: usize,
    warmup: usize,
    device: Device,
) -> Result<Value> {
    setup(device);
    let vs = nn::VarStore::new(device);
    let backbone = Backbone::new(&(vs.root() / "backbone"), &net.spec())?;
    let mut head = Head::new(&(vs.root() / "head"), &HeadSpec::Linear, backbone.out_dim())?;
    head.add_classes(&(vs.root() / "head"), 100, None)?;
    let mut opt = nn::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        wd: 5e-4,
        nesterov: false,
    }
    .build(&vs, 0.1)
    .map_err(|e| StageError::Other(e.to_string()))?;
    let s = net.input_size();
    let x = Tensor::randn([batch, 3, s, s], (Kind::Float, device));
    let y = Tensor::randint(100, [batch], (Kind::Int64, device));
    let mut step = || {
        let out = backbone.forward_t(&x, true);
        let l = loss::cross_entropy(&head.forward(&out.features), &y);
        opt.backward_step(&l);
        l.double_value(&[])
    };
    for _ in 0..warmup {
        step();
    }
    sync(device);
    let t = Instant::now();
    for _ in 0..iters {
        step();
    }
    sync(device);
    let secs = t.elapsed().as_secs_f64();
    Ok(json!({
        "images_per_s": (batch as f64 * iters as f64) / secs, "seconds": secs,
        "net": net.name(), "image_size": s, "batch": batch, "iters": iters, "warmup": warmup,
        "device": device_name(device), "cudnn_benchmark": device.is_cuda(),
        "threads": tch::get_num_threads(),
    }))
}

/// Images/s of the data path alone: gather `batch`-image batches from an
/// in-memory u8 array of `net`'s stored size onto `device` and augment
/// them there (CIFAR: crop, flip, brightness, normalise; ImageNet:
/// random-resized crop to 224, flip, normalise), after `warmup` untimed
/// batches.
pub fn loader(
    net: BenchNet,
    batch: usize,
    batches: usize,
    warmup: usize,
    device: Device,
) -> Result<Value> {
    setup(device);
    let (side, n) = net.stored();
    let size = (side * side * 3) as usize;
    let images: Vec<u8> = (0..n * size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let spec = net.augment();
    spec.validate((side, side, 3))?;
    let one = |b: usize| {
        let idx: Vec<usize> = (0..batch).map(|k| (b * 7919 + k * 104_729) % n).collect();
        let x = augment(
            &gather(&images, (side, side, 3), &idx, device),
            &spec,
            true,
            b as u64,
        );
        let _ = x.sum(Kind::Float).double_value(&[]);
    };
    for b in 0..warmup {
        one(batches + b);
    }
    let t = Instant::now();
    for b in 0..batches {
        one(b);
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(json!({
        "images_per_s": (batches * batch) as f64 / secs, "seconds": secs,
        "net": net.name(), "stored_size": side, "image_size": net.input_size(),
        "batch": batch, "batches": batches, "device": device_name(device),
        "threads": tch::get_num_threads(),
    }))
}
