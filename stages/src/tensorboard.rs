//! TensorBoard event files: a train stage's per-epoch scalars, written
//! live by the stage (`<store>/tensorboard/<config>/<run>/`) and by the
//! report from `log.json` (`reports/out/<config>/tensorboard/<run>/`).
//!
//! The format is TensorFlow's record file: each record is its length (u64,
//! little-endian), the masked CRC-32C of those 8 bytes, the data, and the
//! masked CRC-32C of the data; each record's data is an `Event` protobuf.
//! Only the fields a scalar needs are written, encoded by hand (a dozen
//! lines, no protobuf compiler at build time):
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! The first event of a file names the format (`brain.Event:2`). The e2e
//! tests read the files back with the `tensorboard` package's own reader.
//!
//! Tags, the same live and in the report ([`scalars`]): `train/<term>` for
//! each loss term of `log.json`, `train/total` (their sum: the loss the
//! step minimised), `train/lr`, `train/seconds`, then `finetune/...` for
//! class-balanced fine-tuning epochs, and `task` (with training epochs).
//! A run's steps go through its tasks in turn, training and fine-tuning
//! epochs counted apart ([`Steps`]), so the training curves of methods with
//! and without fine-tuning line up.
//!
//! No stage output depends on this file (the registry's NO_OUTPUT_EFFECT):
//! the live files are written outside the store, the report's from
//! `log.json`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use bsce_pipeline::exec::job::LiveRun;
use bsce_pipeline::registry::files;

use crate::task_artefacts::LogEntry;
pub use crate::task_artefacts::Steps;

/// CRC-32C (Castagnoli), reflected, as TensorFlow's records use it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One record: length, its masked CRC, the data, the data's masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` with its wall time, step, and either the file version or a
/// summary of scalars.
fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(String, f32)],
) -> Vec<u8> {
    let mut e = Vec::new();
    varint(&mut e, 1 << 3 | 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(&mut e, 2 << 3);
    varint(&mut e, step as u64);
    if let Some(v) = file_version {
        bytes_field(&mut e, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes());
            varint(&mut v, 2 << 3 | 5);
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(&mut summary, 1, &v);
        }
        bytes_field(&mut e, 5, &summary);
    }
    e
}

/// The scalars of one `log.json` entry, tagged as the module says; a value
/// that was not finite (`null` in `log.json`) is NaN, which TensorBoard
/// shows as such.
pub fn scalars(entry: &LogEntry, task: usize) -> Vec<(String, f32)> {
    let phase = entry.phase();
    let value = |v: &Option<f64>| v.map_or(f32::NAN, |v| v as f32);
    let mut out: Vec<(String, f32)> = entry
        .losses()
        .iter()
        .map(|(term, v)| (format!("{phase}/{term}"), value(v)))
        .collect();
    let total = entry.total();
    out.push((format!("{phase}/total"), value(&total)));
    out.push((format!("{phase}/lr"), entry.lr() as f32));
    out.push((format!("{phase}/seconds"), entry.seconds() as f32));
    if let LogEntry::Epoch(_) = entry {
        out.push(("task".into(), task as f32));
    }
    out
}

/// The bytes of a whole event file: the version event at `wall_time`, then
/// one event per (wall time, step, scalars).
pub fn file_bytes(wall_time: f64, events: &[(f64, u64, Vec<(String, f32)>)]) -> Vec<u8> {
    let mut out = record(&event(wall_time, 0, Some("brain.Event:2"), &[]));
    for (wall, step, scalars) in events {
        out.extend(record(&event(*wall, *step as i64, None, scalars)));
    }
    out
}

/// A train stage's live event files, one per run it belongs to, appended
/// after each epoch. A failure to write them is reported once on stderr and
/// never fails the stage: they are a view, not a result.
pub struct LiveEvents {
    /// Per run: its file, and the steps of the next entries.
    files: Vec<(PathBuf, File, Steps)>,
    task: usize,
    written: usize,
}

