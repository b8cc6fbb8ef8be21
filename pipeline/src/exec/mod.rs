//! Execution: deciding what must run (with reasons), and running it.
//!
//! | module      | role                                                         |
//! |-------------|--------------------------------------------------------------|
//! | [`context`] | ambient state read once per run (host, binary, commit)        |
//! | [`job`]     | the job file and stdout protocol of a stage's child process   |
//! | [`child`]   | one stage: lock, prepare its work folder, run it, ingest      |
//! | [`executor`] | the executor seam: launch a prepared stage, say how it ended |
//! | [`node`]    | one stage alone, its inputs from the store (a Slurm job's body) |
//! | [`slurm`]   | the whole DAG as Slurm jobs: submit, watch, cancel            |
//! | [`cancel`]  | the cancellation token a run is given                          |
//! | [`gpus`]    | GPU slots, shared by N stages when asked                        |
//!
//! The scheduler is this module: a main thread that owns all decisions and a
//! worker thread per running stage, joined by one channel. Keys are computed when a node becomes
//! ready, from its inputs' *output* digests, so a byte-identical upstream
//! rerun stops recomputation there (early cutoff).

pub mod cancel;
pub(crate) mod child;
pub mod context;
pub(crate) mod executor;
pub(crate) mod gpus;
pub mod job;
pub mod node;
mod schedule;
pub mod slurm;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use rayon::prelude::*;

use crate::catalog::StageCatalog;
use crate::digest::Digest;
use crate::events::{Reporter, RunEvent, RunSummary};
use crate::key::{diff_records, DirtyReason, KeyRecord, StageKey, KEY_VERSION};
use crate::plan::{NodeId, Plan, PlanNode};
use crate::sources::{SourceDigester, SourceError};
use crate::store::{ActionRecord, CachedAction, FailureRecord, OutputEntry, Store, StoreError};
pub use cancel::CancelToken;
pub use context::RunContext;
use gpus::GpuPool;
use schedule::Schedule;

/// Rounds a run gives stages whose inputs changed on disk before it
/// fails them (each round recomputes the changed inputs first).
const MAX_REQUEUE_ROUNDS: usize = 3;
/// Ready nodes looked up in one batch below which the lookup stays on the
/// scheduler's thread: handing a few to the thread pool costs more than
/// it saves (a first run finds one or two ready at a time).
const PARALLEL_LOOKUP_MIN: usize = 32;

