//! `cache verify`, `gc`, `du`, `push` and `pull`: store maintenance and
//! the remote, by hand.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bsce_pipeline::config;
use bsce_pipeline::exec::{Engine, NodeStatus, RunOptions};
use bsce_pipeline::maintenance::{self, DuReport, GcReport, VerifyReport};
use bsce_pipeline::plan::Plan;
use bsce_pipeline::store::{Layered, LocalStore, RemoteMode, Store, TransferStats};
use serde::Serialize;

use super::store::{self, StoreArgs};
use super::{slurm, Ctx};
use crate::{Error, Result};

/// `cache verify [--repair]`.
pub fn verify(args: &StoreArgs, repair: bool, ctx: &Ctx) -> Result<VerifyReport> {
    let store = store::found(args, ctx)?;
    Ok(maintenance::verify(&store, repair)?)
}

/// `cache du`.
pub fn du(args: &StoreArgs, ctx: &Ctx) -> Result<DuReport> {
    let store = store::found(args, ctx)?;
    Ok(maintenance::du(&store)?)
}

/// `cache gc --keep CONFIG...`: removes every result that none of the
/// configs (and no live Slurm run) reaches.
///
/// The store is locked exclusively before any config is read, so no run
/// can add results between deciding what to keep and deleting; a store in
/// use is `StoreBusy`.
pub fn gc(keep: &[PathBuf], args: &StoreArgs, ctx: &Ctx) -> Result<GcReport> {
    let catalog = store::catalog(ctx);
    let run_ctx = store::run_context()?;
    let mut keys = BTreeSet::new();
    let mut held: Option<(LocalStore, bsce_pipeline::store::lock::FileLock)> = None;
    for cfg_path in keep {
        let cfg = config::load(cfg_path, &catalog)?;
        let choice = store::config_store(args, &cfg, ctx);
        match &held {
            None => {
                store::announce(&choice, ctx);
                let s = store::existing(&choice.root)?;
                let lock = store::hold_exclusive(&s)?;
                held = Some((s, lock));
            }
            Some((s, _)) if s.root() != choice.root => {
                return Err(Error::bad_input(format!(
                    "{} uses store {}, not {}; pass --store to choose one",
                    cfg_path.display(),
                    choice.root.display(),
                    s.root().display()
                )));
            }
            Some(_) => {}
        }
        let s = &held.as_ref().expect("locked above").0;
        let plan = Plan::from_config(&cfg);
        let engine = Engine::new(&plan, s, &catalog, &run_ctx);
        // A missing source leaves the config's keys unknown: gc would keep
        // none of its results (the whole prepared dataset and every model
        // of a briefly unmounted share).
        engine.check_sources().map_err(|e| {
            Error::bad_input(format!(
                "{}: {e}; cache gc keeps a config's results by their keys, which it cannot \
                 compute while a source is missing, so it removes nothing (put the source \
                 back, or leave this config out of --keep)",
                cfg_path.display()
            ))
        })?;
        keys.extend(engine.stored_keys()?);
    }
    let (store, _lock) = held.ok_or_else(|| Error::bad_input("cache gc needs --keep CONFIG"))?;
    // A detached Slurm run holds no lock between two of its jobs.
    let slurm_runs = slurm::gc_slurm_runs(&store, &run_ctx, ctx)?;
    keys.extend(slurm_runs.keep);
    for (run, why) in &slurm_runs.live {
        ctx.note(&format!(
            "keeping every result that Slurm run {run} reads ({why})"
        ));
    }
    let mut r = maintenance::gc(
        &store,
        &keys,
        &slurm_runs.finished,
        !slurm_runs.live.is_empty(),
    )?;
    r.live_slurm_runs = slurm_runs.live;
    Ok(r)
}

/// What `cache push` or `cache pull` moved.
#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub remote: Option<String>,
    pub stages: usize,
    /// Pushed (push) or pulled (pull) stage labels.
    #[serde(skip)]
    pub moved: Vec<String>,
    pub not_available: Vec<String>,
    pub transfer: TransferStats,
    pub remote_unavailable: bool,
    #[serde(skip)]
    pub push: bool,
    /// The transfer in words, as `run` ends with it.
    #[serde(skip)]
    pub line: String,
}

impl SyncReport {
    /// The JSON object: `pushed` or `pulled` named by the direction.
    pub fn to_json(&self) -> serde_json::Value {
        let mut j = serde_json::to_value(self).expect("plain data");
        j[if self.push { "pushed" } else { "pulled" }] = serde_json::json!(self.moved);
        j
    }

