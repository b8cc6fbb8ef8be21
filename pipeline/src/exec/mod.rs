//! Execution: deciding what must run (with reasons), and running it.
//!
//! | module      | role                                                         |
//! |-------------|--------------------------------------------------------------|
//! | [`context`] | ambient state read once per run (host, binary, commit)        |
//! | [`job`]     | the job file and stdout protocol of a stage's child process   |
//! | [`child`]   | launching one stage as a child and ingesting its outputs      |
//!
//! The scheduler is this module: a main thread that owns all decisions and a
//! worker thread per running stage. Keys are computed when a node becomes
//! ready, from its inputs' *output* digests, so a byte-identical upstream
//! rerun stops recomputation there (early cutoff).

pub mod child;
pub mod context;
pub mod job;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use crate::catalog::StageCatalog;
use crate::digest::Digest;
use crate::events::{Reporter, RunEvent, RunSummary};
use crate::key::{diff_records, DirtyReason, KeyRecord, KEY_VERSION};
use crate::plan::{Plan, PlanNode};
use crate::sources::{SourceDigester, SourceError};
use crate::store::{ActionRecord, LocalStore, OutputEntry, StoreError};
pub use context::RunContext;

/// Set by the SIGINT/SIGTERM handler; workers kill their children when they
/// see it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the plan has a cycle through: {}", .0.join(", "))]
    Cycle(Vec<String>),
}

#[derive(Clone, Debug)]
pub enum NodeStatus {
    Cached {
        key: Digest,
        record: ActionRecord,
    },
    ToRun {
        key: Option<Digest>,
        reasons: Vec<DirtyReason>,
    },
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub jobs: usize,
    /// GPU indices handed out one per GPU stage; empty = CPU.
    pub gpus: Vec<u32>,
    pub keep_going: bool,
    /// Labels (or label prefixes ending in `/`) to rerun even if cached.
    pub force: Vec<String>,
}

impl RunOptions {
    fn forces(&self, label: &str) -> bool {
        self.force.iter().any(|f| {
            f == "all" || f == label || (f.ends_with('/') && label.starts_with(f.as_str()))
        })
    }
}

pub struct Engine<'a> {
    pub plan: &'a Plan,
    pub store: &'a LocalStore,
    pub catalog: &'a dyn StageCatalog,
    pub ctx: &'a RunContext,
    /// Where downloads without a configured path land.
    pub downloads: PathBuf,
}

/// Per node: the digests of its sources and where the stage finds them.
struct Sources {
    digests: BTreeMap<String, Digest>,
    locations: BTreeMap<String, job::SourceLocation>,
}

impl<'a> Engine<'a> {
    /// An engine over `store`; downloads land in the store's `downloads/`.
    pub fn new(
        plan: &'a Plan,
        store: &'a LocalStore,
        catalog: &'a dyn StageCatalog,
        ctx: &'a RunContext,
    ) -> Self {
        Engine {
            plan,
            store,
            catalog,
            ctx,
            downloads: store.root().join("downloads"),
        }
    }

