//! Helpers and fixtures of the end-to-end tests: `Project` (a temporary
//! project: write files, run the real binary, read the store), the YAML
//! fixtures, and the servers and cluster some tests start (nginx, an S3
//! server, Slurm).

pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Output, Stdio};

pub use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_bsce-pipe");

pub struct Project {
    pub dir: tempfile::TempDir,
}

/// `bin ARGS` in `dir`, with none of the caller's store or test-hook env.
pub fn bsce(bin: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args)
        .current_dir(dir)
        .env_remove("BSCE_STORE")
        .env_remove("BSCE_REMOTE")
        .env_remove("BSCE_REMOTE_READ_ONLY")
        .env_remove("BSCE_PIPE_CODE_SALT");
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Project {
    pub fn new() -> Self {
        Project {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        bsce(Path::new(BIN), self.dir.path(), args)
    }
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().unwrap().into()
    }
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap().into()
    }
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    pub fn store(&self) -> PathBuf {
        self.path(".bsce")
    }
    /// Status as label -> (state, reasons).
    pub fn status(&self, config: &str) -> Vec<(String, String, Vec<String>)> {
        let j = self.run(&["status", config, "--json"]).ok().json();
        j["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let reasons = n["reasons"]
                    .as_array()
                    .map(|r| r.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default();
                (
                    n["label"].as_str().unwrap().to_string(),
                    n["state"].as_str().unwrap().to_string(),
                    reasons,
                )
            })
            .collect()
    }
}

pub fn executed(j: &Value) -> Vec<String> {
    let mut v: Vec<String> = j["executed_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

pub const SMALL: &str = r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 20, test_per_class: 5, image_size: 8, seed: 1}
orders:
  a: {numpy_seed: 1993}
  b: {explicit: [5, 4, 3, 2, 1, 0]}
settings:
  s2: {base: 2, increment: 2}
  s1: {base: 4, increment: 1}
experiments:
  e:
    dataset: synth
    orders: [a, b]
    settings: [s2, s1]
"#;

pub fn labels(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A dataset big enough that preparing it takes a while.
pub const SLOW: &str = r#"
datasets:
  small:
    synthetic: {classes: 4, train_per_class: 10, test_per_class: 2, image_size: 8}
  big:
    synthetic: {classes: 100, train_per_class: 200, test_per_class: 20, image_size: 32}
orders:
  a: {numpy_seed: 1}
settings:
  s: {base: 2, increment: 1}
experiments:
  e1: {dataset: small, orders: [a], settings: [s]}
  e2: {dataset: big, orders: [a], settings: [s]}
"#;

pub fn wait_for(child: &mut Child, pred: impl Fn(&str) -> bool) -> String {
    use std::io::Read;
    let mut err = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let start = std::time::Instant::now();
    while !pred(&seen) {
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "process ended before the expected output:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        assert!(
            start.elapsed().as_secs() < 120,
            "timed out waiting:\n{seen}"
        );
    }
    child.stderr = Some(err);
    seen
}

pub fn find_action(store: &Path, label: &str) -> Value {
    let mut found: Vec<Value> = Vec::new();
    for e in walkdir::WalkDir::new(store.join("ac")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            if v["label"] == label {
                found.push(v);
            }
        }
    }
    // Two records under one label (the node ran under two keys) would make
    // the answer depend on the directory order: the caller must say which
    // key it means (`current_action`).
    match found.len() {
        0 => panic!("no action record for {label}"),
        1 => found.pop().unwrap(),
        n => panic!("{n} action records for {label}: use current_action to name the key"),
    }
}

/// The action record of `label` under the key `config` gives it now (as
/// `status --json` reports it), whatever other keys the node ran under.
pub fn current_action(p: &Project, config: &str, label: &str) -> Value {
    let j = p.run(&["status", config, "--json"]).ok().json();
    let key = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["label"] == label)
        .unwrap_or_else(|| panic!("{config} has no node {label}"))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let path = p
        .store()
        .join("ac")
        .join(&key[..2])
        .join(format!("{}.json", &key[2..]));
    let v: Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    assert_eq!(v["label"], label, "{}", path.display());
    v
}