/// What the store says about a ready node.
enum Lookup {
    Cached {
        key: Digest,
        record: CachedAction,
    },
    ToRun {
        record: KeyRecord,
        key: Digest,
        forced: bool,
    },
    /// Failed on these inputs before; not tried again (`skip_failed`).
    FailedBefore(FailureRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the plan has a cycle through: {}", .0.join(", "))]
    Cycle(Vec<String>),
    #[error("the slurm jobs of these stages would wait for each other (executor.slurm.group: stage avoids it): {}", .0.join(", "))]
    JobCycle(Vec<String>),
    #[error("no slurm job is left in flight, yet these stages still wait to run: {}", .0.join(", "))]
    Stuck(Vec<String>),
    #[error(transparent)]
    Slurm(#[from] slurm::SlurmError),
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

/// One node as `explain` shows it.
#[derive(Clone, Debug)]
pub struct Explained {
    pub status: NodeStatus,
    pub record: KeyRecord,
    /// Inputs not known yet: input -> the label of the stage that makes it.
    pub pending: BTreeMap<String, String>,
    /// The stage's seed, once all its inputs are known.
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub jobs: usize,
    /// GPUs for the kinds that need one; empty = they run on the CPU.
    pub gpus: Vec<u32>,
    /// How many GPU stages share one GPU (0 or 1: one each).
    pub stages_per_gpu: u32,
    /// Per-kind overrides of `stages_per_gpu`.
    pub stages_per_gpu_kind: BTreeMap<crate::registry::StageKind, u32>,
    pub keep_going: bool,
    /// Labels (or label prefixes ending in `/`) to rerun even if cached.
    pub force: Vec<String>,
    /// `status`/`explain` with a remote: download what the remote has
    /// (`cache pull`) instead of only reading its records.
    pub fetch: bool,
    /// A stage whose key failed on its inputs before (its failure record
    /// does not blame the environment) is not tried again but reported as
    /// [`RunEvent::FailedBefore`]: the report's result stages, which are
    /// deterministic and which a run has just tried.
    pub skip_failed: bool,
}

/// Why a stage that failed last time runs again: its inputs failed it, or
/// its environment did (and then the inputs are not blamed).
fn failed_before(f: &FailureRecord) -> DirtyReason {
    if f.environment {
        DirtyReason::EnvironmentFailed {
            error: f.error.clone(),
        }
    } else {
        DirtyReason::NotInStore { failed: true }
    }
}

impl RunOptions {
    fn forces(&self, label: &str) -> bool {
        self.force.iter().any(|f| force_names(f, label))
    }
}

/// Whether one `--force` value (a label, a prefix ending in '/', or 'all')
/// names the stage `label`.
pub fn force_names(force: &str, label: &str) -> bool {
    force == "all" || force == label || (force.ends_with('/') && label.starts_with(force))
}

pub struct Engine<'a> {
    pub plan: &'a Plan,
    pub store: &'a dyn Store,
    pub catalog: &'a dyn StageCatalog,
    pub ctx: &'a RunContext,
    /// What launches a prepared stage (here, a child process).
    pub executor: &'a dyn executor::StageExecutor,
    /// Where downloads without a configured path land.
    pub downloads: PathBuf,
}

/// Per node: the digests of its sources and where the stage finds them.
pub(crate) struct Sources {
    digests: BTreeMap<String, Digest>,
    locations: BTreeMap<String, job::SourceLocation>,
    /// Sources that are neither on disk nor downloadable: name -> the path
    /// the config gives. `status` reports them; `run` refuses to start.
    missing: BTreeMap<String, PathBuf>,
}

impl<'a> Engine<'a> {
    /// An engine over `store`; downloads land in the store's `downloads/`.
    pub fn new(
        plan: &'a Plan,
        store: &'a dyn Store,
        catalog: &'a dyn StageCatalog,
        ctx: &'a RunContext,
    ) -> Self {
        Engine {
            plan,
            store,
            catalog,
            ctx,
            executor: &executor::LocalExecutor,
            downloads: store.local().root().join("downloads"),
        }
    }

    /// Every source digested and checked against its `sha256`, or the
    /// first one that is missing as an error: what `run` needs before it
    /// starts (status reports missing sources instead).
    /// The part of the engine a stage run reads.
    fn stage_env(&self) -> child::StageEnv<'_> {
        child::StageEnv {
            config: &self.plan.config,
            store: self.store,
            ctx: self.ctx,
            executor: self.executor,
        }
    }

    pub fn check_sources(&self) -> Result<(), EngineError> {
        self.present_sources().map(drop)
    }

    fn present_sources(&self) -> Result<Vec<Sources>, EngineError> {
        let sources = self.resolve_sources()?;
        if let Some((_, path)) = sources.iter().flat_map(|s| &s.missing).next() {
            return Err(SourceError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            }
            .into());
        }
        Ok(sources)
    }

