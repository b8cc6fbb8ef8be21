//! `bsce-torch probe SPEC.json OUT_DIR`: one optimiser step of a train
//! stage, on weights, a batch and class counts drawn from a seed, with
//! everything written out for an independent implementation to recompute
//! (`tests/parity/`, PyTorch). The step is the train stage's own
//! ([`crate::stage::train::main_step`], [`crate::stage::finetune::finetune_step`]):
//! what the probe adds is only the set-up and the files.
//!
//! SPEC.json: `{"params": <TrainParams>, "phase": "main" | "finetune",
//! "batch": B, "image_size": S, "seed": N}`.
//!
//! OUT_DIR (safetensors for tensors, JSON for the rest):
//! - `spec.json`: the spec as read;
//! - `model.json`: preset, `net` (the resolved NetSpec), `head`, `blocks`,
//!   `features`, `uses_raw_features`; `previous.json` for the old model
//!   (tasks after the first);
//! - `inputs.safetensors`: `images` [B,3,S,S] (network input, no
//!   augmentation), `labels` [B] (incremental positions), `class_counts`
//!   [end] (n_c);
//! - `before.safetensors`, `previous.safetensors`: every variable, the
//!   checkpoint's names;
//! - `result.json`: phase, lr, momentum, weight decay, gradient clamp,
//!   every loss term, the total, the trainable variables, `bn_train`;
//! - `grads.safetensors`: each trainable variable's gradient as the step
//!   used it (after the clamp); `after.safetensors`: every variable after
//!   the step.

use std::collections::BTreeMap;
use std::path::Path;

use bsce_pipeline::params::TrainParams;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::classifier::HeadSpec;
use crate::loss;
use crate::method::{net_spec, uses_raw_features, Preset};
use crate::stage::steps::classifier_input;
use crate::stage::{finetune, train, write_json, Model, ModelInfo};
use crate::{Result, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    pub params: TrainParams,
    pub phase: Phase,
    pub batch: usize,
    pub image_size: i64,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The task's training step (every preset).
    Main,
    /// A step of class-balanced fine-tuning (LUCIR, PODNet; tasks after
    /// the first).
    Finetune,
}

