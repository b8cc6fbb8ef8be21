//! One stage run: lock its key, prepare a private work folder, hand it to
//! the engine's [`super::executor::StageExecutor`], ingest its outputs
//! into the store, record the action. A crash or OOM kills the child, not the run; nothing
//! reaches the store until every output is hashed and synced.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::cancel::CancelToken;
use super::executor::{ExecError, ExitHow, Prepared, Resources, StageExit};
use super::gpus::GpuSlot;
use super::job::{ChildMessage, LiveRun, SourceLocation, StageJob};
use crate::digest::Digest;
use crate::events::RunEvent;
use crate::host::unix_ms;
use crate::key::{DirtyReason, KeyRecord};
use crate::plan::{NodeId, PlanNode};
use crate::registry::Runner;
use crate::store::atomic::temp_name;
use crate::store::local::{make_writable, BlobCheck};
use crate::store::lock::FileLock;
use crate::store::{ActionRecord, FailureRecord, LabelRecord, OutputEntry, Provenance, StoreError};

/// What running one stage reads of the engine: the store its outputs and
/// records go into, the run's context (binaries, provenance), and what
/// launches the prepared stage.
pub(crate) struct StageEnv<'a> {
    /// The plan's config: whose run the label record is.
    pub config: &'a Path,
    pub store: &'a dyn crate::store::Store,
    pub ctx: &'a super::RunContext,
    pub executor: &'a dyn super::executor::StageExecutor,
}

pub(crate) struct StageRun<'a> {
    pub id: NodeId,
    pub node: &'a PlanNode,
    pub record: KeyRecord,
    pub key: Digest,
    pub reasons: Vec<DirtyReason>,
    pub forced: bool,
    pub device: String,
    pub gpu: Option<GpuSlot>,
    /// From the stage's identity ([`KeyRecord::identity_seed`]).
    pub seed: u64,
    pub threads: usize,
    pub sources: BTreeMap<String, SourceLocation>,
    /// Where a train stage writes its live TensorBoard events.
    pub live: Vec<LiveRun>,
    /// Per input: its name, the node that made it, and each file with the
    /// upstream output entry (digest and stamp).
    pub inputs: Vec<StageInput>,
}

pub(crate) struct StageInput {
    pub name: String,
    pub producer: NodeId,
    pub files: Vec<(String, Option<OutputEntry>)>,
}

pub(crate) enum WorkerMessage {
    /// The run was cancelled: wakes the scheduler's blocking receive.
    Cancel,
    Event(RunEvent),
    Done {
        id: NodeId,
        gpu: Option<GpuSlot>,
        result: Outcome,
    },
}

pub(crate) enum Outcome {
    Executed {
        key: Digest,
        outputs: BTreeMap<String, OutputEntry>,
        wall_seconds: f64,
    },
    /// Another process computed it while we waited for the key's lock.
    CachedByOther {
        key: Digest,
        outputs: BTreeMap<String, OutputEntry>,
        saved_seconds: f64,
    },
    Failed {
        error: String,
        /// The stage said its input is at fault ([`ChildMessage::Error`]).
        bad_input: bool,
        log_tail: String,
    },
    /// An input blob changed on disk (before the stage started, or while
    /// it ran): it is quarantined, nothing was recorded, and `producers`
    /// must run again first.
    InputChanged {
        message: String,
        producers: Vec<NodeId>,
    },
    Interrupted,
}

pub(crate) fn run_stage(
    env: &StageEnv<'_>,
    run: StageRun,
    cancel: &CancelToken,
    tx: Sender<WorkerMessage>,
) {
    let id = run.id;
    let gpu = run.gpu;
    let result = execute(env, run, cancel, &tx).unwrap_or_else(|error| Outcome::Failed {
        error: error.to_string(),
        bad_input: false,
        log_tail: String::new(),
    });
    let _ = tx.send(WorkerMessage::Done { id, gpu, result });
}

