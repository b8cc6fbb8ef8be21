//! The whole DAG as Slurm jobs. Every stage that is not in the store
//! becomes one `sbatch` job running `bsce-pipe exec-node RUN_DIR LABEL`
//! ([`super::node`]), with `--dependency=afterok:` on the jobs of the stages
//! it reads, so the DAG is submitted at once and Slurm orders it. A job
//! finds its inputs in the store (a shared filesystem, or a node-local
//! store over the remote cache), derives its key, exits at once if the
//! stage is there, else runs it and records it, and writes its outcome to
//! the run folder, where the submitting process (or `status`) reads it.
//!
//! The run folder (`<store>/slurm/<run id>/`, on storage the nodes see):
//! `run.json` (config text, store, the job of each label),
//! `logs/<n>.out` (each job's output), `outcomes/<n>.json` (how each ended).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::child::tail;
use super::node::NodeResult;
use super::{CancelToken, EngineError, NodeStatus};
use crate::events::{Reporter, RunEvent, RunSummary};
use crate::plan::{NodeId, Plan};
use crate::registry::StageKind;
use crate::store::atomic::write_atomic;

pub use crate::config::executor::{SlurmResources, SlurmSettings};

/// The `sbatch` flags of `r`, `extra` last.
pub(crate) fn sbatch_args(r: &SlurmResources) -> Vec<String> {
    let mut a = Vec::new();
    let mut opt = |flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            a.push(format!("--{flag}={v}"));
        }
    };
    opt("partition", &r.partition);
    opt("account", &r.account);
    opt("cpus-per-task", &r.cpus.map(|c| c.to_string()));
    opt("mem", &r.mem);
    opt("time", &r.time);
    opt("gres", &r.gres);
    a.extend(r.extra.iter().cloned());
    a
}

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("`{0}` not found on PATH: the Slurm executor needs the Slurm client commands (sbatch, squeue, scancel, scontrol) of a submit host")]
    Missing(&'static str),
    #[error("`{command}` failed{}: {stderr}", exit.map(|c| format!(" (exit {c})")).unwrap_or_default())]
    Command {
        command: String,
        exit: Option<i32>,
        stderr: String,
    },
    #[error("sbatch refuses the resources of executor.slurm{} ({args}): {stderr}", kind.map(|k| format!(".kinds.{k}")).unwrap_or_default())]
    Rejected {
        kind: Option<StageKind>,
        args: String,
        stderr: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    BadRunFile { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlurmError + '_ {
    move |source| SlurmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a Slurm command; its stdout, or the command's stderr as an error.
fn slurm(program: &'static str, args: &[String]) -> Result<String, SlurmError> {
    slurm_env(program, args, &[])
}

/// [`slurm`] with more environment variables (`sbatch` hands its
/// environment to the job).
fn slurm_env(
    program: &'static str,
    args: &[String],
    env: &[(String, String)],
) -> Result<String, SlurmError> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SlurmError::Missing(program),
            _ => SlurmError::Command {
                command: program.into(),
                exit: None,
                stderr: e.to_string(),
            },
        })?;
    if !out.status.success() {
        return Err(SlurmError::Command {
            command: format!("{program} {}", args.join(" ")),
            exit: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The run file: all a job needs besides its own label.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    pub run_id: String,
    /// The config as it was when the run was submitted, and where it was
    /// (paths in it are relative to that).
    pub config_path: PathBuf,
    pub config_text: String,
    /// The submitter's store; jobs use it unless `node_store` is set.
    pub store: PathBuf,
    pub node_store: Option<String>,
    pub force: Vec<String>,
    pub max_retries: u32,
    pub submitted_unix_ms: u64,
    /// Label -> its job (in plan order of submission).
    pub jobs: BTreeMap<String, Job>,
    /// Set by `cancel` and by an interrupted run.
    #[serde(default)]
    pub cancelled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub id: String,
    /// Index into `logs/` and `outcomes/` (labels hold '/').
    pub n: usize,
    /// The jobs it waits for.
    pub after: Vec<String>,
}

/// An outcome file: how a job ended, and when (for the overhead bench).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobOutcome {
    pub label: String,
    pub job_id: String,
    #[serde(flatten)]
    pub result: NodeResult,
    /// When the job's process started, its stage started and ended, and
    /// the outcome was written (Unix ms).
    pub job_started_ms: u64,
    pub stage_started_ms: u64,
    pub stage_ended_ms: u64,
    pub written_ms: u64,
    pub restarts: u32,
}

/// A run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(store_root: &Path, run_id: &str) -> RunDir {
        RunDir {
            path: store_root.join("slurm").join(run_id),
        }
    }

    /// Every run folder of the store, oldest first.
    pub fn all(store_root: &Path) -> Vec<RunDir> {
        let mut v: Vec<RunDir> = fs::read_dir(store_root.join("slurm"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("run.json").is_file())
            .map(|e| RunDir { path: e.path() })
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    pub(crate) fn run_file(&self) -> PathBuf {
        self.path.join("run.json")
    }
    pub fn log(&self, n: usize) -> PathBuf {
        self.path.join("logs").join(format!("{n}.out"))
    }
    pub fn outcome(&self, n: usize) -> PathBuf {
        self.path.join("outcomes").join(format!("{n}.json"))
    }

    pub fn read(&self) -> Result<RunFile, SlurmError> {
        let p = self.run_file();
        let bytes = fs::read(&p).map_err(io(&p))?;
        serde_json::from_slice(&bytes).map_err(|e| SlurmError::BadRunFile {
            path: p,
            message: e.to_string(),
        })
    }

    pub fn write(&self, run: &RunFile) -> Result<(), SlurmError> {
        let p = self.run_file();
        let mut bytes = serde_json::to_vec_pretty(run).expect("serialises");
        bytes.push(b'\n');
        write_atomic(&p, &self.path, &bytes).map_err(io(&p))
    }

    pub(crate) fn read_outcome(&self, n: usize) -> Option<JobOutcome> {
        let bytes = fs::read(self.outcome(n)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_outcome(&self, n: usize, o: &JobOutcome) -> Result<(), SlurmError> {
        let p = self.outcome(n);
        fs::create_dir_all(p.parent().expect("has a parent")).map_err(io(&p))?;
        write_atomic(
            &p,
            &self.path,
            &serde_json::to_vec_pretty(o).expect("serialises"),
        )
        .map_err(io(&p))
    }

    /// The job name every job of this run carries, for `squeue --name`.
    pub fn job_name(run_id: &str) -> String {
        format!("bsce-{run_id}")
    }
}

/// Whether a run folder's jobs may still run (what `cache gc` must keep
/// for it, and whether its folder can go).
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// Cancelled, every job wrote its outcome, or Slurm lists none of its
    /// jobs as queued or running.
    Finished,
    /// Jobs of the run are queued or running (how many).
    Live(usize),
    /// Some jobs wrote no outcome and Slurm cannot be asked (why): taken
    /// as live, since a queued job cannot be told from a lost one.
    Unknown(String),
}

impl RunDir {
    /// The run's state; asks Slurm only when some job has no outcome.
    pub fn state(&self, run: &RunFile) -> RunState {
        if run.cancelled || run.jobs.values().all(|j| self.outcome(j.n).is_file()) {
            return RunState::Finished;
        }
        match queue_states(&run.run_id) {
            Ok(states) => {
                let live = run
                    .jobs
                    .values()
                    .filter(|j| states.get(&j.id).is_some_and(|q| is_live(&q.state)))
                    .count();
                if live == 0 {
                    RunState::Finished
                } else {
                    RunState::Live(live)
                }
            }
            Err(e) => RunState::Unknown(e.to_string()),
        }
    }
}

/// A job's queue state as `squeue` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueState {
    pub state: String,
    pub node: String,
    pub reason: String,
}

/// The queue states of a run's jobs (job id -> state); jobs Slurm no
/// longer lists are absent.
pub fn queue_states(run_id: &str) -> Result<BTreeMap<String, QueueState>, SlurmError> {
    let out = slurm(
        "squeue",
        &[
            "--noheader".into(),
            "--states=all".into(),
            format!("--name={}", RunDir::job_name(run_id)),
            "--format=%i|%T|%N|%r".into(),
        ],
    )?;
    Ok(parse_queue(&out))
}

/// `squeue --format=%i|%T|%N|%r` lines -> job id -> state.
fn parse_queue(out: &str) -> BTreeMap<String, QueueState> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(4, '|');
            let id = f.next()?.to_string();
            Some((
                id,
                QueueState {
                    state: f.next()?.to_string(),
                    node: f.next().unwrap_or("").to_string(),
                    reason: f.next().unwrap_or("").to_string(),
                },
            ))
        })
        .collect()
}

