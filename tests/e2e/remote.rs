//! Remote caches (file, WebDAV on nginx, S3): pulls, pushes, hostile and unreachable remotes, two machines at once.

use crate::support::*;

#[test]
fn a_second_machine_pulls_everything_from_a_file_remote_and_runs_nothing() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let a = Project::new();
    a.write("c.yaml", SHARED);
    let ra = a.run(&["run", "c.yaml", "--json", "--remote", &url]).ok();
    let ja = ra.json();
    let stages = ja["stages"].as_u64().unwrap();
    assert_eq!(ja["remote"]["pushed_actions"], stages, "{ja}");
    assert_eq!(assert_remote_consistent(remote.path()) as u64, stages);
    // Machine B: its own folder and store; the remote from the environment.
    let b = Project::new();
    b.write("c.yaml", SHARED);
    let st = b
        .run_env(&["status", "c.yaml"], &[("BSCE_REMOTE", &url)])
        .ok();
    assert!(
        st.stdout.contains("remote   prepare/synth") && !st.stdout.contains("to-run"),
        "{}",
        st.stdout
    );
    let rb = b
        .run_env(&["run", "c.yaml", "--json"], &[("BSCE_REMOTE", &url)])
        .ok();
    let jb = rb.json();
    assert_eq!(jb["executed"], 0, "{}", rb.stderr);
    assert_eq!(jb["remote"]["pulled_actions"], stages, "{jb}");
    assert!(
        rb.stderr
            .contains(&format!("remote {url}: pulled {stages} stages")),
        "{}",
        rb.stderr
    );
    assert_eq!(table_of(&a), table_of(&b));
    assert_eq!(evaluations(&a.store()), evaluations(&b.store()));
    // Pulled records say where they came from and where they were made.
    let rec = find_action(&b.store(), "prepare/synth");
    assert_eq!(rec["provenance"]["stage"]["pulled_from"], url.as_str());
    assert!(rec["provenance"]["host"].is_string());
    // B's store is whole; a second run does nothing at all.
    b.run(&["cache", "verify"]).ok();
    let again = b
        .run_env(&["run", "c.yaml", "--json"], &[("BSCE_REMOTE", &url)])
        .ok()
        .json();
    assert_eq!(
        (
            again["executed"].clone(),
            again["remote"]["pulled_actions"].clone()
        ),
        (0.into(), 0.into())
    );
}

