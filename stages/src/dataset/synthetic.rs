//! Deterministic, seeded, class-conditional images for the quickstart and
//! tests: learnable by a tiny CNN on two CPU cores in minutes, but not by
//! shortcuts.
//!
//! Each class has a prototype: two oriented colour gratings (integer wave
//! vectors, so they tile the image) and a colour blob. Each image draws a
//! wrap-around translation of up to a quarter of the image each way; per
//! grating a phase, amplitude and colour wobble and, sometimes, a neighbouring
//! wave vector; a contrast; a per-channel brightness; two distractor gratings
//! of random wave vectors; and per-pixel noise. The class therefore lives in
//! the frequency, orientation and colour mixture of the texture:
//!
//! - every class term has zero mean over the image (gratings by
//!   construction, the blob by subtracting its mean), and the brightness is
//!   drawn independently of the class, so mean colour says nothing;
//! - the translation washes all but the lowest-frequency gratings out of the
//!   class-mean image, so a linear model on raw pixels sees little, while
//!   translation-invariant filter energies (what a small CNN learns) see
//!   everything. The tests measure both with a nearest-class-mean
//!   classifier; with 10 classes of 32 x 32 it scores about 0.1 on mean
//!   colour, 0.2 on raw pixels and 0.85 on Fourier amplitudes (softmax
//!   regression, measured once with 200 images per class: 0.55 on raw pixels, 0.97 on
//!   amplitudes). Some images stay ambiguous, so accuracy does not saturate.
//!
//! Image `i` of a split has label `i % classes`, so every prefix is balanced.
//!
//! The bytes are pinned forever (a test checks their sha256): the generator
//! uses its own SplitMix64 stream per image (never `rand`, whose streams
//! change between versions) and only IEEE-754 operations that are exactly
//! rounded everywhere (`+ - * /`, `sqrt`, `floor`), with a sine written out
//! as a series rather than libm's, whose last bit differs between C
//! libraries. Per-image seeds make the output independent of thread count.

use std::f64::consts::TAU;

use rayon::prelude::*;

use crate::dataset::artefact::{Dataset, Split};
use crate::error::{Result, StageError};

pub const SOURCE_FORMAT: &str = "synthetic";
const CHANNELS: usize = 3;

pub use bsce_pipeline::params::SyntheticSpec;

/// The spec's limits, checked again here: the stage may be given params
/// that no config resolution checked.
fn validate(spec: &SyntheticSpec) -> Result<()> {
    let check = |ok: bool, key: &str, value: u32, expected: &str| {
        if ok {
            Ok(())
        } else {
            Err(StageError::param(
                format!("synthetic.{key}"),
                format!("is {value}; expected {expected}"),
            ))
        }
    };
    let max_classes = u16::MAX as u32;
    check(
        (2..=max_classes).contains(&spec.classes),
        "classes",
        spec.classes,
        &format!("2..={max_classes} (labels are u16)"),
    )?;
    check(
        spec.train_per_class >= 1,
        "train_per_class",
        spec.train_per_class,
        "at least 1",
    )?;
    check(
        spec.test_per_class >= 1,
        "test_per_class",
        spec.test_per_class,
        "at least 1",
    )?;
    check(
        (4..=512).contains(&spec.image_size),
        "image_size",
        spec.image_size,
        "4..=512 pixels",
    )?;
    let per_class = spec.train_per_class.max(spec.test_per_class) as u128;
    let bytes = spec.classes as u128 * per_class * (spec.image_size as u128).pow(2) * 3;
    if bytes > isize::MAX as u128 {
        return Err(StageError::param(
            "synthetic",
            format!("a split of {bytes} bytes cannot be held in memory; lower classes, *_per_class or image_size"),
        ));
    }
    Ok(())
}

