//! The engine as a user meets it: freshness (a second run does nothing, a change reruns exactly what it affects), cancellation, concurrency, config and flag errors, exit codes, closed pipes.

use crate::support::*;

#[test]
fn second_run_executes_nothing() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    let first = p.run(&["run", "c.yaml", "--json"]).ok();
    let j = first.json();
    assert_eq!(j["stages"], 7);
    assert_eq!(j["executed"], 7);
    let second = p.run(&["run", "c.yaml", "--json"]).ok();
    let j = second.json();
    assert_eq!(j["executed"], 0);
    assert_eq!(j["cached"], 7);
    assert!(
        second.stderr.contains("0 executed, 7 from cache"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("(nothing to do)"),
        "{}",
        second.stderr
    );
}

#[test]
fn keys_are_identical_across_directories() {
    let a = Project::new();
    let b = Project::new();
    a.write("x/c.yaml", SMALL);
    b.write("deeper/y/c.yaml", SMALL);
    a.run(&["run", "x/c.yaml"]).ok();
    b.run(&["run", "deeper/y/c.yaml"]).ok();
    let keys = |p: &Project, c: &str| -> Vec<(String, String)> {
        let j = p.run(&["status", c, "--json"]).ok().json();
        j["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["label"].as_str().unwrap().into(),
                    n["key"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let ka = keys(&a, "x/c.yaml");
    assert_eq!(ka.len(), 7);
    assert_eq!(ka, keys(&b, "deeper/y/c.yaml"));
}

#[test]
fn a_param_change_reruns_exactly_that_stage_and_its_dependants() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    p.run(&["run", "c.yaml"]).ok();
    // Order `a` gets another seed: its order stage and the two task splits
    // that read it rerun; the dataset and order `b`'s stages do not.
    p.write(
        "c.yaml",
        &SMALL.replace("numpy_seed: 1993", "numpy_seed: 7"),
    );
    let st = p.status("c.yaml");
    let to_run: Vec<_> = st.iter().filter(|s| s.1 == "to-run").collect();
    assert_eq!(to_run.len(), 3, "{st:?}");
    let order_a = st.iter().find(|s| s.0 == "order/synth/a").unwrap();
    assert_eq!(
        order_a.2,
        vec!["param spec.numpy_seed.seed changed 1993 -> 7"]
    );
    let task = st.iter().find(|s| s.0 == "tasks/synth/a/s2").unwrap();
    assert_eq!(
        task.2,
        vec!["input order/order.json is rebuilt by order/synth/a"]
    );
    let dry = p.run(&["run", "c.yaml", "--dry-run"]).ok();
    assert!(
        dry.stdout
            .contains("to-run   order/synth/a: param spec.numpy_seed.seed changed 1993 -> 7"),
        "{}",
        dry.stdout
    );
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(
        executed(&j),
        labels(&["order/synth/a", "tasks/synth/a/s1", "tasks/synth/a/s2"])
    );
    // A setting's increment changes: only the two splits using it.
    p.write(
        "c.yaml",
        &SMALL
            .replace("numpy_seed: 1993", "numpy_seed: 7")
            .replace("{base: 2, increment: 2}", "{base: 2, increment: 1}"),
    );
    let st = p.status("c.yaml");
    let task = st.iter().find(|s| s.0 == "tasks/synth/b/s2").unwrap();
    assert_eq!(task.2, vec!["param increment changed 2 -> 1"]);
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(
        executed(&j),
        labels(&["tasks/synth/a/s2", "tasks/synth/b/s2"])
    );
}

/// Issue 23, L6: two configs share a store. Each config's rerun reasons
/// compare with its own last run; a stage it never ran is compared with
/// another config's run, and says so.
#[test]
fn rerun_reasons_come_from_the_configs_own_last_run() {
    let p = Project::new();
    let seed = |n: u32| SMALL.replace("numpy_seed: 1993", &format!("numpy_seed: {n}"));
    p.write("a.yaml", SMALL);
    p.run(&["run", "a.yaml"]).ok();
    p.write("b.yaml", &seed(7));
    let order_a = |config: &str| {
        let st = p.status(config);
        st.into_iter().find(|s| s.0 == "order/synth/a").unwrap().2
    };
    let why = order_a("b.yaml");
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(
        why[0].starts_with("not run by this config in this store; compared with the last run by ")
            && why[0].ends_with("a.yaml"),
        "{why:?}"
    );
    assert_eq!(why[1], "param spec.numpy_seed.seed changed 1993 -> 7");
    p.run(&["run", "b.yaml"]).ok();
    // a.yaml's next edit is explained against a.yaml's run, not b.yaml's
    // (which ran last and would say 7 -> 11).
    p.write("a.yaml", &seed(11));
    assert_eq!(
        order_a("a.yaml"),
        vec!["param spec.numpy_seed.seed changed 1993 -> 11"]
    );
}

#[test]
fn a_code_change_reruns_that_stage_and_cuts_off_identical_outputs() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    p.run(&["run", "c.yaml"]).ok();
    let salt = [("BSCE_PIPE_CODE_SALT", "order:edited")];
    let r = p.run_env(&["run", "c.yaml", "--json"], &salt).ok();
    // Both order stages rerun with the reason; their outputs are
    // byte-identical, so the task splits stay cached (early cutoff).
    assert_eq!(
        executed(&r.json()),
        labels(&["order/synth/a", "order/synth/b"])
    );
    assert!(
        r.stderr
            .contains("run      order/synth/a on cpu: code of stage order changed"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json()["cached"], 5);
    let r = p
        .run_env(
            &["run", "c.yaml", "--json"],
            &[("BSCE_PIPE_CODE_SALT", "tasks:edited")],
        )
        .ok();
    assert_eq!(
        executed(&r.json()),
        labels(&[
            "tasks/synth/a/s1",
            "tasks/synth/a/s2",
            "tasks/synth/b/s1",
            "tasks/synth/b/s2"
        ])
    );
}

#[test]
fn forced_stages_rerun_with_reason() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    p.run(&["run", "c.yaml"]).ok();
    let r = p
        .run(&["run", "c.yaml", "--force", "order/", "--json"])
        .ok();
    assert_eq!(
        executed(&r.json()),
        labels(&["order/synth/a", "order/synth/b"])
    );
    assert!(
        r.stderr.contains("order/synth/b on cpu: forced"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_killed_run_leaves_no_partial_result_and_the_next_run_resumes() {
    let p = Project::new();
    p.write("c.yaml", SLOW);
    let mut child = p.spawn(&["run", "c.yaml", "--jobs", "1"]);
    wait_for(&mut child, |s| {
        s.contains("done     tasks/small/a/s") && s.contains("run      prepare/big")
    });
    // Mid-stage: preparing the big set takes about a second.
    std::thread::sleep(std::time::Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    // Every blob in the store is whole; the killed stage has no record.
    let v = p
        .run(&["cache", "verify", "--store", ".bsce", "--json"])
        .ok()
        .json();
    assert_eq!(v["quarantined"].as_object().unwrap().len(), 0);
    let st = p.status("c.yaml");
    let state = |l: &str| st.iter().find(|s| s.0 == l).unwrap().1.clone();
    assert_eq!(state("prepare/small"), "cached");
    assert_eq!(state("tasks/small/a/s"), "cached");
    assert_eq!(state("prepare/big"), "to-run");
    let r = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(
        executed(&r),
        labels(&["order/big/a", "prepare/big", "tasks/big/a/s"])
    );
    assert_eq!(r["cached"], 3);
    // The killed run's work folder is gone.
    let leftovers: Vec<_> = std::fs::read_dir(p.store().join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn two_concurrent_runs_never_run_a_stage_twice() {
    let p = Project::new();
    p.write("c.yaml", SLOW);
    let a = p.spawn(&["run", "c.yaml", "--json", "--jobs", "2"]);
    let b = p.spawn(&["run", "c.yaml", "--json", "--jobs", "2"]);
    let ra: Run = a.wait_with_output().unwrap().into();
    let rb: Run = b.wait_with_output().unwrap().into();
    let (ja, jb) = (ra.ok().json(), rb.ok().json());
    let mut all = executed(&ja);
    all.extend(executed(&jb));
    all.sort();
    assert_eq!(
        all,
        labels(&[
            "order/big/a",
            "order/small/a",
            "prepare/big",
            "prepare/small",
            "tasks/big/a/s",
            "tasks/small/a/s"
        ])
    );
    assert_eq!(
        ja["executed"].as_u64().unwrap() + ja["cached"].as_u64().unwrap(),
        6
    );
    assert_eq!(
        jb["executed"].as_u64().unwrap() + jb["cached"].as_u64().unwrap(),
        6
    );
    let v = p
        .run(&["cache", "verify", "--store", ".bsce", "--json"])
        .ok()
        .json();
    assert_eq!(v["quarantined"].as_object().unwrap().len(), 0);
}

#[test]
fn an_impossible_synthetic_size_is_rejected_with_the_limit_named() {
    assert_bad_input(
        &SMALL.replace("train_per_class: 20", "train_per_class: 4000000000"),
        &[
            "datasets.synth.synthetic",
            "6 classes x 4000000005 images x 8x8x3 bytes",
            "limited to 16 GiB",
        ],
    );
}

#[test]
fn bad_inputs_are_one_clear_error_and_write_nothing() {
    // Unknown key, with its position and a suggestion.
    assert_bad_input(
        &SMALL.replace("train_per_class", "train_per_clas"),
        &[
            "c.yaml:4:29: datasets.synth.synthetic.train_per_clas: unknown field `train_per_clas`",
            "did you mean `train_per_class`?",
        ],
    );
    // Reference to an unknown dataset.
    assert_bad_input(
        &SMALL.replace("dataset: synth", "dataset: synht"),
        &[
            "c.yaml:13:",
            "experiments.e.dataset",
            "unknown dataset `synht`; did you mean `synth`?",
        ],
    );
    // Reference to an unknown method.
    assert_bad_input(
        &format!("{SMALL}    methods: [lucirr]\n    recipe: r\nmethods:\n  lucir: {{preset: lucir}}\nrecipes:\n  r: {{epochs: 1, batch_size: 8, lr: 0.1}}\n"),
        &["experiments.e.methods[0]", "unknown method `lucirr`; did you mean `lucir`?"],
    );
    // Method options: a fine-tuning the preset lacks, values out of range,
    // unknown choices (with the key path and, where close, a suggestion).
    let method = |m: &str| {
        format!("{SMALL}    methods: [m]\n    recipe: r\nmethods:\n  m: {m}\nrecipes:\n  r: {{epochs: 1, batch_size: 8, lr: 0.1}}\n")
    };
    assert_bad_input(
        &method("{preset: icarl, balanced_finetune: true}"),
        &[
            "methods.m.balanced_finetune",
            "only lucir and podnet have a class-balanced fine-tuning; icarl has none",
        ],
    );
    assert_bad_input(
        &method("{preset: podnet, hyper: {pod_flat: -1}}"),
        &[
            "methods.m.hyper.pod_flat",
            "is -1; expected a finite number of 0 or more",
        ],
    );
    assert_bad_input(
        &method("{preset: podnet, hyper: {pod_flatt: 1}}"),
        &["methods.m.hyper.pod_flatt", "did you mean `pod_flat`?"],
    );
    assert_bad_input(
        &method("{preset: podnet, bsce: true, bsce_choices: {nca_prior: sideways}}"),
        &[
            "methods.m.bsce_choices.nca_prior",
            "unknown variant `sideways`",
            "after_scale",
        ],
    );
    assert_bad_input(
        &method("{preset: lucir, finetune: {lr: 0}}"),
        &["methods.m.finetune.lr", "is 0; expected a positive number"],
    );
    assert_bad_input(
        &method("{preset: podnet_nmee}"),
        &["methods.m.preset", "podnet_nme"],
    );
    // A cycle.
    assert_bad_input(
        &format!("{SMALL}methods:\n  a: {{extends: b}}\n  b: {{extends: a, preset: icarl}}\n"),
        &["methods.", "cycle: a -> b -> a"],
    );
    // Invalid values.
    assert_bad_input(
        &SMALL.replace("classes: 6", "classes: 1"),
        &[
            "datasets.synth.synthetic.classes",
            "must be between 2 and 65535",
        ],
    );
    assert_bad_input(
        &SMALL.replace("[5, 4, 3, 2, 1, 0]", "[5, 4, 3, 2, 1, 1]"),
        &["c.yaml:7:", "orders.b.explicit[5]", "class 1 appears twice"],
    );
    assert_bad_input(
        &SMALL.replace("{base: 4, increment: 1}", "{base: 9, increment: 1}"),
        &[
            "experiments.e.settings[1]",
            "setting `s1` needs 10 classes",
            "dataset `synth` has 6",
        ],
    );
    assert_bad_input(
        &SMALL.replace("seed: 1}", "seed: -3}"),
        &["c.yaml:4:90: datasets.synth.synthetic.seed: invalid type: integer `-3`, expected u64"],
    );
    // A YAML syntax error.
    assert_bad_input("datasets: [\n", &["c.yaml:"]);
    // A missing source archive.
    assert_bad_input(
        "datasets:\n  c:\n    cifar100: {path: nope.tar.gz}\norders:\n  o: {named: podnet_cifar100_0}\nsettings:\n  s: {base: 50, increment: 10}\nexperiments:\n  e: {dataset: c, orders: [o], settings: [s]}\n",
        &["nope.tar.gz", "no such file or directory"],
    );
    assert_bad_input(
        "datasets:\n  c:\n    cifar100: {path: x}\norders:\n  o: {named: podnet_cifar100_9}\nsettings:\n  s: {base: 50, increment: 10}\nexperiments:\n  e: {dataset: c, orders: [o], settings: [s]}\n",
        &["orders.o.named", "unknown order `podnet_cifar100_9`; did you mean `podnet_cifar100_0`?"],
    );
    // Stage kinds named as config keys.
    assert_bad_input(
        &format!("{SMALL}stages_per_gpu: {{trian: 2}}\n"),
        &[
            "stages_per_gpu.trian",
            "is not a stage kind that runs on a GPU (those are train, evaluate); did you mean `train`?",
        ],
    );
    assert_bad_input(
        &format!("{SMALL}executor:\n  slurm:\n    kinds: {{evaluat: {{cpus: 2}}}}\n"),
        &[
            "executor.slurm.kinds.evaluat",
            "is not a stage kind (those are ",
            "did you mean `evaluate`?",
        ],
    );
    assert_bad_input(
        &format!("{SMALL}executor:\n  slurm: {{poll_seconds: 0}}\n"),
        &["executor.slurm.poll_seconds", "expected more than 0"],
    );
}

#[test]
fn missing_or_unreadable_config_is_a_clear_error() {
    let p = Project::new();
    let r = p.run(&["run", "nope.yaml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("nope.yaml: cannot read config"),
        "{}",
        r.stderr
    );
    p.write("dir.yaml/x", "");
    let r = p.run(&["status", "dir.yaml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("dir.yaml: cannot read config"),
        "{}",
        r.stderr
    );
    assert!(!p.store().exists());
}

/// A download that cannot reach its server (the network down) fails the
/// stage, exit 1 (not bad input), with one summary line for what it
/// blocks; the next attempt does not blame the inputs ("same inputs failed
/// last time") but says the environment failed.
#[test]
fn a_network_failure_is_not_blamed_on_the_inputs() {
    let p = Project::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens there any more: connection refused.
    p.write(
        "c.yaml",
        &format!(
            "datasets:\n  c:\n    cifar100:\n      path: data/cifar.tar.gz\n      url: http://127.0.0.1:{port}/cifar.tar.gz\n      sha256: {}\n\
             orders:\n  o: {{numpy_seed: 0}}\nsettings:\n  t: {{base: 50, increment: 10}}\n\
             experiments:\n  e: {{dataset: c, orders: [o], settings: [t]}}\n",
            "0".repeat(64)
        ),
    );
    let r = p.run(&["run", "c.yaml", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("FAILED   prepare/c"), "{}", r.stderr);
    assert!(r.stderr.contains("downstream of prepare/c"), "{}", r.stderr);
    assert_eq!(r.json()["failed_on_input"], 0);
    let st = p.status("c.yaml");
    let c = st.iter().find(|s| s.0 == "prepare/c").unwrap();
    assert_eq!(c.2.len(), 1, "{c:?}");
    assert!(
        c.2[0].starts_with("last attempt failed on its environment, not its inputs")
            && c.2[0].contains("127.0.0.1"),
        "{c:?}"
    );
}

#[test]
fn a_failing_stage_is_reported_recorded_and_never_cached() {
    let p = Project::new();
    p.write("broken.tar.gz", "this is not a gzip archive");
    p.write(
        "c.yaml",
        "datasets:\n  c:\n    cifar100: {path: broken.tar.gz}\n  s:\n    synthetic: {classes: 4, train_per_class: 5, test_per_class: 1, image_size: 8}\norders:\n  o: {numpy_seed: 0}\nsettings:\n  t: {base: 2, increment: 1}\nexperiments:\n  e: {dataset: c, orders: [o], settings: [t]}\n  f: {dataset: s, orders: [o], settings: [t]}\n",
    );
    let r = p.run(&["run", "c.yaml", "--json", "--keep-going", "--jobs", "1"]);
    // The archive is bad input, as a bad config is: exit 2.
    assert_eq!(r.code, 2, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["failed"], 1);
    assert_eq!(j["failed_on_input"], 1);
    assert_eq!(j["skipped"], 2);
    assert_eq!(j["executed"], 3);
    assert!(
        r.stderr
            .contains("FAILED   prepare/c: exited with status 1: error:"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("broken.tar.gz"), "{}", r.stderr);
    // The error once: the log tail under it leaves out the line it repeats.
    let failed = r
        .stderr
        .lines()
        .find(|l| l.starts_with("FAILED   prepare/c"))
        .unwrap();
    let message = &failed[failed.find("error: ").unwrap()..];
    assert_eq!(r.stderr.matches(message).count(), 1, "{}", r.stderr);
    // One summary line for what the failure blocked, counted per kind;
    // each stage in --json (and with --verbose).
    assert!(
        r.stderr
            .contains("skipped  2 stages downstream of prepare/c: 1 order, 1 "),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("(input prepare/c failed)"),
        "{}",
        r.stderr
    );
    assert_eq!(j["skipped_labels"]["order/c/o"], "prepare/c", "{j}");
    // Not cached: the next run tries again and says why.
    let st = p.status("c.yaml");
    let c = st.iter().find(|s| s.0 == "prepare/c").unwrap();
    assert_eq!(c.2, vec!["same inputs failed last time"]);
    let r = p.run(&["run", "c.yaml", "--json", "--verbose"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.json()["failed"], 1);
    assert!(
        r.stderr
            .contains("skipped  order/c/o (input prepare/c failed)"),
        "{}",
        r.stderr
    );
}

#[test]
fn dag_prints_text_dot_and_mermaid_and_merges_identical_nodes() {
    let p = Project::new();
    // A second experiment sharing dataset, order and one setting adds no node.
    p.write(
        "c.yaml",
        &format!("{SMALL}  e2:\n    dataset: synth\n    orders: [a]\n    settings: [s2]\n"),
    );
    let text = p.run(&["dag", "c.yaml"]).ok().stdout;
    assert!(text.starts_with("prepare/synth [prepare]\n"), "{text}");
    assert!(text.contains("├── order/synth/a [order]"), "{text}");
    assert!(text.contains("tasks/synth/b/s1 [tasks]"), "{text}");
    assert!(text.trim_end().ends_with("7 stages"), "{text}");
    let dot = p.run(&["dag", "c.yaml", "--format", "dot"]).ok().stdout;
    assert!(dot.starts_with("digraph bsce {"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 2 + 4 * 2, "{dot}");
    let mm = p.run(&["dag", "c.yaml", "--format", "mermaid"]).ok().stdout;
    assert!(mm.starts_with("flowchart LR"), "{mm}");
    assert!(mm.contains("-->|order|"), "{mm}");
}

#[test]
fn store_location_follows_flag_env_and_config() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    p.run(&["run", "c.yaml", "--store", "flagged"]).ok();
    assert!(p.path("flagged/ac").is_dir());
    p.run_env(&["run", "c.yaml"], &[("BSCE_STORE", "from-env")])
        .ok();
    assert!(p.path("from-env/ac").is_dir());
    p.write(
        "sub/c.yaml",
        &format!("{SMALL}store:\n  path: ../configured\n"),
    );
    p.run(&["run", "sub/c.yaml"]).ok();
    assert!(p.path("configured/ac").is_dir());
    assert!(!p.store().exists());
}

#[test]
fn a_closed_stderr_does_not_stop_the_run() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    let mut child = p.spawn(&["run", "c.yaml"]);
    drop(child.stderr.take());
    assert!(child.wait().unwrap().success());
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(j["executed"], 0);
}

/// What the issue asks of code digests, seeds and checkouts, end to end:
/// edits rebuilt with `scripts/setup.sh` in a scratch copy rerun exactly
/// what they change, a source file no digest covers fails the build, and
/// the first checkout's binaries and store are untouched by the second.
#[test]
#[ignore = "rebuilds a scratch checkout in the shared target dir: scripts/test.sh runs it after all other tests"]
fn code_edits_rerun_exactly_what_they_change_and_each_checkout_runs_its_own_code() {
    let main = Checkout {
        root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    };
    assert!(main.bin().exists(), "run scripts/setup.sh first");
    let data = Project::new();
    data.write("c.yaml", SMALL);
    main.run(data.dir.path(), &["run", "c.yaml"]).ok();
    let version = main.run(data.dir.path(), &["--version"]).ok().stdout;
    let status = main
        .run(data.dir.path(), &["status", "c.yaml", "--json"])
        .ok()
        .stdout;

    let (_keep, scratch) = scratch_copy(&main.root);
    let (ok, out) = scratch.setup();
    assert!(ok, "setup of the scratch copy:\n{out}");
    let t = Project::new();
    t.write("t.yaml", TRAINED);
    let first = scratch
        .run(t.dir.path(), &["run", "t.yaml", "--jobs", "1", "--json"])
        .ok();
    let all = executed_of(&first);
    // prepare, order, tasks, 2 methods x 3 tasks x (train, evaluate), and
    // the experiment's aggregate and plot.
    assert_eq!(all.len(), 1 + 1 + 1 + 2 * 3 * 2 + 2, "{all:?}");
    let results: Vec<String> = all
        .iter()
        .filter(|l| l.starts_with("aggregate/") || l.starts_with("plot/"))
        .cloned()
        .collect();
    assert_eq!(results, ["aggregate/e", "plot/e/s"]);

    // (a) A comment and a unit test in the loss code: nothing reruns.
    scratch.edit(
        "train/src/loss/lucir.rs",
        "pub const MARGIN: f64 = 0.5;",
        "// The margin of L's `--dist`.\npub const MARGIN: f64 = 0.5;\n\n#[cfg(test)]\nmod margin_test {\n    #[test]\n    fn margin() {\n        assert_eq!(super::MARGIN, 0.5);\n    }\n}",
    );
    let (ok, out) = scratch.setup();
    assert!(ok, "{out}");
    let st = scratch
        .run(t.dir.path(), &["status", "t.yaml", "--json"])
        .ok()
        .json();
    assert_eq!(st["to_run"], 0, "{st}");

    // (b) One numeric constant of LUCIR's loss: LUCIR's train stages rerun
    // with the reason, and what they feed; the base task's model (no old
    // classes, no margin ranking) is byte-identical, so its evaluation is
    // cut off. A margin of -3, which no cosine gap reaches, switches every
    // margin-ranking term off: a margin moved a little changes the gradient
    // only if some sample's gap falls between the two values, which this
    // tiny run need not have (and K is capped by the one new class).
    scratch.edit(
        "train/src/loss/lucir.rs",
        "pub const MARGIN: f64 = 0.5;",
        "pub const MARGIN: f64 = -3.0;",
    );
    let (ok, out) = scratch.setup();
    assert!(ok, "{out}");
    let st = scratch
        .run(t.dir.path(), &["status", "t.yaml", "--json"])
        .ok()
        .json();
    for n in st["nodes"].as_array().unwrap() {
        let label = n["label"].as_str().unwrap();
        if label.starts_with("train/") && label.contains("/lucir/") {
            assert_eq!(n["reasons"][0], "code of stage train changed", "{n}");
        } else if results.iter().any(|r| r == label) {
            assert_eq!(n["state"], "to-run", "the tables read LUCIR's results: {n}");
        } else if !label.contains("/lucir/") {
            assert_eq!(n["state"], "cached", "{n}");
        }
    }
    let rerun = executed_of(
        &scratch
            .run(t.dir.path(), &["run", "t.yaml", "--jobs", "1", "--json"])
            .ok(),
    );
    let expected: Vec<String> = all
        .iter()
        .filter(|l| {
            l.contains("/lucir/") && (l.starts_with("train/") || !l.ends_with("/t0"))
                || results.contains(l)
        })
        .cloned()
        .collect();
    assert_eq!(rerun, expected);

    // (c) A log message of the training loop: every train stage reruns,
    // gives byte-identical models (CPU, deterministic, seeds from identity),
    // and every evaluation is served by early cutoff. The training logs
    // carry new wall-clock times, which the aggregate reads (train hours),
    // so the result stages rerun too.
    scratch.edit(
        "train/src/stage/train.rs",
        "\"iterations (epoch {}/{})\"",
        "\"training iterations (epoch {}/{})\"",
    );
    let (ok, out) = scratch.setup();
    assert!(ok, "{out}");
    let r = scratch
        .run(t.dir.path(), &["run", "t.yaml", "--jobs", "1", "--json"])
        .ok();
    let rerun = executed_of(&r);
    let trains: Vec<String> = all
        .iter()
        .filter(|l| l.starts_with("train/") || results.contains(l))
        .cloned()
        .collect();
    assert_eq!(rerun, trains, "only the train and result stages rerun");
    assert_eq!(r.json()["cached"], all.len() - trains.len());

    // A source file that no digest covers and no exemption names fails the
    // build, naming the file.
    std::fs::write(scratch.root.join("train/src/stray.rs"), "pub fn f() {}\n").unwrap();
    let (ok, out) = scratch.setup();
    assert!(!ok, "the build must fail:\n{out}");
    assert!(
        out.contains("train/src/stray.rs") && out.contains("NO_OUTPUT_EFFECT"),
        "{out}"
    );
    std::fs::remove_file(scratch.root.join("train/src/stray.rs")).unwrap();

    // The first checkout still runs its own code and sees its own store.
    let scratch_version = scratch.run(t.dir.path(), &["--version"]).ok().stdout;
    assert_ne!(scratch_version, version, "two commits, two versions");
    assert_eq!(
        main.run(data.dir.path(), &["--version"]).ok().stdout,
        version
    );
    assert_eq!(
        main.run(data.dir.path(), &["status", "c.yaml", "--json"])
            .ok()
            .stdout,
        status
    );
}

#[test]
fn printing_commands_end_quietly_on_a_closed_pipe() {
    // The paper config's dag and status are far longer than a pipe buffer.
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/paper.yaml");
    let p = Project::new();
    let store = format!("--store {}", p.path("store").display());
    for (args, extra) in [("dag", ""), ("status", store.as_str())] {
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; \"{BIN}\" {args} \"{}\" {extra} | head -1",
                cfg.display(),
            ))
            .current_dir(p.dir.path())
            .output()
            .unwrap();
        let code = o.status.code().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(code == 0 || code == 141, "{args}: exit {code}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    }
    // A reader that is gone before the first line (doctor's output comes
    // from bsce-torch, through bsce-pipe).
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; \"{BIN}\" doctor | (exec 0<&-; sleep 1)"
        ))
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "doctor: {stderr}");
    assert!(!stderr.contains("panicked"), "doctor: {stderr}");
}

#[test]
fn a_force_label_that_names_no_stage_is_an_error_with_a_suggestion() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    let r = p.run(&["run", "c.yaml", "--force", "prepare/synt"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--force prepare/synt: no stage of this config has that label")
            && r.stderr.contains("did you mean `prepare/synth`?"),
        "{}",
        r.stderr
    );
    assert!(!p.store().exists(), "nothing ran, no store");
    // A prefix ending in '/' and `all` name stages.
    p.run(&["run", "c.yaml", "--force", "order/", "--force", "all"])
        .ok();
}

#[test]
fn exit_codes_follow_the_readme_table() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    // Bad input: 2, before a store exists.
    assert_eq!(p.run(&["run", "missing.yaml"]).code, 2);
    assert_eq!(p.run(&["run", "c.yaml", "--jobs", "0"]).code, 2);
    assert!(!p.store().exists());
    p.run(&["run", "c.yaml"]).ok();
    // An error outside the store (a report folder that cannot be made):
    // 1, not the store's 3.
    p.write("file", "not a folder");
    let r = p.run(&["report", "c.yaml", "--out", "file/sub"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("file/sub"), "{}", r.stderr);
    // The store's problems: 3.
    let blob = blob_of(&p.store(), "order/synth/a", "order.json");
    flip_byte_keeping_size_and_mtime(&blob, 1);
    assert_eq!(p.run(&["cache", "verify"]).code, 3);
    // Its record now names a missing blob until --repair moves it away.
    assert_eq!(p.run(&["cache", "verify", "--repair"]).code, 3);
    assert_eq!(p.run(&["cache", "verify"]).code, 0);
}

/// NaN and infinities in a method's numbers are errors at the key that
/// holds them (not the preset's default, not a panic), in the method that
/// writes them even when another extends it; fine-tuning milestones are
/// checked as a recipe's are.
#[test]
fn non_finite_method_numbers_and_bad_finetune_milestones_are_errors_at_their_key() {
    let config = |methods: &str| {
        SHARED.replace(
            "  ce: {preset: finetune, memory: {per_class: 4}}\n  bsce: {extends: ce, bsce: true}\n",
            methods,
        )
    };
    let cases: &[(&str, &[&str])] = &[
        (
            "  ce: {preset: lucir, hyper: {less_forget: .nan}}\n  bsce: {extends: ce, bsce: true}\n",
            &["c.yaml:", "methods.ce.hyper.less_forget", "is NaN"],
        ),
        (
            "  ce: {preset: podnet, hyper: {pod_flat: .inf}}\n  bsce: {extends: ce, bsce: true}\n",
            &["methods.ce.hyper.pod_flat", "is inf"],
        ),
        (
            "  ce: {preset: lucir, finetune: {lr: -.inf}}\n  bsce: {extends: ce, bsce: true}\n",
            &["methods.ce.finetune.lr", "is -inf"],
        ),
        (
            "  ce: {preset: icarl}\n  bsce: {extends: ce, bsce: true, bsce_choices: {icarl_distillation: {kind: softmax_kd, temperature: .nan, weight: 1}}}\n",
            &["methods.bsce.bsce_choices.icarl_distillation.temperature", "is NaN"],
        ),
        (
            "  ce: {preset: lucir, finetune: {epochs: 2, milestones: [5, 1]}}\n  bsce: {extends: ce, bsce: true}\n",
            &["methods.ce.finetune.milestones[1]", "milestones must increase"],
        ),
        (
            "  ce: {preset: lucir, finetune: {epochs: 2, milestones: [1, 5]}}\n  bsce: {extends: ce, bsce: true}\n",
            &["methods.ce.finetune.milestones[1]", "inside the 2 fine-tuning epochs"],
        ),
    ];
    for (methods, expected) in cases {
        assert_bad_input(&config(methods), expected);
    }
}

/// A full disk under `results > file` (here /dev/full, whose writes fail
/// with ENOSPC) is an error said on stderr, exit 1: not an empty file and
/// exit 0, and not the silent 141 of a closed pipe.
#[test]
fn a_stdout_that_cannot_be_written_is_an_error_not_success() {
    let p = Project::new();
    p.write("c.yaml", SHARED);
    p.run(&["run", "c.yaml"]).ok();
    for args in [
        &["results", "c.yaml"][..],
        &["status", "c.yaml", "--json"][..],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = bsce(Path::new(BIN), p.dir.path(), args)
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error: writing to stdout: No space left on device"),
            "{args:?}: {stderr}"
        );
    }
}

/// The README's first command sets up what running needs and nothing else:
/// the test servers and test-only packages are the test command's
/// (scripts/test-setup.sh, which scripts/test.sh runs).
#[test]
fn the_run_setup_installs_no_test_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = std::fs::read_to_string(root.join("scripts/setup.sh")).unwrap();
    for test_only in [
        "apt-get update",
        "nginx",
        "slurm",
        "s3s",
        "texlive",
        "torchvision",
    ] {
        assert!(
            !setup.to_lowercase().contains(test_only),
            "scripts/setup.sh mentions {test_only}"
        );
    }
    let tests = std::fs::read_to_string(root.join("scripts/test.sh")).unwrap();
    assert!(tests.contains("bash scripts/setup.sh\nbash scripts/test-setup.sh\n"));
    let extra = std::fs::read_to_string(root.join("scripts/test-setup.sh")).unwrap();
    for server in ["nginx", "slurmctld", "s3s-fs", "pdflatex", "torchvision"] {
        assert!(
            extra.contains(server),
            "scripts/test-setup.sh has no {server}"
        );
    }
}
