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
use super::{CancelToken, Engine, EngineError, RunOptions, Sources};
use crate::digest::Digest;
use crate::events::RunEvent;
use crate::plan::NodeId;
use crate::store::OutputEntry;

/// How one stage run by [`NodeRunner::run`] ended; a Slurm job writes it
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
    /// Not run: a stage before it in the same job, which it reads from,
    /// failed (`because`: the stage that failed first).
    Skipped {
        because: String,
    },
}

/// Runs stages alone, one after another, each with its inputs from the
/// store: the stages of a Slurm job, or those the submitting machine runs
/// itself. The plan's order and its sources are worked out once.
pub struct NodeRunner<'e, 'a> {
    engine: &'e Engine<'a>,
    order: Vec<NodeId>,
    sources: Vec<Sources>,
}

impl NodeResult {
    /// The stage is in the store (computed now, or found there).
    pub fn is_stored(&self) -> bool {
        matches!(
            self,
            NodeResult::Executed { .. } | NodeResult::Cached { .. }
        )
    }
}

impl<'a> Engine<'a> {
    /// A [`NodeRunner`] over this engine's plan and store: every source
    /// must be present.
    pub fn node_runner(&self) -> Result<NodeRunner<'_, 'a>, EngineError> {
        let order = self.plan.topo_order().map_err(EngineError::Cycle)?;
        let sources = self.present_sources()?;
        self.store.local().clean_stale_tmp();
        Ok(NodeRunner {
            engine: self,
            order,
            sources,
        })
    }
}

impl NodeRunner<'_, '_> {
    /// Runs stage `id` unless the store has it. Every stage it reads from
    /// must be in the store (local, or the remote): this never runs them.
    pub fn run(
        &self,
        id: NodeId,
        opts: &RunOptions,
        device: &str,
        threads: usize,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(&RunEvent),
    ) -> Result<NodeResult, EngineError> {
        let engine = self.engine;
        let sources = &self.sources;
        // The stages `id` depends on, in plan order.
        let mut needed = vec![false; engine.plan.nodes.len()];
        needed[id] = true;
        for &n in self.order.iter().rev() {
            if needed[n] {
                for i in &engine.plan.nodes[n].inputs {
                    needed[i.node] = true;
                }
            }
        }
        let mut outputs: Vec<Option<BTreeMap<String, OutputEntry>>> =
            vec![None; engine.plan.nodes.len()];
        for &n in self.order.iter().filter(|&&n| needed[n] && n != id) {
            let (record, pending) = engine.key_record(&engine.plan.nodes[n], &sources[n], &outputs);
            debug_assert!(pending.is_empty(), "inputs resolved in plan order");
            match engine.store.lookup(&record.key(), true)? {
                Some(rec) => outputs[n] = Some(rec.outputs),
                None => {
                    return Ok(NodeResult::Failed {
                        error: format!(
                            "input stage {} is not in the store (key {}): it must succeed first",
                            engine.plan.nodes[n].label,
                            record.key().short()
                        ),
                        bad_input: false,
                        log_tail: String::new(),
                    })
                }
            }
        }
        let node = &engine.plan.nodes[id];
        let (record, _) = engine.key_record(node, &sources[id], &outputs);
        let forced = opts.forces(&node.label);
        let run = engine.stage_run(
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
        child::run_stage(&engine.stage_env(), run, cancel, tx);
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
