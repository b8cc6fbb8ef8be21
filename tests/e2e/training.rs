//! Training through bsce-torch: methods and presets, recipes, image folders at their own size, libtorch linkage.

use crate::support::*;

#[test]
fn a_recipe_is_never_shared_silently_across_loss_families() {
    let cfg = |methods: &str, exp: &str| {
        format!(
            "{SMALL}    methods: [icarl, icarl_bsce]\n{exp}methods:\n{methods}recipes:\n  r: {{epochs: 1, batch_size: 8, lr: 0.1}}\n  bce: {{epochs: 1, batch_size: 8, lr: 2.0}}\n"
        )
    };
    let plain = "  icarl: {preset: icarl}\n  icarl_bsce: {extends: icarl, bsce: true}\n";
    // iCaRL's BCE and iCaRL+BSCE's softmax left to one experiment recipe.
    assert_bad_input(
        &cfg(plain, "    recipe: r\n"),
        &[
            "experiments.e.recipe",
            "recipe `r` would train `icarl` (iCaRL's binary cross-entropy) and `icarl_bsce` (a softmax cross-entropy) alike",
            "method_recipes",
        ],
    );
    // Inherited along `extends` from the other family.
    assert_bad_input(
        &cfg(
            "  icarl: {preset: icarl, recipe: bce}\n  icarl_bsce: {extends: icarl, bsce: true}\n",
            "",
        ),
        &[
            "methods.icarl_bsce",
            "inherits recipe `bce` from `icarl`, which trains iCaRL's binary cross-entropy",
        ],
    );
    // A built-in recipe made for the other loss.
    assert_bad_input(
        &cfg(
            plain,
            "    recipe: bce\n    method_recipes: {icarl_bsce: icarl_cifar100}\n",
        ),
        &[
            "experiments.e.method_recipes.icarl_bsce",
            "built-in recipe `icarl_cifar100` is for iCaRL's binary cross-entropy (lr 2)",
            "icarl_bsce_cifar100",
        ],
    );
    // A method the experiment does not train; a method without a recipe.
    assert_bad_input(
        &cfg(
            plain,
            "    recipe: bce\n    method_recipes: {icarl_bsce: r, lucir: r}\n",
        ),
        &[
            "experiments.e.method_recipes.lucir",
            "method `lucir` is not in this experiment's methods (icarl, icarl_bsce)",
        ],
    );
    assert_bad_input(
        &cfg(plain, "    method_recipes: {icarl: bce}\n"),
        &["experiments.e.recipe", "method `icarl_bsce` has no recipe"],
    );
    // Each its own: the experiment's for one, a method's own for the other.
    let p = Project::new();
    p.write(
        "c.yaml",
        &cfg(
            "  icarl: {preset: icarl}\n  icarl_bsce: {extends: icarl, bsce: true, recipe: r}\n",
            "    recipe: bce\n",
        ),
    );
    let lr = |method: &str| {
        p.run(&[
            "explain",
            "c.yaml",
            &format!("train/synth/a/{method}/seed0/b2/t0"),
            "--json",
        ])
        .ok()
        .json()["params"]["recipe"]["lr"]
            .as_f64()
            .unwrap()
    };
    assert_eq!((lr("icarl"), lr("icarl_bsce")), (2.0, 0.1));
}

#[test]
fn doctor_reports_the_libtorch_it_links() {
    let p = Project::new();
    let j = p.run(&["doctor", "--json"]).ok().json();
    assert!(j["libtorch"].as_str().unwrap().starts_with("2.13.0"), "{j}");
    assert!(j["threads"].as_i64().unwrap() >= 1);
    assert_eq!(
        j["cuda_available"].as_bool().unwrap(),
        j["gpus"].as_i64().unwrap() > 0
    );
}

#[test]
fn the_base_task_is_one_node_per_order_for_all_settings_and_ce_bsce() {
    let p = Project::new();
    p.write("c.yaml", TRAINING);
    let dot = p.run(&["dag", "c.yaml", "--format", "dot"]).ok().stdout;
    for order in ["a", "b"] {
        let t0: Vec<&str> = dot
            .lines()
            .filter(|l| l.contains(&format!("train/synth/{order}/")) && l.contains("/t0\\n"))
            .collect();
        assert_eq!(
            t0.len(),
            1,
            "one task-0 training node for order {order}: {t0:?}"
        );
    }
    // Later tasks are per setting and per method: s1 has 3 steps, s3 1, s2b 1.
    let train_nodes = dot.lines().filter(|l| l.contains("[train]")).count();
    assert_eq!(train_nodes, 2 * (1 + 2 * (3 + 1 + 1)), "{dot}");
}

