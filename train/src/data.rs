//! The training data path: [`load`] turns dataset images into one
//! normalised f32 NCHW batch on the training device. The prepared dataset
//! stays memory-mapped as u8 RGB. Per-sample augmentation parameters are
//! drawn on the CPU from a [`SplitMix64`] seeded by the caller, so a seed
//! fixes the augmentation on any device.
//!
//! Two paths, by the spec's crop:
//! - CIFAR style (padded crop; every image one size): [`gather`] copies the
//!   batch to the device in one transfer and [`augment`] crops, flips,
//!   jitters and normalises it there with batched tensor ops.
//! - ImageNet style (`random_resized_crop`; images of their own size, the
//!   whole field of view kept): each sample's window is cut and resized on
//!   the CPU, in parallel, with PIL's antialiased bilinear filter (the
//!   resampler preparation uses), and flipped; evaluation takes the centre
//!   window. The device then jitters and normalises.
//!
//! Transforms: ../shared/reference/cil-protocols.md §2 and
//! method-formulas.md §3.1 (PODNet), §4.1 (LUCIR).

use bsce_stages::dataset::artefact::{DatasetMeta, SplitImages};
use bsce_stages::dataset::resample::{centre_offset, Axis, Resampler};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{Result, StageError};

/// What [`augment`] does to a batch. The constructors are the references'
/// torchvision pipelines; a config may change any field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSpec {
    /// Zero padding on each side before a random crop back to the input
    /// size (`RandomCrop(32, padding=4)`); 0 turns the crop off.
    pub crop_padding: i64,
    /// Random horizontal flip with probability ½.
    pub flip: bool,
    /// ColorJitter brightness: each image is scaled by a factor drawn
    /// uniformly from [max(0, 1 − b), 1 + b], then clamped to [0, 1]; 0
    /// turns it off.
    pub brightness: f64,
    /// Per-channel normalisation (RGB) applied to pixel / 255.
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// Training: `RandomResizedCrop(size)` with scale (0.08, 1) and ratio
    /// (3/4, 4/3) instead of the padded crop.
    pub random_resized_crop: Option<i64>,
    /// Evaluation: the central `size x size` window (`CenterCrop(size)`).
    pub center_crop: Option<i64>,
}

impl AugmentSpec {
    /// A's CIFAR-100 pipeline: RandomCrop(32, pad 4), flip,
    /// ColorJitter(brightness 63/255), PODNet's statistics.
    pub fn cifar_podnet() -> Self {
        AugmentSpec {
            crop_padding: 4,
            flip: true,
            brightness: 63.0 / 255.0,
            mean: [0.5071, 0.4867, 0.4408],
            std: [0.2675, 0.2565, 0.2761],
            random_resized_crop: None,
            center_crop: None,
        }
    }

    /// L's CIFAR-100 pipeline: RandomCrop(32, pad 4), flip, no colour
    /// jitter, LUCIR's statistics (its std is not the usual one).
    pub fn cifar_lucir() -> Self {
        AugmentSpec {
            crop_padding: 4,
            flip: true,
            brightness: 0.0,
            mean: [0.5071, 0.4866, 0.4409],
            std: [0.2009, 0.1984, 0.2023],
            random_resized_crop: None,
            center_crop: None,
        }
    }

    /// ImageNet: RandomResizedCrop(224) and flip for training, the central
    /// 224 window for evaluation, ImageNet statistics. The prepared images
    /// are whole, resized to a short side of 256, so the random crop sees
    /// the whole field of view and the centre crop completes torchvision's
    /// Resize(256) + CenterCrop(224).
    /// No colour jitter, as in L (PODNet's: [`AugmentSpec::imagenet_podnet`]).
    pub fn imagenet() -> Self {
        AugmentSpec {
            crop_padding: 0,
            flip: true,
            brightness: 0.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            random_resized_crop: Some(i64::from(bsce_pipeline::params::IMAGENET_CROP)),
            center_crop: Some(i64::from(bsce_pipeline::params::IMAGENET_CROP)),
        }
    }

    /// PODNet's ImageNet pipeline: [`AugmentSpec::imagenet`] with A's
    /// `color_jitter: true` (`podnet_cnn_imagenet{100,1000}.yaml`), i.e.
    /// ColorJitter(brightness 63/255) after the crop and flip.
    pub fn imagenet_podnet() -> Self {
        AugmentSpec {
            brightness: 63.0 / 255.0,
            ..AugmentSpec::imagenet()
        }
    }

