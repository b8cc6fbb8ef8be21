//! JPEG decode + resize throughput of the image-folder preparation, in
//! images/s per core, against the plain `image::open` + `resize_to_fill`
//! that a first implementation would write; then the training loader's read
//! path on the prepared artefact with a cold page cache (random 128-image
//! batches gathered from the memory map, as train/src/data.rs does) against
//! `cat` of the same file. Run: `cargo bench -p bsce-stages --bench jpeg`
//! (bench/run.sh does); `bash bench/imagenet.sh` runs it on a larger tree.
//! `BENCH_PER_CLASS` sets the train images per class (default 60).
#![allow(clippy::disallowed_methods)] // a benchmark's knobs

use std::path::Path;
use std::time::Instant;

use bsce_stages::dataset::artefact::{MappedDataset, SplitName};
use bsce_stages::dataset::image_folder::{prepare_image_folder, ImageFolderSpec};

const CLASSES: usize = 4;
fn per_class() -> usize {
    std::env::var("BENCH_PER_CLASS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

fn write_tree(root: &Path) {
    for (split, n) in [("train", per_class()), ("val", 5)] {
        for c in 0..CLASSES {
            let dir = root.join(split).join(format!("n0000000{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                // ImageNet-like: 500x375, textured so the encoder does real work.
                let img = image::RgbImage::from_fn(500, 375, |x, y| {
                    let v = (x * (c as u32 + 3) + y * (i as u32 + 5)) ^ (x * y / 7);
                    image::Rgb([v as u8, (v >> 3) as u8 ^ y as u8, (x + y) as u8])
                });
                let mut bytes = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
                    .encode_image(&img)
                    .unwrap();
                std::fs::write(dir.join(format!("img_{i}.JPEG")), bytes).unwrap();
            }
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path());
    let spec = ImageFolderSpec::new(dir.path());
    let images = (CLASSES * (per_class() + 5)) as f64;
    let time = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let out = dir.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let t = Instant::now();
        pool.install(|| {
            prepare_image_folder(&spec, &out, &dir.path().join("resume"), &|_, _| {}).unwrap()
        });
        images / t.elapsed().as_secs_f64()
    };
    time(1); // warm the page cache
    let one = time(1);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let all = time(cores);
    let files: Vec<_> = walkdir::WalkDir::new(dir.path())
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "JPEG"))
        .map(|e| e.into_path())
        .collect();
    let t = Instant::now();
    for f in &files {
        let img = image::open(f).unwrap().to_rgb8();
        let _ = image::imageops::resize(&img, 341, 256, image::imageops::FilterType::Triangle);
    }
    let naive = files.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "image-folder preparation (500x375 JPEG q90 -> whole, 341x256): {one:.0} images/s on 1 core; {all:.0} images/s on {cores} cores ({:.0}/core); naive image::open + resize on 1 core: {naive:.0} images/s; ratio {:.2}x",
        all / cores as f64,
        one / naive
    );

    let out = dir.path().join("out");
    let train = out.join(SplitName::Train.images_file());
    let mib = std::fs::metadata(&train).unwrap().len() as f64 / (1 << 20) as f64;
    let cold = drop_caches();
    let t = Instant::now();
    let ds = MappedDataset::open(&out).unwrap();
    let pixels = ds.images(SplitName::Train);
    let n = ds.meta.train_count as usize;
    // A fixed shuffle (LCG-driven Fisher-Yates): the loader's access pattern.
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    let mut batch = Vec::new();
    let mut check = 0u64;
    for chunk in order.chunks(128) {
        batch.clear();
        for &i in chunk {
            batch.extend_from_slice(pixels.image(i).0);
        }
        check = check.wrapping_add(batch[batch.len() / 2] as u64);
    }
    let gather = t.elapsed().as_secs_f64();
    drop_caches();
    let t = Instant::now();
    let ok = std::process::Command::new("cat")
        .arg(&train)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "cat {}", train.display());
    let cat = t.elapsed().as_secs_f64();
    println!(
        "loader on the prepared train.images ({mib:.0} MiB, {} page cache): random 128-image batches from the memory map {:.0} images/s ({:.0} MiB/s); cat of the file {:.0} MiB/s; ratio {:.2}x (checksum {check})",
        if cold { "cold" } else { "warm: not root, caches not dropped" },
        n as f64 / gather,
        mib / gather,
        mib / cat,
        cat / gather
    );
}

/// Empties the page cache (root only); false when it could not.
fn drop_caches() -> bool {
    std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}
