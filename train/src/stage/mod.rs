//! The child-process side of the `train` and `evaluate` stages, and the
//! files they exchange.
//!
//! A train stage writes `model.safetensors` (weights), `model.json`
//! ([`ModelInfo`]: how to rebuild the network before loading them),
//! `memory.json` ([`Memory`]: exemplar indices and NME class means) and
//! `log.json` (per-epoch losses, lr and time).

pub mod evaluate;
pub mod finetune;
pub(crate) mod steps;
pub mod train;

use std::collections::BTreeMap;
use std::path::Path;

use bsce_pipeline::registry::files;
use serde::{Deserialize, Serialize};
use tch::nn;

use crate::classifier::{Head, HeadSpec};
use crate::method::{
    head_spec, net_spec, Augmentation, Network, Normalization, Preset, TrainParams,
};
use crate::net::Backbone;
use crate::{Result, StageError};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub preset: Preset,
    pub network: Network,
    pub augment: Augmentation,
    /// The augmentation's crop where the dataset's differs from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<u32>,
    /// The dataset's own input normalisation, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalization>,
    pub head: HeadSpec,
    /// Classes added by each task, in order: rebuilds the head's blocks.
    pub blocks: Vec<i64>,
    /// Dataset class ids in incremental order (the first `sum(blocks)`
    /// entries of the class order).
    pub classes: Vec<u32>,
    /// The features herding and NME use; absent in models written before
    /// the choice existed, which used the classifier's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<bsce_pipeline::params::FeatureTap>,
}

impl ModelInfo {
    /// The model of `p`'s method before its first task: no class yet.
    pub fn untrained(p: &TrainParams) -> ModelInfo {
        ModelInfo {
            preset: p.method.preset,
            network: p.network,
            augment: p.augment,
            crop: p.crop,
            normalize: p.normalize.clone(),
            head: head_spec(&p.method),
            blocks: vec![],
            classes: vec![],
            features: Some(p.method.features),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// Incremental class index -> training-image indices kept as exemplars,
    /// in selection order.
    pub exemplars: BTreeMap<usize, Vec<usize>>,
    /// NME class means, one per seen class (incremental order).
    pub class_means: Vec<Vec<f32>>,
}

/// A network rebuilt from its info, with weights not yet loaded.
pub struct Model {
    pub vs: nn::VarStore,
    pub backbone: Backbone,
    pub head: Head,
}

impl Model {
    pub fn build(info: &ModelInfo, device: tch::Device) -> Result<Model> {
        let vs = nn::VarStore::new(device);
        let spec = net_spec(info.network);
        let backbone = Backbone::new(&(vs.root() / "backbone"), &spec)?;
        let mut head = Head::new(&(vs.root() / "head"), &info.head, backbone.out_dim())?;
        for &n in &info.blocks {
            head.add_classes(&(vs.root() / "head"), n, None)?;
        }
        Ok(Model { vs, backbone, head })
    }

    /// Rebuilds a train stage's output and loads its weights.
    pub fn load(dir: &Path, device: tch::Device) -> Result<(Model, ModelInfo, Memory)> {
        let info: ModelInfo = read_json(&dir.join(files::MODEL))?;
        let memory: Memory = read_json(&dir.join(files::MEMORY))?;
        let mut model = Model::build(&info, device)?;
        crate::checkpoint::load(&mut model.vs, &dir.join(files::WEIGHTS))?;
        Ok((model, info, memory))
    }
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StageError::invalid(path, e.to_string()))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("serialises");
    bytes.push(b'\n');
    std::fs::write(path, bytes).map_err(|e| StageError::io(path, e))
}

/// Position of each dataset class in the order (`usize::MAX` if absent).
pub fn positions(order: &[u32], num_classes: usize) -> Vec<usize> {
    let mut pos = vec![usize::MAX; num_classes];
    for (i, &c) in order.iter().enumerate() {
        if let Some(p) = pos.get_mut(c as usize) {
            *p = i;
        }
    }
    pos
}

/// The pooled features `tap` names (herding, class means and NME, in
/// training and evaluation alike).
pub fn tapped(
    out: &crate::net::BackboneOut,
    tap: bsce_pipeline::params::FeatureTap,
) -> tch::Tensor {
    use bsce_pipeline::params::FeatureTap;
    match tap {
        FeatureTap::PreActivation => out.raw.shallow_clone(),
        FeatureTap::PostActivation => out.features.shallow_clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bsce_pipeline::params::FeatureTap;

    #[test]
    fn the_tap_picks_pre_or_post_activation_pooling() {
        let raw = tch::Tensor::from_slice(&[-1.0f32, 2.0]).view([1, 2]);
        let out = crate::net::BackboneOut {
            features: raw.relu(),
            raw: raw.shallow_clone(),
            attention: vec![],
        };
        let pre =
            Vec::<f32>::try_from(tapped(&out, FeatureTap::PreActivation).flatten(0, -1)).unwrap();
        let post =
            Vec::<f32>::try_from(tapped(&out, FeatureTap::PostActivation).flatten(0, -1)).unwrap();
        assert_eq!((pre, post), (vec![-1.0, 2.0], vec![0.0, 2.0]));
    }

    #[test]
    fn a_model_written_before_the_tap_existed_still_reads() {
        let old = r#"{"preset":"lucir","network":"tiny","augment":"cifar_lucir","head":"cosine","blocks":[2],"classes":[0,1]}"#;
        let info: ModelInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.features, None);
        let new = serde_json::to_string(&ModelInfo {
            features: Some(FeatureTap::PreActivation),
            ..info
        })
        .unwrap();
        assert!(new.contains(r#""features":"pre_activation""#), "{new}");
    }
}
