//! The canonical dataset artefact: what every preparation stage writes and
//! every training stage memory-maps.
//!
//! A prepared dataset is a directory of five files:
//!
//! | file           | content                                                    |
//! |----------------|------------------------------------------------------------|
//! | `meta.json`    | [`DatasetMeta`]: format tag, class names, image shape, counts |
//! | `train.images` | u8, N x H x W x C (NHWC, RGB), no header                   |
//! | `train.labels` | u16 little-endian, N entries, dense class ids 0..classes   |
//! | `test.images`  | as `train.images`                                          |
//! | `test.labels`  | as `train.labels`                                          |
//!
//! Raw headerless arrays keep the files memory-mappable and make their
//! digests independent of any serialisation library. Every file is written
//! by this module only, so two preparations of the same content are
//! byte-identical (the engine's early cutoff depends on that).

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StageError};

pub const FORMAT_TAG: &str = "bsce-dataset/1";
pub const META_FILE: &str = bsce_pipeline::registry::files::META;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    Train,
    Test,
}

impl SplitName {
    pub const ALL: [SplitName; 2] = [SplitName::Train, SplitName::Test];
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Test => "test",
        }
    }
    pub fn images_file(self) -> String {
        format!("{}.images", self.as_str())
    }
    pub fn labels_file(self) -> String {
        format!("{}.labels", self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    pub format: String,
    /// Which reader produced it: `cifar100-python`, `cifar100-binary`,
    /// `image-folder`, `synthetic`.
    pub source_format: String,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub classes: Vec<String>,
    pub train_count: u64,
    pub test_count: u64,
    /// Images per class in the training split, indexed by class id.
    pub train_class_counts: Vec<u64>,
    pub test_class_counts: Vec<u64>,
}

impl DatasetMeta {
    pub fn image_bytes(&self) -> usize {
        (self.height * self.width * self.channels) as usize
    }
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
}

/// One split held in memory, as a reader produces it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// NHWC u8.
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
}

/// A dataset held in memory, as a reader produces it, before it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub source_format: String,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Split,
}

impl Dataset {
    pub fn split(&self, name: SplitName) -> &Split {
        match name {
            SplitName::Train => &self.train,
            SplitName::Test => &self.test,
        }
    }

    /// Checks shapes and labels and computes the metadata.
    pub fn meta(&self) -> Result<DatasetMeta> {
        let image_bytes = (self.height * self.width * self.channels) as usize;
        if image_bytes == 0 {
            return Err(StageError::Other(format!(
                "dataset image shape {}x{}x{} is empty",
                self.height, self.width, self.channels
            )));
        }
        if self.classes.is_empty() || self.classes.len() > u16::MAX as usize {
            return Err(StageError::Other(format!(
                "dataset has {} classes; expected 1..={}",
                self.classes.len(),
                u16::MAX
            )));
        }
        let mut counts = Vec::new();
        for split in SplitName::ALL {
            let s = self.split(split);
            if s.images.len() != s.labels.len() * image_bytes {
                return Err(StageError::Other(format!(
                    "{} split holds {} image bytes for {} labels; expected {} bytes per image",
                    split.as_str(),
                    s.images.len(),
                    s.labels.len(),
                    image_bytes
                )));
            }
            let mut c = vec![0u64; self.classes.len()];
            for (i, &l) in s.labels.iter().enumerate() {
                let slot = c.get_mut(l as usize).ok_or_else(|| {
                    StageError::Other(format!(
                        "{} split: label {l} of image {i} is out of range; the dataset has {} classes",
                        split.as_str(),
                        self.classes.len()
                    ))
                })?;
                *slot += 1;
            }
            counts.push(c);
        }
        let test_class_counts = counts.pop().unwrap_or_default();
        let train_class_counts = counts.pop().unwrap_or_default();
        Ok(DatasetMeta {
            format: FORMAT_TAG.to_string(),
            source_format: self.source_format.clone(),
            height: self.height,
            width: self.width,
            channels: self.channels,
            classes: self.classes.clone(),
            train_count: self.train.labels.len() as u64,
            test_count: self.test.labels.len() as u64,
            train_class_counts,
            test_class_counts,
        })
    }

    /// Writes the five files into `dir` (which must exist). The engine makes
    /// the directory atomic; this only has to write deterministic bytes.
    pub fn write(&self, dir: &Path) -> Result<DatasetMeta> {
        let meta = self.meta()?;
        for split in SplitName::ALL {
            let s = self.split(split);
            write_file(&dir.join(split.images_file()), &s.images)?;
            let mut labels = Vec::with_capacity(s.labels.len() * 2);
            for l in &s.labels {
                labels.extend_from_slice(&l.to_le_bytes());
            }
            write_file(&dir.join(split.labels_file()), &labels)?;
        }
        let mut json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
        json.push(b'\n');
        write_file(&dir.join(META_FILE), &json)?;
        Ok(meta)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| StageError::io(path, e))?;
    f.write_all(bytes).map_err(|e| StageError::io(path, e))?;
    Ok(())
}

