//! The entry of a stage's child process: route a job to its kind's code.
//! Pure routing: it is in no kind's code digest.

mod order;
mod prepare;
mod tasks;

use std::collections::BTreeMap;

use bsce_pipeline::catalog::{StageCatalog, StageKind};
use bsce_pipeline::exec::job::{ChildReporter, StageJob};

use crate::error::Result;

pub use tasks::{read_tasks, TaskPlan, TASKS_FILE};

include!(concat!(env!("OUT_DIR"), "/code_digests.rs"));

/// Runs a data stage. Training and evaluation run in `bsce-torch`.
pub fn run_job(job: &StageJob, reporter: &ChildReporter) -> Result<()> {
    match job.kind {
        StageKind::Prepare => prepare::run(job, reporter),
        StageKind::Order => order::run(job, reporter),
        StageKind::Tasks => tasks::run(job, reporter),
        StageKind::Train | StageKind::Evaluate => Err(crate::StageError::Other(format!(
            "stage kind {} runs in bsce-torch, not bsce-pipe",
            job.kind
        ))),
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
    fn code_digest(&self, kind: StageKind) -> String {
        let base = CODE_DIGESTS
            .iter()
            .find(|(k, _)| *k == kind.as_str())
            .map(|(_, d)| *d)
            .expect("build.rs digests every stage kind");
        match self.salts.get(kind.as_str()) {
            Some(salt) => {
                bsce_pipeline::digest::Digest::of_bytes(format!("{base}\0{salt}").as_bytes())
                    .to_hex()
            }
            None => base.to_string(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code_digest() {
        let c = Catalog::default();
        let digests: std::collections::BTreeSet<String> =
            StageKind::ALL.iter().map(|k| c.code_digest(*k)).collect();
        assert_eq!(digests.len(), StageKind::ALL.len());
    }

    #[test]
    fn salt_changes_one_kind_only() {
        let plain = Catalog::default();
        let salted = Catalog {
            salts: BTreeMap::from([("order".into(), "edit".into())]),
        };
        assert_ne!(
            plain.code_digest(StageKind::Order),
            salted.code_digest(StageKind::Order)
        );
        assert_eq!(
            plain.code_digest(StageKind::Prepare),
            salted.code_digest(StageKind::Prepare)
        );
    }

    #[test]
    fn prepare_records_the_jpeg_decoder_version() {
        let libs = Catalog::default().libraries(StageKind::Prepare);
        assert!(libs.contains_key("image"), "{libs:?}");
    }
}
