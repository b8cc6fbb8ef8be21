//! What each command prints: its data from `bsce_pipe::ops`, as lines on
//! stdout (`out!`) or stderr (notices, summaries, tables when stdout may be
//! JSON).

use std::io::Write as _;
use std::path::Path;

use bsce_pipe::ops::cache::SyncReport;
use bsce_pipe::ops::cost::{CalibrationReport, ChangeReport, CostReport, CostRow};
use bsce_pipe::ops::status::{Explanation, StatusReport};
use bsce_pipeline::maintenance::{DuReport, GcReport, VerifyReport};
use bsce_reports::report::ReportSummary;
use serde_json::Value;

/// `status` and `run --dry-run`.
pub fn status(r: &StatusReport) {
    for row in &r.nodes {
        match (&row.reasons, row.slurm.is_some()) {
            (Some(why), true) => out!(
                "{:<8} {}: {}; {}",
                row.state,
                row.label,
                why.join("; "),
                row.detail
            ),
            (None, true) => out!("{:<8} {}: {}", row.state, row.label, row.detail),
            (Some(why), false) => out!("to-run   {}: {}", row.label, why.join("; ")),
            (None, false) => out!("{:<8} {}", row.state, row.label),
        }
    }
    out!(
        "{} stages: {} cached, {} to run",
        r.stages,
        r.cached,
        r.to_run
    );
    if !r.missing_sources.is_empty() {
        out!(
            "{} source(s) missing; `run` needs them (or a `url` and `sha256` to download):",
            r.missing_sources.len()
        );
        for m in &r.missing_sources {
            out!("  {}: {} {}", m.stage, m.source, m.path.display());
        }
    }
}

/// `explain`.
pub fn explain(e: &Explanation) {
    out!(
        "{} [{}], run by {}{}",
        e.label,
        e.kind,
        e.runner,
        if e.needs_gpu {
            ", on a GPU when --gpus gives one"
        } else {
            ""
        }
    );
    match &e.key {
        Some(k) => out!("key      {k}"),
        None => out!("key      not known until its inputs are rebuilt"),
    }
    if e.reasons.is_empty() {
        out!("state    {}", e.state);
    } else {
        out!("state    {}: {}", e.state, e.reasons.join("; "));
    }
    if let Some(seed) = e.seed {
        out!(
            "seed     {seed} (from params and {} inputs; never from code)",
            if e.seed_inputs.is_empty() {
                "no".to_string()
            } else {
                e.seed_inputs.join(", ")
            }
        );
    }
    out!("outputs  {}", e.outputs.join(", "));
    out!(
        "code     {} = the items of the {} files its entry points reach (file names, item order, comments, formatting and tests left out):",
        e.code_digest,
        e.code_files.len()
    );
    for f in &e.code_files {
        out!("  {}  {}", f.file, &f.tokens_sha256[..12]);
    }
    out!(
        "params   {}",
        serde_json::to_string(&e.params).unwrap_or_default()
    );
    out!("inputs");
    for (name, d) in &e.inputs {
        out!("  {name}  {d}");
    }
    for (name, from) in &e.pending {
        out!("  {name}  (rebuilt by {from})");
    }
    if !e.libraries.is_empty() {
        let libs: Vec<String> = e
            .libraries
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        out!("libraries {}", libs.join(", "));
    }
}

/// `cache verify`.
pub fn verify(r: &VerifyReport) {
    out!(
        "{} blobs, {} bytes verified; {} records read",
        r.blobs,
        r.bytes,
        r.records
    );
    for (d, to) in &r.quarantined {
        out!("corrupt  blob {d} -> {to}");
    }
    for (from, to) in &r.bad_records {
        out!("corrupt  record {from} -> {to}");
    }
    for d in &r.dangling {
        out!(
            "dangling {} ({}): missing blob {}{}",
            d.record,
            d.label,
            d.missing.join(", "),
            if r.repaired {
                "; moved to quarantine/records/"
            } else {
                ""
            }
        );
    }
    for i in &r.invalidated {
        let inputs: Vec<String> = i.inputs.iter().map(|(n, d)| format!("{n} ({d})")).collect();
        out!(
            "invalid  {} ({}): read corrupt {}; moved to quarantine/records/, it reruns",
            i.record,
            i.label,
            inputs.join(", ")
        );
    }
    if !r.quarantined.is_empty() || !r.bad_records.is_empty() {
        out!(
            "{} corrupt blobs and {} unreadable records quarantined; the stages that made them will rerun",
            r.quarantined.len(),
            r.bad_records.len()
        );
    }
    if !r.dangling.is_empty() && !r.repaired {
        out!(
            "{} action records name missing blobs (their stages rerun); `cache verify --repair` moves them away",
            r.dangling.len()
        );
    }
}

