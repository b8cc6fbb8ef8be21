//! Which store a command uses: one rule for every command.
//!
//! 1. `--store DIR`;
//! 2. `BSCE_STORE`;
//! 3. the config's `store.path` (relative to the config);
//! 4. the nearest enclosing store, as git finds `.git`: `.bsce/` in the
//!    config's folder or any folder above it, then in the working folder or
//!    any folder above it;
//! 5. for a command that may create one (`run`): a new `.bsce/` at the
//!    project root ([`project_root_for`]): the nearest folder holding
//!    `.git` above the config, else above the working folder, else the
//!    working folder itself.
//!
//! So in and out of git a run started in a folder stores (and reports)
//! under that folder, or under the checkout it is in, and every command
//! started there finds that store. Steps 4 and 5 are guesses: the binary
//! prints the store they chose.

use std::fmt;
use std::path::{Path, PathBuf};

/// The folder name of a store found or made by the rule.
pub(crate) const STORE_DIR: &str = ".bsce";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOrigin {
    Flag,
    Env,
    Config,
    /// Found by walking up from this folder.
    Enclosing(PathBuf),
    /// No store yet: the place a new one goes.
    New,
}

#[derive(Clone, Debug)]
pub struct StoreChoice {
    pub root: PathBuf,
    pub origin: StoreOrigin,
}

impl fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            StoreOrigin::Flag => write!(f, "store {} (--store)", self.root.display()),
            StoreOrigin::Env => write!(f, "store {} (BSCE_STORE)", self.root.display()),
            StoreOrigin::Config => {
                write!(f, "store {} (the config's store.path)", self.root.display())
            }
            StoreOrigin::Enclosing(from) => write!(
                f,
                "store {} (the nearest store above {})",
                self.root.display(),
                from.display()
            ),
            StoreOrigin::New => write!(
                f,
                "store {} (new, at the project root)",
                self.root.display()
            ),
        }
    }
}

/// Whether `dir` holds a bsce-pipe store.
pub(crate) fn is_store(dir: &Path) -> bool {
    dir.join("cas").is_dir() && dir.join("ac").is_dir()
}

/// The nearest `.bsce` store in `start` or above.
pub(crate) fn enclosing_store(start: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(start).ok()?;
    start
        .ancestors()
        .map(|d| d.join(STORE_DIR))
        .find(|d| is_store(d))
}

/// The nearest folder at or above `start` holding `.git`.
fn git_root(start: &Path) -> Option<PathBuf> {
    let start = std::path::absolute(start).ok()?;
    start
        .ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}

/// Where a config's new store and its reports go: the git checkout holding
/// the config, else the one holding the working folder, else the working
/// folder (never the config's own folder: `configs/.bsce` would be found
/// from `configs/` only).
pub fn project_root_for(config: &Path, cwd: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let config_dir = abs(config)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| abs(cwd));
    git_root(&config_dir)
        .or_else(|| git_root(cwd))
        .unwrap_or_else(|| abs(cwd))
}

/// Applies the rule. `config` is (the config file, its `store.path`) for
/// commands that read one; `cwd` is where commands without a config start
/// looking. None: no store named and none found (only without a config).
pub fn choose(
    flag: Option<&Path>,
    env: Option<&Path>,
    config: Option<(&Path, Option<&Path>)>,
    cwd: &Path,
) -> Option<StoreChoice> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Some(p) = flag {
        return Some(StoreChoice {
            root: abs(p),
            origin: StoreOrigin::Flag,
        });
    }
    if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
        return Some(StoreChoice {
            root: abs(p),
            origin: StoreOrigin::Env,
        });
    }
    if let Some((_, Some(p))) = config {
        return Some(StoreChoice {
            root: abs(p),
            origin: StoreOrigin::Config,
        });
    }
    let start = match config {
        Some((file, _)) => abs(file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| abs(cwd)),
        None => abs(cwd),
    };
    if let Some(root) = enclosing_store(&start) {
        return Some(StoreChoice {
            root,
            origin: StoreOrigin::Enclosing(start),
        });
    }
    let cwd = abs(cwd);
    if let Some(root) = enclosing_store(&cwd) {
        return Some(StoreChoice {
            root,
            origin: StoreOrigin::Enclosing(cwd),
        });
    }
    config.map(|(file, _)| StoreChoice {
        root: project_root_for(file, &cwd).join(STORE_DIR),
        origin: StoreOrigin::New,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_at(dir: &Path) {
        std::fs::create_dir_all(dir.join("cas")).unwrap();
        std::fs::create_dir_all(dir.join("ac")).unwrap();
    }

    #[test]
    fn flag_env_config_then_enclosing_then_project_root() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::create_dir_all(repo.join("configs/deep")).unwrap();
        let cfg = repo.join("configs/deep/c.yaml");
        let flag = t.path().join("f");
        let env = t.path().join("e");
        let c = |f: Option<&Path>, e: Option<&Path>, s: Option<&Path>| {
            choose(f, e, Some((&cfg, s)), &repo).unwrap()
        };
        assert_eq!(
            c(Some(&flag), Some(&env), Some(&env)).origin,
            StoreOrigin::Flag
        );
        assert_eq!(c(None, Some(&env), Some(&flag)).origin, StoreOrigin::Env);
        assert_eq!(c(None, None, Some(&flag)).root, flag);
        // Nothing yet: a new store at the project root, not beside the config.
        let new = c(None, None, None);
        assert_eq!(
            (new.root.clone(), new.origin),
            (repo.join(".bsce"), StoreOrigin::New)
        );
        // Once it exists, commands without a config find it from anywhere inside.
        store_at(&repo.join(".bsce"));
        let found = choose(None, None, None, &repo.join("configs")).unwrap();
        assert_eq!(found.root, repo.join(".bsce"));
        assert!(matches!(found.origin, StoreOrigin::Enclosing(_)));
        // A nearer store wins (an older layout kept its store beside the config).
        store_at(&repo.join("configs/.bsce"));
        assert_eq!(c(None, None, None).root, repo.join("configs/.bsce"));
        // Without a config and with no store above, there is no guess.
        assert!(choose(None, None, None, t.path()).is_none());
    }

    /// Out of git, the working folder is the project: a run of
    /// `configs/c.yaml` started in a plain folder makes its store there,
    /// and every command started there finds it.
    #[test]
    fn out_of_git_the_store_goes_where_the_run_started() {
        let t = tempfile::tempdir().unwrap();
        let plain = t.path().join("plain");
        std::fs::create_dir_all(plain.join("configs")).unwrap();
        let cfg = plain.join("configs/c.yaml");
        let new = choose(None, None, Some((&cfg, None)), &plain).unwrap();
        assert_eq!(
            (new.root.clone(), new.origin),
            (plain.join(".bsce"), StoreOrigin::New)
        );
        assert_eq!(project_root_for(&cfg, &plain), plain);
        store_at(&plain.join(".bsce"));
        assert_eq!(
            choose(None, None, None, &plain).unwrap().root,
            plain.join(".bsce")
        );
        assert_eq!(
            choose(None, None, Some((&cfg, None)), &plain).unwrap().root,
            plain.join(".bsce")
        );
        // A config elsewhere, run from here, finds this folder's store.
        let other = t.path().join("other/c.yaml");
        std::fs::create_dir_all(other.parent().unwrap()).unwrap();
        assert_eq!(
            choose(None, None, Some((&other, None)), &plain)
                .unwrap()
                .root,
            plain.join(".bsce")
        );
    }
}
