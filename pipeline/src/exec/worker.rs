//! Warm workers: the executor that runs libtorch stages in long-lived
//! `bsce-torch worker` processes, one stage at a time each, instead of a
//! fresh process per stage (Bazel's persistent workers: each request is
//! still an action with its own inputs, outputs and log).
//!
//! What stays warm is the process: libtorch's libraries and, on a GPU
//! node, the CUDA context. Each stage keeps its own work folder, key,
//! record, log, progress, cancellation and failure; it sets its own seeds,
//! threads and determinism flags at its start, and the worker sets
//! autograd around it (`stages/src/stage/worker.rs`). A worker serves one
//! (binary, threads, device) slot: a stage never finds a CUDA context of
//! another device or a thread pool of another size.
//!
//! A worker that dies mid-stage (killed, out of memory, a panic) fails only
//! that stage, as a killed process would, and is not reused; cancellation
//! kills the worker of the stage. A worker whose resident memory after a
//! stage is above [`MAX_WORKER_RSS_KIB`] is retired. Stages that are not
//! libtorch's ([`Resources::warm`] false) start cold, as do all of them
//! with `run --cold`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use super::cancel::CancelToken;
use super::executor::{
    terminate_on_cancel, ExecError, ExitHow, LocalExecutor, OnMessage, Prepared, Resources,
    StageExecutor, StageExit, StageFailure, StageSaid,
};
use super::job::{self, WorkRequest, WORKER_PANICKED};

/// Resident memory above which a worker is retired after its stage (a
/// leak, or a cache that grew): 16 GiB.
pub(crate) const MAX_WORKER_RSS_KIB: u64 = 16 << 20;

/// What a worker serves: stages of one binary, thread count and device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    exe: PathBuf,
    threads: usize,
    device: String,
}

struct Worker {
    slot: Slot,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Stages it has run (for provenance: a stage can tell it ran warm).
    stages: u64,
}

/// cuBLAS's fixed workspace, which deterministic GPU results need.
pub const CUBLAS_WORKSPACE_VAR: &str = "CUBLAS_WORKSPACE_CONFIG";
pub const CUBLAS_WORKSPACE: &str = ":4096:8";