#[test]
fn a_tiny_incremental_run_learns_and_bsce_reduces_the_new_class_bias() {
    let p = Project::new();
    p.write(
        "c.yaml",
        r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 200, test_per_class: 40, image_size: 16, seed: 7}
orders:
  a: {numpy_seed: 1993}
settings:
  s: {base: 4, increment: 1}
methods:
  ce: {preset: finetune, memory: {per_class: 10}}
  bsce: {extends: ce, bsce: true}
recipes:
  r: {epochs: 12, batch_size: 32, lr: 0.1, weight_decay: 5.0e-4, schedule: cosine}
experiments:
  e: {dataset: synth, orders: [a], settings: [s], methods: [ce, bsce], recipe: r, network: small}
"#,
    );
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    // Base task shared by CE and BSCE: 1 + 2 x 2 trainings, as many evaluations.
    // ... and the report's aggregate and plot (no table declared).
    assert_eq!(r.json()["executed"], 3 + 2 * 5 + 2, "{}", r.stderr);
    assert!(r.stderr.contains("report: "), "{}", r.stderr);
    let res = p.run(&["results", "c.yaml", "--json"]).ok().json();
    let runs = res["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let run = |m: &str| runs.iter().find(|r| r["method"] == m).unwrap().clone();
    let (ce, bsce) = (run("ce"), run("bsce"));
    // Well above chance: both on the shared base task, BSCE with both
    // classifiers on every task. CE's later tasks are allowed to collapse
    // (that is the bias BSCE removes); over the run its NME stays well above.
    let top1 = |r: &Value, t: usize, clf: &str| -> (f64, f64) {
        let task = &r["tasks"][t];
        (
            task[clf]["top1"].as_f64().unwrap(),
            100.0 / task["classes_seen"].as_f64().unwrap(),
        )
    };
    for (r, clf, tasks) in [
        (&ce, "cnn", 0..1),
        (&ce, "nme", 0..1),
        (&bsce, "cnn", 0..3),
        (&bsce, "nme", 0..3),
    ] {
        for t in tasks {
            let (acc, chance) = top1(r, t, clf);
            assert!(
                acc > 1.5 * chance,
                "{} {clf} task {t}: top-1 {acc} vs chance {chance}: {r}",
                r["method"]
            );
        }
    }
    let mean_chance = (0..3).map(|t| top1(&ce, t, "nme").1).sum::<f64>() / 3.0;
    let ce_nme = ce["average_incremental_accuracy"]["nme"].as_f64().unwrap();
    assert!(
        ce_nme > 1.5 * mean_chance,
        "ce nme average {ce_nme} vs chance {mean_chance}"
    );
    let avg = |r: &Value| r["average_incremental_accuracy"]["cnn"].as_f64().unwrap();
    assert!(
        avg(&bsce) > avg(&ce),
        "average incremental accuracy ce {} bsce {}",
        avg(&ce),
        avg(&bsce)
    );
    // BSCE's predictions on the last task's new class are closer to that
    // class's true share of the test set than CE's.
    let bias = |r: &Value| {
        let last = &r["tasks"][2]["cnn"];
        (last["predicted_new_share"].as_f64().unwrap() - last["true_new_share"].as_f64().unwrap())
            .abs()
    };
    assert!(
        bias(&bsce) < bias(&ce),
        "bias ce {} bsce {}",
        bias(&ce),
        bias(&bsce)
    );
    // A second run trains nothing.
    assert_eq!(
        p.run(&["run", "c.yaml", "--json"]).ok().json()["executed"],
        0
    );
}

