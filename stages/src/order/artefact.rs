//! The order artefact: one `order.json` holding a format tag, the class
//! list and its provenance. Written by this module only, so equal orders
//! with equal provenance are byte-identical (the engine's early cutoff
//! depends on that).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::spec::{check_permutation, ClassOrder, OrderProvenance};
use crate::error::{Result, StageError};

pub const FORMAT_TAG: &str = "bsce-order/1";
pub const ORDER_FILE: &str = bsce_pipeline::registry::files::ORDER;

/// The file's layout: [`ClassOrder`] behind a format tag. Kept apart from
/// `ClassOrder` so that the tag never has to be carried around in memory.
#[derive(Serialize)]
struct OrderFileRef<'a> {
    format: &'a str,
    classes: &'a [u32],
    provenance: &'a OrderProvenance,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderFile {
    format: String,
    classes: Vec<u32>,
    provenance: OrderProvenance,
}

/// Writes `dir/order.json` (pretty JSON, trailing newline). `dir` must
/// exist; the engine makes the directory atomic. Refuses an order that is
/// not a permutation of its recorded class count, so a bad order is never
/// stored.
pub fn write_order(dir: &Path, order: &ClassOrder) -> Result<()> {
    let path = dir.join(ORDER_FILE);
    check_permutation(&order.classes, order.provenance.class_count)
        .map_err(|message| StageError::invalid(&path, format!("refusing to write: {message}")))?;
    let file = OrderFileRef {
        format: FORMAT_TAG,
        classes: &order.classes,
        provenance: &order.provenance,
    };
    let mut json = serde_json::to_vec_pretty(&file).expect("order serialises");
    json.push(b'\n');
    fs::write(&path, json).map_err(|e| StageError::io(&path, e))
}

/// Reads `dir/order.json`, checking its format tag and that the list is a
/// permutation of the recorded class count.
pub fn read_order(dir: &Path) -> Result<ClassOrder> {
    let path = dir.join(ORDER_FILE);
    let bytes = fs::read(&path).map_err(|e| StageError::io(&path, e))?;
    let file: OrderFile = serde_json::from_slice(&bytes)
        .map_err(|e| StageError::invalid(&path, format!("not an order file: {e}")))?;
    if file.format != FORMAT_TAG {
        return Err(StageError::invalid(
            &path,
            format!("format is {:?}; expected {FORMAT_TAG:?}", file.format),
        ));
    }
    check_permutation(&file.classes, file.provenance.class_count)
        .map_err(|message| StageError::invalid(&path, message))?;
    Ok(ClassOrder {
        classes: file.classes,
        provenance: file.provenance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::spec::{resolve_order, OrderGenerator, OrderSpec};

    fn icarl_named() -> ClassOrder {
        resolve_order(
            &OrderSpec::Named {
                name: "icarl_cifar100".into(),
            },
            100,
        )
        .unwrap()
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let order = icarl_named();
        write_order(dir.path(), &order).unwrap();
        assert_eq!(read_order(dir.path()).unwrap(), order);
    }

    #[test]
    fn bytes_are_deterministic_and_pinned() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write_order(a.path(), &icarl_named()).unwrap();
        write_order(b.path(), &icarl_named()).unwrap();
        let bytes = fs::read(a.path().join(ORDER_FILE)).unwrap();
        assert_eq!(bytes, fs::read(b.path().join(ORDER_FILE)).unwrap());

        let small = ClassOrder {
            classes: vec![1, 0],
            provenance: OrderProvenance {
                generator: OrderGenerator::NumpyLegacyShuffle { seed: 0 },
                class_count: 2,
            },
        };
        write_order(a.path(), &small).unwrap();
        let text = fs::read_to_string(a.path().join(ORDER_FILE)).unwrap();
        assert_eq!(
            text,
            r#"{
  "format": "bsce-order/1",
  "classes": [
    1,
    0
  ],
  "provenance": {
    "generator": {
      "numpy_legacy_shuffle": {
        "seed": 0
      }
    },
    "class_count": 2
  }
}
"#
        );
    }

    #[test]
    fn writing_a_non_permutation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = ClassOrder {
            classes: vec![0, 0],
            provenance: OrderProvenance {
                generator: OrderGenerator::Explicit,
                class_count: 2,
            },
        };
        let err = write_order(dir.path(), &bad).unwrap_err().to_string();
        assert!(
            err.ends_with("refusing to write: class 0 appears twice; class 1 is missing"),
            "{err}"
        );
        assert!(!dir.path().join(ORDER_FILE).exists());
    }

    #[test]
    fn reading_checks_format_and_permutation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ORDER_FILE);
        let provenance = r#""provenance": {"generator": "explicit", "class_count": 3}"#;

        fs::write(
            &path,
            format!(r#"{{"format": "bsce-order/0", "classes": [0, 1, 2], {provenance}}}"#),
        )
        .unwrap();
        let err = read_order(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with(r#"format is "bsce-order/0"; expected "bsce-order/1""#),
            "{err}"
        );

        fs::write(
            &path,
            format!(r#"{{"format": "bsce-order/1", "classes": [0, 1], {provenance}}}"#),
        )
        .unwrap();
        let err = read_order(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("order lists 2 classes; the dataset has 3; class 2 is missing"),
            "{err}"
        );

        fs::write(&path, r#"{"format": "bsce-order/1", "classes": [0]}"#).unwrap();
        let err = read_order(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("not an order file: missing field `provenance`"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_order(dir.path()).unwrap_err().to_string();
        assert!(err.contains(ORDER_FILE), "{err}");
    }
}