impl Worker {
    fn spawn(slot: &Slot) -> Result<Worker, ExecError> {
        let mut child = Command::new(&slot.exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Each stage's stderr goes to its log (the worker points fd 2
            // there); between stages there is nothing to say.
            .stderr(Stdio::null())
            .env("RAYON_NUM_THREADS", slot.threads.to_string())
            .env("OMP_NUM_THREADS", slot.threads.to_string())
            .env(job::PARENT_PID_VAR, std::process::id().to_string())
            // cuBLAS reads its workspace setting once, when the process
            // makes its first handle: a deterministic stage after another
            // stage in this worker would set it too late (a fresh process
            // sets it itself, train/src/runtime.rs). It only bounds
            // cuBLAS's scratch memory for the others.
            .env(CUBLAS_WORKSPACE_VAR, CUBLAS_WORKSPACE)
            .process_group(0)
            .spawn()
            .map_err(|source| ExecError::Spawn {
                exe: slot.exe.clone(),
                source,
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Worker {
            slot: slot.clone(),
            child,
            stdin,
            stdout,
            stages: 0,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Ends it: SIGKILL, then reaped (its status, for a stage it failed).
    fn kill(mut self) -> Option<std::process::ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Its resident memory now (`VmRSS`), 0 when unknown.
    fn rss_kib(&self) -> u64 {
        crate::host::proc_memory_kib(Some(self.child.id()), "VmRSS")
    }
}

/// Runs warm stages in workers (and the rest as [`LocalExecutor`] does).
/// Dropping it ends every idle worker.
pub struct WorkerPool {
    idle: Mutex<Vec<Worker>>,
    /// Workers started so far.
    started: Mutex<u64>,
    /// Workers are started by one thread that lives as long as the pool:
    /// a worker asks the kernel to kill it when the thread that started it
    /// ends (`PR_SET_PDEATHSIG` follows the thread, not the process), and
    /// the scheduler's stage threads end after each stage.
    spawner: Option<Spawner>,
}

type SpawnReply = mpsc::Sender<Result<Worker, ExecError>>;

struct Spawner {
    requests: Mutex<mpsc::Sender<(Slot, SpawnReply)>>,
    thread: std::thread::JoinHandle<()>,
}

impl Default for WorkerPool {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerPool {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel::<(Slot, SpawnReply)>();
        let thread = std::thread::Builder::new()
            .name("worker-spawner".into())
            .spawn(move || {
                for (slot, reply) in rx {
                    let _ = reply.send(Worker::spawn(&slot));
                }
            })
            .expect("a thread starts");
        WorkerPool {
            idle: Mutex::default(),
            started: Mutex::default(),
            spawner: Some(Spawner {
                requests: Mutex::new(tx),
                thread,
            }),
        }
    }

    /// How many worker processes this pool has started.
    pub fn started(&self) -> u64 {
        *self.started.lock().expect("not poisoned")
    }

    /// A fresh worker for `slot`, started by the spawner thread.
    fn spawn(&self, slot: &Slot) -> Result<Worker, ExecError> {
        let spawner = self.spawner.as_ref().expect("alive until dropped");
        let (reply, answer) = mpsc::channel();
        spawner
            .requests
            .lock()
            .expect("not poisoned")
            .send((slot.clone(), reply))
            .expect("the spawner lives as long as the pool");
        let w = answer.recv().expect("the spawner answers")?;
        *self.started.lock().expect("not poisoned") += 1;
        Ok(w)
    }

    fn take(&self, slot: &Slot) -> Result<Worker, ExecError> {
        let mut idle = self.idle.lock().expect("not poisoned");
        if let Some(i) = idle.iter().position(|w| w.slot == *slot) {
            return Ok(idle.swap_remove(i));
        }
        drop(idle);
        self.spawn(slot)
    }

    fn give_back(&self, w: Worker) {
        if w.rss_kib() > MAX_WORKER_RSS_KIB {
            w.kill();
        } else {
            self.idle.lock().expect("not poisoned").push(w);
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        for w in self.idle.get_mut().expect("not poisoned").drain(..) {
            let Worker {
                mut child, stdin, ..
            } = w;
            // EOF on its stdin ends the worker's loop.
            drop(stdin);
            let _ = child.wait();
        }
        if let Some(Spawner { requests, thread }) = self.spawner.take() {
            drop(requests);
            let _ = thread.join();
        }
    }
}

impl StageExecutor for WorkerPool {
    fn run(
        &self,
        stage: &Prepared,
        res: &Resources,
        cancel: &CancelToken,
        on_message: OnMessage,
    ) -> Result<StageExit, ExecError> {
        if !res.warm {
            return LocalExecutor.run(stage, res, cancel, on_message);
        }
        let slot = Slot {
            exe: res.exe.clone(),
            threads: res.threads,
            device: res.device.clone(),
        };
        let mut log = fs::File::create(&stage.log).map_err(|e| ExecError::io(&stage.log, e))?;
        let request = serde_json::to_string(&WorkRequest {
            job: stage.job.clone(),
            log: stage.log.clone(),
        })
        .expect("serialises")
            + "\n";
        // An idle worker may have died since its last stage (killed from
        // outside): then a fresh one takes the request.
        let mut worker = self.take(&slot)?;
        if worker
            .stdin
            .write_all(request.as_bytes())
            .and_then(|()| worker.stdin.flush())
            .is_err()
        {
            worker.kill();
            worker = self.spawn(&slot)?;
            worker
                .stdin
                .write_all(request.as_bytes())
                .and_then(|()| worker.stdin.flush())
                .map_err(|e| ExecError::io(&slot.exe, e))?;
        }
        worker.stages += 1;
        // Cancellation kills the worker: its stage ends with it.
        let live = Arc::new(Mutex::new(Some(worker.pid())));
        let _on_cancel = terminate_on_cancel(cancel, &live);
        let mut said = StageSaid::default();
        let mut done = None;
        let mut line = String::new();
        loop {
            line.clear();
            match worker.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            done = said.take(line.trim_end_matches('\n'), &mut log, on_message);
            if done.is_some() {
                break;
            }
        }
        let StageSaid {
            mut provenance,
            mut error,
        } = said;
        provenance.insert(
            "worker".into(),
            serde_json::json!({"pid": worker.pid(), "stage": worker.stages}),
        );
        let (how, peak_rss_kib) = match done {
            Some((status, peak)) => {
                *live.lock().expect("not poisoned") = None;
                let how = match status {
                    0 => ExitHow::Success,
                    s => ExitHow::Exited(i32::from(s)),
                };
                if status == WORKER_PANICKED {
                    worker.kill();
                } else {
                    self.give_back(worker);
                }
                (how, peak)
            }
            // The worker died mid-stage: its stage ends as a killed
            // process's would.
            None => {
                use std::os::unix::process::ExitStatusExt;
                let pid = worker.pid();
                // Unregistered before it is reaped: a cancel must never
                // signal a recycled pid.
                *live.lock().expect("not poisoned") = None;
                let status = worker.kill();
                error.get_or_insert(StageFailure {
                    message: format!(
                        "its warm worker (pid {pid}) died mid-stage; the next stage gets a fresh one"
                    ),
                    bad_input: false,
                    environment: true,
                });
                // (A cancellation is told apart below, for both branches.)
                let how = match status {
                    Some(s) => match s.signal() {
                        Some(sig) => ExitHow::Signalled(sig),
                        None => ExitHow::Exited(s.code().unwrap_or(-1)),
                    },
                    None => ExitHow::Signalled(libc::SIGKILL),
                };
                (how, 0)
            }
        };
        let how = if how != ExitHow::Success && cancel.is_cancelled() {
            ExitHow::Cancelled
        } else {
            how
        };
        Ok(StageExit {
            how,
            peak_rss_kib,
            provenance,
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::job::ChildMessage;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `bsce-torch worker`: per request line, a progress
    /// message, a line for the log, and `Done`; a job whose path says
    /// `die` kills the worker mid-stage instead.
    fn fake_worker(dir: &std::path::Path) -> PathBuf {
        let exe = dir.join("fake-worker");
        fs::write(
            &exe,
            "#!/bin/sh\n\
             while read -r line; do\n\
               case \"$line\" in *die*) kill -9 $$ ;; esac\n\
               echo '{\"bsce\":\"progress\",\"done\":1,\"total\":1,\"unit\":\"epoch\"}'\n\
               echo \"stdout of $$\"\n\
               echo '{\"bsce\":\"done\",\"status\":0,\"peak_rss_kib\":7}'\n\
             done\n",
        )
        .unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        exe
    }

    fn stage(dir: &std::path::Path, name: &str) -> Prepared {
        Prepared {
            label: name.into(),
            dir: dir.to_path_buf(),
            job: dir.join(format!("{name}.json")),
            log: dir.join(format!("{name}.log")),
            out_dir: dir.join("out"),
        }
    }

    #[test]
    fn stages_share_a_warm_worker_and_a_dead_one_fails_only_its_stage() {
        let t = tempfile::tempdir().unwrap();
        let res = Resources {
            exe: fake_worker(t.path()),
            threads: 1,
            device: "cpu".into(),
            warm: true,
        };
        let pool = WorkerPool::new();
        let cancel = CancelToken::new();
        let progress = Mutex::new(0);
        let on_message = |m: ChildMessage| {
            if let ChildMessage::Progress { .. } = m {
                *progress.lock().unwrap() += 1;
            }
        };
        let run = |name: &str| {
            pool.run(&stage(t.path(), name), &res, &cancel, &on_message)
                .unwrap()
        };
        let a = run("a");
        let b = run("b");
        assert_eq!(
            (a.how.clone(), b.how.clone()),
            (ExitHow::Success, ExitHow::Success)
        );
        assert_eq!(a.peak_rss_kib, 7);
        assert_eq!(pool.started(), 1, "one worker ran both");
        assert_eq!(a.provenance["worker"]["stage"], 1);
        assert_eq!(b.provenance["worker"]["stage"], 2);
        assert_eq!(*progress.lock().unwrap(), 2);
        // What the stage printed that is not a message went to its own log.
        let log = fs::read_to_string(t.path().join("b.log")).unwrap();
        assert!(log.starts_with("stdout of "), "{log:?}");
        // Killed mid-stage: that stage fails as killed, blaming nothing of
        // its inputs; the next stage gets a fresh worker.
        let dead = run("die");
        assert_eq!(dead.how, ExitHow::Signalled(libc::SIGKILL));
        let why = dead.error.unwrap();
        assert!(why.environment && !why.bad_input);
        assert!(why.message.contains("died mid-stage"), "{}", why.message);
        assert_eq!(run("c").how, ExitHow::Success);
        assert_eq!(pool.started(), 2);
        // Not warm: a process of its own (the fake worker as an exec-stage
        // binary exits at once on its missing stdin).
        let cold = Resources {
            warm: false,
            ..res.clone()
        };
        pool.run(&stage(t.path(), "d"), &cold, &cancel, &on_message)
            .unwrap();
        assert_eq!(pool.started(), 2);
    }
}
