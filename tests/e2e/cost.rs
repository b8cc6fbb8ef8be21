//! `status --cost`, `calibrate` and `explain --if-changed`: what work costs
//! before it runs.

use crate::support::*;

/// CIFAR-100 from an archive that is not there: 50 base classes, then two
/// steps of 25; fine-tuning with 20 exemplars per class (herding); 2 epochs.
const ABSENT_CIFAR: &str = r#"
datasets:
  cifar:
    cifar100: {path: no-such-archive.tar.gz}
orders:
  a: {numpy_seed: 1993}
settings:
  s: {base: 50, increment: 25}
methods:
  ce: {preset: finetune, memory: {per_class: 20}}
recipes:
  r: {epochs: 2, batch_size: 128, lr: 0.1}
experiments:
  e: {dataset: cifar, orders: [a], settings: [s], methods: [ce], recipe: r, network: tiny}
"#;

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn status_cost_counts_the_image_passes_of_an_absent_dataset_by_hand() {
    let p = Project::new();
    p.write("c.yaml", ABSENT_CIFAR);
    let r = p.run(&["status", "c.yaml", "--cost", "--json"]).ok();
    let j = r.json();
    let work = &j["total"]["to_run"]["work"];
    // CIFAR-100: 500 training and 100 test images per class.
    // Task 0: 50 x 500 = 25,000 images, 2 epochs: 50,000.
    // Task 1: 25 x 500 + 50 x 20 exemplars = 13,500, 2 epochs: 27,000.
    // Task 2: 12,500 + 75 x 20 = 14,000: 28,000.
    assert_eq!(num(&work["train"]), 105_000.0, "{j:#}");
    assert_eq!(num(&work["finetune"]), 0.0);
    assert_eq!(num(&j["total"]["to_run"]["image_passes"]), 105_000.0);
    // Forward only. Task 0: herding 25,000, class means 2 x 50 x 20.
    // Task 1: the old model 27,000, herding 12,500, means 2 x 75 x 20.
    // Task 2: 28,000, 12,500, 2 x 100 x 20. Evaluations: 50, 75, 100
    // classes x 100 test images.
    let forward = (25_000 + 2_000)
        + (27_000 + 12_500 + 3_000)
        + (28_000 + 12_500 + 4_000)
        + (5_000 + 7_500 + 10_000);
    assert_eq!(num(&work["forward"]), f64::from(forward));
    assert_eq!(j["total"]["to_run"]["stages"], 6);
    assert_eq!(j["experiments"][0]["experiment"], "e");
    assert_eq!(j["experiments"][0]["to_run"]["networks"][0], "tiny@32");
    assert_eq!(
        j["uncalibrated"]["(none)"],
        serde_json::json!(["tiny@32"]),
        "{j:#}"
    );
    let text = p.run(&["status", "c.yaml", "--cost"]).ok().stdout;
    assert!(
        text.contains("105,000")
            && text.contains("no calibration in")
            && text.contains("bsce-pipe calibrate"),
        "{text}"
    );
    // It wrote nothing: no store appeared.
    assert!(!p.store().exists());

    // An image folder whose profile gives no image counts: an error naming
    // the dataset, until it is prepared.
    p.write(
        "f.yaml",
        r#"
datasets:
  folder:
    image_folder: {root: no-such-folder, augment: cifar, size: 32}
    profile: cifar100
orders:
  a: {numpy_seed: 1993}
settings:
  s: {base: 2, increment: 2, steps: 1}
methods:
  ce: {preset: finetune}
recipes:
  r: {epochs: 2, batch_size: 128, lr: 0.1}
experiments:
  e: {dataset: folder, orders: [a], settings: [s], methods: [ce], recipe: r, network: tiny}
"#,
    );
    let r = p.run(&["status", "f.yaml", "--cost"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("datasets.folder: an image folder with profile cifar100"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_paper_config_costs_per_experiment_without_any_dataset() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let paper = root.join("configs/paper.yaml");
    let p = Project::new();
    let store = p.path("store");
    let store_s = store.to_str().unwrap();
    let args = [
        "status",
        paper.to_str().unwrap(),
        "--store",
        store_s,
        "--cost",
    ];
    let j = p.run(&[&args[..], &["--json"]].concat()).ok().json();
    let experiments = j["experiments"].as_array().unwrap();
    assert_eq!(experiments.len(), 10, "{j:#}");
    for e in experiments {
        assert!(num(&e["to_run"]["image_passes"]) > 0.0, "{e:#}");
    }
    // Rates written as `calibrate` writes them (a device class this
    // machine does not have): every experiment gets its hours.
    let rate = |train: f64| {
        serde_json::json!({
            "train_images_per_s": train, "forward_images_per_s": 3.0 * train, "batch": 128,
            "device": "cuda:0", "threads": 1, "host": "n1", "measured_unix_ms": 1, "seconds": 4.0
        })
    };
    let gpu = "NVIDIA H100 80GB HBM3";
    let calibration = serde_json::json!({"version": 1, "devices": {gpu: {
        "resnet32@32": rate(20_000.0), "resnet32_lucir@32": rate(20_000.0),
        "resnet18@224": rate(2_000.0), "resnet18_podnet@224": rate(2_000.0)}}});
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(
        store.join("calibration.json"),
        serde_json::to_string(&calibration).unwrap(),
    )
    .unwrap();
    let j = p.run(&[&args[..], &["--json"]].concat()).ok().json();
    let mut sum = 0.0;
    for e in j["experiments"].as_array().unwrap() {
        let w = &e["to_run"]["work"];
        let train = if e["dataset"] == "cifar100" {
            20_000.0
        } else {
            2_000.0
        };
        let expected = (num(&w["train"]) / train
            + (num(&w["finetune"]) + num(&w["forward"])) / (3.0 * train))
            / 3600.0;
        let h = num(&e["to_run"]["hours"][gpu]);
        assert!((h - expected).abs() < 1e-9 * expected, "{e:#}");
        sum += h;
    }
    let total = num(&j["total"]["to_run"]["hours"][gpu]);
    assert!((total - sum).abs() < 1e-6 * total, "{total} {sum}");
    assert_eq!(j["uncalibrated"], serde_json::json!({}));
    let text = p.run(&args).ok().stdout;
    assert!(
        text.contains(&format!("GPU-h {gpu}")) && text.contains("imagenet_podnet"),
        "{text}"
    );
}

#[test]
fn calibrate_records_rates_that_status_cost_turns_into_hours_and_stored_stages_show_theirs() {
    let p = Project::new();
    p.write("c.yaml", TRAINED);
    let r = p
        .run(&[
            "calibrate",
            "c.yaml",
            "--device",
            "cpu",
            "--seconds",
            "1",
            "--json",
        ])
        .ok();
    let j = r.json();
    assert_eq!(j["device_class"], "cpu", "{j:#}");
    assert_eq!(j["measured"][0]["network"], "tiny@8");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(p.store().join("calibration.json")).unwrap())
            .unwrap();
    let rates = &file["devices"]["cpu"]["tiny@8"];
    let (train, forward) = (
        num(&rates["train_images_per_s"]),
        num(&rates["forward_images_per_s"]),
    );
    assert!(train > 0.0 && forward > 0.0, "{file:#}");

    let j = p.run(&["status", "c.yaml", "--cost", "--json"]).ok().json();
    let t = &j["total"]["to_run"];
    let w = &t["work"];
    let expected =
        (num(&w["train"]) / train + (num(&w["finetune"]) + num(&w["forward"])) / forward) / 3600.0;
    let h = num(&t["hours"]["cpu"]);
    assert!(h > 0.0 && (h - expected).abs() < 1e-9 * expected, "{j:#}");
    assert_eq!(j["devices"], serde_json::json!(["cpu"]));
    assert_eq!(j["uncalibrated"], serde_json::json!({}));
    let text = p.run(&["status", "c.yaml", "--cost"]).ok().stdout;
    assert!(
        text.contains("CPU-h cpu") && !text.contains("no calibration"),
        "{text}"
    );

    // Once computed, the stages show the hours their provenance recorded.
    p.run(&["run", "c.yaml", "--jobs", "2", "--json"]).ok();
    let j = p.run(&["status", "c.yaml", "--cost", "--json"]).ok().json();
    let total = &j["total"];
    assert_eq!(total["to_run"]["stages"], 0, "{j:#}");
    // The prepared dataset's own counts replace the spec's.
    let basis = j["images_per_class"]["synth"]["basis"].as_str().unwrap();
    assert_eq!(basis, "prepared dataset: 48 train, 16 test over 4 classes");
    assert_eq!(num(&total["to_run"]["hours"]["cpu"]), 0.0);
    let stages = total["stored"].as_u64().unwrap();
    assert_eq!(stages, 12, "3 train stages and 3 evaluations per method");
    let mut recorded = 0.0;
    for entry in walk(&p.store().join("ac")) {
        let rec: Value = serde_json::from_str(&std::fs::read_to_string(entry).unwrap()).unwrap();
        let label = rec["label"].as_str().unwrap();
        if label.starts_with("train/") || label.starts_with("evaluate/") {
            recorded += num(&rec["provenance"]["wall_seconds"]) / 3600.0;
        }
    }
    let shown = num(&total["recorded_hours"]);
    assert!(
        recorded > 0.0 && (shown - recorded).abs() < 1e-9,
        "{shown} {recorded}"
    );
    assert_eq!(total["recorded_devices"], serde_json::json!(["cpu"]));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
    out
}

#[test]
fn calibrate_refuses_a_bad_network_or_device_naming_it() {
    let p = Project::new();
    p.write("c.yaml", TRAINED);
    let r = p.run(&["calibrate", "c.yaml", "--network", "resnet99@32"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--network \"resnet99@32\""),
        "{}",
        r.stderr
    );
    let r = p.run(&["calibrate", "c.yaml", "--device", "tpu:0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("tpu:0"), "{}", r.stderr);
    assert!(!p.store().join("calibration.json").exists());
}

#[test]
fn explain_if_changed_names_the_stages_an_edit_reruns_and_their_cost() {
    let p = Project::new();
    p.write("c.yaml", TRAINED);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // LUCIR's loss: the lucir train stages and what reads them.
    let j = p
        .run(&[
            "explain",
            "c.yaml",
            "--if-changed",
            "train/src/loss/lucir.rs",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(j["files"][0]["kinds"], serde_json::json!(["train:lucir"]));
    let stages: Vec<(String, String)> = j["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["because"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let code: Vec<&str> = stages
        .iter()
        .filter(|s| s.1 == "code")
        .map(|s| s.0.as_str())
        .collect();
    assert_eq!(code.len(), 3, "{stages:?}");
    assert!(code
        .iter()
        .all(|l| l.starts_with("train/") && l.contains("/lucir/")));
    assert!(stages
        .iter()
        .any(|s| s.0.starts_with("evaluate/") && s.0.contains("/lucir/") && s.1 == "downstream"));
    assert!(stages.iter().any(|s| s.0.starts_with("aggregate/")));
    assert!(
        !stages.iter().any(|s| s.0.starts_with("prepare/")
            || s.0.starts_with("order/")
            || s.0.starts_with("tasks/")
            || s.0.contains("/ce/")),
        "{stages:?}"
    );
    assert!(num(&j["estimate"]["image_passes"]) > 0.0);
    assert_eq!(j["estimate"]["stages"], 6);

    // The train stage's own file, by absolute path: every train stage; a
    // file outside every digest says why.
    let train_rs = root.join("train/src/stage/train.rs");
    let readme = root.join("README.md");
    let r = p
        .run(&[
            "explain",
            "c.yaml",
            "--if-changed",
            train_rs.to_str().unwrap(),
            readme.to_str().unwrap(),
        ])
        .ok();
    assert!(
        r.stdout.contains("train/src/stage/train.rs: in the code digest of train:finetune, train:icarl, train:lucir, train:podnet")
            && r.stdout.contains("README.md: not source code")
            && r.stdout.contains("6 train")
            && !r.stdout.contains("prepare/")
            && !r.stdout.contains("order/"),
        "{}",
        r.stdout
    );
    // The order stage's code reruns the order and everything after it.
    let r = p
        .run(&[
            "explain",
            "c.yaml",
            "--if-changed",
            "stages/src/stage/order.rs",
        ])
        .ok();
    assert!(
        r.stdout.contains("rerun    order/synth/a (code, to-run)")
            && !r.stdout.contains("prepare/"),
        "{}",
        r.stdout
    );
    let r = p.run(&["explain", "c.yaml", "--if-changed", "no/such/file.rs"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no/such/file.rs"), "{}", r.stderr);
}
