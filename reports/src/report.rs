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
//! index.html                     the same and more in one self-contained page (inline SVG and CSS)
//! tables/<table>.md|tex          render stages
//! plots/<experiment>/<setting>.svg|png   plot stages: accuracy
//! curves/<experiment>/<setting>.svg|png  plot stages: training loss
//! data/<experiment>/<frame>.csv|parquet  aggregate stages (tidy, groups, runs, summary, epochs)
//! tensorboard/<experiment>/<order>/<setting>/<method>/seed<k>/events.out.tfevents.*
//!                                per-epoch scalars of each run's train stages (their log.json)
//! timeline.svg|png               every stored stage of the config, from provenance
//! timeline/<run id>.svg|png      the stages each run of `run` computed (the latest 10)
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
pub use bsce_pipeline::names::file_name;
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

#[derive(Debug, Default, Serialize)]
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
    // A plot stage's accuracy figure into plots/, its loss figure into
    // curves/.
    let figures = [
        (files::PLOT_SVG, "plots", "svg"),
        (files::PLOT_PNG, "plots", "png"),
        (files::LOSS_SVG, "curves", "svg"),
        (files::LOSS_PNG, "curves", "png"),
    ];
    for (exp, setting, n) in &plan.plots {
        if let Some(rec) = record(*n) {
            for (f, dir, ext) in figures {
                out.copy(
                    &blob(rec, f)?,
                    &format!("{dir}/{}/{}.{ext}", file_name(exp), file_name(setting)),
                )?;
            }
        }
    }
    write_tensorboard(full, &prepared.full_status, &blob, &mut out)?;
    let timelines = write_timelines(cfg, full, &prepared, &mut out)?;
    let mut tables_md = String::new();
    let mut tables_html = Vec::new();
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
            tables_html.push(crate::html::Table {
                name: name.clone(),
                file: file_name(name),
                html: crate::html::markdown_to_html(&md),
            });
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
        &timelines,
        catalog,
        ctx,
        &out.written,
    );
    out.write("README.md", index.as_bytes())?;
    let page = crate::html::page(&crate::html::PageInput {
        cfg,
        full,
        full_status: &prepared.full_status,
        plan,
        tables: &tables_html,
        missing,
        timelines: &timelines,
        ctx,
        catalog,
        out: &out.dir,
        written: &out.written,
    })?;
    out.write("index.html", page.as_bytes())?;
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