#[test]
fn every_method_preset_trains_with_and_without_bsce() {
    let p = Project::new();
    p.write(
        "c.yaml",
        r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 30, test_per_class: 10, image_size: 16, seed: 7}
orders:
  o: {numpy_seed: 1993}
settings:
  s: {base: 3, increment: 1, steps: 2}
methods:
  icarl: {preset: icarl, memory: {per_class: 5}}
  icarl_bsce: {extends: icarl, bsce: true}
  lucir: {preset: lucir, memory: {per_class: 5}}
  lucir_bsce: {extends: lucir, bsce: true}
  podnet: {preset: podnet, memory: {total: 30}}
  podnet_bsce: {extends: podnet, bsce: true, memory: {selection: random}}
  podnet_bsce_softmax: {extends: podnet, bsce: true, bsce_choices: {nca_prior: balanced_softmax}}
  no_memory: {preset: finetune}
recipes:
  r: {epochs: 2, batch_size: 16, lr: 0.05, schedule: multistep, milestones: [1]}
experiments:
  e: {dataset: synth, orders: [o], settings: [s], methods: [icarl, icarl_bsce, lucir, lucir_bsce, podnet, podnet_bsce, podnet_bsce_softmax, no_memory], recipe: r, method_recipes: {icarl: r}, network: tiny}
"#,
    );
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert_eq!(r.json()["failed"], 0, "{}", r.stderr);
    let res = p.run(&["results", "c.yaml", "--json"]).ok().json();
    let runs = res["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    for run in runs {
        assert!(
            run["average_incremental_accuracy"]["cnn"].is_number(),
            "{run}"
        );
        assert!(
            run["average_incremental_accuracy"]["nme"].is_number(),
            "{run}"
        );
    }
    // PODNet fine-tunes on a balanced memory after each new task, its BSCE
    // variant does not, and neither does LUCIR on a CIFAR-profile dataset
    // (LUCIR's CIFAR script has no class-balanced fine-tuning): the log of
    // task 1 says so.
    let log = |label: &str| -> String {
        let rec = find_action(&p.store(), label);
        let d = rec["outputs"]["log.json"]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        std::fs::read_to_string(p.store().join("cas").join(&d[..2]).join(&d[2..])).unwrap()
    };
    assert!(log("train/synth/o/podnet/seed0/s/t1").contains("finetune_epoch"));
    assert!(!log("train/synth/o/podnet_bsce/seed0/s/t1").contains("finetune_epoch"));
    assert!(!log("train/synth/o/lucir/seed0/s/t1").contains("finetune_epoch"));
    // The base task is shared where it computes the same thing: LUCIR with
    // its BSCE variant (equal counts); not iCaRL (BCE is not BSCE), nor
    // PODNet here, whose BSCE variant picks its base-task memory at random.
    let dag = p.run(&["dag", "c.yaml"]).ok().stdout;
    for (label, shared) in [
        ("train/synth/o/icarl_bsce/seed0/b3/t0", false),
        ("train/synth/o/lucir_bsce/seed0/b3/t0", true),
        ("train/synth/o/podnet_bsce/seed0/b3/t0", false),
    ] {
        assert_eq!(!dag.contains(label), shared, "{label} in:\n{dag}");
    }
    assert!(log("train/synth/o/icarl_bsce/seed0/b3/t0").contains("\"bsce\""));
    // Every choice a task read is in its provenance, BSCE choices included.
    let rec = find_action(&p.store(), "train/synth/o/icarl_bsce/seed0/s/t1");
    let method = &rec["provenance"]["stage"]["method"];
    assert_eq!(
        method["bsce_choices"]["icarl_distillation"],
        serde_json::json!({"kind": "softmax_kd", "temperature": 2.0, "weight": 1.0}),
        "{rec}"
    );
    assert_eq!(method["features"], "pre_activation");
    let rec = find_action(&p.store(), "train/synth/o/podnet/seed0/s/t1");
    let method = &rec["provenance"]["stage"]["method"];
    assert_eq!(method["hyper"]["pod_spatial"], 3.0, "{rec}");
    assert_eq!(method["finetune"]["lr"], 0.05, "{rec}");
    assert!(log("train/synth/o/podnet/seed0/s/t1").contains("pod_spatial"));
    // PODNet+BSCE without the NCA: its classification term is BSCE, the
    // POD terms stay.
    let softmax = log("train/synth/o/podnet_bsce_softmax/seed0/s/t1");
    assert!(
        softmax.contains("\"bsce\"") && !softmax.contains("\"nca\""),
        "{softmax}"
    );
    assert!(softmax.contains("pod_spatial"), "{softmax}");
    assert!(log("train/synth/o/podnet_bsce/seed0/s/t1").contains("\"nca\""));
    assert!(log("train/synth/o/lucir/seed0/s/t1").contains("margin_ranking"));
    // Without memory, old classes keep the NME means of the task that
    // learnt them: no old image is looked at again.
    let memory = |label: &str| -> Value {
        let rec = find_action(&p.store(), label);
        let d = rec["outputs"]["memory.json"]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        serde_json::from_slice(
            &std::fs::read(p.store().join("cas").join(&d[..2]).join(&d[2..])).unwrap(),
        )
        .unwrap()
    };
    let (t0, t1) = (
        memory("train/synth/o/no_memory/seed0/b3/t0"),
        memory("train/synth/o/no_memory/seed0/s/t1"),
    );
    assert_eq!(t1["exemplars"], serde_json::json!({}));
    assert_eq!(t1["class_means"].as_array().unwrap().len(), 4);
    assert_eq!(t1["class_means"][0], t0["class_means"][0]);
    assert_ne!(
        memory("train/synth/o/icarl/seed0/s/t1")["class_means"][0],
        memory("train/synth/o/icarl/seed0/b3/t0")["class_means"][0]
    );
}

