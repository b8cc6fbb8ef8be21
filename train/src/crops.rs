//! `bsce-torch crops DATASET_DIR SPEC.json OUT_DIR`: what the network sees.
//! Loads images of a prepared dataset through the training data path
//! ([`crate::data::load`]) with the augmentation a train stage would use,
//! and writes them out, so that a person can look at them and a test can
//! compare them with torchvision (`tests/crops/`).
//!
//! SPEC.json: `{"augment": <Augmentation, e.g. "imagenet">, "crop": 224?,
//! "normalize": {mean, std}?, "split": "train" | "test", "indices": [..],
//! "train": bool, "seed": N}` (`crop` and `normalize` as in a train
//! stage's params).
//!
//! OUT_DIR:
//! - `crops.safetensors`: `batch` f32 [B,3,H,W], the network's input, and
//!   `pixels` f32 [B,3,H,W], the same un-normalised to 0..255;
//! - `draws.json`: each sample's image size and, in training, its drawn
//!   window (top, left, height, width, in the stored image), flip and
//!   brightness factor.

use std::path::Path;

use bsce_pipeline::params::{Augmentation, Normalization};
use bsce_stages::dataset::artefact::{MappedDataset, SplitName};
use serde::Deserialize;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::data::{load_drawn, Shape};
use crate::method::augment_spec;
use crate::stage::write_json;
use crate::{Result, StageError};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropsSpec {
    pub augment: Augmentation,
    #[serde(default)]
    pub crop: Option<u32>,
    #[serde(default)]
    pub normalize: Option<Normalization>,
    pub split: SplitName,
    pub indices: Vec<usize>,
    pub train: bool,
    #[serde(default)]
    pub seed: u64,
}

pub fn run(dataset: &Path, spec_path: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read(spec_path).map_err(|e| StageError::io(spec_path, e))?;
    let spec: CropsSpec = serde_json::from_slice(&text)
        .map_err(|e| StageError::invalid(spec_path, format!("not a crops spec: {e}")))?;
    let ds = MappedDataset::open(dataset)?;
    let images = ds.images(spec.split);
    if let Some(&bad) = spec.indices.iter().find(|&&i| i >= images.len()) {
        return Err(StageError::invalid(
            spec_path,
            format!(
                "indices: {bad} is out of range; the {} split holds {} images",
                spec.split.as_str(),
                images.len()
            ),
        ));
    }
    let aug = augment_spec(spec.augment, spec.crop, spec.normalize.as_ref())?;
    aug.validate(Shape::of(&ds.meta))?;
    let (batch, draws) = load_drawn(
        images,
        &spec.indices,
        &aug,
        spec.train,
        spec.seed,
        Device::Cpu,
    );
    let stat = |v: [f64; 3]| Tensor::from_slice(&v.map(|s| s as f32)).view([1, 3, 1, 1]);
    let pixels = (&batch * stat(aug.std) + stat(aug.mean)) * 255.0;
    std::fs::create_dir_all(out).map_err(|e| StageError::io(out, e))?;
    Tensor::write_safetensors(
        &[
            ("batch", batch.to_kind(Kind::Float)),
            ("pixels", pixels.to_kind(Kind::Float)),
        ],
        out.join("crops.safetensors"),
    )
    .map_err(|e| StageError::Other(format!("writing crops.safetensors: {e}")))?;
    let samples: Vec<_> = spec
        .indices
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let (_, h, w) = images.image(i);
            json!({"index": i, "height": h, "width": w, "draw": draws.get(k)})
        })
        .collect();
    write_json(&out.join("draws.json"), &json!({ "samples": samples }))
}
