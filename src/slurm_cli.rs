//! The command-line side of the Slurm executor: `run --executor slurm`
//! (submit, then follow or detach), `cancel`, the queue states `status`
//! shows, and `exec-node`, the body of every job.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
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

use crate::{catalog, hold_store, run_context, with_remote, BadInput, StoreArgs};

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
    ctx: &RunContext,
    env: Vec<(String, String)>,
    detach: bool,
    cancel: &CancelToken,
    reporter: &mut dyn bsce_pipeline::events::Reporter,
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
        slurm::preflight(&cfg.slurm, &kinds).map_err(|e| BadInput(e.to_string()))?;
    }
    let root = engine.store.local().root().to_path_buf();
    let dir = RunDir::new(&root, &ctx.run_id);
    let config_text = std::fs::read_to_string(&cfg.file)
        .map_err(|e| BadInput(format!("{}: {e}", cfg.file.display())))?;
    let run = RunFile {
        run_id: ctx.run_id.clone(),
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
        exe: ctx.exe.clone(),
        env,
    };
    let mut summary = RunSummary::default();
    let run = engine.submit_slurm(&status, sub, reporter, &mut summary)?;
    if detach {
        let _ = writeln!(
            std::io::stderr(),
            "submitted {jobs} slurm jobs (run {id}, job name {name}); {cached} stages were in the store.\n\
             `bsce-pipe status {config}` shows their queue states, `bsce-pipe cancel {config}` cancels them.",
            jobs = run.jobs.len(),
            id = run.run_id,
            name = RunDir::job_name(&run.run_id),
            cached = summary.cached,
            config = cfg.file.display(),
        );
        return Ok(None);
    }
    if !run.jobs.is_empty() {
        let poll = Duration::from_secs_f64(cfg.slurm.poll_seconds);
        engine.watch_slurm(&dir, &run, poll, cancel, reporter, &mut summary)?;
    }
    summary.wall_seconds = start.elapsed().as_secs_f64();
    Ok(Some(summary))
}

/// The live jobs of `cfg`'s Slurm runs in this store: label -> (job id,
/// queue state). Asks Slurm only when such a run exists; a machine
/// without Slurm commands shows none.
pub fn live_jobs(root: &Path, cfg: &Config) -> BTreeMap<String, (String, QueueState)> {
    let mut live = BTreeMap::new();
    for dir in RunDir::all(root) {
        let Ok(run) = dir.read() else { continue };
        if run.config_path != cfg.file || run.cancelled {
            continue;
        }
        let Ok(states) = slurm::queue_states(&run.run_id) else {
            continue;
        };
        for (label, job) in &run.jobs {
            if let Some(q) = states.get(&job.id).filter(|q| slurm::is_live(&q.state)) {
                live.insert(label.clone(), (job.id.clone(), q.clone()));
            }
        }
    }
    live
}

/// `status`'s word and detail for a stage with a live job.
pub fn describe(job: &str, q: &QueueState) -> (&'static str, String) {
    match q.state.as_str() {
        "PENDING" => ("queued", format!("slurm job {job} PENDING ({})", q.reason)),
        "RUNNING" | "COMPLETING" => ("running", format!("slurm job {job} on {}", q.node)),
        other => ("queued", format!("slurm job {job} {other}")),
    }
}

