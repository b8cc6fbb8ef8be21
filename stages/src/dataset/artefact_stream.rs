//! The canonical artefact (see [`super::artefact`]) for a reader that
//! streams its images to disk instead of holding a [`Dataset`]: the
//! metadata from the labels alone, and the labels and `meta.json` files.
//!
//! This lives beside `artefact.rs`, not in it, because `artefact.rs` is in
//! the code digest of every stage that reads a dataset (train, evaluate):
//! touching it would rerun every training result in every store. The bytes
//! are the same as [`Dataset::write`]'s, which a test here holds.
//!
//! [`Dataset`]: super::artefact::Dataset
//! [`Dataset::write`]: super::artefact::Dataset::write

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::dataset::artefact::{sizes_bytes, DatasetMeta, SplitName, FORMAT_TAG, META_FILE};
use crate::error::{Result, StageError};

/// Checks the shape, the classes and every label, and counts images per
/// class: the metadata [`super::artefact::Dataset::meta`] computes, without
/// the images.
pub fn meta_from_labels(
    source_format: &str,
    [height, width, channels]: [u32; 3],
    classes: &[String],
    train_labels: &[u16],
    test_labels: &[u16],
) -> Result<DatasetMeta> {
    if height == 0 || width == 0 || channels == 0 {
        return Err(StageError::Other(format!(
            "dataset image shape {height}x{width}x{channels} is empty"
        )));
    }
    if classes.is_empty() || classes.len() > u16::MAX as usize {
        return Err(StageError::Other(format!(
            "dataset has {} classes; expected 1..={}",
            classes.len(),
            u16::MAX
        )));
    }
    let count = |split: SplitName, labels: &[u16]| -> Result<Vec<u64>> {
        let mut c = vec![0u64; classes.len()];
        for (i, &l) in labels.iter().enumerate() {
            let slot = c.get_mut(l as usize).ok_or_else(|| {
                StageError::Other(format!(
                    "{} split: label {l} of image {i} is out of range; the dataset has {} classes",
                    split.as_str(),
                    classes.len()
                ))
            })?;
            *slot += 1;
        }
        Ok(c)
    };
    Ok(DatasetMeta {
        format: FORMAT_TAG.to_string(),
        source_format: source_format.to_string(),
        height,
        width,
        channels,
        aspect_kept: false,
        classes: classes.to_vec(),
        train_count: train_labels.len() as u64,
        test_count: test_labels.len() as u64,
        train_class_counts: count(SplitName::Train, train_labels)?,
        test_class_counts: count(SplitName::Test, test_labels)?,
    })
}

/// One split's labels and image sizes (height, width), in artefact order.
pub struct SplitIndex<'a> {
    pub labels: &'a [u16],
    pub sizes: &'a [(u16, u16)],
}

/// `<split>.labels`, `<split>.sizes` and `meta.json` in `dir`; the images
/// files are the caller's.
pub fn write_labels_and_meta(
    dir: &Path,
    meta: &DatasetMeta,
    train: SplitIndex<'_>,
    test: SplitIndex<'_>,
) -> Result<()> {
    for (split, index) in [(SplitName::Train, train), (SplitName::Test, test)] {
        assert_eq!(index.labels.len(), index.sizes.len(), "one size per label");
        let bytes: Vec<u8> = index.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        write_file(&dir.join(split.labels_file()), &bytes)?;
        write_file(&dir.join(split.sizes_file()), &sizes_bytes(index.sizes))?;
    }
    let mut json = serde_json::to_vec_pretty(meta).expect("meta serialises");
    json.push(b'\n');
    write_file(&dir.join(META_FILE), &json)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| StageError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::artefact::{Dataset, Split};

    #[test]
    fn same_meta_and_bytes_as_a_dataset_held_in_memory() {
        let ds = Dataset {
            source_format: "image-folder".into(),
            height: 2,
            width: 1,
            channels: 3,
            classes: vec!["a".into(), "b".into(), "c".into()],
            train: Split {
                images: (0..24).collect(),
                labels: vec![2, 0, 2, 0],
            },
            test: Split {
                images: (0..6).collect(),
                labels: vec![1],
            },
        };
        let held = tempfile::tempdir().unwrap();
        let meta = ds.write(held.path()).unwrap();
        let streamed = tempfile::tempdir().unwrap();
        let m = meta_from_labels(
            &ds.source_format,
            [2, 1, 3],
            &ds.classes,
            &ds.train.labels,
            &ds.test.labels,
        )
        .unwrap();
        assert_eq!(m, meta);
        let index = |labels: &'static [u16]| SplitIndex {
            labels,
            sizes: &[(2, 1); 4][..labels.len()],
        };
        write_labels_and_meta(streamed.path(), &m, index(&[2, 0, 2, 0]), index(&[1])).unwrap();
        for f in [
            "meta.json",
            "train.labels",
            "test.labels",
            "train.sizes",
            "test.sizes",
        ] {
            assert_eq!(
                fs::read(streamed.path().join(f)).unwrap(),
                fs::read(held.path().join(f)).unwrap(),
                "{f}"
            );
        }
        let e = meta_from_labels("x", [2, 1, 3], &ds.classes, &[0, 3], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train split: label 3 of image 1 is out of range"),
            "{e}"
        );
    }
}
