//! Warm workers (issue 21): libtorch stages run one after another in
//! long-lived `bsce-torch worker` processes. Warmth must never change a
//! result: every output is byte-identical to a cold run's, whatever the
//! order the stages reach a worker; a worker killed mid-stage fails only
//! that stage.

use crate::support::*;

/// What a store computed, as warmth must leave it: label -> (key, output
/// file -> its digest). Wall times are not results: a train stage's
/// `log.json` enters with its `seconds` fields removed, and the result
/// stages (aggregate, render, plot), whose tables carry training time, are
/// left out; every value they show comes from the evaluate outputs here.
fn outputs(p: &Project) -> std::collections::BTreeMap<String, (String, Value)> {
    fn timeless(v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter(|(k, _)| k != "seconds")
                    .map(|(k, x)| (k, timeless(x)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(timeless).collect()),
            x => x,
        }
    }
    let store = p.store();
    action_files(p)
        .into_iter()
        .filter(|(label, _)| {
            !["aggregate/", "render/", "plot/"]
                .iter()
                .any(|k| label.starts_with(k))
        })
        .map(|(label, path)| {
            let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            let files: serde_json::Map<String, Value> = v["outputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(f, o)| {
                    let d = o["digest"].as_str().unwrap();
                    let value = if f == "log.json" {
                        let blob = store.join("cas").join(&d[..2]).join(&d[2..]);
                        timeless(serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap())
                    } else {
                        Value::String(d.to_string())
                    };
                    (f.clone(), value)
                })
                .collect();
            (
                label,
                (v["key"].as_str().unwrap().to_string(), Value::Object(files)),
            )
        })
        .collect()
}

/// How many stages of a store's records ran as a worker's second or later
/// stage (warm), and how many ran in a worker at all.
fn warm_counts(p: &Project) -> (usize, usize) {
    let (mut warm, mut in_worker) = (0, 0);
    for (_, path) in action_files(p) {
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        if let Some(n) = v["provenance"]["stage"]["worker"]["stage"].as_u64() {
            in_worker += 1;
            warm += usize::from(n > 1);
        }
    }
    (warm, in_worker)
}

/// The quickstart (fewer epochs), once with warm workers and once with
/// `--cold`, into two stores: the same keys and the same bytes for every
/// output of every stage.
#[test]
fn warm_workers_store_byte_identical_outputs_to_cold_processes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("configs/quickstart.yaml"))
        .unwrap()
        .replace("epochs: 12", "epochs: 2");
    let warm = Project::new();
    let cold = Project::new();
    warm.write("q.yaml", &config);
    cold.write("q.yaml", &config);
    warm.run(&["run", "q.yaml", "--jobs", "2"]).ok();
    cold.run(&["run", "q.yaml", "--jobs", "2", "--cold"]).ok();
    let (w, c) = (outputs(&warm), outputs(&cold));
    assert_eq!(w.len(), 77 - 6, "every stage but the 6 result stages");
    assert_eq!(w, c, "warm and cold outputs differ");
    // The warm run did run warm: two workers (one per job slot) served
    // every train and evaluate stage; the cold run used none.
    let (warm_stages, in_worker) = warm_counts(&warm);
    let torch = w
        .keys()
        .filter(|l| l.starts_with("train/") || l.starts_with("evaluate/"))
        .count();
    assert_eq!(in_worker, torch, "every train and evaluate stage");
    assert!(warm_stages >= in_worker - 2, "{warm_stages} of {in_worker}");
    assert_eq!(warm_counts(&cold), (0, 0));
}

/// One worker (`--jobs 1`) runs the stages of two runs interleaved; with
/// the methods listed the other way round they reach it in the opposite
/// order. Every output is the same.
#[test]
fn stages_reaching_one_worker_in_either_order_compute_the_same_bytes() {
    let a = Project::new();
    let b = Project::new();
    a.write("c.yaml", SHARED);
    b.write(
        "c.yaml",
        &SHARED.replace("methods: [ce, bsce]", "methods: [bsce, ce]"),
    );
    let order = |p: &Project| -> Vec<String> {
        let r = p.run(&["run", "c.yaml", "--jobs", "1"]).ok();
        r.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("run      "))
            .filter(|l| l.starts_with("train/") || l.starts_with("evaluate/"))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let (first, second) = (order(&a), order(&b));
    assert_eq!(first.len(), second.len());
    assert_ne!(first, second, "the two runs met the worker in one order");
    // Identical stages of the two methods merge into one node, labelled
    // by whichever the plan met first: compare by key.
    let by_key = |p: &Project| -> std::collections::BTreeMap<String, Value> {
        outputs(p).into_values().collect()
    };
    assert_eq!(by_key(&a), by_key(&b));
    let (warm, in_worker) = warm_counts(&a);
    assert_eq!(warm, in_worker - 1, "one worker ran them all");
}