    /// 1 when the remote could not be reached.
    pub fn exit(&self) -> crate::Exit {
        crate::Exit::unless(!self.remote_unavailable, crate::Exit::Failed)
    }
}

/// `cache push` (`push`) and `cache pull`: the config's stages against its
/// remote. `pushed` is called with each label as it is pushed.
pub fn sync(
    config: &Path,
    args: &StoreArgs,
    push: bool,
    ctx: &Ctx,
    pushed: &mut dyn FnMut(&str),
) -> Result<SyncReport> {
    let loaded = store::load(config, args, ctx)?;
    let url = store::remote_url(args, Some(&loaded.cfg)).ok_or_else(|| {
        Error::bad_input(format!(
            "cache {} needs a remote: --remote URL, BSCE_REMOTE, or store.remote in {}",
            if push { "push" } else { "pull" },
            config.display()
        ))
    })?;
    let remote = bsce_pipeline::store::remote::open(&url).map_err(Error::BadInput)?;
    let local = if push {
        store::existing(&loaded.root)?
    } else {
        LocalStore::open(&loaded.root)?
    };
    let _in_use = store::hold(&local, ctx)?;
    let run_ctx = store::run_context()?;
    let mut moved = Vec::new();
    let mut missing = Vec::new();
    let layered = Layered::new(local.clone(), remote, RemoteMode::ReadWrite);
    let status = if push {
        // What this store holds, as a run would find it; each pushed.
        let status = Engine::new(&loaded.plan, &local, &loaded.catalog, &run_ctx)
            .status(&RunOptions::default())?;
        for (node, st) in loaded.plan.nodes.iter().zip(&status) {
            match st {
                NodeStatus::Cached { record, .. } => {
                    if layered.push(record) {
                        moved.push(node.label.clone());
                        pushed(&node.label);
                    } else if layered.is_down() {
                        break;
                    }
                }
                NodeStatus::ToRun { .. } => missing.push(node.label.clone()),
            }
        }
        status
    } else {
        let opts = RunOptions {
            fetch: true,
            ..RunOptions::default()
        };
        // Pulled = cached now, not cached locally before.
        let before = Engine::new(&loaded.plan, &local, &loaded.catalog, &run_ctx)
            .status(&RunOptions::default())?;
        let status =
            Engine::new(&loaded.plan, &layered, &loaded.catalog, &run_ctx).status(&opts)?;
        for ((node, st), was) in loaded.plan.nodes.iter().zip(&status).zip(&before) {
            match (st, was) {
                (NodeStatus::Cached { .. }, NodeStatus::ToRun { .. }) => {
                    moved.push(node.label.clone())
                }
                (NodeStatus::Cached { .. }, _) => {}
                (NodeStatus::ToRun { .. }, _) => missing.push(node.label.clone()),
            }
        }
        status
    };
    Ok(SyncReport {
        remote: layered.remote(),
        stages: status.len(),
        moved,
        not_available: missing,
        transfer: layered.stats(),
        remote_unavailable: layered.is_down(),
        push,
        line: store::transfer_line(&layered).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{ctx_in, quickstart};
    use bsce_pipeline::digest::Digest;

    #[test]
    fn gc_removes_partial_work_and_verify_and_du_read_a_clean_store() {
        let (dir, config, args) = quickstart();
        let (ctx, _) = ctx_in(dir.path());
        let store = LocalStore::open(args.store.as_ref().unwrap()).unwrap();
        let partial = store.resume_dir(&Digest::of_bytes(b"a killed stage"));
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("checkpoint"), b"half").unwrap();
        let r = gc(std::slice::from_ref(&config), &args, &ctx).unwrap();
        assert_eq!(
            (r.kept_actions, r.removed_actions, r.removed_partial),
            (0, 0, 1)
        );
        assert!(!partial.exists());
        let v = verify(&args, false, &ctx).unwrap();
        assert!(v.clean(), "{v:?}");
        assert!(du(&args, &ctx).unwrap().kinds.is_empty());
    }

    #[test]
    fn gc_refuses_a_folder_that_is_not_a_store_and_one_that_is_not_there() {
        let (dir, config, args) = quickstart();
        let (ctx, _) = ctx_in(dir.path());
        let e = gc(std::slice::from_ref(&config), &args, &ctx)
            .err()
            .expect("no store there");
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(!args.store.as_ref().unwrap().exists());
        let folder = args.store.as_ref().unwrap();
        std::fs::create_dir_all(folder.join("mine")).unwrap();
        let e = gc(&[config], &args, &ctx).err().expect("not a store");
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("no bsce-pipe store here"), "{e}");
        assert!(
            folder.join("mine").exists(),
            "gc touched a folder that is not a store"
        );
    }
}
