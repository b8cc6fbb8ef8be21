//! CIFAR-100 readers for both official distributions, read from the
//! `.tar.gz` as downloaded or from the folder it extracts to.
//!
//! | module       | reads                                                          |
//! |--------------|----------------------------------------------------------------|
//! | [`python`]   | `cifar-100-python/{train,test,meta}`: Python 2 pickles of numpy arrays |
//! | [`binary`]   | `cifar-100-binary/{train,test}.bin` records and the label name files |
//! | [`pickle`]   | the pickle subset those files use, without running any code    |
//! | [`fixtures`] | small archives in the official layouts, for tests               |
//!
//! Both readers keep the files' image order, transpose CHW rows into HWC
//! and keep the fine labels and fine class names. An archive is streamed
//! once and read to its end, so a truncated or corrupted download is an
//! error (the gzip CRC covers every byte) rather than a short dataset.

mod binary;
pub mod fixtures;
mod pickle;
mod python;

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use rayon::prelude::*;

use super::artefact::Dataset;
use crate::error::{Result, StageError};

const SIDE: u32 = 32;
const CHANNELS: u32 = 3;
const IMAGE_BYTES: usize = (SIDE * SIDE * CHANNELS) as usize;
const PLANE: usize = (SIDE * SIDE) as usize;
const FINE_CLASSES: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarFormat {
    /// `cifar-100-python.tar.gz`.
    Python,
    /// `cifar-100-binary.tar.gz`.
    Binary,
}

impl CifarFormat {
    /// The folder the official archive holds everything in.
    pub fn root_folder(self) -> &'static str {
        match self {
            CifarFormat::Python => "cifar-100-python",
            CifarFormat::Binary => "cifar-100-binary",
        }
    }

    /// The `source_format` of the datasets this reader produces.
    pub fn source_format(self) -> &'static str {
        match self {
            CifarFormat::Python => "cifar100-python",
            CifarFormat::Binary => "cifar100-binary",
        }
    }

    const ALL: [CifarFormat; 2] = [CifarFormat::Python, CifarFormat::Binary];

    /// The files holding the two splits; they identify an extracted folder.
    fn split_files(self) -> [&'static str; 2] {
        match self {
            CifarFormat::Python => ["train", "test"],
            CifarFormat::Binary => ["train.bin", "test.bin"],
        }
    }
}

/// Which CIFAR-100 format `path` holds, if any: a `.tar.gz` whose first
/// member lies under `cifar-100-python/` or `cifar-100-binary/`, or a folder
/// that is (or contains) one of those extracted. Reads one tar header at
/// most.
pub fn detect(path: &Path) -> Result<Option<CifarFormat>> {
    Ok(locate(path)?.map(|(format, _)| format))
}

/// Reads a CIFAR-100 archive or extracted folder of either format.
pub fn load_cifar100(path: &Path) -> Result<Dataset> {
    let (format, source) = locate(path)?.ok_or_else(|| {
        StageError::invalid(
            path,
            "is not a CIFAR-100 source; expected cifar-100-python.tar.gz, \
             cifar-100-binary.tar.gz, or the folder either extracts to",
        )
    })?;
    let (classes, train, test) = match format {
        CifarFormat::Python => python::read(&source)?,
        CifarFormat::Binary => binary::read(&source)?,
    };
    Ok(Dataset {
        source_format: format.source_format().to_string(),
        height: SIDE,
        width: SIDE,
        channels: CHANNELS,
        classes,
        train,
        test,
    })
}