/// Whether a `squeue` state means the job may still run.
pub fn is_live(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "REQUEUED"
            | "REQUEUE_FED"
            | "REQUEUE_HOLD"
            | "RESIZING"
            | "SUSPENDED"
            | "STAGE_OUT"
            | "SIGNALING"
    )
}

/// How Slurm says a job ended, when it wrote no outcome: `scontrol`
/// while it remembers the job, else the accounting (`sacct`, or `sacct -c`
/// on a cluster that only logs completions to a file).
pub(crate) fn final_state(job: &str) -> Option<(String, String)> {
    if let Ok(out) = slurm(
        "scontrol",
        &["-o".into(), "show".into(), "job".into(), job.into()],
    ) {
        let field = |name: &str| {
            out.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .map(String::from)
        };
        if let Some(state) = field("JobState=") {
            return Some((state, field("Reason=").unwrap_or_default()));
        }
    }
    for extra in [None, Some("-c")] {
        let mut args: Vec<String> = vec![
            "--noheader".into(),
            "--parsable2".into(),
            "-j".into(),
            job.into(),
            "-o".into(),
            "State".into(),
        ];
        if let Some(e) = extra {
            args.insert(0, e.into());
        }
        if let Ok(out) = slurm("sacct", &args) {
            if let Some(s) = out.lines().next().filter(|s| !s.trim().is_empty()) {
                return Some((s.trim().to_string(), String::new()));
            }
        }
    }
    None
}