#[test]
fn published_recipes_are_built_in() {
    let p = Project::new();
    let config = |recipe: &str| {
        format!(
            "{SMALL}    methods: [m]\n    recipe: {recipe}\nmethods:\n  m: {{preset: podnet}}\n"
        )
    };
    p.write("c.yaml", &config("podnet_cifar100"));
    let dag = p.run(&["dag", "c.yaml"]).ok().stdout;
    assert!(dag.contains("train/synth/a/m/seed0/b2/t0 [train]"), "{dag}");
    p.write("c.yaml", &config("podnet_cifar10"));
    let r = p.run(&["dag", "c.yaml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("unknown recipe `podnet_cifar10`; did you mean `podnet_cifar100`?"),
        "{}",
        r.stderr
    );
}

#[test]
fn bsce_torch_keeps_libtorch_cuda_linked() {
    // With --as-needed the linker drops libtorch_cuda (no symbol of it is
    // referenced) and CUDA then looks unavailable on GPU hosts.
    let torch = Path::new(BIN).with_file_name("bsce-torch");
    let out = Command::new("readelf")
        .arg("-d")
        .arg(&torch)
        .output()
        .expect("readelf (binutils) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[libtorch_cuda.so]"), "{}", text);
    // bsce-pipe itself does not load libtorch at all.
    let out = Command::new("readelf").arg("-d").arg(BIN).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("libtorch"));
}

