//! The canonical dataset artefact: what every preparation stage writes and
//! every training stage memory-maps.
//!
//! A prepared dataset is a directory of seven files:
//!
//! | file           | content                                                    |
//! |----------------|------------------------------------------------------------|
//! | `meta.json`    | [`DatasetMeta`]: format tag, class names, image shape, counts |
//! | `train.images` | u8, the N images one after another, each H x W x C (RGB), no header |
//! | `train.sizes`  | u16 little-endian (H, W) per image, N entries              |
//! | `train.labels` | u16 little-endian, N entries, dense class ids 0..classes   |
//! | `test.*`       | as `train.*`                                               |
//!
//! Every image of CIFAR, of the synthetic sets and of an image folder
//! prepared as centre squares has the shape in `meta.json`. An image folder
//! prepared whole (ImageNet: `aspect_kept`) keeps each image's aspect
//! ratio, so its images differ in size: `<split>.sizes` gives each one's,
//! and an image starts where the ones before it end.
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
    pub fn sizes_file(self) -> String {
        format!("{}.sizes", self.as_str())
    }
}

/// `<split>.sizes`: (height, width) per image, u16 little-endian.
pub fn sizes_bytes(sizes: &[(u16, u16)]) -> Vec<u8> {
    sizes
        .iter()
        .flat_map(|&(h, w)| [h.to_le_bytes(), w.to_le_bytes()])
        .flatten()
        .collect()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetMeta {
    pub format: String,
    /// Which reader produced it: `cifar100-python`, `cifar100-binary`,
    /// `image-folder`, `synthetic`.
    pub source_format: String,
    /// Every image's size; with `aspect_kept`, both are the short side.
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    /// Images keep their source's aspect ratio: each one's short side is
    /// `height` (= `width`), its size is in `<split>.sizes`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aspect_kept: bool,
    pub classes: Vec<String>,
    pub train_count: u64,
    pub test_count: u64,
    /// Images per class in the training split, indexed by class id.
    pub train_class_counts: Vec<u64>,
    pub test_class_counts: Vec<u64>,
}

impl DatasetMeta {
    /// The bytes of every image, where they all have the same size.
    pub fn image_bytes(&self) -> Option<usize> {
        (!self.aspect_kept).then_some((self.height * self.width * self.channels) as usize)
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
            aspect_kept: false,
            classes: self.classes.clone(),
            train_count: self.train.labels.len() as u64,
            test_count: self.test.labels.len() as u64,
            train_class_counts,
            test_class_counts,
        })
    }

    /// Writes the seven files into `dir` (which must exist). The engine
    /// makes the directory atomic; this only has to write deterministic
    /// bytes.
    pub fn write(&self, dir: &Path) -> Result<DatasetMeta> {
        let meta = self.meta()?;
        let size = (self.height as u16, self.width as u16);
        for split in SplitName::ALL {
            let s = self.split(split);
            write_file(&dir.join(split.images_file()), &s.images)?;
            write_file(
                &dir.join(split.sizes_file()),
                &sizes_bytes(&vec![size; s.labels.len()]),
            )?;
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
/// and sizes decoded (they are small).
pub struct MappedDataset {
    pub meta: DatasetMeta,
    train: MappedSplit,
    test: MappedSplit,
}

struct MappedSplit {
    images: memmap2::Mmap,
    labels: Vec<u16>,
    sizes: Vec<(u16, u16)>,
    /// Where image i starts in `images`; one more entry than images.
    offsets: Vec<usize>,
    /// The size every image shares, if they do: found once at open, not
    /// on every batch (ImageNet lists 1.28 million sizes).
    uniform: Option<(usize, usize)>,
}

/// One split's images, each with its own size.
#[derive(Clone, Copy)]
pub struct SplitImages<'a> {
    bytes: &'a [u8],
    sizes: &'a [(u16, u16)],
    offsets: &'a [usize],
    /// (height, width) of every image, when they all share one.
    uniform: Option<(usize, usize)>,
}

impl<'a> SplitImages<'a> {
    /// RGB images of `sizes`, one after another at `offsets` (from
    /// [`offsets_of`]), as tests and benchmarks build them in memory.
    pub fn new(bytes: &'a [u8], sizes: &'a [(u16, u16)], offsets: &'a [usize]) -> Self {
        assert_eq!(
            offsets.len(),
            sizes.len() + 1,
            "one offset per image, and the end"
        );
        assert_eq!(
            offsets[sizes.len()],
            bytes.len(),
            "the images fill the bytes"
        );
        SplitImages {
            bytes,
            sizes,
            offsets,
            uniform: uniform_size(sizes),
        }
    }
    pub fn len(&self) -> usize {
        self.sizes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }
    /// Image `i` as RGB bytes, row after row, with its height and width.
    ///
    /// Panics on an index past the end: indices come from the stage's own
    /// split bookkeeping, so that is a bug, not bad input.
    pub fn image(&self, i: usize) -> (&'a [u8], usize, usize) {
        assert!(
            i < self.len(),
            "image index {i} is out of range; the split holds {} images",
            self.len()
        );
        let (h, w) = self.sizes[i];
        (
            &self.bytes[self.offsets[i]..self.offsets[i + 1]],
            h as usize,
            w as usize,
        )
    }
    /// The size every image shares, if they do.
    pub fn uniform_size(&self) -> Option<(usize, usize)> {
        self.uniform
    }
    /// All images' bytes, one after another.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Byte offsets of images of `sizes` (RGB), one entry more than images.
pub fn offsets_of(sizes: &[(u16, u16)]) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(sizes.len() + 1);
    let mut at = 0usize;
    offsets.push(0);
    for &(h, w) in sizes {
        at += h as usize * w as usize * 3;
        offsets.push(at);
    }
    offsets
}

fn uniform_size(sizes: &[(u16, u16)]) -> Option<(usize, usize)> {
    let first = *sizes.first()?;
    sizes
        .iter()
        .all(|&s| s == first)
        .then_some((first.0 as usize, first.1 as usize))
}

impl MappedDataset {
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = read_meta(dir)?;
        let train = open_split(dir, &meta, SplitName::Train)?;
        let test = open_split(dir, &meta, SplitName::Test)?;
        Ok(MappedDataset { meta, train, test })
    }

    fn mapped(&self, split: SplitName) -> &MappedSplit {
        match split {
            SplitName::Train => &self.train,
            SplitName::Test => &self.test,
        }
    }
    pub fn images(&self, split: SplitName) -> SplitImages<'_> {
        let m = self.mapped(split);
        SplitImages {
            bytes: &m.images,
            sizes: &m.sizes,
            offsets: &m.offsets,
            uniform: m.uniform,
        }
    }
    pub fn labels(&self, split: SplitName) -> &[u16] {
        &self.mapped(split).labels
    }
}

