//! The contract between the scheduler and a stage's child process
//! (`bsce-pipe exec-stage <work>/job.json`). The child sees only this: its
//! params, its input folders, its sources, a seed, a device and an output
//! folder. It reports progress and provenance as JSON lines on stdout.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::StageKind;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageJob {
    pub kind: StageKind,
    pub label: String,
    pub params: Value,
    /// Input name -> folder holding the upstream files this stage reads.
    pub inputs: BTreeMap<String, PathBuf>,
    /// Source name -> path outside the store (already verified by digest),
    /// or where a download must land.
    pub sources: BTreeMap<String, SourceLocation>,
    pub out_dir: PathBuf,
    /// A folder of this stage key's own that survives a failed or killed
    /// attempt (`<store>/resume/<key>/`, not created until the stage
    /// does): a long stage keeps partial work there and the next attempt
    /// of the same key resumes from it. The engine removes it once the
    /// key's result is stored; `cache gc` removes all of them. A stage
    /// must validate what it finds there: the key fixes the inputs, not
    /// the stage's own bookkeeping.
    pub resume_dir: PathBuf,
    /// Derived from the stage key: same key, same randomness.
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// A train stage's runs, where it appends each epoch's scalars as
    /// TensorBoard events while it trains (not part of its key, and not an
    /// output: `tensorboard --logdir <store>/tensorboard` follows a run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live: Vec<LiveRun>,
}

/// One run a train stage belongs to (a base task's stage belongs to every
/// run that starts from it), for its live TensorBoard events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveRun {
    /// `<store>/tensorboard/<config>/<run path>`.
    pub dir: PathBuf,
    /// The run's step of this stage's first training epoch: the training
    /// epochs of the run's earlier tasks
    /// ([`crate::params::TrainParams::train_epochs`]).
    pub first_train_step: u64,
    /// The same for its first fine-tuning epoch
    /// ([`crate::params::TrainParams::finetune_epochs`]).
    pub first_finetune_step: u64,
    /// The run's tasks: files of later tasks (a setting made shorter)
    /// are removed.
    pub tasks: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceLocation {
    pub path: PathBuf,
    /// Set when the file must first be downloaded to `path`.
    pub url: Option<String>,
    pub sha256: Option<String>,
}

impl StageJob {
    pub fn read(path: &Path) -> std::io::Result<StageJob> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn input(&self, name: &str) -> Option<&Path> {
        self.inputs.get(name).map(PathBuf::as_path)
    }
}

/// A line the child writes on stdout; anything else on stdout goes to the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "bsce", rename_all = "snake_case")]
pub enum ChildMessage {
    Progress {
        done: u64,
        total: Option<u64>,
        unit: String,
    },
    Provenance {
        key: String,
        value: Value,
    },
    /// Why the stage failed, sent just before it exits with status 1: the
    /// pipe reaches the scheduler even when the stage's log cannot be
    /// written (a full disk).
    Error {
        message: String,
        /// The stage's input is at fault (a bad archive, a checksum
        /// mismatch, a parameter the data cannot satisfy), not the stage:
        /// the run exits 2, as for a bad config.
        #[serde(default)]
        bad_input: bool,
        /// The stage's environment failed (a full disk, the network), not
        /// its inputs: the failure says nothing about the key, and the next
        /// run tries again without "same inputs failed".
        #[serde(default)]
        environment: bool,
    },
    /// A warm worker finished a stage: the exit status `exec-stage` would
    /// have had (0 ok, 1 failed, 2 a job it cannot run,
    /// [`WORKER_PANICKED`] a panic, after which the worker exits), and the
    /// stage's peak resident memory.
    Done {
        status: u8,
        peak_rss_kib: u64,
    },
}

/// The status a warm worker reports for a stage that panicked (Rust's own
/// exit status for a panic). The worker then exits: a panic may leave
/// libtorch half-way through a change of its state.
pub const WORKER_PANICKED: u8 = 101;

/// One stage for a warm worker (`bsce-torch worker`): a line on its stdin.
/// The worker appends the stage's stderr to `log`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkRequest {
    pub job: PathBuf,
    pub log: PathBuf,
}

/// The scheduler's pid, given to each stage child in its environment.
pub(crate) const PARENT_PID_VAR: &str = "BSCE_PARENT_PID";

/// Called first by `exec-stage`: the kernel kills this process when the
/// scheduler that started it dies, and if the scheduler is already gone
/// (it died between the spawn and this call) the stage ends now.
#[allow(clippy::disallowed_methods)] // an edge: ENV_EDGES in src/ambient.rs
pub fn die_with_parent() {
    let Some(parent) = std::env::var(PARENT_PID_VAR)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: prctl and getppid have no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
}

/// What a stage uses to talk to the scheduler.
pub struct ChildReporter {
    out: std::io::Stdout,
}

impl Default for ChildReporter {
    fn default() -> Self {
        ChildReporter {
            out: std::io::stdout(),
        }
    }
}

impl ChildReporter {
    pub fn send(&self, msg: &ChildMessage) {
        let mut line = serde_json::to_string(msg).expect("serialises");
        line.push('\n');
        let mut out = self.out.lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    pub fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        self.send(&ChildMessage::Progress {
            done,
            total,
            unit: unit.into(),
        });
    }

    pub fn error(&self, message: &str, bad_input: bool, environment: bool) {
        self.send(&ChildMessage::Error {
            message: message.into(),
            bad_input,
            environment,
        });
    }

    pub fn provenance(&self, key: &str, value: Value) {
        self.send(&ChildMessage::Provenance {
            key: key.into(),
            value,
        });
    }
}