/// `cache gc`.
pub fn gc(r: &GcReport) {
    let partial = match r.removed_partial {
        0 => String::new(),
        n => format!(", {n} partial stage work folders"),
    };
    let runs = match r.removed_slurm_runs {
        0 => String::new(),
        1 => ", 1 finished Slurm run folder".to_string(),
        n => format!(", {n} finished Slurm run folders"),
    };
    let views = match r.removed_live_files {
        0 => String::new(),
        1 => ", 1 live TensorBoard file".to_string(),
        n => format!(", {n} live TensorBoard files"),
    };
    out!(
        "kept {} results; removed {} results and {} blobs{partial}{runs}{views} ({} bytes)",
        r.kept_actions,
        r.removed_actions,
        r.removed_blobs,
        r.freed_bytes
    );
}

/// `cache du`.
pub fn du(r: &DuReport) {
    out!("{:<10} {:>8} {:>14}", "kind", "results", "bytes");
    for (kind, u) in &r.kinds {
        out!("{kind:<10} {:>8} {:>14}", u.actions, u.bytes);
    }
    out!("{:<10} {:>8} {:>14}", "logs", "", r.logs_bytes);
    out!("{:<10} {:>8} {:>14}", "unused", "", r.unreferenced_bytes);
    out!("{:<10} {:>8} {:>14}", "total", "", r.total_bytes);
}

/// `cache push` / `cache pull` (stderr).
pub fn sync(r: &SyncReport) {
    let _ = writeln!(
        std::io::stderr(),
        "{}; {} of {} stages {}",
        r.line,
        r.not_available.len(),
        r.stages,
        if r.push {
            "are not in the local store"
        } else {
            "are in neither store"
        }
    );
}

/// Where the report went, its tables, and what is missing (stderr: stdout
/// may be JSON).
pub fn report(r: &ReportSummary, config: &Path, verbose: bool) {
    let mut err = std::io::stderr().lock();
    for f in r
        .files
        .iter()
        .filter(|f| f.starts_with("tables/") && f.ends_with(".md"))
    {
        if let Ok(md) = std::fs::read_to_string(r.out_dir.join(f)) {
            let _ = writeln!(err, "\n{}", md.trim_end());
        }
    }
    for (label, error) in &r.failed {
        let _ = writeln!(err, "failed   {label}: {error}");
    }
    if !r.missing.is_empty() {
        let _ = writeln!(
            err,
            "\n{} not (completely) in the store:",
            count(r.missing.len(), "run is", "runs are")
        );
        let shown = if verbose { r.missing.len() } else { 5 };
        for m in r.missing.iter().take(shown) {
            let tasks: Vec<String> = m.tasks.iter().map(|t| format!("t{t}")).collect();
            let _ = writeln!(err, "  {}: {}", m.run, tasks.join(" "));
        }
        if r.missing.len() > shown {
            let _ = writeln!(
                err,
                "  ... and {} more (`bsce-pipe report` lists all)",
                r.missing.len() - shown
            );
        }
        let _ = writeln!(err, "`bsce-pipe run {}` computes them.", config.display());
    }
    let _ = writeln!(
        err,
        "\nreport: {} ({} files)",
        r.out_dir.join("README.md").display(),
        r.files.len()
    );
}

