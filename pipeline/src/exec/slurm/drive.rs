//! A Slurm run from the submitting machine: runs the local stages when
//! their inputs are stored, submits each job once what it waits for is
//! submitted or done, and follows the jobs to their end, turning what it
//! sees into run events. Detached, it stops after submitting.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::layout::{Layout, Place};
use super::{
    cancel_jobs, final_state, io, is_live, queue_states, sbatch_args, sh_quote, slurm_env, tail,
    Job, RunDir, RunFile, SlurmSettings,
};
use crate::events::{Reporter, RunEvent, RunSummary};
use crate::exec::node::{NodeResult, NodeRunner};
use crate::exec::{CancelToken, EngineError, NodeStatus, RunOptions};
use crate::plan::{NodeId, Plan};

/// What [`drive`] needs besides the plan and the layout.
pub struct Submission<'a, 'e> {
    pub settings: &'a SlurmSettings,
    /// Runs the stages this machine runs itself (the layout's `local`):
    /// required when there are some, since they need every source here.
    pub local: Option<NodeRunner<'e, 'a>>,
    pub run: RunFile,
    pub dir: RunDir,
    /// The `bsce-pipe` binary the jobs run (on storage the nodes share).
    pub exe: PathBuf,
    /// Variables the jobs get besides the submitter's environment (which
    /// sbatch hands on): the remote named by a flag. Never written to disk.
    pub env: Vec<(String, String)>,
    /// Submit, and leave the jobs to Slurm.
    pub detached: bool,
    /// Threads of the stages this machine runs.
    pub threads: usize,
}

/// How a stage of the run ended, as far as the submitter knows.
#[derive(Clone, Debug, PartialEq)]
enum End {
    Stored,
    Failed,
    /// Not run: this stage failed first.
    Skipped(String),
}