pub fn generate(spec: &SyntheticSpec) -> Result<Dataset> {
    validate(spec)?;
    let size = spec.image_size as usize;
    let prototypes: Vec<Prototype> = (0..spec.classes as u64)
        .map(|class| Prototype::draw(derive(derive(spec.seed, STREAM_PROTOTYPE), class), size))
        .collect();
    let render_split = |stream: u64, per_class: u32| {
        let classes = spec.classes as usize;
        let count = classes * per_class as usize;
        let split_seed = derive(spec.seed, stream);
        let mut images = vec![0u8; count * size * size * CHANNELS];
        images
            .par_chunks_mut(size * size * CHANNELS)
            .enumerate()
            .for_each(|(i, out)| {
                let (class, k) = (i % classes, i / classes);
                let seed = derive(derive(split_seed, class as u64), k as u64);
                render(&prototypes[class], size, seed, out);
            });
        Split {
            images,
            labels: (0..count).map(|i| (i % classes) as u16).collect(),
        }
    };
    Ok(Dataset {
        source_format: SOURCE_FORMAT.to_string(),
        height: spec.image_size,
        width: spec.image_size,
        channels: CHANNELS as u32,
        classes: (0..spec.classes).map(|c| format!("class_{c:03}")).collect(),
        train: render_split(STREAM_TRAIN, spec.train_per_class),
        test: render_split(STREAM_TEST, spec.test_per_class),
    })
}

const STREAM_PROTOTYPE: u64 = 0;
const STREAM_TRAIN: u64 = 1;
const STREAM_TEST: u64 = 2;

/// The image model's constants, in units of the full 0..1 pixel range. They
/// keep nearly every value inside 0..1, because clipping would leak a
/// class-dependent bias into the mean colour.
const GRATING_AMPLITUDE: f64 = 0.11;
const BLOB_AMPLITUDE: f64 = 0.2;
const DISTRACTOR_AMPLITUDE: f64 = 0.07;
const WAVE_JITTER_PROBABILITY: f64 = 0.3;
const PHASE_JITTER_TURNS: f64 = 0.08;
const AMPLITUDE_JITTER: (f64, f64) = (0.5, 1.5);
const COLOUR_JITTER: f64 = 0.3;
const CONTRAST: (f64, f64) = (0.6, 1.3);
const BRIGHTNESS: f64 = 0.12;
/// Scales [`SplitMix64::noise`].
const NOISE: f64 = 0.2;

/// A plane wave `sin(2 pi (k . p / size + phase))` with a colour direction.
#[derive(Clone, Copy)]
struct Grating {
    wave: [i64; 2],
    phase: f64,
    amplitude: f64,
    colour: [f64; 3],
}

impl Grating {
    fn draw(rng: &mut SplitMix64, size: usize, amplitude: f64) -> Grating {
        // Integer wave vectors tile the image, so a wrap-around shift only
        // moves the phase and the grating's mean stays exactly zero. One
        // half-plane suffices: -k is k with the phase mirrored.
        let k_max = (size as i64 / 4).clamp(1, 5);
        let wave = loop {
            let kx = rng.below(2 * k_max as u64 + 1) as i64 - k_max;
            let ky = rng.below(k_max as u64 + 1) as i64;
            let norm2 = kx * kx + ky * ky;
            if norm2 >= 1 && norm2 <= k_max * k_max && (ky > 0 || kx > 0) {
                break [kx, ky];
            }
        };
        Grating {
            wave,
            phase: rng.unit(),
            amplitude,
            colour: colour_direction(rng),
        }
    }

    /// This image's version of a class grating: the wave vector sometimes
    /// moves to a neighbour, and phase, amplitude and colour wobble.
    fn vary(&self, rng: &mut SplitMix64) -> Grating {
        let mut wave = self.wave;
        if rng.unit() < WAVE_JITTER_PROBABILITY {
            let axis = rng.below(2) as usize;
            wave[axis] += if rng.below(2) == 0 { -1 } else { 1 };
            if wave == [0, 0] {
                wave = self.wave;
            }
        }
        let mut colour = self.colour;
        for c in &mut colour {
            *c += rng.range(-COLOUR_JITTER, COLOUR_JITTER);
        }
        Grating {
            wave,
            phase: self.phase + rng.range(-PHASE_JITTER_TURNS, PHASE_JITTER_TURNS),
            amplitude: self.amplitude * rng.range(AMPLITUDE_JITTER.0, AMPLITUDE_JITTER.1),
            colour,
        }
    }

