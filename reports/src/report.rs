//! `report`: the paper's tables, plots and frames of a config, from the
//! store only. Training and evaluation never run here: the result stages
//! (aggregate, plot, render: milliseconds each) run over the runs that are
//! complete in the store, and the runs that are not are listed with the
//! command that fills them. `run` ends by writing the same report.
//!
//! Layout of the output folder (default `reports/out/<config name>/` at the
//! project root):
//!
//! ```text
//! README.md                      index: tables inline, plots, data, missing runs, provenance
//! tables/<table>.md|tex          render stages
//! plots/<experiment>/<setting>.svg|png   plot stages
//! data/<experiment>/<frame>.csv|parquet  aggregate stages (tidy, groups, runs, summary)
//! ```
//!
//! Names become file names through [`file_name`], one-to-one: two
//! settings, experiments or tables never share a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bsce_pipeline::catalog::{StageCatalog, StageKind};
use bsce_pipeline::config::Config;
use bsce_pipeline::digest::Digest;
use bsce_pipeline::events::Reporter;
use bsce_pipeline::exec::{CancelToken, Engine, NodeStatus, RunContext, RunOptions};
use bsce_pipeline::plan::{Plan, RunRef};
use bsce_pipeline::registry::files;
use bsce_pipeline::store::records::ActionRecord;
use bsce_pipeline::store::Store;
use serde::Serialize;

/// A run of the config that is not (completely) in the store.
#[derive(Debug, Serialize)]
pub struct MissingRun {
    pub run: String,
    /// Tasks whose evaluation is not in the store.
    pub tasks: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub struct ReportSummary {
    pub out_dir: PathBuf,
    /// Result stages this report ran (the rest came from the store).
    pub executed: usize,
    pub executed_labels: Vec<String>,
    pub failed: BTreeMap<String, String>,
    /// Every failed stage failed on its input (a template error): exit 2.
    pub failed_on_input: bool,
    pub missing: Vec<MissingRun>,
    pub files: Vec<String>,
}

fn run_name(r: &RunRef) -> String {
    format!(
        "{}/{}/{}/{}/seed{}",
        r.experiment, r.order, r.setting, r.method, r.seed
    )
}

/// A config name (experiment, setting, table, config file stem) as one
/// file or folder name, one-to-one: ASCII letters, digits, `-`, `_` and
/// `.` stay (but a leading `.`), every other byte of the name's UTF-8 is
/// `~` and two lowercase hex digits, and the empty name is `~`. Two
/// different names never share a file (`b2%` is `b2~25`, `b2&` is
/// `b2~26`, `b50 s10` is `b50~20s10`), no name is hidden or `..`, and `~`
/// needs no escaping in a Markdown link.
pub fn file_name(s: &str) -> String {
    if s.is_empty() {
        return "~".into();
    }
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            let _ = write!(out, "~{b:02x}");
        }
    }
    out
}

/// The default output folder: `reports/out/<config file stem>/` at the
/// project root (the store rule's: the git checkout of the config, else of
/// `cwd`, else `cwd`; `out/`, so that no config name can write into this
/// crate's own folders).
pub fn default_out_dir(cfg: &Config, cwd: &Path) -> PathBuf {
    let stem = cfg
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    bsce_pipeline::store::locate::project_root_for(&cfg.file, cwd)
        .join("reports")
        .join("out")
        .join(file_name(&stem))
}

/// The result stages run over the runs complete in the store.
pub struct Prepared {
    /// The status of every node of the config's full plan.
    pub full_status: Vec<NodeStatus>,
    /// The report's plan (result stages and what they read).
    pub plan: Plan,
    pub status: Vec<NodeStatus>,
    pub missing: Vec<MissingRun>,
    pub executed: Vec<String>,
    pub failed: BTreeMap<String, String>,
    /// Every failed stage failed on its input.
    pub failed_on_input: bool,
}

impl Prepared {
    pub fn record(&self, n: usize) -> Option<&ActionRecord> {
        match &self.status[n] {
            NodeStatus::Cached { record, .. } => Some(record),
            NodeStatus::ToRun { .. } => None,
        }
    }
}

