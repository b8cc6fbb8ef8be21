//! `bsce-torch bench-train` and `bench-loader`: the measurements behind
//! bench/run.sh's training figures. The peer is bench/train_step.py, the
//! same ResNet-32 step in PyTorch on the same libtorch.

use std::time::Instant;

use serde_json::{json, Value};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use crate::classifier::{Head, HeadSpec};
use crate::data::{augment, gather, AugmentSpec};
use crate::loss;
use crate::net::{Backbone, NetSpec};
use crate::Result;

/// Images/s of a full ResNet-32 training step (forward, CE, backward, SGD)
/// on random 32x32 inputs, after `warmup` untimed steps.
pub fn train_step(batch: i64, iters: usize, warmup: usize, device: Device) -> Result<Value> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let backbone = Backbone::new(&(vs.root() / "backbone"), &NetSpec::resnet32())?;
    let mut head = Head::new(&(vs.root() / "head"), &HeadSpec::Linear, backbone.out_dim())?;
    head.add_classes(&(vs.root() / "head"), 100, None)?;
    let mut opt = nn::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        wd: 5e-4,
        nesterov: false,
    }
    .build(&vs, 0.1)
    .map_err(|e| crate::StageError::Other(e.to_string()))?;
    let x = Tensor::randn([batch, 3, 32, 32], (Kind::Float, device));
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
    let t = Instant::now();
    for _ in 0..iters {
        step();
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(
        json!({"images_per_s": (batch as f64 * iters as f64) / secs, "seconds": secs,
              "batch": batch, "iters": iters, "threads": tch::get_num_threads()}),
    )
}

/// Images/s of the data path alone: gather 128-image batches from an
/// in-memory u8 CIFAR-sized array and augment them (crop, flip,
/// brightness, normalise).
pub fn loader(batches: usize, device: Device) -> Result<Value> {
    let n = 50_000usize;
    let images: Vec<u8> = (0..n * 3072)
        .map(|i| (i * 2_654_435_761usize >> 7) as u8)
        .collect();
    let spec = AugmentSpec::cifar_podnet();
    let t = Instant::now();
    for b in 0..batches {
        let idx: Vec<usize> = (0..128).map(|k| (b * 7919 + k * 104_729) % n).collect();
        let x = augment(
            &gather(&images, (32, 32, 3), &idx, device),
            &spec,
            true,
            b as u64,
        );
        let _ = x.sum(Kind::Float).double_value(&[]);
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(
        json!({"images_per_s": (batches * 128) as f64 / secs, "seconds": secs, "threads": tch::get_num_threads()}),
    )
}