fn open_split(dir: &Path, meta: &DatasetMeta, split: SplitName) -> Result<MappedSplit> {
    let count = match split {
        SplitName::Train => meta.train_count,
        SplitName::Test => meta.test_count,
    } as usize;
    let u16s = |name: String, per_image: usize, what: &str| -> Result<Vec<u16>> {
        let path = dir.join(name);
        let raw = fs::read(&path).map_err(|e| StageError::io(&path, e))?;
        if raw.len() != count * 2 * per_image {
            return Err(StageError::invalid(
                &path,
                format!(
                    "holds {} bytes; expected {} ({what} per image, {count} images)",
                    raw.len(),
                    count * 2 * per_image
                ),
            ));
        }
        Ok(raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    };
    let sizes: Vec<(u16, u16)> = u16s(split.sizes_file(), 2, "two u16")?
        .chunks_exact(2)
        .map(|c| (c[0], c[1]))
        .collect();
    let spath = dir.join(split.sizes_file());
    for (i, &(h, w)) in sizes.iter().enumerate() {
        let fits = if meta.aspect_kept {
            h.min(w) as u32 == meta.height
        } else {
            (h as u32, w as u32) == (meta.height, meta.width)
        };
        if !fits {
            return Err(StageError::invalid(
                &spath,
                format!(
                    "image {i} is {h}x{w}; meta.json says {}",
                    if meta.aspect_kept {
                        format!("a short side of {}", meta.height)
                    } else {
                        format!("{}x{}", meta.height, meta.width)
                    }
                ),
            ));
        }
    }
    let offsets = offsets_of(&sizes);
    let ipath = dir.join(split.images_file());
    let f = fs::File::open(&ipath).map_err(|e| StageError::io(&ipath, e))?;
    // SAFETY: store blobs are read-only once written; nothing truncates them
    // while a stage runs.
    let images = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| StageError::io(&ipath, e))?;
    let expected = offsets[count];
    if images.len() != expected {
        return Err(StageError::invalid(
            &ipath,
            format!(
                "holds {} bytes; {} says its {count} images take {expected}",
                images.len(),
                split.sizes_file()
            ),
        ));
    }
    let lpath = dir.join(split.labels_file());
    let labels = u16s(split.labels_file(), 1, "u16")?;
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= meta.num_classes()) {
        return Err(StageError::invalid(
            &lpath,
            format!(
                "label {bad} is out of range; the dataset has {} classes",
                meta.num_classes()
            ),
        ));
    }
    Ok(MappedSplit {
        images,
        labels,
        uniform: uniform_size(&sizes),
        sizes,
        offsets,
    })
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
        let train = m.images(SplitName::Train);
        assert_eq!(train.bytes(), &ds.train.images[..]);
        assert_eq!(train.uniform_size(), Some((2, 2)));
        assert_eq!(train.image(1), (&ds.train.images[12..], 2, 2));
        assert_eq!(m.labels(SplitName::Test), [1]);
    }

    #[test]
    fn label_out_of_range_is_rejected() {
        let mut ds = tiny();
        ds.train.labels[1] = 7;
        let err = ds.meta().unwrap_err().to_string();
        assert!(err.contains("label 7 of image 1 is out of range"), "{err}");
    }
}