    /// The grating times its colour along its wave vector: a pixel `p` of
    /// the image moved by `shift` takes entry `k . (p - shift) mod size`,
    /// so each image evaluates the sine `size` times, not once per pixel.
    fn tabulate(&self, size: usize, table: &mut [[f64; CHANNELS]]) {
        for (j, entry) in table.iter_mut().enumerate() {
            let v = self.amplitude * sin_turns(j as f64 / size as f64 + self.phase);
            *entry = self.colour.map(|c| v * c);
        }
    }

    fn index(&self, p: [i64; 2], shift: [i64; 2], size: i64) -> usize {
        let dot = self.wave[0] * (p[0] - shift[0]) + self.wave[1] * (p[1] - shift[1]);
        dot.rem_euclid(size) as usize
    }
}

/// A smooth bump `(1 - d^2/r^2)^2` on the torus, minus its mean.
struct Blob {
    centre: [f64; 2],
    radius: f64,
    mean: f64,
    colour: [f64; 3],
}

impl Blob {
    fn draw(rng: &mut SplitMix64, size: usize) -> Blob {
        let s = size as f64;
        let mut blob = Blob {
            centre: [rng.unit() * s, rng.unit() * s],
            radius: rng.range(s / 6.0, s / 3.0).max(1.0),
            mean: 0.0,
            colour: colour_direction(rng),
        };
        let mut sum = 0.0;
        for y in 0..size as i64 {
            for x in 0..size as i64 {
                sum += blob.bump([x, y], [0, 0], size as i64);
            }
        }
        blob.mean = sum / (s * s);
        blob
    }

    fn at(&self, p: [i64; 2], shift: [i64; 2], size: i64) -> f64 {
        BLOB_AMPLITUDE * (self.bump(p, shift, size) - self.mean)
    }

    fn bump(&self, p: [i64; 2], shift: [i64; 2], size: i64) -> f64 {
        let s = size as f64;
        let wrapped = |i: usize| {
            let d = (p[i] - shift[i]) as f64 - self.centre[i];
            d - s * (d / s + 0.5).floor()
        };
        let (dx, dy) = (wrapped(0), wrapped(1));
        let t = (dx * dx + dy * dy) / (self.radius * self.radius);
        if t < 1.0 {
            (1.0 - t) * (1.0 - t)
        } else {
            0.0
        }
    }
}

struct Prototype {
    gratings: [Grating; 2],
    blob: Blob,
}

impl Prototype {
    fn draw(seed: u64, size: usize) -> Prototype {
        let mut rng = SplitMix64::new(seed);
        let gratings = [
            Grating::draw(&mut rng, size, GRATING_AMPLITUDE),
            Grating::draw(&mut rng, size, GRATING_AMPLITUDE),
        ];
        Prototype {
            gratings,
            blob: Blob::draw(&mut rng, size),
        }
    }
}

/// A random unit vector in RGB space; short draws are redrawn rather than
/// blown up, which would favour the axes.
fn colour_direction(rng: &mut SplitMix64) -> [f64; 3] {
    loop {
        let c = [
            rng.range(-1.0, 1.0),
            rng.range(-1.0, 1.0),
            rng.range(-1.0, 1.0),
        ];
        let norm = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        if norm > 0.3 {
            return [c[0] / norm, c[1] / norm, c[2] / norm];
        }
    }
}