/// Where the members of a CIFAR-100 source are.
enum Source {
    Archive { path: PathBuf, root: &'static str },
    Folder(PathBuf),
}

fn locate(path: &Path) -> Result<Option<(CifarFormat, Source)>> {
    let meta = fs::metadata(path).map_err(|e| StageError::io(path, e))?;
    if meta.is_dir() {
        return locate_folder(path);
    }
    let Some(format) = archive_format(path)? else {
        return Ok(None);
    };
    Ok(Some((
        format,
        Source::Archive {
            path: path.to_path_buf(),
            root: format.root_folder(),
        },
    )))
}

fn locate_folder(dir: &Path) -> Result<Option<(CifarFormat, Source)>> {
    let nested: Vec<CifarFormat> = CifarFormat::ALL
        .into_iter()
        .filter(|f| dir.join(f.root_folder()).is_dir())
        .collect();
    match nested[..] {
        [format] => {
            return Ok(Some((
                format,
                Source::Folder(dir.join(format.root_folder())),
            )))
        }
        [_, _] => {
            return Err(StageError::invalid(
                dir,
                "holds both cifar-100-python and cifar-100-binary; point at one of them",
            ))
        }
        _ => {}
    }
    // A missing label-name file is left for the reader to report by name.
    let found = CifarFormat::ALL
        .into_iter()
        .find(|f| f.split_files().iter().all(|m| dir.join(m).is_file()));
    Ok(found.map(|format| (format, Source::Folder(dir.to_path_buf()))))
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn archive_format(path: &Path) -> Result<Option<CifarFormat>> {
    let mut file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let mut magic = [0u8; 2];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == GZIP_MAGIC => {}
        Ok(()) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(StageError::io(path, e)),
    }
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let entries = archive.entries().map_err(|e| corrupt_archive(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| corrupt_archive(path, e))?;
        let path_in_tar = entry.path().map_err(|e| corrupt_archive(path, e))?;
        // The first real member decides, so detection reads one header (two
        // when the archive starts with a `./` entry).
        if let Some(first) = normal_components(&path_in_tar).first() {
            return Ok(CifarFormat::ALL
                .into_iter()
                .find(|f| first == f.root_folder()));
        }
    }
    Ok(None)
}

fn normal_components(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

fn corrupt_archive(path: &Path, e: io::Error) -> StageError {
    damaged_archive(path, None, e)
}

/// The error for an archive that does not decode, naming the member in
/// which that showed, if any.
fn damaged_archive(path: &Path, member: Option<&str>, e: io::Error) -> StageError {
    let message = match member {
        Some(member) => format!(
            "member {member}: the archive is truncated or corrupted ({e}); download it again"
        ),
        None => format!("is not a readable .tar.gz ({e}); the download is truncated or corrupted"),
    };
    StageError::invalid(path, message)
}

/// Names one member of a source in error messages: the file itself for a
/// folder, the archive and the member path for an archive.
struct Origin {
    path: PathBuf,
    member: Option<String>,
}

impl Origin {
    fn invalid(&self, message: impl std::fmt::Display) -> StageError {
        match &self.member {
            Some(member) => StageError::invalid(&self.path, format!("member {member}: {message}")),
            None => StageError::invalid(&self.path, message.to_string()),
        }
    }

    /// A read that failed or ended early.
    fn truncated(&self, e: io::Error) -> StageError {
        match &self.member {
            Some(member) => damaged_archive(&self.path, Some(member), e),
            None => StageError::io(&self.path, e),
        }
    }
}

/// What [`Source::for_each_member`] calls: origin, name, reader, size. The
/// reader yields exactly `size` bytes unless the input is cut short.
type Visit<'v> = dyn FnMut(&Origin, &str, &mut dyn Read, u64) -> Result<()> + 'v;

impl Source {
    /// Visits each of `names` (in archive order for an archive); every name
    /// must be present.
    fn for_each_member(
        &self,
        names: &[&str],
        mut visit: impl FnMut(&Origin, &str, &mut dyn Read, u64) -> Result<()>,
    ) -> Result<()> {
        match self {
            Source::Folder(dir) => visit_folder(dir, names, &mut visit),
            Source::Archive { path, root } => {
                let file = File::open(path).map_err(|e| StageError::io(path, e))?;
                let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
                let mut current = None;
                let visited =
                    visit_archive(&mut archive, path, root, names, &mut current, &mut visit);
                // The tar reader stops at the end-of-archive block, or earlier
                // on an error: decoding the rest checks the gzip CRC, so a
                // damaged download is reported as such, not as whatever
                // garbage it decoded to.
                let drained = io::copy(&mut archive.into_inner(), &mut io::sink());
                match (visited, drained) {
                    (Ok(()), Ok(_)) => Ok(()),
                    (Err(e), Ok(_)) => Err(e),
                    (_, Err(e)) => Err(damaged_archive(path, current.as_deref(), e)),
                }
            }
        }
    }
}

fn visit_folder(dir: &Path, names: &[&str], visit: &mut Visit<'_>) -> Result<()> {
    for &name in names {
        let path = dir.join(name);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StageError::invalid(
                dir,
                format!(
                    "has no file {name}; expected the extracted official layout ({})",
                    names.join(", ")
                ),
            ),
            _ => StageError::io(&path, e),
        })?;
        let size = file.metadata().map_err(|e| StageError::io(&path, e))?.len();
        let origin = Origin { path, member: None };
        visit(&origin, name, &mut BufReader::new(file), size)?;
    }
    Ok(())
}

