//! `bsce-torch bench-train` and `bench-loader`: the measurements behind
//! bench/run.sh's training figures and scripts/gpu-check.sh. The peer is
//! bench/train_step.py, the same step in PyTorch on the same libtorch.
//!
//! Two networks, each at the input size it trains at: `resnet32` (PODNet's
//! CIFAR ResNet-32, 32x32 inputs, CIFAR augmentation) and `resnet18`
//! (LUCIR's ImageNet ResNet-18, 224x224 inputs, ImageNet augmentation from
//! whole images stored at a short side of 256). Both with a 100-way linear
//! head.

use std::time::Instant;

use serde_json::{json, Value};
use tch::{nn, nn::OptimizerConfig, Cuda, Device, Kind, Tensor};

use crate::classifier::{Head, HeadSpec};
use crate::data::{crop_on_cpu, load, AugmentSpec, Shape};
use crate::loss;
use crate::net::{Backbone, NetSpec};
use crate::{Result, StageError};
use bsce_stages::dataset::artefact::{offsets_of, SplitImages};

/// The network a benchmark runs, with its input size and data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchNet {
    /// `NetSpec::resnet32()` on 32x32 inputs; loader: CIFAR-sized u8
    /// images, `AugmentSpec::cifar_podnet()`.
    Resnet32,
    /// `NetSpec::resnet18()` on 224x224 inputs; loader: u8 images at a
    /// short side of 256, a third each 256x341, 341x256 and 256x256 (what
    /// image-folder preparation stores of ImageNet's 4:3, 3:4 and square
    /// photos), `AugmentSpec::imagenet()` (random-resized crop to 224 on
    /// the CPU, flip).
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

    /// The (height, width) of the stored images the loader reads, and how
    /// many it holds (1,024 at 256 x ~313 are 250 MB; CIFAR's 50,000 are
    /// 150 MB).
    fn stored(self) -> (Vec<(u16, u16)>, usize) {
        match self {
            BenchNet::Resnet32 => (vec![(32, 32)], 50_000),
            BenchNet::Resnet18 => (vec![(256, 341), (341, 256), (256, 256)], 1_024),
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
    let (_vs, backbone, head, mut opt) = step_model(device, &net.spec())?;
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
    let (shapes, n) = net.stored();
    let sizes: Vec<(u16, u16)> = (0..n).map(|i| shapes[i % shapes.len()]).collect();
    let offsets = offsets_of(&sizes);
    let images: Vec<u8> = (0..offsets[n])
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let images = SplitImages::new(&images, &sizes, &offsets);
    let spec = net.augment();
    let short = shapes.iter().map(|&(h, w)| h.min(w)).min().unwrap_or(0);
    spec.validate(Shape {
        channels: 3,
        short_side: i64::from(short),
        uniform: images.uniform_size().map(|(h, w)| (h as i64, w as i64)),
    })?;
    let indices =
        |b: usize| -> Vec<usize> { (0..batch).map(|k| (b * 7919 + k * 104_729) % n).collect() };
    let one = |b: usize| {
        let x = load(images, &indices(b), &spec, true, b as u64, device);
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
    // The CPU's share alone (ImageNet style: the window cut and resized per
    // sample), single-threaded: what one core feeds.
    let cpu_crop_per_core = spec.random_resized_crop.map(|_| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a one-thread pool");
        let t = Instant::now();
        pool.install(|| {
            for b in 0..batches {
                let _ = crop_on_cpu(images, &indices(b), &spec, true, b as u64);
            }
        });
        (batches * batch) as f64 / t.elapsed().as_secs_f64()
    });
    Ok(json!({
        "images_per_s": (batches * batch) as f64 / secs, "seconds": secs,
        "cpu_crop_images_per_s_per_core": cpu_crop_per_core,
        "net": net.name(), "stored_sizes": shapes, "image_size": net.input_size(),
        "batch": batch, "batches": batches, "device": device_name(device),
        "threads": tch::get_num_threads(), "cpu_threads": rayon::current_num_threads(),
    }))
}

/// `bsce-torch calibrate`: the throughput `bsce-pipe calibrate` records in
/// the store for `status --cost`. `network` (any the plan can name, built
/// as the stages build it) on random `side` x `side` inputs with a 100-way
/// linear head: images/s of a training step (forward, CE, backward, SGD
/// momentum 0.9, wd 5e-4, loss read back) and of a forward pass in
/// evaluation mode without gradients (evaluation, herding, class means,
/// the old model's outputs). Each phase has half of `seconds`: a third of
/// it warms up (at least one step, two on a GPU, where cuDNN's benchmark
/// mode picks its kernels on the first), the rest is timed (at least two
/// steps).
pub fn calibrate(
    network: bsce_pipeline::params::Network,
    side: i64,
    batch: i64,
    seconds: f64,
    device: Device,
) -> Result<Value> {
    let (_vs, backbone, head, mut opt) = step_model(device, &crate::method::net_spec(network))?;
    let x = Tensor::randn([batch, 3, side, side], (Kind::Float, device));
    let y = Tensor::randint(100, [batch], (Kind::Int64, device));
    let warmup = if device.is_cuda() { 2 } else { 1 };
    let budget = seconds.max(0.0) / 2.0;
    let timed = |step: &mut dyn FnMut()| {
        // The first steps of a shape are slow (allocations, oneDNN's and
        // cuDNN's kernel choice): a third of the phase warms up.
        let t = Instant::now();
        let mut n = 0;
        while n < warmup || t.elapsed().as_secs_f64() < budget / 3.0 {
            step();
            sync(device);
            n += 1;
        }
        let t = Instant::now();
        let mut n = 0u64;
        while n < 2 || t.elapsed().as_secs_f64() < budget * 2.0 / 3.0 {
            step();
            sync(device);
            n += 1;
        }
        (n, t.elapsed().as_secs_f64())
    };
    let (train_steps, train_secs) = timed(&mut || {
        let out = backbone.forward_t(&x, true);
        let l = loss::cross_entropy(&head.forward(&out.features), &y);
        opt.backward_step(&l);
        let _ = l.double_value(&[]);
    });
    let (forward_steps, forward_secs) = timed(&mut || {
        tch::no_grad(|| {
            let out = backbone.forward_t(&x, false);
            let _ = head
                .forward(&out.features)
                .sum(Kind::Float)
                .double_value(&[]);
        })
    });
    let rate = |steps: u64, secs: f64| (batch as f64 * steps as f64) / secs;
    Ok(json!({
        "train_images_per_s": rate(train_steps, train_secs),
        "forward_images_per_s": rate(forward_steps, forward_secs),
        "train_steps": train_steps, "forward_steps": forward_steps,
        "seconds": train_secs + forward_secs,
        "batch": batch, "side": side,
        "device": device_name(device),
        "threads": tch::get_num_threads(),
    }))
}

/// What a timed training step runs: `spec` with a 100-way linear head, and
/// SGD (momentum 0.9, weight decay 5e-4, lr 0.1) over both, on `device`
/// set up for timing.
fn step_model(
    device: Device,
    spec: &NetSpec,
) -> Result<(nn::VarStore, Backbone, Head, nn::Optimizer)> {
    setup(device);
    let vs = nn::VarStore::new(device);
    let backbone = Backbone::new(&(vs.root() / "backbone"), spec)?;
    let mut head = Head::new(&(vs.root() / "head"), &HeadSpec::Linear, backbone.out_dim())?;
    head.add_classes(&(vs.root() / "head"), 100, None)?;
    let opt = nn::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        wd: 5e-4,
        nesterov: false,
    }
    .build(&vs, 0.1)
    .map_err(|e| StageError::Other(e.to_string()))?;
    Ok((vs, backbone, head, opt))
}
