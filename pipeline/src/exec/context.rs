//! Ambient state, read once at the edge of a run: never seen by stages,
//! never part of a key, recorded in provenance.

use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct RunContext {
    pub tool_version: String,
    pub git_commit: Option<String>,
    pub host: String,
    pub run_id: String,
    /// The binary that runs `exec-stage` for the data stages.
    pub exe: PathBuf,
    /// Its sibling that links libtorch, for training and evaluation stages.
    pub torch_exe: PathBuf,
    pub cpus: usize,
    /// The batch system's names for this process (`slurm_job_id`,
    /// `slurm_node`...), recorded in the provenance of what it computes.
    pub batch: BTreeMap<String, String>,
}

impl RunContext {
    pub fn detect(tool_version: &str, git_commit: Option<&str>) -> std::io::Result<RunContext> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let exe = std::env::current_exe()?;
        let torch_exe = exe.with_file_name("bsce-torch");
        Ok(RunContext {
            tool_version: tool_version.into(),
            git_commit: git_commit.map(String::from),
            host: hostname(),
            run_id: format!("{now}-{}", std::process::id()),
            exe,
            torch_exe,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            batch: BTreeMap::new(),
        })
    }
}

impl RunContext {
    /// `0.1.0 (commit <sha>[, dirty])`, as `bsce-pipe --version` says it.
    pub fn long_version(&self) -> String {
        match self.git_commit.as_deref() {
            None => format!(
                "{} (commit unknown: not built from a git checkout)",
                self.tool_version
            ),
            Some(c) => match c.strip_suffix("-dirty") {
                Some(c) => format!("{} (commit {c}, dirty)", self.tool_version),
                None => format!("{} (commit {c})", self.tool_version),
            },
        }
    }
}

pub use crate::host::{hostname, unix_ms};
