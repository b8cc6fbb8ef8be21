//! ImageNet-style class-folder trees, decoded and resized once into the
//! canonical artefact so that training never touches a JPEG.
//!
//! Preparation streams: each decoded image is written at its offset in the
//! artefact's preallocated image files, so memory holds one image per
//! worker thread plus the list of image paths (about 100 bytes per image),
//! never the dataset (ImageNet-1k at 256 px is 250 GB). The files grow in
//! shards, each synced and journalled in the engine's resume folder, so a
//! killed preparation resumes at the first unfinished shard.
//!
//! Layout read:
//!
//! ```text
//! <root>/<train_dir>/<wnid>/**/*.{jpg,jpeg,png}      one folder per class
//! <root>/<val dir>/<wnid>/**/*.{jpg,jpeg,png}        ValSource::Folders
//! <root>/<val dir>/**/*.{jpg,jpeg,png} + label file  ValSource::LabelList
//! ```
//!
//! Classes are the train folder names in byte order, which for ImageNet wnids
//! is the usual 0..999 class numbering; a subset file (the ImageNet-Subset
//! protocol) keeps only the listed wnids, still in sorted order. Names that
//! start with `.` are skipped (`.ipynb_checkpoints`, macOS `._x.JPEG`
//! resource forks carry image extensions but are not images). Images are
//! ordered by class, then by path, so the artefact does not depend on the
//! order a file system lists a directory in.
//!
//! Size policy (torchvision's `Resize(size)`, from PIL's bilinear filter,
//! [`super::resample`]): the short side becomes `size`, the long side
//! `int(long * size / short)`. [`Keep::Whole`] (ImageNet) stores that whole
//! image, aspect ratio kept, so training's RandomResizedCrop samples the
//! whole field of view and evaluation's CenterCrop is the centre of
//! torchvision's resize. [`Keep::CentreSquare`] (an image folder trained
//! CIFAR-style) keeps its central `size x size` window. EXIF orientation
//! is ignored, as in the PIL pipelines the paper's numbers come from. Grey,
//! grey+alpha, CMYK and 16-bit inputs become 8-bit RGB (alpha dropped).

use std::collections::HashMap;
use std::fs;
use std::io::{Cursor, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::dataset::artefact::{offsets_of, DatasetMeta, SplitName};
use crate::dataset::artefact_stream::{meta_from_labels, write_labels_and_meta, SplitIndex};
use crate::dataset::resample::{short_side_size, Axis, Resampler};
use crate::dataset::shard_journal::ShardJournal;
use crate::error::{Result, StageError};

pub const SOURCE_FORMAT: &str = "image-folder";
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
const CHANNELS: usize = 3;
/// Keeps one image of the artefact under 48 MiB; anything larger is a typo.
const MAX_SIZE: u32 = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFolderSpec {
    pub root: PathBuf,
    /// Folder under `root` holding one folder per class.
    pub train_dir: String,
    pub val: ValSource,
    /// A file listing the wnids to keep, one per line; `#` starts a comment.
    /// Used as given: the caller resolves it against the config's folder.
    pub subset: Option<PathBuf>,
    /// Short side of the images written, in pixels.
    pub size: u32,
    pub keep: Keep,
}

/// What of each resized image the artefact keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// All of it, aspect ratio kept.
    Whole,
    /// The central `size x size` window.
    CentreSquare,
}

impl ImageFolderSpec {
    /// `train/` and `val/<wnid>/` under `root`, all classes, whole images
    /// with a short side of 256.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageFolderSpec {
            root: root.into(),
            train_dir: "train".to_string(),
            val: ValSource::Folders {
                dir: "val".to_string(),
            },
            subset: None,
            size: 256,
            keep: Keep::Whole,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValSource {
    /// `<root>/<dir>/<wnid>/*.JPEG`, as the train folder.
    Folders { dir: String },
    /// A flat `<root>/<dir>` plus a text file of `<file> <class>` lines, where
    /// `<file>` is the path under `dir` and `<class>` a wnid or an index into
    /// the sorted list of all train folders (not the subset). Used as given,
    /// like [`ImageFolderSpec::subset`].
    LabelList { dir: String, labels: PathBuf },
}

/// What a tree holds, found without decoding anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub classes: Vec<String>,
    pub train_count: u64,
    pub val_count: u64,
    /// Images per class, indexed like `classes`.
    pub train_counts: Vec<u64>,
    pub val_counts: Vec<u64>,
    /// Validation images of classes a subset leaves out.
    pub val_skipped: u64,
}

/// True if `path` has a `train/` folder with at least one class folder.
pub fn detect(path: &Path) -> bool {
    fs::read_dir(path.join("train")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !is_hidden(&e.file_name()) && e.path().is_dir())
    })
}

pub fn scan(spec: &ImageFolderSpec) -> Result<ScanReport> {
    let plan = Plan::build(spec)?;
    let counts = |entries: &[Entry]| {
        let mut counts = vec![0u64; plan.classes.len()];
        for e in entries {
            counts[e.label as usize] += 1;
        }
        counts
    };
    Ok(ScanReport {
        train_count: plan.train.len() as u64,
        val_count: plan.val.len() as u64,
        train_counts: counts(&plan.train),
        val_counts: counts(&plan.val),
        classes: plan.classes,
        val_skipped: plan.val_skipped,
    })
}

/// What [`prepare_image_folder`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareReport {
    pub meta: DatasetMeta,
    pub shards: usize,
    /// Shards, and their images, found finished by an earlier attempt.
    pub resumed_shards: usize,
    pub resumed_images: u64,
    /// Images decoded by this call.
    pub decoded_images: u64,
}

/// Bytes of artefact per shard: each shard is synced and journalled once,
/// so a kill loses at most this much work, and a sync per 32 MiB costs
/// little against decoding it.
const SHARD_BYTES: usize = 32 << 20;
/// Tiny images still get a shard every this many images.
const MAX_SHARD_IMAGES: usize = 4096;

/// Images per shard for a given image size.
pub fn shard_images(size: u32) -> usize {
    let image_bytes = (size as usize * size as usize * CHANNELS).max(1);
    (SHARD_BYTES / image_bytes).clamp(1, MAX_SHARD_IMAGES)
}

