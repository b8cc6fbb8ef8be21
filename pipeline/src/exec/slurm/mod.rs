//! The whole DAG as Slurm jobs. [`layout`] decides where each stage not in
//! the store runs: a training run's chain (its train and evaluate stages,
//! task after task) is one job (`group: run`), other stages a job each,
//! and the kinds of `local_kinds` (milliseconds, no GPU) run on the
//! submitting machine. [`drive`] submits each job once the jobs it waits
//! for are submitted and the local stages it reads are done, with
//! `--dependency=afterok:` on those jobs, so Slurm orders the rest. A job
//! runs `bsce-pipe exec-node RUN_DIR N=LABEL...` ([`super::node`]): for
//! each of its stages it finds the inputs in the store (a shared
//! filesystem, or a node-local store over the remote cache), derives the
//! key, goes on at once if the stage is there, else runs it and stores it,
//! and writes that stage's outcome to the run folder, where the submitting
//! process (or `status`) reads it. A job lost halfway and started again
//! resumes at its first stage not in the store.
//!
//! The run folder (`<store>/slurm/<run id>/`, on storage the nodes see):
//! `run.json` (config text, store, the job of each label),
//! `logs/<n>.out` (each job's output, `n` its first stage's),
//! `outcomes/<n>.json` (how each stage ended).

pub(crate) mod drive;
pub(crate) mod layout;

pub use drive::{drive, Submission};
pub use layout::{layout, Layout, Place};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::child::tail;
use super::node::NodeResult;
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
    /// `run --cold`: every stage of a job in a fresh process, no warm
    /// worker.
    #[serde(default)]
    pub cold: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub id: String,
    /// Index into `logs/` and `outcomes/` (labels hold '/').
    pub n: usize,
    /// The jobs it waits for.
    pub after: Vec<String>,
    /// The stage's job runs several stages and logs to this one's log
    /// (its first stage's `n`); absent: its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<usize>,
}

impl Job {
    /// Index of the job's log in `logs/`.
    pub fn log_n(&self) -> usize {
        self.log.unwrap_or(self.n)
    }
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

    /// Stage `n`'s outcome says it is in the store.
    pub fn stored(&self, n: usize) -> bool {
        self.read_outcome(n).is_some_and(|o| o.result.is_stored())
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
                    .map(|j| &j.id)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
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

#[allow(clippy::disallowed_methods)] // an edge: ENV_EDGES in src/ambient.rs
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

/// Each kind once, for [`preflight`].
pub fn kinds_of(kinds: impl Iterator<Item = StageKind>) -> Vec<StageKind> {
    let mut k: Vec<StageKind> = kinds.collect();
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