/// `cancel CONFIG`: scancel every live job of the config's runs.
pub fn cancel(root: &Path, cfg: &Config) -> Result<ExitCode> {
    let mut total = 0;
    for dir in RunDir::all(root) {
        let Ok(mut run) = dir.read() else { continue };
        if run.config_path != cfg.file {
            continue;
        }
        let states = slurm::queue_states(&run.run_id).map_err(|e| BadInput(e.to_string()))?;
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
        total += ids.len();
        let _ = writeln!(
            std::io::stderr(),
            "cancelled {} slurm jobs of run {} ({})",
            ids.len(),
            run.run_id,
            ids.join(" ")
        );
    }
    if total == 0 {
        let _ = writeln!(
            std::io::stderr(),
            "no queued or running slurm jobs for {}",
            cfg.file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `cache gc` must keep for the store's Slurm runs: every result
/// that a live run's config reaches (its queued jobs will read them, and
/// no lock is held between two jobs), and the folders of finished runs,
/// which gc removes.
pub struct GcSlurmRuns {
    pub keep: BTreeSet<Digest>,
    /// Run id -> its jobs queued or running, or why Slurm could not say.
    pub live: BTreeMap<String, String>,
    pub finished: Vec<PathBuf>,
}

pub fn gc_slurm_runs(store: &LocalStore, ctx: &RunContext) -> Result<GcSlurmRuns> {
    let catalog = catalog();
    let mut out = GcSlurmRuns {
        keep: BTreeSet::new(),
        live: BTreeMap::new(),
        finished: Vec::new(),
    };
    for dir in RunDir::all(store.root()) {
        let run = dir.read().map_err(|e| {
            BadInput(format!(
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
            BadInput(format!(
                "Slurm run {} ({why}): its config {} no longer loads: {e}",
                run.run_id,
                run.config_path.display()
            ))
        })?;
        let plan = Plan::from_config(&cfg);
        let engine = Engine::new(&plan, store, &catalog, ctx);
        engine.check_sources().map_err(|e| {
            BadInput(format!(
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

/// The body of a Slurm job. Whatever happens after the run file is read,
/// an outcome is written for the submitter, and the exit status tells
/// Slurm whether dependants may start.
pub fn exec_node(run_dir: &Path, n: usize, label: &str) -> Result<ExitCode> {
    let job_started_ms = unix_ms();
    let dir = RunDir {
        path: run_dir.to_path_buf(),
    };
    let run = dir.read()?;
    let job_id = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    let restarts: u32 = std::env::var("SLURM_RESTART_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // An outcome left by an earlier attempt of this job (requeued after a
    // node failure) must not be read as this attempt's.
    let _ = std::fs::remove_file(dir.outcome(n));
    let mut stage_started_ms = job_started_ms;
    let result = if restarts > run.max_retries {
        NodeResult::Failed {
            error: format!(
                "lost {restarts} times (node failure or requeue); executor.slurm.max_retries is {}",
                run.max_retries
            ),
            bad_input: false,
            log_tail: String::new(),
        }
    } else {
        match node(&run, label, &job_id, restarts, &mut stage_started_ms) {
            Ok(r) => r,
            Err(e) => NodeResult::Failed {
                error: format!("{e:#}"),
                bad_input: e.downcast_ref::<BadInput>().is_some()
                    || e.downcast_ref::<config::ConfigError>().is_some(),
                log_tail: String::new(),
            },
        }
    };
    let stage_ended_ms = unix_ms();
    let line = match &result {
        NodeResult::Executed { wall_seconds, .. } => {
            format!("done     {label} in {wall_seconds:.2}s")
        }
        NodeResult::Cached { .. } => format!("cached   {label} (in the store; nothing to do)"),
        NodeResult::Failed { error, .. } => format!("FAILED   {label}: {error}"),
        NodeResult::Interrupted => format!("interrupted {label}"),
    };
    println!("{line}");
    let code = result.exit_code();
    if result == NodeResult::Interrupted {
        // Cancelled, or requeued: Slurm (and a later attempt) says which;
        // an outcome here would be read as the job's last word.
        return Ok(ExitCode::from(code));
    }
    dir.write_outcome(
        n,
        &JobOutcome {
            label: label.to_string(),
            job_id,
            result,
            job_started_ms,
            stage_started_ms,
            stage_ended_ms,
            written_ms: unix_ms(),
            restarts,
        },
    )?;
    Ok(ExitCode::from(code))
}

fn node(
    run: &RunFile,
    label: &str,
    job_id: &str,
    restarts: u32,
    stage_started_ms: &mut u64,
) -> Result<NodeResult> {
    let catalog = catalog();
    let cfg = config::parse(&run.config_text, &run.config_path, &catalog)?;
    let plan = Plan::from_config(&cfg);
    let id = plan
        .nodes
        .iter()
        .position(|n| n.label == label)
        .ok_or_else(|| {
            BadInput(format!(
                "no stage labelled `{label}` in the submitted config"
            ))
        })?;
    let root = match &run.node_store {
        Some(p) => expand_vars(p).into(),
        None => run.store.clone(),
    };
    let local = match (&run.node_store, LocalStore::open_existing(&root)) {
        (_, Some(s)) => s,
        (Some(_), None) => LocalStore::open(&root)?,
        (None, None) => {
            return Err(BadInput(format!(
                "{}: the run's store is not visible on this node; put it on shared storage, \
                 or set executor.slurm.node_store with store.remote",
                root.display()
            ))
            .into())
        }
    };
    let _held = hold_store(&local)?;
    let args = StoreArgs {
        store: None,
        remote: std::env::var("BSCE_REMOTE").ok().filter(|s| !s.is_empty()),
        remote_read_only: std::env::var("BSCE_REMOTE_READ_ONLY").is_ok_and(|v| v == "true"),
    };
    let store = with_remote(local, &args, Some(&cfg))?;
    let mut ctx = run_context()?;
    ctx.batch.insert("slurm_job_id".into(), job_id.to_string());
    if let Ok(node) = std::env::var("SLURMD_NODENAME") {
        ctx.batch.insert("slurm_node".into(), node);
    }
    if restarts > 0 {
        ctx.batch
            .insert("slurm_restarts".into(), restarts.to_string());
    }
    let spec = plan.nodes[id].kind.spec();
    // Slurm sets SLURM_JOB_GPUS only when the job was given GPUs (gres).
    let device = if spec.needs_gpu && std::env::var("SLURM_JOB_GPUS").is_ok_and(|g| !g.is_empty()) {
        "cuda:0"
    } else {
        "cpu"
    };
    // The CPUs Slurm gave the job (`--cpus-per-task`, else its share of
    // the node, e.g. "1" or "2(x3)"); all of the machine's would
    // oversubscribe a node shared with other jobs.
    let threads = ["SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE"]
        .iter()
        .find_map(|v| {
            let s = std::env::var(v).ok()?;
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .unwrap_or(ctx.cpus)
        .max(1);
    let cancel = CancelToken::new();
    crate::cancel_on_signals(&cancel)?;
    let engine = Engine::new(&plan, store.as_ref(), &catalog, &ctx);
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
                println!("run      {label} on {device}: {}", why.join("; "));
            }
        })?,
    )
}

/// `$VAR` and `${VAR}` from the job's environment (unset: empty).
fn expand_vars(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(b) = after.strip_prefix('{') {
            match b.find('}') {
                Some(j) => (&b[..j], &b[j + 1..]),
                None => (b, ""),
            }
        } else {
            let j = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..j], &after[j..])
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(&std::env::var(name).unwrap_or_default());
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand_vars;

    #[test]
    fn node_store_paths_expand_the_jobs_variables() {
        std::env::set_var("BSCE_TEST_X", "alice");
        assert_eq!(
            expand_vars("/scratch/$BSCE_TEST_X/bsce"),
            "/scratch/alice/bsce"
        );
        assert_eq!(expand_vars("/s/${BSCE_TEST_X}x"), "/s/alicex");
        assert_eq!(expand_vars("/s/$/x"), "/s/$/x");
        assert_eq!(expand_vars("/s/$BSCE_TEST_UNSET_Y/x"), "/s//x");
    }
}