    fn resolve_sources(&self) -> Result<Vec<Sources>, EngineError> {
        let local = self.store.local();
        let digester = SourceDigester::new(local.state_dir(), local.tmp_dir());
        let mut out = Vec::with_capacity(self.plan.nodes.len());
        for node in &self.plan.nodes {
            let mut s = Sources {
                digests: BTreeMap::new(),
                locations: BTreeMap::new(),
                missing: BTreeMap::new(),
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
                        s.missing
                            .insert(src.name.clone(), src.path.clone().unwrap_or_default());
                        continue;
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
            code_digest: self
                .catalog
                .code_digest(node.kind, node.kind.spec().variant_of(&node.params)),
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
        let local = self.store.local();
        let Some(last) = local.get_label(&self.plan.config, &node.label)? else {
            // Never succeeded; it may have failed on these very inputs.
            if pending.is_empty() {
                if let Some(f) = local.get_failure(&record.key())? {
                    return Ok(vec![failed_before(&f)]);
                }
            }
            return Ok(vec![DirtyReason::NewStage]);
        };
        let mut reasons = diff_records(&last.key_record, record, pending);
        if !reasons.is_empty() {
            if last.config.as_ref() != Some(&self.plan.config) {
                reasons.insert(
                    0,
                    DirtyReason::ComparedWith {
                        config: last.config,
                    },
                );
            }
            return Ok(reasons);
        }
        let key = record.key();
        if let Some(rec) = local.get_action(&key)? {
            let files: Vec<String> = rec
                .outputs
                .iter()
                .filter(|(_, o)| local.is_quarantined(&o.digest))
                .map(|(f, _)| f.clone())
                .collect();
            if !files.is_empty() {
                return Ok(vec![DirtyReason::OutputsCorrupt { files }]);
            }
            return Ok(vec![DirtyReason::OutputsMissing]);
        }
        Ok(vec![match local.get_failure(&key)? {
            Some(f) => failed_before(&f),
            None => DirtyReason::NotInStore { failed: false },
        }])
    }

    /// What a run would do now, without running anything.
    pub fn status(&self, opts: &RunOptions) -> Result<Vec<NodeStatus>, EngineError> {
        Ok(self.explain(opts)?.into_iter().map(|e| e.status).collect())
    }

    /// The keys of the plan's stages that are in the store: what `cache
    /// gc` keeps for a config (or a live Slurm run).
    pub fn stored_keys(&self) -> Result<BTreeSet<StageKey>, EngineError> {
        Ok(self
            .status(&RunOptions::default())?
            .into_iter()
            .filter_map(|st| match st {
                NodeStatus::Cached { key, .. } => Some(key),
                NodeStatus::ToRun { .. } => None,
            })
            .collect())
    }

    /// [`Engine::status`] with each node's key record (inputs whose
    /// producer must run first are left out, listed in `pending`) and seed.
    pub fn explain(&self, opts: &RunOptions) -> Result<Vec<Explained>, EngineError> {
        let order = self.plan.topo_order().map_err(EngineError::Cycle)?;
        let sources = self.resolve_sources()?;
        let mut outputs: Vec<Option<BTreeMap<String, OutputEntry>>> =
            vec![None; self.plan.nodes.len()];
        let mut out: Vec<Option<Explained>> = vec![None; self.plan.nodes.len()];
        for id in order {
            let node = &self.plan.nodes[id];
            let (record, pending) = self.key_record(node, &sources[id], &outputs);
            let forced = opts.forces(&node.label);
            let st = if !sources[id].missing.is_empty() {
                // No key without the source's digest; what it feeds waits.
                NodeStatus::ToRun {
                    key: None,
                    reasons: sources[id]
                        .missing
                        .iter()
                        .map(|(name, path)| DirtyReason::SourceMissing {
                            name: name.clone(),
                            path: path.clone(),
                        })
                        .collect(),
                }
            } else if pending.is_empty() {
                let key = record.key();
                match self.store.lookup(&key, opts.fetch)? {
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
            let seed = (pending.is_empty() && sources[id].missing.is_empty())
                .then(|| self.seed(node, &record));
            out[id] = Some(Explained {
                status: st,
                record,
                pending,
                seed,
            });
        }
        Ok(out
            .into_iter()
            .map(|s| s.expect("every node visited"))
            .collect())
    }

    /// A train stage's runs, for its live TensorBoard events: each run
    /// whose task `t` this stage trains, under
    /// `<store>/tensorboard/<config stem>/`, its steps after the training
    /// and the fine-tuning epochs of the run's tasks `0..t`.
    fn live_runs(&self, id: NodeId) -> Vec<job::LiveRun> {
        if self.plan.nodes[id].kind != crate::registry::StageKind::Train {
            return Vec::new();
        }
        let stem = self
            .plan
            .config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = self
            .store
            .local()
            .root()
            .join("tensorboard")
            .join(crate::names::file_name(&stem));
        let epochs = |n: NodeId| {
            serde_json::from_value::<crate::params::TrainParams>(self.plan.nodes[n].params.clone())
                .map(|p| (p.train_epochs(), p.finetune_epochs()))
                .unwrap_or((0, 0))
        };
        self.plan
            .runs
            .iter()
            .filter_map(|r| {
                let t = r.trains.iter().position(|&n| n == id)?;
                let (first_train_step, first_finetune_step) = r.trains[..t]
                    .iter()
                    .map(|&n| epochs(n))
                    .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
                Some(job::LiveRun {
                    dir: root.join(r.path()),
                    first_train_step,
                    first_finetune_step,
                    tasks: r.trains.len(),
                })
            })
            .collect()
    }

    /// Everything one stage run needs, its inputs taken from `outputs`.
    #[allow(clippy::too_many_arguments)]
    fn stage_run(
        &self,
        id: NodeId,
        record: KeyRecord,
        forced: bool,
        device: String,
        threads: usize,
        sources: &Sources,
        outputs: &[Option<BTreeMap<String, OutputEntry>>],
    ) -> Result<child::StageRun<'a>, EngineError> {
        let node = &self.plan.nodes[id];
        let reasons = self.reasons(node, &record, &BTreeMap::new(), forced)?;
        Ok(child::StageRun {
            id,
            node,
            key: record.key(),
            seed: self.seed(node, &record),
            record,
            reasons,
            forced,
            device,
            gpu: None,
            threads,
            sources: sources.locations.clone(),
            live: self.live_runs(id),
            inputs: node
                .inputs
                .iter()
                .map(|i| child::StageInput {
                    name: i.name.clone(),
                    producer: i.node,
                    files: i
                        .files
                        .iter()
                        .map(|f| {
                            let e = outputs[i.node].as_ref().and_then(|o| o.get(f));
                            (f.clone(), e.cloned())
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// The seed a stage's randomness starts from: its identity (kind,
    /// params, and the digests of the inputs its registry row names), never
    /// its code digest.
    /// A ready node's key, and its action record when the local store
    /// has it with every output intact. Local only: a remote lookup is a
    /// round trip, made by a worker slot so lookups overlap.
    fn look_up(
        &self,
        id: NodeId,
        opts: &RunOptions,
        sources: &[Sources],
        outputs: &[Option<BTreeMap<String, OutputEntry>>],
    ) -> Result<Lookup, EngineError> {
        let node = &self.plan.nodes[id];
        let (record, pending) = self.key_record(node, &sources[id], outputs);
        debug_assert!(pending.is_empty());
        let key = record.key();
        let forced = opts.forces(&node.label);
        if !forced {
            if let Some(found) = self.store.local().get_cached(&key)? {
                return Ok(Lookup::Cached { key, record: found });
            }
            if opts.skip_failed {
                if let Some(f) = self.store.local().get_failure(&key)? {
                    if !f.environment {
                        return Ok(Lookup::FailedBefore(f));
                    }
                }
            }
        }
        Ok(Lookup::ToRun {
            record,
            key,
            forced,
        })
    }

    /// `id` failed: the events of every waiting stage downstream, skipped.
    fn skip_downstream<R>(&self, sched: &mut Schedule<R>, id: NodeId) -> Vec<RunEvent> {
        sched
            .failed(id)
            .into_iter()
            .map(|(u, because)| RunEvent::Skipped {
                label: self.plan.nodes[u].label.clone(),
                because: self.plan.nodes[because].label.clone(),
            })
            .collect()
    }

    fn seed(&self, node: &PlanNode, record: &KeyRecord) -> u64 {
        record.identity_seed(node.kind.spec().seed_inputs)
    }

    /// Runs every stage that is not in the store. Returns the summary; stage
    /// failures are in it, not errors.
    ///
    /// Cost per stage is constant: a node enters the ready queue once, when
    /// its last input finishes (counted down, never rescanned); the main
    /// thread blocks on its channel between events (workers, cancellation);
    /// a failure skips its dependants in one walk.
    pub fn run(
        &self,
        opts: &RunOptions,
        cancel: &CancelToken,
        reporter: &mut dyn Reporter,
    ) -> Result<RunSummary, EngineError> {
        let start = Instant::now();
        let order = self.plan.topo_order().map_err(EngineError::Cycle)?;
        let sources = self.present_sources()?;
        self.store.local().clean_stale_tmp();
        let mut summary = RunSummary::default();
        let mut emit = |e: RunEvent, summary: &mut RunSummary| {
            summary.record(&e);
            reporter.on_event(&e);
        };
        emit(
            RunEvent::Planned {
                total: self.plan.nodes.len(),
            },
            &mut summary,
        );
        let mut sched: Schedule<(KeyRecord, Digest, bool)> = Schedule::new(self.plan, &order);
        // Resolved GPU stages waiting for a GPU slot; CPU stages behind them
        // go on.
        let mut gpu_waiting: VecDeque<(NodeId, (KeyRecord, Digest, bool))> = VecDeque::new();
        let mut gpus = GpuPool::new(
            &opts.gpus,
            opts.stages_per_gpu,
            opts.stages_per_gpu_kind.clone(),
        );
        let jobs = opts.jobs.max(1);
        let threads_per_stage = (self.ctx.cpus / jobs).max(1);
        let (tx, rx) = mpsc::channel::<child::WorkerMessage>();
        let _on_cancel = {
            let tx = Mutex::new(tx.clone());
            cancel.on_cancel(move || {
                let _ = tx
                    .lock()
                    .expect("not poisoned")
                    .send(child::WorkerMessage::Cancel);
            })
        };
        let mut running = 0usize;
        let mut stop_launching = false;
        let env = &self.stage_env();

        std::thread::scope(|scope| -> Result<(), EngineError> {
            // Rounds: the first runs the plan; a later one only what waits
            // on a requeued producer, started once the previous round has
            // drained (so no stage is running while the counts are rebuilt).
            loop {
                loop {
                    if cancel.is_cancelled() && !stop_launching {
                        stop_launching = true;
                        emit(RunEvent::Interrupted, &mut summary);
                    }
                    // Resolve every ready node: served from the store, or to run.
                    // The lookups (key, action record, a stat per output) read
                    // nothing another lookup writes, so a batch of ready nodes
                    // is looked up on every core; the results are applied in
                    // plan order, so events and the schedule stay as they were.
                    while !stop_launching && sched.has_ready() {
                        let batch = sched.take_ready();
                        let outputs = sched.outputs();
                        let lookup = |&id: &NodeId| self.look_up(id, opts, &sources, outputs);
                        let looked: Vec<_> = if batch.len() >= PARALLEL_LOOKUP_MIN {
                            batch.par_iter().map(lookup).collect()
                        } else {
                            batch.iter().map(lookup).collect()
                        };
                        for (id, found) in batch.into_iter().zip(looked) {
                            match found? {
                                Lookup::Cached { key, record } => {
                                    sched.done(id, record.outputs, true);
                                    emit(
                                        RunEvent::Cached {
                                            label: self.plan.nodes[id].label.clone(),
                                            key,
                                            saved_seconds: record.wall_seconds,
                                        },
                                        &mut summary,
                                    );
                                }
                                Lookup::ToRun {
                                    record,
                                    key,
                                    forced,
                                } => sched.to_run(id, (record, key, forced)),
                                Lookup::FailedBefore(f) => {
                                    emit(
                                        RunEvent::FailedBefore {
                                            label: self.plan.nodes[id].label.clone(),
                                            error: f.error,
                                            bad_input: f.bad_input,
                                        },
                                        &mut summary,
                                    );
                                    for e in self.skip_downstream(&mut sched, id) {
                                        emit(e, &mut summary);
                                    }
                                }
                            }
                        }
                    }
                    // Launch what the job slots (and GPU slots) allow. A GPU
                    // stage without room waits in its own queue; CPU stages
                    // behind it go on.
                    while !stop_launching && running < jobs {
                        let gpu_first = gpus.enabled()
                            && gpu_waiting
                                .front()
                                .is_some_and(|(id, _)| gpus.peek(self.plan.nodes[*id].kind));
                        let next = if gpu_first {
                            gpu_waiting.pop_front()
                        } else {
                            sched.next_runnable()
                        };
                        let Some((id, (record, key, forced))) = next else {
                            break;
                        };
                        let node = &self.plan.nodes[id];
                        let slot = if node.kind.spec().needs_gpu && gpus.enabled() {
                            match gpus.acquire(node.kind) {
                                Some(s) => Some(s),
                                None => {
                                    gpu_waiting.push_back((id, (record, key, forced)));
                                    continue;
                                }
                            }
                        } else {
                            None
                        };
                        let device = slot.map(|s| s.device()).unwrap_or_else(|| "cpu".into());
                        let mut work = self.stage_run(
                            id,
                            record,
                            forced,
                            device,
                            threads_per_stage,
                            &sources[id],
                            sched.outputs(),
                        )?;
                        work.gpu = slot;
                        sched.started(id);
                        running += 1;
                        let tx = tx.clone();
                        let cancel = cancel.clone();
                        scope.spawn(move || child::run_stage(env, work, &cancel, tx));
                    }
                    if running == 0 && (stop_launching || !sched.has_pending()) {
                        break;
                    }
                    // With nothing running every GPU is free, so nothing waits.
                    debug_assert!(running > 0 || gpu_waiting.is_empty());
                    let Ok(msg) = rx.recv() else { break };
                    let (id, gpu, result) = match msg {
                        // Workers stop their own children; this only wakes us.
                        child::WorkerMessage::Cancel => continue,
                        child::WorkerMessage::Event(e) => {
                            emit(e, &mut summary);
                            continue;
                        }
                        child::WorkerMessage::Done { id, gpu, result } => (id, gpu, result),
                    };
                    running -= 1;
                    if let Some(slot) = gpu {
                        gpus.release(slot);
                    }
                    let label = self.plan.nodes[id].label.clone();
                    match result {
                        child::Outcome::Executed {
                            key,
                            outputs,
                            wall_seconds,
                        } => {
                            sched.done(id, outputs, false);
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
                            outputs,
                            saved_seconds,
                        } => {
                            sched.done(id, outputs, true);
                            emit(
                                RunEvent::Cached {
                                    label,
                                    key,
                                    saved_seconds,
                                },
                                &mut summary,
                            );
                        }
                        child::Outcome::Failed {
                            error,
                            bad_input,
                            log_tail,
                        } => {
                            emit(
                                RunEvent::Failed {
                                    label,
                                    error,
                                    bad_input,
                                    log_tail,
                                },
                                &mut summary,
                            );
                            for e in self.skip_downstream(&mut sched, id) {
                                emit(e, &mut summary);
                            }
                            if !opts.keep_going {
                                stop_launching = true;
                            }
                        }
                        child::Outcome::InputChanged { message, producers } => {
                            emit(
                                RunEvent::Requeued {
                                    label,
                                    message,
                                    producers: producers
                                        .iter()
                                        .map(|&p| {
                                            (self.plan.nodes[p].label.clone(), sched.was_cached(p))
                                        })
                                        .collect(),
                                },
                                &mut summary,
                            );
                            // Waits for its producers' second round.
                            sched.input_changed(id, producers);
                        }
                        child::Outcome::Interrupted => sched.interrupted(id),
                    }
                }
                if stop_launching {
                    break;
                }
                let Some(round) = sched.next_round(MAX_REQUEUE_ROUNDS) else {
                    break;
                };
                // The store keeps changing under us: give up on these.
                for id in round.given_up {
                    emit(
                        RunEvent::Failed {
                            label: self.plan.nodes[id].label.clone(),
                            error: format!(
                                "its inputs changed on disk in {MAX_REQUEUE_ROUNDS} rounds in a \
                                 row; is something writing into the store?"
                            ),
                            bad_input: false,
                            log_tail: String::new(),
                        },
                        &mut summary,
                    );
                }
            }
            Ok(())
        })?;
        summary.wall_seconds = start.elapsed().as_secs_f64();
        Ok(summary)
    }
}