fn execute(
    env: &StageEnv<'_>,
    run: StageRun,
    cancel: &CancelToken,
    tx: &Sender<WorkerMessage>,
) -> Result<Outcome, ExecError> {
    let store = env.store.local();
    let label = run.node.label.clone();
    let lock_path = store.lock_path(&run.key);
    let lock =
        match FileLock::try_exclusive(&lock_path).map_err(|e| ExecError::io(&lock_path, e))? {
            Some(l) => l,
            None => {
                let _ = tx.send(WorkerMessage::Event(RunEvent::Waiting {
                    label: label.clone(),
                }));
                // Another process holds the key's lock: polled, since an flock
                // wait cannot be cancelled. Rare (two runs of one config), and
                // bounded by the number of running stages, not the DAG.
                loop {
                    if cancel.is_cancelled() {
                        return Ok(Outcome::Interrupted);
                    }
                    if let Some(l) = FileLock::try_exclusive(&lock_path)
                        .map_err(|e| ExecError::io(&lock_path, e))?
                    {
                        break l;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
    if !run.forced {
        // Another process may have made it, or the remote has it.
        if let Some(rec) = env.store.lookup(&run.key, true)? {
            store.remove_resume(&run.key);
            return Ok(Outcome::CachedByOther {
                key: run.key,
                outputs: rec.outputs,
                saved_seconds: rec.provenance.wall_seconds,
            });
        }
    }
    // Never feed a consumer a blob that changed since it was stored.
    if let Some(changed) = check_inputs(env, &run)? {
        return Ok(changed);
    }
    let _ = tx.send(WorkerMessage::Event(RunEvent::Started {
        label: label.clone(),
        key: run.key,
        reasons: run.reasons.clone(),
        device: run.device.clone(),
    }));
    let work = temp_name(&store.tmp_dir(), "work");
    let result = prepare(env, &run, &work).and_then(|prepared| {
        let res = Resources {
            exe: match run.node.kind.spec().runner {
                Runner::Torch => env.ctx.torch_exe.clone(),
                Runner::Pipe => env.ctx.exe.clone(),
            },
            threads: run.threads,
            device: run.device.clone(),
            warm: run.node.kind.spec().runner == Runner::Torch,
        };
        let started_ms = unix_ms();
        let start = Instant::now();
        let on_message = |m: ChildMessage| {
            if let ChildMessage::Progress { done, total, unit } = m {
                let _ = tx.send(WorkerMessage::Event(RunEvent::Progress {
                    label: label.clone(),
                    done,
                    total,
                    unit,
                }));
            }
        };
        let exit = env.executor.run(&prepared, &res, cancel, &on_message)?;
        finish(
            env,
            &run,
            &prepared,
            exit,
            started_ms,
            start.elapsed().as_secs_f64(),
        )
    });
    make_writable(&work);
    let _ = fs::remove_dir_all(&work);
    // Partial work is kept across failures and kills of this key, and
    // dropped once its result is stored (still under the key's lock).
    if let Ok(Outcome::Executed { .. }) = &result {
        store.remove_resume(&run.key);
    }
    drop(lock);
    result
}

/// The stage's work folder: its inputs linked in from the store, an empty
/// `out/`, and `job.json`, all the child reads.
fn prepare(env: &StageEnv<'_>, run: &StageRun, work: &Path) -> Result<Prepared, ExecError> {
    let store = env.store.local();
    let out_dir = work.join("out");
    fs::create_dir_all(&out_dir).map_err(|e| ExecError::io(&out_dir, e))?;
    let mut inputs = BTreeMap::new();
    for input in &run.inputs {
        let dir = work.join("in").join(&input.name);
        fs::create_dir_all(&dir).map_err(|e| ExecError::io(&dir, e))?;
        for (file, entry) in &input.files {
            let entry = entry.as_ref().ok_or_else(|| ExecError::InputUnknown {
                input: input.name.clone(),
                file: file.clone(),
            })?;
            let link = dir.join(file);
            std::os::unix::fs::symlink(store.blob_path(&entry.digest), &link)
                .map_err(|e| ExecError::io(&link, e))?;
        }
        inputs.insert(input.name.clone(), dir);
    }
    let job = StageJob {
        kind: run.node.kind,
        label: run.node.label.clone(),
        params: run.node.params.clone(),
        inputs,
        sources: run.sources.clone(),
        out_dir: out_dir.clone(),
        resume_dir: store.resume_dir(&run.key),
        seed: run.seed,
        device: run.device.clone(),
        live: run.live.clone(),
    };
    let job_path = work.join("job.json");
    fs::write(
        &job_path,
        serde_json::to_vec_pretty(&job).expect("serialises"),
    )
    .map_err(|e| ExecError::io(&job_path, e))?;
    Ok(Prepared {
        label: run.node.label.clone(),
        dir: work.to_path_buf(),
        job: job_path,
        log: work.join("log.txt"),
        out_dir,
    })
}

/// After the stage ended: its log and outputs into the store, then the
/// action record (or the failure record).
fn finish(
    env: &StageEnv<'_>,
    run: &StageRun,
    prepared: &Prepared,
    exit: StageExit,
    started_ms: u64,
    wall_seconds: f64,
) -> Result<Outcome, ExecError> {
    let store = env.store.local();
    let log_bytes = fs::read(&prepared.log).unwrap_or_default();
    let log_tail = tail(&log_bytes, 20);
    if exit.how == ExitHow::Cancelled {
        return Ok(Outcome::Interrupted);
    }
    let exited_ok = exit.how == ExitHow::Success;
    if !exited_ok {
        // A failed stage's partial outputs are of no use; removing them
        // first gives the failure record room on a disk the stage filled.
        make_writable(&prepared.out_dir);
        let _ = fs::remove_dir_all(&prepared.out_dir);
    }
    // The log is kept when it can be; a full disk must not hide the error.
    let log_entry = match store.insert_bytes(&log_bytes) {
        Ok(e) => Some(e),
        Err(_) if !exited_ok => None,
        Err(e) => return Err(e.into()),
    };
    let mut stage = exit.provenance;
    for (k, v) in &env.ctx.batch {
        stage.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let provenance = Provenance {
        tool_version: env.ctx.tool_version.clone(),
        git_commit: env.ctx.git_commit.clone(),
        host: env.ctx.host.clone(),
        device: run.device.clone(),
        run_id: env.ctx.run_id.clone(),
        started_unix_ms: started_ms,
        wall_seconds,
        peak_rss_kib: exit.peak_rss_kib,
        log: log_entry.map(|e| e.digest),
        stage,
    };
    if !exited_ok {
        let how = exit.how.describe();
        // The stage's own error, sent over its stdout pipe, reaches us even
        // when its log (on the store's disk) could not be written.
        let bad_input = exit.error.as_ref().is_some_and(|r| r.bad_input);
        // Killed (the OOM killer, a signal) or cancelled: nothing about
        // the inputs is known.
        let environment = exit.error.as_ref().is_some_and(|r| r.environment)
            || matches!(exit.how, ExitHow::Signalled(_) | ExitHow::Cancelled);
        let last = exit
            .error
            .as_ref()
            .map(|r| r.message.as_str())
            .unwrap_or_else(|| {
                log_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
            });
        let error = if last.is_empty() {
            how
        } else {
            format!("{how}: {last}")
        };
        return Ok(fail(
            env,
            run,
            Failure {
                error,
                bad_input,
                environment,
            },
            log_tail,
            provenance,
        ));
    }
    // An input changed while the stage read it: its result is not kept.
    if let Some(changed) = check_inputs(env, run)? {
        return Ok(changed);
    }
    let outputs = match ingest(env, run.node.kind, &prepared.out_dir) {
        Ok(o) => o,
        Err(failure) => return Ok(fail(env, run, failure, log_tail, provenance)),
    };
    let record = ActionRecord {
        key: run.key,
        label: run.node.label.clone(),
        key_record: run.record.clone(),
        outputs: outputs.clone(),
        provenance,
    };
    env.store.put_action(&record)?;
    store.put_label(&LabelRecord {
        label: run.node.label.clone(),
        key: run.key,
        key_record: run.record.clone(),
        config: Some(env.config.to_path_buf()),
    })?;
    store.clear_failure(&run.key);
    Ok(Outcome::Executed {
        key: run.key,
        outputs,
        wall_seconds,
    })
}

/// Checks every input blob against the stamp its producer's record holds
/// (re-hashing only one whose stamp moved). A changed blob is quarantined
/// and named, with the nodes that must remake it.
fn check_inputs(env: &StageEnv<'_>, run: &StageRun) -> Result<Option<Outcome>, ExecError> {
    let mut messages = Vec::new();
    let mut producers = Vec::new();
    for input in &run.inputs {
        for (file, entry) in &input.files {
            let Some(entry) = entry else { continue };
            let what = match env.store.local().check_blob(entry)? {
                BlobCheck::Intact | BlobCheck::Restamped(_) => continue,
                BlobCheck::Missing => "is no longer in the store".to_string(),
                BlobCheck::Corrupt {
                    actual,
                    quarantined,
                } => format!(
                    "changed on disk after it was stored (now hashes to {}; moved to {})",
                    actual.short(),
                    quarantined.display()
                ),
            };
            messages.push(format!(
                "input {}/{file} (blob {}) {what}",
                input.name,
                entry.digest.short()
            ));
            if !producers.contains(&input.producer) {
                producers.push(input.producer);
            }
        }
    }
    Ok((!messages.is_empty()).then(|| Outcome::InputChanged {
        message: messages.join("; "),
        producers,
    }))
}

/// Moves every file of `out/` into the CAS. A stage writes exactly the
/// flat files its registry row declares: a missing or undeclared file, a
/// folder or a link is a stage bug, reported as a failure.
fn ingest(
    env: &StageEnv<'_>,
    kind: crate::registry::StageKind,
    out_dir: &Path,
) -> Result<BTreeMap<String, OutputEntry>, Failure> {
    let declared = kind.spec().outputs;
    let mut outputs = BTreeMap::new();
    let unreadable = |e: std::io::Error| Failure::storing(&StoreError::io(out_dir, e));
    for entry in fs::read_dir(out_dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry.file_type().map_err(unreadable)?;
        if !ft.is_file() {
            return Err(Failure::stage_bug(format!(
                "stage output {name} is not a plain file"
            )));
        }
        if !declared.contains(&name.as_str()) {
            return Err(Failure::stage_bug(format!(
                "stage wrote {name}, which is not among the {kind} outputs declared in \
                 pipeline/src/registry.rs ({})",
                declared.join(", ")
            )));
        }
        let e = env
            .store
            .local()
            .insert_file(&entry.path())
            .map_err(|e| Failure::storing(&e))?;
        outputs.insert(name, e);
    }
    let missing: Vec<&str> = declared
        .iter()
        .copied()
        .filter(|f| !outputs.contains_key(*f))
        .collect();
    if !missing.is_empty() {
        return Err(Failure::stage_bug(format!(
            "stage did not write {}",
            missing.join(", ")
        )));
    }
    Ok(outputs)
}

/// Why a stage run failed, as the failure record keeps it.
struct Failure {
    error: String,
    bad_input: bool,
    environment: bool,
}

impl Failure {
    /// The stage broke its contract (its registry row's outputs).
    fn stage_bug(error: String) -> Self {
        Failure {
            error,
            bad_input: false,
            environment: false,
        }
    }

    /// Storing the outputs failed: the store's disk (full, quota) is the
    /// environment, not the stage.
    fn storing(e: &StoreError) -> Self {
        Failure {
            error: e.to_string(),
            bad_input: false,
            environment: e.is_environment(),
        }
    }
}

fn fail(
    env: &StageEnv<'_>,
    run: &StageRun,
    failure: Failure,
    log_tail: String,
    provenance: Provenance,
) -> Outcome {
    let Failure {
        error,
        bad_input,
        environment,
    } = failure;
    let _ = env.store.local().put_failure(&FailureRecord {
        key: run.key,
        label: run.node.label.clone(),
        error: error.clone(),
        log_tail: log_tail.clone(),
        provenance,
        environment,
        bad_input,
    });
    Outcome::Failed {
        error,
        bad_input,
        log_tail,
    }
}

/// The last `lines` lines of `bytes`, as text.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
