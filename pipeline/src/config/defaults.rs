//! What an absent key means: every default of the config, in one place.
//! `raw`'s serde attributes name the functions here; `resolve` and the
//! planner call the ones that depend on other keys (the dataset's source,
//! the method's preset). The presets' method settings (`presets`) are the
//! published recipes, not defaults of a key, and stay there. README's
//! config reference lists each of these.

use super::resolve::DatasetSource;
use crate::params::{
    Classifier, Field, Metric, Network, Preset as MethodPreset, Profile,
    Selection as MemorySelection, IMAGENET_CROP,
};

// executor.slurm
pub(crate) fn max_retries() -> u32 {
    2
}
pub(crate) fn poll_seconds() -> f64 {
    2.0
}
/// Orders, task splits and the result stages: no GPU, milliseconds each.
pub(crate) fn local_kinds() -> Vec<crate::registry::StageKind> {
    use crate::registry::StageKind::*;
    vec![Order, Tasks, Aggregate, Render, Plot]
}
/// Many sites cap a user's queued jobs (`MaxSubmitJobs`) at 500 to 1,000.
pub(crate) fn max_jobs() -> u32 {
    1000
}

// datasets.<name>.image_folder
pub(crate) fn train_dir() -> String {
    "train".into()
}
/// `val` absent: `val/<class>/...` folders.
pub(crate) fn val_dir() -> String {
    "val".into()
}
pub(crate) fn image_size() -> u32 {
    256
}

/// `image_folder.crop` with `augment: imagenet`: 224, or the whole image
/// when it is smaller.
pub(crate) fn crop(size: u32) -> u32 {
    IMAGENET_CROP.min(size)
}

/// `datasets.<name>.profile`: whose published method settings a dataset
/// gets: an image folder with a `subset` is ImageNet-Subset's, a whole
/// image folder ImageNet's, anything else CIFAR-100's.
pub(crate) fn profile(source: &DatasetSource) -> Profile {
    match source {
        DatasetSource::ImageFolder {
            subset: Some(_), ..
        } => Profile::Imagenet100,
        DatasetSource::ImageFolder { subset: None, .. } => Profile::Imagenet1k,
        _ => Profile::Cifar100,
    }
}

// recipes.<name>
pub(crate) fn momentum() -> f64 {
    0.9
}
pub(crate) fn gamma() -> f64 {
    0.1
}

// experiments.<name>
pub(crate) fn seeds() -> Vec<u64> {
    vec![0]
}

/// `experiments.<name>.network`: resnet32 for CIFAR-sized images (LUCIR's
/// variant for lucir), resnet18 for image folders (PODNet's variant for
/// podnet).
pub(crate) fn network(source: &DatasetSource, preset: MethodPreset) -> Network {
    match (source, preset) {
        (DatasetSource::ImageFolder { .. }, MethodPreset::Podnet) => Network::Resnet18Podnet,
        (DatasetSource::ImageFolder { .. }, _) => Network::Resnet18,
        (_, MethodPreset::Lucir) => Network::Resnet32Lucir,
        _ => Network::Resnet32,
    }
}

// methods.<name>.memory
pub(crate) const MEMORY_SELECTION: MemorySelection = MemorySelection::Herding;
/// `memory.per_class` when neither it nor `total` is given, for every
/// preset that replays (finetune keeps no memory unless asked).
pub(crate) const MEMORY_PER_CLASS: u32 = 20;

// evaluation
pub(crate) fn classifiers() -> Vec<Classifier> {
    vec![Classifier::Cnn, Classifier::Nme]
}
pub(crate) fn top_k() -> Vec<u32> {
    vec![1, 5]
}

// tables.<name>
pub(crate) fn metric() -> Metric {
    Metric::AverageIncrementalAccuracy
}
pub(crate) fn rows() -> Vec<Field> {
    vec![Field::Method]
}
pub(crate) fn columns() -> Vec<Field> {
    vec![Field::Dataset, Field::Setting]
}
pub(crate) fn table_label(name: &str) -> String {
    format!("tab:{name}")
}