/// Visits the members in one pass; `current` names the member being
/// visited while a visit is under way.
fn visit_archive<R: Read>(
    archive: &mut tar::Archive<R>,
    path: &Path,
    root: &str,
    names: &[&str],
    current: &mut Option<String>,
    visit: &mut Visit<'_>,
) -> Result<()> {
    let mut seen = vec![false; names.len()];
    for entry in archive.entries().map_err(|e| corrupt_archive(path, e))? {
        let mut entry = entry.map_err(|e| corrupt_archive(path, e))?;
        let member = normal_components(&entry.path().map_err(|e| corrupt_archive(path, e))?);
        let [top, name] = &member[..] else { continue };
        let Some(i) = names.iter().position(|n| n == name) else {
            continue;
        };
        if top != root || seen[i] {
            continue;
        }
        seen[i] = true;
        let origin = Origin {
            path: path.to_path_buf(),
            member: Some(format!("{root}/{name}")),
        };
        *current = origin.member.clone();
        let size = entry.size();
        visit(&origin, name, &mut entry, size)?;
        *current = None;
    }
    match seen.iter().position(|s| !s) {
        Some(i) => Err(StageError::invalid(
            path,
            format!(
                "has no member {root}/{}; expected the official layout ({})",
                names[i],
                names.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// Reads a whole member, failing if it ends before `size` bytes.
fn read_member(origin: &Origin, reader: &mut dyn Read, size: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size as usize);
    reader
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| origin.truncated(e))?;
    if bytes.len() as u64 != size {
        return Err(origin.truncated(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} of {size} bytes", bytes.len()),
        )));
    }
    Ok(bytes)
}

/// Transposes records of `record_len` bytes, each a CHW image after
/// `offset` bytes of labels, into consecutive HWC images.
fn records_to_hwc(records: &[u8], record_len: usize, offset: usize, hwc: &mut [u8]) {
    hwc.par_chunks_exact_mut(IMAGE_BYTES)
        .zip(records.par_chunks_exact(record_len))
        .for_each(|(out, record)| {
            let chw = &record[offset..offset + IMAGE_BYTES];
            let (r, gb) = chw.split_at(PLANE);
            let (g, b) = gb.split_at(PLANE);
            for (((px, &r), &g), &b) in out.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
                px[0] = r;
                px[1] = g;
                px[2] = b;
            }
        });
}

/// A fine label as the artefact stores it; the error completes a sentence
/// naming the label.
fn fine_label(label: i64) -> Result<u16, String> {
    match u16::try_from(label) {
        Ok(l) if usize::from(l) < FINE_CLASSES => Ok(l),
        _ => Err(format!(
            "is {label}; expected 0..={} (CIFAR-100 has {FINE_CLASSES} fine classes)",
            FINE_CLASSES - 1
        )),
    }
}

/// Checks there is one name per fine class; the error completes a
/// sentence naming the list.
fn fine_names_count(names: &[String]) -> Result<(), String> {
    if names.len() != FINE_CLASSES {
        return Err(format!(
            "holds {} names; expected {FINE_CLASSES}",
            names.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