/// Runs the result stages (only) over the runs complete in the store.
pub fn prepare(
    cfg: &Config,
    full: &Plan,
    store: &dyn Store,
    catalog: &dyn StageCatalog,
    ctx: &RunContext,
    jobs: usize,
    reporter: &mut dyn Reporter,
) -> Result<Prepared> {
    let full_status = Engine::new(full, store, catalog, ctx).status(&RunOptions::default())?;
    let cached = |n: usize| matches!(full_status[n], NodeStatus::Cached { .. });
    let mut missing = Vec::new();
    for r in &full.runs {
        let tasks: Vec<usize> = (0..r.evaluations.len())
            .filter(|&t| !cached(r.evaluations[t]) || !cached(r.trains[t]))
            .collect();
        if !tasks.is_empty() {
            missing.push(MissingRun {
                run: run_name(r),
                tasks,
            });
        }
    }
    let complete = |r: &RunRef| !missing.iter().any(|m| m.run == run_name(r));
    let plan = Plan::build(cfg, &complete).report_only();
    let engine = Engine::new(&plan, store, catalog, ctx);
    // Never trains: everything but the result stages must be in the store.
    for (node, st) in plan
        .nodes
        .iter()
        .zip(engine.status(&RunOptions::default())?)
    {
        let result_stage = matches!(
            node.kind,
            StageKind::Aggregate | StageKind::Render | StageKind::Plot
        );
        if !result_stage && !matches!(st, NodeStatus::Cached { .. }) {
            bail!(
                "internal: the report's plan needs {} which is not in the store",
                node.label
            );
        }
    }
    // A result stage is deterministic: one that failed on these inputs
    // (a template error) fails again, and a run has just shown it.
    let opts = RunOptions {
        jobs: jobs.max(1),
        skip_failed: true,
        ..RunOptions::default()
    };
    let summary = engine.run(&opts, &CancelToken::new(), reporter)?;
    let status = engine.status(&RunOptions::default())?;
    Ok(Prepared {
        full_status,
        plan,
        status,
        missing,
        executed: summary.executed_labels,
        failed_on_input: summary.failed > 0 && summary.failed_on_input == summary.failed,
        failed: summary.failed_labels,
    })
}

/// Runs the result stages over the complete runs and writes the report.
pub fn write(
    cfg: &Config,
    full: &Plan,
    store: &dyn Store,
    catalog: &dyn StageCatalog,
    ctx: &RunContext,
    out_dir: &Path,
    jobs: usize,
    reporter: &mut dyn Reporter,
) -> Result<ReportSummary> {
    let prepared = prepare(cfg, full, store, catalog, ctx, jobs, reporter)?;
    let Prepared { plan, missing, .. } = &prepared;
    let record = |n: usize| prepared.record(n);
    let mut out = Output::new(out_dir)?;
    let blob = |rec: &ActionRecord, file: &str| -> Result<PathBuf> {
        let o = rec
            .outputs
            .get(file)
            .with_context(|| format!("{} has no output {file}", rec.label))?;
        Ok(store
            .local()
            .intact_blob_path(o, &format!("{file} of {}", rec.label))?)
    };
    for (exp, n) in &plan.aggregates {
        if let Some(rec) = record(*n) {
            for f in files::FRAMES {
                out.copy(&blob(rec, f)?, &format!("data/{}/{f}", file_name(exp)))?;
            }
        }
    }
    for (exp, setting, n) in &plan.plots {
        if let Some(rec) = record(*n) {
            for (f, ext) in [(files::PLOT_SVG, "svg"), (files::PLOT_PNG, "png")] {
                out.copy(
                    &blob(rec, f)?,
                    &format!("plots/{}/{}.{ext}", file_name(exp), file_name(setting)),
                )?;
            }
        }
    }
    let mut tables_md = String::new();
    for (name, n) in &plan.tables {
        if let Some(rec) = record(*n) {
            out.copy(
                &blob(rec, files::TABLE_MD)?,
                &format!("tables/{}.md", file_name(name)),
            )?;
            out.copy(
                &blob(rec, files::TABLE_TEX)?,
                &format!("tables/{}.tex", file_name(name)),
            )?;
            let md = std::fs::read_to_string(blob(rec, files::TABLE_MD)?)?;
            let _ = writeln!(
                tables_md,
                "### {name}\n\n{md}\n[Markdown](tables/{0}.md) · [LaTeX](tables/{0}.tex)\n",
                file_name(name)
            );
        }
    }
    let index = index(
        cfg,
        full,
        &prepared.full_status,
        plan,
        &tables_md,
        missing,
        catalog,
        ctx,
    );
    out.write("README.md", index.as_bytes())?;
    let files = out.finish()?;
    let Prepared {
        missing,
        executed,
        failed,
        failed_on_input,
        ..
    } = prepared;
    Ok(ReportSummary {
        out_dir: out_dir.to_path_buf(),
        executed: executed.len(),
        executed_labels: executed,
        failed,
        failed_on_input,
        missing,
        files,
    })
}

