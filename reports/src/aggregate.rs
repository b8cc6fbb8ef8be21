//! The `aggregate` stage: every complete run of one experiment, from the
//! evaluate stages' `eval.json` and the train stages' `log.json`, into five
//! frames (each as Parquet and CSV):
//!
//! - `tidy`: one row per run x task x classifier (classes seen, top-1,
//!   top-5, old/new accuracy, share of predictions on new classes, training
//!   seconds and GPU-hours of the task);
//! - `groups`: one row per run x task x classifier x task group (top-1 on
//!   the classes each earlier task added), what forgetting is made of;
//! - `runs`: per run and classifier, average incremental accuracy (mean
//!   over all tasks, base task included, as PODNet and LUCIR report it),
//!   last-task accuracy, average forgetting (Chaudhry et al. 2018: per old
//!   task group, best accuracy before the last task minus accuracy after
//!   it, averaged over groups) and training hours;
//! - `summary`: per experiment x setting x method x classifier, each
//!   metric's mean and population standard deviation (ddof 0, as PODNet
//!   reports it over its three orders) over orders and seeds;
//! - `epochs`: one row per run x log entry (training epoch, then
//!   fine-tuning epoch, task after task) x quantity (each loss term, their
//!   `total`, `lr`, `seconds`): the training curves, at the run's `step`
//!   as TensorBoard shows them.

use std::path::Path;

use bsce_pipeline::exec::job::{ChildReporter, StageJob};
use bsce_pipeline::params::{AggregateParams, Metric};
use bsce_pipeline::registry::files;
use bsce_stages::task_artefacts::{Evaluation, LogEntry, Steps, TrainLog};
use bsce_stages::{Result, StageError};
use polars::prelude::*;

use crate::columns::{self as c, RUN_KEYS, SUMMARY_KEYS};
use crate::frame::{polars_error, write_frame};

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StageError::invalid(path, e.to_string()))
}

#[derive(Default)]
struct Columns {
    experiment: Vec<String>,
    dataset: Vec<String>,
    order: Vec<String>,
    setting: Vec<String>,
    method: Vec<String>,
    base_method: Vec<String>,
    bsce: Vec<bool>,
    seed: Vec<u64>,
    classifier: Vec<String>,
    task: Vec<u32>,
}

impl Columns {
    fn push(&mut self, p: &AggregateParams, run: usize, classifier: &str, task: u32) {
        let r = &p.runs[run];
        self.experiment.push(p.experiment.clone());
        self.dataset.push(p.dataset.clone());
        self.order.push(r.order.clone());
        self.setting.push(r.setting.clone());
        self.method.push(r.method.clone());
        self.base_method.push(r.base_method.clone());
        self.bsce.push(r.bsce);
        self.seed.push(r.seed);
        self.classifier.push(classifier.to_string());
        self.task.push(task);
    }

    /// The run's columns and the task, without the classifier (the
    /// epochs frame: training does not depend on it).
    fn into_run_frame(self) -> Vec<Column> {
        let mut cols = self.into_frame();
        cols.retain(|c| c.name().as_str() != c::CLASSIFIER);
        cols
    }

    fn into_frame(self) -> Vec<Column> {
        vec![
            Column::new(c::EXPERIMENT.into(), self.experiment),
            Column::new(c::DATASET.into(), self.dataset),
            Column::new(c::ORDER.into(), self.order),
            Column::new(c::SETTING.into(), self.setting),
            Column::new(c::METHOD.into(), self.method),
            Column::new(c::BASE_METHOD.into(), self.base_method),
            Column::new(c::BSCE.into(), self.bsce),
            Column::new(c::SEED.into(), self.seed),
            Column::new(c::CLASSIFIER.into(), self.classifier),
            Column::new(c::TASK.into(), self.task),
        ]
    }
}

