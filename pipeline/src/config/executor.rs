//! The `executor` section's settings as the config resolves them: what a
//! Slurm job of each stage kind asks for. The Slurm executor
//! (`exec::slurm`) reads them; the config owns them, so reading a config
//! never reaches into an executor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::registry::StageKind;

/// What `sbatch` asks for, per stage kind (unset: the cluster's default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `--cpus-per-task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `--mem`, e.g. `16G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// `--time`, e.g. `2-00:00:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `--gres`, e.g. `gpu:1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gres: Option<String>,
    /// More `sbatch` arguments, appended as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

impl SlurmResources {
    /// `self` with every field `over` sets taken from it; `extra` adds up.
    pub fn merged(&self, over: &SlurmResources) -> SlurmResources {
        let pick = |a: &Option<String>, b: &Option<String>| b.clone().or_else(|| a.clone());
        SlurmResources {
            partition: pick(&self.partition, &over.partition),
            account: pick(&self.account, &over.account),
            cpus: over.cpus.or(self.cpus),
            mem: pick(&self.mem, &over.mem),
            time: pick(&self.time, &over.time),
            gres: pick(&self.gres, &over.gres),
            extra: self.extra.iter().chain(&over.extra).cloned().collect(),
        }
    }

    /// Whether the job gets a GPU (its stage then runs on `cuda:0`).
    pub fn has_gpu(&self) -> bool {
        self.gres.as_deref().is_some_and(|g| g.starts_with("gpu"))
    }
}

/// How the stages that run on nodes are cut into jobs
/// (`executor.slurm.group`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlurmGroup {
    /// One job per training run's chain: its train and evaluate stages,
    /// task after task, each stored as it finishes (stages shared by
    /// several runs, such as a common base task, get a job of their own).
    /// Other kinds get a job per stage.
    #[default]
    Run,
    /// One job per stage.
    Stage,
}

/// The resolved `executor.slurm` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlurmSettings {
    pub defaults: SlurmResources,
    pub kinds: BTreeMap<StageKind, SlurmResources>,
    /// How often a job lost to a node failure (requeued by Slurm) may
    /// start again before it counts as failed.
    pub max_retries: u32,
    /// How often the submitting process asks Slurm for job states.
    pub poll_seconds: f64,
    /// The store jobs use when the submitter's store is not on storage the
    /// nodes share: a node-local path (`$VAR`s expanded on the node), used
    /// over `store.remote`.
    pub node_store: Option<String>,
    pub group: SlurmGroup,
    /// Kinds that run on the submitting machine instead of as jobs: those
    /// that need no GPU and compute for milliseconds.
    pub local_kinds: Vec<StageKind>,
    /// The most jobs one submission may hold; more is refused before
    /// anything is submitted, with the number needed.
    pub max_jobs: u32,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            defaults: SlurmResources::default(),
            kinds: BTreeMap::new(),
            max_retries: super::defaults::max_retries(),
            poll_seconds: super::defaults::poll_seconds(),
            node_store: None,
            group: SlurmGroup::default(),
            local_kinds: super::defaults::local_kinds(),
            max_jobs: super::defaults::max_jobs(),
        }
    }
}

impl SlurmSettings {
    /// Whether stages of `kind` run on the submitting machine.
    pub(crate) fn is_local(&self, kind: StageKind) -> bool {
        self.local_kinds.contains(&kind)
    }

    pub fn resources(&self, kind: StageKind) -> SlurmResources {
        match self.kinds.get(&kind) {
            Some(k) => self.defaults.merged(k),
            None => self.defaults.clone(),
        }
    }
}
