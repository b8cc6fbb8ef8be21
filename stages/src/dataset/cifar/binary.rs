//! The binary distribution. `train.bin` and `test.bin` are runs of 3074-byte
//! records: coarse label, fine label, then 3072 bytes of CHW image;
//! `fine_label_names.txt` has one class name per line.

use std::io::Read;

use super::{
    fine_label, fine_names_count, read_member, records_to_hwc, Origin, Source, IMAGE_BYTES,
};
use crate::dataset::artefact::Split;
use crate::error::Result;

const MEMBERS: &[&str] = &["train.bin", "test.bin", "fine_label_names.txt"];
const RECORD_BYTES: usize = 2 + IMAGE_BYTES;
/// Records decoded per read: large enough to keep the transposition
/// parallel, small enough that the split is never held twice.
const CHUNK_RECORDS: usize = 1024;

/// Returns the fine class names and the train and test splits.
pub(super) fn read(source: &Source) -> Result<(Vec<String>, Split, Split)> {
    let (mut classes, mut train, mut test) = (None, None, None);
    source.for_each_member(MEMBERS, |origin, name, reader, size| {
        match name {
            "train.bin" => train = Some(records(origin, reader, size)?),
            "test.bin" => test = Some(records(origin, reader, size)?),
            _ => classes = Some(class_names(origin, &read_member(origin, reader, size)?)?),
        }
        Ok(())
    })?;
    let visited = "for_each_member visits every member or fails";
    Ok((
        classes.expect(visited),
        train.expect(visited),
        test.expect(visited),
    ))
}

fn records(origin: &Origin, reader: &mut dyn Read, size: u64) -> Result<Split> {
    if size % RECORD_BYTES as u64 != 0 {
        return Err(origin.invalid(format!(
            "holds {size} bytes, not a whole number of {RECORD_BYTES}-byte records \
             (coarse label, fine label, {IMAGE_BYTES} CHW image bytes)"
        )));
    }
    let count = (size / RECORD_BYTES as u64) as usize;
    let mut images = vec![0u8; count * IMAGE_BYTES];
    let mut labels = Vec::with_capacity(count);
    let mut buf = vec![0u8; count.min(CHUNK_RECORDS) * RECORD_BYTES];
    for out in images.chunks_mut(CHUNK_RECORDS * IMAGE_BYTES) {
        let buf = &mut buf[..out.len() / IMAGE_BYTES * RECORD_BYTES];
        reader.read_exact(buf).map_err(|e| origin.truncated(e))?;
        for record in buf.chunks_exact(RECORD_BYTES) {
            let label = fine_label(record[1].into())
                .map_err(|m| origin.invalid(format!("record {}: fine label {m}", labels.len())))?;
            labels.push(label);
        }
        records_to_hwc(buf, RECORD_BYTES, 2, out);
    }
    Ok(Split { images, labels })
}

fn class_names(origin: &Origin, bytes: &[u8]) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| origin.invalid(format!("is not UTF-8 text: {e}")))?;
    // Blank lines are not names; the published files may end with some.
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    fine_names_count(&names).map_err(|m| origin.invalid(m))?;
    Ok(names)
}