/// The README's laptop: no store, no training, the report from the remote.
#[test]
fn a_fresh_machine_makes_the_report_and_results_from_the_remote_alone() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let a = Project::new();
    a.write("c.yaml", SHARED);
    a.run(&["run", "c.yaml", "--remote", &url]).ok();
    let b = Project::new();
    b.write("c.yaml", SHARED);
    let r = b
        .run(&["report", "c.yaml", "--remote", &url, "--json"])
        .ok();
    assert!(r.stderr.contains("(a cache of the remote)"), "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["missing"], serde_json::json!([]), "{j}");
    assert_eq!(table_of(&a), table_of(&b));
    let res = b
        .run_env(&["results", "c.yaml", "--json"], &[("BSCE_REMOTE", &url)])
        .ok()
        .json();
    assert_eq!(res["runs"].as_array().map(Vec::len), Some(2), "{res}");
    // Without a remote, a machine with no store is still told so (exit 2).
    let c = Project::new();
    c.write("c.yaml", SHARED);
    let none = c.run(&["report", "c.yaml"]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(
        none.stderr.contains("no bsce-pipe store here"),
        "{}",
        none.stderr
    );
}

#[test]
fn a_corrupt_blob_or_a_hostile_record_in_the_remote_never_reaches_the_local_store() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let a = Project::new();
    a.write("c.yaml", SHARED);
    a.run(&["run", "c.yaml", "--remote", &url]).ok();
    // Corrupt the order's blob on the server, and make the tasks record
    // name an output outside its stage's (a path traversal).
    let order = find_action(&a.store(), "order/synth/a");
    let d = order["outputs"]["order.json"]["digest"].as_str().unwrap();
    let blob = remote.path().join("cas").join(d);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[2] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let tasks = find_action(&a.store(), "tasks/synth/a/s2");
    let key = tasks["key"].as_str().unwrap();
    let mut hostile = tasks.clone();
    hostile["outputs"]["../../../escape"] = hostile["outputs"]["tasks.json"].clone();
    std::fs::write(
        remote.path().join("ac").join(key),
        serde_json::to_vec(&hostile).unwrap(),
    )
    .unwrap();
    let b = Project::new();
    b.write("c.yaml", SHARED);
    let r = b
        .run(&[
            "run",
            "c.yaml",
            "--json",
            "--remote",
            &url,
            "--remote-read-only",
        ])
        .ok();
    assert!(
        r.stderr.contains("arrived as") && r.stderr.contains("refused"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("that stage kind tasks does not declare"),
        "{}",
        r.stderr
    );
    let ran = executed(&r.json());
    assert!(ran.contains(&"order/synth/a".to_string()), "{ran:?}");
    assert!(ran.contains(&"tasks/synth/a/s2".to_string()), "{ran:?}");
    // Nothing bad landed: the store verifies, nothing escaped, results match.
    b.run(&["cache", "verify"]).ok();
    assert!(!b.dir.path().parent().unwrap().join("escape").exists());
    assert_eq!(table_of(&a), table_of(&b));
    // Read-only: B pushed nothing, so the server still holds the bad blob.
    assert_ne!(
        std::fs::read(&blob).unwrap(),
        std::fs::read(blob_of(&b.store(), "order/synth/a", "order.json")).unwrap()
    );
}

#[test]
fn an_unreachable_remote_is_one_warning_and_the_run_computes_locally() {
    let p = Project::new();
    p.write(
        "c.yaml",
        &format!("{SHARED}store: {{remote: \"http://127.0.0.1:9/cache\"}}\n"),
    );
    let start = std::time::Instant::now();
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    assert_eq!(r.json()["failed"], 0);
    assert_eq!(
        r.stderr
            .matches("remote cache http://127.0.0.1:9/cache is unavailable")
            .count(),
        1,
        "{}",
        r.stderr
    );
    assert!(start.elapsed().as_secs() < 120);
    // A remote that is not a URL is bad input, named.
    p.write(
        "c.yaml",
        &format!("{SHARED}store: {{remote: \"ftp://x\"}}\n"),
    );
    let r = p.run(&["status", "c.yaml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("store.remote") && r.stderr.contains("not a remote cache URL"),
        "{}",
        r.stderr
    );
}

#[test]
fn two_machines_pushing_one_config_at_once_leave_a_consistent_remote() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let (a, b) = (Project::new(), Project::new());
    for p in [&a, &b] {
        p.write("c.yaml", SHARED);
    }
    let ca = a.spawn(&["run", "c.yaml", "--remote", &url]);
    let cb = b.spawn(&["run", "c.yaml", "--remote", &url]);
    for c in [ca, cb] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n = assert_remote_consistent(remote.path());
    assert!(n > 0);
    // A third machine trains and evaluates nothing. A and B both trained,
    // and their logs differ in wall times, so the remote may hold A's log
    // for one task and B's for the next: the result stages that read the
    // logs may then rerun (in milliseconds), nothing else.
    let c = Project::new();
    c.write("c.yaml", SHARED);
    let j = c
        .run(&["run", "c.yaml", "--json", "--remote", &url])
        .ok()
        .json();
    let ran = executed(&j);
    assert!(
        ran.iter().all(|l| ["aggregate/", "render/", "plot/"]
            .iter()
            .any(|k| l.starts_with(k))),
        "{j}"
    );
}

#[test]
fn cache_push_and_pull_sync_a_config_explicitly() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let a = Project::new();
    a.write("c.yaml", SHARED);
    a.run(&["run", "c.yaml"]).ok();
    assert!(!remote.path().join("ac").exists(), "no remote was named");
    let j = a
        .run(&["cache", "push", "c.yaml", "--remote", &url, "--json"])
        .ok()
        .json();
    let n = j["pushed"].as_array().unwrap().len();
    assert_eq!(n as u64, j["stages"].as_u64().unwrap(), "{j}");
    assert_eq!(assert_remote_consistent(remote.path()), n);
    let (b, j) = pull_shared_on_a_fresh_machine(&url);
    assert_eq!(j["pulled"].as_array().unwrap().len(), n, "{j}");
    assert_eq!(j["not_available"], serde_json::json!([]));
    let st = b.status("c.yaml");
    assert!(st.iter().all(|s| s.1 == "cached"), "{st:?}");
    // Without a remote, push is bad input that says where to name one.
    let r = a.run(&["cache", "push", "c.yaml"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("needs a remote"), "{}", r.stderr);
}

/// A push killed mid-copy leaves its temporary file on a `file://` remote;
/// the next writer removes it once it is an hour old (a dead writer's),
/// and leaves a fresh one (a live upload elsewhere) alone.
#[test]
fn a_killed_pushs_temporary_file_on_a_file_remote_is_removed_later() {
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    let cas = remote.path().join("cas");
    std::fs::create_dir_all(&cas).unwrap();
    let stale = cas.join(".tmp-4242-0a1b2c-ThreadId(2)");
    let live = cas.join(".tmp-4343-0d1e2f-ThreadId(3)");
    for f in [&stale, &live] {
        std::fs::write(f, vec![7u8; 1 << 20]).unwrap();
    }
    let touched = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&stale)
        .status()
        .unwrap();
    assert!(touched.success());
    let a = Project::new();
    a.write("c.yaml", SHARED);
    a.run(&["run", "c.yaml", "--remote", &url]).ok();
    assert!(!stale.exists(), "a dead writer's temporary file stays");
    assert!(live.exists(), "a live upload's temporary file was removed");
    assert_remote_consistent(remote.path());
}

