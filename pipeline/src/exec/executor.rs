//! The executor seam: the engine prepares a stage's work folder
//! ([`Prepared`]: `job.json`, `in/`, `out/`) and ingests what it leaves; an
//! executor only launches a prepared stage with its resources and reports
//! how it ended ([`StageExit`]). [`LocalExecutor`] runs it as a child
//! process of this one. On a cluster, `bsce-pipe exec-node` runs the same
//! prepare/launch/ingest path inside each Slurm job ([`super::slurm`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use super::cancel::CancelToken;
use super::job::{self, ChildMessage};

/// A stage's work folder, ready to run: the job file the child reads, the
/// log it writes, the folder its outputs go to.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub label: String,
    pub dir: PathBuf,
    pub job: PathBuf,
    pub log: PathBuf,
    pub out_dir: PathBuf,
}

/// What a stage may use.
#[derive(Clone, Debug)]
pub struct Resources {
    /// The binary that runs `exec-stage` for this kind.
    pub exe: PathBuf,
    /// CPU threads (rayon, OpenMP).
    pub threads: usize,
    /// The stage's device (`cpu`, `cuda:0`): a warm worker serves one.
    pub device: String,
    /// The stage may run in a warm worker ([`super::worker::WorkerPool`]):
    /// libtorch's stages, whose process start is the cost.
    pub warm: bool,
}

/// How a launched stage ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ExitHow {
    Success,
    Exited(i32),
    Signalled(i32),
    /// Stopped because the run was cancelled.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct StageExit {
    pub how: ExitHow,
    pub peak_rss_kib: u64,
    /// What the stage reported about itself (provenance lines).
    pub provenance: BTreeMap<String, serde_json::Value>,
    /// The error the stage sent over its pipe before failing.
    pub error: Option<StageFailure>,
}

/// A stage's own account of its failure.
#[derive(Clone, Debug, PartialEq)]
pub struct StageFailure {
    pub message: String,
    /// Its input is at fault: the run exits 2.
    pub bad_input: bool,
    /// Its environment failed (disk, network), not its inputs.
    pub environment: bool,
}

impl ExitHow {
    /// `exited with status 1`, `killed by signal 9`.
    pub fn describe(&self) -> String {
        match self {
            ExitHow::Success => "succeeded".into(),
            ExitHow::Exited(c) => format!("exited with status {c}"),
            ExitHow::Signalled(s) => format!("killed by signal {s}"),
            ExitHow::Cancelled => "cancelled".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting {}: {source}", exe.display())]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for stage process {pid}: {source}")]
    Wait { pid: i32, source: std::io::Error },
    #[error("input {input}/{file} has no digest")]
    InputUnknown { input: String, file: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl ExecError {
    pub fn io(path: &Path, source: std::io::Error) -> ExecError {
        ExecError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Progress and other messages a running stage sends as it goes.
pub(crate) type OnMessage<'a> = &'a (dyn Fn(ChildMessage) + Sync);

pub trait StageExecutor: Sync {
    /// Runs `stage` to its end (or until `cancel`), passing progress
    /// messages to `on_message` as they come.
    fn run(
        &self,
        stage: &Prepared,
        res: &Resources,
        cancel: &CancelToken,
        on_message: OnMessage,
    ) -> Result<StageExit, ExecError>;
}

/// Runs a stage as a child process of this one (`exec-stage job.json`),
/// with its own process group and a parent-death signal, reaped with
/// `wait4` for its peak memory.
pub(crate) struct LocalExecutor;

impl StageExecutor for LocalExecutor {
    fn run(
        &self,
        stage: &Prepared,
        res: &Resources,
        cancel: &CancelToken,
        on_message: OnMessage,
    ) -> Result<StageExit, ExecError> {
        let log = fs::File::create(&stage.log).map_err(|e| ExecError::io(&stage.log, e))?;
        let log_for_stdout = log.try_clone().map_err(|e| ExecError::io(&stage.log, e))?;
        let mut cmd = Command::new(&res.exe);
        cmd.arg("exec-stage")
            .arg(&stage.job)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env("RAYON_NUM_THREADS", res.threads.to_string())
            .env("OMP_NUM_THREADS", res.threads.to_string())
            // The child asks the kernel to kill it when we die
            // (job::die_with_parent), so no orphan keeps computing. It does
            // so itself rather than in a pre_exec hook: a hook forces
            // fork(), whose cost grows with this process's memory (a 50,000
            // stage plan made each spawn 2.4x slower), where without one
            // std spawns with posix_spawn (vfork-like, constant cost).
            .env(job::PARENT_PID_VAR, std::process::id().to_string())
            // The child gets its own process group so a terminal Ctrl-C
            // reaches the scheduler only; the scheduler then stops the
            // children itself.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
            exe: res.exe.clone(),
            source,
        })?;
        let pid = child.id() as i32;
        let stdout = child.stdout.take().expect("piped");
        // Cancellation kills the child; the pid stays registered until the
        // child is a zombie we have not reaped, so a kill never reaches a
        // recycled pid.
        let live: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(Some(pid)));
        let _on_cancel = terminate_on_cancel(cancel, &live);
        let ((status, peak_rss_kib), said) = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut log = log_for_stdout;
                let mut said = StageSaid::default();
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    said.take(&line, &mut log, on_message);
                }
                said
            });
            wait_unreaped(pid)?;
            *live.lock().expect("not poisoned") = None;
            let status = reap(pid)?;
            Ok::<_, ExecError>((status, reader.join().expect("the reader does not panic")))
        })?;
        let how = if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            ExitHow::Success
        } else if cancel.is_cancelled() {
            ExitHow::Cancelled
        } else if libc::WIFSIGNALED(status) {
            ExitHow::Signalled(libc::WTERMSIG(status))
        } else {
            ExitHow::Exited(libc::WEXITSTATUS(status))
        };
        Ok(StageExit {
            how,
            peak_rss_kib,
            provenance: said.provenance,
            error: said.error,
        })
    }
}

