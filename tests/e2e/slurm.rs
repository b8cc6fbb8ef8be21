//! The Slurm executor on the private test cluster (scripts/slurm-cluster.sh): dependencies, failures, cancel, requeue, remotes, detached runs and gc.

use crate::support::*;

#[test]
fn the_quickstart_runs_through_slurm_in_dependency_order_with_the_local_results() {
    let _cluster = slurm_exclusive();
    let quickstart = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.yaml"),
    )
    .unwrap();
    // The same config, once on this machine and once through Slurm. Each
    // Slurm job uses the one CPU Slurm gives it, as each stage of a local
    // run with two jobs on two cores does: CPU results are bit-identical
    // for equal thread counts.
    let local = Project::new();
    local.write("q.yaml", &quickstart);
    local.run(&["run", "q.yaml", "--jobs", "2"]).ok();
    let p = Project::new();
    p.write("q.yaml", &quickstart);
    let r = p
        .slurm(&["run", "q.yaml", "--executor", "slurm", "--json"])
        .ok();
    let j = r.json();
    let stages = j["stages"].as_u64().unwrap();
    assert_eq!(j["executed"], stages, "{}", r.stderr);
    assert!(
        r.stderr.contains("submit   prepare/synth10 as slurm job "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("start    "), "{}", r.stderr);
    // group: run (the default): one job per training run's chain, one for
    // each base task that runs share, one for prepare; orders, task splits
    // and the result stages ran here. The count is printed before the
    // first submission.
    let dirs = p.slurm_run_dirs();
    assert_eq!(dirs.len(), 1);
    let jobs = slurm_jobs(&dirs[0]);
    let ids: std::collections::BTreeSet<&str> = jobs.values().map(|j| j.0.as_str()).collect();
    // 2 orders x 2 settings x 2 methods chains, 2 x 2 shared base tasks.
    assert_eq!(ids.len(), 1 + 8 + 4, "{}", r.stderr);
    let planned = format!(
        "{} stages to run: 13 slurm jobs (12 run chains, 1 single stage); {} stages on this machine",
        stages,
        stages as usize - jobs.len()
    );
    let first_submit = r.stderr.find("submit   ").unwrap();
    assert!(r.stderr[..first_submit].contains(&planned), "{}", r.stderr);
    for label in jobs.keys() {
        assert!(
            label.starts_with("train/")
                || label.starts_with("evaluate/")
                || label.starts_with("prepare/"),
            "{label} ran as a job"
        );
    }
    for kind in ["order/", "tasks/", "aggregate/", "render/", "plot/"] {
        assert!(
            r.stderr.contains(&format!("run      {kind}")),
            "{}",
            r.stderr
        );
    }
    let run_id: Value =
        serde_json::from_slice::<Value>(&std::fs::read(dirs[0].join("run.json")).unwrap()).unwrap()
            ["run_id"]
            .clone();
    // A chain: one job, its stages in task order, each stored with it.
    let chain = "synth10/numpy1993/bsce/seed0/b6_s4";
    let chain_job = &jobs[&format!("train/{chain}/t1")].0;
    for t in 1..=4 {
        for kind in ["train", "evaluate"] {
            assert_eq!(&jobs[&format!("{kind}/{chain}/t{t}")].0, chain_job);
        }
        let rec = find_action(&p.store(), &format!("train/{chain}/t{t}"));
        assert_eq!(
            rec["provenance"]["stage"]["slurm_job_id"].as_str(),
            Some(chain_job.as_str())
        );
        // The job's stages record the run's id (one timeline per run).
        assert_eq!(rec["provenance"]["run_id"], run_id);
    }
    // The report's timeline of this run holds every stage, here and in the
    // jobs; the jobs' train stages wrote live TensorBoard events into the
    // store, one file per task.
    let per_run: Vec<_> = std::fs::read_dir(p.path("reports/out/q/timeline"))
        .unwrap()
        .collect();
    assert_eq!(per_run.len(), 2, "one run: its SVG and PNG");
    let live = std::fs::read_dir(
        p.store()
            .join("tensorboard/q/quickstart/numpy1993/b6_s4/bsce/seed0"),
    )
    .unwrap()
    .count();
    assert_eq!(live, 5, "tasks 0 to 4");
    // Every job started after each job it depends on had finished.
    let by_id: std::collections::BTreeMap<&str, &Value> = jobs
        .values()
        .map(|(id, _, o)| {
            (
                id.as_str(),
                o.as_ref().expect("every job wrote its outcome"),
            )
        })
        .collect();
    let mut dependent = 0;
    for (label, (_, after, outcome)) in &jobs {
        let o = outcome.as_ref().unwrap();
        assert_eq!(o["outcome"], "executed", "{label}: {o}");
        for a in after {
            dependent += 1;
            let up = by_id[a.as_str()];
            assert!(
                up["written_ms"].as_u64().unwrap() <= o["job_started_ms"].as_u64().unwrap(),
                "{label} started before its input job {a} ended"
            );
        }
    }
    assert!(
        dependent >= 12,
        "the DAG's edges between jobs are job dependencies"
    );
    // Same numbers as the local run (the tables differ only in their
    // training-time column), the report written, job ids in provenance.
    assert_eq!(evaluations(&p.store()), evaluations(&local.store()));
    assert!(p.path("reports/out/q/tables/quickstart.md").is_file());
    let rec = find_action(&p.store(), "prepare/synth10");
    assert_eq!(
        rec["provenance"]["stage"]["slurm_job_id"].as_str().unwrap(),
        jobs["prepare/synth10"].0
    );
    // A second run submits nothing and leaves no run folder.
    let again = p
        .slurm(&["run", "q.yaml", "--executor", "slurm", "--json"])
        .ok();
    let j = again.json();
    assert_eq!(
        (j["executed"].clone(), j["cached"].clone()),
        (0.into(), stages.into())
    );
    assert!(!again.stderr.contains("submit "), "{}", again.stderr);
    assert_eq!(p.slurm_run_dirs().len(), 1);
}