    /// Checks the spec against the dataset's images, once, before
    /// training, so that [`load`] can assume it.
    pub fn validate(&self, shape: Shape) -> Result<()> {
        let bad =
            |key: &str, message: String| Err(StageError::param(format!("augment.{key}"), message));
        if shape.channels != 3 {
            return bad(
                "mean",
                format!(
                    "the dataset has {} channels; mean and std are given for 3 (RGB)",
                    shape.channels
                ),
            );
        }
        if self.crop_padding < 0 {
            return bad(
                "crop_padding",
                format!("is {}; expected 0 or more", self.crop_padding),
            );
        }
        if !(0.0..=1.0).contains(&self.brightness) {
            return bad(
                "brightness",
                format!("is {}; expected a value in [0, 1]", self.brightness),
            );
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad("std", format!("holds {s}; expected finite values above 0"));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return bad("mean", format!("holds {m}; expected finite values"));
        }
        match self.random_resized_crop {
            Some(size) => {
                if size < 1 {
                    return bad(
                        "random_resized_crop",
                        format!("is {size}; expected at least 1"),
                    );
                }
                if self.crop_padding > 0 {
                    return bad(
                        "crop_padding",
                        format!(
                            "is {} while random_resized_crop is set; a training crop is one or the other",
                            self.crop_padding
                        ),
                    );
                }
                if self.center_crop.is_none() {
                    return bad(
                        "center_crop",
                        "is unset while random_resized_crop is set; evaluation needs a \
                         crop of that size"
                            .into(),
                    );
                }
            }
            None if shape.uniform.is_none() => {
                return bad(
                    "random_resized_crop",
                    "is unset, but the dataset's images have their own sizes (an image \
                     folder prepared whole); a padded crop needs one size (`augment: cifar`)"
                        .into(),
                );
            }
            None => {}
        }
        if let Some(size) = self.center_crop {
            if size < 1 || size > shape.short_side {
                return bad(
                    "center_crop",
                    format!(
                        "is {size}; expected 1..={0} (the images' short side is {0})",
                        shape.short_side
                    ),
                );
            }
        }
        Ok(())
    }
}

/// What [`AugmentSpec::validate`] checks a spec against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub channels: i64,
    /// The shortest side of any image.
    pub short_side: i64,
    /// (height, width) of every image, when they share one.
    pub uniform: Option<(i64, i64)>,
}

impl Shape {
    pub fn of(meta: &DatasetMeta) -> Shape {
        let (h, w) = (i64::from(meta.height), i64::from(meta.width));
        Shape {
            channels: i64::from(meta.channels),
            short_side: h.min(w),
            uniform: (!meta.aspect_kept).then_some((h, w)),
        }
    }
    pub fn fixed(h: i64, w: i64, c: i64) -> Shape {
        Shape {
            channels: c,
            short_side: h.min(w),
            uniform: Some((h, w)),
        }
    }
}

/// One normalised f32 [B, 3, H, W] batch of the images at `indices`, on
/// `device`: augmented when `train` (drawn from `seed`: same seed, same
/// batch, on any device), else only centre-cropped (if the spec says so)
/// and normalised. The spec must have passed [`AugmentSpec::validate`]
/// for these images.
pub fn load(
    images: SplitImages<'_>,
    indices: &[usize],
    spec: &AugmentSpec,
    train: bool,
    seed: u64,
    device: Device,
) -> Tensor {
    load_drawn(images, indices, spec, train, seed, device).0
}

/// [`load`], with each sample's draws (for `bsce-torch crops`); draws are
/// empty for the CIFAR-style path and for evaluation.
pub fn load_drawn(
    images: SplitImages<'_>,
    indices: &[usize],
    spec: &AugmentSpec,
    train: bool,
    seed: u64,
    device: Device,
) -> (Tensor, Vec<SampleDraw>) {
    if spec.random_resized_crop.is_none() {
        let (h, w) = images
            .uniform_size()
            .expect("a padded crop reads images of one size (validated)");
        let batch = gather(images.bytes(), (h as i64, w as i64, 3), indices, device);
        return (augment(&batch, spec, train, seed), Vec::new());
    }
    let b = indices.len() as i64;
    let (out, draws, side) = crop_on_cpu(images, indices, spec, train, seed);
    let x = Tensor::from_slice(&out)
        .view([b, side as i64, side as i64, 3])
        .to_device(device)
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 255.0;
    let x = jitter(x, spec, &draws, train);
    (normalise(x, spec), draws)
}

/// The CPU half of the ImageNet-style path: each sample's drawn window
/// resized to `random_resized_crop` and flipped where drawn (training), or
/// its centre `center_crop` window (evaluation). Returns RGB bytes one
/// sample after another, the draws (empty in evaluation) and the side.
pub fn crop_on_cpu(
    images: SplitImages<'_>,
    indices: &[usize],
    spec: &AugmentSpec,
    train: bool,
    seed: u64,
) -> (Vec<u8>, Vec<SampleDraw>, usize) {
    if train {
        let size = spec.random_resized_crop.expect("an ImageNet-style spec") as usize;
        let draws = draw_params(
            spec,
            |k| {
                let (_, h, w) = images.image(indices[k]);
                (h as i64, w as i64)
            },
            indices.len() as i64,
            seed,
        );
        (resized_crops(images, indices, &draws, size), draws, size)
    } else {
        let size = spec.center_crop.expect("validated") as usize;
        (centre_crops(images, indices, size), Vec::new(), size)
    }
}

/// Each sample's window resized to `size x size` (flipped where drawn),
/// RGB bytes one sample after another.
fn resized_crops(
    images: SplitImages<'_>,
    indices: &[usize],
    draws: &[SampleDraw],
    size: usize,
) -> Vec<u8> {
    let per = size * size * 3;
    let mut out = vec![0u8; indices.len() * per];
    out.par_chunks_mut(per)
        .zip(indices.par_iter().zip(draws))
        .for_each_init(Resampler::default, |r, (dst, (&i, d))| {
            let (src, h, w) = images.image(i);
            r.resize(
                src,
                w,
                h,
                Axis::window(d.left as usize, d.width as usize, size),
                Axis::window(d.top as usize, d.height as usize, size),
                dst,
            );
            if d.flip {
                for row in dst.chunks_exact_mut(size * 3) {
                    mirror_row(row);
                }
            }
        });
    out
}