/// The paper's iCaRL rows: BCE at its references' rates, iCaRL+BSCE at a
/// softmax rate, on CIFAR-100, ImageNet-Subset and ImageNet.
#[test]
fn the_paper_config_trains_icarl_and_icarl_bsce_with_their_own_recipes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/paper.yaml");
    let p = Project::new();
    // A stage's params, from `explain` (no dataset needed).
    let params = |label: &str| {
        p.run(&[
            "explain",
            path.to_str().unwrap(),
            label,
            "--json",
            "--store",
            "s",
        ])
        .ok()
        .json()["params"]
            .clone()
    };
    let recipe = |label: &str| params(label)["recipe"].clone();
    for (prefix, bce_lr, bce_epochs) in [
        ("cifar100/podnet0", 2.0, 70),
        ("imagenet_subset/seed1993", 1.0, 60),
        ("imagenet/seed1993", 1.0, 60),
    ] {
        let base = if prefix.starts_with("imagenet/") {
            "b500"
        } else {
            "b50"
        };
        let icarl = recipe(&format!("train/{prefix}/icarl/seed0/{base}/t0"));
        let bsce = recipe(&format!("train/{prefix}/icarl_bsce/seed0/{base}/t0"));
        assert_eq!(
            (icarl["lr"].as_f64(), icarl["epochs"].as_u64()),
            (Some(bce_lr), Some(bce_epochs)),
            "{prefix}: {icarl}"
        );
        assert_eq!(bsce["lr"].as_f64(), Some(0.1), "{prefix}: {bsce}");
        // LUCIR's rows keep LUCIR's recipe.
        let lucir = recipe(&format!("train/{prefix}/lucir/seed0/{base}/t0"));
        assert_eq!(lucir["lr"].as_f64(), Some(0.1), "{prefix}: {lucir}");
    }
    // PODNet's ImageNet runs with its colour jitter; LUCIR's without.
    let augment = |label: &str| params(label)["augment"].clone();
    for prefix in ["imagenet_subset/seed1993", "imagenet/seed1993"] {
        let base = if prefix.starts_with("imagenet/") {
            "b500"
        } else {
            "b50"
        };
        assert_eq!(
            augment(&format!("train/{prefix}/podnet/seed0/{base}/t0")),
            "imagenet_podnet"
        );
        assert_eq!(
            augment(&format!("train/{prefix}/lucir/seed0/{base}/t0")),
            "imagenet"
        );
    }
    assert_eq!(
        augment("train/cifar100/podnet0/podnet/seed0/b50/t0"),
        "cifar_podnet"
    );
    // PODNet's iCaRL numbers are NME: they sit in the NME table, beside our
    // iCaRL rows, and not in the CNN one.
    let table = |name: &str| params(&format!("render/{name}"));
    let rows = |name: &str| -> Vec<(String, f64)> {
        table(name)["table"]["reference"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["row"].as_str().unwrap().to_string(),
                    r["mean"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert!(!rows("cifar100_cnn").iter().any(|(r, _)| r == "icarl"));
    assert!(rows("cifar100_nme").contains(&("icarl".to_string(), 44.2)));
    // The NME table reads cifar_icarl's aggregate (an edge of the DAG).
    let dot = p
        .run(&["dag", path.to_str().unwrap(), "--format", "dot"])
        .ok()
        .stdout;
    let id = |label: &str| -> String {
        let line = dot
            .lines()
            .find(|l| l.contains(&format!("[label=\"{label}\\n")))
            .unwrap_or_else(|| panic!("{label} not in the DAG"));
        line.trim().split(' ').next().unwrap().to_string()
    };
    let edge = format!(
        "{} -> {} ",
        id("aggregate/cifar_icarl"),
        id("render/cifar100_nme")
    );
    assert!(dot.contains(&edge), "no {edge}");
}

#[test]
fn paper_config_plans_without_any_dataset_and_names_missing_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    for cfg in ["configs/paper.yaml", "configs/cifar100-smoke.yaml"] {
        let path = root.join(cfg);
        let path = path.to_str().unwrap();
        let dag = p.run(&["dag", path]).ok().stdout;
        for kind in ["train", "evaluate", "aggregate", "render", "plot"] {
            assert!(
                dag.contains(&format!("{kind}/")),
                "{cfg}: no {kind} stage in\n{dag}"
            );
        }
        let store = p.path(&format!("store-{}", cfg.replace('/', "-")));
        if cfg.ends_with("paper.yaml") {
            // No ImageNet here: status names the missing folder, run refuses.
            let st = p.run(&["status", path, "--store", store.to_str().unwrap()]);
            assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);
            assert!(
                st.stdout
                    .contains("to-run   prepare/imagenet: source root is missing: ")
                    && st.stdout.contains("2 source(s) missing")
                    && st.stdout.contains("to-run   prepare/cifar100: new stage"),
                "{}",
                st.stdout
            );
            let j = p
                .run(&["status", path, "--store", store.to_str().unwrap(), "--json"])
                .ok()
                .json();
            let missing: Vec<&str> = j["missing_sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["stage"].as_str().unwrap())
                .collect();
            assert_eq!(
                missing,
                ["prepare/imagenet", "prepare/imagenet_subset"],
                "{}",
                j["missing_sources"]
            );
            let run = p.run(&["run", path, "--store", store.to_str().unwrap()]);
            assert_eq!(run.code, 2, "{}", run.stderr);
            assert!(
                run.stderr.contains("data/imagenet: cannot read source"),
                "{}",
                run.stderr
            );
            continue;
        }
        let status = p.run(&["status", path, "--store", store.to_str().unwrap()]);
        assert_eq!(status.code, 0, "{cfg}: {}{}", status.stdout, status.stderr);
        assert!(
            status
                .stdout
                .contains("to-run   prepare/cifar100: new stage")
                && status.stdout.contains("to-run   render/cifar100_cnn"),
            "{cfg}:\n{}",
            status.stdout
        );
    }
}

/// A 32-px image folder (PNG scans, as a user's own small dataset) trains
/// with CIFAR-style augmentation when its config says so: the padded random
/// crop on the whole image, not ImageNet's RandomResizedCrop; explain shows
/// it in the train params (part of the key).
#[test]
fn a_small_image_folder_trains_with_cifar_style_augmentation_when_asked() {
    let p = Project::new();
    for (split, n) in [("train", 8), ("val", 3)] {
        for c in 0..3u32 {
            let dir = p.path(&format!("tree/{split}/n{c:02}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let v = ((x * (c + 2) + y * (i + 1)) % 7) as u8 * 30;
                    image::Rgb([v, (v / 2) ^ (c as u8 * 60), (x + y) as u8])
                });
                img.save(dir.join(format!("scan{i}.png"))).unwrap();
            }
        }
    }
    let config = |folder: &str, preset: &str| {
        format!(
            "datasets:\n  scans: {{image_folder: {{root: tree, size: 32{folder}}}}}\norders:\n  o: {{explicit: [2, 0, 1]}}\n\
             settings:\n  s: {{base: 2, increment: 1, steps: 1}}\nmethods:\n  m: {{preset: {preset}, memory: {{per_class: 2}}}}\n\
             recipes:\n  r: {{epochs: 1, batch_size: 4, lr: 0.01}}\n\
             experiments:\n  e: {{dataset: scans, orders: [o], settings: [s], methods: [m], recipe: r, network: tiny}}\n"
        )
    };
    let params = |p: &Project| {
        p.run(&["explain", "c.yaml", "train/scans/o/m/seed0/b2/t0", "--json"])
            .ok()
            .json()["params"]
            .clone()
    };
    p.write("c.yaml", &config(", augment: cifar", "finetune"));
    let j = params(&p);
    assert_eq!(j["augment"], "cifar_lucir", "{j}");
    assert_eq!(j.get("crop"), None, "{j}");
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert_eq!(r.json()["failed"], 0, "{}", r.stderr);
    // Each preset takes its reference's variant of the style: PODNet's
    // CIFAR pipeline (brightness jitter, its statistics), and on ImageNet
    // style its colour jitter.
    p.write("c.yaml", &config(", augment: cifar", "podnet"));
    assert_eq!(params(&p)["augment"], "cifar_podnet");
    p.write("c.yaml", &config("", "podnet"));
    assert_eq!(params(&p)["augment"], "imagenet_podnet");
    p.write("c.yaml", &config("", "lucir"));
    assert_eq!(params(&p)["augment"], "imagenet");
    // A crop size belongs to the ImageNet style.
    p.write("c.yaml", &config(", augment: cifar, crop: 24", "finetune"));
    let r = p.run(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("datasets.scans.image_folder.crop")
            && r.stderr.contains("a crop size is for `augment: imagenet`"),
        "{}",
        r.stderr
    );
    // The dataset's own statistics: in the train params (so in the key),
    // in the model's description (so evaluation normalises alike), and a
    // standard deviation that cannot divide is refused by name.
    let own = config(", augment: cifar", "finetune").replace(
        "size: 32, augment: cifar}}",
        "size: 32, augment: cifar}, normalize: {mean: [0.3, 0.3, 0.2], std: [0.2, 0.2, 0.25]}}",
    );
    assert!(own.contains("normalize"), "{own}");
    p.write("c.yaml", &own);
    let j = params(&p);
    assert_eq!(j["normalize"]["std"][2], 0.25, "{j}");
    assert_eq!(j["augment"], "cifar_lucir", "{j}");
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert_eq!(r.json()["failed"], 0, "{}", r.stderr);
    // The first run left a record under the key without `normalize`.
    let rec = current_action(&p, "c.yaml", "train/scans/o/m/seed0/b2/t0");
    let d = rec["outputs"]["model.json"]["digest"].as_str().unwrap();
    let model: Value = serde_json::from_slice(
        &std::fs::read(p.store().join("cas").join(&d[..2]).join(&d[2..])).unwrap(),
    )
    .unwrap();
    assert_eq!(model["normalize"]["mean"][0], 0.3, "{model}");
    p.write(
        "c.yaml",
        &own.replace("std: [0.2, 0.2, 0.25]", "std: [0.2, 0, 0.25]"),
    );
    let r = p.run(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("datasets.scans.normalize.std[1]")
            && r.stderr.contains("expected a finite number above 0"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_small_image_folder_trains_at_its_own_size_and_a_crop_above_it_is_refused() {
    let p = Project::new();
    for (split, n) in [("train", 6), ("val", 3)] {
        for (wnid, rgb) in [("n01", [200u8, 30, 30]), ("n02", [30, 200, 30])] {
            let dir = p.path(&format!("tree/{split}/{wnid}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_pixel(40 + 3 * i, 36, image::Rgb(rgb));
                img.save(dir.join(format!("img{i}.JPEG"))).unwrap();
            }
        }
    }
    let config = |folder: &str| {
        format!(
            "datasets:\n  small: {{image_folder: {{root: tree, {folder}}}}}\norders:\n  o: {{explicit: [1, 0]}}\n\
             settings:\n  s: {{base: 1, increment: 1, steps: 1}}\nmethods:\n  ce: {{preset: finetune, memory: {{per_class: 2}}}}\n\
             recipes:\n  r: {{epochs: 1, batch_size: 4, lr: 0.01}}\n\
             experiments:\n  e: {{dataset: small, orders: [o], settings: [s], methods: [ce], recipe: r, network: tiny}}\n"
        )
    };
    // 32-px images and no crop: training and evaluation crop 32, not 224.
    p.write("c.yaml", &config("size: 32"));
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert_eq!(r.json()["failed"], 0, "{}", r.stderr);
    let train = find_action(&p.store(), "train/small/o/ce/seed0/b1/t0");
    assert_eq!(train["key_record"]["params"]["crop"], 32, "{train}");
    assert!(
        find_action(&p.store(), "evaluate/small/o/ce/seed0/s/t1")["outputs"]["eval.json"]
            .is_object()
    );
    // A crop larger than the prepared images is caught at resolution.
    p.write("c.yaml", &config("size: 32, crop: 48"));
    let r = p.run(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("datasets.small.image_folder.crop")
            && r.stderr.contains("is 48; expected 8..=32"),
        "{}",
        r.stderr
    );
    // At ImageNet's size the crop is ImageNet's, and the key has no crop.
    p.write("c.yaml", &config("size: 256"));
    let j = p
        .run(&[
            "explain",
            "c.yaml",
            "train/small/o/ce/seed0/b1/t0",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(j["params"]["augment"], "imagenet", "{}", j["params"]);
    assert_eq!(j["params"].get("crop"), None, "{}", j["params"]);
    // The files of its code digest, derived from the train entry point:
    // the order spec the order reader uses, the steps module, no loss of
    // another method and no test file.
    let files: Vec<&str> = j["code_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    for f in [
        "train/src/stage/train.rs",
        "train/src/stage/steps.rs",
        "stages/src/order/spec.rs",
    ] {
        assert!(files.contains(&f), "{f} not in {files:?}");
    }
    for f in [
        "train/src/loss/lucir.rs",
        "train/src/loss/tests.rs",
        "train/src/stage/finetune.rs",
    ] {
        assert!(!files.contains(&f), "{f} in {files:?}");
    }
    p.write("c.yaml", &config("size: 256, crop: 192"));
    let j = p
        .run(&[
            "explain",
            "c.yaml",
            "train/small/o/ce/seed0/b1/t0",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(j["params"]["crop"], 192, "{}", j["params"]);
}

/// `bsce-torch probe` runs one step of each method on the params the plan
/// writes; `tests/parity/check.py`, an independent PyTorch implementation
/// of the networks, losses and SGD written from the formulas, recomputes
/// every loss term, gradient and updated parameter from the same weights
/// and batch and must agree to 1e-5 relative.
#[test]
fn every_training_step_agrees_with_an_independent_pytorch_implementation() {
    let p = Project::new();
    p.write(
        "c.yaml",
        r#"
datasets:
  synth:
    synthetic: {classes: 4, train_per_class: 10, test_per_class: 2, image_size: 16, seed: 7}
orders:
  o: {numpy_seed: 1993}
settings:
  s: {base: 2, increment: 2}
methods:
  ce: {preset: finetune, memory: {per_class: 2}}
  bsce: {extends: ce, bsce: true}
  icarl: {preset: icarl, memory: {per_class: 2}}
  icarl_bsce: {extends: icarl, bsce: true}
  icarl_bsce_bce: {extends: icarl, bsce: true, bsce_choices: {icarl_distillation: {kind: sigmoid_bce, weight: 1.0}}}
  lucir: {preset: lucir, memory: {per_class: 2}}
  lucir_bsce: {extends: lucir, bsce: true}
  lucir_bsce_nomr: {extends: lucir, bsce: true, bsce_choices: {margin_ranking: false}}
  lucir_cbf: {extends: lucir, balanced_finetune: true}
  lucir_bsce_cbf: {extends: lucir, bsce: true, balanced_finetune: true}
  lucir_bsce_nomr_cbf: {extends: lucir, bsce: true, balanced_finetune: true, bsce_choices: {margin_ranking: false}}
  podnet: {preset: podnet, memory: {per_class: 2}}
  podnet_bsce: {extends: podnet, bsce: true}
  podnet_bsce_before: {extends: podnet, bsce: true, bsce_choices: {nca_prior: before_scale}}
  podnet_bsce_softmax: {extends: podnet, bsce: true, bsce_choices: {nca_prior: balanced_softmax}}
  podnet_bsce_cbf: {extends: podnet, bsce: true, balanced_finetune: true}
recipes:
  r: {epochs: 1, batch_size: 8, lr: 0.05, momentum: 0.9, weight_decay: 0.0005}
  bce: {epochs: 1, batch_size: 8, lr: 2.0, weight_decay: 0.00001}
experiments:
  e: {dataset: synth, orders: [o], settings: [s], methods: [ce, bsce, icarl, icarl_bsce, icarl_bsce_bce, lucir, lucir_bsce, lucir_bsce_nomr, lucir_cbf, lucir_bsce_cbf, lucir_bsce_nomr_cbf, podnet, podnet_bsce, podnet_bsce_before, podnet_bsce_softmax, podnet_bsce_cbf], recipe: r, method_recipes: {icarl: bce}, network: tiny}
"#,
    );
    let torch = Path::new(BIN).with_file_name("bsce-torch");
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/check.py");
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut finetuned = Vec::new();
    let status = p.run(&["status", "c.yaml", "--json"]).ok().json();
    // Every train node: a base task shared by a method and its BSCE
    // variant (balanced data) is one node, probed once.
    let trains: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "train")
        .map(|n| n["label"].as_str().unwrap().to_string())
        .collect();
    for label in &trains {
        let params = p.run(&["explain", "c.yaml", label, "--json"]).ok().json()["params"].clone();
        let task = params["task"].as_u64().unwrap();
        let finetunes = params["method"]["balanced_finetune"] == true && task > 0;
        for phase in ["main", "finetune"] {
            if phase == "finetune" && !finetunes {
                continue;
            }
            let name = label.replace('/', "_");
            let out = p.path(&format!("probe/{name}/{phase}"));
            let spec = p.path(&format!("probe/{name}-{phase}.json"));
            std::fs::create_dir_all(spec.parent().unwrap()).unwrap();
            std::fs::write(
                &spec,
                serde_json::to_vec(&serde_json::json!({
                    "params": params, "phase": phase, "batch": 8, "image_size": 16, "seed": task,
                }))
                .unwrap(),
            )
            .unwrap();
            let probe = Command::new(&torch)
                .arg("probe")
                .arg(&spec)
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                probe.status.success(),
                "probe {label} {phase}: {}",
                String::from_utf8_lossy(&probe.stderr)
            );
            let r = Command::new("python3")
                .arg(&check)
                .arg(&out)
                .output()
                .unwrap();
            cases += 1;
            if phase == "finetune" {
                finetuned.push(label.clone());
            }
            if !r.status.success() {
                failures.push(format!(
                    "{label} ({phase}):\n{}{}",
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} steps disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every method's second task, the base tasks they do not share, and
    // fine-tuning where a method has it (PODNet by default, PODNet+BSCE
    // and LUCIR when asked).
    assert_eq!(trains.iter().filter(|l| l.ends_with("/s/t1")).count(), 16);
    assert_eq!(finetuned.len(), 5, "{finetuned:?}");
    assert!(cases >= 16 + 4 + 5, "{cases}");
}

/// The pilot configs put each choice only a GPU run settles side by side,
/// and `gpu-check.sh --pilot NAME` knows them.
#[test]
fn the_pilots_put_each_open_choice_side_by_side() {
    let p = Project::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = p.path("store");
    let params = |pilot: &str, method: &str| {
        let config = root.join(format!("configs/pilot-{pilot}.yaml"));
        let label = format!("train/cifar100/podnet0/{method}/seed0/cifar_5steps/t1");
        p.run(&[
            "explain",
            config.to_str().unwrap(),
            &label,
            "--store",
            store.to_str().unwrap(),
            "--json",
        ])
        .ok()
        .json()["params"]
            .clone()
    };
    // iCaRL at its BCE rate; iCaRL+BSCE at the softmax rate, with each
    // distillation.
    assert_eq!(params("icarl-bsce", "icarl")["recipe"]["lr"], 2.0);
    for (m, kind) in [
        ("icarl_bsce", "softmax_kd"),
        ("icarl_bsce_sigmoid_kd", "sigmoid_bce"),
    ] {
        let p = params("icarl-bsce", m);
        assert_eq!(p["recipe"]["lr"], 0.1, "{m}");
        assert_eq!(
            p["method"]["bsce_choices"]["icarl_distillation"]["kind"],
            kind
        );
    }
    // PODNet+BSCE's three placements of the prior.
    for (m, prior) in [
        ("podnet_bsce", "after_scale"),
        ("podnet_bsce_before", "before_scale"),
        ("podnet_bsce_softmax", "balanced_softmax"),
    ] {
        assert_eq!(
            params("podnet-bsce", m)["method"]["bsce_choices"]["nca_prior"],
            prior,
            "{m}"
        );
    }
    // LUCIR+BSCE with and without margin ranking, beside LUCIR.
    assert_eq!(params("lucir-bsce", "lucir")["method"]["bsce"], false);
    assert_eq!(
        params("lucir-bsce", "lucir_bsce")["method"]["bsce_choices"]["margin_ranking"],
        true
    );
    assert_eq!(
        params("lucir-bsce", "lucir_bsce_no_mr")["method"]["bsce_choices"]["margin_ranking"],
        false
    );
    let check = |args: &[&str]| {
        Command::new("bash")
            .arg(root.join("scripts/gpu-check.sh"))
            .arg(p.path("gpu"))
            .args(args)
            .output()
            .unwrap()
    };
    let r = check(&["--pilot", "nosuch"]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("known: icarl-bsce lucir-bsce podnet-bsce"),
        "{err}"
    );
    let r = check(&["--cpu", "--pilot", "icarl-bsce"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--pilot is GPU work"));
}

/// The parity checker is not a test that cannot fail: fed steps made with
/// a deliberate deviation (a margin, a clamp, a BatchNorm momentum, a
/// weight, a frozen block reported as trained, ...), it fails each.
#[test]
fn the_parity_check_fails_on_every_deliberate_deviation() {
    let selftest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/selftest.py");
    let r = Command::new("python3").arg(&selftest).output().unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
}