/// A remote that refuses this machine (HTTP 403: a wrong credential; a
/// login page answering 200 for every path) is one warning, not one per
/// request; the run goes on locally; `cache pull` says the remote was
/// unavailable and exits 1.
#[test]
fn a_remote_that_refuses_access_is_one_warning_and_pull_fails() {
    let server = Nginx::start();
    for (path, says) in [
        ("denied", "HTTP 403: check the remote's credentials"),
        ("portal", "is an HTML page, not a cache record"),
    ] {
        let url = format!("http://127.0.0.1:{}/{path}/cache", server.port);
        let a = Project::new();
        a.write("c.yaml", SHARED);
        let r = a.run(&["run", "c.yaml", "--remote", &url]).ok();
        assert_eq!(
            r.stderr.matches("refuses access").count(),
            1,
            "{path}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(says), "{path}: {}", r.stderr);
        assert!(
            !r.stderr.contains("treated as a miss"),
            "{path}: {}",
            r.stderr
        );
        let b = Project::new();
        b.write("c.yaml", SHARED);
        let p = b.run(&["cache", "pull", "c.yaml", "--remote", &url, "--json"]);
        assert_eq!(p.code, 1, "{path}: {}", p.stderr);
        assert_eq!(p.json()["remote_unavailable"], true, "{path}");
    }
}

/// A blob truncated on the remote (a killed upload on a server without
/// atomic renames, a disk that filled there) is uploaded again by the next
/// push, which compares sizes, not just presence: file:// and HTTP alike.
#[test]
fn a_blob_truncated_on_the_remote_is_pushed_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Nginx::start();
    for (url, cas) in [
        (
            format!("file://{}", dir.path().display()),
            dir.path().join("cas"),
        ),
        (server.url(), server.dir.path().join("data/cache/cas")),
    ] {
        let a = Project::new();
        a.write("c.yaml", SHARED);
        a.run(&["run", "c.yaml", "--remote", &url]).ok();
        // The largest blob, cut in half on the server.
        let blob = walkdir::WalkDir::new(&cas)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .max_by_key(|e| e.metadata().unwrap().len())
            .unwrap()
            .into_path();
        let full = std::fs::read(&blob).unwrap();
        std::fs::write(&blob, &full[..full.len() / 2]).unwrap();
        let j = a
            .run(&["cache", "push", "c.yaml", "--remote", &url, "--json"])
            .ok()
            .json();
        assert_eq!(j["transfer"]["pushed_blobs"], 1, "{url}: {j}");
        assert_eq!(std::fs::read(&blob).unwrap(), full, "{url}");
        // And another machine pulls everything.
        let (_, j) = pull_shared_on_a_fresh_machine(&url);
        assert_eq!(j["not_available"], serde_json::json!([]), "{url}: {j}");
    }
}