/// The TensorBoard event files of every run, from its train stages'
/// `log.json` (tasks in turn while they are stored): one file per run,
/// its wall times the stage's start plus each entry's seconds, so
/// TensorBoard's relative time axis shows the training time.
fn write_tensorboard(
    full: &Plan,
    full_status: &[NodeStatus],
    blob: &dyn Fn(&ActionRecord, &str) -> Result<PathBuf>,
    out: &mut Output,
) -> Result<()> {
    use bsce_stages::task_artefacts::{LogEntry, TrainLog};
    use bsce_stages::tensorboard;
    for r in &full.runs {
        let mut events = Vec::new();
        let mut steps = tensorboard::Steps::default();
        let mut first_wall = None;
        for (t, &n) in r.trains.iter().enumerate() {
            let NodeStatus::Cached { record, .. } = &full_status[n] else {
                break;
            };
            let path = blob(record, files::TRAIN_LOG)?;
            let log: TrainLog = serde_json::from_slice(
                &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{} of {}", files::TRAIN_LOG, record.label))?;
            let mut wall = record.provenance.started_unix_ms as f64 / 1000.0;
            first_wall.get_or_insert(wall);
            for entry in &log {
                wall += LogEntry::seconds(entry);
                events.push((wall, steps.next(entry), tensorboard::scalars(entry, t)));
            }
        }
        let Some(first) = first_wall else { continue };
        let dir = r.path();
        out.write(
            &format!(
                "tensorboard/{}/events.out.tfevents.{}.bsce-pipe",
                dir.display(),
                first as u64
            ),
            &tensorboard::file_bytes(first, &events),
        )?;
    }
    Ok(())
}

/// A timeline drawn into the report: its files and the lines beside it.
pub struct TimelineFigure {
    /// `timeline` or `timeline/<run id>` (no extension).
    pub file: String,
    pub title: String,
    pub lines: Vec<String>,
}

/// The config's timeline over every stored stage (the full plan's and the
/// report's result stages), and one per run of `run` that computed any of
/// them, the latest [`timeline::RUNS_DRAWN`] (the first element is the
/// config's).
fn write_timelines(
    cfg: &Config,
    full: &Plan,
    prepared: &Prepared,
    out: &mut Output,
) -> Result<Vec<TimelineFigure>> {
    use crate::timeline::{self, Bar, Timeline};
    let mut bars: BTreeMap<String, Bar> = BTreeMap::new();
    let nodes = full
        .nodes
        .iter()
        .zip(&prepared.full_status)
        .chain(prepared.plan.nodes.iter().zip(&prepared.status));
    for (node, st) in nodes {
        if let NodeStatus::Cached { record, .. } = st {
            let p = &record.provenance;
            bars.insert(
                node.label.clone(),
                Bar {
                    label: node.label.clone(),
                    kind: node.kind.spec().name.to_string(),
                    host: p.host.clone(),
                    device: p.device.clone(),
                    run_id: p.run_id.clone(),
                    start_ms: p.started_unix_ms,
                    seconds: p.wall_seconds,
                },
            );
        }
    }
    let bars: Vec<Bar> = bars.into_values().collect();
    if bars.is_empty() {
        return Ok(Vec::new());
    }
    let mut runs: BTreeMap<&str, u64> = BTreeMap::new();
    for b in &bars {
        let e = runs.entry(&b.run_id).or_insert(b.start_ms);
        *e = (*e).min(b.start_ms);
    }
    let mut runs: Vec<(&str, u64)> = runs.into_iter().collect();
    runs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut figures = vec![(
        "timeline".to_string(),
        format!(
            "Every stored stage of {}",
            cfg.file.file_name().unwrap_or_default().to_string_lossy()
        ),
        Timeline::new(bars.clone()),
    )];
    for (run, start) in runs.iter().take(timeline::RUNS_DRAWN) {
        let mine: Vec<Bar> = bars.iter().filter(|b| b.run_id == *run).cloned().collect();
        figures.push((
            format!("timeline/{}", file_name(run)),
            format!("The stages run {run} computed (started {})", utc(*start)),
            Timeline::new(mine),
        ));
    }
    let scratch = out
        .dir
        .join(format!(".timeline-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let drawn = (|| -> Result<Vec<TimelineFigure>> {
        let mut done = Vec::new();
        for (file, title, t) in figures {
            let (svg, png) = (scratch.join("t.svg"), scratch.join("t.png"));
            timeline::write(&svg, &png, &title, &t)?;
            out.copy(&svg, &format!("{file}.svg"))?;
            out.copy(&png, &format!("{file}.png"))?;
            done.push(TimelineFigure {
                file,
                title,
                lines: t.summary_lines(),
            });
        }
        Ok(done)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    drawn
}

/// The figures in `folder` (`plots` or `curves`) that this report wrote,
/// per experiment and setting of `plots`: (experiment, setting, path
/// without extension). A plot stage that failed this time has none, and
/// the copy an earlier report left is removed at the end, so neither the
/// index nor the page shows a figure that is not current.
pub(crate) fn drawn<'p>(
    plots: &'p [(String, String, usize)],
    folder: &str,
    written: &[String],
) -> Vec<(&'p str, &'p str, String)> {
    plots
        .iter()
        .map(|(exp, setting, _)| {
            let f = format!("{folder}/{}/{}", file_name(exp), file_name(setting));
            (exp.as_str(), setting.as_str(), f)
        })
        .filter(|(_, _, f)| {
            let svg = format!("{f}.svg");
            written.contains(&svg)
        })
        .collect()
}

/// The index: what was made from what, by what, where.
fn index(
    cfg: &Config,
    full: &Plan,
    full_status: &[NodeStatus],
    plan: &Plan,
    tables_md: &str,
    missing: &[MissingRun],
    timelines: &[TimelineFigure],
    catalog: &dyn StageCatalog,
    ctx: &RunContext,
    written: &[String],
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
    for (exp, setting, f) in drawn(&plan.plots, "plots", written) {
        let _ = writeln!(s, "![{exp} {setting}]({f}.png)\n\n[SVG]({f}.svg)\n");
        any = true;
    }
    if !any && plan.plots.is_empty() {
        let _ = writeln!(s, "No complete run yet.\n");
    } else if !any {
        let _ = writeln!(
            s,
            "No plot stage succeeded this time (the failures are listed where the report ran).\n"
        );
    }
    let _ = writeln!(s, "## Training curves\n");
    for (exp, setting, f) in drawn(&plan.plots, "curves", written) {
        let _ = writeln!(
            s,
            "![{exp} {setting} training loss]({f}.png)\n\n[SVG]({f}.svg)\n"
        );
    }
    let _ = writeln!(
        s,
        "Every loss term, lr and epoch time of every run: `tensorboard --logdir tensorboard` in this folder (one run folder per experiment, order, setting, method and seed; its tasks in turn). While a run trains, `tensorboard --logdir <store>/tensorboard` follows the stages in flight.\n"
    );
    let _ = writeln!(s, "## Timeline\n");
    if timelines.is_empty() {
        let _ = writeln!(s, "No stage is stored yet.\n");
    }
    for (i, t) in timelines.iter().enumerate() {
        if i == 0 {
            let _ = writeln!(s, "![{}]({}.png)\n", t.title, t.file);
            for l in &t.lines {
                let _ = writeln!(s, "- {l}");
            }
            let _ = writeln!(s);
            if timelines.len() > 1 {
                let _ = writeln!(s, "Per run of `run`, latest first:\n");
            }
        } else {
            let _ = writeln!(s, "- [{}]({}.png): {}", t.title, t.file, t.lines[0]);
        }
    }
    if timelines.len() > 1 {
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Data\n");
    for (exp, _) in &plan.aggregates {
        let d = |f: &str| format!("[{f}](data/{}/{f})", file_name(exp));
        let _ = writeln!(
            s,
            "- {exp}: {} (one row per run x task x classifier), {} (accuracy per task group), {} (per-run metrics), {} (mean and std over orders and seeds), {} (losses, lr and time per epoch); each also as Parquet.",
            d(files::TIDY_CSV), d(files::GROUPS_CSV), d(files::RUNS_CSV), d(files::SUMMARY_CSV), d(files::EPOCHS_CSV)
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
    let hosts = by_host(full, full_status);
    let _ = writeln!(s, "Training stages, by where they ran:\n");
    let _ = writeln!(
        s,
        "| host | device | stages | hours | first started (UTC) | last started (UTC) |"
    );
    let _ = writeln!(s, "|:---|:---|---:|---:|:---|:---|");
    for h in &hosts.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {} | {} |",
            h.host, h.device, h.stages, h.hours, h.first, h.last
        );
    }
    let _ = writeln!(
        s,
        "\nTotal: {:.3} GPU-hours, {:.3} CPU-hours of training.",
        hosts.gpu_hours, hosts.cpu_hours
    );
    s
}

/// The stored training stages by where they ran (host, device).
pub(crate) struct ByHost {
    pub rows: Vec<HostRow>,
    pub gpu_hours: f64,
    pub cpu_hours: f64,
}

pub(crate) struct HostRow {
    pub host: String,
    pub device: String,
    pub stages: usize,
    pub hours: f64,
    /// First and last start, `YYYY-MM-DD HH:MM` UTC.
    pub first: String,
    pub last: String,
}

pub(crate) fn by_host(full: &Plan, full_status: &[NodeStatus]) -> ByHost {
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
    ByHost {
        rows: hosts
            .into_iter()
            .map(|((host, device), (stages, secs, first, last))| HostRow {
                host,
                device,
                stages,
                hours: secs / 3600.0,
                first: utc(first),
                last: utc(last),
            })
            .collect(),
        gpu_hours,
        cpu_hours,
    }
}

/// `YYYY-MM-DD HH:MM` from Unix milliseconds.
pub(crate) fn utc(ms: u64) -> String {
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
    pub(crate) dir: PathBuf,
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
                    // Folders of an experiment or a run the report no
                    // longer has, up to the report's own (`remove_dir`
                    // leaves a folder that is not empty).
                    let mut parent = path.parent();
                    while let Some(p) = parent.filter(|p| *p != self.dir) {
                        if std::fs::remove_dir(p).is_err() {
                            break;
                        }
                        parent = p.parent();
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
    use super::*;

    #[test]
    fn only_the_figures_this_report_wrote_are_shown() {
        let plots = vec![
            ("e".to_string(), "s2".to_string(), 7),
            ("e".to_string(), "b2%".to_string(), 8),
        ];
        // s2's plot stage succeeded; b2%'s failed (an earlier report's
        // figure may still be on disk: it is not listed).
        let written = vec![
            "plots/e/s2.png".to_string(),
            "plots/e/s2.svg".to_string(),
            "curves/e/s2.svg".to_string(),
        ];
        assert_eq!(
            drawn(&plots, "plots", &written),
            vec![("e", "s2", "plots/e/s2".to_string())]
        );
        assert_eq!(
            drawn(&plots, "curves", &written),
            vec![("e", "s2", "curves/e/s2".to_string())]
        );
        let all: Vec<String> = ["plots/e/s2.svg", "plots/e/b2~25.svg"]
            .map(String::from)
            .into();
        assert_eq!(drawn(&plots, "plots", &all).len(), 2);
    }
}
