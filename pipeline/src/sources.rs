//! Content digests of sources outside the store (dataset archives, image
//! trees, list files), with a stat cache so an unchanged 170 MB archive is
//! not re-hashed on every run (DVC's state database, cargo's mtime check
//! plus content fallback). The cache is keyed by absolute path, which never
//! reaches a stage key: only the digest does.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::atomic::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot read source: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: sha256 is {actual}, but the config expects {expected}")]
    Mismatch {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("{path}: folder holds no file")]
    EmptyTree { path: PathBuf },
}

#[derive(Serialize, Deserialize, PartialEq)]
struct StatEntry {
    /// For a file: size, mtime, inode, ctime. For a tree: digest of the
    /// listing of (relative path, size, mtime, inode, ctime) of every file.
    stamp: String,
    digest: Digest,
}

pub struct SourceDigester {
    state_dir: PathBuf,
    tmp_dir: PathBuf,
}

impl SourceDigester {
    pub fn new(state_dir: PathBuf, tmp_dir: PathBuf) -> Self {
        SourceDigester { state_dir, tmp_dir }
    }

    pub fn digest(&self, path: &Path, is_tree: bool) -> Result<Digest, SourceError> {
        let io = |e| SourceError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let abs = std::path::absolute(path).map_err(io)?;
        let stamp = if is_tree {
            tree_stamp(&abs)?
        } else {
            file_stamp(&abs).map_err(io)?
        };
        let entry_path = self.state_dir.join(format!(
            "{}.json",
            Digest::of_bytes(abs.to_string_lossy().as_bytes())
        ));
        if let Ok(bytes) = fs::read(&entry_path) {
            if let Ok(e) = serde_json::from_slice::<StatEntry>(&bytes) {
                if e.stamp == stamp {
                    return Ok(e.digest);
                }
            }
        }
        let digest = if is_tree {
            tree_digest(&abs)?
        } else {
            Digest::of_file(&abs).map_err(io)?.0
        };
        let entry = serde_json::to_vec(&StatEntry { stamp, digest }).expect("serialises");
        // The cache is an optimisation: failing to write it is not an error.
        let _ = write_atomic(&entry_path, &self.tmp_dir, &entry);
        Ok(digest)
    }
}

fn file_stamp(path: &Path) -> std::io::Result<String> {
    let m = fs::metadata(path)?;
    // The ctime too: `touch -d` can set an mtime back, nothing can set a
    // ctime back, so an edit through the filesystem always moves the stamp.
    Ok(format!(
        "{}:{}.{}:{}:{}.{}",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

fn tree_files(root: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| SourceError::Io {
            path: e.path().unwrap_or(root).to_path_buf(),
            source: e.into(),
        })?;
        if entry.file_type().is_file() {
            files.push(entry.into_path());
        }
    }
    if files.is_empty() {
        return Err(SourceError::EmptyTree {
            path: root.to_path_buf(),
        });
    }
    Ok(files)
}

fn tree_stamp(root: &Path) -> Result<String, SourceError> {
    let mut listing = String::new();
    for f in tree_files(root)? {
        let stamp = file_stamp(&f).map_err(|e| SourceError::Io {
            path: f.clone(),
            source: e,
        })?;
        listing.push_str(&format!("{}\0{stamp}\n", rel(root, &f)));
    }
    Ok(Digest::of_bytes(listing.as_bytes()).to_hex())
}

/// Digest of a tree: sha256 over "relative path NUL file digest" lines in
/// path order, so it depends on names and contents, not on where the tree
/// lives or when it was copied.
fn tree_digest(root: &Path) -> Result<Digest, SourceError> {
    use rayon_free::par_digests;
    let files = tree_files(root)?;
    let digests = par_digests(&files)?;
    let mut listing = String::new();
    for (f, d) in files.iter().zip(digests) {
        listing.push_str(&format!("{}\0{d}\n", rel(root, f)));
    }
    Ok(Digest::of_bytes(listing.as_bytes()))
}

fn rel(root: &Path, f: &Path) -> String {
    f.strip_prefix(root)
        .unwrap_or(f)
        .to_string_lossy()
        .into_owned()
}

/// The engine has no rayon; a few scoped threads are enough to hash a tree.
mod rayon_free {
    use super::*;

    pub(crate) fn par_digests(files: &[PathBuf]) -> Result<Vec<Digest>, SourceError> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let chunk = files.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|f| {
                                Digest::of_file(f)
                                    .map(|(d, _)| d)
                                    .map_err(|e| SourceError::Io {
                                        path: f.clone(),
                                        source: e,
                                    })
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(files.len());
            for h in handles {
                out.extend(h.join().expect("hashing thread panicked")?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_ignores_location_but_not_content() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for root in [a.path(), b.path()] {
            fs::create_dir_all(root.join("train/n01")).unwrap();
            fs::write(root.join("train/n01/x.jpg"), b"one").unwrap();
            fs::write(root.join("list.txt"), b"n01\n").unwrap();
        }
        let state = tempfile::tempdir().unwrap();
        let d = SourceDigester::new(state.path().into(), state.path().into());
        let da = d.digest(a.path(), true).unwrap();
        assert_eq!(da, d.digest(b.path(), true).unwrap());
        // Cached answer is the same; a content change is seen.
        assert_eq!(da, d.digest(a.path(), true).unwrap());
        fs::write(a.path().join("train/n01/x.jpg"), b"two").unwrap();
        assert_ne!(da, d.digest(a.path(), true).unwrap());
    }

    #[test]
    fn file_cache_notices_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.tar.gz");
        fs::write(&f, b"v1").unwrap();
        let d = SourceDigester::new(dir.path().join("s"), dir.path().into());
        fs::create_dir_all(dir.path().join("s")).unwrap();
        assert_eq!(d.digest(&f, false).unwrap(), Digest::of_bytes(b"v1"));
        fs::write(&f, b"v2-longer").unwrap();
        assert_eq!(d.digest(&f, false).unwrap(), Digest::of_bytes(b"v2-longer"));
        // Same size, mtime set back (`touch -d`): the ctime still moved.
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, b"v3-longer").unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), mtime);
        assert_eq!(d.digest(&f, false).unwrap(), Digest::of_bytes(b"v3-longer"));
    }
}
