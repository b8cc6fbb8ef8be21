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
        long_version(&self.tool_version, self.git_commit.as_deref())
    }
}

/// `0.1.0 (commit <sha>[, dirty])` from the version and the commit as
/// provenance records it (`<sha>-dirty` for a tree with uncommitted
/// changes): the one formatting `--version`, reports and provenance share.
pub fn long_version(tool_version: &str, git_commit: Option<&str>) -> String {
    match git_commit.filter(|c| !c.is_empty()) {
        None => format!("{tool_version} (commit unknown: not built from a git checkout)"),
        Some(c) => match c.strip_suffix("-dirty") {
            Some(c) => format!("{tool_version} (commit {c}, dirty)"),
            None => format!("{tool_version} (commit {c})"),
        },
    }
}

#[cfg(test)]
mod long_version_tests {
    use super::long_version;

    #[test]
    fn one_line_per_kind_of_checkout() {
        assert_eq!(long_version("0.1.0", Some("abc")), "0.1.0 (commit abc)");
        assert_eq!(
            long_version("0.1.0", Some("abc-dirty")),
            "0.1.0 (commit abc, dirty)"
        );
        for none in [None, Some("")] {
            assert_eq!(
                long_version("0.1.0", none),
                "0.1.0 (commit unknown: not built from a git checkout)"
            );
        }
    }
}

pub(crate) use crate::host::hostname;
pub use crate::host::unix_ms;