/// The central `size x size` window of each image (torchvision's
/// CenterCrop), RGB bytes one sample after another.
fn centre_crops(images: SplitImages<'_>, indices: &[usize], size: usize) -> Vec<u8> {
    let per = size * size * 3;
    let mut out = vec![0u8; indices.len() * per];
    out.par_chunks_mut(per)
        .zip(indices.par_iter())
        .for_each(|(dst, &i)| {
            let (src, h, w) = images.image(i);
            let (top, left) = (centre_offset(h, size), centre_offset(w, size));
            for (y, row) in dst.chunks_exact_mut(size * 3).enumerate() {
                let at = ((top + y) * w + left) * 3;
                row.copy_from_slice(&src[at..at + size * 3]);
            }
        });
    out
}

fn mirror_row(row: &mut [u8]) {
    let n = row.len() / 3;
    for k in 0..n / 2 {
        for c in 0..3 {
            row.swap(3 * k + c, 3 * (n - 1 - k) + c);
        }
    }
}

/// Copies the images at `indices` (NHWC u8 in `images`, each
/// `meta_hwc = (H, W, C)`) into one u8 [B, C, H, W] tensor on `device`.
/// Only the selected images are copied, with one host-to-device transfer;
/// the NHWC -> NCHW transpose runs on the device.
///
/// Panics on an index past the end of `images`: indices come from the
/// stage's own split bookkeeping, so that is a bug, not bad input.
pub fn gather(
    images: &[u8],
    meta_hwc: (i64, i64, i64),
    indices: &[usize],
    device: Device,
) -> Tensor {
    let (h, w, c) = meta_hwc;
    let size = (h * w * c) as usize;
    let count = images.len() / size;
    let mut batch = Vec::with_capacity(indices.len() * size);
    for &i in indices {
        assert!(
            i < count,
            "image index {i} is out of range; the split holds {count} images"
        );
        batch.extend_from_slice(&images[i * size..(i + 1) * size]);
    }
    Tensor::from_slice(&batch)
        .view([indices.len() as i64, h, w, c])
        .to_device(device)
        .permute([0, 3, 1, 2])
        .contiguous()
}

/// The horizontal mirror of an NCHW batch (A's RandomHorizontalFlip(p=1)
/// for NME's flipped features). It commutes with [`load`]'s
/// normalisation and centre crop, so it may be applied to either side.
pub fn flip_horizontal(x: &Tensor) -> Tensor {
    x.flip([3])
}

/// The CIFAR-style path: turns a u8 [B, C, H, W] batch of one image size
/// into normalised f32 NCHW on the same device. `train` applies the
/// padded crop, the flip and the brightness, drawn from `gen_seed`;
/// otherwise only the centre crop, if any, and the normalisation, and
/// `gen_seed` is unused.
///
/// Per sample, in order: the crop, the flip, the brightness factor. That
/// order of draws is part of what a seed means (the ImageNet-style path
/// draws the same way). The brightness is applied in float and not rounded
/// back to u8 (below a grey level from torchvision's PIL path).
pub fn augment(batch: &Tensor, spec: &AugmentSpec, train: bool, gen_seed: u64) -> Tensor {
    assert!(
        spec.random_resized_crop.is_none(),
        "a random-resized crop is cut on the CPU: use load"
    );
    let (b, _, h, w) = batch
        .size4()
        .expect("augment takes a u8 batch [B, C, H, W]");
    let mut x = batch.to_kind(Kind::Float) / 255.0;
    if train {
        let draws = draw_params(spec, |_| (h, w), b, gen_seed);
        if spec.crop_padding > 0 || spec.flip {
            x = padded_crop(&x, &draws, spec.crop_padding);
        }
        x = jitter(x, spec, &draws, true);
    } else if let Some(size) = spec.center_crop {
        let top = centre_offset(h as usize, size as usize) as i64;
        let left = centre_offset(w as usize, size as usize) as i64;
        x = x.narrow(2, top, size).narrow(3, left, size);
    }
    normalise(x, spec)
}

/// The drawn brightness factors, in training.
fn jitter(x: Tensor, spec: &AugmentSpec, draws: &[SampleDraw], train: bool) -> Tensor {
    if !(train && spec.brightness > 0.0) {
        return x;
    }
    let factors: Vec<f32> = draws.iter().map(|d| d.brightness as f32).collect();
    let factors = Tensor::from_slice(&factors)
        .view([draws.len() as i64, 1, 1, 1])
        .to_device(x.device());
    (x * factors).clamp(0.0, 1.0)
}

fn normalise(x: Tensor, spec: &AugmentSpec) -> Tensor {
    let (device, c) = (x.device(), x.size()[1]);
    let stats = |v: [f64; 3]| {
        Tensor::from_slice(&v.map(|s| s as f32))
            .view([1, c, 1, 1])
            .to_device(device)
    };
    ((x - stats(spec.mean)) / stats(spec.std)).contiguous()
}

/// One sample's random augmentation parameters. For the padded crop the
/// window is in padded coordinates; for the random-resized crop it is in
/// the image.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SampleDraw {
    pub top: i64,
    pub left: i64,
    pub height: i64,
    pub width: i64,
    pub flip: bool,
    pub brightness: f64,
}

