//! The commands' side of the Slurm executor: `run --executor slurm`
//! (submit, then follow or detach), `cancel`, the queue states `status`
//! shows, what `cache gc` keeps for live runs, and `exec-node`, the body of
//! every job (its `SLURM_*` read at the edge into [`SlurmJobEnv`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bsce_pipeline::config::{self, Config};
use bsce_pipeline::digest::Digest;
use bsce_pipeline::events::{RunEvent, RunSummary};
use bsce_pipeline::exec::context::unix_ms;
use bsce_pipeline::exec::node::NodeResult;
use bsce_pipeline::exec::slurm::{
    self, JobOutcome, QueueState, RunDir, RunFile, RunState, Submission,
};
use bsce_pipeline::exec::{CancelToken, Engine, NodeStatus, RunContext, RunOptions};
use bsce_pipeline::plan::Plan;
use bsce_pipeline::store::LocalStore;

use super::store::{self, StoreArgs};
use super::Ctx;
use crate::ambient::SlurmJobEnv;
use crate::{Error, Exit, Result};

/// The remote a `--remote` flag named, for the jobs' environment (the
/// config's `store.remote` and `BSCE_REMOTE` reach them by themselves).
pub fn remote_env(args: &StoreArgs) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(r) = &args.remote {
        env.push(("BSCE_REMOTE".into(), r.clone()));
    }
    if args.remote_read_only {
        env.push(("BSCE_REMOTE_READ_ONLY".into(), "true".into()));
    }
    env
}

/// Submits every stage not in the store as a Slurm job; then follows the
/// jobs to their end (`None` when detached: the run goes on without us).
#[allow(clippy::too_many_arguments)]
pub fn run(
    engine: &Engine,
    cfg: &Config,
    opts: &RunOptions,
    run_ctx: &RunContext,
    env: Vec<(String, String)>,
    detach: bool,
    cancel: &CancelToken,
    reporter: &mut dyn bsce_pipeline::events::Reporter,
    ctx: &Ctx,
) -> Result<Option<RunSummary>> {
    let start = std::time::Instant::now();
    let status = engine.status(opts)?;
    let to_run = status
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, NodeStatus::ToRun { .. }))
        .map(|(i, _)| i);
    let kinds = slurm::kinds_of(engine.plan, to_run);
    if !kinds.is_empty() {
        slurm::preflight(&cfg.slurm, &kinds).map_err(|e| Error::bad_input(e.to_string()))?;
    }
    let root = engine.store.local().root().to_path_buf();
    let dir = RunDir::new(&root, &run_ctx.run_id);
    let config_text = std::fs::read_to_string(&cfg.file)
        .map_err(|e| Error::bad_input(format!("{}: {e}", cfg.file.display())))?;
    let run = RunFile {
        run_id: run_ctx.run_id.clone(),
        config_path: cfg.file.clone(),
        config_text,
        store: root,
        node_store: cfg.slurm.node_store.clone(),
        force: opts.force.clone(),
        max_retries: cfg.slurm.max_retries,
        submitted_unix_ms: unix_ms(),
        jobs: BTreeMap::new(),
        cancelled: false,
    };
    let sub = Submission {
        settings: &cfg.slurm,
        run,
        dir: dir.clone(),
        exe: run_ctx.exe.clone(),
        env,
    };
    let mut summary = RunSummary::default();
    let run = slurm::submit(engine.plan, &status, sub, reporter, &mut summary)?;
    if detach {
        ctx.note(&format!(
            "submitted {jobs} slurm jobs (run {id}, job name {name}); {cached} stages were in the store.\n\
             `bsce-pipe status {config}` shows their queue states, `bsce-pipe cancel {config}` cancels them.",
            jobs = run.jobs.len(),
            id = run.run_id,
            name = RunDir::job_name(&run.run_id),
            cached = summary.cached,
            config = cfg.file.display(),
        ));
        return Ok(None);
    }
    if !run.jobs.is_empty() {
        let poll = Duration::from_secs_f64(cfg.slurm.poll_seconds);
        slurm::watch(&dir, &run, poll, cancel, reporter, &mut summary)?;
    }
    summary.wall_seconds = start.elapsed().as_secs_f64();
    Ok(Some(summary))
}

/// A queued or running job of a Slurm run of the config.
#[derive(Debug, Clone)]
pub struct LiveJob {
    pub id: String,
    pub queue: QueueState,
    /// Whether the job computes the stage as the config defines it now.
    /// False after an edit that reaches the stage: the job computes the
    /// version it was submitted with (its run file keeps that config).
    pub current: bool,
}

