//! JPEG decode + resize throughput of the image-folder preparation, in
//! images/s per core, against the plain `image::open` + `resize_to_fill`
//! that a first implementation would write. Run: `cargo bench -p bsce-stages --bench jpeg`
//! (bench/run.sh does).

use std::path::Path;
use std::time::Instant;

use bsce_stages::dataset::image_folder::{prepare_image_folder, ImageFolderSpec};

const CLASSES: usize = 4;
const PER_CLASS: usize = 60;

fn write_tree(root: &Path) {
    for (split, n) in [("train", PER_CLASS), ("val", 5)] {
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
    let images = (CLASSES * (PER_CLASS + 5)) as f64;
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
        "image-folder preparation (500x375 JPEG q90 -> 256x256): {one:.0} images/s on 1 core; {all:.0} images/s on {cores} cores ({:.0}/core); naive image::open + resize on 1 core: {naive:.0} images/s; ratio {:.2}x",
        all / cores as f64,
        one / naive
    );
}
