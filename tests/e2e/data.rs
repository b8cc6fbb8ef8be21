//! Data: orders, CIFAR-100 archives, image-folder trees (inspect, prepare, streaming, resume).

use crate::support::*;

#[test]
fn order_show_prints_numpy_named_and_icarl_orders() {
    let p = Project::new();
    let numpy: Vec<u32> = serde_json::from_str(
        &p.run(&["order", "show", "--numpy-seed", "1993", "--classes", "100"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(&numpy[..10], &[68, 56, 78, 8, 23, 84, 90, 65, 74, 76]);
    let podnet: Vec<u32> =
        serde_json::from_str(&p.run(&["order", "show", "podnet_cifar100_0"]).ok().stdout).unwrap();
    assert_eq!(&podnet[..5], &[87, 0, 52, 58, 44]);
    let icarl: Vec<u32> = serde_json::from_str(
        &p.run(&["order", "show", "--icarl-seed", "1993", "--classes", "100"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(icarl, podnet);
    p.write("c.yaml", SMALL);
    let b: Vec<u32> = serde_json::from_str(
        &p.run(&["order", "show", "--config", "c.yaml", "--entry", "b"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(b, vec![5, 4, 3, 2, 1, 0]);
    let r = p.run(&["order", "show", "podnet_cifar100_3"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("unknown order `podnet_cifar100_3`; did you mean"),
        "{}",
        r.stderr
    );
}

#[test]
fn cifar_archives_prepare_inspect_and_are_checksummed() {
    use bsce_stages::dataset::cifar::fixtures::{
        write_cifar100_binary_archive, write_cifar100_python_archive,
    };
    let p = Project::new();
    write_cifar100_binary_archive(
        &p.path("bin.tar.gz"),
        &cifar_images(200),
        &cifar_images(100),
    )
    .unwrap();
    write_cifar100_python_archive(&p.path("py.tar.gz"), &cifar_images(200), &cifar_images(100))
        .unwrap();
    for (file, format) in [
        ("bin.tar.gz", "cifar100-binary"),
        ("py.tar.gz", "cifar100-python"),
    ] {
        let j = p.run(&["dataset", "inspect", file, "--json"]).ok().json();
        assert_eq!(j["format"], format);
        assert_eq!(j["classes"], 100);
        assert_eq!(j["train"], 200);
        assert_eq!(j["test"], 100);
        assert_eq!(j["image_size"], "32x32x3");
        let digest = p.run(&["digest", file]).ok().stdout;
        assert!(
            digest.starts_with(j["digest"].as_str().unwrap()),
            "{digest}"
        );
    }
    let sha = p.run(&["digest", "py.tar.gz"]).ok().stdout[..64].to_string();
    let config = |file: &str, sha: &str| {
        format!("datasets:\n  c:\n    cifar100: {{path: {file}, sha256: {sha}}}\norders:\n  o: {{named: podnet_cifar100_1}}\nsettings:\n  s: {{base: 50, increment: 25}}\nexperiments:\n  e: {{dataset: c, orders: [o], settings: [s]}}\n")
    };
    p.write("c.yaml", &config("py.tar.gz", &sha));
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(j["executed"], 3);
    // The same content under another name: the same keys, nothing reruns.
    std::fs::copy(p.path("py.tar.gz"), p.path("renamed.tar.gz")).unwrap();
    p.write("c.yaml", &config("renamed.tar.gz", &sha));
    assert_eq!(
        p.run(&["run", "c.yaml", "--json"]).ok().json()["executed"],
        0
    );
    // A checksum mismatch is bad input: nothing runs.
    p.write("c.yaml", &config("bin.tar.gz", &sha));
    let r = p.run(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("bin.tar.gz: sha256 is"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("but the config expects {sha}")),
        "{}",
        r.stderr
    );
}

#[test]
fn an_image_folder_tree_is_inspected_prepared_and_ordered() {
    let p = Project::new();
    // Three classes of solid-colour JPEGs of assorted sizes, a val folder,
    // and a subset file that keeps two of them.
    let colours = [
        ("n01", [200u8, 30, 30]),
        ("n02", [30, 200, 30]),
        ("n03", [30, 30, 200]),
    ];
    for (split, n) in [("train", 4), ("val", 2)] {
        for (wnid, rgb) in colours {
            let dir = p.path(&format!("tree/{split}/{wnid}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_pixel(40 + 10 * i, 30 + 5 * i, image::Rgb(rgb));
                img.save(dir.join(format!("img{i}.JPEG"))).unwrap();
            }
        }
    }
    p.write("subset.txt", "# two classes\nn03\nn01\n");
    let j = p.run(&["dataset", "inspect", "tree", "--json"]).ok().json();
    assert_eq!(j["format"], "image-folder");
    assert_eq!(j["classes"], 3);
    assert_eq!(j["train"], 12);
    assert_eq!(j["test"], 6);
    p.write(
        "c.yaml",
        "datasets:\n  inet:\n    image_folder: {root: tree, subset: subset.txt, size: 16}\norders:\n  o: {explicit: [1, 0]}\nsettings:\n  s: {base: 1, increment: 1}\nexperiments:\n  e: {dataset: inet, orders: [o], settings: [s]}\n",
    );
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert_eq!(r.json()["executed"], 3, "{}", r.stderr);
    let rec = find_action(&p.store(), "prepare/inet");
    let d = rec["outputs"]["meta.json"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let meta_path = p.store().join("cas").join(&d[..2]).join(&d[2..]);
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["classes"], serde_json::json!(["n01", "n03"]));
    assert_eq!(meta["train_count"], 8);
    assert_eq!(meta["height"], 16);
    assert_eq!(meta["aspect_kept"], true);
    // Whole images, short side 16, long side torchvision's
    // int(16 * long / short): 40x30 -> 21, 50x35 -> 22, 60x40 -> 24,
    // 70x45 -> 24; two classes kept.
    let d = rec["outputs"]["train.images"]["digest"].as_str().unwrap();
    assert_eq!(
        rec["outputs"]["train.images"]["size"],
        2 * (21 + 22 + 24 + 24) * 16 * 3,
        "{d}"
    );
    assert_eq!(rec["outputs"]["train.sizes"]["size"], 8 * 4);
    // An order that does not fit the prepared class count fails the stage.
    p.write(
        "c.yaml",
        &std::fs::read_to_string(p.path("c.yaml"))
            .unwrap()
            .replace("[1, 0]", "[2, 1, 0]"),
    );
    let r = p.run(&["run", "c.yaml", "--json"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("FAILED   order/inet/o"), "{}", r.stderr);
    assert!(r.stderr.contains("the dataset has 2"), "{}", r.stderr);
}

/// Preparation streams images to disk: the stage's peak memory (the
/// child's `wait4` maximum RSS, recorded in provenance) stays a fraction
/// of the artefact it writes. Holding the dataset in memory, as a reader
/// of small datasets may, needs at least the artefact's size.
#[test]
fn an_image_folder_larger_than_the_stage_memory_is_prepared_streaming() {
    let p = Project::new();
    // 1,100 images of 96x72, stored whole at 341x256: 288 MB.
    write_image_tree(&p.path("tree"), 4, 270, 5);
    p.write("c.yaml", &image_tree_config(256));
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert_eq!(r.json()["executed"], 3, "{}", r.stderr);
    let rec = find_action(&p.store(), "prepare/inet");
    let artefact = rec["outputs"]["train.images"]["size"].as_u64().unwrap()
        + rec["outputs"]["test.images"]["size"].as_u64().unwrap();
    assert_eq!(artefact, 1100 * 341 * 256 * 3);
    let peak = rec["provenance"]["peak_rss_kib"].as_u64().unwrap() * 1024;
    assert!(
        peak > 0 && peak < 64 << 20 && peak < artefact / 3,
        "prepare peaked at {} MiB of memory for a {} MiB artefact",
        peak >> 20,
        artefact >> 20
    );
    assert_eq!(rec["provenance"]["stage"]["shards"]["total"], 7 + 1);
    // Nothing is left for a later attempt.
    assert_eq!(
        std::fs::read_dir(p.store().join("resume")).unwrap().count(),
        0
    );
}

/// A preparation killed halfway (SIGKILL to the run; the stage dies with
/// it) resumes at its first unjournalled shard: the next run decodes only
/// the rest, and its artefact is byte-identical to one prepared in one go.
#[test]
fn a_killed_image_folder_preparation_resumes_its_finished_shards() {
    let p = Project::new();
    // 1,040 images of 196,608 bytes: shards of 170, six train and one val.
    write_image_tree(&p.path("tree"), 4, 250, 10);
    p.write("c.yaml", &image_tree_config(256));
    let mut child = p.spawn(&["run", "c.yaml", "--jobs", "1"]);
    let start = std::time::Instant::now();
    while journalled_shards(&p.store()).unwrap_or(0) < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before two shards were journalled"
        );
        assert!(
            start.elapsed().as_secs() < 120,
            "no shard journalled in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The stage child dies with its scheduler (parent-death signal).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let done = journalled_shards(&p.store()).unwrap();
    assert!(
        (2..6).contains(&done),
        "{done} shards journalled at the kill"
    );
    let st = p.status("c.yaml");
    assert!(
        st.iter().any(|s| s.0 == "prepare/inet" && s.1 == "to-run"),
        "{st:?}"
    );

    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert_eq!(r.json()["executed"], 3, "{}", r.stderr);
    let resumed = find_action(&p.store(), "prepare/inet");
    let shards = &resumed["provenance"]["stage"]["shards"];
    assert_eq!(shards["total"], 7);
    assert_eq!(shards["resumed"], done as u64);
    assert_eq!(shards["resumed_images"], done as u64 * 170);
    assert_eq!(shards["decoded_images"], 1040 - done as u64 * 170);
    assert!(!p.store().join("resume").read_dir().unwrap().any(|_| true));

    // The same key prepared in one go: same bytes.
    let r = p
        .run(&["run", "c.yaml", "--force", "prepare/", "--json"])
        .ok();
    assert_eq!(
        executed(&r.json()),
        labels(&["prepare/inet"]),
        "{}",
        r.stderr
    );
    let whole = find_action(&p.store(), "prepare/inet");
    assert_eq!(whole["provenance"]["stage"]["shards"]["resumed"], 0);
    assert_eq!(
        whole["provenance"]["stage"]["shards"]["decoded_images"],
        1040
    );
    for f in [
        "meta.json",
        "train.images",
        "train.sizes",
        "train.labels",
        "test.images",
        "test.sizes",
        "test.labels",
    ] {
        assert_eq!(
            resumed["outputs"][f]["digest"], whole["outputs"][f]["digest"],
            "{f}"
        );
    }
}

/// Textured RGB, different in every image: smooth waves plus noise, so a
/// resize that samples the wrong place or a wrong filter shows.
fn textured(w: u32, h: u32, seed: u32) -> image::RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    image::RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let wave = |f: f32, g: f32| {
            (127.0 + 90.0 * ((x as f32 * f + y as f32 * g + seed as f32).sin())) as i32
        };
        let noise = (state % 41) as i32 - 20;
        let px = |v: i32| (v + noise).clamp(0, 255) as u8;
        image::Rgb([
            px(wave(0.05, 0.02)),
            px(wave(0.013, 0.07)),
            px(wave(0.11, 0.003)),
        ])
    })
}

/// The ImageNet data path against torchvision on the original images
/// (tests/crops/check.py): evaluation crops equal Resize(256) +
/// CenterCrop(224) within one grey level per pixel, and training windows
/// follow RandomResizedCrop's scale, ratio and position over the whole
/// image. The same check fails on images prepared as centre squares, as
/// they were before: their crops never reach the margins.
#[test]
fn imagenet_crops_match_torchvision_on_the_original_images() {
    use bsce_stages::dataset::image_folder::{prepare_image_folder, ImageFolderSpec, Keep};
    let p = Project::new();
    // Landscape, portrait, nearly square and wide, as PNGs (PIL and the
    // image crate decode a PNG to the same bytes; JPEG decoders differ).
    let sizes = [(400u32, 300u32), (300, 500), (257, 256), (512, 300)];
    let mut manifest = serde_json::json!({"train": [], "test": []});
    for (split, key) in [("train", "train"), ("val", "test")] {
        for (k, &(w, h)) in sizes.iter().enumerate() {
            let dir = p.path(&format!("tree/{split}/n0{k}"));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("a.png");
            textured(w, h, k as u32 + if split == "val" { 10 } else { 0 })
                .save(&path)
                .unwrap();
            manifest[key]
                .as_array_mut()
                .unwrap()
                .push(path.display().to_string().into());
        }
    }
    p.write("manifest.json", &manifest.to_string());
    let torch = Path::new(BIN).with_file_name("bsce-torch");
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crops/check.py");
    let run_check = |keep: Keep, name: &str| {
        let out = p.path(name);
        std::fs::create_dir_all(&out).unwrap();
        let spec = ImageFolderSpec {
            keep,
            ..ImageFolderSpec::new(p.path("tree"))
        };
        prepare_image_folder(&spec, &out, &p.path(&format!("{name}.resume")), &|_, _| {}).unwrap();
        // Evaluation as the stages run it; 2,000 training draws per image
        // at a 16-px crop (the window's distribution does not depend on
        // the output size).
        let draws: Vec<usize> = (0..sizes.len()).flat_map(|i| [i; 2000]).collect();
        for (what, spec) in [
            (
                "eval",
                serde_json::json!({"augment": "imagenet", "split": "test", "indices": [0, 1, 2, 3], "train": false}),
            ),
            (
                "train",
                serde_json::json!({"augment": "imagenet", "crop": 16, "split": "train", "indices": draws, "train": true, "seed": 5}),
            ),
        ] {
            let file = p.path(&format!("{name}-{what}.json"));
            std::fs::write(&file, spec.to_string()).unwrap();
            let r = Command::new(&torch)
                .arg("crops")
                .arg(&out)
                .arg(&file)
                .arg(p.path(&format!("{name}-{what}")))
                .output()
                .unwrap();
            assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        }
        Command::new("python3")
            .arg(&check)
            .arg(p.path("manifest.json"))
            .arg(p.path(&format!("{name}-eval")))
            .arg(p.path(&format!("{name}-train")))
            .output()
            .unwrap()
    };
    let whole = run_check(Keep::Whole, "whole");
    let text = String::from_utf8_lossy(&whole.stdout).to_string()
        + &String::from_utf8_lossy(&whole.stderr);
    println!("{text}");
    assert!(whole.status.success(), "{text}");
    assert!(text.contains("crops check passed"), "{text}");
    let square = run_check(Keep::CentreSquare, "square");
    let text = String::from_utf8_lossy(&square.stdout).to_string()
        + &String::from_utf8_lossy(&square.stderr);
    assert!(!square.status.success(), "{text}");
    assert!(
        text.contains("FAILED") && text.contains("train 512x300"),
        "{text}"
    );
}
