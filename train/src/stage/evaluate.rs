//! The `evaluate` stage: a task's model on the test images of every class
//! seen so far, with the CNN (logits) and NME (nearest mean of exemplars)
//! classifiers.

use bsce_pipeline::exec::job::{ChildReporter, StageJob};
use bsce_stages::dataset::artefact::{MappedDataset, SplitName};
use bsce_stages::order::read_order;
use bsce_stages::task_artefacts::{ClassifierResult, Evaluation};
use tch::{Device, Kind, Tensor};

use super::{positions, write_json, Model};
use crate::data::{load, Shape};
use crate::memory::nme_scores;
use crate::method::{augment_spec, uses_raw_features, EvalParams};
use crate::runtime;
use crate::{Result, StageError};
use bsce_pipeline::params::{Classifier, FeatureTap};

const BATCH: usize = 256;

pub fn run(job: &StageJob, reporter: &ChildReporter) -> Result<()> {
    let p: EvalParams = serde_json::from_value(job.params.clone())
        .map_err(|e| StageError::param("evaluate", format!("bad stage params: {e}")))?;
    let device = runtime::parse_device(&job.device)?;
    reporter.provenance("runtime", runtime::configure(device, false, job.seed));
    let input = |name: &str| {
        job.input(name)
            .ok_or_else(|| StageError::Other(format!("evaluate stage has no {name} input")))
    };
    let ds = MappedDataset::open(input("dataset")?)?;
    let order = read_order(input("order")?)?;
    let (model, info, memory) = Model::load(input("model")?, device)?;
    let seen = *p
        .ends
        .last()
        .ok_or_else(|| StageError::param("ends", "empty"))?;
    if info.classes.len() != seen {
        return Err(StageError::Other(format!(
            "model knows {} classes; evaluation expects {seen}",
            info.classes.len()
        )));
    }
    let meta = &ds.meta;
    let pos = positions(&order.classes, meta.num_classes());
    let labels = ds.labels(SplitName::Test);
    let idx: Vec<usize> = (0..labels.len())
        .filter(|&i| pos[labels[i] as usize] < seen)
        .collect();
    let targets: Vec<i64> = idx
        .iter()
        .map(|&i| pos[labels[i] as usize] as i64)
        .collect();
    let aug = augment_spec(info.augment, info.crop, info.normalize.as_ref())?;
    aug.validate(Shape::of(meta))?;
    let raw = uses_raw_features(info.preset);
    let tap = info.features.unwrap_or(if raw {
        FeatureTap::PreActivation
    } else {
        FeatureTap::PostActivation
    });
    let means = Tensor::from_slice(&memory.class_means.concat())
        .view([seen as i64, -1])
        .to(device);
    let (mut cnn, mut nme) = (Vec::new(), Vec::new());
    tch::no_grad(|| {
        for (b, chunk) in idx.chunks(BATCH).enumerate() {
            let x = load(ds.images(SplitName::Test), chunk, &aug, false, 0, device);
            let out = model.backbone.forward_t(&x, false);
            let f = if raw { &out.raw } else { &out.features };
            cnn.push(model.head.forward(f).to_device(Device::Cpu));
            let g = super::tapped(&out, tap);
            nme.push(nme_scores(&g, &means).to_device(Device::Cpu));
            reporter.progress(
                ((b + 1) * BATCH).min(idx.len()) as u64,
                Some(idx.len() as u64),
                "test images",
            );
        }
    });
    let y = Tensor::from_slice(&targets);
    let mut results = std::collections::BTreeMap::new();
    for &classifier in &p.evaluation.classifiers {
        let scores = match classifier {
            Classifier::Cnn => Tensor::cat(&cnn, 0),
            Classifier::Nme => Tensor::cat(&nme, 0),
        };
        results.insert(classifier, score(&scores, &y, &p, seen));
    }
    let eval = Evaluation {
        task: p.task,
        classes_seen: seen,
        test_images: idx.len(),
        results,
    };
    write_json(
        &job.out_dir.join(bsce_pipeline::registry::files::EVALUATION),
        &eval,
    )
}

fn score(scores: &Tensor, y: &Tensor, p: &EvalParams, seen: usize) -> ClassifierResult {
    let n = y.size()[0];
    let pct = |hits: i64, total: i64| {
        if total == 0 {
            0.0
        } else {
            100.0 * hits as f64 / total as f64
        }
    };
    let mut top = std::collections::BTreeMap::new();
    for &k in &p.evaluation.top_k {
        // With fewer classes than k, every prediction is in the top k.
        let (_, topk) = scores.topk(k.min(seen as i64), 1, true, true);
        let hit = topk
            .eq_tensor(&y.unsqueeze(1))
            .any_dim(1, false)
            .sum(Kind::Int64)
            .int64_value(&[]);
        top.insert(k.to_string(), pct(hit, n));
    }
    let pred: Vec<i64> = Vec::try_from(scores.argmax(1, false)).unwrap_or_default();
    let truth: Vec<i64> = Vec::try_from(y).unwrap_or_default();
    let mut confusion = vec![vec![0u32; seen]; seen];
    for (&t, &q) in truth.iter().zip(&pred) {
        confusion[t as usize][q as usize] += 1;
    }
    let acc_in = |lo: usize, hi: usize| {
        let (mut hit, mut tot) = (0i64, 0i64);
        for (c, row) in confusion.iter().enumerate().take(hi).skip(lo) {
            hit += row[c] as i64;
            tot += row.iter().map(|&v| v as i64).sum::<i64>();
        }
        pct(hit, tot)
    };
    let starts: Vec<usize> = std::iter::once(0).chain(p.ends.iter().copied()).collect();
    let per_task = (0..p.ends.len())
        .map(|t| acc_in(starts[t], p.ends[t]))
        .collect();
    let new_lo = starts[p.ends.len() - 1];
    let predicted_new = pred.iter().filter(|&&q| q as usize >= new_lo).count();
    let true_new = truth.iter().filter(|&&t| t as usize >= new_lo).count();
    ClassifierResult {
        top,
        old: (new_lo > 0).then(|| acc_in(0, new_lo)),
        new: acc_in(new_lo, seen),
        per_task,
        per_class: (0..seen).map(|c| acc_in(c, c + 1)).collect(),
        predicted_new_share: predicted_new as f64 / n.max(1) as f64,
        true_new_share: true_new as f64 / n.max(1) as f64,
        confusion,
    }
}