/// Sample k's draws, for an image of `dims(k)` = (height, width).
fn draw_params(
    spec: &AugmentSpec,
    dims: impl Fn(usize) -> (i64, i64),
    b: i64,
    seed: u64,
) -> Vec<SampleDraw> {
    let mut rng = SplitMix64::new(seed);
    (0..b as usize)
        .map(|k| {
            let (h, w) = dims(k);
            let (top, left, height, width) = match spec.random_resized_crop {
                Some(_) => random_resized_window(&mut rng, h, w),
                None => {
                    let span = 2 * spec.crop_padding as u64 + 1;
                    let top = rng.below(span) as i64;
                    (top, rng.below(span) as i64, h, w)
                }
            };
            let flip = spec.flip && rng.below(2) == 1;
            let brightness = if spec.brightness > 0.0 {
                let lo = (1.0 - spec.brightness).max(0.0);
                lo + (1.0 + spec.brightness - lo) * rng.unit()
            } else {
                1.0
            };
            SampleDraw {
                top,
                left,
                height,
                width,
                flip,
                brightness,
            }
        })
        .collect()
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.08, 1) and
/// ratio (3/4, 4/3): ten tries at a window of random area and log-uniform
/// aspect ratio, else the largest central window within the ratio range.
fn random_resized_window(rng: &mut SplitMix64, h: i64, w: i64) -> (i64, i64, i64, i64) {
    const SCALE: (f64, f64) = (0.08, 1.0);
    const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (RATIO.0.ln(), RATIO.1.ln());
    for _ in 0..10 {
        let target = area * (SCALE.0 + (SCALE.1 - SCALE.0) * rng.unit());
        let aspect = (log_lo + (log_hi - log_lo) * rng.unit()).exp();
        // Python's round() is round-half-to-even.
        let cw = (target * aspect).sqrt().round_ties_even() as i64;
        let ch = (target / aspect).sqrt().round_ties_even() as i64;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as i64;
            let left = rng.below((w - cw + 1) as u64) as i64;
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < RATIO.0 {
        ((w as f64 / RATIO.0).round_ties_even() as i64, w)
    } else if in_ratio > RATIO.1 {
        (h, (h as f64 * RATIO.1).round_ties_even() as i64)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Pads with zeros (black, before normalisation, as PIL pads), then takes
/// each sample's window with two gathers; a flip reverses the column
/// index, so crop and flip cost one pass.
fn padded_crop(x: &Tensor, draws: &[SampleDraw], pad: i64) -> Tensor {
    let (b, c, h, w) = x.size4().expect("an NCHW batch");
    let device = x.device();
    let mut params = Vec::with_capacity(3 * draws.len());
    params.extend(draws.iter().map(|d| d.top));
    params.extend(draws.iter().map(|d| d.left));
    params.extend(draws.iter().map(|d| d.flip as i64));
    let params = Tensor::from_slice(&params)
        .view([3, b, 1])
        .to_device(device);
    let (top, left, flip) = (params.get(0), params.get(1), params.get(2));
    let padded = if pad > 0 {
        x.constant_pad_nd([pad, pad, pad, pad])
    } else {
        x.shallow_clone()
    };
    let rows_x = if pad > 0 {
        let rows = top + Tensor::arange(h, (Kind::Int64, device)).view([1, h]);
        padded.gather(
            2,
            &rows
                .view([b, 1, h, 1])
                .expand([b, c, h, w + 2 * pad], false),
            false,
        )
    } else {
        padded
    };
    let ar = Tensor::arange(w, (Kind::Int64, device)).view([1, w]);
    // A flipped sample reads column w-1-k of its window for column k.
    let to_mirror: Tensor = &ar * -2 + (w - 1);
    let cols: Tensor = left + &ar + flip * to_mirror;
    rows_x.gather(
        3,
        &cols.view([b, 1, 1, w]).expand([b, c, h, w], false),
        false,
    )
}

/// One training batch: dataset indices, their labels (i64, ready for a
/// loss), and the seed for [`augment`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Batch<'a> {
    pub indices: &'a [usize],
    pub labels: &'a [i64],
    pub augment_seed: u64,
}

/// Epochs over a fixed list of (dataset index, label) samples: each epoch
/// is a fresh shuffle of that list, cut into `batch_size` batches.
///
/// An epoch's order and its batches' augmentation seeds are a function of
/// (seed, epoch) only, so a run resumed at epoch e sees the batches an
/// uninterrupted run would. The last, partial batch is kept (torch's
/// `drop_last=False`, which A and L use), except that a single leftover
/// sample joins the batch before it: BatchNorm rejects a training batch of
/// one. Every sample is thus seen exactly once per epoch.
#[derive(Clone, Debug)]
pub struct Batches {
    samples: Vec<(usize, i64)>,
    batch_size: usize,
    seed: u64,
    indices: Vec<usize>,
    labels: Vec<i64>,
}

impl Batches {
    pub fn new(samples: Vec<(usize, i64)>, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(StageError::param("batch_size", "is 0; expected at least 1"));
        }
        Ok(Batches {
            indices: Vec::with_capacity(samples.len()),
            labels: Vec::with_capacity(samples.len()),
            samples,
            batch_size,
            seed,
        })
    }

    pub fn batches_per_epoch(&self) -> usize {
        let n = self.samples.len();
        if n % self.batch_size == 1 && n > 1 {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The batches of epoch `epoch` (any order of calls; epochs are
    /// independent).
    pub fn epoch(&mut self, epoch: u64) -> impl ExactSizeIterator<Item = Batch<'_>> + '_ {
        let epoch_seed = substream(self.seed, epoch);
        let mut order = self.samples.clone();
        SplitMix64::new(substream(epoch_seed, 0)).shuffle(&mut order);
        self.indices.clear();
        self.labels.clear();
        self.indices.extend(order.iter().map(|s| s.0));
        self.labels.extend(order.iter().map(|s| s.1));
        let count = self.batches_per_epoch();
        let (size, n) = (self.batch_size, self.samples.len());
        let (indices, labels) = (&self.indices, &self.labels);
        (0..count).map(move |k| {
            let start = k * size;
            let end = if k + 1 == count { n } else { start + size };
            Batch {
                indices: &indices[start..end],
                labels: &labels[start..end],
                augment_seed: substream(epoch_seed, k as u64 + 1),
            }
        })
    }
}

/// An independent seed for stream `k` of `seed` (an epoch of a run, a
/// batch of an epoch): both pass through the SplitMix64 finaliser, so
/// neighbouring seeds and streams give unrelated sequences.
pub(crate) fn substream(seed: u64, k: u64) -> u64 {
    mix64(seed ^ mix64(k.wrapping_add(GOLDEN_GAMMA)))
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", 2014). Our own, not `rand`'s, because the numbers it draws
/// are part of what a seed reproduces and must not change with a
/// dependency upgrade.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) by multiply-shift; the bias, below n / 2^64, is
    /// far under anything a training run can detect.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Fisher–Yates.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use bsce_stages::dataset::artefact::{offsets_of, Dataset, MappedDataset, Split, SplitName};

    use super::*;

    /// Mean 0, std 1: the output is pixel / 255, easy to compare with bytes.
    fn plain() -> AugmentSpec {
        AugmentSpec {
            crop_padding: 0,
            flip: false,
            brightness: 0.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            random_resized_crop: None,
            center_crop: None,
        }
    }

    /// `b` images of `h x w x 3` whose bytes all differ within an image.
    fn pattern(b: usize, h: usize, w: usize) -> Vec<u8> {
        (0..b * h * w * 3)
            .map(|i| (i * 7 % 251) as u8 + 1)
            .collect()
    }

    fn floats(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap()
    }

    fn bytes(t: &Tensor) -> Vec<u8> {
        Vec::<u8>::try_from(t.reshape([-1])).unwrap()
    }

    #[test]
    fn gather_copies_exactly_the_chosen_images_from_the_mapped_split() {
        let (h, w) = (3usize, 2usize);
        let dir = tempfile::tempdir().unwrap();
        Dataset {
            source_format: "synthetic".into(),
            height: h as u32,
            width: w as u32,
            channels: 3,
            classes: vec!["a".into(), "b".into()],
            train: Split {
                images: pattern(5, h, w),
                labels: vec![0, 1, 0, 1, 0],
            },
            test: Split {
                images: pattern(1, h, w),
                labels: vec![1],
            },
        }
        .write(dir.path())
        .unwrap();
        let ds = MappedDataset::open(dir.path()).unwrap();
        let size = h * w * 3;
        let picked = [3, 0, 3, 4];
        let t = gather(
            ds.images(SplitName::Train).bytes(),
            (h as i64, w as i64, 3),
            &picked,
            Device::Cpu,
        );
        assert_eq!(t.size(), vec![4, 3, h as i64, w as i64]);
        assert_eq!(t.kind(), Kind::Uint8);
        let back = bytes(&t.permute([0, 2, 3, 1]).contiguous());
        for (k, &i) in picked.iter().enumerate() {
            assert_eq!(
                &back[k * size..(k + 1) * size],
                &ds.images(SplitName::Train).bytes()[i * size..(i + 1) * size]
            );
        }
        // Channel-major layout: [k][c][y][x] is byte ((y * w + x) * 3 + c).
        let nchw = bytes(&t);
        assert_eq!(
            nchw[h * w + 1],
            ds.images(SplitName::Train).bytes()[3 * size + 3 + 1]
        );
    }

    #[test]
    #[should_panic(expected = "image index 5 is out of range; the split holds 5 images")]
    fn gather_rejects_an_index_past_the_end() {
        let _ = gather(&pattern(5, 2, 2), (2, 2, 3), &[5], Device::Cpu);
    }

    #[test]
    fn normalisation_uses_the_spec_statistics() {
        let spec = AugmentSpec::cifar_podnet();
        // One 1x1 image per value; channels hold 0, 51 and 255.
        let batch = Tensor::from_slice(&[0u8, 51, 255]).view([1, 3, 1, 1]);
        let out = floats(&augment(&batch, &spec, false, 0));
        let expected = [
            (0.0 - 0.5071) / 0.2675,
            (0.2 - 0.4867) / 0.2565,
            (1.0 - 0.4408) / 0.2761,
        ];
        for (o, e) in out.iter().zip(expected) {
            assert!((*o as f64 - e).abs() < 1e-5, "{o} vs {e}");
        }
        let lucir = floats(&augment(&batch, &AugmentSpec::cifar_lucir(), false, 0));
        assert!((lucir[2] as f64 - (1.0 - 0.4409) / 0.2023).abs() < 1e-5);
    }

    #[test]
    fn evaluation_is_deterministic_and_only_normalises_or_centre_crops() {
        let (b, h, w) = (4, 8, 8);
        let batch = gather(
            &pattern(b, h, w),
            (h as i64, w as i64, 3),
            &[0, 1, 2, 3],
            Device::Cpu,
        );
        let spec = AugmentSpec {
            crop_padding: 4,
            flip: true,
            brightness: 0.5,
            ..plain()
        };
        let a = augment(&batch, &spec, false, 1);
        assert_eq!(a, augment(&batch, &spec, false, 2));
        assert_eq!(a, batch.to_kind(Kind::Float) / 255.0);

        // 8 -> 5 leaves 3: torchvision rounds 1.5 to 2 (half to even).
        let centre = AugmentSpec {
            center_crop: Some(5),
            ..plain()
        };
        let c = augment(&batch, &centre, false, 9);
        assert_eq!(c.size(), vec![4, 3, 5, 5]);
        let expected = (batch.to_kind(Kind::Float) / 255.0)
            .narrow(2, 2, 5)
            .narrow(3, 2, 5);
        assert_eq!(c, expected);
        assert_eq!(centre_offset(256, 224), 16);
        assert_eq!(centre_offset(7, 4), 2);
        assert_eq!(centre_offset(9, 4), 2);
    }

    #[test]
    fn padded_crop_moves_content_by_the_drawn_offset() {
        let (b, h, w, pad) = (16i64, 6i64, 5i64, 2i64);
        let src = pattern(b as usize, h as usize, w as usize);
        let batch = gather(
            &src,
            (h, w, 3),
            &(0..b as usize).collect::<Vec<_>>(),
            Device::Cpu,
        );
        let spec = AugmentSpec {
            crop_padding: pad,
            ..plain()
        };
        let out = augment(&batch, &spec, true, 42);
        assert_eq!(out.size(), vec![b, 3, h, w]);
        let out = floats(&out);
        let draws = draw_params(&spec, |_| (h, w), b, 42);
        assert!(
            draws.iter().any(|d| d.top != pad || d.left != pad),
            "all centred"
        );
        for (k, d) in draws.iter().enumerate() {
            assert!((0..=2 * pad).contains(&d.top) && (0..=2 * pad).contains(&d.left));
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let (sy, sx) = (y + d.top - pad, x + d.left - pad);
                        let expected = if (0..h).contains(&sy) && (0..w).contains(&sx) {
                            src[(((k as i64 * h + sy) * w + sx) * 3 + c) as usize] as f32 / 255.0
                        } else {
                            0.0
                        };
                        let got = out[(((k as i64 * 3 + c) * h + y) * w + x) as usize];
                        assert_eq!(got, expected, "sample {k} c {c} y {y} x {x} draw {d:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn flips_are_exact_mirrors() {
        let (b, h, w) = (32i64, 3i64, 4i64);
        let batch = gather(
            &pattern(b as usize, 3, 4),
            (h, w, 3),
            &(0..32).collect::<Vec<_>>(),
            Device::Cpu,
        );
        let x = batch.to_kind(Kind::Float) / 255.0;
        let mirrored = flip_horizontal(&x);
        for col in 0..w {
            assert_eq!(mirrored.narrow(3, col, 1), x.narrow(3, w - 1 - col, 1));
        }
        let spec = AugmentSpec {
            flip: true,
            ..plain()
        };
        let out = augment(&batch, &spec, true, 5);
        let draws = draw_params(&spec, |_| (h, w), b, 5);
        let flipped = draws.iter().filter(|d| d.flip).count();
        assert!(flipped > 0 && flipped < 32, "{flipped} of 32 flipped");
        for (k, d) in draws.iter().enumerate() {
            let want = if d.flip {
                mirrored.get(k as i64)
            } else {
                x.get(k as i64)
            };
            assert_eq!(out.get(k as i64), want, "sample {k}");
        }
    }

    #[test]
    fn brightness_scales_each_image_within_the_range_and_clamps() {
        let b = 64;
        let mut src = vec![128u8; b * 2 * 2 * 3];
        // The second half is white, so a factor above 1 must clamp.
        src[b * 6..].fill(255);
        let batch = gather(&src, (2, 2, 3), &(0..b).collect::<Vec<_>>(), Device::Cpu);
        let spec = AugmentSpec {
            brightness: 63.0 / 255.0,
            ..plain()
        };
        let out = augment(&batch, &spec, true, 3);
        let draws = draw_params(&spec, |_| (2, 2), b as i64, 3);
        let (lo, hi) = (1.0 - 63.0 / 255.0, 1.0 + 63.0 / 255.0);
        assert!(draws.iter().all(|d| (lo..hi).contains(&d.brightness)));
        assert!(
            draws.iter().any(|d| d.brightness < 1.0) && draws.iter().any(|d| d.brightness > 1.0)
        );
        for (k, d) in draws.iter().enumerate() {
            let px = if k < b / 2 { 128.0 / 255.0 } else { 1.0 };
            let expected = (px * d.brightness).min(1.0) as f32;
            let got = floats(&out.get(k as i64));
            assert!(
                got.iter().all(|g| (g - expected).abs() < 1e-6),
                "{got:?} vs {expected}"
            );
        }
    }

    #[test]
    fn the_seed_decides_the_augmentation() {
        let (b, h, w) = (8i64, 32i64, 32i64);
        let batch = gather(
            &pattern(8, 32, 32),
            (h, w, 3),
            &(0..8).collect::<Vec<_>>(),
            Device::Cpu,
        );
        for spec in [AugmentSpec::cifar_podnet(), AugmentSpec::cifar_lucir()] {
            let a = augment(&batch, &spec, true, 11);
            assert_eq!(a.size(), vec![b, 3, h, w]);
            assert_eq!(a.kind(), Kind::Float);
            assert_eq!(a, augment(&batch, &spec, true, 11));
            assert_ne!(a, augment(&batch, &spec, true, 12));
        }
    }

    #[test]
    fn random_resized_windows_follow_torchvision_bounds() {
        let mut rng = SplitMix64::new(0);
        let mut full_windows = 0;
        for _ in 0..2000 {
            let (top, left, ch, cw) = random_resized_window(&mut rng, 256, 256);
            assert!(ch >= 1 && cw >= 1 && top + ch <= 256 && left + cw <= 256);
            let area = (ch * cw) as f64 / (256.0 * 256.0);
            let ratio = cw as f64 / ch as f64;
            // Rounding the sides moves area and ratio a little past the
            // drawn range.
            assert!((0.07..=1.0).contains(&area), "area {area}");
            assert!((0.74..=1.34).contains(&ratio), "ratio {ratio}");
            if (ch, cw) == (256, 256) {
                full_windows += 1;
            }
        }
        assert!(full_windows < 20, "{full_windows} full-image windows");
        // A strip so thin that no drawn window fits falls back to its
        // central part at the nearest allowed ratio, 4:3 or 3:4.
        let mut rng = SplitMix64::new(1);
        assert_eq!(random_resized_window(&mut rng, 4, 400), (0, 197, 4, 5));
        assert_eq!(random_resized_window(&mut rng, 400, 4), (197, 0, 5, 4));
    }

    /// Images of their own sizes, in memory: image k's pixel (y, x) holds
    /// (x, y, k) (mod 256), so a crop tells where it came from.
    fn whole_images(sizes: &[(u16, u16)]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        for (k, &(h, w)) in sizes.iter().enumerate() {
            for y in 0..h as usize {
                for x in 0..w as usize {
                    bytes.extend([x as u8, y as u8, k as u8]);
                }
            }
        }
        (bytes, offsets_of(sizes))
    }

    #[test]
    fn imagenet_evaluation_is_the_centre_window_of_each_image() {
        let sizes = [(30u16, 40u16), (40, 30), (30, 30)];
        let (bytes, offsets) = whole_images(&sizes);
        let images = SplitImages::new(&bytes, &sizes, &offsets);
        let spec = AugmentSpec {
            random_resized_crop: Some(20),
            center_crop: Some(20),
            ..plain()
        };
        let x = load(images, &[0, 1, 2], &spec, false, 7, Device::Cpu) * 255.0;
        assert_eq!(x.size(), vec![3, 3, 20, 20]);
        // torchvision's offsets: round(10 / 2) = 5 each way; round(20/2)=10.
        for (k, (top, left)) in [(5i64, 10i64), (10, 5), (5, 5)].into_iter().enumerate() {
            let px = |c: i64, y: i64, col: i64| x_at(&x, k as i64, c, y, col);
            assert_eq!(
                (px(0, 0, 0), px(1, 0, 0), px(2, 0, 0)),
                (left, top, k as i64)
            );
            assert_eq!((px(0, 19, 19), px(1, 19, 19)), (left + 19, top + 19));
        }
    }

    fn x_at(x: &Tensor, k: i64, c: i64, y: i64, col: i64) -> i64 {
        x.double_value(&[k, c, y, col]).round() as i64
    }

    #[test]
    fn imagenet_training_crops_come_from_anywhere_in_the_whole_image() {
        // Wide images: the left and right margins a centre square would
        // drop are drawn from too, at torchvision's scale and ratio.
        let sizes = [(32u16, 96u16); 4];
        let (bytes, offsets) = whole_images(&sizes);
        let images = SplitImages::new(&bytes, &sizes, &offsets);
        let spec = AugmentSpec {
            random_resized_crop: Some(16),
            center_crop: Some(16),
            flip: true,
            ..plain()
        };
        let mut reached = [false; 96];
        let mut flips = 0;
        for seed in 0..200 {
            let (x, draws) = load_drawn(images, &[0, 1, 2, 3], &spec, true, seed, Device::Cpu);
            assert_eq!(x.size(), vec![4, 3, 16, 16]);
            for (k, d) in draws.iter().enumerate() {
                assert!(d.left >= 0 && d.left + d.width <= 96 && d.top + d.height <= 32);
                let area = (d.height * d.width) as f64 / (32.0 * 96.0);
                assert!((0.07..=1.0).contains(&area), "{d:?}");
                reached[d.left as usize..(d.left + d.width) as usize].fill(true);
                // The crop's first column comes from the window's left edge
                // (its right edge when flipped): column values are x.
                let first = x.double_value(&[k as i64, 0, 8, 0]) * 255.0;
                let edge = if d.flip { d.left + d.width - 1 } else { d.left } as f64;
                assert!(
                    (first - edge).abs() <= d.width as f64 / 16.0 + 1.0,
                    "{d:?}: {first}"
                );
                flips += d.flip as usize;
            }
            assert_eq!(
                x,
                load(images, &[0, 1, 2, 3], &spec, true, seed, Device::Cpu)
            );
        }
        assert!(
            reached.iter().all(|&r| r),
            "columns never drawn: {reached:?}"
        );
        assert!((300..500).contains(&flips), "{flips} flips of 800");
    }

    #[test]
    fn validate_names_the_offending_field() {
        let hwc = Shape::fixed(32, 32, 3);
        let whole = Shape {
            channels: 3,
            short_side: 256,
            uniform: None,
        };
        assert!(AugmentSpec::cifar_podnet().validate(hwc).is_ok());
        assert!(AugmentSpec::cifar_lucir().validate(hwc).is_ok());
        assert!(AugmentSpec::imagenet().validate(whole).is_ok());
        let cases = [
            (
                AugmentSpec {
                    crop_padding: -1,
                    ..plain()
                },
                hwc,
                "augment.crop_padding",
            ),
            (
                AugmentSpec {
                    brightness: 1.5,
                    ..plain()
                },
                hwc,
                "augment.brightness",
            ),
            (
                AugmentSpec {
                    std: [0.2, 0.0, 0.2],
                    ..plain()
                },
                hwc,
                "augment.std",
            ),
            (
                AugmentSpec {
                    center_crop: Some(33),
                    ..plain()
                },
                hwc,
                "augment.center_crop",
            ),
            (
                AugmentSpec {
                    crop_padding: 4,
                    random_resized_crop: Some(24),
                    ..plain()
                },
                hwc,
                "augment.crop_padding",
            ),
            (plain(), Shape::fixed(32, 32, 1), "augment.mean"),
            // A padded crop needs images of one size.
            (
                AugmentSpec::cifar_lucir(),
                whole,
                "augment.random_resized_crop",
            ),
            (
                AugmentSpec {
                    center_crop: None,
                    ..AugmentSpec::imagenet()
                },
                whole,
                "augment.center_crop",
            ),
        ];
        for (spec, hwc, key) in cases {
            let err = spec.validate(hwc).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn spec_round_trips_through_json_and_rejects_unknown_fields() {
        let spec = AugmentSpec::imagenet();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<AugmentSpec>(&json).unwrap(), spec);
        let extra = json.replace("\"flip\"", "\"colour_jitter\":1,\"flip\"");
        assert!(serde_json::from_str::<AugmentSpec>(&extra).is_err());
    }

    #[test]
    fn batches_cover_every_sample_once_per_epoch() {
        let samples: Vec<(usize, i64)> = (0..300).map(|i| (i * 3, (i % 7) as i64)).collect();
        let mut batches = Batches::new(samples.clone(), 128, 9).unwrap();
        assert_eq!(batches.batches_per_epoch(), 3);
        let collect = |b: &mut Batches, e| {
            b.epoch(e)
                .map(|batch| {
                    assert_eq!(batch.indices.len(), batch.labels.len());
                    (
                        batch.indices.to_vec(),
                        batch.labels.to_vec(),
                        batch.augment_seed,
                    )
                })
                .collect::<Vec<_>>()
        };
        let first = collect(&mut batches, 0);
        let sizes: Vec<usize> = first.iter().map(|b| b.0.len()).collect();
        assert_eq!(sizes, vec![128, 128, 44]);
        let mut seen: Vec<(usize, i64)> = first
            .iter()
            .flat_map(|(i, l, _)| i.iter().copied().zip(l.iter().copied()))
            .collect();
        assert_ne!(seen, samples, "not shuffled");
        seen.sort_unstable();
        assert_eq!(seen, samples, "labels travel with their indices");

        let second = collect(&mut batches, 1);
        assert_ne!(first[0].0, second[0].0);
        assert_ne!(first[0].2, second[0].2);
        assert_ne!(first[0].2, first[1].2);
        // Epochs depend on (seed, epoch) only, not on what ran before.
        let mut fresh = Batches::new(samples.clone(), 128, 9).unwrap();
        assert_eq!(collect(&mut fresh, 1), second);
        assert_eq!(collect(&mut fresh, 0), first);
        let mut other = Batches::new(samples, 128, 10).unwrap();
        assert_ne!(collect(&mut other, 0), first);
    }

    #[test]
    fn a_single_leftover_sample_joins_the_previous_batch() {
        let samples: Vec<(usize, i64)> = (0..257).map(|i| (i, 0)).collect();
        let mut batches = Batches::new(samples, 128, 0).unwrap();
        let sizes: Vec<usize> = batches.epoch(0).map(|b| b.indices.len()).collect();
        assert_eq!(sizes, vec![128, 129]);
        let mut one = Batches::new(vec![(4, 1)], 128, 0).unwrap();
        let only: Vec<_> = one.epoch(0).map(|b| b.indices.to_vec()).collect();
        assert_eq!(only, vec![vec![4]]);
        let mut none = Batches::new(Vec::new(), 128, 0).unwrap();
        assert_eq!(none.epoch(0).len(), 0);
        assert!(Batches::new(Vec::new(), 0, 0).is_err());
    }
}