/// Per run, top-1 per task and the average incremental accuracy, on stdout.
pub fn results(results: &Value) {
    let runs = results["runs"].as_array().cloned().unwrap_or_default();
    if !runs.is_empty() {
        out!(
            "top-1 accuracy (%) on all seen classes, per task; avg = average incremental accuracy"
        );
    }
    for r in &runs {
        out!(
            "{}/{}/{} {} seed{}",
            r["dataset"].as_str().unwrap_or(""),
            r["order"].as_str().unwrap_or(""),
            r["setting"].as_str().unwrap_or(""),
            r["method"].as_str().unwrap_or(""),
            r["seed"]
        );
        for clf in ["cnn", "nme"] {
            let Some(avg) = r["average_incremental_accuracy"][clf].as_f64() else {
                continue;
            };
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
            out!(
                "  {:<4} {}  avg {avg:.1}",
                clf.to_uppercase(),
                cells.join(" ")
            );
        }
    }
    if let Some(missing) = results["missing"].as_array().filter(|m| !m.is_empty()) {
        out!(
            "not in the store ({}):",
            count(missing.len(), "run", "runs")
        );
        for m in missing {
            let tasks: Vec<String> = m["tasks"]
                .as_array()
                .map(|ts| ts.iter().map(|t| format!("t{t}")).collect())
                .unwrap_or_default();
            out!("  {}: {}", m["run"].as_str().unwrap_or(""), tasks.join(" "));
        }
    }
}

/// `1 run`, `2 runs`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_run_is_not_one_runs() {
        assert_eq!(super::count(1, "run is", "runs are"), "1 run is");
        assert_eq!(super::count(2, "run is", "runs are"), "2 runs are");
        assert_eq!(super::count(0, "run", "runs"), "0 runs");
    }
}

/// Image passes, short: `96,000`, `12.3 M`, `1.25 G`.
fn passes(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e7 {
        format!("{:.1} M", x / 1e6)
    } else {
        thousands(x.round() as u64)
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count that may be a mean: `500`, `1,281.2`.
fn per_class(x: f64) -> String {
    if x.fract() == 0.0 {
        thousands(x as u64)
    } else {
        let tenths = (x * 10.0).round() as u64;
        format!("{}.{}", thousands(tenths / 10), tenths % 10)
    }
}

fn hours(h: f64) -> String {
    if h == 0.0 {
        "0".into()
    } else if h < 0.01 {
        format!("{h:.4}")
    } else if h < 100.0 {
        format!("{h:.2}")
    } else {
        thousands(h.round() as u64)
    }
}

/// A device class as a column title: `GPU-h NVIDIA H100`, `CPU-h cpu`.
fn hours_unit(device: &str) -> String {
    if device == "cpu" {
        "CPU-h cpu".into()
    } else {
        format!("GPU-h {device}")
    }
}

/// Lines of cells, each column as wide as its widest cell; the first
/// `left` columns left-aligned, the others right-aligned.
fn table(rows: &[Vec<String>], left: usize) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c < left {
                    format!("{s:<w$}", w = width[c])
                } else {
                    format!("{s:>w$}", w = width[c])
                }
            })
            .collect();
        out!("{}", cells.join("  ").trim_end());
    }
}

fn uncalibrated(
    missing: &std::collections::BTreeMap<String, Vec<String>>,
    command: &str,
    file: &Path,
) {
    for (device, nets) in missing {
        if device == "(none)" {
            out!(
                "no calibration in {}: image passes only. To estimate hours, run on the node: {command}",
                file.display()
            );
        } else {
            out!(
                "{device}: no rate for {}: its hours are not shown; run on that node: {command}",
                nets.join(", ")
            );
        }
    }
}