/// The index: what was made from what, by what, where.
fn index(
    cfg: &Config,
    full: &Plan,
    full_status: &[NodeStatus],
    plan: &Plan,
    tables_md: &str,
    missing: &[MissingRun],
    catalog: &dyn StageCatalog,
    ctx: &RunContext,
) -> String {
    let name = cfg
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config_digest = std::fs::read(&cfg.file)
        .map(|b| Digest::of_bytes(&b).to_hex())
        .unwrap_or_else(|_| "unreadable".into());
    let mut s = String::new();
    let _ = writeln!(s, "# Report: {name}\n");
    let _ = writeln!(
        s,
        "Made by bsce-pipe {} from `{}` (sha256 `{config_digest}`). Every file here is a copy of a stage output in the store; `bsce-pipe report {}` remakes it.\n",
        ctx.long_version(),
        cfg.file.display(),
        cfg.file.display()
    );
    let _ = writeln!(s, "## Tables\n");
    if tables_md.is_empty() {
        let _ = writeln!(
            s,
            "The config declares no table (`tables:`), or none has a complete run yet.\n"
        );
    } else {
        s.push_str(tables_md);
    }
    let _ = writeln!(s, "## Plots\n");
    let mut any = false;
    for (exp, setting, _) in &plan.plots {
        let f = format!("plots/{}/{}", file_name(exp), file_name(setting));
        let _ = writeln!(s, "![{exp} {setting}]({f}.png)\n\n[SVG]({f}.svg)\n");
        any = true;
    }
    if !any {
        let _ = writeln!(s, "No complete run yet.\n");
    }
    let _ = writeln!(s, "## Data\n");
    for (exp, _) in &plan.aggregates {
        let d = |f: &str| format!("[{f}](data/{}/{f})", file_name(exp));
        let _ = writeln!(
            s,
            "- {exp}: {} (one row per run x task x classifier), {} (accuracy per task group), {} (per-run metrics), {} (mean and std over orders and seeds); each also as Parquet.",
            d(files::TIDY_CSV), d(files::GROUPS_CSV), d(files::RUNS_CSV), d(files::SUMMARY_CSV)
        );
    }
    let _ = writeln!(s, "\n## Missing runs\n");
    if missing.is_empty() {
        let _ = writeln!(s, "None: every run of the config is in the store.\n");
    } else {
        for m in missing {
            let tasks: Vec<String> = m.tasks.iter().map(|t| format!("t{t}")).collect();
            let _ = writeln!(s, "- {}: tasks {}", m.run, tasks.join(", "));
        }
        let _ = writeln!(
            s,
            "\n`bsce-pipe run {}` computes them.\n",
            cfg.file.display()
        );
    }
    let _ = writeln!(s, "## Provenance\n");
    let mut libs: BTreeMap<String, String> = BTreeMap::new();
    for k in StageKind::ALL {
        libs.extend(catalog.libraries(k));
    }
    let libs: Vec<String> = libs.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "Libraries that change numbers: {}.\n", libs.join(", "));
    let (mut gpu_hours, mut cpu_hours) = (0.0, 0.0);
    let mut hosts: BTreeMap<(String, String), (usize, f64, u64, u64)> = BTreeMap::new();
    for (node, st) in full.nodes.iter().zip(full_status) {
        if node.kind != StageKind::Train {
            continue;
        }
        if let NodeStatus::Cached { record, .. } = st {
            let p = &record.provenance;
            let h = p.wall_seconds / 3600.0;
            if p.device.starts_with("cuda") {
                gpu_hours += h;
            } else {
                cpu_hours += h;
            }
            let e =
                hosts
                    .entry((p.host.clone(), p.device.clone()))
                    .or_insert((0, 0.0, u64::MAX, 0));
            e.0 += 1;
            e.1 += p.wall_seconds;
            e.2 = e.2.min(p.started_unix_ms);
            e.3 = e.3.max(p.started_unix_ms);
        }
    }
    let _ = writeln!(s, "Training stages, by where they ran:\n");
    let _ = writeln!(
        s,
        "| host | device | stages | hours | first started (UTC) | last started (UTC) |"
    );
    let _ = writeln!(s, "|:---|:---|---:|---:|:---|:---|");
    for ((host, device), (n, secs, first, last)) in &hosts {
        let _ = writeln!(
            s,
            "| {host} | {device} | {n} | {:.3} | {} | {} |",
            secs / 3600.0,
            utc(*first),
            utc(*last)
        );
    }
    let _ = writeln!(
        s,
        "\nTotal: {gpu_hours:.3} GPU-hours, {cpu_hours:.3} CPU-hours of training."
    );
    s
}