#[test]
fn machines_share_through_nginx_webdav_and_a_server_stopped_mid_run_is_not_fatal() {
    let mut server = Nginx::start();
    let url = server.url();
    let a = Project::new();
    a.write("c.yaml", SHARED);
    let ja = a
        .run(&["run", "c.yaml", "--json", "--remote", &url])
        .ok()
        .json();
    assert_eq!(ja["remote"]["pushed_actions"], ja["stages"], "{ja}");
    assert_eq!(
        assert_remote_consistent(&server.dir.path().join("data/cache")) as u64,
        ja["stages"].as_u64().unwrap()
    );
    let b = Project::new();
    b.write("c.yaml", SHARED);
    let jb = b
        .run(&["run", "c.yaml", "--json", "--remote", &url])
        .ok()
        .json();
    assert_eq!(jb["executed"], 0, "{jb}");
    assert_eq!(table_of(&a), table_of(&b));

    // Machine C adds a method while the server goes away mid-run: one
    // warning, the rest computed locally, the run succeeds.
    let c = Project::new();
    c.write("c.yaml", &SHARED.replace("recipe: r,", "recipe: r2,").replace(
        "recipes:\n  r: {epochs: 2, batch_size: 16, lr: 0.05}",
        "recipes:\n  r: {epochs: 2, batch_size: 16, lr: 0.05}\n  r2: {epochs: 30, batch_size: 16, lr: 0.05}",
    ));
    let mut child = c.spawn(&["run", "c.yaml", "--json", "--remote", &url, "--jobs", "1"]);
    let seen = wait_for(&mut child, |s| s.contains("run      train/"));
    server.stop();
    let out = child.wait_with_output().unwrap();
    let stderr = format!("{seen}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.matches("is unavailable").count() == 1, "{stderr}");
    c.run(&["cache", "verify"]).ok();
}

#[test]
fn machines_share_through_an_s3_server_including_multipart_blobs() {
    let server = S3Server::start();
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A prepared dataset of about 18 MB: uploaded in 8 MiB parts.
    let config = "datasets:\n  big:\n    synthetic: {classes: 6, train_per_class: 1000, test_per_class: 10, image_size: 32, seed: 2}\n\
                  orders:\n  a: {numpy_seed: 1}\nsettings:\n  s: {base: 2, increment: 2}\n\
                  experiments:\n  e: {dataset: big, orders: [a], settings: [s]}\n";
    let url = "s3://lab/bsce";
    let a = Project::new();
    a.write("c.yaml", config);
    let ja = a
        .run_env(&["run", "c.yaml", "--json", "--remote", url], &env)
        .ok()
        .json();
    assert_eq!(ja["remote"]["pushed_actions"], 3, "{ja}");
    assert!(
        ja["remote"]["pushed_bytes"].as_u64().unwrap() > 16 << 20,
        "{ja}"
    );
    let b = Project::new();
    b.write("c.yaml", config);
    let rb = b
        .run_env(&["run", "c.yaml", "--json", "--remote", url], &env)
        .ok();
    let jb = rb.json();
    assert_eq!(jb["executed"], 0, "{}", rb.stderr);
    assert_eq!(jb["remote"]["pulled_actions"], 3, "{jb}");
    // Large transfers show their progress.
    assert!(
        rb.stderr.contains("pull     blob ") && rb.stderr.contains("MiB/s)"),
        "{}",
        rb.stderr
    );
    let big =
        |p: &Project| std::fs::read(blob_of(&p.store(), "prepare/big", "train.images")).unwrap();
    assert_eq!(big(&a), big(&b));
    b.run(&["cache", "verify"]).ok();
    // Wrong credentials: a warning, and the run computes locally.
    let c = Project::new();
    c.write("c.yaml", config);
    let mut bad = env.clone();
    bad[1] = ("AWS_SECRET_ACCESS_KEY", "wrong");
    let rc = c
        .run_env(&["run", "c.yaml", "--json", "--remote", url], &bad)
        .ok();
    assert_eq!(rc.json()["executed"], 3);
    assert!(
        rc.stderr.contains("warning: remote cache s3://lab/bsce"),
        "{}",
        rc.stderr
    );
    assert!(
        !rc.stderr.contains("wrong") && !rc.stdout.contains("wrong"),
        "a secret was printed"
    );
}