/// Decodes every image once, in parallel, straight into the artefact's
/// files: each image is written at its offset in a preallocated
/// `<split>.images` under `resume_dir`, so memory holds one image per
/// worker thread whatever the dataset's size. Work goes in shards of
/// [`shard_images`]; each finished shard is synced and journalled
/// ([`ShardJournal`]), and a later call with the same plan decodes only
/// the shards not yet journalled. At the end the labels and `meta.json`
/// are written into `out_dir` and the image files moved there.
///
/// `progress(done, total)` is called from worker threads after each image,
/// counting the resumed images as done; calls may arrive slightly out of
/// order. On failure the error names the first bad file in artefact order,
/// whichever thread saw it first.
pub fn prepare_image_folder(
    spec: &ImageFolderSpec,
    out_dir: &Path,
    resume_dir: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PrepareReport> {
    prepare_in_shards(spec, out_dir, resume_dir, shard_images(spec.size), progress)
}

fn prepare_in_shards(
    spec: &ImageFolderSpec,
    out_dir: &Path,
    resume_dir: &Path,
    shard_len: usize,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PrepareReport> {
    let plan = Plan::build(spec)?;
    let labels = |entries: &[Entry]| entries.iter().map(|e| e.label).collect::<Vec<u16>>();
    let (train_labels, test_labels) = (labels(&plan.train), labels(&plan.val));
    let mut meta = meta_from_labels(
        SOURCE_FORMAT,
        [spec.size, spec.size, CHANNELS as u32],
        &plan.classes,
        &train_labels,
        &test_labels,
    )?;
    meta.aspect_kept = spec.keep == Keep::Whole;
    let (train_sizes, test_sizes) = (
        stored_sizes(spec, &plan.train)?,
        stored_sizes(spec, &plan.val)?,
    );
    let (train_offsets, test_offsets) = (offsets_of(&train_sizes), offsets_of(&test_sizes));
    let splits = [
        (SplitName::Train, &plan.train),
        (SplitName::Test, &plan.val),
    ];
    // Shards never straddle splits: (split, first image, images).
    let mut shards = Vec::new();
    for (split, entries) in splits {
        for first in (0..entries.len()).step_by(shard_len) {
            shards.push((split, first, shard_len.min(entries.len() - first)));
        }
    }
    let names = splits.map(|(split, _)| split.images_file());
    let files = [
        (names[0].as_str(), train_offsets[plan.train.len()] as u64),
        (names[1].as_str(), test_offsets[plan.val.len()] as u64),
    ];
    let fingerprint = plan.fingerprint(spec, shard_len, [&train_sizes, &test_sizes]);
    let mut journal = ShardJournal::open(resume_dir, &fingerprint, &files, shards.len())?;

    let total = (plan.train.len() + plan.val.len()) as u64;
    let resumed_images: u64 = (0..shards.len())
        .filter(|&s| journal.is_done(s))
        .map(|s| shards[s].2 as u64)
        .sum();
    let done = AtomicU64::new(resumed_images);
    if resumed_images > 0 {
        progress(resumed_images, total);
    }
    let on_image = || progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
    let open = |name: &str| {
        let path = journal.data_path(name);
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map(|f| (f, path.clone()))
            .map_err(|e| StageError::io(&path, e))
    };
    let outputs = [open(&names[0])?, open(&names[1])?];
    for (shard, &(split, first, len)) in shards.iter().enumerate() {
        if journal.is_done(shard) {
            continue;
        }
        let (entries, sizes, offsets, (file, path)) = match split {
            SplitName::Train => (&plan.train, &train_sizes, &train_offsets, &outputs[0]),
            SplitName::Test => (&plan.val, &test_sizes, &test_offsets, &outputs[1]),
        };
        let range = first..first + len;
        decode_shard(
            &entries[range.clone()],
            &sizes[range.clone()],
            &offsets[range],
            spec,
            file,
            path,
            &on_image,
        )?;
        // The shard's bytes reach the disk before the journal vouches
        // for them.
        file.sync_data().map_err(|e| StageError::io(path, e))?;
        journal.record(shard)?;
    }
    drop(outputs);

    write_labels_and_meta(
        out_dir,
        &meta,
        SplitIndex {
            labels: &train_labels,
            sizes: &train_sizes,
        },
        SplitIndex {
            labels: &test_labels,
            sizes: &test_sizes,
        },
    )?;
    for name in &names {
        journal.move_out(name, &out_dir.join(name))?;
    }
    Ok(PrepareReport {
        meta,
        shards: shards.len(),
        resumed_shards: journal.resumed(),
        resumed_images,
        decoded_images: total - resumed_images,
    })
}

/// Each image's stored (height, width), from its file's header alone (no
/// decoding): every offset in the artefact is known before the first image
/// is decoded, so shards can be written in any order and resumed.
fn stored_sizes(spec: &ImageFolderSpec, entries: &[Entry]) -> Result<Vec<(u16, u16)>> {
    let size = spec.size as usize;
    if spec.keep == Keep::CentreSquare {
        return Ok(vec![(spec.size as u16, spec.size as u16); entries.len()]);
    }
    entries
        .par_iter()
        .map(|e| {
            let (w, h) = image::ImageReader::open(&e.path)
                .and_then(|r| r.with_guessed_format())
                .map_err(|err| StageError::io(&e.path, err))?
                .into_dimensions()
                .map_err(|err| {
                    StageError::invalid(&e.path, format!("cannot read the image's size: {err}"))
                })?;
            stored_size(&e.path, w as usize, h as usize, size)
        })
        .collect()
}

/// The stored (height, width) of a `width x height` source image.
fn stored_size(path: &Path, width: usize, height: usize, size: usize) -> Result<(u16, u16)> {
    if width == 0 || height == 0 {
        return Err(StageError::invalid(path, "image has no pixels"));
    }
    let (w, h) = short_side_size(width, height, size);
    if w.max(h) > u16::MAX as usize {
        return Err(StageError::invalid(
            path,
            format!(
                "is {width}x{height}: at a short side of {size} its long side would be {} pixels; \
                 at most {} are stored",
                w.max(h),
                u16::MAX
            ),
        ));
    }
    Ok((h as u16, w as u16))
}

struct Entry {
    path: PathBuf,
    label: u16,
}

/// Every image to decode, in artefact order, with its label.
struct Plan {
    classes: Vec<String>,
    train: Vec<Entry>,
    val: Vec<Entry>,
    val_skipped: u64,
}

impl Plan {
    /// sha256 of everything the prepared bytes depend on besides the
    /// files' content (which the stage key covers): the size, what is kept,
    /// the shard length, every image's stored size, the classes and every
    /// image's path under the root and label, in artefact order. Paths are relative, so a tree moved
    /// elsewhere still resumes.
    fn fingerprint(
        &self,
        spec: &ImageFolderSpec,
        shard_len: usize,
        sizes: [&[(u16, u16)]; 2],
    ) -> String {
        let mut h = Sha256::new();
        h.update(format!(
            "size={} keep={:?} shard={shard_len}\n",
            spec.size, spec.keep
        ));
        for split in sizes {
            for (y, x) in split {
                h.update([y.to_le_bytes(), x.to_le_bytes()].concat());
            }
        }
        for c in &self.classes {
            h.update(c.as_bytes());
            h.update(b"\n");
        }
        for (split, entries) in [("train", &self.train), ("test", &self.val)] {
            h.update(format!("{split} {}\n", entries.len()));
            for e in entries {
                let rel = e.path.strip_prefix(&spec.root).unwrap_or(&e.path);
                h.update(rel.as_os_str().as_encoded_bytes());
                h.update(format!("\0{}\n", e.label));
            }
        }
        hex::encode(h.finalize())
    }

    fn build(spec: &ImageFolderSpec) -> Result<Plan> {
        if spec.size == 0 || spec.size > MAX_SIZE {
            return Err(StageError::param(
                "image_folder.size",
                format!("is {}; expected 1..={MAX_SIZE} pixels", spec.size),
            ));
        }
        let train_root = spec.root.join(&spec.train_dir);
        if !train_root.is_dir() {
            return Err(StageError::invalid(
                &train_root,
                "training folder not found; expected <root>/<train_dir>/<class>/<images>",
            ));
        }
        let all_classes = class_folders(&train_root)?;
        if all_classes.is_empty() {
            return Err(StageError::invalid(
                &train_root,
                "has no class folders; expected one folder of images per class",
            ));
        }
        let classes = match &spec.subset {
            None => all_classes.clone(),
            Some(file) => read_subset(file, &all_classes, &train_root)?,
        };
        if classes.len() > u16::MAX as usize {
            return Err(StageError::invalid(
                &train_root,
                format!(
                    "has {} classes; labels are u16, so at most {} fit",
                    classes.len(),
                    u16::MAX
                ),
            ));
        }
        let index: HashMap<&str, u16> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as u16))
            .collect();

        let mut train = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let folder = train_root.join(class);
            let images = images_in(&folder)?;
            if images.is_empty() {
                return Err(no_images(&folder));
            }
            train.extend(images.into_iter().map(|path| Entry {
                path,
                label: label as u16,
            }));
        }

        let subset_used = spec.subset.is_some();
        let (val, val_skipped, val_root) = match &spec.val {
            ValSource::Folders { dir } => {
                let root = spec.root.join(dir);
                let (val, skipped) = val_from_folders(&root, &index, subset_used, &train_root)?;
                (val, skipped, root)
            }
            ValSource::LabelList { dir, labels } => {
                let root = spec.root.join(dir);
                let (val, skipped) = val_from_label_list(&root, labels, &all_classes, &index)?;
                (val, skipped, root)
            }
        };
        // A class without validation images would make its accuracy 0/0 in
        // every incremental step; better to stop before hours of training.
        let mut seen = vec![false; classes.len()];
        for e in &val {
            seen[e.label as usize] = true;
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(StageError::invalid(
                &val_root,
                format!("has no validation images for class {:?}", classes[missing]),
            ));
        }
        Ok(Plan {
            classes,
            train,
            val,
            val_skipped,
        })
    }
}