/// Checks that Slurm can take this run before anything is submitted: the
/// commands exist, and `sbatch --test-only` accepts each kind's resources
/// (an unknown partition, account or gres is refused here).
pub fn preflight(settings: &SlurmSettings, kinds: &[StageKind]) -> Result<(), SlurmError> {
    for c in ["sbatch", "squeue", "scancel", "scontrol"] {
        if which(c).is_none() {
            return Err(SlurmError::Missing(c));
        }
    }
    let mut seen: Vec<SlurmResources> = Vec::new();
    for &k in kinds {
        let r = settings.resources(k);
        if seen.contains(&r) {
            continue;
        }
        let mut args = vec!["--test-only".to_string(), "--job-name=bsce-check".into()];
        args.extend(sbatch_args(&r));
        args.extend(["--wrap".into(), "true".into()]);
        if let Err(e) = slurm("sbatch", &args) {
            let stderr = match e {
                SlurmError::Command { stderr, .. } => stderr,
                other => return Err(other),
            };
            return Err(SlurmError::Rejected {
                kind: settings.kinds.contains_key(&k).then_some(k),
                args: sbatch_args(&r).join(" "),
                stderr,
            });
        }
        seen.push(r);
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|f| f.is_file())
    })
}

/// Quotes `s` for the job's `/bin/sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Cancels jobs (ids); jobs already gone are fine.
pub fn cancel_jobs(ids: &[String]) -> Result<(), SlurmError> {
    for chunk in ids.chunks(500) {
        match slurm("scancel", chunk) {
            Ok(_) => {}
            // scancel exits 1 when some job already ended; the rest are
            // cancelled all the same.
            Err(SlurmError::Command { stderr, .. })
                if stderr.contains("Invalid job id") || stderr.contains("already completing") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What `submit` needs besides the plan.
pub struct Submission<'a> {
    pub settings: &'a SlurmSettings,
    pub run: RunFile,
    pub dir: RunDir,
    /// The `bsce-pipe` binary the jobs run (on storage the nodes share).
    pub exe: PathBuf,
    /// Variables the jobs get besides the submitter's environment (which
    /// sbatch hands on): the remote named by a flag. Never written to disk.
    pub env: Vec<(String, String)>,
}

/// Submits a job for every stage of the plan that is not in the store,
/// in plan order, each after the jobs of its inputs. All or nothing: a
/// refused submission cancels the jobs already submitted.
/// `status` is [`super::Engine::status`] of the plan under the run's options
/// (the caller has it already, for [`preflight`]).
pub fn submit(
    plan: &Plan,
    status: &[NodeStatus],
    mut sub: Submission,
    reporter: &mut dyn Reporter,
    summary: &mut RunSummary,
) -> Result<RunFile, EngineError> {
    let order = plan.topo_order().map_err(EngineError::Cycle)?;
    let mut emit = |e: RunEvent, summary: &mut RunSummary| {
        summary.record(&e);
        reporter.on_event(&e);
    };
    emit(
        RunEvent::Planned {
            total: plan.nodes.len(),
        },
        summary,
    );
    let mut job_of: Vec<Option<String>> = vec![None; plan.nodes.len()];
    // A run with jobs gets a folder; the jobs read its run file, so it
    // exists before the first one.
    if status.iter().any(|s| matches!(s, NodeStatus::ToRun { .. })) {
        for d in ["logs", "outcomes"] {
            let p = sub.dir.path.join(d);
            fs::create_dir_all(&p).map_err(|e| EngineError::Slurm(io(&p)(e)))?;
        }
        sub.dir.write(&sub.run).map_err(EngineError::Slurm)?;
    }
    let name = RunDir::job_name(&sub.run.run_id);
    let mut submitted: Vec<String> = Vec::new();
    for (n, &id) in order.iter().enumerate() {
        let node = &plan.nodes[id];
        if let NodeStatus::Cached { key, record } = &status[id] {
            emit(
                RunEvent::Cached {
                    label: node.label.clone(),
                    key: *key,
                    saved_seconds: record.provenance.wall_seconds,
                },
                summary,
            );
            continue;
        }
        let mut after: Vec<String> = node
            .inputs
            .iter()
            .filter_map(|i| job_of[i.node].clone())
            .collect();
        after.sort();
        after.dedup();
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={name}"),
            format!("--comment={}", node.label),
            format!("--output={}", sub.dir.log(n).display()),
            "--open-mode=append".into(),
            // Lost to a node failure: Slurm starts it again, with the
            // same id, so its dependants keep waiting for it.
            "--requeue".into(),
        ];
        if !after.is_empty() {
            args.push(format!("--dependency=afterok:{}", after.join(":")));
            args.push("--kill-on-invalid-dep=yes".into());
        }
        args.extend(sbatch_args(&sub.settings.resources(node.kind)));
        args.push("--wrap".into());
        args.push(format!(
            "exec {} exec-node {} {n} {}",
            sh_quote(&sub.exe.to_string_lossy()),
            sh_quote(&sub.dir.path.to_string_lossy()),
            sh_quote(&node.label)
        ));
        let job = match slurm_env("sbatch", &args, &sub.env) {
            Ok(out) => out.trim().split(';').next().unwrap_or_default().to_string(),
            Err(e) => {
                let _ = cancel_jobs(&submitted);
                let _ = fs::remove_dir_all(&sub.dir.path);
                return Err(EngineError::Slurm(e));
            }
        };
        submitted.push(job.clone());
        emit(
            RunEvent::Submitted {
                label: node.label.clone(),
                job: job.clone(),
                after: after.clone(),
            },
            summary,
        );
        sub.run.jobs.insert(
            node.label.clone(),
            Job {
                id: job.clone(),
                n,
                after,
            },
        );
        job_of[id] = Some(job);
    }
    if !sub.run.jobs.is_empty() {
        sub.dir.write(&sub.run).map_err(EngineError::Slurm)?;
    }
    Ok(sub.run)
}

/// Follows a submitted run until every job has ended (or `cancel`,
/// which cancels the jobs), turning what it sees into run events.
pub fn watch(
    dir: &RunDir,
    run: &RunFile,
    poll: Duration,
    cancel: &CancelToken,
    reporter: &mut dyn Reporter,
    summary: &mut RunSummary,
) -> Result<(), EngineError> {
    let mut emit = |e: RunEvent, summary: &mut RunSummary| {
        summary.record(&e);
        reporter.on_event(&e);
    };
    let label_of: BTreeMap<&str, &str> = run
        .jobs
        .iter()
        .map(|(l, j)| (j.id.as_str(), l.as_str()))
        .collect();
    let mut pending: BTreeMap<&str, &Job> = run.jobs.iter().map(|(l, j)| (l.as_str(), j)).collect();
    let mut started: std::collections::BTreeSet<&str> = Default::default();
    // Jobs seen ended without an outcome once: looked at again.
    let mut unsure: std::collections::BTreeSet<&str> = Default::default();
    // Wakes the wait between polls when the run is cancelled.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let _waker = {
        let tx = std::sync::Mutex::new(tx);
        cancel.on_cancel(move || {
            let _ = tx.lock().expect("not poisoned").send(());
        })
    };
    // Failures in a row of `squeue` itself (the controller restarting).
    let mut squeue_failures = 0u32;
    while !pending.is_empty() {
        if cancel.is_cancelled() {
            let ids: Vec<String> = pending.values().map(|j| j.id.clone()).collect();
            cancel_jobs(&ids).map_err(EngineError::Slurm)?;
            let mut r = run.clone();
            r.cancelled = true;
            let _ = dir.write(&r);
            emit(RunEvent::Interrupted, summary);
            return Ok(());
        }
        let states = match queue_states(&run.run_id) {
            Ok(s) => {
                squeue_failures = 0;
                s
            }
            Err(e) if squeue_failures < 30 => {
                squeue_failures += 1;
                let _ = writeln!(std::io::stderr(), "warning: {e}; asking again");
                let _ = rx.recv_timeout(poll);
                continue;
            }
            Err(e) => return Err(EngineError::Slurm(e)),
        };
        let mut ended = Vec::new();
        for (&label, job) in &pending {
            match states.get(&job.id) {
                Some(q) if q.state == "RUNNING" && !started.contains(label) => {
                    started.insert(label);
                    emit(
                        RunEvent::JobStarted {
                            label: label.to_string(),
                            job: job.id.clone(),
                            node: q.node.clone(),
                        },
                        summary,
                    );
                }
                Some(q) if is_live(&q.state) => {
                    unsure.remove(label);
                }
                // Ended: its outcome file says how. Without one, it may
                // be between two attempts (requeued): it counts as
                // ended when two polls in a row and Slurm itself say so.
                _ if dir.outcome(job.n).exists() => ended.push(label),
                _ if unsure.insert(label) => {}
                _ => match final_state(&job.id) {
                    Some((state, _)) if is_live(&state) => {}
                    _ => ended.push(label),
                },
            }
        }
        let ended_now: std::collections::BTreeSet<&str> = ended.iter().copied().collect();
        for label in ended {
            let job = pending.remove(label).expect("pending");
            let event = match dir.read_outcome(job.n) {
                Some(o) => match o.result {
                    NodeResult::Executed { key, wall_seconds } => RunEvent::Finished {
                        label: label.into(),
                        key,
                        wall_seconds,
                    },
                    NodeResult::Cached { key, saved_seconds } => RunEvent::Cached {
                        label: label.into(),
                        key,
                        saved_seconds,
                    },
                    NodeResult::Failed {
                        error,
                        bad_input,
                        log_tail,
                    } => RunEvent::Failed {
                        label: label.into(),
                        error: format!("slurm job {}: {error}", job.id),
                        bad_input,
                        log_tail,
                    },
                    NodeResult::Interrupted => RunEvent::Failed {
                        label: label.into(),
                        error: format!("slurm job {} was cancelled", job.id),
                        bad_input: false,
                        log_tail: String::new(),
                    },
                },
                None => {
                    let (state, reason) =
                        final_state(&job.id).unwrap_or_else(|| ("UNKNOWN".into(), String::new()));
                    if reason.contains("DependencyNeverSatisfied") {
                        // The input that ended without succeeding
                        // (failed, cancelled by hand, itself skipped),
                        // not merely the first: a job waits for several,
                        // and some may still be queued or running.
                        let still_live =
                            |dep: &str| pending.contains_key(dep) && !ended_now.contains(dep);
                        let succeeded = |dep: &str| {
                            run.jobs.get(dep).is_some_and(|j| {
                                dir.read_outcome(j.n).is_some_and(|o| {
                                    matches!(
                                        o.result,
                                        NodeResult::Executed { .. } | NodeResult::Cached { .. }
                                    )
                                })
                            })
                        };
                        let deps = |j: &Job| -> Vec<&str> {
                            j.after
                                .iter()
                                .filter_map(|a| label_of.get(a.as_str()).copied())
                                .collect()
                        };
                        // Followed up to the job that ended by itself:
                        // a job whose own inputs all succeeded.
                        let mut because = deps(job).first().copied().unwrap_or_default();
                        let mut at = job;
                        while let Some(d) = deps(at)
                            .into_iter()
                            .find(|d| !succeeded(d) && !still_live(d))
                        {
                            because = d;
                            match run.jobs.get(d) {
                                Some(j) => at = j,
                                None => break,
                            }
                        }
                        let because = because.to_string();
                        RunEvent::Skipped {
                            label: label.into(),
                            because,
                        }
                    } else {
                        let log = fs::read(dir.log(job.n)).unwrap_or_default();
                        RunEvent::Failed {
                            label: label.into(),
                            error: format!(
                                "slurm job {} ended {state}{} without a result",
                                job.id,
                                if reason.is_empty() || reason == "None" {
                                    String::new()
                                } else {
                                    format!(" ({reason})")
                                }
                            ),
                            bad_input: false,
                            log_tail: tail(&log, 20),
                        }
                    }
                }
            };
            emit(event, summary);
        }
        if !pending.is_empty() {
            let _ = rx.recv_timeout(poll);
        }
    }
    Ok(())
}