/// Each bad input: one clear error, exit 2, and no store created.
pub fn assert_bad_input(config: &str, expected: &[&str]) {
    let p = Project::new();
    p.write("c.yaml", config);
    let r = p.run(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    for e in expected {
        assert!(r.stderr.contains(e), "expected {e:?} in:\n{}", r.stderr);
    }
    assert_eq!(r.stderr.lines().count(), 1, "one error line:\n{}", r.stderr);
    assert!(!p.store().exists(), "a bad input must not create the store");
}

pub fn cifar_images(n: usize) -> Vec<bsce_stages::dataset::cifar::fixtures::CifarImage> {
    (0..n)
        .map(|i| bsce_stages::dataset::cifar::fixtures::CifarImage {
            coarse_label: (i % 20) as u8,
            fine_label: (i % 100) as u8,
            chw: std::array::from_fn(|j| ((i * 31 + j * 7) % 251) as u8),
        })
        .collect()
}

pub const TRAINING: &str = r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 60, test_per_class: 30, image_size: 16, seed: 3}
orders:
  a: {numpy_seed: 1993}
  b: {numpy_seed: 7}
settings:
  s1: {base: 3, increment: 1}
  s3: {base: 3, increment: 3}
  s2: {base: 2, increment: 2}
  s2b: {base: 3, increment: 2, steps: 1}
methods:
  ce: {preset: finetune, memory: {per_class: 5}}
  bsce: {extends: ce, bsce: true}
recipes:
  r: {epochs: 3, batch_size: 32, lr: 0.05, schedule: cosine}
experiments:
  e:
    dataset: synth
    orders: [a, b]
    settings: [s1, s3, s2b]
    methods: [ce, bsce]
    recipe: r
    network: tiny
"#;

/// An ImageNet-layout tree of small textured JPEGs: `classes` folders of
/// `train` images each, and `val` per class.
pub fn write_image_tree(root: &Path, classes: u32, train: u32, val: u32) {
    for (split, n) in [("train", train), ("val", val)] {
        for c in 0..classes {
            let dir = root.join(split).join(format!("n{c:08}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(96, 72, |x, y| {
                    let v = (x * (c + 3) + y * (i + 5)) ^ (x * y / 7);
                    image::Rgb([v as u8, (v >> 3) as u8 ^ y as u8, (x + y + c) as u8])
                });
                let mut bytes = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
                    .encode_image(&img)
                    .unwrap();
                std::fs::write(dir.join(format!("{split}_{i:05}.JPEG")), bytes).unwrap();
            }
        }
    }
}

pub fn image_tree_config(size: u32) -> String {
    format!(
        "datasets:\n  inet:\n    image_folder: {{root: tree, size: {size}}}\norders:\n  o: {{explicit: [1, 0, 3, 2]}}\nsettings:\n  s: {{base: 2, increment: 1}}\nexperiments:\n  e: {{dataset: inet, orders: [o], settings: [s]}}\n"
    )
}

/// Shard lines of the one resume journal in `store`, if there is one.
pub fn journalled_shards(store: &Path) -> Option<usize> {
    let dir = std::fs::read_dir(store.join("resume")).ok()?.next()?.ok()?;
    let text = std::fs::read_to_string(dir.path().join("journal")).ok()?;
    Some(text.matches('\n').count().saturating_sub(1))
}

// ---------------------------------------------------------------------------
// Code edits, rebuilt for real in a scratch copy of this workspace
// ---------------------------------------------------------------------------

/// A checkout: the workspace this test was built from, or a scratch copy.
pub struct Checkout {
    pub root: PathBuf,
}