fn val_from_folders(
    root: &Path,
    index: &HashMap<&str, u16>,
    subset_used: bool,
    train_root: &Path,
) -> Result<(Vec<Entry>, u64)> {
    if !root.is_dir() {
        return Err(StageError::invalid(
            root,
            "validation folder not found; expected <root>/<val dir>/<class>/<images>",
        ));
    }
    let folders = class_folders(root)?;
    if folders.is_empty() {
        return Err(StageError::invalid(
            root,
            "has no class folders; for a flat folder of images give a label list",
        ));
    }
    let mut val = Vec::new();
    let mut skipped = 0;
    for name in folders {
        let folder = root.join(&name);
        let images = images_in(&folder)?;
        if images.is_empty() {
            return Err(no_images(&folder));
        }
        match index.get(name.as_str()) {
            Some(&label) => val.extend(images.into_iter().map(|path| Entry { path, label })),
            None if subset_used => skipped += images.len() as u64,
            None => {
                return Err(StageError::invalid(
                    &folder,
                    format!(
                        "class {name:?} has no training folder in {}; expected the same classes as training",
                        train_root.display()
                    ),
                ))
            }
        }
    }
    Ok((val, skipped))
}

fn val_from_label_list(
    root: &Path,
    labels_file: &Path,
    all_classes: &[String],
    index: &HashMap<&str, u16>,
) -> Result<(Vec<Entry>, u64)> {
    if !root.is_dir() {
        return Err(StageError::invalid(
            root,
            "validation folder not found; expected a folder of images named in the label list",
        ));
    }
    let text = fs::read_to_string(labels_file).map_err(|e| StageError::io(labels_file, e))?;
    // file name under `root` -> (label, or None for a class the subset drops; line)
    let mut listed: HashMap<&str, (Option<u16>, usize)> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let at = || PathBuf::from(format!("{}:{line}", labels_file.display()));
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let [file, class] = fields[..] else {
            return Err(StageError::invalid(
                at(),
                format!("{content:?} is not \"<file> <wnid or class index>\""),
            ));
        };
        // A folder name wins over an index, so classes named "3" still work.
        let wnid = match all_classes.binary_search_by(|c| c.as_str().cmp(class)) {
            Ok(i) => &all_classes[i],
            Err(_) => match class.parse::<usize>() {
                Ok(i) if i < all_classes.len() => &all_classes[i],
                Ok(i) => {
                    return Err(StageError::invalid(
                        at(),
                        format!(
                            "class index {i} is out of range; training has {} classes (0..={})",
                            all_classes.len(),
                            all_classes.len() - 1
                        ),
                    ))
                }
                Err(_) => {
                    return Err(StageError::invalid(
                        at(),
                        format!("unknown class {class:?}: no training folder has that name"),
                    ))
                }
            },
        };
        let label = index.get(wnid.as_str()).copied();
        if let Some((_, first)) = listed.insert(file, (label, line)) {
            return Err(StageError::invalid(
                at(),
                format!("{file:?} is already labelled on line {first}"),
            ));
        }
    }

    let mut val = Vec::new();
    let mut skipped = 0;
    for path in images_in(root)? {
        let name = relative_name(root, &path)?;
        match listed.remove(name.as_str()) {
            Some((Some(label), _)) => val.push(Entry { path, label }),
            Some((None, _)) => skipped += 1,
            None => {
                return Err(StageError::invalid(
                    &path,
                    format!("has no line in label list {}", labels_file.display()),
                ))
            }
        }
    }
    if let Some((file, (_, line))) = listed.into_iter().min_by_key(|(_, (_, line))| *line) {
        return Err(StageError::invalid(
            PathBuf::from(format!("{}:{line}", labels_file.display())),
            format!("{file:?} is not an image in {}", root.display()),
        ));
    }
    if val.is_empty() && skipped == 0 {
        return Err(no_images(root));
    }
    Ok((val, skipped))
}

fn read_subset(file: &Path, all_classes: &[String], train_root: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(file).map_err(|e| StageError::io(file, e))?;
    let mut chosen: Vec<(String, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let at = || PathBuf::from(format!("{}:{line}", file.display()));
        let wnid = raw.split('#').next().unwrap_or("").trim();
        if wnid.is_empty() {
            continue;
        }
        if wnid.contains(char::is_whitespace) {
            return Err(StageError::invalid(
                at(),
                format!("{wnid:?} is not one class name; expected one wnid per line"),
            ));
        }
        if all_classes
            .binary_search_by(|c| c.as_str().cmp(wnid))
            .is_err()
        {
            return Err(StageError::invalid(
                at(),
                format!("class {wnid:?} has no folder in {}", train_root.display()),
            ));
        }
        if let Some((_, first)) = chosen.iter().find(|(c, _)| c == wnid) {
            return Err(StageError::invalid(
                at(),
                format!("class {wnid:?} is already listed on line {first}"),
            ));
        }
        chosen.push((wnid.to_string(), line));
    }
    if chosen.is_empty() {
        return Err(StageError::invalid(
            file,
            "lists no classes; expected one wnid per line",
        ));
    }
    let mut classes: Vec<String> = chosen.into_iter().map(|(c, _)| c).collect();
    classes.sort();
    Ok(classes)
}

/// Visible subfolders of `dir`, sorted by name.
fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StageError::io(dir, e))? {
        let entry = entry.map_err(|e| StageError::io(dir, e))?;
        let name = entry.file_name();
        // `is_dir` on the path follows symlinks, which ImageNet mirrors use.
        if is_hidden(&name) || !entry.path().is_dir() {
            continue;
        }
        let name = name.into_string().map_err(|name| {
            StageError::invalid(
                dir.join(&name),
                "folder name is not UTF-8; class names must be text",
            )
        })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Image files anywhere under `dir`, sorted by path.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            StageError::io(path, e.into())
        })?;
        if entry.file_type().is_file() && has_image_extension(entry.path()) {
            files.push(entry.into_path());
        }
    }
    files.sort();
    Ok(files)
}

fn relative_name(root: &Path, path: &Path) -> Result<String> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    parts.map(|p| p.join("/")).ok_or_else(|| {
        StageError::invalid(
            path,
            "file name is not UTF-8; the label list cannot name it",
        )
    })
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn no_images(folder: &Path) -> StageError {
    StageError::invalid(folder, "holds no images (.jpg, .jpeg or .png files)")
}

