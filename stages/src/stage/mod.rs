//! The entry of a stage's child process: a job routed to its kind's code
//! through a table per binary ([`PIPE_STAGES`] here, `TORCH_STAGES` in the
//! training crate), both checked against the registry. On the
//! NO_OUTPUT_EFFECT list: routing never changes what a stage computes.

mod order;
mod prepare;
mod tasks;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use bsce_pipeline::catalog::{Runner, StageCatalog, StageKind};
use bsce_pipeline::exec::job::{ChildReporter, StageJob};

use crate::error::Result;

pub use tasks::{read_tasks, TaskPlan};

include!(concat!(env!("OUT_DIR"), "/code_digests.rs"));

/// A stage kind's entry point in the binary that runs it.
pub type StageFn = fn(&StageJob, &ChildReporter) -> Result<()>;

/// The kinds `bsce-pipe exec-stage` runs (registry runner `pipe`).
pub const PIPE_STAGES: &[(StageKind, StageFn)] = &[
    (StageKind::Prepare, prepare::run),
    (StageKind::Order, order::run),
    (StageKind::Tasks, tasks::run),
];

/// The child side of `exec-stage` for either binary: reads the job, runs
/// its kind from `table`, and reports an error on stderr (the stage log).
/// Exit 0 on success, 1 when the stage failed, 2 for a job this binary
/// cannot run.
pub fn exec_stage(job_path: &Path, runner: Runner, table: &[(StageKind, StageFn)]) -> ExitCode {
    let job = match StageJob::read(job_path) {
        Ok(j) => j,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: reading job {}: {e}",
                job_path.display()
            );
            return ExitCode::from(2);
        }
    };
    let Some((_, run)) = table.iter().find(|(k, _)| *k == job.kind) else {
        let _ = writeln!(
            std::io::stderr(),
            "error: stage kind {} runs in {}, not {}",
            job.kind,
            job.kind.spec().runner.binary(),
            runner.binary()
        );
        return ExitCode::from(2);
    };
    let reporter = ChildReporter::default();
    match run(&job, &reporter) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Over the pipe, not the log: on a full disk the log write
            // fails (and eprintln! would panic on it).
            let bad_input = matches!(
                e,
                crate::StageError::InvalidInput { .. }
                    | crate::StageError::ChecksumMismatch { .. }
                    | crate::StageError::InvalidParam { .. }
            );
            reporter.error(&e.to_string(), bad_input);
            ExitCode::from(1)
        }
    }
}

/// The stages crate's answers to the engine's questions.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Test hook (`BSCE_PIPE_CODE_SALT=kind:text,...`, read once at the
    /// binary's edge): mixes text into a kind's code digest, as an edit of
    /// that stage's source would, without rebuilding.
    pub salts: BTreeMap<String, String>,
}

impl StageCatalog for Catalog {
    fn code_digest(&self, kind: StageKind, variant: Option<&str>) -> String {
        let base = code_entry(kind, variant).1;
        match self.salts.get(kind.as_str()) {
            Some(salt) => {
                bsce_pipeline::digest::Digest::of_bytes(format!("{base}\0{salt}").as_bytes())
                    .to_hex()
            }
            None => base.to_string(),
        }
    }

    fn code_files(&self, kind: StageKind, variant: Option<&str>) -> Vec<(String, String)> {
        code_entry(kind, variant)
            .2
            .iter()
            .map(|(f, d)| (f.to_string(), d.to_string()))
            .collect()
    }

    fn libraries(&self, kind: StageKind) -> BTreeMap<String, String> {
        LIBRARIES
            .iter()
            .find(|(k, _)| *k == kind.as_str())
            .map(|(_, libs)| {
                libs.iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn named_order(&self, name: &str) -> Option<usize> {
        crate::order::named_order(name).map(|o| o.classes.len())
    }

    fn named_order_names(&self) -> Vec<String> {
        crate::order::named_order_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

type CodeEntry = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

fn code_entry(kind: StageKind, variant: Option<&str>) -> &'static CodeEntry {
    let name = match variant {
        Some(v) => format!("{kind}:{v}"),
        None => kind.to_string(),
    };
    CODE_DIGESTS
        .iter()
        .find(|(k, ..)| *k == name)
        .unwrap_or_else(|| panic!("build.rs digests every stage kind and variant, not {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code_digest() {
        let c = Catalog::default();
        let digests: std::collections::BTreeSet<String> = StageKind::ALL
            .iter()
            .map(|k| c.code_digest(*k, None))
            .collect();
        assert_eq!(digests.len(), StageKind::ALL.len());
    }

    #[test]
    fn code_digests_list_their_files_and_leave_tests_out() {
        let c = Catalog::default();
        let files =
            |k, v| -> Vec<String> { c.code_files(k, v).into_iter().map(|(f, _)| f).collect() };
        let train = files(StageKind::Train, Some("lucir"));
        assert!(
            train.contains(&"train/src/loss/mod.rs".to_string()),
            "{train:?}"
        );
        assert!(
            train.contains(&"train/src/loss/lucir.rs".to_string()),
            "{train:?}"
        );
        assert!(
            !train.contains(&"train/src/loss/podnet.rs".to_string()),
            "{train:?}"
        );
        assert!(
            !train.contains(&"train/src/loss/tests.rs".to_string()),
            "test-only"
        );
        assert!(
            train.contains(&"train/src/stage/mod.rs".to_string()),
            "{train:?}"
        );
        assert!(
            train.contains(&"stages/src/dataset/artefact.rs".to_string()),
            "{train:?}"
        );
        let eval = files(StageKind::Evaluate, None);
        assert!(!eval.iter().any(|f| f.contains("loss")), "{eval:?}");
        let prepare = files(StageKind::Prepare, None);
        assert!(prepare.contains(&"stages/src/dataset/cifar/pickle.rs".to_string()));
        assert!(
            !prepare.contains(&"stages/src/dataset/cifar/tests.rs".to_string()),
            "test-only"
        );
        assert!(
            !prepare.contains(&"stages/src/dataset/cifar/fixtures.rs".to_string()),
            "exempt"
        );
    }

    #[test]
    fn salt_changes_one_kind_only() {
        let plain = Catalog::default();
        let salted = Catalog {
            salts: BTreeMap::from([("order".into(), "edit".into())]),
        };
        assert_ne!(
            plain.code_digest(StageKind::Order, None),
            salted.code_digest(StageKind::Order, None)
        );
        assert_eq!(
            plain.code_digest(StageKind::Prepare, None),
            salted.code_digest(StageKind::Prepare, None)
        );
    }

    #[test]
    fn a_train_stage_digests_its_own_method_only() {
        let c = Catalog::default();
        let d = |v| c.code_digest(StageKind::Train, Some(v));
        let all: std::collections::BTreeSet<String> = ["finetune", "icarl", "lucir", "podnet"]
            .into_iter()
            .map(d)
            .collect();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn every_preset_has_a_code_variant() {
        use bsce_pipeline::params::Preset;
        let spec = StageKind::Train.spec();
        for p in [
            Preset::Finetune,
            Preset::Icarl,
            Preset::Lucir,
            Preset::Podnet,
        ] {
            let params = serde_json::json!({"method": {"preset": p}});
            assert!(spec.variant_of(&params).is_some(), "{p:?}");
        }
    }

    #[test]
    fn prepare_records_the_jpeg_decoder_version() {
        let libs = Catalog::default().libraries(StageKind::Prepare);
        assert!(libs.contains_key("image"), "{libs:?}");
    }
}