impl Checkout {
    pub fn bin(&self) -> PathBuf {
        self.root.join("target/bsce-pipe")
    }
    /// `scripts/setup.sh`, as a user sets up a checkout; (success, output).
    pub fn setup(&self) -> (bool, String) {
        let o = Command::new("bash")
            .arg("scripts/setup.sh")
            .current_dir(&self.root)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }
    pub fn edit(&self, file: &str, from: &str, to: &str) {
        let p = self.root.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }
    /// `bsce-pipe ARGS` run in `dir`.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Run {
        bsce(&self.bin(), dir, args).output().unwrap().into()
    }
}

/// A copy of the workspace's files (tracked and untracked, not ignored),
/// committed as a git repository of its own.
pub fn scratch_copy(from: &Path) -> (tempfile::TempDir, Checkout) {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str], at: &Path| {
        let o = Command::new("git")
            .args(["-c", "user.name=bsce", "-c", "user.email=bsce@localhost"])
            .args(args)
            .current_dir(at)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let files = git(
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        from,
    );
    for f in files.split('\0').filter(|f| !f.is_empty()) {
        let src = from.join(f);
        if !src.is_file() {
            continue; // deleted in the work tree
        }
        let dst = dir.path().join(f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
    }
    git(&["init", "-q"], dir.path());
    git(&["add", "-A"], dir.path());
    git(&["commit", "-q", "-m", "scratch"], dir.path());
    let root = dir.path().to_path_buf();
    (dir, Checkout { root })
}

pub const TRAINED: &str = r#"
datasets:
  synth:
    synthetic: {classes: 4, train_per_class: 12, test_per_class: 4, image_size: 8, seed: 3}
orders:
  a: {numpy_seed: 1993}
settings:
  s: {base: 2, increment: 1}
methods:
  ce: {preset: finetune, memory: {per_class: 4}}
  lucir: {preset: lucir, memory: {per_class: 4}, balanced_finetune: false}
recipes:
  r: {epochs: 2, batch_size: 8, lr: 0.05}
experiments:
  e:
    dataset: synth
    orders: [a]
    settings: [s]
    methods: [ce, lucir]
    recipe: r
    network: tiny
    deterministic: true
"#;

pub fn executed_of(run: &Run) -> Vec<String> {
    executed(&run.json())
}

pub const REPORTED: &str = r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 40, test_per_class: 20, image_size: 16, seed: 5}
orders:
  a: {numpy_seed: 1993}
  b: {numpy_seed: 7}
settings:
  s2: {base: 2, increment: 2}
methods:
  ce: {preset: finetune, memory: {per_class: 5}}
  bsce: {extends: ce, bsce: true}
recipes:
  r: {epochs: 2, batch_size: 32, lr: 0.05, schedule: cosine}
experiments:
  e: {dataset: synth, orders: [a, b], settings: [s2], methods: [ce, bsce], recipe: r, network: tiny}
tables:
  acc:
    caption: "Synthetic, 2 base classes"
    experiments: [e]
    columns: [setting]
    time_column: true
    reference: {ce: {s2: "50.0 +- 1.0"}}
    reference_source: "a made-up paper"
  forgetting:
    caption: "Synthetic: forgetting"
    experiments: [e]
    metric: average_forgetting
    classifier: nme
    columns: [setting]
"#;

/// A CSV file as rows of column -> text (no quoted commas in our frames).
pub fn read_csv(path: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

/// Markdown table rows (after the header and rule) as cells.
pub fn markdown_rows(md: &str) -> Vec<Vec<String>> {
    md.lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('*').to_string())
                .collect()
        })
        .collect()
}

pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

pub fn report_executed(j: &Value) -> Vec<String> {
    j["executed_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Action records of the store, by label.
pub fn action_files(p: &Project) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(p.store().join("ac")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            out.push((v["label"].as_str().unwrap().to_string(), e.into_path()));
        }
    }
    out.sort();
    out
}