/// `YYYY-MM-DD HH:MM` from Unix milliseconds.
fn utc(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Files written into the output folder, each atomically (temporary file,
/// then rename); files a previous report wrote and this one did not are
/// removed (the list is kept in `.bsce-report`).
struct Output {
    dir: PathBuf,
    written: Vec<String>,
    /// Lowercased name -> the name written: names that differ only in
    /// case are one file on macOS and Windows.
    folded: BTreeMap<String, String>,
}

const MANIFEST: &str = ".bsce-report";

impl Output {
    fn new(dir: &Path) -> Result<Output> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Output {
            dir: dir.to_path_buf(),
            written: Vec::new(),
            folded: BTreeMap::new(),
        })
    }

    fn write(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        match self.folded.get(&rel.to_lowercase()) {
            Some(first) if first == rel => bail!("internal: the report writes {rel} twice"),
            Some(first) => bail!(
                "the report would write {first} and {rel}, names that differ only in letter case: \
                 one file on macOS and Windows file systems, so one would hide the other; \
                 rename one of the two in the config"
            ),
            None => {}
        }
        let path = self.dir.join(rel);
        let parent = path.parent().expect("inside the folder");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let name = path.file_name().expect("a file").to_string_lossy();
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        // A write that fails (a full disk) takes its temporary file with it.
        let written = std::fs::write(&tmp, bytes)
            .with_context(|| format!("writing {}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        self.folded.insert(rel.to_lowercase(), rel.to_string());
        self.written.push(rel.to_string());
        Ok(())
    }

    fn copy(&mut self, from: &Path, rel: &str) -> Result<()> {
        let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.write(rel, &bytes)
    }

    fn finish(mut self) -> Result<Vec<String>> {
        let manifest = self.dir.join(MANIFEST);
        if let Ok(old) = std::fs::read_to_string(&manifest) {
            for f in old.lines() {
                let stale = !self.written.iter().any(|w| w == f);
                // Only names this module writes: plain components, never
                // `..` nor absolute.
                let inside = !f.is_empty()
                    && Path::new(f)
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)));
                if stale && inside {
                    let path = self.dir.join(f);
                    let _ = std::fs::remove_file(&path);
                    // A folder of an experiment the report no longer has
                    // (`remove_dir` leaves a folder that is not empty).
                    if let Some(parent) = path.parent().filter(|p| *p != self.dir) {
                        let _ = std::fs::remove_dir(parent);
                    }
                }
            }
        }
        self.written.sort();
        let list = self.written.join("\n") + "\n";
        self.write(MANIFEST, list.as_bytes())?;
        self.written.retain(|f| f != MANIFEST);
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn file_names_are_one_to_one_safe_and_readable() {
        let names = [
            "b2%",
            "b2&",
            "b2_",
            "b2~25",
            "b50 s10",
            "b50_s10",
            "b50-s10",
            "",
            "~",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "ε=0.1",
            "e=0.1",
            "cifar100.b50",
        ];
        let mut seen = std::collections::BTreeMap::new();
        for n in names {
            let f = file_name(n);
            assert!(!f.is_empty() && !f.starts_with('.'), "{n:?} -> {f:?}");
            assert!(
                f.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)),
                "{n:?} -> {f:?}"
            );
            if let Some(other) = seen.insert(f.clone(), n) {
                panic!("{other:?} and {n:?} both map to {f:?}");
            }
        }
        assert_eq!(file_name("b4_s3"), "b4_s3");
        assert_eq!(file_name("cifar100-b50.s10"), "cifar100-b50.s10");
        assert_eq!(file_name("b2%"), "b2~25");
        assert_eq!(file_name("b50 s10"), "b50~20s10");
        assert_eq!(file_name(".."), "~2e.");
    }
}