/// `status CONFIG --cost`.
pub fn cost(r: &CostReport) {
    out!(
        "{}: the train and evaluate stages still to run, in image passes (epochs x images, fine-tuning included; forward-only passes apart) and hours",
        r.config.display()
    );
    let mut head: Vec<String> = [
        "experiment",
        "dataset",
        "stages",
        "to run",
        "image passes",
        "forward passes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    head.extend(r.devices.iter().map(|d| hours_unit(d)));
    head.extend(["stored".to_string(), "recorded h".to_string()]);
    let line = |row: &CostRow| -> Vec<String> {
        let mut cells = vec![
            row.experiment.clone(),
            row.dataset.clone(),
            thousands((row.to_run.stages + row.stored) as u64),
            thousands(row.to_run.stages as u64),
            passes(row.to_run.image_passes),
            passes(row.to_run.work.forward),
        ];
        cells.extend(r.devices.iter().map(|d| match row.to_run.hours.get(d) {
            Some(Some(h)) => hours(*h),
            _ => "-".into(),
        }));
        cells.push(thousands(row.stored as u64));
        cells.push(if row.stored == 0 {
            "-".into()
        } else {
            format!(
                "{} ({})",
                hours(row.recorded_hours),
                row.recorded_devices.join(", ")
            )
        });
        cells
    };
    let mut rows = vec![head];
    rows.extend(r.experiments.iter().map(line));
    rows.push(line(&r.total));
    table(&rows, 2);
    for (name, i) in &r.images_per_class {
        out!(
            "images per class of {name}: {} train, {} test ({})",
            per_class(i.train),
            per_class(i.test),
            i.basis
        );
    }
    out!("a stage shared by experiments counts in the first by name; hours: training passes at the calibrated training rate, fine-tuning and forward passes at the forward rate, the data path and stage start-up left out");
    uncalibrated(&r.uncalibrated, &r.calibrate_command, &r.calibration_file);
}

/// `calibrate`.
pub fn calibration(r: &CalibrationReport) {
    let mut rows = vec![vec![
        "device".to_string(),
        "network".into(),
        "train img/s".into(),
        "forward img/s".into(),
        "batch".into(),
        "threads".into(),
    ]];
    for m in &r.measured {
        let t = &m.throughput;
        rows.push(vec![
            format!("{} ({})", r.device_class, t.device),
            m.network.clone(),
            format!("{:.1}", t.train_images_per_s),
            format!("{:.1}", t.forward_images_per_s),
            t.batch.to_string(),
            t.threads.to_string(),
        ]);
    }
    table(&rows, 2);
    out!("recorded in {}", r.file.display());
}

/// `explain CONFIG --if-changed FILE...`.
pub fn if_changed(r: &ChangeReport) {
    for f in &r.files {
        let name = f.file.clone().unwrap_or_default();
        match &f.note {
            Some(note) => out!("{name}: {note}"),
            None => out!("{name}: in the code digest of {}", f.kinds.join(", ")),
        }
    }
    for s in &r.stages {
        out!("rerun    {} ({}, {})", s.label, s.because, s.state);
    }
    let kinds: Vec<String> = r
        .by_kind
        .iter()
        .map(|(k, n)| {
            let code = n.get("code").copied().unwrap_or(0);
            let down = n.get("downstream").copied().unwrap_or(0);
            match (code, down) {
                (c, 0) => format!("{} {k}", thousands(c as u64)),
                (0, d) => format!("{} {k} (downstream)", thousands(d as u64)),
                (c, d) => format!(
                    "{} {k} ({} by code, {} downstream)",
                    thousands((c + d) as u64),
                    thousands(c as u64),
                    thousands(d as u64)
                ),
            }
        })
        .collect();
    if r.stages.is_empty() {
        out!("no stage of this config reruns");
        return;
    }
    out!(
        "{} stages rerun: {}",
        thousands(r.stages.len() as u64),
        kinds.join(", ")
    );
    let e = &r.estimate;
    if e.stages > 0 {
        let mut est: Vec<String> = e
            .hours
            .iter()
            .filter_map(|(d, h)| h.map(|h| format!("{} {}", hours(h), hours_unit(d))))
            .collect();
        if est.is_empty() {
            est.push("no hours without a calibration".into());
        }
        let stored = r
            .stages
            .iter()
            .filter(|s| s.state == "cached" && (s.kind == "train" || s.kind == "evaluate"))
            .count();
        out!(
            "cost: {} train and evaluate stages, {} image passes, {} forward passes: {}{}",
            thousands(e.stages as u64),
            passes(e.image_passes),
            passes(e.work.forward),
            est.join(", "),
            if stored == 0 {
                String::new()
            } else {
                format!(
                    "; the {} of them in the store took {} h as recorded",
                    thousands(stored as u64),
                    hours(r.recorded_hours)
                )
            }
        );
        out!("downstream stages whose inputs come out byte-identical are served from the store instead (early cutoff): an upper bound");
        uncalibrated(
            &r.uncalibrated,
            &r.calibrate_command,
            Path::new("the store"),
        );
    }
}