/// A tmpfs mounted for one test, unmounted when dropped.
/// A tmpfs of `size` (as mount writes it: `1m`) at `p`'s `small/`, and
/// the guard that unmounts it; `None`, with a note on stderr, where
/// mounting is not permitted (not root; root without CAP_SYS_ADMIN in
/// some containers): the caller's test then has no small disk to fill.
pub fn small_tmpfs(p: &Project, size: &str) -> Option<(PathBuf, Tmpfs)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return None;
    }
    let mnt = p.path("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: mount -t tmpfs is not permitted here");
        return None;
    }
    Some((mnt.clone(), Tmpfs(mnt)))
}

pub struct Tmpfs(pub PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The stored blob of `file` in the action record of `label`.
pub fn blob_of(store: &Path, label: &str, file: &str) -> PathBuf {
    let rec = find_action(store, label);
    let d = rec["outputs"][file]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{label} has no output {file}"))
        .to_string();
    store.join("cas").join(&d[..2]).join(&d[2..])
}

/// Flips one byte of a stored blob the way a user could (make it writable,
/// write, make it read-only, `touch -d` the old mtime back): the size and
/// the mtime stay as they were; only the ctime moves.
pub fn flip_byte_keeping_size_and_mtime(blob: &Path, at: usize) {
    use std::os::unix::fs::PermissionsExt;
    let before = std::fs::metadata(blob).unwrap();
    std::fs::set_permissions(blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(blob).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(blob, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(blob).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    std::fs::set_permissions(blob, std::fs::Permissions::from_mode(0o444)).unwrap();
    let after = std::fs::metadata(blob).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
}

/// Every evaluation's `eval.json` digest, by label.
pub fn evaluations(store: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for e in walkdir::WalkDir::new(store.join("ac")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            if v["key_record"]["kind"] == "evaluate" {
                out.insert(
                    v["label"].as_str().unwrap().to_string(),
                    v["outputs"]["eval.json"]["digest"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    out
}

pub const TAMPERED: &str = r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 40, test_per_class: 20, image_size: 16, seed: 5}
orders:
  a: {numpy_seed: 1993}
settings:
  s2: {base: 2, increment: 2}
methods:
  ce: {preset: finetune, memory: {per_class: 5}}
  bsce: {extends: ce, bsce: true}
recipes:
  r: {epochs: EPOCHS, batch_size: 32, lr: 0.05, schedule: cosine}
experiments:
  e: {dataset: synth, orders: [a], settings: [s2], methods: [METHODS], recipe: r, network: tiny}
"#;

pub fn tampered(epochs: u32, methods: &str) -> String {
    TAMPERED
        .replace("EPOCHS", &epochs.to_string())
        .replace("METHODS", methods)
}

// ---- Remote caches ---------------------------------------------------------

pub const SHARED: &str = r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 30, test_per_class: 10, image_size: 12, seed: 3}
orders:
  a: {numpy_seed: 1993}
settings:
  s2: {base: 2, increment: 2}
methods:
  ce: {preset: finetune, memory: {per_class: 4}}
  bsce: {extends: ce, bsce: true}
recipes:
  r: {epochs: 2, batch_size: 16, lr: 0.05}
experiments:
  e: {dataset: synth, orders: [a], settings: [s2], methods: [ce, bsce], recipe: r, network: tiny}
tables:
  acc: {caption: "Synthetic", experiments: [e], columns: [setting], time_column: true}
"#;

/// Every action record of a remote directory has all its blobs there.
pub fn assert_remote_consistent(remote: &Path) -> usize {
    let mut records = 0;
    for e in std::fs::read_dir(remote.join("ac")).unwrap() {
        let path = e.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".tmp")
        {
            continue;
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (f, o) in v["outputs"].as_object().unwrap() {
            let d = o["digest"].as_str().unwrap();
            assert!(
                remote.join("cas").join(d).is_file(),
                "{}: output {f} ({d}) is not in the remote",
                v["label"]
            );
            assert!(
                o.get("stamp").is_none(),
                "a machine's stamp was shared: {o}"
            );
        }
        records += 1;
    }
    records
}

/// A new machine with the SHARED config pulls it from `url`: the project
/// and `cache pull --json`'s answer.
pub fn pull_shared_on_a_fresh_machine(url: &str) -> (Project, Value) {
    let b = Project::new();
    b.write("c.yaml", SHARED);
    let j = b
        .run(&["cache", "pull", "c.yaml", "--remote", url, "--json"])
        .ok()
        .json();
    (b, j)
}

pub fn table_of(p: &Project) -> String {
    std::fs::read_to_string(p.path("reports/out/c/tables/acc.md")).unwrap()
}

/// An nginx serving WebDAV PUT on 127.0.0.1 from a folder of its own, as a
/// Bazel-style HTTP cache (`/denied/` answers 403, `/portal/` a login page
/// for every path); killed when dropped. scripts/test-setup.sh installs
/// nginx.
pub struct Nginx {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start() -> Nginx {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx not found: scripts/test-setup.sh installs nginx-light (the HTTP remote tests need it)");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let conf = format!(
            "user root;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n  client_max_body_size 0;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {d}/data;\n\
             location / {{ dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw group:r all:r; }}\n\
             location /denied/ {{ return 403; }}\n\
             location /portal/ {{ default_type text/html; return 200 \"<!DOCTYPE html><html>Sign in</html>\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .args([
                "-p",
                &d.to_string(),
                "-c",
                &format!("{d}/nginx.conf"),
                "-g",
                "daemon off;",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed().as_secs() < 10,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Nginx { child, port, dir }
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cache", self.port)
    }
    /// A fast shutdown (SIGTERM): the master stops its workers too (a
    /// SIGKILL would leave them serving).
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An S3-compatible server (s3s-fs, which scripts/test-setup.sh installs under
/// $BSCE_CACHE/s3s-fs) on 127.0.0.1 with one bucket; killed when dropped.
pub struct S3Server {
    pub child: Child,
    pub port: u16,
    pub _dir: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> S3Server {
        let cache = std::env::var("BSCE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/bsce-pipe")
            });
        let bin = std::env::var("BSCE_S3S_FS")
            .map(PathBuf::from)
            .unwrap_or_else(|_| cache.join("s3s-fs/bin/s3s-fs"));
        assert!(
            bin.is_file(),
            "{} not found: scripts/test-setup.sh installs s3s-fs (the S3 remote tests need it)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lab")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "AKTEST", "--secret-key", "SKTEST"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed().as_secs() < 10, "s3s-fs did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        S3Server {
            child,
            port,
            _dir: dir,
        }
    }
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKTEST".into()),
            ("AWS_SECRET_ACCESS_KEY", "SKTEST".into()),
            ("AWS_REGION", "us-east-1".into()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The Slurm executor, against a real single-node cluster (munged, slurmctld,
// slurmd from Debian) that scripts/slurm-cluster.sh starts once per machine.

/// The cluster's SLURM_CONF, started if it is not up.
/// One Slurm test at a time: the test cluster is one node with the
/// machine's two CPUs, and the timing-sensitive tests (a requeued job, held
/// runs released at once) must not wait behind another test's jobs.
pub fn slurm_exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn slurm_cluster() -> String {
    static UP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    UP.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the test cluster did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

impl Project {
    /// `bsce-pipe ARGS` with the test cluster's SLURM_CONF.
    pub fn slurm(&self, args: &[&str]) -> Run {
        self.run_env(args, &[("SLURM_CONF", &slurm_cluster())])
    }
    /// [`Project::spawn`] on the test cluster.
    pub fn spawn_slurm(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .env("SLURM_CONF", slurm_cluster())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    pub fn slurm_run_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.store().join("slurm"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The jobs of a Slurm run folder: label -> (job id, the jobs it waited
/// for, its outcome file if it wrote one).
pub fn slurm_jobs(
    run_dir: &Path,
) -> std::collections::BTreeMap<String, (String, Vec<String>, Option<Value>)> {
    let run: Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("run.json")).unwrap()).unwrap();
    run["jobs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(label, j)| {
            let n = j["n"].as_u64().unwrap();
            let outcome = std::fs::read(run_dir.join(format!("outcomes/{n}.json")))
                .ok()
                .map(|b| serde_json::from_slice::<Value>(&b).unwrap());
            let after = j["after"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            (
                label.clone(),
                (j["id"].as_str().unwrap().to_string(), after, outcome),
            )
        })
        .collect()
}

/// The live (queued or running) jobs named `name`, by `squeue`.
pub fn live_slurm_jobs(name: &str) -> Vec<String> {
    let out = Command::new("squeue")
        .args(["--noheader", "--name", name, "--format=%i %T %r"])
        .env("SLURM_CONF", slurm_cluster())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

pub fn wait_until_no_live_jobs(name: &str) {
    let start = std::time::Instant::now();
    loop {
        let live = live_slurm_jobs(name);
        if live.is_empty() {
            return;
        }
        // A liveness bound, not a timing claim: two cores serve every
        // Slurm test's jobs, and tests run two at a time.
        assert!(
            start.elapsed().as_secs() < 240,
            "jobs of {name} still live (id, state, reason): {live:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Releases every job of the (held) runs `dirs`, then waits until none of
/// them is queued or running.
pub fn release_and_wait(dirs: &[PathBuf]) {
    let mut ids = vec![];
    for d in dirs {
        ids.extend(slurm_jobs(d).values().map(|(id, _, _)| id.to_string()));
    }
    let released = Command::new("scontrol")
        .args(["release", &ids.join(",")])
        .env("SLURM_CONF", slurm_cluster())
        .output()
        .unwrap();
    assert!(
        released.status.success(),
        "{}",
        String::from_utf8_lossy(&released.stderr)
    );
    for d in dirs {
        let run: Value =
            serde_json::from_slice(&std::fs::read(d.join("run.json")).unwrap()).unwrap();
        wait_until_no_live_jobs(&format!("bsce-{}", run["run_id"].as_str().unwrap()));
    }
}

/// Requeues the running job of `label` as a node failure does, and makes
/// it eligible at once (Slurm holds a requeued job back for a while).
pub fn requeue_running_job(p: &Project, label: &str) {
    let conf = slurm_cluster();
    let scontrol = |args: &[&str]| {
        Command::new("scontrol")
            .args(args)
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap()
    };
    let jobs = slurm_jobs(&p.slurm_run_dirs()[0]);
    let id = jobs[label].0.clone();
    let out = scontrol(&["requeue", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = std::time::Instant::now();
    loop {
        let show =
            String::from_utf8_lossy(&scontrol(&["-o", "show", "job", &id]).stdout).into_owned();
        // Slurm holds a requeued job back (BeginTime); it is started again
        // once no process of its first attempt is left and two seconds
        // have passed. slurmd revokes the first attempt's credential and
        // refuses any credential of the same job issued in the same second
        // ("Job credential revoked": the attempt fails to launch, FAILED
        // with no output), which Slurm's own requeue delay never allows.
        let first_attempt_gone = !scontrol(&["listpids", &id]).status.success();
        if show.contains("JobState=PENDING")
            && first_attempt_gone
            && start.elapsed() >= std::time::Duration::from_secs(2)
        {
            let out = scontrol(&["update", &format!("JobId={id}"), "StartTime=now"]);
            if out.status.success() {
                return;
            }
        }
        assert!(
            start.elapsed().as_secs() < 60,
            "job {id} was not requeued: {show}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
