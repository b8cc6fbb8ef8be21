//! Which store a command uses, the remote layered over it, and the store's
//! lock: the rules every command shares.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bsce_pipeline::config::{self, Config};
use bsce_pipeline::exec::RunContext;
use bsce_pipeline::plan::Plan;
use bsce_pipeline::store::locate::{self, StoreChoice, StoreOrigin};
use bsce_pipeline::store::lock::FileLock;
use bsce_pipeline::store::{Layered, LocalStore, RemoteMode, Store};
use bsce_stages::stage::Catalog;

use super::Ctx;
use crate::{Error, Result};

/// `--store`, `--remote`, `--remote-read-only` (the last two also from
/// `BSCE_REMOTE*`, through clap).
#[derive(Clone, Debug, Default)]
pub struct StoreArgs {
    pub store: Option<PathBuf>,
    pub remote: Option<String>,
    pub remote_read_only: bool,
}

/// The stage catalog, with the code-salt test hook of the environment.
pub fn catalog(ctx: &Ctx) -> Catalog {
    Catalog {
        salts: ctx.ambient.code_salts.clone(),
    }
}

/// The run context: this tool's version and commit (`-dirty` when the tree
/// had uncommitted changes), host, run id.
pub fn run_context() -> Result<RunContext> {
    let commit = option_env!("BSCE_GIT_COMMIT").filter(|c| !c.is_empty());
    Ok(RunContext::detect(env!("CARGO_PKG_VERSION"), commit)?)
}

/// A config resolved into its plan and the store it uses.
pub struct Loaded {
    pub catalog: Catalog,
    pub cfg: Config,
    pub plan: Plan,
    pub root: PathBuf,
}

pub fn load(config: &Path, args: &StoreArgs, ctx: &Ctx) -> Result<Loaded> {
    let catalog = catalog(ctx);
    let cfg = config::load(config, &catalog)?;
    let choice = config_store(args, &cfg, ctx);
    announce(&choice, ctx);
    Ok(Loaded {
        plan: Plan::from_config(&cfg),
        root: choice.root,
        cfg,
        catalog,
    })
}

/// The store rule for a command that reads `cfg`: flag, `BSCE_STORE`,
/// `store.path`, the nearest `.bsce` above the config, a new one at the
/// project root.
pub fn config_store(args: &StoreArgs, cfg: &Config, ctx: &Ctx) -> StoreChoice {
    locate::choose(
        args.store.as_deref(),
        ctx.ambient.store.as_deref(),
        Some((&cfg.file, cfg.store_path.as_deref())),
        &ctx.ambient.cwd,
    )
    .expect("a config always gives a store")
}

/// When the rule found a store the user did not name, say which. A new one
/// is announced by `run` once it exists.
pub fn announce(choice: &StoreChoice, ctx: &Ctx) {
    if matches!(choice.origin, StoreOrigin::Enclosing(_)) {
        ctx.note(&format!("using {choice}"));
    }
}

/// The store of a command without a config: flag, env, or the nearest
/// above the working folder.
pub fn found(args: &StoreArgs, ctx: &Ctx) -> Result<LocalStore> {
    let cwd = &ctx.ambient.cwd;
    let Some(choice) = locate::choose(
        args.store.as_deref(),
        ctx.ambient.store.as_deref(),
        None,
        cwd,
    ) else {
        return Err(Error::bad_input(format!(
            "no bsce-pipe store in {} or any folder above it; pass --store DIR or set BSCE_STORE",
            cwd.display()
        )));
    };
    announce(&choice, ctx);
    existing(&choice.root)
}

pub fn existing(root: &Path) -> Result<LocalStore> {
    LocalStore::open_existing(root)
        .ok_or_else(|| Error::bad_input(format!("{}: no bsce-pipe store here", root.display())))
}

/// The remote the flags, the environment or the config name, if any.
pub fn remote_url(args: &StoreArgs, cfg: Option<&Config>) -> Option<String> {
    args.remote
        .clone()
        .or_else(|| cfg.and_then(|c| c.remote.clone()))
        .filter(|u| !u.is_empty())
}

/// `local` with the remote layered over it; `local` alone without one.
pub fn with_remote(
    local: LocalStore,
    args: &StoreArgs,
    cfg: Option<&Config>,
) -> Result<Box<dyn Store>> {
    let Some(url) = remote_url(args, cfg) else {
        return Ok(Box::new(local));
    };
    let remote = bsce_pipeline::store::remote::open(&url)
        .map_err(|e| Error::bad_input(format!("--remote / BSCE_REMOTE / store.remote: {e}")))?;
    let read_only = args.remote_read_only || cfg.is_some_and(|c| c.remote_read_only);
    let mode = if read_only {
        RemoteMode::ReadOnly
    } else {
        RemoteMode::ReadWrite
    };
    Ok(Box::new(Layered::new(local, remote, mode)))
}

/// What moved to and from the remote, or nothing without one.
pub fn transfer_line(store: &dyn Store) -> Option<String> {
    let (remote, t) = (store.remote()?, store.transfer_stats()?);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Some(format!(
        "remote {remote}: pulled {} stages ({:.1} MiB), pushed {} stages ({} blobs, {:.1} MiB){}",
        t.pulled_actions,
        mib(t.pulled_bytes),
        t.pushed_actions,
        t.pushed_blobs,
        mib(t.pushed_bytes),
        if t.refused > 0 {
            format!(", refused {}", t.refused)
        } else {
            String::new()
        }
    ))
}

