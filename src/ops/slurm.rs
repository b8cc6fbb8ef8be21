//! The commands' side of the Slurm executor: `run --executor slurm`
//! (submit, then follow or detach), `cancel`, the queue states `status`
//! shows, what `cache gc` keeps for live runs, and `exec-node`, the body of
//! every job (its `SLURM_*` read at the edge into [`SlurmJobEnv`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bsce_pipeline::config::executor::SlurmGroup;
use bsce_pipeline::config::{self, Config};
use bsce_pipeline::digest::Digest;
use bsce_pipeline::events::{RunEvent, RunSummary};
use bsce_pipeline::exec::context::unix_ms;
use bsce_pipeline::exec::node::NodeResult;
use bsce_pipeline::exec::slurm::{
    self, JobOutcome, QueueState, RunDir, RunFile, RunState, Submission,
};
use bsce_pipeline::exec::worker::WorkerPool;
use bsce_pipeline::exec::{CancelToken, Engine, RunContext, RunOptions};
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
    cold: bool,
    cancel: &CancelToken,
    reporter: &mut dyn bsce_pipeline::events::Reporter,
    ctx: &Ctx,
) -> Result<Option<RunSummary>> {
    let start = std::time::Instant::now();
    let status = engine.status(opts)?;
    let layout = slurm::layout(engine.plan, &status, &cfg.slurm, detach)?;
    let jobs = layout.jobs.len();
    if jobs > cfg.slurm.max_jobs as usize {
        return Err(Error::bad_input(format!(
            "{}: this run needs {}, above executor.slurm.max_jobs ({}); raise the limit{}, \
             or run part of the config first",
            cfg.file.display(),
            layout.describe(),
            cfg.slurm.max_jobs,
            if cfg.slurm.group == SlurmGroup::Stage {
                ", set executor.slurm.group: run"
            } else {
                ""
            }
        )));
    }
    // The kinds whose resources the jobs ask for.
    let kinds = slurm::kinds_of(layout.jobs.iter().map(|j| j.kind(engine.plan)));
    if !kinds.is_empty() {
        slurm::preflight(&cfg.slurm, &kinds).map_err(|e| Error::bad_input(e.to_string()))?;
    }
    if jobs + layout.local.len() > 0 {
        ctx.note(&format!(
            "{} stages to run: {}",
            jobs_stages(&layout),
            layout.describe()
        ));
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
        cold,
    };
    // The stages this machine runs need every source here; a run with
    // none does not ask for them.
    let local = if layout.local.is_empty() {
        None
    } else {
        Some(engine.node_runner()?)
    };
    let sub = Submission {
        settings: &cfg.slurm,
        local,
        run,
        dir: dir.clone(),
        exe: run_ctx.exe.clone(),
        env,
        detached: detach,
        threads: run_ctx.cpus.max(1),
    };
    let mut summary = RunSummary::default();
    let run = slurm::drive(
        engine.plan,
        opts,
        &status,
        &layout,
        sub,
        cancel,
        reporter,
        &mut summary,
    )?;
    if detach {
        ctx.note(&format!(
            "submitted {jobs} slurm jobs (run {id}, job name {name}); {cached} stages were in the store, \
             {local} ran here.\n\
             `bsce-pipe status {config}` shows their queue states, `bsce-pipe cancel {config}` cancels them.",
            id = run.run_id,
            name = RunDir::job_name(&run.run_id),
            cached = summary.cached,
            local = layout.local.len(),
            config = cfg.file.display(),
        ));
        return Ok(None);
    }
    summary.wall_seconds = start.elapsed().as_secs_f64();
    Ok(Some(summary))
}

/// The number of stages `layout` runs, in jobs and here.
fn jobs_stages(layout: &slurm::Layout) -> usize {
    layout.local.len() + layout.jobs.iter().map(|j| j.nodes.len()).sum::<usize>()
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
    /// The job runs a chain and is at an earlier stage of it, this one.
    pub behind: Option<String>,
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
        let at = first_undone(&run, |n| dir.outcome(n).exists());
        for (label, job) in &run.jobs {
            if dir.outcome(job.n).exists() {
                continue;
            }
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
                        behind: at
                            .get(job.id.as_str())
                            .filter(|(n, _)| *n != job.n)
                            .map(|(_, l)| l.to_string()),
                    },
                );
            }
        }
    }
    live
}