/// The worker process of the running stage, a child of `run` whose
/// command line is `bsce-torch worker`.
pub(crate) fn worker_of(run_pid: u32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(run_pid) && cmdline.ends_with(b"worker\0") {
            return Some(pid);
        }
    }
    None
}

/// The worker of a run that has started a train stage (it may still be
/// starting).
fn wait_for_worker(run_pid: u32) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Some(pid) = worker_of(run_pid) {
            return pid;
        }
        assert!(start.elapsed().as_secs() < 30, "no worker process appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// SIGKILL of the worker mid-stage: that stage fails with a message saying
/// so, the run goes on with a fresh worker (`--keep-going`), and the next
/// run computes only that stage and what it had blocked.
#[test]
fn a_worker_killed_mid_stage_fails_that_stage_only() {
    let p = Project::new();
    p.write("c.yaml", &SHARED.replace("epochs: 2", "epochs: 40"));
    let mut child = p.spawn(&["run", "c.yaml", "--jobs", "1", "--keep-going"]);
    // The first task's training is one stage for both methods; the second
    // task's is each method's own.
    let second = |l: &str| l.starts_with("run      train/") && l.contains("/t1 ");
    let seen = wait_for(&mut child, |s| s.lines().any(second));
    let label = seen
        .lines()
        .find(|l| second(l))
        .map(|l| {
            l["run      ".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .unwrap();
    let pid = wait_for_worker(child.id());
    // Whatever stage comes first, a deterministic GPU stage after it gets
    // cuBLAS's fixed workspace: it is in the worker's environment from
    // its start, before any cuBLAS handle exists.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v == b"CUBLAS_WORKSPACE_CONFIG=:4096:8"),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: signalling a process of this test's own run.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    let stderr = seen + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let failed = stderr
        .lines()
        .find(|l| l.starts_with(&format!("FAILED   {label}: ")))
        .unwrap_or_else(|| panic!("{label} did not fail:\n{stderr}"));
    assert!(
        failed.contains("killed by signal 9")
            && failed.contains(&format!("its warm worker (pid {pid}) died mid-stage")),
        "{failed}"
    );
    // The other method's chain went on, in a fresh worker.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("done     train/") && l.contains("/t2 ")),
        "{stderr}"
    );
    let first: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("done     "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    let again = executed(&j);
    assert!(again.contains(&label), "{again:?}");
    // (The result stages ran at the end of the first run over the complete
    // runs only: another key.)
    for l in again
        .iter()
        .filter(|l| l.starts_with("train/") || l.starts_with("evaluate/"))
    {
        assert!(!first.contains(l), "{l} ran twice: {again:?}");
    }
    // A kill says nothing about the inputs: not "same inputs failed".
    assert!(!stderr.contains("same inputs failed"), "{stderr}");
}

/// Issue 23: the terminal closing (SIGHUP) stops a run as Ctrl-C does:
/// exit 130, its warm worker stopped with it, nothing half-stored; the next
/// run computes what was left. (Before, SIGHUP killed the run outright:
/// exit 129.)
#[test]
fn a_hang_up_stops_the_run_and_its_workers_cleanly() {
    let p = Project::new();
    p.write("c.yaml", &SHARED.replace("epochs: 2", "epochs: 40"));
    let mut child = p.spawn(&["run", "c.yaml", "--jobs", "1"]);
    let seen = wait_for(&mut child, |s| s.contains("run      train/"));
    let worker = wait_for_worker(child.id());
    // SAFETY: signalling this test's own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    let stderr = seen + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // The worker is gone (reaped or dying: not running on).
    let alive = std::fs::read_to_string(format!("/proc/{worker}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    assert!(!alive, "worker {worker} outlived its run");
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(j["failed"], 0, "{j}");
    assert!(executed(&j).iter().any(|l| l.starts_with("train/")), "{j}");
}