/// Decodes `entries` in parallel and writes each at its offset in `file`,
/// at its stored size.
fn decode_shard(
    entries: &[Entry],
    sizes: &[(u16, u16)],
    offsets: &[usize],
    spec: &ImageFolderSpec,
    file: &fs::File,
    path: &Path,
    on_image: &(dyn Fn() + Sync),
) -> Result<()> {
    // Images after a known failure are skipped, those before it still run,
    // so the error reported is always the first bad file in artefact order.
    let first_bad = AtomicUsize::new(usize::MAX);
    let failure: Mutex<Option<(usize, StageError)>> = Mutex::new(None);
    entries.par_iter().enumerate().for_each_init(
        || (Scratch::default(), Vec::new()),
        |(scratch, image), (i, entry)| {
            if i > first_bad.load(Ordering::Relaxed) {
                return;
            }
            let written = decode_into(&entry.path, spec, sizes[i], scratch, image).and_then(|()| {
                file.write_all_at(image, offsets[i] as u64)
                    .map_err(|e| StageError::io(path, e))
            });
            match written {
                Ok(()) => on_image(),
                Err(e) => {
                    let mut failure = failure.lock().unwrap_or_else(|p| p.into_inner());
                    if failure.as_ref().is_none_or(|(j, _)| i < *j) {
                        *failure = Some((i, e));
                        first_bad.fetch_min(i, Ordering::Relaxed);
                    }
                }
            }
        },
    );
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Buffers one worker thread reuses from image to image.
#[derive(Default)]
struct Scratch {
    file: Vec<u8>,
    resampler: Resampler,
}

/// Decodes the image at `path` into `out`, resized to its `stored`
/// (height, width).
fn decode_into(
    path: &Path,
    spec: &ImageFolderSpec,
    stored: (u16, u16),
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<()> {
    scratch.file.clear();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut scratch.file))
        .map_err(|e| StageError::io(path, e))?;
    // The content decides the format: ImageNet has PNGs and CMYK JPEGs
    // behind `.JPEG` names.
    if is_truncated_jpeg(&scratch.file) {
        return Err(StageError::invalid(
            path,
            "JPEG ends before its end-of-image marker; the file is truncated",
        ));
    }
    let decoded = image::ImageReader::new(Cursor::new(&scratch.file[..]))
        .with_guessed_format()
        .map_err(|e| StageError::io(path, e))?
        .decode()
        .map_err(|e| StageError::invalid(path, format!("cannot decode image: {e}")))?;
    let rgb = decoded.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    let size = spec.size as usize;
    let (x, y) = match spec.keep {
        Keep::Whole => {
            // The offsets were planned from the header's size.
            if stored_size(path, width, height, size)? != stored {
                return Err(StageError::invalid(
                    path,
                    format!(
                        "decodes to {width}x{height}, not the size its header gave when the \
                         preparation was planned; was it replaced meanwhile?"
                    ),
                ));
            }
            let (sw, sh) = short_side_size(width, height, size);
            (Axis::whole(width, sw), Axis::whole(height, sh))
        }
        Keep::CentreSquare => {
            if width == 0 || height == 0 {
                return Err(StageError::invalid(path, "image has no pixels"));
            }
            let (sw, sh) = short_side_size(width, height, size);
            (
                Axis::centred(width, sw, size),
                Axis::centred(height, sh, size),
            )
        }
    };
    out.clear();
    out.resize(x.out * y.out * CHANNELS, 0);
    scratch
        .resampler
        .resize(rgb.as_raw(), width, height, x, y, out);
    Ok(())
}