/// Job id -> (n, label) of its first stage without an outcome: a chain's
/// job runs its stages in plan order, so that is the one it is at.
fn first_undone(run: &RunFile, done: impl Fn(usize) -> bool) -> BTreeMap<&str, (usize, &str)> {
    let mut at: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (label, job) in &run.jobs {
        if !done(job.n) {
            let e = at.entry(job.id.as_str()).or_insert((job.n, label));
            if job.n < e.0 {
                *e = (job.n, label);
            }
        }
    }
    at
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
        "RUNNING" | "COMPLETING" => match &job.behind {
            Some(first) => (
                "queued",
                format!("slurm job {id} on {}, after {first} in its chain", q.node),
            ),
            None => ("running", format!("slurm job {id} on {}", q.node)),
        },
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
        // A run chain's stages share one job: each id once.
        let ids: Vec<String> = run
            .jobs
            .values()
            .filter(|j| states.get(&j.id).is_some_and(|q| slurm::is_live(&q.state)))
            .map(|j| j.id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
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

/// `exec-node RUN_DIR N=LABEL...`: the body of a Slurm job. Runs its
/// stages (one, or a training run's chain) in order, each unless the store
/// has it, stores each as it finishes and writes each one's outcome for the
/// watcher, so a job started again resumes at its first stage not in the
/// store. A stage that reads one that failed in this job is skipped; the
/// others go on. Returns the exit status (of the first stage that did not
/// succeed); the lines for the job's log go to `log`.
pub fn exec_node(
    run_dir: &Path,
    stages: &[String],
    ctx: &Ctx,
    log: &mut dyn FnMut(&str),
) -> Result<Exit> {
    let job_started_ms = unix_ms();
    let dir = RunDir {
        path: run_dir.to_path_buf(),
    };
    let stages: Vec<(usize, &str)> = stages
        .iter()
        .map(|s| {
            s.split_once('=')
                .and_then(|(n, l)| Some((n.parse().ok()?, l)))
                .ok_or_else(|| Error::bad_input(format!("`{s}`: expected N=LABEL")))
        })
        .collect::<Result<_>>()?;
    let run = dir.read()?;
    let job = &ctx.ambient.slurm;
    if stages.len() == 1 {
        // A stage alone: an outcome from an attempt before a requeue
        // would read as this one's.
        let _ = std::fs::remove_file(dir.outcome(stages[0].0));
    }
    let outcome = |n: usize, label: &str, result: NodeResult, started: u64| {
        dir.write_outcome(
            n,
            &JobOutcome {
                label: label.to_string(),
                job_id: job.job_id.clone(),
                result,
                job_started_ms,
                stage_started_ms: started,
                stage_ended_ms: unix_ms(),
                written_ms: unix_ms(),
                restarts: job.restarts,
            },
        )
    };
    if job.restarts > run.max_retries {
        let error = format!(
            "lost {} times (node failure or requeue); executor.slurm.max_retries is {}",
            job.restarts, run.max_retries
        );
        // Stages an earlier attempt stored keep their outcome (the
        // watcher has reported them done).
        let left: Vec<(usize, &str)> = stages
            .iter()
            .copied()
            .filter(|&(n, _)| !dir.stored(n))
            .collect();
        if left.is_empty() {
            return Ok(Exit::Success);
        }
        for &(n, label) in &left {
            log(&format!("FAILED   {label}: {error}"));
            let failed = NodeResult::Failed {
                error: error.clone(),
                bad_input: false,
                log_tail: String::new(),
            };
            outcome(n, label, failed, job_started_ms)?;
        }
        return Ok(Exit::Failed);
    }
    let mut results = Vec::new();
    let mut run_stages = |results: &mut Vec<NodeResult>| -> Result<()> {
        with_job_engine(&run, job, ctx, &mut |engine, cancel| {
            let runner = engine.node_runner()?;
            // Stages of this job that did not succeed -> the stage that
            // failed first.
            let mut failed: BTreeMap<usize, String> = BTreeMap::new();
            for &(n, label) in &stages {
                let id = node_id(engine.plan, label)?;
                let started = unix_ms();
                let upstream = engine.plan.nodes[id]
                    .inputs
                    .iter()
                    .find_map(|i| failed.get(&i.node).cloned());
                let result = match upstream {
                    Some(because) => NodeResult::Skipped { because },
                    None => runner.run(
                        id,
                        &engine_opts(&run),
                        job_device(engine.plan, id, job),
                        job.cpus.unwrap_or(engine.ctx.cpus).max(1),
                        cancel,
                        &mut |e| {
                            if let RunEvent::Started {
                                label,
                                reasons,
                                device,
                                ..
                            } = e
                            {
                                let why: Vec<String> =
                                    reasons.iter().map(|r| r.to_string()).collect();
                                log(&format!("run      {label} on {device}: {}", why.join("; ")));
                            }
                        },
                    )?,
                };
                // Slurm signals every process of a job it cancels, times
                // out or preempts: a stage that failed because its worker
                // got the signal first is interrupted, not failed (an
                // outcome written now would outlive a requeue).
                let result = match result {
                    NodeResult::Failed { .. } if cancel.is_cancelled() => NodeResult::Interrupted,
                    r => r,
                };
                log(&match &result {
                    NodeResult::Executed { wall_seconds, .. } => {
                        format!("done     {label} in {wall_seconds:.2}s")
                    }
                    NodeResult::Cached { .. } => {
                        format!("cached   {label} (in the store; nothing to do)")
                    }
                    NodeResult::Failed { error, .. } => format!("FAILED   {label}: {error}"),
                    NodeResult::Interrupted => format!("interrupted {label}"),
                    NodeResult::Skipped { because } => {
                        format!("skipped  {label} (downstream of {because})")
                    }
                });
                match &result {
                    NodeResult::Interrupted => {
                        results.push(result);
                        return Ok(());
                    }
                    NodeResult::Failed { .. } => {
                        failed.insert(id, label.to_string());
                    }
                    NodeResult::Skipped { because } => {
                        failed.insert(id, because.clone());
                    }
                    _ => {}
                }
                outcome(n, label, result.clone(), started)?;
                results.push(result);
            }
            Ok(())
        })
    };
    if let Err(e) = run_stages(&mut results) {
        // The job could not start its stages (its store, its config): each
        // stage not yet done fails with that error.
        let error = e.to_string();
        let bad_input = e.exit() == Exit::BadInput;
        log(&format!("FAILED   {error}"));
        for &(n, label) in &stages[results.len()..] {
            let failed = NodeResult::Failed {
                error: error.clone(),
                bad_input,
                log_tail: String::new(),
            };
            outcome(n, label, failed.clone(), unix_ms())?;
            results.push(failed);
        }
    }
    if results.contains(&NodeResult::Interrupted) {
        return Ok(Exit::Interrupted);
    }
    Ok(results
        .iter()
        .map(Exit::of_node)
        .find(|e| *e != Exit::Success)
        .unwrap_or(Exit::Success))
}

/// The stage labelled `label` in the submitted config.
fn node_id(plan: &Plan, label: &str) -> Result<usize> {
    plan.nodes
        .iter()
        .position(|n| n.label == label)
        .ok_or_else(|| {
            Error::bad_input(format!(
                "no stage labelled `{label}` in the submitted config"
            ))
        })
}

/// The run's options as every job applies them.
fn engine_opts(run: &RunFile) -> RunOptions {
    RunOptions {
        force: run.force.clone(),
        ..RunOptions::default()
    }
}

/// `cuda:0` for a stage that needs a GPU in a job that has one.
fn job_device(plan: &Plan, id: usize, job: &SlurmJobEnv) -> &'static str {
    if plan.nodes[id].kind.spec().needs_gpu && job.has_gpu {
        "cuda:0"
    } else {
        "cpu"
    }
}

/// Sets up what a job's stages run with (the submitted config, the store
/// the run file names, held shared against `cache gc`, its remote, warm
/// workers unless the run was cold) and calls `body` with the engine.
fn with_job_engine(
    run: &RunFile,
    job: &SlurmJobEnv,
    ctx: &Ctx,
    body: &mut dyn FnMut(&Engine, &CancelToken) -> Result<()>,
) -> Result<()> {
    let catalog = store::catalog(ctx);
    let cfg = config::parse(&run.config_text, &run.config_path, &catalog)?;
    let plan = Plan::from_config(&cfg);
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
    // Every job of a run records the run's id: the report's timeline of a
    // run of `run` holds its Slurm jobs' stages too.
    run_ctx.run_id = run.run_id.clone();
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
    let cancel = CancelToken::new();
    super::cancel_on_signals(&cancel)?;
    // libtorch's stages of the job share a warm worker unless the run
    // was cold; the pool ends it when the job's stages are done.
    let pool = WorkerPool::new();
    let mut engine = Engine::new(&plan, store.as_ref(), &catalog, &run_ctx);
    if !run.cold {
        engine.executor = &pool;
    }
    body(&engine, &cancel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bsce_pipeline::config::executor::SlurmSettings;
    use bsce_pipeline::exec::slurm::Place;
    use bsce_pipeline::exec::NodeStatus;
    use bsce_pipeline::registry::StageKind;
    use bsce_stages::stage::Catalog;

    /// A running chain's job is at its first stage without an outcome:
    /// that one shows `running`, the later ones `queued` behind it.
    #[test]
    fn a_running_chain_shows_one_stage_running_and_the_rest_queued_behind_it() {
        let job = |id: &str, n: usize| slurm::Job {
            id: id.into(),
            n,
            after: Vec::new(),
            log: None,
        };
        let run = RunFile {
            run_id: "r".into(),
            config_path: "c.yaml".into(),
            config_text: String::new(),
            store: "s".into(),
            node_store: None,
            force: Vec::new(),
            max_retries: 2,
            submitted_unix_ms: 0,
            jobs: BTreeMap::from([
                ("evaluate/t1".to_string(), job("7", 4)),
                ("train/t1".to_string(), job("7", 3)),
                ("train/t2".to_string(), job("7", 5)),
                ("prepare/d".to_string(), job("6", 0)),
            ]),
            cancelled: false,
            cold: false,
        };
        let at = first_undone(&run, |n| n == 3 || n == 0);
        assert_eq!(
            at.into_iter().collect::<Vec<_>>(),
            [("7", (4, "evaluate/t1"))]
        );
        let live = |behind: Option<&str>| LiveJob {
            id: "7".into(),
            queue: QueueState {
                state: "RUNNING".into(),
                node: "n1".into(),
                reason: String::new(),
            },
            current: true,
            behind: behind.map(String::from),
        };
        assert_eq!(describe(&live(None)).0, "running");
        assert_eq!(
            describe(&live(Some("evaluate/t1"))),
            (
                "queued",
                "slurm job 7 on n1, after evaluate/t1 in its chain".to_string()
            )
        );
    }

    /// The paper's config under Slurm with the defaults: a job per
    /// training run's chain and per base task that runs share, a job per
    /// dataset preparation, everything else on the submitting machine; with
    /// `group: stage` and no local kinds, a job per stage.
    #[test]
    fn the_paper_config_is_a_job_per_training_run_not_per_stage() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/paper.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let catalog = Catalog {
            salts: Default::default(),
        };
        let cfg = config::parse(&text, &path, &catalog).unwrap();
        let plan = Plan::from_config(&cfg);
        let status = vec![
            NodeStatus::ToRun {
                key: None,
                reasons: Vec::new()
            };
            plan.nodes.len()
        ];
        let count = |k: StageKind| plan.nodes.iter().filter(|n| n.kind == k).count();
        let layout = slurm::layout(&plan, &status, &SlurmSettings::default(), false).unwrap();
        // The chains, counted from the runs: each run's stages that no
        // other run holds, and one job per set of runs sharing stages.
        let mut sets: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (r, run) in plan.runs.iter().enumerate() {
            for &n in run.trains.iter().chain(&run.evaluations) {
                sets.entry(n).or_default().push(r);
            }
        }
        // Shared train stages: a job per set of runs sharing them.
        // Evaluations: in their first run's chain (only result stages read
        // them, so a failure there holds up no other run).
        let chains: BTreeSet<&Vec<usize>> = sets
            .iter()
            .filter(|(&n, r)| r.len() == 1 || plan.nodes[n].kind == StageKind::Train)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(layout.counts(), (chains.len(), count(StageKind::Prepare)));
        for (&n, runs) in &sets {
            let first = &plan.runs[runs[0]];
            let own = first
                .trains
                .iter()
                .chain(&first.evaluations)
                .find(|m| sets[m].len() == 1);
            match plan.nodes[n].kind {
                StageKind::Evaluate if runs.len() > 1 => {
                    if let Some(own) = own {
                        assert_eq!(
                            layout.place[n], layout.place[*own],
                            "{}",
                            plan.nodes[n].label
                        );
                    }
                }
                StageKind::Train if runs.len() > 1 => {
                    let Place::Job(j) = layout.place[n] else {
                        panic!()
                    };
                    assert!(layout.jobs[j]
                        .nodes
                        .iter()
                        .all(|&m| plan.nodes[m].kind == StageKind::Train));
                }
                _ => {}
            }
        }
        assert!(chains.len() < plan.runs.len() * 2, "{}", chains.len());
        let local = count(StageKind::Order)
            + count(StageKind::Tasks)
            + count(StageKind::Aggregate)
            + count(StageKind::Render)
            + count(StageKind::Plot);
        assert_eq!(layout.local.len(), local);
        // Every run's stages past its shared ones are one job.
        for run in &plan.runs {
            let own: BTreeSet<_> = run
                .trains
                .iter()
                .chain(&run.evaluations)
                .filter(|n| sets[n].len() == 1)
                .map(|&n| layout.place[n])
                .collect();
            assert_eq!(own.len(), 1, "{} {}", run.method, run.setting);
        }
        let stage = SlurmSettings {
            group: bsce_pipeline::config::executor::SlurmGroup::Stage,
            local_kinds: Vec::new(),
            ..SlurmSettings::default()
        };
        let per_stage = slurm::layout(&plan, &status, &stage, false).unwrap();
        assert_eq!(per_stage.jobs.len(), plan.nodes.len());
        eprintln!(
            "paper.yaml: {} stages; group: run {}; group: stage, no local kinds: {} jobs",
            plan.nodes.len(),
            layout.describe(),
            per_stage.jobs.len()
        );
    }
}