/// The tidy, groups and epochs frames of an experiment, read from the
/// stage's inputs.
pub fn read_inputs(
    job: &StageJob,
    p: &AggregateParams,
) -> Result<(DataFrame, DataFrame, DataFrame)> {
    let input = |name: &str, file: &str| {
        job.input(name)
            .map(|d| d.join(file))
            .ok_or_else(|| StageError::Other(format!("aggregate stage has no input {name}")))
    };
    let mut keys = Columns::default();
    let (mut classes_seen, mut top1, mut top5, mut old, mut new) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut predicted_new, mut true_new, mut seconds, mut gpu_hours) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut gkeys = Columns::default();
    let (mut group, mut group_top1) = (Vec::new(), Vec::new());
    let mut ekeys = Columns::default();
    let (mut phase, mut epoch, mut step) = (Vec::new(), Vec::new(), Vec::new());
    let (mut quantity, mut value) = (Vec::new(), Vec::new());
    for (i, run) in p.runs.iter().enumerate() {
        let mut steps = Steps::default();
        for t in 0..run.tasks {
            let eval_path = input(&format!("eval.{i}.{t}"), files::EVALUATION)?;
            let eval: Evaluation = read_json(&eval_path)?;
            let log: TrainLog = read_json(&input(&format!("log.{i}.{t}"), files::TRAIN_LOG)?)?;
            let secs: f64 = log.iter().map(LogEntry::seconds).sum();
            let on_gpu = log.iter().any(|e| match e {
                LogEntry::Epoch(e) => e.device.starts_with("cuda"),
                LogEntry::Finetune(_) => false,
            });
            for entry in &log {
                let entry_step = steps.next(entry) as u32;
                let quantities = entry.losses().iter().map(|(k, v)| (k.as_str(), *v)).chain([
                    ("total", entry.total()),
                    ("lr", Some(entry.lr())),
                    ("seconds", Some(entry.seconds())),
                ]);
                for (q, v) in quantities {
                    ekeys.push(p, i, "", t as u32);
                    phase.push(entry.phase());
                    epoch.push(entry.epoch());
                    step.push(entry_step);
                    quantity.push(q.to_string());
                    value.push(v);
                }
            }
            for (clf, r) in &eval.results {
                let clf = clf.name();
                let top = |k: &str| r.top.get(k).copied();
                let t1 = top("1").ok_or_else(|| {
                    StageError::invalid(&eval_path, format!("{clf} has no top-1 accuracy"))
                })?;
                keys.push(p, i, clf, t as u32);
                classes_seen.push(eval.classes_seen as u32);
                top1.push(t1);
                top5.push(top("5"));
                old.push(r.old);
                new.push(r.new);
                predicted_new.push(r.predicted_new_share);
                true_new.push(r.true_new_share);
                seconds.push(secs);
                gpu_hours.push(if on_gpu { secs / 3600.0 } else { 0.0 });
                for (g, &acc) in r.per_task.iter().enumerate() {
                    gkeys.push(p, i, clf, t as u32);
                    group.push(g as u32);
                    group_top1.push(acc);
                }
            }
        }
    }
    let mut cols = keys.into_frame();
    cols.extend([
        Column::new(c::CLASSES_SEEN.into(), classes_seen),
        Column::new(c::TOP1.into(), top1),
        Column::new(c::TOP5.into(), top5),
        Column::new(c::OLD.into(), old),
        Column::new(c::NEW.into(), new),
        Column::new(c::PREDICTED_NEW_SHARE.into(), predicted_new),
        Column::new(c::TRUE_NEW_SHARE.into(), true_new),
        Column::new(c::TRAIN_SECONDS.into(), seconds),
        Column::new(c::GPU_HOURS.into(), gpu_hours),
    ]);
    let tidy = DataFrame::new_infer_height(cols).map_err(|e| polars_error("tidy frame", e))?;
    let mut gcols = gkeys.into_frame();
    gcols.extend([
        Column::new(c::GROUP.into(), group),
        Column::new(c::TOP1.into(), group_top1),
    ]);
    let groups = DataFrame::new_infer_height(gcols).map_err(|e| polars_error("groups frame", e))?;
    let mut ecols = ekeys.into_run_frame();
    ecols.extend([
        Column::new(c::PHASE.into(), phase),
        Column::new(c::EPOCH.into(), epoch),
        Column::new(c::STEP.into(), step),
        Column::new(c::QUANTITY.into(), quantity),
        Column::new(c::VALUE.into(), value),
    ]);
    let epochs = DataFrame::new_infer_height(ecols).map_err(|e| polars_error("epochs frame", e))?;
    Ok((tidy, groups, epochs))
}

fn by(names: &[&str]) -> Vec<Expr> {
    names.iter().map(|n| col(*n)).collect()
}