/// A run holds the store's lock shared for its whole length; `cache gc`
/// takes it exclusively. Waits (saying so) while a gc is in progress.
pub fn hold(store: &LocalStore, ctx: &Ctx) -> Result<FileLock> {
    let path = store.store_lock_path();
    let mut said = false;
    loop {
        if let Some(l) = FileLock::try_shared(&path).with_context(|| path.display().to_string())? {
            return Ok(l);
        }
        if !said {
            ctx.note(&format!(
                "waiting for `cache gc` to finish with {}",
                store.root().display()
            ));
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The store's lock, exclusively, or `StoreBusy` while anything holds it.
pub fn hold_exclusive(store: &LocalStore) -> Result<FileLock> {
    let path = store.store_lock_path();
    FileLock::try_exclusive(&path)
        .with_context(|| path.display().to_string())?
        .ok_or_else(|| {
            Error::StoreBusy(format!(
                "store {} is in use by a running `bsce-pipe run`; run `cache gc` when it has finished",
                store.root().display()
            ))
        })
}

/// The store at `root` for a command that only reads: a store that does
/// not exist yet is read as an empty one in a scratch folder (kept alive by
/// the second value), so such commands never create anything.
pub fn read_only(root: &Path) -> Result<(LocalStore, Option<Scratch>)> {
    if let Some(s) = LocalStore::open_existing(root) {
        return Ok((s, None));
    }
    let scratch = Scratch::new()?;
    let store = LocalStore::open(&scratch.0)?;
    Ok((store, Some(scratch)))
}

/// What a command that only reads needs to ask the engine: the config's
/// store (or an empty scratch one) with its remote, and the run context.
pub struct Reading {
    store: Box<dyn Store>,
    run_ctx: RunContext,
    _scratch: Option<Scratch>,
}

impl Reading {
    pub fn open(loaded: &Loaded, args: &StoreArgs) -> Result<Reading> {
        let (local, scratch) = read_only(&loaded.root)?;
        Ok(Reading {
            store: with_remote(local, args, Some(&loaded.cfg))?,
            run_ctx: run_context()?,
            _scratch: scratch,
        })
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub fn engine<'a>(&'a self, loaded: &'a Loaded) -> bsce_pipeline::exec::Engine<'a> {
        bsce_pipeline::exec::Engine::new(
            &loaded.plan,
            self.store.as_ref(),
            &loaded.catalog,
            &self.run_ctx,
        )
    }
}

/// A temporary folder, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Result<Scratch> {
        let p = tempfile::Builder::new()
            .prefix("bsce-scratch-")
            .tempdir()?
            .keep();
        Ok(Scratch(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config with its store, held shared for the command, and the run
/// context: what `results` and `report` start from. Without a local store,
/// a remote (flag, `BSCE_REMOTE` or `store.remote`) makes one: the local
/// store is the remote's cache, so a laptop can make the report from the
/// remote alone.
pub struct Existing {
    pub loaded: Loaded,
    pub store: Box<dyn Store>,
    pub run_ctx: RunContext,
    _held: FileLock,
}

pub fn load_existing(config: &Path, args: &StoreArgs, ctx: &Ctx) -> Result<Existing> {
    let loaded = load(config, args, ctx)?;
    let local = match LocalStore::open_existing(&loaded.root) {
        Some(s) => s,
        None if remote_url(args, Some(&loaded.cfg)).is_some() => {
            let s = LocalStore::open(&loaded.root)?;
            ctx.note(&format!(
                "created store {} (a cache of the remote)",
                s.root().display()
            ));
            s
        }
        None => existing(&loaded.root)?,
    };
    let held = hold(&local, ctx)?;
    let store = with_remote(local, args, Some(&loaded.cfg))?;
    Ok(Existing {
        loaded,
        store,
        run_ctx: run_context()?,
        _held: held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::ctx_in;

    #[test]
    fn a_command_without_a_config_finds_the_store_above_or_says_how_to_name_one() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx_in(dir.path());
        let e = found(&StoreArgs::default(), &ctx).err().expect("no store");
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("pass --store DIR"), "{e}");
        LocalStore::open(&dir.path().join(".bsce")).unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let (ctx, notes) = ctx_in(&sub);
        let s = found(&StoreArgs::default(), &ctx).unwrap();
        assert_eq!(s.root(), dir.path().join(".bsce"));
        assert!(
            notes.borrow()[0].starts_with("using "),
            "{:?}",
            notes.borrow()
        );
    }

    #[test]
    fn gc_is_refused_while_a_run_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx_in(dir.path());
        let s = LocalStore::open(dir.path()).unwrap();
        let run = hold(&s, &ctx).unwrap();
        let e = hold_exclusive(&s).err().expect("held shared");
        assert!(matches!(e, Error::StoreBusy(_)));
        assert_eq!(e.exit_code(), 3);
        drop(run);
        hold_exclusive(&s).unwrap();
    }

    #[test]
    fn a_read_only_command_never_creates_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nothing-here");
        let (s, scratch) = read_only(&root).unwrap();
        assert!(!root.exists());
        let scratch_path = scratch.as_ref().unwrap().path().to_path_buf();
        assert!(s.root().starts_with(&scratch_path));
        drop(scratch);
        assert!(!scratch_path.exists());
    }

    #[test]
    fn a_bad_remote_url_is_bad_input_naming_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let args = StoreArgs {
            remote: Some("ftp://x/y".into()),
            ..StoreArgs::default()
        };
        let e = with_remote(s, &args, None).err().expect("ftp is no remote");
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .starts_with("--remote / BSCE_REMOTE / store.remote:"),
            "{e}"
        );
    }
}