/// Runs the Slurm run `layout` lays out: see the module. Returns the run
/// file as last written (its jobs; `cancelled` when interrupted).
#[allow(clippy::too_many_arguments)]
pub fn drive(
    plan: &Plan,
    opts: &RunOptions,
    status: &[NodeStatus],
    layout: &Layout,
    mut sub: Submission,
    cancel: &CancelToken,
    reporter: &mut dyn Reporter,
    summary: &mut RunSummary,
) -> Result<RunFile, EngineError> {
    let order = plan.topo_order().map_err(EngineError::Cycle)?;
    let mut emit = |e: RunEvent, summary: &mut RunSummary| {
        summary.record(&e);
        reporter.on_event(&e);
    };
    emit(
        RunEvent::Planned {
            total: plan.nodes.len(),
        },
        summary,
    );
    // A stage's index in plan order names its outcome and log files.
    let mut n_of = vec![0; plan.nodes.len()];
    let mut end: Vec<Option<End>> = vec![None; plan.nodes.len()];
    for (n, &id) in order.iter().enumerate() {
        n_of[id] = n;
        if let NodeStatus::Cached { key, record } = &status[id] {
            end[id] = Some(End::Stored);
            emit(
                RunEvent::Cached {
                    label: plan.nodes[id].label.clone(),
                    key: *key,
                    saved_seconds: record.provenance.wall_seconds,
                },
                summary,
            );
        }
    }
    assert!(
        sub.local.is_some() || layout.local.is_empty(),
        "the layout has stages to run here, and no runner for them"
    );
    let name = RunDir::job_name(&sub.run.run_id);
    let mut job_id: Vec<Option<String>> = vec![None; layout.jobs.len()];
    let mut dead = vec![false; layout.jobs.len()];
    let mut folder_made = false;
    let mut watch = Watch::default();
    // Wakes the wait between polls when the run is cancelled.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let _waker = {
        let tx = std::sync::Mutex::new(tx);
        cancel.on_cancel(move || {
            let _ = tx.lock().expect("not poisoned").send(());
        })
    };
    // Why a stage cannot run: the input that failed first, if any.
    let blocked = |end: &[Option<End>], inputs: &[NodeId]| {
        inputs.iter().find_map(|&i| match &end[i] {
            Some(End::Failed) => Some(plan.nodes[i].label.clone()),
            Some(End::Skipped(root)) => Some(root.clone()),
            _ => None,
        })
    };
    // Whether a pass changed some stage's end or submitted a job: then the
    // next pass may find more to do before any poll.
    let mut changed;
    loop {
        // `bsce-pipe cancel CONFIG` from another shell marks the run file.
        let cancelled_elsewhere = folder_made && sub.dir.read().is_ok_and(|r| r.cancelled);
        if cancel.is_cancelled() || cancelled_elsewhere {
            return interrupted(&sub, &watch, summary, &mut emit);
        }
        changed = false;
        // The local stages whose inputs are all stored, in plan order (one
        // pass runs a chain of them).
        for &id in &layout.local {
            if end[id].is_some() {
                continue;
            }
            let node = &plan.nodes[id];
            let inputs: Vec<NodeId> = node.inputs.iter().map(|i| i.node).collect();
            if let Some(root) = blocked(&end, &inputs) {
                end[id] = Some(End::Skipped(root.clone()));
                changed = true;
                emit(
                    RunEvent::Skipped {
                        label: node.label.clone(),
                        because: root,
                    },
                    summary,
                );
                continue;
            }
            if !node.inputs.iter().all(|i| end[i.node] == Some(End::Stored)) {
                continue;
            }
            let runner = sub.local.as_ref().expect("checked at the start");
            // An error of the engine (the store, the work folder) fails
            // this stage; the jobs in flight are still followed.
            let result = runner
                .run(id, opts, "cpu", sub.threads, cancel, &mut |e| {
                    emit(e.clone(), summary)
                })
                .unwrap_or_else(|e| NodeResult::Failed {
                    error: e.to_string(),
                    bad_input: false,
                    log_tail: String::new(),
                });
            changed = true;
            if result == NodeResult::Interrupted {
                return interrupted(&sub, &watch, summary, &mut emit);
            }
            end[id] = Some(end_of(&result));
            emit(event_of(&node.label, result, None), summary);
        }
        // The jobs whose inputs are stored or in submitted jobs.
        let mut submitted_now = false;
        for (j, job) in layout.jobs.iter().enumerate() {
            if job_id[j].is_some() || dead[j] {
                continue;
            }
            let outside: Vec<NodeId> = job
                .nodes
                .iter()
                .flat_map(|&n| plan.nodes[n].inputs.iter().map(|i| i.node))
                .filter(|&i| layout.place[i] != Place::Job(j))
                .collect();
            if let Some(root) = blocked(&end, &outside) {
                dead[j] = true;
                changed = true;
                for &n in &job.nodes {
                    end[n] = Some(End::Skipped(root.clone()));
                    emit(
                        RunEvent::Skipped {
                            label: plan.nodes[n].label.clone(),
                            because: root.clone(),
                        },
                        summary,
                    );
                }
                continue;
            }
            let mut after: Vec<String> = Vec::new();
            let mut ready = true;
            for &i in &outside {
                match (layout.place[i], &end[i]) {
                    (_, Some(End::Stored)) => {}
                    (Place::Job(k), None) => match &job_id[k] {
                        // Its stage is done though no poll has said so
                        // yet: no dependency on a job that may have ended
                        // long ago (Slurm forgets ended jobs, MinJobAge).
                        Some(_) if sub.dir.stored(n_of[i]) => {}
                        Some(id) => after.push(id.clone()),
                        None => ready = false,
                    },
                    _ => ready = false,
                }
            }
            if !ready {
                continue;
            }
            after.sort();
            after.dedup();
            if !folder_made {
                // The jobs read the run file: it exists before the first.
                for d in ["logs", "outcomes"] {
                    let p = sub.dir.path.join(d);
                    fs::create_dir_all(&p).map_err(|e| EngineError::Slurm(io(&p)(e)))?;
                }
                sub.dir.write(&sub.run).map_err(EngineError::Slurm)?;
                folder_made = true;
            }
            let first = job.nodes[0];
            let first_n = n_of[first];
            let labels: Vec<String> = job
                .nodes
                .iter()
                .map(|&n| plan.nodes[n].label.clone())
                .collect();
            let mut args = vec![
                "--parsable".to_string(),
                format!("--job-name={name}"),
                format!(
                    "--comment={}{}",
                    labels[0],
                    if labels.len() > 1 {
                        format!(" (+{} more)", labels.len() - 1)
                    } else {
                        String::new()
                    }
                ),
                format!("--output={}", sub.dir.log(first_n).display()),
                "--open-mode=append".into(),
                // Lost to a node failure: Slurm starts it again, with the
                // same id, so its dependants keep waiting for it.
                "--requeue".into(),
            ];
            if !after.is_empty() {
                args.push(format!("--dependency=afterok:{}", after.join(":")));
                args.push("--kill-on-invalid-dep=yes".into());
            }
            args.extend(sbatch_args(&sub.settings.resources(job.kind(plan))));
            args.push("--wrap".into());
            let mut command = format!(
                "exec {} exec-node {}",
                sh_quote(&sub.exe.to_string_lossy()),
                sh_quote(&sub.dir.path.to_string_lossy()),
            );
            for &n in &job.nodes {
                command += &format!(
                    " {}",
                    sh_quote(&format!("{}={}", n_of[n], plan.nodes[n].label))
                );
            }
            args.push(command);
            let id = match sbatch_retrying(&args, &sub.env, cancel) {
                Ok(out) => out.trim().split(';').next().unwrap_or_default().to_string(),
                Err(e) => {
                    // All or nothing when nothing has started yet; later,
                    // the jobs in flight are the run's and stay.
                    let ids: Vec<String> = job_id.iter().flatten().cloned().collect();
                    if !watch.ended_any {
                        let _ = cancel_jobs(&ids);
                        let _ = fs::remove_dir_all(&sub.dir.path);
                    }
                    return Err(EngineError::Slurm(e));
                }
            };
            emit(
                RunEvent::Submitted {
                    label: labels[0].clone(),
                    job: id.clone(),
                    after: after.clone(),
                    more: labels.len() - 1,
                },
                summary,
            );
            for &n in &job.nodes {
                let label = &plan.nodes[n].label;
                let entry = Job {
                    id: id.clone(),
                    n: n_of[n],
                    after: after.clone(),
                    log: (n != first).then_some(first_n),
                };
                watch.pending.insert(label.clone(), (n, entry.clone()));
                sub.run.jobs.insert(label.clone(), entry);
            }
            job_id[j] = Some(id);
            submitted_now = true;
            changed = true;
        }
        if submitted_now {
            sub.dir.write(&sub.run).map_err(EngineError::Slurm)?;
        }
        if sub.detached || end.iter().all(Option::is_some) {
            return Ok(sub.run);
        }
        if changed {
            // A stage skipped or run, a job submitted: the stages after
            // them may be decided without waiting for a poll.
            continue;
        }
        if watch.pending.is_empty() {
            // Nothing in flight and nothing ready: a stage waits for one
            // that can never end (a bug of the layout, never a hang).
            let waiting: Vec<&str> = (0..plan.nodes.len())
                .filter(|&n| end[n].is_none())
                .map(|n| plan.nodes[n].label.as_str())
                .collect();
            return Err(EngineError::Stuck(
                waiting.into_iter().map(String::from).collect(),
            ));
        }
        let ended = watch.poll(&sub.dir, &sub.run)?;
        for e in std::mem::take(&mut watch.started_events) {
            emit(e, summary);
        }
        if ended.is_empty() {
            let poll = Duration::from_secs_f64(sub.settings.poll_seconds);
            let _ = rx.recv_timeout(poll);
            continue;
        }
        // Label -> its job, for the stages of the jobs a dropped one
        // waited for.
        let watch_jobs: BTreeMap<&String, &String> =
            sub.run.jobs.iter().map(|(l, j)| (l, &j.id)).collect();
        for (n, label, job, how) in ended {
            let event = match how {
                Seen::Outcome(result) => {
                    end[n] = Some(end_of(&result));
                    event_of(&label, result, Some(&job.id))
                }
                Seen::NeverStarted => {
                    // Slurm dropped it because a job it waits for did not
                    // succeed: the stage that failed first upstream.
                    let inputs: Vec<NodeId> = plan.nodes[n].inputs.iter().map(|i| i.node).collect();
                    // Its own inputs first; else (a job it waits for
                    // failed in a stage this one does not read) that stage.
                    let in_after: Vec<NodeId> = (0..plan.nodes.len())
                        .filter(|&i| {
                            watch_jobs
                                .get(&plan.nodes[i].label)
                                .is_some_and(|id| job.after.contains(id))
                        })
                        .collect();
                    let root = blocked(&end, &inputs)
                        .or_else(|| blocked(&end, &in_after))
                        .or_else(|| {
                            inputs
                                .iter()
                                .find(|&&i| end[i] != Some(End::Stored))
                                .map(|&i| plan.nodes[i].label.clone())
                        })
                        .unwrap_or_else(|| format!("slurm job {}", job.after.join(", ")));
                    end[n] = Some(End::Skipped(root.clone()));
                    RunEvent::Skipped {
                        label: label.clone(),
                        because: root,
                    }
                }
                // A stage of the same job before it, which it reads, was
                // lost first: named as what it waited for.
                Seen::Lost { .. }
                    if blocked(
                        &end,
                        &plan.nodes[n]
                            .inputs
                            .iter()
                            .map(|i| i.node)
                            .collect::<Vec<_>>(),
                    )
                    .is_some() =>
                {
                    let inputs: Vec<NodeId> = plan.nodes[n].inputs.iter().map(|i| i.node).collect();
                    let root = blocked(&end, &inputs).expect("checked");
                    end[n] = Some(End::Skipped(root.clone()));
                    RunEvent::Skipped {
                        label: label.clone(),
                        because: root,
                    }
                }
                Seen::Lost { state, reason } => {
                    end[n] = Some(End::Failed);
                    let log = fs::read(sub.dir.log(job.log_n())).unwrap_or_default();
                    RunEvent::Failed {
                        label: label.clone(),
                        error: format!(
                            "slurm job {} ended {state}{} without a result",
                            job.id,
                            if reason.is_empty() || reason == "None" {
                                String::new()
                            } else {
                                format!(" ({reason})")
                            }
                        ),
                        bad_input: false,
                        log_tail: tail(&log, 20),
                    }
                }
            };
            emit(event, summary);
        }
    }
}

