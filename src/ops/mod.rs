//! Every command's logic. Each function takes plain values and an [`Ctx`]
//! and returns data; the binary prints it. Notices a user should see while
//! a command works ("created store X", "waiting for `cache gc`") go through
//! [`Ctx::note`], which the binary points at stderr.
//!
//! | module     | commands                                  |
//! |------------|-------------------------------------------|
//! | [`store`]  | (shared) which store, its remote, its lock |
//! | [`run`]    | `run` (local and Slurm), `--dry-run`       |
//! | [`status`] | `status`, `explain`, `dag`                 |
//! | [`cache`]  | `cache verify`, `gc`, `du`, `push`, `pull` |
//! | [`cost`]   | `status --cost`, `calibrate`, `explain --if-changed` |
//! | [`inspect`] | `order show`, `dataset inspect`            |
//! | [`report`] | `report`, `results`                        |
//! | [`slurm`]  | `cancel`, `exec-node` (a Slurm job's body), the live jobs `status` shows |

pub mod cache;
pub mod cost;
pub mod inspect;
pub mod report;
pub mod run;
pub mod slurm;
pub mod status;
pub mod store;

use crate::Ambient;
use bsce_pipeline::exec::CancelToken;

/// What every command reads besides its arguments.
pub struct Ctx {
    pub ambient: Ambient,
    note: Box<dyn Fn(&str)>,
}

impl Ctx {
    pub fn new(ambient: Ambient, note: impl Fn(&str) + 'static) -> Ctx {
        Ctx {
            ambient,
            note: Box::new(note),
        }
    }

    /// A line for the user while the command works.
    pub fn note(&self, line: &str) {
        (self.note)(line)
    }
}

/// The first SIGINT/SIGTERM cancels (children are stopped, the store keeps
/// only complete records); a second one exits at once with 130.
pub fn cancel_on_signals(cancel: &CancelToken) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // SIGHUP: the terminal closed (an SSH session dropped). The run stops
    // as for Ctrl-C, its stages stopped and nothing half-stored, rather
    // than being killed outright (exit 129, stages killed mid-write).
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if cancel.is_cancelled() {
                // Children die with us (PDEATHSIG).
                std::process::exit(crate::Exit::Interrupted.code().into());
            }
            cancel.cancel();
        }
    });
    Ok(())
}

/// The processors stages may use when `--jobs` is not given.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// What the commands' unit tests share: a context in a folder whose notes
/// are kept, and a scratch project holding the quickstart config.
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    use super::store::StoreArgs;
    use super::Ctx;

    pub(crate) type Notes = Rc<RefCell<Vec<String>>>;

    /// A reporter that keeps every event, as its `Debug` line.
    #[derive(Default)]
    pub(crate) struct Events(pub Vec<String>);

    impl bsce_pipeline::events::Reporter for Events {
        fn on_event(&mut self, event: &bsce_pipeline::events::RunEvent) {
            self.0.push(format!("{event:?}"));
        }
    }

    /// A context whose working folder is `cwd`, its notes collected.
    pub(crate) fn ctx_in(cwd: &Path) -> (Ctx, Notes) {
        let notes = Notes::default();
        let n = notes.clone();
        let ambient = crate::Ambient {
            cwd: cwd.to_path_buf(),
            ..crate::Ambient::default()
        };
        (
            Ctx::new(ambient, move |l| n.borrow_mut().push(l.into())),
            notes,
        )
    }

    /// `configs/quickstart.yaml` as `<dir>/quickstart.yaml`, its store
    /// named by the flag as `<dir>/store` (not created).
    pub(crate) fn quickstart() -> (tempfile::TempDir, PathBuf, StoreArgs) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("quickstart.yaml");
        std::fs::write(&config, include_str!("../../configs/quickstart.yaml")).unwrap();
        let args = StoreArgs {
            store: Some(dir.path().join("store")),
            ..StoreArgs::default()
        };
        (dir, config, args)
    }
}
