//! The process environment, read once. Nothing else in this crate (and
//! nothing in `bsce-pipeline` outside its documented edges) calls
//! `std::env::var`: the root `clippy.toml` bans it (each edge in
//! `ENV_EDGES` below carries an `allow`; `bsce-torch`'s two, whose code is
//! in the train digest, are allowed from `train/Cargo.toml`), and the test
//! `ambient_state_is_read_only_at_the_edges` keeps it so in CI.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the environment says, as plain values.
#[derive(Clone, Debug, Default)]
pub struct Ambient {
    /// `BSCE_STORE`: the store when no `--store` is given.
    pub store: Option<PathBuf>,
    /// `BSCE_REMOTE` and `BSCE_REMOTE_READ_ONLY`, as a Slurm job sees them
    /// (on the command line clap reads them with the flags).
    pub remote: Option<String>,
    pub remote_read_only: bool,
    /// `BSCE_PIPE_CODE_SALT=order:x,prepare:y`: a test hook that changes
    /// the code digest of a kind without editing its code.
    pub code_salts: BTreeMap<String, String>,
    /// The working folder (`.` when it cannot be read).
    pub cwd: PathBuf,
    /// The Slurm job this process is the body of, if any.
    pub slurm: SlurmJobEnv,
    /// Every variable, for `$VAR` in `executor.slurm.node_store`.
    pub vars: BTreeMap<String, String>,
}

/// `SLURM_*` as a job's body reads them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlurmJobEnv {
    /// `SLURM_JOB_ID` (empty outside a job).
    pub job_id: String,
    /// `SLURM_RESTART_COUNT`: how often Slurm requeued this job.
    pub restarts: u32,
    /// `SLURMD_NODENAME`.
    pub node: Option<String>,
    /// `SLURM_JOB_GPUS` is set and non-empty.
    pub has_gpu: bool,
    /// `SLURM_CPUS_PER_TASK`, else the leading number of
    /// `SLURM_JOB_CPUS_PER_NODE`.
    pub cpus: Option<usize>,
}

impl Ambient {
    /// Reads the environment of this process.
    #[allow(clippy::disallowed_methods)] // the one place that may
    pub fn read() -> Ambient {
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Ambient::from_vars(
            vars,
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        )
    }