/// The JPEG decoder is lenient and fills a cut-off file with grey, which
/// would put half-blank images into training unnoticed. Entropy-coded data
/// never contains a marker (0xFF is stuffed), so a whole file has an EOI
/// (FFD9) after its last start-of-scan (FFDA); an EXIF thumbnail's EOI comes
/// before the main scans and cannot hide a cut.
fn is_truncated_jpeg(bytes: &[u8]) -> bool {
    let marker = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    bytes.starts_with(&[0xFF, 0xD8]) && marker(0xD9) < marker(0xDA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::artefact::{Dataset, MappedDataset, Split};
    use image::{DynamicImage, GrayImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

    const SIZE: u32 = 8;

    fn save(path: &Path, img: DynamicImage) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let format = if has_extension(path, "png") {
            ImageFormat::Png
        } else {
            ImageFormat::Jpeg
        };
        let mut bytes = Vec::new();
        if format == ImageFormat::Jpeg {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 100);
            img.write_with_encoder(encoder).unwrap();
        } else {
            img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        }
        fs::write(path, bytes).unwrap();
    }

    fn has_extension(path: &Path, ext: &str) -> bool {
        path.extension().unwrap().eq_ignore_ascii_case(ext)
    }

    fn solid(w: u32, h: u32, rgb: [u8; 3]) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb(rgb)))
    }

    /// Train images in artefact order with the colour each must come out as.
    fn train_tree(root: &Path) -> Vec<(&'static str, [u8; 3])> {
        let files: Vec<(&str, DynamicImage, [u8; 3])> = vec![
            ("n01/a.JPEG", solid(32, 32, [200, 30, 40]), [200, 30, 40]),
            (
                "n01/b.jpg",
                DynamicImage::ImageLuma8(GrayImage::from_pixel(20, 30, image::Luma([77]))),
                [77, 77, 77],
            ),
            (
                "n01/deep/c.png",
                DynamicImage::ImageRgba8(RgbaImage::from_pixel(5, 9, Rgba([10, 20, 250, 9]))),
                [10, 20, 250],
            ),
            ("n02/wide.jpeg", solid(40, 24, [30, 160, 90]), [30, 160, 90]),
            ("n03/tall.PNG", solid(7, 50, [255, 255, 0]), [255, 255, 0]),
            ("n03/z.jpg", solid(64, 48, [0, 0, 0]), [0, 0, 0]),
        ];
        for (name, img, _) in &files {
            save(&root.join("train").join(name), img.clone());
        }
        // Neither a class nor an image: both must be ignored.
        fs::write(root.join("train/README.txt"), "not a class").unwrap();
        fs::write(root.join("train/n01/notes.txt"), "not an image").unwrap();
        fs::write(root.join("train/n01/._a.JPEG"), "resource fork").unwrap();
        fs::create_dir_all(root.join("train/.ipynb_checkpoints")).unwrap();
        files.into_iter().map(|(n, _, c)| (n, c)).collect()
    }

    fn val_folders(root: &Path) {
        save(&root.join("val/n01/v1.JPEG"), solid(12, 12, [1, 2, 3]));
        save(
            &root.join("val/n02/v2.JPEG"),
            solid(12, 30, [100, 100, 100]),
        );
        save(&root.join("val/n02/v3.JPEG"), solid(30, 12, [250, 5, 5]));
        save(&root.join("val/n03/v4.png"), solid(9, 9, [9, 99, 199]));
    }

    /// Centre squares: most tests look at the square window; the whole
    /// images' own tests set `keep: Keep::Whole`.
    fn spec(root: &Path) -> ImageFolderSpec {
        ImageFolderSpec {
            size: SIZE,
            keep: Keep::CentreSquare,
            ..ImageFolderSpec::new(root)
        }
    }

    /// Prepares into a temporary folder and reads the artefact back.
    fn load(spec: &ImageFolderSpec) -> Result<Dataset> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        prepare_image_folder(spec, &out, &dir.path().join("resume"), &|_, _| {})?;
        Ok(read_back(&out))
    }

    fn read_back(out: &Path) -> Dataset {
        let m = MappedDataset::open(out).unwrap();
        let split = |s: SplitName| Split {
            images: m.images(s).bytes().to_vec(),
            labels: m.labels(s).to_vec(),
        };
        Dataset {
            source_format: m.meta.source_format.clone(),
            height: m.meta.height,
            width: m.meta.width,
            channels: m.meta.channels,
            classes: m.meta.classes.clone(),
            train: split(SplitName::Train),
            test: split(SplitName::Test),
        }
    }

    fn err(spec: &ImageFolderSpec) -> String {
        let scanned = scan(spec).map(|_| ());
        let loaded = load(spec).map(|_| ());
        match (scanned, loaded) {
            (Err(e), Err(_)) | (Ok(()), Err(e)) => e.to_string(),
            (Err(e), Ok(())) => panic!("scan failed but load succeeded: {e}"),
            (Ok(()), Ok(())) => panic!("expected an error"),
        }
    }

    fn assert_flat(images: &[u8], index: usize, expected: [u8; 3], tolerance: u8, what: &str) {
        let bytes = (SIZE * SIZE * 3) as usize;
        let image = &images[index * bytes..(index + 1) * bytes];
        for (p, px) in image.chunks_exact(3).enumerate() {
            for c in 0..3 {
                assert!(
                    px[c].abs_diff(expected[c]) <= tolerance,
                    "{what}: pixel {p} channel {c} is {}, expected {} +-{tolerance}",
                    px[c],
                    expected[c]
                );
            }
        }
    }

    #[test]
    fn class_folders_load_with_labels_shape_and_colours() {
        let dir = tempfile::tempdir().unwrap();
        let expected = train_tree(dir.path());
        val_folders(dir.path());
        let ds = load(&spec(dir.path())).unwrap();

        assert_eq!(ds.source_format, "image-folder");
        assert_eq!(ds.classes, ["n01", "n02", "n03"]);
        assert_eq!((ds.height, ds.width, ds.channels), (SIZE, SIZE, 3));
        assert_eq!(ds.train.labels, [0, 0, 0, 1, 2, 2]);
        assert_eq!(ds.test.labels, [0, 1, 1, 2]);
        let meta = ds.meta().unwrap();
        assert_eq!(meta.train_class_counts, [3, 1, 2]);
        assert_eq!(meta.test_class_counts, [1, 2, 1]);
        for (i, (name, colour)) in expected.iter().enumerate() {
            // PNG is lossless, so the resize must hit it exactly.
            let tolerance = if name.to_lowercase().ends_with("png") {
                0
            } else {
                2
            };
            assert_flat(&ds.train.images, i, *colour, tolerance, name);
        }
        let val = [[1, 2, 3], [100, 100, 100], [250, 5, 5], [9, 99, 199]];
        for (i, colour) in val.into_iter().enumerate() {
            assert_flat(&ds.test.images, i, colour, 2, &format!("val image {i}"));
        }
    }

    #[test]
    fn scan_counts_without_decoding() {
        let dir = tempfile::tempdir().unwrap();
        train_tree(dir.path());
        val_folders(dir.path());
        // A corrupt image is found by decoding, which scan must not do.
        fs::write(dir.path().join("train/n02/broken.jpg"), b"not a jpeg").unwrap();
        let report = scan(&spec(dir.path())).unwrap();
        assert_eq!(
            report,
            ScanReport {
                classes: vec!["n01".into(), "n02".into(), "n03".into()],
                train_count: 7,
                val_count: 4,
                train_counts: vec![3, 2, 2],
                val_counts: vec![1, 2, 1],
                val_skipped: 0,
            }
        );
    }

    #[test]
    fn detect_needs_a_train_folder_with_classes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!detect(dir.path()));
        fs::create_dir_all(dir.path().join("train")).unwrap();
        assert!(!detect(dir.path()));
        fs::create_dir_all(dir.path().join("train/n01")).unwrap();
        assert!(detect(dir.path()));
    }

    #[test]
    fn progress_counts_every_image_once() {
        let dir = tempfile::tempdir().unwrap();
        train_tree(dir.path());
        val_folders(dir.path());
        let calls = Mutex::new(Vec::new());
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        prepare_image_folder(
            &spec(dir.path()),
            &out,
            &dir.path().join("resume"),
            &|done, total| calls.lock().unwrap().push((done, total)),
        )
        .unwrap();
        let mut calls = calls.into_inner().unwrap();
        calls.sort();
        assert_eq!(calls, (1..=10).map(|d| (d, 10)).collect::<Vec<_>>());
    }

    /// A tree of textured images in every class and both splits, PNG and
    /// JPEG, wide and tall, so that a change of any byte would show.
    fn textured_tree(root: &Path) {
        train_tree(root);
        val_folders(root);
        for i in 0..12u32 {
            let img = RgbImage::from_fn(37 + i * 5, 29 + i * 3, |x, y| {
                Rgb([(x * 7 + y) as u8, (x * y + i) as u8, ((y * 13) ^ x) as u8])
            });
            let name = match i % 3 {
                0 => format!("train/n02/t{i:02}.jpg"),
                1 => format!("train/n03/t{i:02}.png"),
                _ => format!("val/n01/t{i:02}.JPEG"),
            };
            save(&root.join(name), DynamicImage::ImageRgb8(img));
        }
    }

    fn file_digests(dir: &Path) -> Vec<(String, String)> {
        use sha2::{Digest, Sha256};
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let bytes = fs::read(dir.join(&n)).unwrap();
                (n, hex::encode(Sha256::digest(&bytes)))
            })
            .collect()
    }

    /// The artefact's bytes are pinned: preparation may change how it
    /// works, never what it writes (the engine's early cutoff and every
    /// downstream key depend on it).
    #[test]
    fn prepared_bytes_match_the_pinned_digests() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        textured_tree(&tree);
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let s = ImageFolderSpec {
            size: 24,
            ..spec(&tree)
        };
        let resume = dir.path().join("resume");
        prepare_image_folder(&s, &out, &resume, &|_, _| {}).unwrap();
        // The image files moved out; nothing claims them any more.
        let left: Vec<_> = fs::read_dir(&resume).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        let got = file_digests(&out);
        let expected: Vec<(String, String)> = [
            (
                "meta.json",
                "3fa9b53a824dc2a6daee03db0625112191701bae7a7ff5eb91a1ba85010bafb4",
            ),
            (
                "test.images",
                "ca3eeb9bf5612ebf98364e3711eb9f946f5aef7096305d66213584696ead7fd6",
            ),
            (
                "test.labels",
                "524bfd8fb7380bed71f6c59ee880fe0bf7a4f90c570eb2205c122841ee095198",
            ),
            (
                "test.sizes",
                "f2c6bf9cf004da24146b90c4aa932556731f7580a2092ab0871015550fff641a",
            ),
            (
                "train.images",
                "78a7bd9e15ce8e767b600a9b949bfbc55ba4ab9a554a5d35a5abe7036eef9f9b",
            ),
            (
                "train.labels",
                "a89938fa805ad4b7f172beb89c1560d1ca4e6b89165c34124e153459955488e1",
            ),
            (
                "train.sizes",
                "f23e00dce93fdef89e7387c491c12bf8c53ca221fafaaf3338c0dc0c2422c995",
            ),
        ]
        .into_iter()
        .map(|(n, d)| (n.to_string(), d.to_string()))
        .collect();
        assert_eq!(got, expected);

        let whole = dir.path().join("whole");
        fs::create_dir_all(&whole).unwrap();
        let s = ImageFolderSpec {
            keep: Keep::Whole,
            ..s
        };
        prepare_image_folder(&s, &whole, &dir.path().join("r2"), &|_, _| {}).unwrap();
        let expected: Vec<(String, String)> = PINNED_WHOLE
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect();
        assert_eq!(file_digests(&whole), expected);
    }

    const PINNED_WHOLE: [(&str, &str); 7] = [
        (
            "meta.json",
            "2a37696d4b43bbf022deb2c39dc097d53462078329f920da7b4fd68cf4bad2f5",
        ),
        (
            "test.images",
            "cc215f08f1716a217776b9ec18f6aec31ab57448b7506a7bebe08f19f7a1d859",
        ),
        (
            "test.labels",
            "524bfd8fb7380bed71f6c59ee880fe0bf7a4f90c570eb2205c122841ee095198",
        ),
        (
            "test.sizes",
            "0826c9537d3eb61e8770dc1e17d1df618b5ebfc8da9f084faf593b7d0d87d4e5",
        ),
        (
            "train.images",
            "8c08c533b01ebb414ebb6a0a58fd99eb685e75c462d775caf8ca01423660722b",
        ),
        (
            "train.labels",
            "a89938fa805ad4b7f172beb89c1560d1ca4e6b89165c34124e153459955488e1",
        ),
        (
            "train.sizes",
            "30cbabe4342fa97306aa612e3ac456fcfd76e6deaf45f38eeb4b06d703e15c18",
        ),
    ];

    /// ImageNet's preparation: every image whole, its short side `size`,
    /// its long side torchvision's `int(size * long / short)`; the sizes
    /// file says each one's, and the bytes are the resampler's resize of
    /// the decoded image.
    #[test]
    fn whole_images_keep_their_field_of_view_at_torchvision_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        // Left third red, the rest blue: a centre square would lose the red.
        let thirds = |w: u32, h: u32| {
            DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, _| {
                Rgb(if x < w / 3 { [255, 0, 0] } else { [0, 0, 255] })
            }))
        };
        save(&tree.join("train/a/wide.png"), thirds(90, 30));
        save(&tree.join("train/a/tall.png"), thirds(20, 50));
        save(
            &tree.join("train/b/square.jpg"),
            solid(16, 16, [10, 200, 30]),
        );
        save(&tree.join("val/a/v.png"), thirds(33, 12));
        save(&tree.join("val/b/v.png"), solid(8, 8, [1, 2, 3]));
        let s = ImageFolderSpec {
            size: 10,
            keep: Keep::Whole,
            ..spec(&tree)
        };
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let report = prepare_image_folder(&s, &out, &dir.path().join("r"), &|_, _| {}).unwrap();
        assert!(report.meta.aspect_kept);
        assert_eq!((report.meta.height, report.meta.width), (10, 10));
        let m = MappedDataset::open(&out).unwrap();
        let train = m.images(SplitName::Train);
        assert_eq!(train.uniform_size(), None);
        // 90x30 -> 30x10; 20x50 -> 10x25; 16x16 -> 10x10; 33x12 -> 27x10
        // (27.5 truncated); 8x8 -> 10x10.
        // Class a holds tall.png, then wide.png.
        let sizes: Vec<(usize, usize)> = (0..3)
            .map(|i| (train.image(i).1, train.image(i).2))
            .collect();
        assert_eq!(sizes, [(25, 10), (10, 30), (10, 10)]);
        let test = m.images(SplitName::Test);
        assert_eq!((test.image(0).1, test.image(0).2), (10, 27));
        // The wide image's left third survives, red, and its right blue.
        let (wide, h, w) = train.image(1);
        assert_eq!(&wide[..3], [255, 0, 0]);
        assert_eq!(&wide[(w - 1) * 3..w * 3], [0, 0, 255]);
        assert_eq!(wide.len(), h * w * 3);
        let reds = wide.chunks_exact(3).filter(|p| p[0] > 128).count();
        assert_eq!(reds, h * w / 3, "a third of the image is red");
        // A flat colour stays exact at any scale.
        assert!(train
            .image(2)
            .0
            .chunks_exact(3)
            .all(|p| p.iter().zip([10, 200, 30]).all(|(a, b)| a.abs_diff(b) <= 2)));
        assert!(test.image(1).0.chunks_exact(3).all(|p| p == [1, 2, 3]));
    }

    #[test]
    fn an_image_whose_long_side_would_not_fit_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        save(
            &dir.path().join("train/a/strip.png"),
            solid(6000, 2, [0, 0, 0]),
        );
        save(&dir.path().join("val/a/v.png"), solid(8, 8, [0, 0, 0]));
        let s = ImageFolderSpec {
            size: 256,
            keep: Keep::Whole,
            ..spec(dir.path())
        };
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let e = prepare_image_folder(&s, &out, &dir.path().join("r"), &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("strip.png") && e.contains("is 6000x2") && e.contains("768000 pixels"),
            "{e}"
        );
    }

    fn prepared(s: &ImageFolderSpec, root: &Path, name: &str, shard_len: usize) -> PathBuf {
        let out = root.join(name);
        fs::create_dir_all(&out).unwrap();
        prepare_in_shards(
            s,
            &out,
            &root.join(format!("{name}.resume")),
            shard_len,
            &|_, _| {},
        )
        .unwrap();
        out
    }

    /// Train images in artefact order: n01 a, b, deep/c; n02 t00, t03, t06,
    /// t09, wide; n03 t01, t04, t07, t10, tall, z. In shards of 3, t04 (image
    /// 9) opens the fourth; the first attempt stops there.
    fn fail_in_fourth_shard(s: &ImageFolderSpec, out: &Path, resume: &Path) -> Vec<u8> {
        let bad = s.root.join("train/n03/t04.png");
        let good = fs::read(&bad).unwrap();
        // Cut after the header (signature and IHDR): the plan still reads
        // the image's size, the decoder fails.
        fs::write(&bad, &good[..60]).unwrap();
        let e = prepare_in_shards(s, out, resume, 3, &|_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("t04.png: cannot decode image"), "{e}");
        good
    }

    #[test]
    fn an_interrupted_preparation_resumes_its_finished_shards_and_writes_the_same_bytes() {
        for keep in [Keep::CentreSquare, Keep::Whole] {
            resumes_and_writes_the_same_bytes(keep);
        }
    }

    fn resumes_and_writes_the_same_bytes(keep: Keep) {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        textured_tree(&tree);
        let s = ImageFolderSpec {
            size: 24,
            keep,
            ..spec(&tree)
        };
        let reference = prepared(&s, dir.path(), "reference", 3);
        let (out, resume) = (dir.path().join("out"), dir.path().join("resume"));
        fs::create_dir_all(&out).unwrap();
        let good = fail_in_fourth_shard(&s, &out, &resume);
        fs::write(s.root.join("train/n03/t04.png"), good).unwrap();

        let calls = Mutex::new(Vec::new());
        let report = prepare_in_shards(&s, &out, &resume, 3, &|done, total| {
            calls.lock().unwrap().push((done, total))
        })
        .unwrap();
        // 14 train images in 5 shards, 8 test images in 3.
        assert_eq!(
            (
                report.shards,
                report.resumed_shards,
                report.resumed_images,
                report.decoded_images
            ),
            (8, 3, 9, 13)
        );
        // Progress starts from the resumed images, then counts the others.
        let mut calls = calls.into_inner().unwrap();
        calls.sort();
        assert_eq!(calls, (9..=22).map(|d| (d, 22)).collect::<Vec<_>>());
        assert_eq!(file_digests(&out), file_digests(&reference));
        // Shard length is a detail: one shard gives the same bytes.
        assert_eq!(
            file_digests(&prepared(&s, dir.path(), "one", usize::MAX)),
            file_digests(&reference)
        );
    }

    #[test]
    fn a_changed_tree_or_size_never_resumes_another_plans_shards() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        textured_tree(&tree);
        let s = ImageFolderSpec {
            size: 24,
            ..spec(&tree)
        };
        let (out, resume) = (dir.path().join("out"), dir.path().join("resume"));
        fs::create_dir_all(&out).unwrap();
        let good = fail_in_fourth_shard(&s, &out, &resume);
        fs::write(s.root.join("train/n03/t04.png"), &good).unwrap();
        // A new first image shifts every later one.
        save(&tree.join("train/n01/0.png"), solid(9, 9, [1, 2, 3]));
        let report = prepare_in_shards(&s, &out, &resume, 3, &|_, _| {}).unwrap();
        assert_eq!((report.resumed_shards, report.decoded_images), (0, 23));
        assert_eq!(
            file_digests(&out),
            file_digests(&prepared(&s, dir.path(), "fresh", 3))
        );

        fs::remove_dir_all(&out).unwrap();
        fs::create_dir_all(&out).unwrap();
        fs::remove_file(tree.join("train/n01/0.png")).unwrap();
        fail_in_fourth_shard(&s, &out, &resume);
        fs::write(s.root.join("train/n03/t04.png"), &good).unwrap();
        let smaller = ImageFolderSpec { size: 16, ..s };
        let report = prepare_in_shards(&smaller, &out, &resume, 3, &|_, _| {}).unwrap();
        assert_eq!((report.resumed_shards, report.decoded_images), (0, 22));
        assert_eq!(read_back(&out), load(&smaller).unwrap());
    }

    #[test]
    fn output_is_identical_across_runs_and_thread_counts() {
        let dir = tempfile::tempdir().unwrap();
        train_tree(dir.path());
        val_folders(dir.path());
        // Textured images, so that rounding differences would show.
        for i in 0..12u32 {
            let img = RgbImage::from_fn(37 + i * 5, 29 + i * 3, |x, y| {
                Rgb([(x * 7 + y) as u8, (x * y + i) as u8, ((y * 13) ^ x) as u8])
            });
            save(
                &dir.path().join(format!("train/n02/t{i:02}.jpg")),
                DynamicImage::ImageRgb8(img),
            );
        }
        let s = ImageFolderSpec {
            size: 24,
            ..spec(dir.path())
        };
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| load(&s).unwrap())
        };
        let first = on(1);
        assert_eq!(first, on(4));
        assert_eq!(first, on(4));
    }

    #[test]
    fn label_list_val_accepts_wnids_and_indices() {
        let dir = tempfile::tempdir().unwrap();
        train_tree(dir.path());
        save(&dir.path().join("flat/b.JPEG"), solid(10, 10, [50, 60, 70]));
        save(
            &dir.path().join("flat/a.JPEG"),
            solid(10, 10, [80, 90, 100]),
        );
        save(
            &dir.path().join("flat/more/c.png"),
            solid(10, 10, [1, 1, 1]),
        );
        let labels = dir.path().join("val_labels.txt");
        fs::write(
            &labels,
            "# file class\nb.JPEG n03\n\na.JPEG 0   # index into the train classes\nmore/c.png n02\n",
        )
        .unwrap();
        let s = ImageFolderSpec {
            val: ValSource::LabelList {
                dir: "flat".into(),
                labels: labels.clone(),
            },
            ..spec(dir.path())
        };
        let ds = load(&s).unwrap();
        // Sorted by path: a.JPEG, b.JPEG, more/c.png.
        assert_eq!(ds.test.labels, [0, 2, 1]);
        assert_flat(&ds.test.images, 0, [80, 90, 100], 2, "a.JPEG");
        assert_flat(&ds.test.images, 1, [50, 60, 70], 2, "b.JPEG");
        assert_flat(&ds.test.images, 2, [1, 1, 1], 0, "more/c.png");
    }

    #[test]
    fn subset_keeps_listed_classes_in_sorted_order_and_skips_other_val_images() {
        let dir = tempfile::tempdir().unwrap();
        train_tree(dir.path());
        val_folders(dir.path());
        let subset = dir.path().join("subset.txt");
        fs::write(&subset, "# ImageNet-Subset\nn03\n\n  n01  # first class\n").unwrap();
        let s = ImageFolderSpec {
            subset: Some(subset.clone()),
            ..spec(dir.path())
        };
        let ds = load(&s).unwrap();
        assert_eq!(ds.classes, ["n01", "n03"]);
        assert_eq!(ds.train.labels, [0, 0, 0, 1, 1]);
        assert_eq!(ds.test.labels, [0, 1]);
        assert_flat(&ds.test.images, 1, [9, 99, 199], 0, "val n03");
        assert_eq!(scan(&s).unwrap().val_skipped, 2);

        // The same protocol with a label list: n02's line is skipped.
        let labels = dir.path().join("labels.txt");
        fs::write(
            &labels,
            "n01/v1.JPEG n01\nn02/v2.JPEG 1\nn02/v3.JPEG n02\nn03/v4.png n03\n",
        )
        .unwrap();
        let listed = ImageFolderSpec {
            val: ValSource::LabelList {
                dir: "val".into(),
                labels,
            },
            ..s
        };
        assert_eq!(load(&listed).unwrap(), ds);
        assert_eq!(scan(&listed).unwrap().val_skipped, 2);
    }

    #[test]
    fn bad_trees_are_rejected_with_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let s = spec(root);
        let train = root.join("train");

        let e = err(&s);
        assert!(
            e.contains(&format!("{}: training folder not found", train.display())),
            "{e}"
        );

        fs::create_dir_all(&train).unwrap();
        let e = err(&s);
        assert!(e.contains("has no class folders"), "{e}");

        train_tree(root);
        fs::create_dir_all(train.join("n04/empty")).unwrap();
        fs::write(train.join("n04/empty/x.txt"), "").unwrap();
        let e = err(&s);
        assert!(
            e.contains(&format!("{}: holds no images", train.join("n04").display())),
            "{e}"
        );
        fs::remove_dir_all(train.join("n04")).unwrap();

        let e = err(&s);
        assert!(
            e.contains(&format!(
                "{}: validation folder not found",
                root.join("val").display()
            )),
            "{e}"
        );

        val_folders(root);
        save(&root.join("val/n09/x.jpg"), solid(4, 4, [0, 0, 0]));
        let e = err(&s);
        assert!(
            e.contains("val/n09: class \"n09\" has no training folder"),
            "{e}"
        );
        fs::remove_dir_all(root.join("val/n09")).unwrap();

        fs::remove_dir_all(root.join("val/n03")).unwrap();
        let e = err(&s);
        assert!(
            e.contains("has no validation images for class \"n03\""),
            "{e}"
        );
        val_folders(root);

        let subset = root.join("subset.txt");
        fs::write(&subset, "n01\n# n02\nn07\n").unwrap();
        let with_subset = ImageFolderSpec {
            subset: Some(subset.clone()),
            ..s.clone()
        };
        let e = err(&with_subset);
        assert!(
            e.contains(&format!(
                "{}:3: class \"n07\" has no folder in {}",
                subset.display(),
                train.display()
            )),
            "{e}"
        );

        // Two bad files: the first in artefact order is named, always.
        let mut cut = Vec::new();
        let texture = RgbImage::from_fn(64, 48, |x, y| {
            Rgb([(x * 4) as u8, (y * 5) as u8, (x ^ y) as u8])
        });
        DynamicImage::ImageRgb8(texture)
            .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut cut, 90,
            ))
            .unwrap();
        cut.truncate(cut.len() * 2 / 3);
        fs::write(train.join("n03/zz.jpg"), cut).unwrap();
        fs::write(train.join("n02/corrupt.JPEG"), b"not a jpeg at all").unwrap();
        let e = load(&s).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{}: cannot decode image",
                train.join("n02/corrupt.JPEG").display()
            )),
            "{e}"
        );
        fs::remove_file(train.join("n02/corrupt.JPEG")).unwrap();
        let e = load(&s).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{}: JPEG ends before its end-of-image marker",
                train.join("n03/zz.jpg").display()
            )),
            "{e}"
        );
        fs::remove_file(train.join("n03/zz.jpg")).unwrap();

        let e = err(&ImageFolderSpec {
            size: 0,
            ..s.clone()
        });
        assert!(e.contains("image_folder.size: is 0"), "{e}");
    }

    #[test]
    fn bad_label_lists_are_rejected_at_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        train_tree(root);
        save(&root.join("flat/a.jpg"), solid(4, 4, [0, 0, 0]));
        save(&root.join("flat/b.jpg"), solid(4, 4, [0, 0, 0]));
        save(&root.join("flat/c.jpg"), solid(4, 4, [0, 0, 0]));
        let labels = root.join("labels.txt");
        let s = ImageFolderSpec {
            val: ValSource::LabelList {
                dir: "flat".into(),
                labels: labels.clone(),
            },
            ..spec(root)
        };
        let at = |line: usize| format!("{}:{line}: ", labels.display());
        let cases = [
            (
                "a.jpg n01\nb.jpg n05\n",
                format!("{}unknown class \"n05\"", at(2)),
            ),
            (
                "a.jpg 3\n",
                format!(
                    "{}class index 3 is out of range; training has 3 classes",
                    at(1)
                ),
            ),
            (
                "# x\na.jpg\n",
                format!("{}\"a.jpg\" is not \"<file> <wnid or class index>\"", at(2)),
            ),
            (
                "a.jpg n01\na.jpg n02\n",
                format!("{}\"a.jpg\" is already labelled on line 1", at(2)),
            ),
            (
                "a.jpg n01\nb.jpg n02\nc.jpg n03\nd.jpg n03\n",
                format!(
                    "{}\"d.jpg\" is not an image in {}",
                    at(4),
                    root.join("flat").display()
                ),
            ),
            (
                "a.jpg n01\nc.jpg n03\n",
                format!(
                    "{}: has no line in label list",
                    root.join("flat/b.jpg").display()
                ),
            ),
        ];
        for (text, expected) in cases {
            fs::write(&labels, text).unwrap();
            let e = err(&s);
            assert!(
                e.contains(&expected),
                "for {text:?}:\n  got      {e}\n  expected {expected}"
            );
        }
        fs::write(&labels, "a.jpg n01\nb.jpg n02\nc.jpg n03\n").unwrap();
        assert_eq!(load(&s).unwrap().test.labels, [0, 1, 2]);
    }

    /// The centre square of a short-side resize, as `Keep::CentreSquare`
    /// stores it.
    fn resize(src: &[u8], width: usize, height: usize, size: usize) -> Vec<u8> {
        let (sw, sh) = short_side_size(width, height, size);
        let mut out = vec![0; size * size * 3];
        Resampler::default().resize(
            src,
            width,
            height,
            Axis::centred(width, sw, size),
            Axis::centred(height, sh, size),
            &mut out,
        );
        out
    }

    fn halves(width: usize, height: usize, split_at: impl Fn(usize, usize) -> bool) -> Vec<u8> {
        let mut src = Vec::new();
        for y in 0..height {
            for x in 0..width {
                src.extend(if split_at(x, y) {
                    [0, 0, 255]
                } else {
                    [255, 0, 0]
                });
            }
        }
        src
    }

    #[test]
    fn resize_keeps_the_centre_of_the_long_side() {
        // 60x20 -> 30x10, window x 10..20 = source columns 20..40, whose
        // halves are red (20..30) and blue (30..40). The triangle filter is
        // 2 source pixels wide each side, so output columns 4 and 5 blend.
        let out = resize(&halves(60, 20, |x, _| x >= 30), 60, 20, 10);
        for y in 0..10 {
            let row: Vec<[u8; 3]> = (0..10)
                .map(|x| out[(y * 10 + x) * 3..][..3].try_into().unwrap())
                .collect();
            assert!(
                row[..4].iter().all(|p| *p == [255, 0, 0]),
                "row {y}: {row:?}"
            );
            assert!(
                row[6..].iter().all(|p| *p == [0, 0, 255]),
                "row {y}: {row:?}"
            );
            assert!(row[4][0] > row[4][2] && row[4][0] < 255, "row {y}: {row:?}");
            assert_eq!(
                (row[4][0] as u16 + row[4][2] as u16, row[5][0], row[5][2]),
                (255, row[4][2], row[4][0])
            );
        }
        // The same along the other axis.
        let tall = resize(&halves(20, 60, |_, y| y >= 30), 20, 60, 10);
        for x in 0..10 {
            assert_eq!(&tall[x * 3..][..3], [255, 0, 0]);
            assert_eq!(&tall[(3 * 10 + x) * 3..][..3], [255, 0, 0]);
            assert_eq!(&tall[(6 * 10 + x) * 3..][..3], [0, 0, 255]);
        }
    }

    #[test]
    fn resize_of_a_flat_colour_is_exact_up_and_down() {
        for (w, h, size) in [
            (3, 2, 8),
            (1, 1, 5),
            (1000, 7, 6),
            (33, 33, 32),
            (17, 400, 256),
            (2999, 1999, 3),
        ] {
            let src: Vec<u8> = [13u8, 128, 254].repeat(w * h);
            let out = resize(&src, w, h, size);
            assert!(
                out.chunks_exact(3).all(|p| p == [13, 128, 254]),
                "{w}x{h} -> {size}"
            );
        }
    }

    #[test]
    fn filter_weights_are_non_negative_and_sum_to_exactly_one() {
        use crate::dataset::resample::{AxisFilter, WEIGHT_ONE};
        let mut f = AxisFilter::default();
        for (src, scaled, out) in [
            (375, 256, 256),
            (500, 341, 256),
            (2999, 3, 3),
            (7, 300, 256),
        ] {
            f.plan(Axis {
                lo: 0,
                len: src,
                scaled,
                offset: (scaled - out) / 2,
                out,
            });
            for (o, row) in f.weights.chunks_exact(f.taps).enumerate() {
                assert!(
                    row.iter().all(|&w| w >= 0),
                    "{src}->{scaled} pixel {o}: {row:?}"
                );
                assert_eq!(
                    row.iter().sum::<i32>(),
                    WEIGHT_ONE,
                    "{src}->{scaled} pixel {o}"
                );
            }
        }
    }

    #[test]
    fn resize_of_a_ramp_stays_monotone_and_in_range() {
        let (w, h) = (97, 61);
        let src: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).flat_map(|x| [(x * 255 / (w - 1)) as u8; 3]))
            .collect();
        for size in [7, 61, 128] {
            let out = resize(&src, w, h, size);
            let row: Vec<u8> = out[..size * 3].iter().step_by(3).copied().collect();
            assert!(row.windows(2).all(|p| p[0] <= p[1]), "size {size}: {row:?}");
            // The crop drops (97/61*size - size)/2 scaled columns per side.
            assert!(row[0] > 20 && row[size - 1] < 235, "size {size}: {row:?}");
        }
    }
}
