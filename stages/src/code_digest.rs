// Shared by build.rs (which computes every stage kind's code digest) and the
// crate's tests. Kept free of crate imports for that reason.
#![allow(dead_code)] // the crate's tests use only the functions

use sha2::{Digest, Sha256};
use std::path::Path;

/// Which source files make up each stage kind. A kind's digest covers these
/// and nothing else, so editing one stage reruns that stage (and what reads
/// its outputs, if they change), never the others.
pub const STAGE_SOURCES: &[(&str, &[&str])] = &[
    ("prepare", &["src/dataset", "src/stage/prepare.rs"]),
    ("order", &["src/order", "src/stage/order.rs"]),
    ("tasks", &["src/stage/tasks.rs"]),
    // The training crate (bsce-torch); evaluation shares its networks,
    // heads, memory and data path but not the training loop or losses.
    (
        "train",
        &[
            "../train/src/runtime.rs",
            "../train/src/net.rs",
            "../train/src/classifier.rs",
            "../train/src/checkpoint.rs",
            "../train/src/memory.rs",
            "../train/src/data.rs",
            "../train/src/loss.rs",
            "../train/src/method.rs",
            "../train/src/stage/train.rs",
        ],
    ),
    (
        "evaluate",
        &[
            "../train/src/runtime.rs",
            "../train/src/net.rs",
            "../train/src/classifier.rs",
            "../train/src/checkpoint.rs",
            "../train/src/memory.rs",
            "../train/src/data.rs",
            "../train/src/method.rs",
            "../train/src/stage/evaluate.rs",
        ],
    ),
];

/// Crates whose versions change a kind's numerics, read from Cargo.lock.
pub const STAGE_LIBRARIES: &[(&str, &[&str])] = &[
    ("prepare", &["image", "zune-jpeg", "flate2"]),
    ("order", &[]),
    ("tasks", &[]),
    ("train", &["tch", "torch-sys"]),
    ("evaluate", &["tch", "torch-sys"]),
];

/// sha256 over "relative path NUL content" of every `.rs` file under the
/// given roots (files or folders), in path order.
pub fn digest_sources(crate_dir: &Path, roots: &[&str]) -> std::io::Result<String> {
    let mut files = Vec::new();
    for root in roots {
        for entry in walkdir::WalkDir::new(crate_dir.join(root)).sort_by_file_name() {
            let entry = entry.map_err(std::io::Error::other)?;
            if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "rs") {
                files.push(entry.into_path());
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(crate_dir).unwrap_or(&f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0u8]);
        h.update(std::fs::read(&f)?);
        h.update([0u8]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Versions of `names` in a Cargo.lock text ("name@version", in order).
pub fn locked_versions(lock: &str, names: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            current = None;
        } else if let Some(n) = line.strip_prefix("name = ") {
            current = Some(n.trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let Some(n) = current.as_deref().filter(|n| names.contains(n)) {
                out.push((n.to_string(), v.trim_matches('"').to_string()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_follows_content_and_names_not_location() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("src/order")).unwrap();
            std::fs::write(d.join("src/order/mod.rs"), "fn a() {}").unwrap();
            std::fs::write(d.join("src/order/notes.txt"), "ignored").unwrap();
        }
        let da = digest_sources(a.path(), &["src/order"]).unwrap();
        assert_eq!(da, digest_sources(b.path(), &["src/order"]).unwrap());
        std::fs::write(b.path().join("src/order/notes.txt"), "still ignored").unwrap();
        assert_eq!(da, digest_sources(b.path(), &["src/order"]).unwrap());
        std::fs::write(b.path().join("src/order/mod.rs"), "fn a() { }").unwrap();
        assert_ne!(da, digest_sources(b.path(), &["src/order"]).unwrap());
    }

    #[test]
    fn locked_versions_reads_cargo_lock() {
        let lock = "[[package]]\nname = \"image\"\nversion = \"0.25.10\"\n\n[[package]]\nname = \"other\"\nversion = \"1.0.0\"\n";
        assert_eq!(
            locked_versions(lock, &["image"]),
            vec![("image".to_string(), "0.25.10".to_string())]
        );
    }
}