    /// The ambient state a given set of variables makes (tests build one
    /// without touching the process environment).
    pub fn from_vars(vars: BTreeMap<String, String>, cwd: PathBuf) -> Ambient {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let code_salts = get("BSCE_PIPE_CODE_SALT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let leading_number = |s: String| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        };
        let slurm = SlurmJobEnv {
            job_id: get("SLURM_JOB_ID").unwrap_or_default(),
            restarts: get("SLURM_RESTART_COUNT")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            node: get("SLURMD_NODENAME"),
            has_gpu: get("SLURM_JOB_GPUS").is_some(),
            cpus: ["SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE"]
                .iter()
                .find_map(|k| get(k).and_then(leading_number)),
        };
        Ambient {
            store: vars.get("BSCE_STORE").map(PathBuf::from),
            remote: get("BSCE_REMOTE"),
            remote_read_only: vars
                .get("BSCE_REMOTE_READ_ONLY")
                .is_some_and(|v| v == "true"),
            code_salts,
            cwd,
            slurm,
            vars,
        }
    }

    /// `$NAME` and `${NAME}` replaced by the variables' values (unset:
    /// empty), as a shell would in a job script.
    pub fn expand_vars(&self, s: &str) -> String {
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
                out.push_str(self.vars.get(name).map(String::as_str).unwrap_or(""));
            }
            rest = tail;
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ambient(vars: &[(&str, &str)]) -> Ambient {
        let vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ambient::from_vars(vars, PathBuf::from("/w"))
    }

    #[test]
    fn node_store_paths_expand_the_jobs_variables() {
        let a = ambient(&[("BSCE_TEST_X", "alice")]);
        assert_eq!(
            a.expand_vars("/scratch/$BSCE_TEST_X/bsce"),
            "/scratch/alice/bsce"
        );
        assert_eq!(a.expand_vars("/s/${BSCE_TEST_X}x"), "/s/alicex");
        assert_eq!(a.expand_vars("/s/$/x"), "/s/$/x");
        assert_eq!(a.expand_vars("/s/$BSCE_TEST_UNSET_Y/x"), "/s//x");
    }

    #[test]
    fn slurm_variables_become_the_jobs_env() {
        let a = ambient(&[
            ("SLURM_JOB_ID", "42"),
            ("SLURM_RESTART_COUNT", "2"),
            ("SLURMD_NODENAME", "n1"),
            ("SLURM_JOB_GPUS", ""),
            ("SLURM_JOB_CPUS_PER_NODE", "8(x2)"),
        ]);
        assert_eq!(
            a.slurm,
            SlurmJobEnv {
                job_id: "42".into(),
                restarts: 2,
                node: Some("n1".into()),
                has_gpu: false,
                cpus: Some(8),
            }
        );
        let b = ambient(&[("SLURM_CPUS_PER_TASK", "3"), ("SLURM_JOB_GPUS", "0")]);
        assert_eq!((b.slurm.cpus, b.slurm.has_gpu), (Some(3), true));
    }

    #[test]
    fn code_salts_and_remote_come_from_their_variables() {
        let a = ambient(&[
            ("BSCE_PIPE_CODE_SALT", "order:x,prepare:y"),
            ("BSCE_REMOTE", "file:///r"),
            ("BSCE_REMOTE_READ_ONLY", "true"),
            ("BSCE_STORE", "/s"),
        ]);
        assert_eq!(a.code_salts.get("order").map(String::as_str), Some("x"));
        assert_eq!(a.code_salts.get("prepare").map(String::as_str), Some("y"));
        assert_eq!(a.remote.as_deref(), Some("file:///r"));
        assert!(a.remote_read_only);
        assert_eq!(a.store, Some(PathBuf::from("/s")));
        let empty = ambient(&[("BSCE_REMOTE", "")]);
        assert_eq!(empty.remote, None);
    }
}

/// Files that may read the process environment, and why: the edges.
#[cfg(test)]
const ENV_EDGES: &[(&str, &str)] = &[
    ("src/ambient.rs", "bsce-pipe's edge: Ambient::read"),
    (
        "pipeline/src/exec/job.rs",
        "a stage child's edge: the parent's pid, to die with it",
    ),
    (
        "pipeline/src/exec/slurm/mod.rs",
        "PATH, to find sbatch as a shell would",
    ),
    (
        "pipeline/src/store/remote/http.rs",
        "the remote's credentials (BSCE_REMOTE_TOKEN, _USER, _PASSWORD), never in a config",
    ),
    (
        "pipeline/src/store/remote/s3.rs",
        "AWS_* credentials and endpoint, as every S3 client reads them",
    ),
    (
        "train/src/main.rs",
        "bsce-torch's edge: its own command line",
    ),
    (
        "train/src/runtime.rs",
        "bsce-torch's threads (OMP_NUM_THREADS) and visible GPUs, recorded in provenance",
    ),
];

#[cfg(test)]
mod edges {
    /// Ambient state is read once, at the edges above: a new
    /// `std::env::var` anywhere else fails here (cargo's clippy.toml
    /// discipline, as a test that CI runs).
    #[test]
    fn ambient_state_is_read_only_at_the_edges() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        for dir in bsce_pipeline::registry::SOURCE_ROOTS {
            for entry in walkdir::WalkDir::new(root.join(dir)) {
                let entry = entry.unwrap();
                if entry.path().extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(entry.path()).unwrap();
                // Code before the file's unit tests (which may set variables).
                let code = text.split("#[cfg(test)]").next().unwrap();
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                for pattern in ["env::var(", "env::var_os(", "env::vars(", "env::vars_os("] {
                    if code.contains(pattern) && !super::ENV_EDGES.iter().any(|(f, _)| *f == rel) {
                        found.push(format!("{rel}: {pattern}"));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "the environment is read outside the edges (read it into bsce_pipe::Ambient, or \
             name the file in ENV_EDGES with why): {found:?}"
        );
    }
}
