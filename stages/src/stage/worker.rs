//! A warm worker (`bsce-torch worker`): one long-lived process that runs
//! stage after stage, each exactly as `exec-stage` would run it in a
//! process of its own, so that libtorch (and on a GPU node the CUDA
//! context) is loaded once per slot rather than once per stage.
//!
//! The scheduler writes one [`WorkRequest`] line per stage on the worker's
//! stdin and reads the stage's messages on its stdout, ending with
//! [`ChildMessage::Done`]. Per stage the worker points its stderr at the
//! stage's log, resets its peak-memory mark, and runs the job through the
//! same entry as `exec-stage` inside `around` (the binary's per-stage
//! reset of global state: libtorch's grad mode). Everything else a stage
//! can touch (seeds, thread counts, determinism flags) the stage sets
//! itself at its start (`train/src/runtime.rs`). A panic ends the worker
//! after its `Done`: the scheduler starts a fresh one for the next stage.

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;

use bsce_pipeline::catalog::{Runner, StageKind};
use bsce_pipeline::exec::job::{ChildMessage, ChildReporter, WorkRequest, WORKER_PANICKED};

use super::{report_panics, run_job, StageFn};

/// Runs the stage a closure stands for, with the binary's per-stage state
/// set around it; returns its exit status.
pub type Around = fn(&mut dyn FnMut() -> u8) -> u8;

/// The worker's loop, until its stdin closes (exit 0) or a stage panics
/// (exit [`WORKER_PANICKED`]). A request it cannot parse is exit 2.
pub fn serve(runner: Runner, table: &[(StageKind, StageFn)], around: Around) -> ExitCode {
    report_panics();
    let reporter = ChildReporter::default();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let req: WorkRequest = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "error: bad work request {line:?}: {e}");
                return ExitCode::from(2);
            }
        };
        let status = match log_to(&req.log) {
            Err(e) => {
                reporter.error(
                    &format!("{}: {e}", req.log.display()),
                    false,
                    bsce_pipeline::host::io_is_environment(e.kind()),
                );
                1
            }
            Ok(()) => {
                reset_peak_rss();
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    around(&mut || run_job(&req.job, runner, table))
                }))
                .unwrap_or(WORKER_PANICKED)
            }
        };
        let _ = std::io::stderr().flush();
        reporter.send(&ChildMessage::Done {
            status,
            peak_rss_kib: peak_rss_kib(),
        });
        if status == WORKER_PANICKED {
            return ExitCode::from(WORKER_PANICKED);
        }
    }
    ExitCode::SUCCESS
}

/// Points this process's stderr (fd 2: Rust's, libtorch's and every C
/// library's) at the end of `log`.
fn log_to(log: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    // SAFETY: dup2 onto fd 2 with a valid open descriptor; `file` closes
    // its own descriptor when dropped, fd 2 keeps the duplicate.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Resets the kernel's peak-resident-memory mark of this process
/// (`/proc/self/clear_refs`, 5), so that [`peak_rss_kib`] is the stage's.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident memory since the last reset (`VmHWM`).
fn peak_rss_kib() -> u64 {
    bsce_pipeline::host::proc_memory_kib(None, "VmHWM")
}