    fn resolve_sources(&self) -> Result<Vec<Sources>, EngineError> {
        let digester = SourceDigester::new(self.store.state_dir(), self.store.tmp_dir());
        let mut out = Vec::with_capacity(self.plan.nodes.len());
        for node in &self.plan.nodes {
            let mut s = Sources {
                digests: BTreeMap::new(),
                locations: BTreeMap::new(),
            };
            for src in &node.sources {
                let local = src.path.as_ref().filter(|p| p.exists());
                let (digest, loc) = match (local, &src.url, src.expected) {
                    (Some(p), _, expected) => {
                        let d = digester.digest(p, src.is_tree)?;
                        if let Some(e) = expected {
                            if e != d {
                                return Err(SourceError::Mismatch {
                                    path: p.clone(),
                                    expected: e,
                                    actual: d,
                                }
                                .into());
                            }
                        }
                        (
                            d,
                            job::SourceLocation {
                                path: p.clone(),
                                url: None,
                                sha256: None,
                            },
                        )
                    }
                    (None, Some(url), Some(expected)) => {
                        let dest = src
                            .path
                            .clone()
                            .unwrap_or_else(|| self.downloads.join(format!("{expected}.download")));
                        (
                            expected,
                            job::SourceLocation {
                                path: dest,
                                url: Some(url.clone()),
                                sha256: Some(expected.to_hex()),
                            },
                        )
                    }
                    (None, ..) => {
                        let path = src.path.clone().unwrap_or_default();
                        return Err(SourceError::Io {
                            path,
                            source: std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "no such file or directory",
                            ),
                        }
                        .into());
                    }
                };
                s.digests.insert(src.name.clone(), digest);
                s.locations.insert(src.name.clone(), loc);
            }
            out.push(s);
        }
        Ok(out)
    }

    /// The key record of `node`; inputs whose producer has not finished are
    /// left out and returned as pending (input name -> producer label).
    fn key_record(
        &self,
        node: &PlanNode,
        sources: &Sources,
        outputs: &[Option<BTreeMap<String, OutputEntry>>],
    ) -> (KeyRecord, BTreeMap<String, String>) {
        let mut inputs = BTreeMap::new();
        let mut pending = BTreeMap::new();
        for (name, d) in &sources.digests {
            inputs.insert(format!("source/{name}"), *d);
        }
        for input in &node.inputs {
            for file in &input.files {
                let name = format!("{}/{file}", input.name);
                match &outputs[input.node] {
                    Some(out) => {
                        let d = out.get(file).map(|e| e.digest).unwrap_or_else(|| {
                            // A missing output file is a stage bug; hashing
                            // its absence keeps the key honest and the
                            // stage will fail reading it.
                            Digest::of_bytes(b"")
                        });
                        inputs.insert(name, d);
                    }
                    None => {
                        pending.insert(name, self.plan.nodes[input.node].label.clone());
                    }
                }
            }
        }
        let record = KeyRecord {
            kind: node.kind.as_str().into(),
            key_version: KEY_VERSION,
            code_digest: self.catalog.code_digest(node.kind),
            params: node.params.clone(),
            inputs,
            libraries: self.catalog.libraries(node.kind),
        };
        (record, pending)
    }

    fn reasons(
        &self,
        node: &PlanNode,
        record: &KeyRecord,
        pending: &BTreeMap<String, String>,
        forced: bool,
    ) -> Result<Vec<DirtyReason>, EngineError> {
        if forced {
            return Ok(vec![DirtyReason::Forced]);
        }
        let Some(last) = self.store.get_label(&node.label)? else {
            return Ok(vec![DirtyReason::NewStage]);
        };
        let reasons = diff_records(&last.key_record, record, pending);
        if !reasons.is_empty() {
            return Ok(reasons);
        }
        let key = record.key();
        if self.store.get_action(&key)?.is_some() {
            return Ok(vec![DirtyReason::OutputsMissing]);
        }
        let failed = self.store.get_failure(&key)?.is_some();
        Ok(vec![DirtyReason::NotInStore { failed }])
    }

    /// What a run would do now, without running anything.
    pub fn status(&self, opts: &RunOptions) -> Result<Vec<NodeStatus>, EngineError> {
        let order = self.plan.topo_order().map_err(EngineError::Cycle)?;
        let sources = self.resolve_sources()?;
        let mut outputs: Vec<Option<BTreeMap<String, OutputEntry>>> =
            vec![None; self.plan.nodes.len()];
        let mut status: Vec<Option<NodeStatus>> = vec![None; self.plan.nodes.len()];
        for id in order {
            let node = &self.plan.nodes[id];
            let (record, pending) = self.key_record(node, &sources[id], &outputs);
            let forced = opts.forces(&node.label);
            let st = if pending.is_empty() {
                let key = record.key();
                match self.store.get_usable_action(&key)? {
                    Some(rec) if !forced => {
                        outputs[id] = Some(rec.outputs.clone());
                        NodeStatus::Cached { key, record: rec }
                    }
                    _ => NodeStatus::ToRun {
                        key: Some(key),
                        reasons: self.reasons(node, &record, &pending, forced)?,
                    },
                }
            } else {
                NodeStatus::ToRun {
                    key: None,
                    reasons: self.reasons(node, &record, &pending, forced)?,
                }
            };
            status[id] = Some(st);
        }
        Ok(status
            .into_iter()
            .map(|s| s.expect("every node visited"))
            .collect())
    }

    /// Runs every stage that is not in the store. Returns the summary; stage
    /// failures are in it, not errors.
    pub fn run(
        &self,
        opts: &RunOptions,
        reporter: &mut dyn Reporter,
    ) -> Result<RunSummary, EngineError> {
        let start = Instant::now();
        let order = self.plan.topo_order().map_err(EngineError::Cycle)?;
        let sources = self.resolve_sources()?;
        self.store.clean_stale_tmp();
        let n = self.plan.nodes.len();
        let mut summary = RunSummary::default();
        let mut emit = |e: RunEvent, summary: &mut RunSummary| {
            summary.record(&e);
            reporter.on_event(&e);
        };
        emit(RunEvent::Planned { total: n }, &mut summary);

        #[derive(Clone, Copy, PartialEq)]
        enum State {
            Waiting,
            Running,
            Done,
            Failed,
        }
        let mut state = vec![State::Waiting; n];
        let mut outputs: Vec<Option<BTreeMap<String, OutputEntry>>> = vec![None; n];
        let mut free_gpus: Vec<u32> = opts.gpus.clone();
        let jobs = opts.jobs.max(1);
        let threads_per_stage = (self.ctx.cpus / jobs).max(1);
        let (tx, rx) = mpsc::channel::<child::WorkerMessage>();
        let mut running = 0usize;
        let mut stop_launching = false;

        std::thread::scope(|scope| -> Result<(), EngineError> {
            loop {
                if INTERRUPTED.load(Ordering::SeqCst) && !stop_launching {
                    stop_launching = true;
                    emit(RunEvent::Interrupted, &mut summary);
                }
                // Launch or resolve every node whose inputs are all done.
                for &id in &order {
                    if state[id] != State::Waiting || stop_launching {
                        continue;
                    }
                    let node = &self.plan.nodes[id];
                    let input_states: Vec<State> =
                        node.inputs.iter().map(|i| state[i.node]).collect();
                    if let Some(failed) =
                        node.inputs.iter().find(|i| state[i.node] == State::Failed)
                    {
                        state[id] = State::Failed;
                        let because = self.plan.nodes[failed.node].label.clone();
                        emit(
                            RunEvent::Skipped {
                                label: node.label.clone(),
                                because,
                            },
                            &mut summary,
                        );
                        continue;
                    }
                    if input_states.iter().any(|s| *s != State::Done) {
                        continue;
                    }
                    let (record, pending) = self.key_record(node, &sources[id], &outputs);
                    debug_assert!(pending.is_empty());
                    let key = record.key();
                    let forced = opts.forces(&node.label);
                    if !forced {
                        if let Some(rec) = self.store.get_usable_action(&key)? {
                            outputs[id] = Some(rec.outputs.clone());
                            state[id] = State::Done;
                            emit(
                                RunEvent::Cached {
                                    label: node.label.clone(),
                                    key,
                                    saved_seconds: rec.provenance.wall_seconds,
                                },
                                &mut summary,
                            );
                            continue;
                        }
                    }
                    if running >= jobs {
                        continue;
                    }
                    let reasons = self.reasons(node, &record, &pending, forced)?;
                    let device = match free_gpus.pop() {
                        Some(g) if node.kind.needs_gpu() => format!("cuda:{g}"),
                        Some(g) => {
                            free_gpus.push(g);
                            "cpu".into()
                        }
                        None => "cpu".into(),
                    };
                    let work = child::StageRun {
                        id,
                        node,
                        record,
                        key,
                        reasons,
                        forced,
                        device,
                        threads: threads_per_stage,
                        sources: sources[id].locations.clone(),
                        inputs: node
                            .inputs
                            .iter()
                            .map(|i| {
                                let files = i
                                    .files
                                    .iter()
                                    .map(|f| {
                                        let d = outputs[i.node]
                                            .as_ref()
                                            .and_then(|o| o.get(f))
                                            .map(|e| e.digest);
                                        (f.clone(), d)
                                    })
                                    .collect();
                                (i.name.clone(), files)
                            })
                            .collect(),
                    };
                    state[id] = State::Running;
                    running += 1;
                    let tx = tx.clone();
                    let engine = &*self;
                    scope.spawn(move || child::run_stage(engine, work, tx));
                }
                if running == 0 {
                    break;
                }
                // Wait for a worker to report.
                let msg = match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                match msg {
                    child::WorkerMessage::Event(e) => emit(e, &mut summary),
                    child::WorkerMessage::Done { id, device, result } => {
                        running -= 1;
                        if let Some(g) = device.strip_prefix("cuda:").and_then(|g| g.parse().ok()) {
                            free_gpus.push(g);
                        }
                        let label = self.plan.nodes[id].label.clone();
                        match result {
                            child::Outcome::Executed {
                                key,
                                outputs: out,
                                wall_seconds,
                            } => {
                                outputs[id] = Some(out);
                                state[id] = State::Done;
                                emit(
                                    RunEvent::Finished {
                                        label,
                                        key,
                                        wall_seconds,
                                    },
                                    &mut summary,
                                );
                            }
                            child::Outcome::CachedByOther {
                                key,
                                outputs: out,
                                saved_seconds,
                            } => {
                                outputs[id] = Some(out);
                                state[id] = State::Done;
                                emit(
                                    RunEvent::Cached {
                                        label,
                                        key,
                                        saved_seconds,
                                    },
                                    &mut summary,
                                );
                            }
                            child::Outcome::Failed { error, log_tail } => {
                                state[id] = State::Failed;
                                emit(
                                    RunEvent::Failed {
                                        label,
                                        error,
                                        log_tail,
                                    },
                                    &mut summary,
                                );
                                if !opts.keep_going {
                                    stop_launching = true;
                                }
                            }
                            child::Outcome::Interrupted => {
                                state[id] = State::Failed;
                            }
                        }
                    }
                }
            }
            Ok(())
        })?;
        summary.wall_seconds = start.elapsed().as_secs_f64();
        Ok(summary)
    }
}
