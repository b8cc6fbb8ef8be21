//! Run events. The scheduler emits them; the terminal display, the JSON
//! summary and the run record are consumers (nextest's reporter split).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::digest::Digest;
use crate::key::DirtyReason;

#[derive(Clone, Debug)]
pub enum RunEvent {
    Planned {
        total: usize,
    },
    /// Found in the store; `saved_seconds` is what computing it took.
    Cached {
        label: String,
        key: Digest,
        saved_seconds: f64,
    },
    /// Another process holds this key; waiting for it.
    Waiting {
        label: String,
    },
    Started {
        label: String,
        key: Digest,
        reasons: Vec<DirtyReason>,
        device: String,
    },
    Progress {
        label: String,
        done: u64,
        total: Option<u64>,
        unit: String,
    },
    Finished {
        label: String,
        key: Digest,
        wall_seconds: f64,
    },
    Failed {
        label: String,
        error: String,
        /// The stage's input was at fault, not the stage.
        bad_input: bool,
        log_tail: String,
    },
    /// Not run: its key failed on these same inputs before (not on its
    /// environment), and the run was asked not to try such a stage again
    /// ([`crate::exec::RunOptions::skip_failed`]). Counted as failed.
    FailedBefore {
        label: String,
        error: String,
        bad_input: bool,
    },
    /// An input of `label` changed on disk after it was stored: the blob
    /// was quarantined, `label`'s result (if it ran) was not kept, and the
    /// stages that made the input (label, whether it had been served from
    /// the store in this run) run again first.
    Requeued {
        label: String,
        message: String,
        producers: Vec<(String, bool)>,
    },
    /// Not run because an input failed.
    Skipped {
        label: String,
        because: String,
    },
    Interrupted,
    /// Handed to the batch system as `job`, to start after the jobs in
    /// `after` succeed; the job runs `more` stages after this one (the
    /// rest of a training run's chain).
    Submitted {
        label: String,
        job: String,
        after: Vec<String>,
        more: usize,
    },
    /// Its batch job started on `node`.
    JobStarted {
        label: String,
        job: String,
        node: String,
    },
}

pub trait Reporter {
    fn on_event(&mut self, event: &RunEvent);
    /// The run has ended: say what is still to be said (a summary kept
    /// until then).
    fn finish(&mut self) {}
}

/// Counts for `--json` and the final line.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RunSummary {
    pub stages: usize,
    pub executed: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub interrupted: bool,
    pub wall_seconds: f64,
    /// Compute time the cache saved: the recorded wall time of every stage
    /// served from the store.
    pub saved_seconds: f64,
    pub executed_labels: Vec<String>,
    pub failed_labels: BTreeMap<String, String>,
    /// Each stage not run because an input failed -> that input.
    pub skipped_labels: BTreeMap<String, String>,
    /// Of `failed`, those whose input was at fault (a bad archive, a
    /// checksum mismatch): when they are all of them, the exit is 2.
    pub failed_on_input: usize,
}

impl RunSummary {
    pub fn record(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Planned { total } => self.stages = *total,
            RunEvent::Cached { saved_seconds, .. } => {
                self.cached += 1;
                self.saved_seconds += saved_seconds;
            }
            RunEvent::Finished { label, .. } => {
                self.executed += 1;
                self.executed_labels.push(label.clone());
            }
            RunEvent::Failed {
                label,
                error,
                bad_input,
                ..
            }
            | RunEvent::FailedBefore {
                label,
                error,
                bad_input,
            } => {
                self.failed += 1;
                self.failed_on_input += usize::from(*bad_input);
                self.failed_labels.insert(label.clone(), error.clone());
            }
            RunEvent::Requeued { producers, .. } => {
                // Each producer is counted again when it finishes.
                for (label, was_cached) in producers {
                    if *was_cached {
                        self.cached = self.cached.saturating_sub(1);
                    } else if let Some(i) = self.executed_labels.iter().rposition(|l| l == label) {
                        self.executed_labels.remove(i);
                        self.executed = self.executed.saturating_sub(1);
                    }
                }
            }
            RunEvent::Skipped { label, because } => {
                self.skipped += 1;
                self.skipped_labels.insert(label.clone(), because.clone());
            }
            RunEvent::Interrupted => self.interrupted = true,
            RunEvent::Waiting { .. }
            | RunEvent::Started { .. }
            | RunEvent::Progress { .. }
            | RunEvent::Submitted { .. }
            | RunEvent::JobStarted { .. } => {}
        }
    }
}
