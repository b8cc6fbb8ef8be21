//! The local store: integrity on read, `cache verify`, `gc` and `du`, corruption behind the store, a full disk.

use crate::support::*;

#[test]
fn verify_quarantines_a_corrupt_blob_and_its_stage_reruns() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    p.write("c.yaml", SMALL);
    p.run(&["run", "c.yaml"]).ok();
    // Corrupt the order blob of order `b` (the reversed list).
    let rec = find_action(&p.store(), "order/synth/b");
    let digest = rec["outputs"]["order.json"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = p.store().join("cas").join(&digest[..2]).join(&digest[2..]);
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&blob, bytes).unwrap();
    let v = p.run(&["cache", "verify", "--store", ".bsce"]);
    assert_eq!(v.code, 3, "{}", v.stdout);
    assert!(
        v.stdout.contains(&format!("corrupt  blob {digest}")),
        "{}",
        v.stdout
    );
    let st = p.status("c.yaml");
    let b = st.iter().find(|s| s.0 == "order/synth/b").unwrap();
    assert_eq!(b.1, "to-run");
    assert_eq!(
        b.2,
        vec!["output order.json changed on disk after it was stored (quarantined)"]
    );
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(executed(&j), labels(&["order/synth/b"]));
    let v = p
        .run(&["cache", "verify", "--store", ".bsce", "--json"])
        .ok()
        .json();
    assert_eq!(v["quarantined"].as_object().unwrap().len(), 0);
}

#[test]
fn gc_keeps_what_listed_configs_reach_and_du_reports_kinds() {
    let p = Project::new();
    p.write("big.yaml", SMALL);
    p.write(
        "small.yaml",
        &SMALL.replace("orders: [a, b]", "orders: [a]"),
    );
    p.run(&["run", "big.yaml"]).ok();
    // What a killed preparation leaves for its next attempt.
    let partial = p.store().join("resume").join("ab".repeat(32));
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("train.images"), vec![1u8; 8192]).unwrap();
    let du = p
        .run(&["cache", "du", "--store", ".bsce", "--json"])
        .ok()
        .json();
    assert_eq!(du["kinds"]["order"]["actions"], 2);
    assert_eq!(du["kinds"]["tasks"]["actions"], 4);
    let gc = p
        .run(&["cache", "gc", "--keep", "small.yaml", "--json"])
        .ok()
        .json();
    assert_eq!(gc["kept_actions"], 4);
    assert_eq!(gc["removed_actions"], 3);
    assert_eq!(gc["removed_partial"], 1);
    assert!(!partial.exists());
    assert!(p.status("small.yaml").iter().all(|s| s.1 == "cached"));
    let du = p
        .run(&["cache", "du", "--store", ".bsce", "--json"])
        .ok()
        .json();
    assert_eq!(du["kinds"]["order"]["actions"], 1);
    assert_eq!(du["unreferenced_bytes"], 0);
    let j = p.run(&["run", "big.yaml", "--json"]).ok().json();
    assert_eq!(j["executed"], 3);
}