/// Per run and classifier: the four metrics of [`Metric`].
pub fn runs_frame(tidy: &DataFrame, groups: &DataFrame) -> Result<DataFrame> {
    let per_run = tidy
        .clone()
        .lazy()
        .sort(
            [c::TASK],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .group_by_stable(by(RUN_KEYS))
        .agg([
            len().cast(DataType::UInt32).alias(c::TASKS),
            col(c::CLASSES_SEEN).last().alias(c::CLASSES_SEEN),
            col(c::TOP1)
                .mean()
                .alias(Metric::AverageIncrementalAccuracy.column()),
            col(c::TOP1).last().alias(Metric::LastAccuracy.column()),
            (col(c::TRAIN_SECONDS).sum() / lit(3600.0)).alias(Metric::TrainHours.column()),
            col(c::GPU_HOURS).sum().alias(c::GPU_HOURS),
            col(c::TASK).max().alias("last_task"),
        ]);
    // Forgetting: groups learnt before the last task, best accuracy on
    // them after any task before the last, minus accuracy after the last.
    let last = per_run.clone().select(
        by(RUN_KEYS)
            .into_iter()
            .chain([col("last_task")])
            .collect::<Vec<_>>(),
    );
    let g = groups.clone().lazy().join(
        last,
        by(RUN_KEYS),
        by(RUN_KEYS),
        JoinArgs::new(JoinType::Inner),
    );
    let group_keys: Vec<&str> = RUN_KEYS.iter().copied().chain([c::GROUP]).collect();
    let best = g
        .clone()
        .filter(col(c::TASK).lt(col("last_task")))
        .group_by(by(&group_keys))
        .agg([col(c::TOP1).max().alias("best")]);
    let fin = g
        .filter(
            col(c::TASK)
                .eq(col("last_task"))
                .and(col(c::GROUP).lt(col("last_task"))),
        )
        .select(
            by(&group_keys)
                .into_iter()
                .chain([col(c::TOP1).alias("final")])
                .collect::<Vec<_>>(),
        );
    let forgetting = fin
        .join(
            best,
            by(&group_keys),
            by(&group_keys),
            JoinArgs::new(JoinType::Inner),
        )
        .group_by(by(RUN_KEYS))
        .agg([(col("best") - col("final"))
            .mean()
            .alias(Metric::AverageForgetting.column())]);
    per_run
        .join(
            forgetting,
            by(RUN_KEYS),
            by(RUN_KEYS),
            JoinArgs::new(JoinType::Left),
        )
        .select(
            by(RUN_KEYS)
                .into_iter()
                .chain(by(&[c::TASKS, c::CLASSES_SEEN]))
                .chain(Metric::ALL.iter().map(|m| col(m.column())))
                .chain([col(c::GPU_HOURS)])
                .collect::<Vec<_>>(),
        )
        // Joins and group-bys do not keep row order: sort, so the frame's
        // bytes depend on its content only.
        .sort(
            RUN_KEYS.iter().copied().collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()
        .map_err(|e| polars_error("runs frame", e))
}

/// Per experiment x setting x method x classifier: each metric's mean and
/// population std (ddof 0) over its runs, how many runs, orders and seeds.
pub fn summary_frame(runs: &DataFrame) -> Result<DataFrame> {
    let mut aggs = vec![
        len().cast(DataType::UInt32).alias(c::RUNS),
        col(c::ORDER)
            .n_unique()
            .cast(DataType::UInt32)
            .alias(c::ORDERS),
        col(c::SEED)
            .n_unique()
            .cast(DataType::UInt32)
            .alias(c::SEEDS),
        col(c::TASKS).max().alias(c::TASKS),
        col(c::GPU_HOURS).sum().alias(c::GPU_HOURS),
    ];
    for m in Metric::ALL {
        aggs.push(
            col(m.column())
                .mean()
                .alias(c::summary_column(m.column(), "mean")),
        );
        aggs.push(
            col(m.column())
                .std(0)
                .alias(c::summary_column(m.column(), "std")),
        );
    }
    runs.clone()
        .lazy()
        .group_by_stable(by(SUMMARY_KEYS))
        .agg(aggs)
        .collect()
        .map_err(|e| polars_error("summary frame", e))
}

pub fn run(job: &StageJob, reporter: &ChildReporter) -> Result<()> {
    let p: AggregateParams = serde_json::from_value(job.params.clone())
        .map_err(|e| StageError::param("aggregate", format!("bad stage params: {e}")))?;
    let (mut tidy, mut groups, mut epochs) = read_inputs(job, &p)?;
    reporter.progress(1, Some(3), "frames");
    let mut runs = runs_frame(&tidy, &groups)?;
    let mut summary = summary_frame(&runs)?;
    reporter.progress(2, Some(3), "frames");
    let out = &job.out_dir;
    write_frame(out, &mut tidy, files::TIDY_PARQUET, files::TIDY_CSV)?;
    write_frame(out, &mut groups, files::GROUPS_PARQUET, files::GROUPS_CSV)?;
    write_frame(out, &mut runs, files::RUNS_PARQUET, files::RUNS_CSV)?;
    write_frame(
        out,
        &mut summary,
        files::SUMMARY_PARQUET,
        files::SUMMARY_CSV,
    )?;
    write_frame(out, &mut epochs, files::EPOCHS_PARQUET, files::EPOCHS_CSV)?;
    reporter.progress(3, Some(3), "frames");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two runs (orders o1, o2) of one method, three tasks each; `groups`
    /// holds top-1 per task group after each task.
    fn frames() -> (DataFrame, DataFrame) {
        let top1 = [80.0, 60.0, 50.0, 70.0, 50.0, 40.0];
        let order: Vec<&str> = ["o1", "o1", "o1", "o2", "o2", "o2"].into();
        let keys = |n: usize, order: Vec<&str>, task: Vec<u32>| {
            df!(
                "experiment" => vec!["e"; n], "dataset" => vec!["d"; n], "order" => order,
                "setting" => vec!["s"; n], "method" => vec!["m"; n], "base_method" => vec!["m"; n],
                "bsce" => vec![false; n], "seed" => vec![0u64; n], "classifier" => vec!["cnn"; n],
                "task" => task,
            )
            .unwrap()
        };
        let mut tidy = keys(6, order, vec![0, 1, 2, 0, 1, 2]);
        for (name, col) in [
            (
                "classes_seen",
                Column::new("classes_seen".into(), [4u32, 6, 8, 4, 6, 8]),
            ),
            ("top1", Column::new("top1".into(), top1)),
            (
                "train_seconds",
                Column::new(
                    "train_seconds".into(),
                    [3600.0, 1800.0, 1800.0, 0.0, 0.0, 3600.0],
                ),
            ),
            ("gpu_hours", Column::new("gpu_hours".into(), [0.0; 6])),
        ] {
            let _ = name;
            tidy.with_column(col).unwrap();
        }
        // o1: task 0 g0=80; task 1 g0=70 g1=50; task 2 g0=40 g1=45 g2=65
        // o2: task 0 g0=70; task 1 g0=60 g1=40; task 2 g0=50 g1=40 g2=30
        let g_task = vec![0u32, 1, 1, 2, 2, 2, 0, 1, 1, 2, 2, 2];
        let g_order: Vec<&str> = [vec!["o1"; 6], vec!["o2"; 6]].concat();
        let mut groups = keys(12, g_order, g_task);
        groups
            .with_column(Column::new(
                "group".into(),
                [0u32, 0, 1, 0, 1, 2, 0, 0, 1, 0, 1, 2],
            ))
            .unwrap();
        groups
            .with_column(Column::new(
                "top1".into(),
                [
                    80.0, 70.0, 50.0, 40.0, 45.0, 65.0, 70.0, 60.0, 40.0, 50.0, 40.0, 30.0,
                ],
            ))
            .unwrap();
        (tidy, groups)
    }

    fn col_f64(df: &DataFrame, name: &str) -> Vec<f64> {
        crate::frame::floats(df, name)
            .unwrap()
            .into_iter()
            .map(|v| v.unwrap())
            .collect()
    }

    #[test]
    fn per_run_metrics() {
        let (tidy, groups) = frames();
        let runs = runs_frame(&tidy, &groups).unwrap();
        assert_eq!(runs.height(), 2);
        let aia = col_f64(&runs, "average_incremental_accuracy");
        assert!(
            (aia[0] - 190.0 / 3.0).abs() < 1e-9 && (aia[1] - 160.0 / 3.0).abs() < 1e-9,
            "{aia:?}"
        );
        assert_eq!(col_f64(&runs, "last_accuracy"), vec![50.0, 40.0]);
        // o1: g0 80 -> 40 (40), g1 50 -> 45 (5): 22.5; o2: g0 70 -> 50 (20), g1 40 -> 40 (0): 10
        assert_eq!(col_f64(&runs, "average_forgetting"), vec![22.5, 10.0]);
        assert_eq!(col_f64(&runs, "train_hours"), vec![2.0, 1.0]);
    }

    #[test]
    fn summary_is_mean_and_population_std_over_runs() {
        let (tidy, groups) = frames();
        let summary = summary_frame(&runs_frame(&tidy, &groups).unwrap()).unwrap();
        assert_eq!(summary.height(), 1);
        let mean = col_f64(&summary, "average_incremental_accuracy_mean")[0];
        let std = col_f64(&summary, "average_incremental_accuracy_std")[0];
        assert!((mean - 175.0 / 3.0).abs() < 1e-9, "{mean}");
        // population std of {63.33, 53.33} is 5 (the sample std would be 7.07)
        assert!((std - 5.0).abs() < 1e-9, "{std}");
        assert_eq!(col_f64(&summary, "average_forgetting_mean"), vec![16.25]);
        assert_eq!(crate::frame::ints(&summary, "orders").unwrap(), vec![2]);
    }

    #[test]
    fn a_one_task_run_has_no_forgetting() {
        let (tidy, groups) = frames();
        let first = |df: &DataFrame| {
            df.clone()
                .lazy()
                .filter(col("task").eq(lit(0u32)))
                .collect()
                .unwrap()
        };
        let runs = runs_frame(&first(&tidy), &first(&groups)).unwrap();
        let f = crate::frame::floats(&runs, "average_forgetting").unwrap();
        assert_eq!(f, vec![None, None]);
    }
}