impl LiveEvents {
    /// Starts `events.out.tfevents.t<task>.<key>` in each run's folder,
    /// after removing the files of this task already there (its own from an
    /// earlier attempt, or another key's from before the config or the
    /// code changed), so the run's curve shows the task once, and those of
    /// tasks the run no longer has (its setting made shorter: when one of
    /// its train stages runs again; `cache gc` removes them in any case,
    /// with their results). The file is
    /// appended to, one record per write: should two stages of the same
    /// task write at once (two checkouts sharing a store on a local file
    /// system, where appends are atomic), the records interleave whole, or
    /// the one whose file was removed writes into a file no one reads.
    pub fn open(runs: &[LiveRun], task: usize, key: &str) -> LiveEvents {
        let now = wall_now();
        let mut files = Vec::new();
        for r in runs {
            let path = r.dir.join(files::live_events(task, key));
            if let Ok(entries) = std::fs::read_dir(&r.dir) {
                for e in entries.flatten() {
                    let stale = files::parse_live_events(&e.file_name().to_string_lossy())
                        .is_some_and(|(t, _)| t == task || t >= r.tasks);
                    if stale {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            let opened = std::fs::create_dir_all(&r.dir).and_then(|()| {
                let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
                f.write_all(&record(&event(now, 0, Some("brain.Event:2"), &[])))?;
                Ok(f)
            });
            let steps = Steps {
                train: r.first_train_step,
                finetune: r.first_finetune_step,
            };
            match opened {
                Ok(f) => files.push((path, f, steps)),
                Err(e) => eprintln!("live TensorBoard events: {}: {e}", path.display()),
            }
        }
        LiveEvents {
            files,
            task,
            written: 0,
        }
    }

    /// No live events (a stage run without runs, or a test).
    pub fn none() -> LiveEvents {
        LiveEvents {
            files: Vec::new(),
            task: 0,
            written: 0,
        }
    }

    /// Appends the entries of `log` not yet written.
    pub fn update(&mut self, log: &[LogEntry]) {
        let now = wall_now();
        for entry in &log[self.written.min(log.len())..] {
            let scalars = scalars(entry, self.task);
            self.files.retain_mut(|(path, f, steps)| {
                let bytes = record(&event(now, steps.next(entry) as i64, None, &scalars));
                match f.write_all(&bytes).and_then(|()| f.flush()) {
                    Ok(()) => true,
                    Err(e) => {
                        eprintln!("live TensorBoard events: {}: {e}", path.display());
                        false
                    }
                }
            });
            self.written += 1;
        }
    }
}

fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_artefacts::{EpochLog, FinetuneLog};

    #[test]
    fn a_stage_replaces_its_tasks_file_and_removes_tasks_the_run_no_longer_has() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("e/a/s2/ce/seed0");
        std::fs::create_dir_all(&run).unwrap();
        for f in ["t000.aaaa", "t001.old", "t002.bbbb", "t003.cccc"] {
            std::fs::write(run.join(format!("events.out.tfevents.{f}")), b"x").unwrap();
        }
        std::fs::write(run.join("notes.txt"), b"kept").unwrap();
        let live = LiveRun {
            dir: run.clone(),
            first_train_step: 2,
            first_finetune_step: 0,
            tasks: 2,
        };
        let mut events = LiveEvents::open(std::slice::from_ref(&live), 1, "new");
        let mut names: Vec<String> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "events.out.tfevents.t000.aaaa",
                "events.out.tfevents.t001.new",
                "notes.txt"
            ]
        );
        // Its first training epoch is the run's step 2.
        events.update(&[LogEntry::Epoch(EpochLog {
            epoch: 0,
            lr: 0.1,
            seconds: 1.0,
            device: "cpu".into(),
            losses: [("ce".to_string(), Some(1.0))].into(),
        })]);
        let bytes = std::fs::read(run.join("events.out.tfevents.t001.new")).unwrap();
        let second = &bytes[record(&event(0.0, 0, Some("brain.Event:2"), &[])).len()..];
        let data = &second[12..second.len() - 4];
        // Event: wall_time (tag 0x09, 8 bytes), then step (tag 0x10, varint 2).
        assert_eq!(data[0], 0x09);
        assert_eq!(&data[9..11], &[0x10, 2], "{data:?}");
    }

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // RFC 3720, B.4 and the CRC catalogue's check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn a_record_frames_its_data_with_length_and_masked_crcs() {
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        let mask = |c: u32| c.rotate_right(15).wrapping_add(0xa282_ead8);
        assert_eq!(&r[15..], &mask(crc32c(b"abc")).to_le_bytes());
    }

    #[test]
    fn a_scalar_event_encodes_as_protobuf() {
        let e = event(1.5, 300, None, &[("a".into(), 2.0)]);
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0xac, 0x02]); // step 300 as a varint
        want.extend_from_slice(&[0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'a', 0x15]);
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(e, want);
    }

    #[test]
    fn scalars_name_each_term_the_total_lr_seconds_and_task() {
        let e = LogEntry::Epoch(EpochLog {
            epoch: 0,
            lr: 0.1,
            seconds: 2.0,
            device: "cpu".into(),
            losses: [("ce".to_string(), Some(1.0)), ("kd".into(), Some(0.5))].into(),
        });
        let s = scalars(&e, 3);
        let get = |t: &str| s.iter().find(|(k, _)| k == t).map(|(_, v)| *v);
        assert_eq!(get("train/ce"), Some(1.0));
        assert_eq!(get("train/total"), Some(1.5));
        assert_eq!(get("train/lr"), Some(0.1));
        assert_eq!(get("task"), Some(3.0));
        let f = LogEntry::Finetune(FinetuneLog {
            finetune_epoch: 0,
            lr: 0.01,
            images: 4,
            seconds: 1.0,
            losses: [("nca".to_string(), None)].into(),
        });
        let s = scalars(&f, 1);
        let get = |t: &str| s.iter().find(|(k, _)| k == t).map(|(_, v)| *v);
        assert!(get("finetune/nca").unwrap().is_nan());
        assert!(get("finetune/total").unwrap().is_nan(), "a diverged term");
    }
}