pub fn run(spec_path: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(spec_path).map_err(|e| StageError::io(spec_path, e))?;
    let spec: ProbeSpec = serde_json::from_slice(&bytes)
        .map_err(|e| StageError::invalid(spec_path, format!("not a probe spec: {e}")))?;
    let p = &spec.params;
    if p.start >= p.end || (p.task == 0) != (p.start == 0) {
        return Err(StageError::invalid(
            spec_path,
            format!(
                "task {} learning {}..{}: the first task starts at 0, a later one after it",
                p.task, p.start, p.end
            ),
        ));
    }
    if spec.phase == Phase::Finetune
        && (p.task == 0 || !matches!(p.method.preset, Preset::Lucir | Preset::Podnet))
    {
        return Err(StageError::invalid(
            spec_path,
            "fine-tuning is a LUCIR or PODNet phase of a task after the first",
        ));
    }
    if spec.batch == 0 || spec.image_size < 4 {
        return Err(StageError::invalid(
            spec_path,
            "batch must be >= 1 and image_size >= 4",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| StageError::io(out, e))?;
    let device = Device::Cpu;
    tch::manual_seed(spec.seed as i64);
    let preset = p.method.preset;
    let previous_blocks: Vec<i64> = if p.task > 0 {
        vec![p.start as i64]
    } else {
        vec![]
    };
    let info = ModelInfo {
        blocks: previous_blocks.clone(),
        classes: (0..p.start as u32).collect(),
        ..ModelInfo::untrained(p)
    };
    // The old model (frozen teacher) and the current one, which starts as
    // a copy of it and grows this task's block, as a train stage does.
    let mut old = if p.task > 0 {
        let mut m = Model::build(&info, device)?;
        jitter(&mut m);
        Some(m)
    } else {
        None
    };
    let mut model = Model::build(&info, device)?;
    match &old {
        Some(o) => model
            .vs
            .copy(&o.vs)
            .map_err(|e| StageError::Other(format!("copying the old model: {e}")))?,
        None => jitter(&mut model),
    }
    if let Some(o) = &mut old {
        o.vs.freeze();
    }
    let mut info = info;
    train::grow(p, &mut model, &mut info, None)?;
    let model_json = |info: &ModelInfo| {
        json!({
            "preset": info.preset,
            "net": net_spec(info.network),
            "head": info.head,
            "blocks": info.blocks,
            "features": info.features,
            "uses_raw_features": uses_raw_features(info.preset),
        })
    };
    write_json(&out.join("model.json"), &model_json(&info))?;
    if let Some(o) = &old {
        let mut prev = info.clone();
        prev.blocks = previous_blocks;
        write_json(&out.join("previous.json"), &model_json(&prev))?;
        save(&o.vs, &out.join("previous.safetensors"))?;
    }

    // The batch: every class of the task present, old ones included.
    let b = spec.batch as i64;
    let images = Tensor::randn(
        [b, 3, spec.image_size, spec.image_size],
        (Kind::Float, device),
    );
    let labels = Tensor::from_slice(&(0..b).map(|i| i % p.end as i64).collect::<Vec<_>>());
    // n_c: old classes hold exemplars, new ones every image (imbalanced, as
    // BSCE expects), drawn from the seed.
    let counts: Vec<i64> = (0..p.end)
        .map(|c| {
            let r = Tensor::randint_low(0, 10, [1], (Kind::Int64, device)).int64_value(&[0]);
            if c < p.start {
                5 + r
            } else {
                100 + 10 * r
            }
        })
        .collect();
    let count_tensor = Tensor::from_slice(&counts);
    let log_counts = loss::log_count_adjustment(
        &counts.iter().map(|&c| c as u64).collect::<Vec<_>>(),
        device,
    );
    Tensor::write_safetensors(
        &[
            ("images", &images),
            ("labels", &labels),
            ("class_counts", &count_tensor),
        ],
        out.join("inputs.safetensors"),
    )
    .map_err(|e| StageError::Other(format!("writing inputs: {e}")))?;
    save(&model.vs, &out.join("before.safetensors"))?;

    let feature_of = |o: &crate::net::BackboneOut| classifier_input(preset, o);
    let (terms, lr, bn_train, restore) = match spec.phase {
        Phase::Main => {
            let mut opt = train::optimizer(p, &model)?;
            let lr = crate::method::lr_at(&p.recipe, 0);
            opt.set_lr(lr);
            let terms = train::main_step(
                p,
                &model,
                old.as_ref(),
                &images,
                &labels,
                &count_tensor,
                &log_counts,
                &feature_of,
                &mut opt,
            )?;
            (terms, lr, true, vec![])
        }
        Phase::Finetune => {
            let ft = p.method.finetune.as_ref().ok_or_else(|| {
                StageError::invalid(spec_path, "params.method.finetune is not set")
            })?;
            let frozen = finetune::freeze_all_but_class_weights(&mut model);
            let mut opt = finetune::optimizer(p, ft, &model)?;
            let lr = finetune::lr_at(ft, 0);
            opt.set_lr(lr);
            let bn_train = finetune::bn_train(preset);
            let terms = finetune::finetune_step(
                p,
                &model,
                &images,
                &labels,
                bn_train,
                &count_tensor,
                &log_counts,
                &feature_of,
                &mut opt,
            );
            (terms, lr, bn_train, frozen)
        }
    };
    let vars = model.vs.variables();
    let trainable: BTreeMap<&String, &Tensor> =
        vars.iter().filter(|(_, v)| v.requires_grad()).collect();
    let grads: Vec<(String, Tensor)> = trainable
        .iter()
        .filter(|(_, v)| v.grad().defined())
        .map(|(k, v)| (k.to_string(), v.grad()))
        .collect();
    Tensor::write_safetensors(&grads, out.join("grads.safetensors"))
        .map_err(|e| StageError::Other(format!("writing gradients: {e}")))?;
    save(&model.vs, &out.join("after.safetensors"))?;
    for v in &restore {
        let _ = v.set_requires_grad(true);
    }
    let total: f64 = terms.iter().map(|(_, t)| t.double_value(&[])).sum();
    let result = json!({
        "phase": spec.phase,
        "lr": lr,
        "momentum": p.recipe.momentum,
        "weight_decay": p.recipe.weight_decay,
        "gradient_clamp": p.method.hyper.gradient_clamp,
        "terms": terms.iter().map(|(k, t)| (k.to_string(), t.double_value(&[]))).collect::<BTreeMap<_, _>>(),
        "total": total,
        "trainable": trainable.keys().collect::<Vec<_>>(),
        "bn_train": bn_train,
        "head": match info.head { HeadSpec::Linear => "linear", HeadSpec::Cosine => "cosine", HeadSpec::LocalSimilarity { .. } => "local_similarity" },
    });
    write_json(&out.join("result.json"), &result)?;
    write_json(&out.join("spec.json"), &spec)
}

/// Moves BatchNorm and the heads' scales off their initial values (1 and
/// 0), so that a parity check sees them used: running statistics, affine
/// parameters, σ and η.
fn jitter(model: &mut Model) {
    // In name order: the draws, and so the weights, follow from the seed.
    let vars: BTreeMap<String, Tensor> = model.vs.variables().into_iter().collect();
    tch::no_grad(|| {
        for (name, mut v) in vars {
            let shape = v.size();
            let (kind, dev) = (v.kind(), v.device());
            let u = Tensor::rand(shape.as_slice(), (kind, dev));
            if name.ends_with("running_var") || name.ends_with("bn.weight") {
                let _ = v.copy_(&(u + 0.5));
            } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                let _ = v.copy_(&((u - 0.5) * 0.2));
            } else if name.ends_with("sigma") || name.ends_with("eta") {
                let _ = v.copy_(&(u + 1.0));
            }
        }
    });
}

fn save(vs: &tch::nn::VarStore, path: &Path) -> Result<()> {
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&named, path)
        .map_err(|e| StageError::Other(format!("writing {}: {e}", path.display())))
}
