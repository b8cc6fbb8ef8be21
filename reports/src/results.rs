//! `results`: the per-run numbers of a config, read from the `aggregate`
//! stages' frames (the same numbers the report's tables are made of), for
//! scripts (`--json`) and as the compact summary on stdout.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::columns as c;
use crate::frame::{bools, floats, ints, read_parquet, strings};
use bsce_pipeline::params::Metric;
use bsce_pipeline::registry::files;
use bsce_pipeline::store::Store;

use crate::report::Prepared;

/// One entry per complete run (dataset x order x setting x method x seed x
/// classifier metrics, tasks in order), then the runs not in the store.
pub fn collect(prepared: &Prepared, store: &dyn Store) -> Result<Value> {
    let mut runs: Vec<Value> = Vec::new();
    for (exp, n) in &prepared.plan.aggregates {
        let Some(rec) = prepared.record(*n) else {
            continue;
        };
        let frame = |f: &str| -> Result<crate::polars::prelude::DataFrame> {
            let o = rec
                .outputs
                .get(f)
                .with_context(|| format!("{} has no {f}", rec.label))?;
            let path = store
                .local()
                .intact_blob_path(o, &format!("{f} of {}", rec.label))?;
            Ok(read_parquet(&path)?)
        };
        let (rf, tf) = (frame(files::RUNS_PARQUET)?, frame(files::TIDY_PARQUET)?);
        // A run's identity in a frame, one key per row (columns read once).
        let ids = |df: &crate::polars::prelude::DataFrame| -> Result<Vec<String>> {
            let (o, s, m, seed) = (
                strings(df, c::ORDER)?,
                strings(df, c::SETTING)?,
                strings(df, c::METHOD)?,
                ints(df, c::SEED)?,
            );
            Ok((0..df.height())
                .map(|i| format!("{}|{}|{}|{}", o[i], s[i], m[i], seed[i]))
                .collect())
        };
        let (run_ids, task_ids) = (ids(&rf)?, ids(&tf)?);
        // Per run: identity, then per classifier its metrics and tasks.
        let mut by_run: BTreeMap<String, Value> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let (clf, dataset) = (strings(&rf, c::CLASSIFIER)?, strings(&rf, c::DATASET)?);
        let metric = |m: &str| floats(&rf, m);
        let (aia, last, forg, hours) = (
            metric(Metric::AverageIncrementalAccuracy.column())?,
            metric(Metric::LastAccuracy.column())?,
            metric(Metric::AverageForgetting.column())?,
            metric(Metric::TrainHours.column())?,
        );
        let (ord, set, meth, seed, bsce) = (
            strings(&rf, c::ORDER)?,
            strings(&rf, c::SETTING)?,
            strings(&rf, c::METHOD)?,
            ints(&rf, c::SEED)?,
            bools(&rf, c::BSCE)?,
        );
        for i in 0..rf.height() {
            let k = run_ids[i].clone();
            let e = by_run.entry(k.clone()).or_insert_with(|| {
                order.push(k.clone());
                json!({"experiment": exp, "dataset": dataset[i], "order": ord[i], "setting": set[i],
                       "method": meth[i], "bsce": bsce[i], "seed": seed[i], "train_hours": hours[i],
                       "average_incremental_accuracy": {}, "last_accuracy": {}, "average_forgetting": {},
                       "tasks": []})
            });
            e["average_incremental_accuracy"][&clf[i]] = json!(aia[i]);
            e["last_accuracy"][&clf[i]] = json!(last[i]);
            e["average_forgetting"][&clf[i]] = json!(forg[i]);
        }
        let tclf = strings(&tf, c::CLASSIFIER)?;
        let (task, seen) = (ints(&tf, c::TASK)?, ints(&tf, c::CLASSES_SEEN)?);
        let cols = [
            c::TOP1,
            c::TOP5,
            c::OLD,
            c::NEW,
            c::PREDICTED_NEW_SHARE,
            c::TRUE_NEW_SHARE,
        ];
        let values: Vec<Vec<Option<f64>>> = cols
            .iter()
            .map(|c| floats(&tf, c))
            .collect::<Result<_, _>>()?;
        for i in 0..tf.height() {
            let Some(e) = by_run.get_mut(&task_ids[i]) else {
                continue;
            };
            let tasks = e[c::TASKS].as_array_mut().expect("an array");
            let t = task[i] as usize;
            while tasks.len() <= t {
                tasks.push(json!({"task": tasks.len()}));
            }
            tasks[t][c::CLASSES_SEEN] = json!(seen[i]);
            let mut c = json!({});
            for (name, v) in cols.iter().zip(&values) {
                c[*name] = json!(v[i]);
            }
            tasks[t][&tclf[i]] = c;
        }
        runs.extend(
            order
                .into_iter()
                .map(|k| by_run.remove(&k).expect("listed")),
        );
    }
    Ok(json!({"runs": runs, "missing": prepared.missing}))
}