/// The kinds of the plan's stages, for [`preflight`].
pub fn kinds_of(plan: &Plan, ids: impl Iterator<Item = NodeId>) -> Vec<StageKind> {
    let mut k: Vec<StageKind> = ids.map(|i| plan.nodes[i].kind).collect();
    k.sort();
    k.dedup();
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_flags_follow_the_resources_and_extra_comes_last() {
        let r = SlurmResources {
            partition: Some("gpu".into()),
            cpus: Some(4),
            gres: Some("gpu:1".into()),
            extra: vec!["--hold".into()],
            ..SlurmResources::default()
        };
        assert_eq!(
            sbatch_args(&r),
            [
                "--partition=gpu",
                "--cpus-per-task=4",
                "--gres=gpu:1",
                "--hold"
            ]
        );
        assert!(sbatch_args(&SlurmResources::default()).is_empty());
    }

    #[test]
    fn squeue_lines_become_queue_states_and_only_live_ones_count() {
        let q =
            parse_queue("12|PENDING||(Dependency)\n13|RUNNING|n1|None\n\n14|COMPLETED|n1|None\n");
        assert_eq!(q.len(), 3);
        assert_eq!(
            q["12"],
            QueueState {
                state: "PENDING".into(),
                node: String::new(),
                reason: "(Dependency)".into()
            }
        );
        assert_eq!(q["13"].node, "n1");
        let live: Vec<&str> = q
            .iter()
            .filter(|(_, s)| is_live(&s.state))
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(live, ["12", "13"]);
    }
}
