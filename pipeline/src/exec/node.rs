//! One stage alone: its inputs are taken from the store (never computed
//! here), its key is derived from them, and it runs through the same
//! lock / prepare / execute / ingest path as under the local scheduler.
//! This is the body of a Slurm job (`bsce-pipe exec-node`): a job
//! submitted before its inputs existed finds them once its dependencies
//! are done, and exits at once when its stage is already in the store.

use std::collections::BTreeMap;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::child::{self, Outcome};
use super::{CancelToken, Engine, EngineError, RunOptions};
use crate::digest::Digest;
use crate::events::RunEvent;
use crate::plan::NodeId;
use crate::store::OutputEntry;

/// How one stage run by [`Engine::run_node`] ended; a Slurm job writes it
/// to its outcome file for the submitting process to read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum NodeResult {
    Executed {
        key: Digest,
        wall_seconds: f64,
    },
    /// In the store already (computed by another job, machine or run).
    Cached {
        key: Digest,
        saved_seconds: f64,
    },
    Failed {
        error: String,
        bad_input: bool,
        log_tail: String,
    },
    Interrupted,
}

impl<'a> Engine<'a> {
    /// Runs stage `id` unless the store has it. Every stage it reads from
    /// must be in the store (local, or the remote): this never runs them.
    pub fn run_node(
        &self,
        id: NodeId,
        opts: &RunOptions,
        device: &str,
        threads: usize,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(&RunEvent),
    ) -> Result<NodeResult, EngineError> {
        let order = self.plan.topo_order().map_err(EngineError::Cycle)?;
        let sources = self.present_sources()?;
        self.store.local().clean_stale_tmp();
        // The stages `id` depends on, in plan order.
        let mut needed = vec![false; self.plan.nodes.len()];
        needed[id] = true;
        for &n in order.iter().rev() {
            if needed[n] {
                for i in &self.plan.nodes[n].inputs {
                    needed[i.node] = true;
                }
            }
        }
        let mut outputs: Vec<Option<BTreeMap<String, OutputEntry>>> =
            vec![None; self.plan.nodes.len()];
        for &n in order.iter().filter(|&&n| needed[n] && n != id) {
            let (record, pending) = self.key_record(&self.plan.nodes[n], &sources[n], &outputs);
            debug_assert!(pending.is_empty(), "inputs resolved in plan order");
            match self.store.lookup(&record.key(), true)? {
                Some(rec) => outputs[n] = Some(rec.outputs),
                None => {
                    return Ok(NodeResult::Failed {
                        error: format!(
                            "input stage {} is not in the store (key {}): it must succeed first",
                            self.plan.nodes[n].label,
                            record.key().short()
                        ),
                        bad_input: false,
                        log_tail: String::new(),
                    })
                }
            }
        }
        let node = &self.plan.nodes[id];
        let (record, _) = self.key_record(node, &sources[id], &outputs);
        let forced = opts.forces(&node.label);
        let run = self.stage_run(
            id,
            record,
            forced,
            device.to_string(),
            threads,
            &sources[id],
            &outputs,
        )?;
        let (tx, rx) = mpsc::channel();
        // Runs on this thread: the worker-thread split is the scheduler's.
        child::run_stage(&self.stage_env(), run, cancel, tx);
        let mut result = None;
        for msg in rx.try_iter() {
            match msg {
                child::WorkerMessage::Event(e) => on_event(&e),
                child::WorkerMessage::Done { result: r, .. } => result = Some(r),
                child::WorkerMessage::Cancel => {}
            }
        }
        Ok(
            match result.expect("run_stage always reports how it ended") {
                Outcome::Executed {
                    key, wall_seconds, ..
                } => NodeResult::Executed { key, wall_seconds },
                Outcome::CachedByOther {
                    key, saved_seconds, ..
                } => NodeResult::Cached { key, saved_seconds },
                Outcome::Failed {
                    error,
                    bad_input,
                    log_tail,
                } => NodeResult::Failed {
                    error,
                    bad_input,
                    log_tail,
                },
                Outcome::InputChanged { message, .. } => NodeResult::Failed {
                    error: format!("{message}; run again to recompute it"),
                    bad_input: false,
                    log_tail: String::new(),
                },
                Outcome::Interrupted => NodeResult::Interrupted,
            },
        )
    }
}
