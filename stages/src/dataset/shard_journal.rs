//! Resumable writing of large files in shards: the files are preallocated
//! in a folder that outlives the process (the engine's per-key resume
//! folder), each shard's bytes are written at their offsets, and a
//! journal records which shards are durably on disk.
//!
//! `<dir>/journal` is text: one header line, then one line per finished
//! shard (its index), appended only after that shard's bytes were synced,
//! and synced itself. A kill at any point leaves either a shard's line
//! (its bytes are on disk) or no line (the shard is redone); a torn last
//! line has no newline and does not count.
//!
//! The header names everything the bytes depend on (the caller's
//! fingerprint of its plan) and the files' lengths. Any mismatch, any
//! unreadable line, or a data file that is missing or of another length
//! starts over: a changed plan never resumes from another plan's bytes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, StageError};

const JOURNAL_FILE: &str = "journal";
const JOURNAL_FORMAT: &str = "bsce-shard-journal/1";

pub struct ShardJournal {
    dir: PathBuf,
    file: File,
    done: Vec<bool>,
    /// Shards found done when the journal was opened.
    resumed: usize,
}

impl ShardJournal {
    /// Opens the journal of `dir` for data files `files` (name, length)
    /// split into `shards` shards, creating `dir` if needed. A journal
    /// written for anything else, or whose files are not all there at
    /// their lengths, is discarded and the files are preallocated afresh.
    pub fn open(
        dir: &Path,
        fingerprint: &str,
        files: &[(&str, u64)],
        shards: usize,
    ) -> Result<ShardJournal> {
        fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
        let lengths: Vec<String> = files.iter().map(|(n, l)| format!("{n}={l}")).collect();
        let header = format!(
            "{JOURNAL_FORMAT} {fingerprint} shards={shards} {}\n",
            lengths.join(" ")
        );
        let path = dir.join(JOURNAL_FILE);
        let found = match fs::read(&path) {
            Ok(bytes) => parse(&bytes, &header, shards).filter(|_| files_match(dir, files)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StageError::io(&path, e)),
        };
        let done = match found {
            Some((done, whole)) => {
                // A torn tail is cut, or the next line would extend it.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| StageError::io(&path, e))?;
                if f.metadata().map_err(|e| StageError::io(&path, e))?.len() != whole {
                    f.set_len(whole)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| StageError::io(&path, e))?;
                }
                done
            }
            None => {
                start_over(dir, &header, files)?;
                vec![false; shards]
            }
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| StageError::io(&path, e))?;
        let resumed = done.iter().filter(|d| **d).count();
        Ok(ShardJournal {
            dir: dir.to_path_buf(),
            file,
            done,
            resumed,
        })
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn is_done(&self, shard: usize) -> bool {
        self.done[shard]
    }

    /// Shards that were already done when the journal was opened.
    pub fn resumed(&self) -> usize {
        self.resumed
    }

    /// Records `shard` as done. The caller has synced its bytes first.
    pub fn record(&mut self, shard: usize) -> Result<()> {
        let path = self.dir.join(JOURNAL_FILE);
        self.file
            .write_all(format!("{shard}\n").as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StageError::io(&path, e))?;
        self.done[shard] = true;
        Ok(())
    }

    /// Moves the finished data file `name` to `to` and forgets the journal
    /// (its files are leaving). Same filesystem: a rename; otherwise a copy.
    pub fn move_out(&self, name: &str, to: &Path) -> Result<()> {
        debug_assert!(self.done.iter().all(|d| *d), "moving out unfinished data");
        let _ = fs::remove_file(self.dir.join(JOURNAL_FILE));
        let from = self.dir.join(name);
        match fs::rename(&from, to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                fs::copy(&from, to).map_err(|e| StageError::io(to, e))?;
                fs::remove_file(&from).map_err(|e| StageError::io(&from, e))
            }
            Err(e) => Err(StageError::io(to, e)),
        }
    }
}

/// The done shards a journal lists and the length of its whole lines, or
/// `None` when it was written for another header or holds a line that is
/// not a shard index.
fn parse(bytes: &[u8], header: &str, shards: usize) -> Option<(Vec<bool>, u64)> {
    // Only newline-terminated lines: a kill mid-append leaves a torn tail.
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..whole]).ok()?;
    let body = text.strip_prefix(header)?;
    let mut done = vec![false; shards];
    for line in body.lines() {
        let shard: usize = line.parse().ok()?;
        *done.get_mut(shard)? = true;
    }
    Some((done, whole as u64))
}

fn files_match(dir: &Path, files: &[(&str, u64)]) -> bool {
    files.iter().all(|(name, len)| {
        fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.len() == *len)
    })
}