/// Cancellation sends SIGTERM to the process in `live` while one is there
/// (the owner clears it once the process is reaped, so a kill never reaches
/// a recycled pid). Kept registered as long as the returned value lives.
pub(crate) fn terminate_on_cancel(
    cancel: &CancelToken,
    live: &Arc<Mutex<Option<i32>>>,
) -> super::cancel::Registration {
    let live = Arc::clone(live);
    cancel.on_cancel(move || {
        if let Some(pid) = *live.lock().expect("not poisoned") {
            // SAFETY: signalling our own un-reaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    })
}

/// What a stage has said on its stdout: its provenance lines and its
/// error, as a stage process and a warm worker send them.
#[derive(Default)]
pub(crate) struct StageSaid {
    pub provenance: BTreeMap<String, serde_json::Value>,
    pub error: Option<StageFailure>,
}

impl StageSaid {
    /// One line of a stage's stdout: a message (progress goes to
    /// `on_message`; an error is also written to the log), or text for the
    /// log. Returns a warm worker's `Done` (status, peak RSS).
    pub(crate) fn take(
        &mut self,
        line: &str,
        log: &mut dyn Write,
        on_message: OnMessage,
    ) -> Option<(u8, u64)> {
        match serde_json::from_str::<ChildMessage>(line) {
            Ok(ChildMessage::Done {
                status,
                peak_rss_kib,
            }) => return Some((status, peak_rss_kib)),
            Ok(ChildMessage::Provenance { key, value }) => {
                self.provenance.insert(key, value);
            }
            Ok(ChildMessage::Error {
                message,
                bad_input,
                environment,
            }) => {
                let _ = writeln!(log, "error: {message}");
                self.error = Some(StageFailure {
                    message: format!("error: {message}"),
                    bad_input,
                    environment,
                });
            }
            Ok(m @ ChildMessage::Progress { .. }) => on_message(m),
            Err(_) => {
                let _ = writeln!(log, "{line}");
            }
        }
        None
    }
}

/// Blocks until child `pid` has exited, without reaping it: until it is
/// reaped its pid cannot be recycled, so a cancel may still signal it.
fn wait_unreaped(pid: i32) -> Result<(), ExecError> {
    loop {
        // SAFETY: zeroed siginfo is a valid out-parameter; pid is our child.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(ExecError::Wait { pid, source: e });
        }
    }
    Ok(())
}

/// Reaps exited child `pid`: its wait status and peak RSS (KiB). `wait4`
/// instead of `Child::wait`, for the peak RSS.
fn reap(pid: i32) -> Result<(libc::c_int, u64), ExecError> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our exited, un-reaped child; the pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        return Err(ExecError::Wait {
            pid,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((status, usage.ru_maxrss.max(0) as u64))
}