#[test]
fn gc_removes_nothing_while_a_kept_configs_source_is_missing() {
    // An image-folder source that is briefly not there (an unmounted
    // share): gc cannot compute the keys of what it should keep, so it
    // refuses, as `run` does, instead of deleting every result.
    let p = Project::new();
    write_image_tree(&p.path("share/tree"), 4, 6, 2);
    p.write(
        "c.yaml",
        &image_tree_config(8).replace(": tree", ": share/tree"),
    );
    p.run(&["run", "c.yaml"]).ok();
    let before = action_files(&p).len();
    assert!(before > 0);
    std::fs::rename(p.path("share"), p.path("unmounted")).unwrap();
    let r = p.run(&["cache", "gc", "--keep", "c.yaml"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("share/tree") && r.stderr.contains("removes nothing"),
        "{}",
        r.stderr
    );
    assert_eq!(action_files(&p).len(), before);
    // Back in place: gc keeps everything and the run has nothing to do.
    std::fs::rename(p.path("unmounted"), p.path("share")).unwrap();
    let gc = p
        .run(&["cache", "gc", "--keep", "c.yaml", "--json"])
        .ok()
        .json();
    assert_eq!(gc["kept_actions"].as_u64().unwrap() as usize, before);
    assert_eq!(gc["removed_actions"], 0);
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(j["executed"], 0);
}

#[test]
fn a_damaged_record_is_a_miss_with_one_warning_and_verify_finds_and_repairs() {
    let p = Project::new();
    p.write("c.yaml", SMALL);
    let first = p.run(&["run", "c.yaml", "--json"]).ok().json();
    let all = executed(&first);
    let records = action_files(&p);
    let (order_label, order_record) = records
        .iter()
        .find(|(l, _)| l.starts_with("order/"))
        .unwrap()
        .clone();
    // A truncated action record and a garbage label record.
    let bytes = std::fs::read(&order_record).unwrap();
    std::fs::write(&order_record, &bytes[..bytes.len() / 2]).unwrap();
    // The label record the next run reads: the order stage's last run by
    // this config (its record of the last run by any config stays good).
    let label_file = walkdir::WalkDir::new(p.store().join("labels"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|path| path.is_file())
        .find(|path| {
            let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            v["label"] == order_label.as_str()
                && v["config"].is_string()
                && path.file_stem().unwrap()
                    != bsce_pipeline::digest::Digest::of_bytes(order_label.as_bytes())
                        .to_hex()
                        .as_str()
        })
        .unwrap();
    std::fs::write(&label_file, b"\x00garbage").unwrap();

    let r = p.run(&["run", "c.yaml", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: store record"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning per damaged file:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&order_record.display().to_string())
            && r.stderr.contains(&label_file.display().to_string()),
        "the warnings name the files:\n{}",
        r.stderr
    );
    let rerun = executed(&r.json());
    assert!(rerun.contains(&order_label), "{rerun:?}");
    assert!(rerun.len() < all.len(), "{rerun:?}");
    // Repaired for good: the next run is quiet and does nothing.
    let again = p.run(&["run", "c.yaml", "--json"]).ok();
    assert!(!again.stderr.contains("warning"), "{}", again.stderr);
    assert_eq!(again.json()["executed"], 0);
    let v = p.run(&["cache", "verify"]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);

    // `cache verify` reads records too: a damaged one is exit 3 and named;
    // a record whose blob is gone is reported, and `--repair` moves it.
    let tasks: Vec<(String, PathBuf)> = action_files(&p)
        .into_iter()
        .filter(|(l, _)| l.starts_with("tasks/"))
        .collect();
    let task_record = tasks[0].1.clone();
    let (tasks_label, dangling) = tasks[1].clone();
    std::fs::write(&task_record, b"{\"key\": ").unwrap();
    let rec: Value = serde_json::from_slice(&std::fs::read(&dangling).unwrap()).unwrap();
    let (_, out) = rec["outputs"].as_object().unwrap().iter().next().unwrap();
    let hex = out["digest"].as_str().unwrap();
    std::fs::remove_file(p.store().join("cas").join(&hex[..2]).join(&hex[2..])).unwrap();
    let v = p.run(&["cache", "verify"]);
    assert_eq!(v.code, 3, "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout
            .contains(&format!("corrupt  record {}", task_record.display()))
            && v.stdout
                .contains(&format!("dangling {} ({tasks_label})", dangling.display()))
            && v.stdout.contains("--repair"),
        "{}",
        v.stdout
    );
    let v = p.run(&["cache", "verify", "--repair", "--json"]);
    assert_eq!(v.code, 3, "{}", v.stderr);
    assert_eq!(v.json()["repaired"], true);
    assert!(!dangling.exists());
    let v = p.run(&["cache", "verify"]);
    assert_eq!(v.code, 0, "repaired: {}{}", v.stdout, v.stderr);
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert!(executed(&r.json()).contains(&tasks_label));
}

/// A store disk that fills while a model is written: the train stage fails
/// with the I/O error it hit (ENOSPC, the file named), exit 1 (a stage
/// failed), not "bad input" with the error's Debug form.
#[test]
fn a_full_disk_during_training_names_enospc_and_is_not_bad_input() {
    let p = Project::new();
    let Some((mnt, _guard)) = small_tmpfs(&p, "16m") else {
        return;
    };
    p.write("c.yaml", SHARED);
    let store = mnt.join("store");
    let store_arg = store.to_str().unwrap();
    p.run(&["run", "c.yaml", "--store", store_arg]).ok();
    // Fill the disk but 16 to 32 KiB, then train again, one stage at a
    // time: the job file and the log fit (a 4 KiB page each), the weights
    // (24 KB with the tiny network, written first) do not.
    let df = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(&mnt)
        .output()
        .unwrap();
    let avail: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let blocks = (avail.saturating_sub(16 << 10)) / (16 << 10);
    Command::new("dd")
        .args(["if=/dev/zero", "bs=16k", &format!("count={blocks}")])
        .arg(format!("of={}", mnt.join("filler").display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let r = p.run(&[
        "run", "c.yaml", "--store", store_arg, "--force", "train/", "--jobs", "1",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("FAILED   train/")
            && r.stderr.contains(".safetensors: No space left on device")
            && !r.stderr.contains("IoError(")
            && !r.stderr.contains("panicked"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_full_disk_during_prepare_names_enospc_and_records_the_failure() {
    let p = Project::new();
    let Some((mnt, _guard)) = small_tmpfs(&p, "1m") else {
        return;
    };
    // About 7 MB of images into a 1 MiB store.
    p.write(
        "c.yaml",
        &SMALL.replace(
            "synthetic: {classes: 6, train_per_class: 20, test_per_class: 5, image_size: 8, seed: 1}",
            "synthetic: {classes: 6, train_per_class: 400, test_per_class: 20, image_size: 32, seed: 1}",
        ),
    );
    let store = mnt.join("store");
    let r = p.run(&["run", "c.yaml", "--store", store.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("No space left on device") && !r.stderr.contains("panicked"),
        "{}",
        r.stderr
    );
    let failures: Vec<_> = std::fs::read_dir(store.join("failed")).unwrap().collect();
    assert_eq!(failures.len(), 1, "the failure is recorded");
    let st = p
        .run(&["status", "c.yaml", "--store", store.to_str().unwrap()])
        .ok();
    // A full disk is the environment, not the inputs: not "same inputs
    // failed last time".
    assert!(
        st.stdout
            .contains("last attempt failed on its environment, not its inputs")
            && st.stdout.contains("No space left on device"),
        "{}",
        st.stdout
    );
}

#[test]
fn cache_gc_in_a_loop_during_a_run_never_breaks_the_run() {
    let p = Project::new();
    p.write("c.yaml", REPORTED);
    let mut run = p.spawn(&["run", "c.yaml", "--json"]);
    let mut refused = 0;
    while run.try_wait().unwrap().is_none() {
        let gc = p.run(&["cache", "gc", "--keep", "c.yaml"]);
        if gc.stderr.contains("no bsce-pipe store here") {
            continue; // the run has not created its store yet
        }
        if gc.code != 0 {
            assert!(
                gc.stderr.contains("is in use by a running"),
                "{}",
                gc.stderr
            );
            refused += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(refused > 0, "gc never met the running run");
    // Nothing the run made was collected: a second run does nothing.
    let again = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(again["executed"], 0, "{again}");
}

#[test]
fn a_dataset_blob_changed_behind_the_store_is_never_consumed_and_results_match_a_clean_store() {
    let p = Project::new();
    p.write("c.yaml", &tampered(2, "ce"));
    p.run(&["run", "c.yaml"]).ok();
    let blob = blob_of(&p.store(), "prepare/synth", "train.images");
    let good = std::fs::read(&blob).unwrap();
    flip_byte_keeping_size_and_mtime(&blob, 4000);
    // Before anything reads it, status sees it and says why.
    let st = p.status("c.yaml");
    let prep = st.iter().find(|s| s.0 == "prepare/synth").unwrap();
    assert_eq!(prep.1, "to-run", "{st:?}");
    assert_eq!(
        prep.2,
        vec!["output train.images changed on disk after it was stored (quarantined)"]
    );
    // Add a method: the dataset is remade before the new stages read it.
    p.write("c.yaml", &tampered(2, "ce, bsce"));
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    let ran = executed(&r.json());
    assert!(ran.contains(&"prepare/synth".to_string()), "{ran:?}");
    assert!(
        !r.stderr.contains("warning:"),
        "status already quarantined it: {}",
        r.stderr
    );
    assert_eq!(std::fs::read(&blob).unwrap(), good, "the blob was remade");
    let clean = Project::new();
    clean.write("c.yaml", &tampered(2, "ce, bsce"));
    clean.run(&["run", "c.yaml"]).ok();
    let (got, want) = (evaluations(&p.store()), evaluations(&clean.store()));
    // ce and bsce share the base task: five evaluations.
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got, want, "results differ from a clean store's");
    let v = p.run(&["cache", "verify", "--json"]).ok().json();
    assert_eq!(v["quarantined"].as_object().unwrap().len(), 0, "{v}");

    // An edited evaluation is never printed: its run is listed as missing.
    let j = p.run(&["results", "c.yaml", "--json"]).ok().json();
    assert_eq!(j["runs"].as_array().unwrap().len(), 2, "{j}");
    flip_byte_keeping_size_and_mtime(
        &blob_of(&p.store(), "evaluate/synth/a/ce/seed0/s2/t2", "eval.json"),
        20,
    );
    let r = p.run(&["results", "c.yaml", "--json"]).ok();
    assert!(
        r.stderr
            .contains("warning: eval.json of evaluate/synth/a/ce/seed0/s2/t2"),
        "{}",
        r.stderr
    );
    let j = r.json();
    assert_eq!(j["runs"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(
        j["missing"],
        serde_json::json!([{"run": "e/a/s2/ce/seed0", "tasks": [2]}])
    );
}

#[test]
fn a_blob_changed_while_a_stage_reads_it_is_not_kept_and_its_producer_reruns() {
    let p = Project::new();
    // Long enough a base training to change its dataset while it runs.
    p.write("c.yaml", &tampered(40, "ce"));
    let mut child = p.spawn(&["run", "c.yaml", "--json", "--jobs", "1"]);
    let seen = wait_for(&mut child, |s| {
        s.contains("run      train/synth/a/ce/seed0/b2/t0")
    });
    let blob = blob_of(&p.store(), "prepare/synth", "train.images");
    flip_byte_keeping_size_and_mtime(&blob, 4000);
    let out = child.wait_with_output().unwrap();
    let stderr = format!("{seen}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: train/synth/a/ce/seed0/b2/t0: input dataset/train.images")
            && stderr.contains("changed on disk after it was stored")
            && stderr.contains("recomputing prepare/synth first"),
        "{stderr}"
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Counted once each, though the dataset and the base training ran twice.
    assert_eq!(j["executed"], 11, "{j}");
    assert_eq!(j["stages"], 11, "{j}");
    let clean = Project::new();
    clean.write("c.yaml", &tampered(40, "ce"));
    // The same threads per stage: float sums depend on them.
    clean.run(&["run", "c.yaml", "--jobs", "1"]).ok();
    assert_eq!(evaluations(&p.store()), evaluations(&clean.store()));
}

#[test]
fn verify_invalidates_results_computed_from_a_corruption_no_stamp_could_see() {
    let p = Project::new();
    p.write("c.yaml", &tampered(2, "ce"));
    p.run(&["run", "c.yaml"]).ok();
    // Bit rot under the filesystem: the content changes, the stamp the
    // store recorded does not (simulated by recording the new stamp).
    let label = "order/synth/a";
    let blob = blob_of(&p.store(), label, "order.json");
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.iter().position(|b| b.is_ascii_digit()).unwrap();
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&blob, &bytes).unwrap();
    }
    let meta = std::fs::metadata(&blob).unwrap();
    for e in walkdir::WalkDir::new(p.store().join("ac")) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let mut v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        if v["label"] == label {
            use std::os::unix::fs::MetadataExt;
            v["outputs"]["order.json"]["stamp"] = serde_json::json!({
                "ino": meta.ino(),
                "size": meta.size(),
                "mtime_ns": meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                "ctime_ns": meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            });
            std::fs::write(e.path(), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        }
    }
    // `run` trusts an unchanged stamp: this is what verify is for.
    assert!(p.status("c.yaml").iter().all(|s| s.1 == "cached"));
    let v = p.run(&["cache", "verify"]);
    assert_eq!(v.code, 3, "{}", v.stdout);
    assert!(
        v.stdout.contains("invalid  ") && v.stdout.contains("(tasks/synth/a/s2): read corrupt"),
        "{}",
        v.stdout
    );
    // The order and every stage that read it rerun; nothing else does.
    let r = p.run(&["run", "c.yaml", "--json"]).ok().json();
    let ran = executed(&r);
    assert!(ran.contains(&label.to_string()), "{ran:?}");
    assert!(ran.contains(&"tasks/synth/a/s2".to_string()), "{ran:?}");
    assert!(!ran.contains(&"prepare/synth".to_string()), "{ran:?}");
    assert_eq!(
        p.run(&["cache", "verify", "--json"]).ok().json()["invalidated"],
        serde_json::json!([])
    );
}

/// Out of git, the folder a run starts in is the project: `run
/// configs/c.yaml` there makes `.bsce/` and `reports/out/c/` in it (not in
/// `configs/`), and `cache verify`, `status`, `report` and `results`
/// started there find the same store.
#[test]
fn in_a_plain_folder_every_command_finds_the_store_the_run_made_there() {
    let p = Project::new();
    assert!(!p.path(".git").exists());
    p.write("configs/c.yaml", SHARED);
    let r = p.run(&["run", "configs/c.yaml"]).ok();
    let store = p.path(".bsce");
    assert!(
        r.stderr
            .contains(&format!("created store {}", store.display())),
        "{}",
        r.stderr
    );
    assert!(!p.path("configs/.bsce").exists());
    assert!(p.path("reports/out/c/tables/acc.md").is_file());
    assert!(!p.path("configs/reports").exists());
    let v = p.run(&["cache", "verify"]).ok();
    assert!(v.stdout.contains("records read"), "{}", v.stdout);
    let st = p.run(&["status", "configs/c.yaml"]).ok();
    assert!(st.stdout.contains("0 to run"), "{}", st.stdout);
    let rep = p.run(&["report", "configs/c.yaml", "--json"]).ok().json();
    assert_eq!(rep["executed"], 0, "{rep}");
    assert_eq!(
        rep["out_dir"].as_str().map(std::path::PathBuf::from),
        Some(p.path("reports/out/c"))
    );
    let res = p.run(&["results", "configs/c.yaml", "--json"]).ok().json();
    assert_eq!(res["runs"].as_array().map(Vec::len), Some(2), "{res}");
}
