//! Records the git commit the binary was built from, and whether the tree
//! had uncommitted changes, for `--version` and provenance (never part of a
//! stage key: stage code digests are).
//!
//! Reruns when HEAD moves, the index changes, or any workspace source
//! changes (cargo rescans the folders), so "dirty" is never stale.
#![allow(clippy::disallowed_methods)] // cargo's variables: a build script's input

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    for p in [
        ".git/HEAD",
        ".git/index",
        ".git/refs/heads",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={root}/{p}");
    }
    for dir in [
        "src",
        "pipeline/src",
        "stages/src",
        "reports/src",
        "train/src",
        "configs",
        "scripts",
    ] {
        println!("cargo:rerun-if-changed={root}/{dir}");
    }
    let commit = git(&["-C", &root, "rev-parse", "HEAD"]).unwrap_or_default();
    let dirty = !commit.is_empty()
        && git(&[
            "-C",
            &root,
            "status",
            "--porcelain",
            "--untracked-files=normal",
        ])
        .is_some_and(|s| !s.is_empty());
    let provenance = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=BSCE_GIT_COMMIT={provenance}");
}
