//! `results`: every evaluation of a config that is in the store, for
//! scripts (`--json`) and as the compact summary that ends a run.

use serde_json::{json, Value};

use bsce_pipeline::exec::NodeStatus;
use bsce_pipeline::plan::Plan;
use bsce_pipeline::store::LocalStore;

/// One entry per run (dataset x order x setting x method x seed), tasks in
/// order; a task whose evaluation is not in the store is `{"missing": true}`.
pub fn collect(plan: &Plan, status: &[NodeStatus], store: &LocalStore) -> Vec<Value> {
    plan.runs
        .iter()
        .map(|run| {
            let tasks: Vec<Value> = run
                .evaluations
                .iter()
                .enumerate()
                .map(|(t, &node)| match &status[node] {
                    NodeStatus::Cached { record, .. } => record
                        .outputs
                        .get("eval.json")
                        .and_then(|o| std::fs::read(store.blob_path(&o.digest)).ok())
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .map(|e| summarise(t, &e))
                        .unwrap_or_else(|| json!({"task": t, "missing": true})),
                    NodeStatus::ToRun { .. } => json!({"task": t, "missing": true}),
                })
                .collect();
            let complete = tasks.iter().all(|t| t.get("missing").is_none());
            let average = |clf: &str| -> Value {
                if !complete {
                    return Value::Null;
                }
                let v: Vec<f64> = tasks
                    .iter()
                    .filter_map(|t| t[clf]["top1"].as_f64())
                    .collect();
                if v.len() == tasks.len() && !v.is_empty() {
                    json!(v.iter().sum::<f64>() / v.len() as f64)
                } else {
                    Value::Null
                }
            };
            json!({
                "experiment": run.experiment, "dataset": run.dataset, "order": run.order,
                "setting": run.setting, "method": run.method, "seed": run.seed,
                "average_incremental_accuracy": {"cnn": average("cnn"), "nme": average("nme")},
                "tasks": tasks,
            })
        })
        .collect()
}

fn summarise(t: usize, e: &Value) -> Value {
    let mut out =
        json!({"task": t, "classes_seen": e["classes_seen"], "test_images": e["test_images"]});
    if let Some(results) = e["results"].as_object() {
        for (clf, r) in results {
            out[clf] = json!({
                "top1": r["top"]["1"], "top5": r["top"]["5"],
                "old": r["old"], "new": r["new"],
                "predicted_new_share": r["predicted_new_share"], "true_new_share": r["true_new_share"],
            });
        }
    }
    out
}

/// The lines that end `run`: per run, top-1 per task and the average.
pub fn print_summary(runs: &[Value]) {
    use std::io::Write;
    let mut err = std::io::stderr();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        err,
        "\ntop-1 accuracy (%) on all seen classes, per task; avg = average incremental accuracy"
    );
    for r in runs {
        let id = format!(
            "{}/{}/{} {} seed{}",
            r["dataset"].as_str().unwrap_or(""),
            r["order"].as_str().unwrap_or(""),
            r["setting"].as_str().unwrap_or(""),
            r["method"].as_str().unwrap_or(""),
            r["seed"]
        );
        let _ = writeln!(err, "{id}");
        for clf in ["cnn", "nme"] {
            let cells: Vec<String> = r["tasks"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .map(|t| {
                            t[clf]["top1"]
                                .as_f64()
                                .map(|v| format!("{v:5.1}"))
                                .unwrap_or_else(|| "    -".into())
                        })
                        .collect()
                })
                .unwrap_or_default();
            if cells.iter().all(|c| c.trim() == "-") {
                continue;
            }
            let avg = r["average_incremental_accuracy"][clf]
                .as_f64()
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                err,
                "  {:<4} {}  avg {avg}",
                clf.to_uppercase(),
                cells.join(" ")
            );
        }
    }
}
