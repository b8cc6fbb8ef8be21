//! The throughput calibration kept in the store (`calibration.json` at its
//! root): images/s of a training step and of a forward pass, per device
//! class and network, measured on the node by `bsce-pipe calibrate`. What
//! `status --cost` turns image passes into hours with. Not a stage result:
//! no key reads it, `cache gc` leaves it, and a newer measurement of the
//! same device and network replaces the older one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{LocalStore, StoreError};

/// The file's format version; a file of another version is an error that
/// says to calibrate again.
pub(crate) const CALIBRATION_VERSION: u32 = 1;

/// The file name under the store root.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// Device class (`cpu`, or the GPU's model name) -> network key
/// (`resnet32@32`, see `cost::NetKey`) -> its measurement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub version: u32,
    pub devices: BTreeMap<String, BTreeMap<String, Throughput>>,
}

/// One measurement of one network on one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throughput {
    /// Forward, loss, backward and SGD step, in training mode.
    pub train_images_per_s: f64,
    /// Forward alone without gradients, in evaluation mode (evaluation,
    /// herding, class means, the old model's outputs for distillation).
    pub forward_images_per_s: f64,
    pub batch: u32,
    /// The device as the stages name it (`cpu`, `cuda:0`).
    pub device: String,
    /// libtorch's intra-op threads during the measurement.
    pub threads: i64,
    pub host: String,
    pub measured_unix_ms: u64,
    /// How long the timed part of the measurement took.
    pub seconds: f64,
}

impl Throughput {
    fn check(&self, device: &str, net: &str, path: &Path) -> Result<(), StoreError> {
        for (name, v) in [
            ("train_images_per_s", self.train_images_per_s),
            ("forward_images_per_s", self.forward_images_per_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(StoreError::BadRecord {
                    path: path.to_path_buf(),
                    message: format!(
                        "devices.{device:?}.{net:?}.{name} is {v}, expected a positive rate; \
                         run `bsce-pipe calibrate` again"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl LocalStore {
    pub fn calibration_path(&self) -> PathBuf {
        self.root().join(CALIBRATION_FILE)
    }

    /// The store's calibration; empty when it has none.
    pub fn calibration(&self) -> Result<Calibration, StoreError> {
        read_calibration(&self.calibration_path())
    }

    /// Records `throughput` for `device_class` and `net` (replacing an
    /// earlier one), keeping the others; written atomically.
    pub fn record_calibration(
        &self,
        device_class: &str,
        net: &str,
        throughput: Throughput,
    ) -> Result<(), StoreError> {
        let path = self.calibration_path();
        let mut c = self.calibration()?;
        c.version = CALIBRATION_VERSION;
        c.devices
            .entry(device_class.to_string())
            .or_default()
            .insert(net.to_string(), throughput);
        let bytes = serde_json::to_vec_pretty(&c).expect("a calibration serialises");
        super::atomic::write_atomic(&path, &self.tmp_dir(), &bytes)
            .map_err(|e| StoreError::io(&path, e))
    }
}

/// Reads a calibration file; a missing file is an empty calibration.
pub fn read_calibration(path: &Path) -> Result<Calibration, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Calibration {
                version: CALIBRATION_VERSION,
                devices: BTreeMap::new(),
            })
        }
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let c: Calibration = serde_json::from_slice(&bytes).map_err(|e| StoreError::BadRecord {
        path: path.to_path_buf(),
        message: format!("{e}; remove it and run `bsce-pipe calibrate` again"),
    })?;
    if c.version != CALIBRATION_VERSION {
        return Err(StoreError::BadRecord {
            path: path.to_path_buf(),
            message: format!(
                "calibration version {} (this bsce-pipe reads {CALIBRATION_VERSION}); run \
                 `bsce-pipe calibrate` again",
                c.version
            ),
        });
    }
    for (device, nets) in &c.devices {
        for (net, t) in nets {
            t.check(device, net, path)?;
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throughput(train: f64) -> Throughput {
        Throughput {
            train_images_per_s: train,
            forward_images_per_s: 3.0 * train,
            batch: 32,
            device: "cpu".into(),
            threads: 2,
            host: "h".into(),
            measured_unix_ms: 1,
            seconds: 2.0,
        }
    }

    #[test]
    fn a_measurement_replaces_the_same_device_and_network_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(store.calibration().unwrap().devices.is_empty());
        store
            .record_calibration("cpu", "small@16", throughput(100.0))
            .unwrap();
        store
            .record_calibration("cpu", "resnet32@32", throughput(50.0))
            .unwrap();
        store
            .record_calibration("cpu", "small@16", throughput(120.0))
            .unwrap();
        let c = store.calibration().unwrap();
        assert_eq!(c.devices["cpu"].len(), 2);
        assert_eq!(c.devices["cpu"]["small@16"].train_images_per_s, 120.0);
        assert_eq!(c.devices["cpu"]["resnet32@32"].train_images_per_s, 50.0);
    }

    #[test]
    fn a_damaged_or_zero_rate_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        std::fs::write(store.calibration_path(), "{not json").unwrap();
        let e = store.calibration().unwrap_err().to_string();
        assert!(e.contains(CALIBRATION_FILE), "{e}");
        let mut c = Calibration {
            version: CALIBRATION_VERSION,
            ..Default::default()
        };
        c.devices
            .entry("cpu".into())
            .or_default()
            .insert("small@16".into(), throughput(0.0));
        std::fs::write(store.calibration_path(), serde_json::to_vec(&c).unwrap()).unwrap();
        let e = store.calibration().unwrap_err().to_string();
        assert!(e.contains("train_images_per_s is 0"), "{e}");
    }
}