/// Label -> the live job of a Slurm run of this config (the latest run's
/// when several hold one), with whether it computes the stage as the
/// config now defines it: a queued job's stage is matched by what it
/// computes, not by its label alone. Asks Slurm only when such a run
/// exists; a machine without Slurm commands shows none.
pub fn live_jobs(loaded: &store::Loaded) -> BTreeMap<String, LiveJob> {
    let defined = |plan: &Plan| -> BTreeMap<String, Digest> {
        let defs = plan.definitions().unwrap_or_default();
        plan.nodes
            .iter()
            .map(|n| n.label.clone())
            .zip(defs)
            .collect()
    };
    let now = defined(&loaded.plan);
    let mut live = BTreeMap::new();
    for dir in RunDir::all(&loaded.root) {
        let Ok(run) = dir.read() else { continue };
        if run.config_path != loaded.cfg.file || run.cancelled {
            continue;
        }
        let Ok(states) = slurm::queue_states(&run.run_id) else {
            continue;
        };
        // A submitted config that no longer loads is not what the config
        // defines now.
        let submitted = config::parse(&run.config_text, &run.config_path, &loaded.catalog)
            .map(|c| defined(&Plan::from_config(&c)))
            .unwrap_or_default();
        for (label, job) in &run.jobs {
            if let Some(q) = states.get(&job.id).filter(|q| slurm::is_live(&q.state)) {
                let current = submitted
                    .get(label)
                    .is_some_and(|d| now.get(label) == Some(d));
                live.insert(
                    label.clone(),
                    LiveJob {
                        id: job.id.clone(),
                        queue: q.clone(),
                        current,
                    },
                );
            }
        }
    }
    live
}

/// `status`'s word and detail for a stage with a live job.
pub fn describe(job: &LiveJob) -> (&'static str, String) {
    let (id, q) = (&job.id, &job.queue);
    if !job.current {
        return (
            "to-run",
            format!(
                "slurm job {id} ({}) computes the version submitted before the config was \
                 edited; this one is not queued",
                q.state
            ),
        );
    }
    match q.state.as_str() {
        "PENDING" => ("queued", format!("slurm job {id} PENDING ({})", q.reason)),
        "RUNNING" | "COMPLETING" => ("running", format!("slurm job {id} on {}", q.node)),
        other => ("queued", format!("slurm job {id} {other}")),
    }
}

/// What `cancel` did: per Slurm run, the jobs cancelled.
#[derive(Debug, Default)]
pub struct Cancelled {
    pub runs: Vec<(String, Vec<String>)>,
}

/// `cancel CONFIG`: scancel every queued or running job of the config's
/// Slurm runs, and mark the runs cancelled.
pub fn cancel(root: &Path, cfg: &Config) -> Result<Cancelled> {
    let mut out = Cancelled::default();
    for dir in RunDir::all(root) {
        let Ok(mut run) = dir.read() else { continue };
        if run.config_path != cfg.file {
            continue;
        }
        let states =
            slurm::queue_states(&run.run_id).map_err(|e| Error::bad_input(e.to_string()))?;
        let ids: Vec<String> = run
            .jobs
            .values()
            .filter(|j| states.get(&j.id).is_some_and(|q| slurm::is_live(&q.state)))
            .map(|j| j.id.clone())
            .collect();
        if ids.is_empty() {
            continue;
        }
        slurm::cancel_jobs(&ids)?;
        run.cancelled = true;
        dir.write(&run)?;
        out.runs.push((run.run_id.clone(), ids));
    }
    Ok(out)
}

/// The Slurm runs of a store as `cache gc` must treat them.
pub struct GcSlurmRuns {
    /// Every result a live run's config reaches.
    pub keep: BTreeSet<Digest>,
    /// Live runs: run id -> why they count as live.
    pub live: BTreeMap<String, String>,
    /// Folders of runs whose jobs have all ended.
    pub finished: Vec<PathBuf>,
}

/// A detached Slurm run holds no lock between two of its jobs, so gc keeps
/// what every live run reads; a run Slurm cannot be asked about is live.
pub fn gc_slurm_runs(store: &LocalStore, run_ctx: &RunContext, ctx: &Ctx) -> Result<GcSlurmRuns> {
    let catalog = store::catalog(ctx);
    let mut out = GcSlurmRuns {
        keep: BTreeSet::new(),
        live: BTreeMap::new(),
        finished: Vec::new(),
    };
    for dir in RunDir::all(store.root()) {
        let run = dir.read().map_err(|e| {
            Error::bad_input(format!(
                "{e}; cache gc cannot tell whether this Slurm run still has jobs queued: \
                 remove its folder {} once they have ended",
                dir.path.display()
            ))
        })?;
        let why = match dir.state(&run) {
            RunState::Finished => {
                out.finished.push(dir.path.clone());
                continue;
            }
            RunState::Live(n) => format!("{n} jobs queued or running"),
            RunState::Unknown(why) => format!("Slurm cannot say whether its jobs ended: {why}"),
        };
        let cfg = config::parse(&run.config_text, &run.config_path, &catalog).map_err(|e| {
            Error::bad_input(format!(
                "Slurm run {} ({why}): its config {} no longer loads: {e}",
                run.run_id,
                run.config_path.display()
            ))
        })?;
        let plan = Plan::from_config(&cfg);
        let engine = Engine::new(&plan, store, &catalog, run_ctx);
        engine.check_sources().map_err(|e| {
            Error::bad_input(format!(
                "Slurm run {} ({why}) reads a source this machine cannot see ({e}); \
                 cache gc would not know which results its jobs need, so it removes nothing",
                run.run_id
            ))
        })?;
        out.keep.extend(engine.stored_keys()?);
        out.live.insert(run.run_id, why);
    }
    Ok(out)
}