fn render(proto: &Prototype, size: usize, seed: u64, out: &mut [u8]) {
    let mut rng = SplitMix64::new(seed);
    let s = size as i64;
    let max_shift = s / 4;
    let mut draw_shift = || rng.below(2 * max_shift as u64 + 1) as i64 - max_shift;
    let shift = [draw_shift(), draw_shift()];
    let contrast = rng.range(CONTRAST.0, CONTRAST.1);
    let brightness = [0; 3].map(|_| rng.range(-BRIGHTNESS, BRIGHTNESS));
    let [first, second] = proto.gratings.map(|g| g.vary(&mut rng));
    let gratings = [
        first,
        second,
        Grating::draw(&mut rng, size, DISTRACTOR_AMPLITUDE),
        Grating::draw(&mut rng, size, DISTRACTOR_AMPLITUDE),
    ];
    let mut tables = vec![[0.0; CHANNELS]; gratings.len() * size];
    for (g, table) in gratings.iter().zip(tables.chunks_exact_mut(size)) {
        g.tabulate(size, table);
    }

    for (i, px) in out.chunks_exact_mut(CHANNELS).enumerate() {
        let p = [(i % size) as i64, (i / size) as i64];
        let blob = proto.blob.at(p, shift, s);
        let mut signal = proto.blob.colour.map(|c| blob * c);
        for (g, table) in gratings.iter().zip(tables.chunks_exact(size)) {
            let entry = table[g.index(p, shift, s)];
            for c in 0..CHANNELS {
                signal[c] += entry[c];
            }
        }
        for ((byte, signal), brightness) in px.iter_mut().zip(signal).zip(brightness) {
            let v = 0.5 + brightness + contrast * signal + rng.noise() * NOISE;
            *byte = (v * 255.0 + 0.5).floor().clamp(0.0, 255.0) as u8;
        }
    }
}