/// `sbatch`, asked again over about a minute when it fails for a reason
/// other than its arguments (the controller busy or restarting, a socket
/// timeout): later submissions of a long run must not end it for a blip.
fn sbatch_retrying(
    args: &[String],
    env: &[(String, String)],
    cancel: &CancelToken,
) -> Result<String, super::SlurmError> {
    let mut wait = Duration::from_millis(500);
    let mut tries = 0;
    loop {
        match slurm_env("sbatch", args, env) {
            Err(super::SlurmError::Command { stderr, .. })
                if tries < 7 && !cancel.is_cancelled() && transient(&stderr) =>
            {
                let _ = writeln!(std::io::stderr(), "warning: sbatch: {stderr}; trying again");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(16));
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Whether an `sbatch` error is the controller's state rather than the
/// job's arguments.
fn transient(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    [
        "timed out",
        "timeout",
        "try again",
        "busy",
        "unable to contact",
        "connection",
        "socket",
    ]
    .iter()
    .any(|w| s.contains(w))
}

/// The run cancelled: its jobs still queued or running are cancelled, and
/// the run file says so.
fn interrupted(
    sub: &Submission,
    watch: &Watch,
    summary: &mut RunSummary,
    emit: &mut dyn FnMut(RunEvent, &mut RunSummary),
) -> Result<RunFile, EngineError> {
    let mut ids: Vec<String> = watch.pending.values().map(|(_, j)| j.id.clone()).collect();
    ids.sort();
    ids.dedup();
    cancel_jobs(&ids).map_err(EngineError::Slurm)?;
    let mut r = sub.run.clone();
    r.cancelled = true;
    if sub.dir.run_file().is_file() {
        let _ = sub.dir.write(&r);
    }
    emit(RunEvent::Interrupted, summary);
    Ok(r)
}

fn end_of(r: &NodeResult) -> End {
    match r {
        r if r.is_stored() => End::Stored,
        NodeResult::Skipped { because } => End::Skipped(because.clone()),
        _ => End::Failed,
    }
}

/// The run event of a stage's result; `job`: the Slurm job that ran it.
fn event_of(label: &str, r: NodeResult, job: Option<&str>) -> RunEvent {
    let label = label.to_string();
    let in_job = |what: String| match job {
        Some(id) => format!("slurm job {id}: {what}"),
        None => what,
    };
    match r {
        NodeResult::Executed { key, wall_seconds } => RunEvent::Finished {
            label,
            key,
            wall_seconds,
        },
        NodeResult::Cached { key, saved_seconds } => RunEvent::Cached {
            label,
            key,
            saved_seconds,
        },
        NodeResult::Failed {
            error,
            bad_input,
            log_tail,
        } => RunEvent::Failed {
            label,
            error: in_job(error),
            bad_input,
            log_tail,
        },
        NodeResult::Interrupted => RunEvent::Failed {
            label,
            error: match job {
                Some(id) => format!("slurm job {id} was cancelled"),
                None => "interrupted".into(),
            },
            bad_input: false,
            log_tail: String::new(),
        },
        NodeResult::Skipped { because } => RunEvent::Skipped { label, because },
    }
}

/// How the watcher saw a stage of a job end.
enum Seen {
    /// The job wrote the stage's outcome.
    Outcome(NodeResult),
    /// Slurm never started the job: a job it waited for failed.
    NeverStarted,
    /// The job ended (as `state`) without the stage's outcome.
    Lost { state: String, reason: String },
}

/// The submitted stages not seen ending yet, and what the polls learnt.
#[derive(Default)]
struct Watch {
    /// Label -> (node, its job).
    pending: BTreeMap<String, (NodeId, Job)>,
    /// Jobs seen running.
    started: BTreeSet<String>,
    /// Stages whose job was seen ended without their outcome once: looked
    /// at again, since a requeued job is briefly neither.
    unsure: BTreeSet<String>,
    /// Failures in a row of `squeue` itself (the controller restarting).
    squeue_failures: u32,
    /// Some stage has ended: a refused submission no longer cancels the
    /// run's other jobs.
    ended_any: bool,
    /// The jobs seen starting since the driver last took them.
    started_events: Vec<RunEvent>,
}

impl Watch {
    /// One look at the queue and the outcome files: the stages that ended
    /// since the last, in plan order (a stage's inputs before it).
    fn poll(
        &mut self,
        dir: &RunDir,
        run: &RunFile,
    ) -> Result<Vec<(NodeId, String, Job, Seen)>, EngineError> {
        let states = match queue_states(&run.run_id) {
            Ok(s) => {
                self.squeue_failures = 0;
                s
            }
            Err(e) if self.squeue_failures < 30 => {
                self.squeue_failures += 1;
                let _ = writeln!(std::io::stderr(), "warning: {e}; asking again");
                return Ok(Vec::new());
            }
            Err(e) => return Err(EngineError::Slurm(e)),
        };
        // (plan order, node, label)
        let mut ended: Vec<(usize, NodeId, String)> = Vec::new();
        // In plan order, so a job's start names its first stage not done.
        let mut pending: Vec<(&String, &(NodeId, Job))> = self.pending.iter().collect();
        pending.sort_by_key(|(_, (_, job))| job.n);
        for (label, (n, job)) in pending {
            let q = states.get(&job.id);
            if let Some(q) = q {
                if q.state == "RUNNING" && self.started.insert(job.id.clone()) {
                    self.started_events.push(RunEvent::JobStarted {
                        label: label.clone(),
                        job: job.id.clone(),
                        node: q.node.clone(),
                    });
                }
            }
            if dir.outcome(job.n).exists() {
                ended.push((job.n, *n, label.clone()));
                continue;
            }
            match q {
                Some(q) if is_live(&q.state) => {
                    self.unsure.remove(label);
                }
                // Ended without this stage's outcome: it may be between
                // two attempts (requeued), so it counts as ended when two
                // polls in a row and Slurm itself say so.
                _ if self.unsure.insert(label.clone()) => {}
                _ => match final_state(&job.id) {
                    Some((state, _)) if is_live(&state) => {}
                    _ => ended.push((job.n, *n, label.clone())),
                },
            }
        }
        ended.sort();
        let mut out = Vec::new();
        for (_, n, label) in ended {
            let (_, job) = self.pending.remove(&label).expect("pending");
            self.ended_any = true;
            let seen = match dir.read_outcome(job.n) {
                Some(o) => Seen::Outcome(o.result),
                None => {
                    let (state, reason) =
                        final_state(&job.id).unwrap_or_else(|| ("UNKNOWN".into(), String::new()));
                    if reason.contains("DependencyNeverSatisfied") {
                        Seen::NeverStarted
                    } else {
                        Seen::Lost { state, reason }
                    }
                }
            };
            out.push((n, label, job, seen));
        }
        Ok(out)
    }
}