/// Drops the old journal first, so that a kill during this leaves no
/// journal that vouches for the new, empty files.
fn start_over(dir: &Path, header: &str, files: &[(&str, u64)]) -> Result<()> {
    let journal = dir.join(JOURNAL_FILE);
    match fs::remove_file(&journal) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StageError::io(&journal, e)),
    }
    for (name, len) in files {
        let path = dir.join(name);
        // Truncated to zero, then extended: a sparse file of zeros that
        // costs no disk until written.
        let f = File::create(&path).map_err(|e| StageError::io(&path, e))?;
        f.set_len(*len)
            .and_then(|()| f.sync_all())
            .map_err(|e| StageError::io(&path, e))?;
    }
    let temp = dir.join(format!("{JOURNAL_FILE}.new"));
    (|| {
        let mut f = File::create(&temp)?;
        f.write_all(header.as_bytes())?;
        f.sync_all()?;
        fs::rename(&temp, &journal)?;
        File::open(dir)?.sync_all()
    })()
    .map_err(|e| StageError::io(&journal, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: &[(&str, u64)] = &[("a.bin", 100), ("b.bin", 7)];

    fn open(dir: &Path, fingerprint: &str) -> ShardJournal {
        ShardJournal::open(dir, fingerprint, FILES, 5).unwrap()
    }

    fn done(j: &ShardJournal) -> Vec<usize> {
        (0..5).filter(|&s| j.is_done(s)).collect()
    }

    #[test]
    fn recorded_shards_survive_a_reopen_with_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let resume = dir.path().join("resume/k");
        let mut j = open(&resume, "fp1");
        assert_eq!((done(&j), j.resumed()), (vec![], 0));
        assert_eq!(fs::metadata(j.data_path("a.bin")).unwrap().len(), 100);
        use std::os::unix::fs::FileExt;
        File::options()
            .write(true)
            .open(j.data_path("a.bin"))
            .unwrap()
            .write_all_at(b"shard three", 60)
            .unwrap();
        j.record(3).unwrap();
        j.record(0).unwrap();
        drop(j);
        let j = open(&resume, "fp1");
        assert_eq!((done(&j), j.resumed()), (vec![0, 3], 2));
        assert_eq!(
            &fs::read(j.data_path("a.bin")).unwrap()[60..71],
            b"shard three"
        );
    }

    #[test]
    fn another_plan_a_torn_or_foreign_journal_or_a_missing_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let resume = dir.path();
        let mut j = open(resume, "fp1");
        j.record(1).unwrap();
        drop(j);

        // A torn last line does not count; the complete ones do.
        let journal = resume.join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(b"4").unwrap();
        drop(f);
        let mut j = open(resume, "fp1");
        assert_eq!(done(&j), [1]);
        j.record(2).unwrap();
        drop(j);
        assert_eq!(done(&open(resume, "fp1")), [1, 2]);

        // Another fingerprint, other shard count, other file lengths.
        assert_eq!(done(&open(resume, "fp2")), [0usize; 0]);
        let mut j = open(resume, "fp1");
        j.record(2).unwrap();
        drop(j);
        assert!(ShardJournal::open(resume, "fp1", FILES, 6)
            .map(|j| done(&j).is_empty())
            .unwrap());
        let mut j = open(resume, "fp1");
        j.record(2).unwrap();
        drop(j);
        let longer = [("a.bin", 100), ("b.bin", 8)];
        assert_eq!(
            ShardJournal::open(resume, "fp1", &longer, 5)
                .unwrap()
                .resumed(),
            0
        );

        // A data file gone (moved out by a run killed before it ended).
        let mut j = open(resume, "fp1");
        j.record(2).unwrap();
        drop(j);
        fs::remove_file(resume.join("b.bin")).unwrap();
        let j = open(resume, "fp1");
        assert_eq!(done(&j), [0usize; 0]);
        assert_eq!(fs::metadata(j.data_path("b.bin")).unwrap().len(), 7);

        // A line that is not a shard of this plan.
        drop(j);
        fs::write(&journal, format!("{}9\n", header_of(&journal))).unwrap();
        assert_eq!(done(&open(resume, "fp1")), [0usize; 0]);
    }

    fn header_of(journal: &Path) -> String {
        let text = fs::read_to_string(journal).unwrap();
        text[..=text.find('\n').unwrap()].to_string()
    }

    #[test]
    fn moving_out_forgets_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let resume = dir.path().join("r");
        let mut j = ShardJournal::open(&resume, "fp", &[("x", 3)], 1).unwrap();
        j.record(0).unwrap();
        let to = dir.path().join("x.out");
        j.move_out("x", &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), [0, 0, 0]);
        assert!(!resume.join(JOURNAL_FILE).exists());
        drop(j);
        assert_eq!(
            ShardJournal::open(&resume, "fp", &[("x", 3)], 1)
                .unwrap()
                .resumed(),
            0
        );
    }
}