/// `sin(2 pi t)` from exactly rounded operations only. The argument is
/// folded into a quarter turn, where the Taylor series to x^19 is accurate
/// to about 1e-15, far below the 1/255 the images are rounded to.
fn sin_turns(t: f64) -> f64 {
    let mut r = t - t.floor();
    if r >= 0.5 {
        r -= 1.0;
    }
    if r > 0.25 {
        r = 0.5 - r;
    } else if r < -0.25 {
        r = -0.5 - r;
    }
    let x = r * TAU;
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    for n in 1..=9 {
        term *= -x2 / ((2 * n) * (2 * n + 1)) as f64;
        sum += term;
    }
    sum
}

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014), with the constants of Vigna's reference code.
/// Its output is fixed by those three constants, which is the point.
struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of child stream `index` of `parent`. Hashing both keeps the
/// streams of neighbouring classes and images unrelated.
fn derive(parent: u64, index: u64) -> u64 {
    mix64(parent ^ mix64(index.wrapping_add(GOLDEN_GAMMA)))
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// A sum of three uniforms on [0, 1) minus 1.5: bell-shaped, standard
    /// deviation 0.5, without a transcendental function. One draw supplies
    /// all three, 21 bits each.
    fn noise(&mut self) -> f64 {
        let r = self.next_u64();
        let part = |shift: u32| ((r >> shift) & 0x1F_FFFF) as f64;
        (part(0) + part(21) + part(42)) * (1.0 / (1u64 << 21) as f64) - 1.5
    }

    /// Uniform in 0..n by multiply-high; the bias, n / 2^64, is immaterial
    /// for the small n used here.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn spec(classes: u32, train: u32, test: u32, size: u32, seed: u64) -> SyntheticSpec {
        SyntheticSpec {
            classes,
            train_per_class: train,
            test_per_class: test,
            image_size: size,
            seed,
        }
    }

    fn sha256(ds: &Dataset) -> String {
        let mut h = Sha256::new();
        for split in [&ds.train, &ds.test] {
            h.update(&split.images);
            for l in &split.labels {
                h.update(l.to_le_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    #[test]
    fn bytes_are_pinned_forever() {
        // If this fails, every cached synthetic artefact and every quickstart
        // number changes: change the generator only on purpose, and then
        // under a new source name.
        let ds = generate(&spec(3, 4, 2, 8, 7)).unwrap();
        assert_eq!(
            sha256(&ds),
            "ec8f2485f9c41720e6eecdb6cf36f0dfb7791a03568ada1d577bf99038431f13"
        );
    }

    #[test]
    fn splitmix64_matches_the_reference_stream() {
        // First outputs of Vigna's splitmix64.c seeded with 0.
        let mut rng = SplitMix64::new(0);
        assert_eq!(
            [rng.next_u64(), rng.next_u64(), rng.next_u64()],
            [
                0xE220_A839_7B1D_CDAF,
                0x6E78_9E6A_A1B9_65F4,
                0x06C4_5D18_8009_454F
            ]
        );
    }

    #[test]
    fn sin_turns_agrees_with_libm() {
        for i in -2000..2000 {
            let t = i as f64 * 0.00137 + 0.3;
            let err = (sin_turns(t) - (t * TAU).sin()).abs();
            assert!(err < 1e-13, "sin_turns({t}) is off by {err}");
        }
    }

    #[test]
    fn same_spec_same_bytes_on_any_thread_count() {
        let s = spec(5, 6, 3, 16, 42);
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| generate(&s).unwrap())
        };
        let first = on(1);
        assert_eq!(first, on(3));
        let other_seed = generate(&SyntheticSpec { seed: 43, ..s }).unwrap();
        assert_ne!(first.train.images, other_seed.train.images);
        // The test split is not a copy of the train split.
        let n = first.test.images.len();
        assert_ne!(first.train.images[..n], first.test.images[..]);
    }

    #[test]
    fn shape_labels_and_class_names() {
        let ds = generate(&spec(4, 5, 2, 6, 0)).unwrap();
        assert_eq!(ds.source_format, "synthetic");
        assert_eq!((ds.height, ds.width, ds.channels), (6, 6, 3));
        assert_eq!(
            ds.classes,
            ["class_000", "class_001", "class_002", "class_003"]
        );
        assert_eq!(&ds.train.labels[..6], [0, 1, 2, 3, 0, 1]);
        let meta = ds.meta().unwrap();
        assert_eq!(meta.train_class_counts, [5; 4]);
        assert_eq!(meta.test_class_counts, [2; 4]);
        assert_eq!(ds.test.images.len(), 8 * 6 * 6 * 3);
    }

    #[test]
    fn bad_specs_name_the_key() {
        let ok = spec(10, 5, 5, 32, 0);
        let cases = [
            (
                SyntheticSpec {
                    classes: 1,
                    ..ok.clone()
                },
                "synthetic.classes: is 1; expected 2..=65535",
            ),
            (
                SyntheticSpec {
                    classes: 65536,
                    ..ok.clone()
                },
                "synthetic.classes: is 65536",
            ),
            (
                SyntheticSpec {
                    train_per_class: 0,
                    ..ok.clone()
                },
                "synthetic.train_per_class: is 0; expected at least 1",
            ),
            (
                SyntheticSpec {
                    test_per_class: 0,
                    ..ok.clone()
                },
                "synthetic.test_per_class: is 0",
            ),
            (
                SyntheticSpec {
                    image_size: 3,
                    ..ok.clone()
                },
                "synthetic.image_size: is 3; expected 4..=512",
            ),
            (
                SyntheticSpec {
                    image_size: 513,
                    ..ok.clone()
                },
                "synthetic.image_size: is 513",
            ),
        ];
        for (bad, expected) in cases {
            let e = generate(&bad).unwrap_err().to_string();
            assert!(e.contains(expected), "{bad:?}: {e}");
        }
        let e = serde_json::from_str::<SyntheticSpec>(
            r#"{"classes": 2, "train_per_class": 1, "test_per_class": 1, "image_size": 8, "seed": 0, "colour": true}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    /// Test accuracy of the nearest class mean, on features of each image.
    fn nearest_class_mean(ds: &Dataset, features: impl Fn(&[u8]) -> Vec<f64>) -> f64 {
        let bytes = (ds.height * ds.width * ds.channels) as usize;
        let classes = ds.classes.len();
        let mut means: Vec<Vec<f64>> = Vec::new();
        let mut counts = vec![0.0; classes];
        for (img, &l) in ds.train.images.chunks_exact(bytes).zip(&ds.train.labels) {
            let f = features(img);
            if means.is_empty() {
                means = vec![vec![0.0; f.len()]; classes];
            }
            for (m, v) in means[l as usize].iter_mut().zip(&f) {
                *m += v;
            }
            counts[l as usize] += 1.0;
        }
        for (m, n) in means.iter_mut().zip(&counts) {
            m.iter_mut().for_each(|v| *v /= n);
        }
        let mut correct = 0;
        for (img, &l) in ds.test.images.chunks_exact(bytes).zip(&ds.test.labels) {
            let f = features(img);
            let distance =
                |m: &Vec<f64>| -> f64 { m.iter().zip(&f).map(|(a, b)| (a - b) * (a - b)).sum() };
            let best = (0..classes)
                .min_by(|&a, &b| distance(&means[a]).total_cmp(&distance(&means[b])))
                .unwrap();
            correct += (best == l as usize) as usize;
        }
        correct as f64 / ds.test.labels.len() as f64
    }

    fn raw_pixels(img: &[u8]) -> Vec<f64> {
        img.iter().map(|&v| v as f64).collect()
    }

    fn mean_colour(img: &[u8]) -> Vec<f64> {
        let mut m = [0.0; 3];
        for px in img.chunks_exact(3) {
            for c in 0..3 {
                m[c] += px[c] as f64;
            }
        }
        m.iter().map(|v| v / (img.len() / 3) as f64).collect()
    }

    /// Fourier amplitudes per channel at low wave vectors: invariant to
    /// translation, like the pooled filter energies a small CNN computes.
    /// Separable: a row transform, then a column transform.
    fn spectrum(img: &[u8], size: usize) -> Vec<f64> {
        let k_max = 5;
        let table: Vec<(f64, f64)> = (0..size)
            .map(|j| TAU * j as f64 / size as f64)
            .map(|a| (a.cos(), -a.sin()))
            .collect();
        let cis = |j: i64| table[j.rem_euclid(size as i64) as usize];
        let mut out = Vec::new();
        for c in 0..3 {
            let rows: Vec<Vec<(f64, f64)>> = img
                .chunks_exact(size * 3)
                .map(|row| {
                    (-k_max..=k_max)
                        .map(|kx| {
                            row.chunks_exact(3)
                                .enumerate()
                                .fold((0.0, 0.0), |(re, im), (x, px)| {
                                    let (cr, ci) = cis(kx * x as i64);
                                    (re + px[c] as f64 * cr, im + px[c] as f64 * ci)
                                })
                        })
                        .collect()
                })
                .collect();
            for ky in 0..=k_max {
                for kx in -k_max..=k_max {
                    if ky == 0 && kx <= 0 {
                        continue;
                    }
                    let (mut re, mut im) = (0.0, 0.0);
                    for (y, row) in rows.iter().enumerate() {
                        let (a, b) = row[(kx + k_max) as usize];
                        let (cr, ci) = cis(ky * y as i64);
                        re += a * cr - b * ci;
                        im += a * ci + b * cr;
                    }
                    out.push((re * re + im * im).sqrt());
                }
            }
        }
        out
    }

    #[test]
    fn class_is_in_the_texture_not_in_the_mean_colour() {
        let ds = generate(&spec(10, 50, 30, 32, 3)).unwrap();
        let chance = 0.1;
        let colour = nearest_class_mean(&ds, mean_colour);
        let raw = nearest_class_mean(&ds, raw_pixels);
        let energy = nearest_class_mean(&ds, |img| spectrum(img, 32));
        eprintln!("nearest class mean on mean colour {colour:.3}, raw pixels {raw:.3}, spectrum {energy:.3}");
        assert!(
            colour < 2.0 * chance,
            "mean colour predicts the class: {colour}"
        );
        assert!(raw > 1.8 * chance && raw < 0.5, "raw pixels: {raw}");
        assert!(
            energy > 0.7 && energy > raw + 0.4,
            "spectrum {energy} vs raw pixels {raw}"
        );
    }
}