#[test]
fn a_failing_slurm_job_is_reported_with_its_error_and_its_dependants_never_run() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    p.write("broken.tar.gz", "this is not a gzip archive");
    p.write(
        "c.yaml",
        "datasets:\n  c:\n    cifar100: {path: broken.tar.gz}\n  s:\n    synthetic: {classes: 4, train_per_class: 5, test_per_class: 1, image_size: 8}\norders:\n  o: {numpy_seed: 0}\nsettings:\n  t: {base: 2, increment: 1}\nexperiments:\n  e: {dataset: c, orders: [o], settings: [t]}\n  f: {dataset: s, orders: [o], settings: [t]}\nexecutor:\n  use: slurm\n  slurm: {poll_seconds: 0.5, cpus: 1}\n",
    );
    let r = p.slurm(&["run", "c.yaml", "--json"]);
    // The archive is bad input, as under the local executor: exit 2.
    assert_eq!(r.code, 2, "{}", r.stderr);
    let j = r.json();
    assert_eq!(
        (
            j["failed"].clone(),
            j["skipped"].clone(),
            j["executed"].clone()
        ),
        (1.into(), 2.into(), 3.into()),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("FAILED   prepare/c: slurm job "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("broken.tar.gz"), "{}", r.stderr);
    assert!(
        r.stderr.contains(" downstream of prepare/c: "),
        "{}",
        r.stderr
    );
    // Its dependants were cancelled by Slurm, never started; the failure
    // is recorded in the store as under the local executor.
    // (order/c/o runs on this machine, after prepare/c: never started.)
    let jobs = slurm_jobs(&p.slurm_run_dirs()[0]);
    assert!(
        !jobs.contains_key("order/c/o") && !r.stderr.contains("run      order/c/o"),
        "a dependant of a failed job ran: {}",
        r.stderr
    );
    let st = p.status("c.yaml");
    let c = st.iter().find(|s| s.0 == "prepare/c").unwrap();
    assert_eq!(c.2, vec!["same inputs failed last time"]);
    // With nothing else in flight: the run chains never submitted, the
    // local stages behind them (orders, splits, aggregate, plot, table)
    // skipped, every stage counted once.
    p.write(
        "d.yaml",
        &format!(
            "{}executor:\n  use: slurm\n  slurm: {{poll_seconds: 0.5, cpus: 1}}\n",
            SHARED.replace(
                "synth:\n    synthetic: {classes: 6, train_per_class: 30, test_per_class: 10, image_size: 12, seed: 3}",
                "synth:\n    cifar100: {path: broken.tar.gz}",
            )
        ),
    );
    let r = p.slurm(&["run", "d.yaml", "--json"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let j = r.json();
    let stages = j["stages"].as_u64().unwrap();
    assert_eq!(
        (
            j["failed"].as_u64(),
            j["skipped"].as_u64(),
            j["executed"].as_u64()
        ),
        (Some(1), Some(stages - 1), Some(0)),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("1 slurm job (0 run chains") || r.stderr.contains("4 slurm jobs"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("still wait"), "{}", r.stderr);
}

/// One queued job cancelled by hand (`scancel`): its dependants are
/// skipped downstream of that job, not of the first input each waits for
/// (prepare, which succeeded).
#[test]
fn a_job_cancelled_by_hand_is_named_as_what_its_dependants_wait_for() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    p.write(
        "c.yaml",
        &format!("{SHARED}executor:\n  use: slurm\n  slurm: {{poll_seconds: 0.5, cpus: 1}}\n"),
    );
    let cancelled = "train/synth/a/ce/seed0/s2/t1";
    let mut child = p.spawn_slurm(&["run", "c.yaml", "--verbose"]);
    // Every job submitted (the chain's job is named by its first stage).
    let seen = wait_for(&mut child, |s| s.matches("submit   ").count() == 4);
    // run.json names every job once the whole DAG is submitted.
    let start = std::time::Instant::now();
    let id = loop {
        let run: Option<Value> = p
            .slurm_run_dirs()
            .first()
            .and_then(|d| std::fs::read(d.join("run.json")).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(id) = run
            .as_ref()
            .and_then(|r| r["jobs"][cancelled]["id"].as_str())
        {
            break id.to_string();
        }
        assert!(
            start.elapsed().as_secs() < 30,
            "no job for {cancelled}: {run:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let ok = Command::new("scancel")
        .arg(&id)
        .env("SLURM_CONF", slurm_cluster())
        .status()
        .unwrap()
        .success();
    assert!(ok, "scancel {id}");
    let out = child.wait_with_output().unwrap();
    let stderr = seen + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("FAILED   {cancelled}: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(" downstream of {cancelled}: ")),
        "{stderr}"
    );
    assert!(!stderr.contains("downstream of prepare/"), "{stderr}");
}

/// Issue 23, M6: after the config of a detached run is edited, `status`
/// shows the queued jobs only for the stages they still compute; a stage
/// the edit reaches is to run, beside the job computing its old version.
#[test]
fn status_after_editing_a_detached_runs_config_matches_jobs_by_what_they_compute() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    let slurm = "executor:\n  use: slurm\n  slurm: {poll_seconds: 0.3, cpus: 1, extra: [--hold]}\n";
    p.write("c.yaml", &format!("{SHARED}{slurm}"));
    p.slurm(&["run", "c.yaml", "--detach"]).ok();
    let dirs = p.slurm_run_dirs();
    let run: Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("run.json")).unwrap()).unwrap();
    let name = format!("bsce-{}", run["run_id"].as_str().unwrap());
    let rows = |p: &Project| -> Vec<Value> {
        let j = p.slurm(&["status", "c.yaml", "--json"]).ok().json();
        j["nodes"].as_array().unwrap().clone()
    };
    let of_kind = |rows: &[Value], kind: &str| -> Vec<Value> {
        rows.iter().filter(|r| r["kind"] == kind).cloned().collect()
    };
    let before = rows(&p);
    for r in &before {
        assert_eq!(r["state"], "queued", "{r}");
        assert_eq!(r["slurm"]["current"], true, "{r}");
    }
    // One more epoch: training and everything after it change; the
    // dataset, the order and the splits do not.
    p.write(
        "c.yaml",
        &format!("{}{slurm}", SHARED.replace("epochs: 2", "epochs: 3")),
    );
    let after = rows(&p);
    for kind in ["prepare", "order", "tasks"] {
        for r in of_kind(&after, kind) {
            assert_eq!(r["state"], "queued", "{r}");
        }
    }
    let trains = of_kind(&after, "train");
    assert!(!trains.is_empty());
    for r in trains.iter().chain(&of_kind(&after, "render")) {
        assert_eq!(r["state"], "to-run", "{r}");
        assert_eq!(r["slurm"]["current"], false, "{r}");
        assert!(!r["reasons"].as_array().unwrap().is_empty(), "{r}");
    }
    let text = p.slurm(&["status", "c.yaml"]).ok().stdout;
    let label = trains[0]["label"].as_str().unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" {label}: ")))
        .unwrap_or_else(|| panic!("{label} not in:\n{text}"));
    assert!(
        line.starts_with("to-run ")
            && line.contains("computes the version submitted before the config was edited"),
        "{line}"
    );
    p.slurm(&["cancel", "c.yaml"]).ok();
    wait_until_no_live_jobs(&name);
}

