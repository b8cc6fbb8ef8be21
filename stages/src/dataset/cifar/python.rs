//! The python distribution. `train` and `test` are pickled dicts with
//! `b'data'` (a uint8 numpy array, N x 3072, one CHW image per row) and
//! `b'fine_labels'` (a list of N ints) among other keys; `meta` holds
//! `b'fine_label_names'`. Python 2 wrote them, so their strings are bytes.

use super::pickle::{self, Pickle, Value};
use super::{
    fine_label, fine_names_count, read_member, records_to_hwc, Origin, Source, IMAGE_BYTES,
};
use crate::dataset::artefact::Split;
use crate::error::Result;

const MEMBERS: &[&str] = &["train", "test", "meta"];

/// Returns the fine class names and the train and test splits.
pub(super) fn read(source: &Source) -> Result<(Vec<String>, Split, Split)> {
    let (mut classes, mut train, mut test) = (None, None, None);
    source.for_each_member(MEMBERS, |origin, name, reader, size| {
        let bytes = read_member(origin, reader, size)?;
        let pickle = pickle::parse(&bytes)
            .map_err(|e| origin.invalid(format!("is not a pickle this reader accepts: {e}")))?;
        match name {
            "train" => train = Some(split(origin, &pickle)?),
            "test" => test = Some(split(origin, &pickle)?),
            _ => classes = Some(class_names(origin, &pickle)?),
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

fn field(origin: &Origin, p: &Pickle<'_>, key: &str) -> Result<pickle::Id> {
    let root = p.root();
    if !matches!(p.get(root), Value::Dict(_)) {
        return Err(origin.invalid(format!(
            "holds a pickled {}; expected a dict as in the official archive",
            p.get(root).kind()
        )));
    }
    p.dict_get(root, key.as_bytes()).ok_or_else(|| {
        origin.invalid(format!(
            "has no key b'{key}'; expected the dict of the official archive"
        ))
    })
}

fn list<'p>(origin: &Origin, p: &'p Pickle<'_>, key: &str) -> Result<&'p [pickle::Id]> {
    match p.get(field(origin, p, key)?) {
        Value::List(items) => Ok(items),
        other => Err(origin.invalid(format!("b'{key}' is a {}; expected a list", other.kind()))),
    }
}

fn split(origin: &Origin, p: &Pickle<'_>) -> Result<Split> {
    let array = match p.get(field(origin, p, "data")?) {
        Value::Array(Some(array)) => array,
        other => {
            return Err(origin.invalid(format!(
                "b'data' is a {}; expected a numpy uint8 array",
                other.kind()
            )))
        }
    };
    if array.dtype != "u1" {
        return Err(origin.invalid(format!(
            "b'data' has dtype {:?}; expected uint8 ('u1')",
            array.dtype
        )));
    }
    let &[count, IMAGE_BYTES] = &array.shape[..] else {
        return Err(origin.invalid(format!(
            "b'data' has shape {:?}; expected (N, {IMAGE_BYTES}), one 3x32x32 CHW image per row",
            array.shape
        )));
    };
    if array.fortran_order {
        return Err(origin.invalid("b'data' is in Fortran order; expected C order"));
    }
    let data = p
        .bytes(array.data)
        .expect("the pickle reader checks array data is bytes");
    if data.len() != count * IMAGE_BYTES {
        return Err(origin.invalid(format!(
            "b'data' holds {} bytes; its shape ({count}, {IMAGE_BYTES}) needs {}",
            data.len(),
            count * IMAGE_BYTES
        )));
    }
    let ids = list(origin, p, "fine_labels")?;
    if ids.len() != count {
        return Err(origin.invalid(format!(
            "b'fine_labels' holds {} labels for the {count} images in b'data'; expected one \
             per image",
            ids.len()
        )));
    }
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| match p.get(id) {
            Value::Int(l) => {
                fine_label(*l).map_err(|m| origin.invalid(format!("b'fine_labels'[{i}] {m}")))
            }
            other => Err(origin.invalid(format!(
                "b'fine_labels'[{i}] is a {}; expected an int",
                other.kind()
            ))),
        })
        .collect::<Result<Vec<u16>>>()?;
    let mut images = vec![0u8; data.len()];
    records_to_hwc(data, IMAGE_BYTES, 0, &mut images);
    Ok(Split { images, labels })
}

fn class_names(origin: &Origin, p: &Pickle<'_>) -> Result<Vec<String>> {
    let names = list(origin, p, "fine_label_names")?
        .iter()
        .enumerate()
        .map(|(i, &id)| match p.bytes(id).map(std::str::from_utf8) {
            Some(Ok(name)) => Ok(name.to_string()),
            Some(Err(e)) => {
                Err(origin.invalid(format!("b'fine_label_names'[{i}] is not UTF-8: {e}")))
            }
            None => Err(origin.invalid(format!(
                "b'fine_label_names'[{i}] is a {}; expected a string",
                p.get(id).kind()
            ))),
        })
        .collect::<Result<Vec<String>>>()?;
    fine_names_count(&names).map_err(|m| origin.invalid(format!("b'fine_label_names' {m}")))?;
    Ok(names)
}