/// `exec-node RUN_DIR N LABEL`: the body of a Slurm job. Runs stage N of
/// the submitted run unless the store has it, writes the job's outcome for
/// the watcher, and returns the exit status (the line for the job's log
/// goes to `log`).
pub fn exec_node(
    run_dir: &Path,
    n: usize,
    label: &str,
    ctx: &Ctx,
    log: &mut dyn FnMut(&str),
) -> Result<Exit> {
    let job_started_ms = unix_ms();
    let dir = RunDir {
        path: run_dir.to_path_buf(),
    };
    let run = dir.read()?;
    let job = &ctx.ambient.slurm;
    let _ = std::fs::remove_file(dir.outcome(n));
    let mut stage_started_ms = job_started_ms;
    let result = if job.restarts > run.max_retries {
        NodeResult::Failed {
            error: format!(
                "lost {} times (node failure or requeue); executor.slurm.max_retries is {}",
                job.restarts, run.max_retries
            ),
            bad_input: false,
            log_tail: String::new(),
        }
    } else {
        match node(&run, label, job, ctx, &mut stage_started_ms, log) {
            Ok(r) => r,
            Err(e) => NodeResult::Failed {
                bad_input: e.exit() == Exit::BadInput,
                error: e.to_string(),
                log_tail: String::new(),
            },
        }
    };
    let stage_ended_ms = unix_ms();
    log(&match &result {
        NodeResult::Executed { wall_seconds, .. } => {
            format!("done     {label} in {wall_seconds:.2}s")
        }
        NodeResult::Cached { .. } => format!("cached   {label} (in the store; nothing to do)"),
        NodeResult::Failed { error, .. } => format!("FAILED   {label}: {error}"),
        NodeResult::Interrupted => format!("interrupted {label}"),
    });
    let exit = Exit::of_node(&result);
    if exit == Exit::Interrupted {
        return Ok(exit);
    }
    dir.write_outcome(
        n,
        &JobOutcome {
            label: label.to_string(),
            job_id: job.job_id.clone(),
            result,
            job_started_ms,
            stage_started_ms,
            stage_ended_ms,
            written_ms: unix_ms(),
            restarts: job.restarts,
        },
    )?;
    Ok(exit)
}

fn node(
    run: &RunFile,
    label: &str,
    job: &SlurmJobEnv,
    ctx: &Ctx,
    stage_started_ms: &mut u64,
    log: &mut dyn FnMut(&str),
) -> Result<NodeResult> {
    let catalog = store::catalog(ctx);
    let cfg = config::parse(&run.config_text, &run.config_path, &catalog)?;
    let plan = Plan::from_config(&cfg);
    let id = plan
        .nodes
        .iter()
        .position(|n| n.label == label)
        .ok_or_else(|| {
            Error::bad_input(format!(
                "no stage labelled `{label}` in the submitted config"
            ))
        })?;
    let root = match &run.node_store {
        Some(p) => ctx.ambient.expand_vars(p).into(),
        None => run.store.clone(),
    };
    let local = match (&run.node_store, LocalStore::open_existing(&root)) {
        (_, Some(s)) => s,
        (Some(_), None) => LocalStore::open(&root)?,
        (None, None) => {
            return Err(Error::bad_input(format!(
                "{}: the run's store is not visible on this node; put it on shared storage, \
                 or set executor.slurm.node_store with store.remote",
                root.display()
            )))
        }
    };
    let _held = store::hold(&local, ctx)?;
    let args = StoreArgs {
        store: None,
        remote: ctx.ambient.remote.clone(),
        remote_read_only: ctx.ambient.remote_read_only,
    };
    let store = store::with_remote(local, &args, Some(&cfg))?;
    let mut run_ctx = store::run_context()?;
    run_ctx
        .batch
        .insert("slurm_job_id".into(), job.job_id.clone());
    if let Some(node) = &job.node {
        run_ctx.batch.insert("slurm_node".into(), node.clone());
    }
    if job.restarts > 0 {
        run_ctx
            .batch
            .insert("slurm_restarts".into(), job.restarts.to_string());
    }
    let spec = plan.nodes[id].kind.spec();
    let device = if spec.needs_gpu && job.has_gpu {
        "cuda:0"
    } else {
        "cpu"
    };
    let threads = job.cpus.unwrap_or(run_ctx.cpus).max(1);
    let cancel = CancelToken::new();
    super::cancel_on_signals(&cancel)?;
    let engine = Engine::new(&plan, store.as_ref(), &catalog, &run_ctx);
    let opts = RunOptions {
        force: run.force.clone(),
        ..RunOptions::default()
    };
    *stage_started_ms = unix_ms();
    Ok(
        engine.run_node(id, &opts, device, threads, &cancel, &mut |e| {
            if let RunEvent::Started {
                label,
                reasons,
                device,
                ..
            } = e
            {
                let why: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                log(&format!("run      {label} on {device}: {}", why.join("; ")));
            }
        })?,
    )
}