#[test]
fn slurm_runs_are_cancelled_by_the_cancel_command_and_by_ctrl_c() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    p.write(
        "c.yaml",
        &format!("{SHARED}executor:\n  use: slurm\n  slurm: {{poll_seconds: 0.5, cpus: 1}}\n"),
    );
    // Detached: submit, see the queue in status, cancel.
    let r = p.slurm(&["run", "c.yaml", "--detach"]).ok();
    assert!(r.stderr.contains("submitted "), "{}", r.stderr);
    let dirs = p.slurm_run_dirs();
    let run: Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("run.json")).unwrap()).unwrap();
    let name = format!("bsce-{}", run["run_id"].as_str().unwrap());
    let st = p.slurm(&["status", "c.yaml"]).ok();
    assert!(
        st.stdout.contains("queued   ") || st.stdout.contains("running  "),
        "{}",
        st.stdout
    );
    assert!(st.stdout.contains("slurm job "), "{}", st.stdout);
    let c = p.slurm(&["cancel", "c.yaml"]).ok();
    // Each job once, though a chain's job holds several stages.
    let jobs = run["jobs"].as_object().unwrap();
    let distinct: std::collections::BTreeSet<&str> =
        jobs.values().map(|j| j["id"].as_str().unwrap()).collect();
    assert!(distinct.len() < jobs.len(), "{run}");
    let n: usize = c
        .stderr
        .split("cancelled ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", c.stderr));
    assert!((1..=distinct.len()).contains(&n), "{}", c.stderr);
    wait_until_no_live_jobs(&name);
    let st = p.slurm(&["status", "c.yaml"]).ok();
    assert!(!st.stdout.contains("slurm job"), "{}", st.stdout);
    let c = p.slurm(&["cancel", "c.yaml"]).ok();
    assert!(
        c.stderr.contains("no queued or running slurm jobs"),
        "{}",
        c.stderr
    );
    // Attached: Ctrl-C cancels the run's jobs and exits 130.
    let mut child = p.spawn_slurm(&["run", "c.yaml", "--force", "all"]);
    wait_for(&mut child, |s| s.contains("submit   train/"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dirs = p.slurm_run_dirs();
    assert_eq!(dirs.len(), 2);
    let run: Value =
        serde_json::from_slice(&std::fs::read(dirs[1].join("run.json")).unwrap()).unwrap();
    assert_eq!(run["cancelled"], true);
    wait_until_no_live_jobs(&format!("bsce-{}", run["run_id"].as_str().unwrap()));
}

#[test]
fn slurm_refuses_bad_resources_and_missing_commands_before_submitting_anything() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    p.write(
        "c.yaml",
        &format!("{SMALL}executor:\n  use: slurm\n  slurm:\n    kinds:\n      prepare: {{partition: nosuchpartition}}\n"),
    );
    let r = p.slurm(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("sbatch refuses the resources of executor.slurm.kinds.prepare")
            && r.stderr.contains("--partition=nosuchpartition")
            && r.stderr.contains("invalid partition"),
        "{}",
        r.stderr
    );
    assert!(p.slurm_run_dirs().is_empty(), "nothing is submitted");
    // No Slurm commands on this machine.
    p.write("d.yaml", &format!("{SMALL}executor: {{use: slurm}}\n"));
    let r = p.run_env(&["run", "d.yaml"], &[("PATH", "/nonexistent")]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`sbatch` not found on PATH"),
        "{}",
        r.stderr
    );
    // A value that is no Slurm value is a config error, with its key.
    p.write(
        "e.yaml",
        &format!("{SMALL}executor:\n  slurm: {{mem: \"16 G\"}}\n"),
    );
    let r = p.run(&["run", "e.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("executor.slurm.mem"), "{}", r.stderr);
    // --detach without Slurm.
    let r = p.run(&["run", "c.yaml", "--executor", "local", "--detach"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn a_job_lost_to_a_node_failure_restarts_up_to_the_retry_limit() {
    let _cluster = slurm_exclusive();
    let config = |retries: u32| {
        format!(
            "datasets:\n  synth:\n    synthetic: {{classes: 4, train_per_class: 100, test_per_class: 5, image_size: 16, seed: 3}}\n\
             orders:\n  a: {{numpy_seed: 1993}}\nsettings:\n  s2: {{base: 2, increment: 2}}\n\
             methods:\n  ce: {{preset: finetune, memory: {{per_class: 4}}}}\n\
             recipes:\n  r: {{epochs: 100, batch_size: 16, lr: 0.05}}\n\
             experiments:\n  e: {{dataset: synth, orders: [a], settings: [s2], methods: [ce], recipe: r, network: tiny}}\n\
             executor:\n  use: slurm\n  slurm: {{poll_seconds: 0.3, cpus: 1, max_retries: {retries}}}\n"
        )
    };
    for retries in [1u32, 0] {
        let p = Project::new();
        p.write("c.yaml", &config(retries));
        let mut child = p.spawn_slurm(&["run", "c.yaml", "--json"]);
        let seen = wait_for(&mut child, |s| s.contains("start    train/"));
        let label = seen
            .lines()
            .filter_map(|l| l.strip_prefix("start    "))
            .find(|l| l.starts_with("train/"))
            .and_then(|l| l.split(" (").next())
            .unwrap()
            .to_string();
        requeue_running_job(&p, &label);
        let out = child.wait_with_output().unwrap();
        let r: Run = out.into();
        let jobs = slurm_jobs(&p.slurm_run_dirs()[0]);
        let outcome = jobs[&label].2.clone().unwrap_or_else(|| {
            let run_dir = &p.slurm_run_dirs()[0];
            let logs: String = std::fs::read_dir(run_dir.join("logs"))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    format!(
                        "--- {}\n{}",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "no outcome file for {label} (retries {retries}); the run said:\n{seen}{}\nlogs:\n{logs}",
                r.stderr
            )
        });
        assert_eq!(outcome["restarts"], 1, "{outcome}");
        if retries == 1 {
            // Started again under the same job id, and finished.
            let r = r.ok();
            assert_eq!(r.json()["failed"], 0);
            assert_eq!(outcome["outcome"], "executed", "{outcome}");
            let rec = find_action(&p.store(), &label);
            assert_eq!(rec["provenance"]["stage"]["slurm_restarts"], "1");
            assert_eq!(
                rec["provenance"]["stage"]["slurm_job_id"],
                jobs[&label].0.as_str()
            );
        } else {
            assert_eq!(r.code, 1, "{}", r.stderr);
            assert!(
                r.stderr.contains(&format!(
                    "FAILED   {label}: slurm job {}: lost 1 times (node failure or requeue); \
                     executor.slurm.max_retries is 0",
                    jobs[&label].0
                )),
                "{}",
                r.stderr
            );
        }
    }
}

#[test]
fn without_a_shared_store_slurm_jobs_share_results_through_the_remote() {
    let _cluster = slurm_exclusive();
    // The jobs' store is node-local (here a folder of its own), over a
    // remote cache; the submitter's store gets what its report needs.
    let remote = tempfile::tempdir().unwrap();
    let node = tempfile::tempdir().unwrap();
    let p = Project::new();
    p.write(
        "c.yaml",
        &format!(
            "{SHARED}store:\n  remote: file://{}\nexecutor:\n  use: slurm\n  slurm: {{poll_seconds: 0.5, cpus: 1, node_store: \"{}/$BSCE_TEST_NODE\"}}\n",
            remote.path().display(),
            node.path().display()
        ),
    );
    let r = p
        .run_env(
            &["run", "c.yaml", "--json"],
            &[
                ("SLURM_CONF", &slurm_cluster()),
                ("BSCE_TEST_NODE", "scratch"),
            ],
        )
        .ok();
    let j = r.json();
    let stages = j["stages"].as_u64().unwrap();
    assert_eq!(j["executed"], stages, "{}", r.stderr);
    // Every stage was computed in the node store ($VAR expanded in the
    // job) and pushed to the remote.
    let node_store = node.path().join("scratch");
    assert_eq!(
        evaluations(&node_store).len(),
        5,
        "t0 shared, t1 and t2 per method"
    );
    assert_eq!(assert_remote_consistent(remote.path()) as u64, stages);
    // What the submitter's store holds: the stages it ran itself (orders,
    // task splits, result stages: executor.slurm.local_kinds), computed
    // from inputs it pulled, and those inputs; nothing else.
    for e in walkdir::WalkDir::new(p.store().join("ac")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            let label = v["label"].as_str().unwrap();
            let here = ["order/", "tasks/", "aggregate/", "render/", "plot/"]
                .iter()
                .any(|k| label.starts_with(k));
            assert_eq!(
                v["provenance"]["stage"]["pulled_from"].is_string(),
                !here,
                "{label}"
            );
        }
    }
    assert!(table_of(&p).contains("bsce"), "{}", table_of(&p));
    // Another machine pulls everything and runs nothing.
    let b = Project::new();
    b.write("c.yaml", SHARED);
    let url = format!("file://{}", remote.path().display());
    let jb = b
        .run(&["run", "c.yaml", "--json", "--remote", &url])
        .ok()
        .json();
    assert_eq!(jb["executed"], 0);
    assert_eq!(evaluations(&b.store()), evaluations(&node_store));
}

#[test]
fn two_slurm_runs_of_one_config_compute_each_stage_once_and_the_later_jobs_exit_at_once() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    p.write(
        "c.yaml",
        &format!("{SHARED}executor:\n  use: slurm\n  slurm: {{poll_seconds: 0.3, cpus: 1, extra: [--hold]}}\n"),
    );
    // Both submitted before either has run anything (held until both are
    // in: otherwise the first run's first job may end before the second
    // run plans): every stage has a job in each run, and the per-key locks
    // decide who computes it.
    p.slurm(&["run", "c.yaml", "--detach"]).ok();
    p.slurm(&["run", "c.yaml", "--detach"]).ok();
    let dirs = p.slurm_run_dirs();
    assert_eq!(dirs.len(), 2);
    release_and_wait(&dirs);
    let (a, b) = (slurm_jobs(&dirs[0]), slurm_jobs(&dirs[1]));
    assert_eq!(a.len(), b.len());
    let mut cached_in_b = 0;
    for (label, (_, _, oa)) in &a {
        let oa = oa.as_ref().unwrap()["outcome"]
            .as_str()
            .unwrap()
            .to_string();
        let ob = b[label].2.as_ref().unwrap()["outcome"]
            .as_str()
            .unwrap()
            .to_string();
        let mut both = [oa.as_str(), ob.as_str()];
        both.sort();
        assert_eq!(
            both,
            ["cached", "executed"],
            "{label}: computed once, found once"
        );
        cached_in_b += usize::from(ob == "cached");
    }
    assert!(cached_in_b > 0);
    // The store holds one record per stage; a third run submits nothing.
    let j = p.slurm(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(j["executed"], 0);
}

#[test]
fn cache_gc_between_the_jobs_of_a_detached_slurm_run_keeps_what_its_jobs_read() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    p.write("c.yaml", SHARED);
    p.run(&["run", "c.yaml"]).ok();
    // A config that shares nothing with c.yaml's results.
    p.write("other.yaml", &SHARED.replace("seed: 3", "seed: 4"));
    // c.yaml edited (one more epoch) and submitted detached: its dataset,
    // order and split are in the store, its training jobs are queued (held
    // here, so gc surely falls between two jobs: no job holds the store).
    p.write(
        "c.yaml",
        &format!(
            "{}executor:\n  use: slurm\n  slurm: {{poll_seconds: 0.3, cpus: 1, extra: [--hold]}}\n",
            SHARED.replace("epochs: 2", "epochs: 3")
        ),
    );
    let detached = p.slurm(&["run", "c.yaml", "--detach"]).ok();
    // The hint names the config (issue 23, M5: it printed the job count).
    let hint = detached
        .stderr
        .lines()
        .find(|l| l.contains("cancels them"))
        .unwrap_or_else(|| panic!("no hint in:\n{}", detached.stderr));
    assert!(
        hint.contains("c.yaml` shows") && hint.contains("c.yaml` cancels them"),
        "{hint}"
    );
    let dirs = p.slurm_run_dirs();
    assert_eq!(dirs.len(), 1);
    let gc = p
        .slurm(&["cache", "gc", "--keep", "other.yaml", "--json"])
        .ok();
    assert!(
        gc.stderr.contains("keeping every result that Slurm run")
            && gc.stderr.contains("jobs queued or running"),
        "{}",
        gc.stderr
    );
    let j = gc.json();
    assert_eq!(j["live_slurm_runs"].as_object().unwrap().len(), 1, "{j}");
    assert_eq!(j["removed_slurm_runs"], 0, "{j}");
    assert!(
        j["removed_actions"].as_u64().unwrap() > 0,
        "the old epochs' results go: {j}"
    );
    assert!(
        dirs[0].join("run.json").is_file(),
        "a live run's folder stays"
    );
    // Released, every job finds its inputs.
    release_and_wait(&dirs);
    for (label, (_, _, outcome)) in slurm_jobs(&dirs[0]) {
        let o = outcome.unwrap_or_else(|| panic!("{label} wrote no outcome"));
        assert_eq!(o["outcome"], "executed", "{label}: {o}");
    }
    // Finished, the run's folder is removed by the next gc; its results stay.
    let j = p
        .slurm(&["cache", "gc", "--keep", "c.yaml", "--json"])
        .ok()
        .json();
    assert_eq!(j["removed_slurm_runs"], 1, "{j}");
    assert_eq!(j["removed_actions"], 0, "{j}");
    assert!(p.slurm_run_dirs().is_empty());
    let j = p.slurm(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(j["executed"], 0);
}

/// Issue 21, item 2: a run's chain is one job that stores each stage as it
/// finishes; lost halfway (requeued), it starts again at its first stage
/// not in the store.
#[test]
fn a_run_chain_lost_halfway_resumes_at_its_first_stage_not_in_the_store() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    p.write(
        "c.yaml",
        "datasets:\n  synth:\n    synthetic: {classes: 4, train_per_class: 100, test_per_class: 5, image_size: 16, seed: 3}\n\
         orders:\n  a: {numpy_seed: 1993}\nsettings:\n  s2: {base: 2, increment: 2}\n\
         methods:\n  ce: {preset: finetune, memory: {per_class: 4}}\n\
         recipes:\n  r: {epochs: 100, batch_size: 16, lr: 0.05}\n\
         experiments:\n  e: {dataset: synth, orders: [a], settings: [s2], methods: [ce], recipe: r, network: tiny}\n\
         executor:\n  use: slurm\n  slurm: {poll_seconds: 0.3, cpus: 1, max_retries: 1}\n",
    );
    let mut child = p.spawn_slurm(&["run", "c.yaml", "--json"]);
    let t0 = "train/synth/a/ce/seed0/b2/t0";
    let t1 = "train/synth/a/ce/seed0/s2/t1";
    // The base task is stored; the job is training task 1.
    let seen = wait_for(&mut child, |s| {
        s.contains("done     evaluate/synth/a/ce/seed0/b2/t0")
    });
    assert!(
        seen.contains("2 slurm jobs (1 run chain, 1 single stage)"),
        "{seen}"
    );
    requeue_running_job(&p, t1);
    let r: Run = child.wait_with_output().unwrap().into();
    let r = r.ok();
    assert_eq!(r.json()["failed"], 0, "{seen}{}", r.stderr);
    let dir = &p.slurm_run_dirs()[0];
    let jobs = slurm_jobs(dir);
    assert_eq!(jobs[t0].0, jobs[t1].0, "one job for the chain");
    // The second attempt found task 0 in the store and computed task 1.
    let o0 = jobs[t0].2.clone().unwrap();
    let o1 = jobs[t1].2.clone().unwrap();
    assert_eq!(
        (o0["outcome"].as_str(), o0["restarts"].as_u64()),
        (Some("cached"), Some(1))
    );
    assert_eq!(
        (o1["outcome"].as_str(), o1["restarts"].as_u64()),
        (Some("executed"), Some(1))
    );
    let rec0 = find_action(&p.store(), t0);
    assert!(
        rec0["provenance"]["stage"]["slurm_restarts"].is_null(),
        "{rec0}"
    );
    let rec1 = find_action(&p.store(), t1);
    assert_eq!(rec1["provenance"]["stage"]["slurm_restarts"], "1");
    let log: String = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        log.contains(&format!("done     {t0} in "))
            && log.contains(&format!("cached   {t0} (in the store; nothing to do)")),
        "{log}"
    );
}

/// Issue 21, item 2: a submission above executor.slurm.max_jobs is refused
/// before anything is submitted, with the number of jobs it needs; a stage
/// failing in a chain skips the rest of that chain, not the other chains.
#[test]
fn max_jobs_refuses_a_submission_with_the_number_needed_and_a_failure_skips_only_its_chain() {
    let _cluster = slurm_exclusive();
    let p = Project::new();
    let config = |slurm: &str| {
        format!("{SHARED}executor:\n  use: slurm\n  slurm: {{poll_seconds: 0.3, cpus: 1{slurm}}}\n")
    };
    p.write("c.yaml", &config(", max_jobs: 3"));
    let r = p.slurm(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("c.yaml: this run needs 4 slurm jobs (3 run chains, 1 single stage); 5 stages on this machine, above executor.slurm.max_jobs (3)"),
        "{}",
        r.stderr
    );
    assert!(p.slurm_run_dirs().is_empty(), "nothing is submitted");
    // group: stage needs a job per stage: 11.
    p.write(
        "c.yaml",
        &config(", max_jobs: 10, group: stage, local_kinds: []"),
    );
    let r = p.slurm(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("this run needs 16 slurm jobs; 0 stages on this machine, above executor.slurm.max_jobs (10)"),
        "{}",
        r.stderr
    );
    // A kind that cannot run here is refused by the config.
    p.write("c.yaml", &config(", local_kinds: [order, train]"));
    let r = p.slurm(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("executor.slurm.local_kinds[1]"),
        "{}",
        r.stderr
    );
    // The warm worker of the BSCE chain's job is killed while it trains
    // task 1: that stage fails, the rest of the chain (which reads it) is
    // skipped inside the job, and the CE chain goes on to its end.
    p.write("c.yaml", &config("").replace("epochs: 2", "epochs: 30"));
    let child = p.spawn_slurm(&["run", "c.yaml", "--json", "--verbose"]);
    let t1 = "train/synth/a/bsce/seed0/s2/t1";
    let start = std::time::Instant::now();
    let worker = loop {
        if let Some(w) = exec_node_of(t1).and_then(crate::workers::worker_of) {
            break w;
        }
        assert!(start.elapsed().as_secs() < 60, "no worker for {t1}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // SAFETY: a process of this test's run.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(
        (j["failed"].as_u64(), j["skipped"].as_u64()),
        (Some(1), Some(6)),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("FAILED   {t1}: slurm job "))
            && r.stderr.contains("its warm worker (pid "),
        "{}",
        r.stderr
    );
    let jobs = slurm_jobs(&p.slurm_run_dirs()[0]);
    for later in [
        "evaluate/synth/a/bsce/seed0/s2/t1",
        "train/synth/a/bsce/seed0/s2/t2",
        "evaluate/synth/a/bsce/seed0/s2/t2",
    ] {
        let o = jobs[later].2.clone().expect("the job wrote its outcome");
        assert_eq!(
            (o["outcome"].as_str(), o["because"].as_str()),
            (Some("skipped"), Some(t1)),
            "{later}"
        );
        assert!(
            r.stderr.contains(&format!("skipped  {later}")),
            "{}",
            r.stderr
        );
    }
    assert!(
        r.stderr
            .contains("done     evaluate/synth/a/ce/seed0/s2/t2"),
        "{}",
        r.stderr
    );
}

/// The `bsce-pipe exec-node` process of the Slurm job running `label`.
fn exec_node_of(label: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("\0exec-node\0") && cmdline.contains(&format!("={label}\0")))
            .then_some(pid)
    })
}