pub fn read_meta(dir: &Path) -> Result<DatasetMeta> {
    let path = dir.join(META_FILE);
    let bytes = fs::read(&path).map_err(|e| StageError::io(&path, e))?;
    let meta: DatasetMeta = serde_json::from_slice(&bytes)
        .map_err(|e| StageError::invalid(&path, format!("not a dataset meta file: {e}")))?;
    if meta.format != FORMAT_TAG {
        return Err(StageError::invalid(
            &path,
            format!("format is {:?}; expected {FORMAT_TAG:?}", meta.format),
        ));
    }
    Ok(meta)
}

/// A prepared dataset opened for reading: images memory-mapped, labels
/// decoded (they are small).
pub struct MappedDataset {
    pub meta: DatasetMeta,
    pub train_images: memmap2::Mmap,
    pub train_labels: Vec<u16>,
    pub test_images: memmap2::Mmap,
    pub test_labels: Vec<u16>,
}

impl MappedDataset {
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = read_meta(dir)?;
        let (train_images, train_labels) = open_split(dir, &meta, SplitName::Train)?;
        let (test_images, test_labels) = open_split(dir, &meta, SplitName::Test)?;
        Ok(MappedDataset {
            meta,
            train_images,
            train_labels,
            test_images,
            test_labels,
        })
    }

    pub fn images(&self, split: SplitName) -> &[u8] {
        match split {
            SplitName::Train => &self.train_images,
            SplitName::Test => &self.test_images,
        }
    }
    pub fn labels(&self, split: SplitName) -> &[u16] {
        match split {
            SplitName::Train => &self.train_labels,
            SplitName::Test => &self.test_labels,
        }
    }
}

fn open_split(
    dir: &Path,
    meta: &DatasetMeta,
    split: SplitName,
) -> Result<(memmap2::Mmap, Vec<u16>)> {
    let count = match split {
        SplitName::Train => meta.train_count,
        SplitName::Test => meta.test_count,
    } as usize;
    let ipath = dir.join(split.images_file());
    let f = fs::File::open(&ipath).map_err(|e| StageError::io(&ipath, e))?;
    // SAFETY: store blobs are read-only once written; nothing truncates them
    // while a stage runs.
    let images = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| StageError::io(&ipath, e))?;
    if images.len() != count * meta.image_bytes() {
        return Err(StageError::invalid(
            &ipath,
            format!(
                "holds {} bytes; meta.json says {count} images of {} bytes",
                images.len(),
                meta.image_bytes()
            ),
        ));
    }
    let lpath = dir.join(split.labels_file());
    let raw = fs::read(&lpath).map_err(|e| StageError::io(&lpath, e))?;
    if raw.len() != count * 2 {
        return Err(StageError::invalid(
            &lpath,
            format!(
                "holds {} bytes; expected {} (u16 per image)",
                raw.len(),
                count * 2
            ),
        ));
    }
    let labels: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= meta.num_classes()) {
        return Err(StageError::invalid(
            &lpath,
            format!(
                "label {bad} is out of range; the dataset has {} classes",
                meta.num_classes()
            ),
        ));
    }
    Ok((images, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset {
            source_format: "synthetic".into(),
            height: 2,
            width: 2,
            channels: 3,
            classes: vec!["a".into(), "b".into()],
            train: Split {
                images: (0..24).collect(),
                labels: vec![0, 1],
            },
            test: Split {
                images: (100..112).collect(),
                labels: vec![1],
            },
        }
    }

    #[test]
    fn write_then_map_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let ds = tiny();
        let meta = ds.write(dir.path()).unwrap();
        assert_eq!(meta.train_class_counts, vec![1, 1]);
        assert_eq!(meta.test_class_counts, vec![0, 1]);
        let m = MappedDataset::open(dir.path()).unwrap();
        assert_eq!(m.meta, meta);
        assert_eq!(&m.train_images[..], &ds.train.images[..]);
        assert_eq!(m.test_labels, vec![1]);
    }

    #[test]
    fn label_out_of_range_is_rejected() {
        let mut ds = tiny();
        ds.train.labels[1] = 7;
        let err = ds.meta().unwrap_err().to_string();
        assert!(err.contains("label 7 of image 1 is out of range"), "{err}");
    }
}
