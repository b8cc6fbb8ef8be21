//! The report as researchers look at it: TensorBoard event files read back
//! by the `tensorboard` package's own reader (after a run, and live while
//! it trains), the training-loss curves and timelines, and `index.html`
//! opened from disk in headless Chromium.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::*;

/// Every scalar under `logdir`, as the tensorboard package reads it:
/// run folder -> tag -> [(step, value or None for NaN)].
type Scalars = BTreeMap<String, BTreeMap<String, Vec<(u64, Option<f64>)>>>;

fn tensorboard_read(logdir: &Path) -> Scalars {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tensorboard/dump.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(logdir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tensorboard's reader failed on {}: {}",
        logdir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut runs = Scalars::new();
    for (run, tags) in v.as_object().unwrap() {
        let r = runs.entry(run.clone()).or_default();
        for (tag, points) in tags.as_object().unwrap() {
            r.insert(
                tag.clone(),
                points
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64()))
                    .collect(),
            );
        }
    }
    runs
}

/// The train stages of a run, task by task: `train/<dataset>/<order>/<method>/seed<k>/<scope>/t<t>`.
fn train_labels(p: &Project, config: &str, run: &str) -> Vec<String> {
    let j = p.run(&["status", config, "--json"]).ok().json();
    let mut labels: Vec<(usize, String)> = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| {
            let l = n["label"].as_str()?;
            let rest = l.strip_prefix(&format!("train/{run}/"))?;
            let t = rest.rsplit_once("/t")?.1.parse().ok()?;
            Some((t, l.to_string()))
        })
        .collect();
    labels.sort();
    labels.into_iter().map(|(_, l)| l).collect()
}

/// The value a `log.json` entry gives `tag` (as the report names it).
fn expected(entry: &Value, tag: &str) -> Option<Option<f64>> {
    let (phase, name) = tag.split_once('/')?;
    let is_finetune = entry.get("finetune_epoch").is_some();
    if (phase == "finetune") != is_finetune {
        return None;
    }
    if name == "total" {
        let mut sum = Some(0.0);
        for (k, v) in entry.as_object().unwrap() {
            if [
                "epoch",
                "finetune_epoch",
                "lr",
                "seconds",
                "device",
                "images",
            ]
            .contains(&k.as_str())
            {
                continue;
            }
            sum = sum.and_then(|s| v.as_f64().map(|v| s + v));
        }
        return Some(sum);
    }
    entry.get(name).map(Value::as_f64)
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        _ => false,
    }
}

#[test]
fn the_reports_event_files_hold_every_term_of_every_epoch_of_every_task_of_log_json() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    p.write(
        "configs/quickstart.yaml",
        &std::fs::read_to_string(root.join("configs/quickstart.yaml")).unwrap(),
    );
    std::fs::create_dir(p.path(".git")).unwrap();
    p.run(&["run", "configs/quickstart.yaml", "--jobs", "2"])
        .ok();
    let out = p.path("reports/out/quickstart");
    let read = tensorboard_read(&out.join("tensorboard"));
    // One run folder per experiment x order x setting x method x seed.
    let j = p
        .run(&["results", "configs/quickstart.yaml", "--json"])
        .ok()
        .json();
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(read.len(), runs.len(), "{:?}", read.keys());
    let mut checked = 0;
    for r in runs {
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        let dir = format!(
            "{}/{}/{}/{}/seed{}",
            s("experiment"),
            s("order"),
            s("setting"),
            s("method"),
            r["seed"]
        );
        let scalars = read
            .get(&dir)
            .unwrap_or_else(|| panic!("no event files for {dir}: {:?}", read.keys()));
        // The quickstart's settings and their base tasks' scope; the base
        // task of a BSCE variant is its base method's stage (with equal
        // class counts BSCE is CE: one stage, one label).
        let base = match s("setting").as_str() {
            "b4_s3" => "b4",
            "b6_s4" => "b6",
            other => panic!("a quickstart setting this test does not know: {other}"),
        };
        let chain = |method: &str| {
            train_labels(
                &p,
                "configs/quickstart.yaml",
                &format!("{}/{}/{method}/seed{}", s("dataset"), s("order"), r["seed"]),
            )
        };
        let mut labels: Vec<String> = chain(&s("method"))
            .into_iter()
            .filter(|l| l.contains(&format!("/{}/t", s("setting"))))
            .collect();
        let seed_base = format!("/seed{}/{base}/t0", r["seed"]);
        let t0 = chain(&s("method"))
            .into_iter()
            .find(|l| l.ends_with(&seed_base))
            .or_else(|| {
                let prefix = format!("train/{}/{}/", s("dataset"), s("order"));
                let j = p
                    .run(&["status", "configs/quickstart.yaml", "--json"])
                    .ok()
                    .json();
                let all: Vec<String> = j["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|n| n["label"].as_str().map(String::from))
                    .collect();
                let mut shared = all
                    .into_iter()
                    .filter(|l| l.starts_with(&prefix) && l.ends_with(&seed_base));
                let one = shared.next();
                assert!(shared.next().is_none(), "{dir}: two base tasks");
                one
            })
            .unwrap_or_else(|| panic!("{dir}: no base task"));
        labels.insert(0, t0);
        assert!(!labels.is_empty(), "{dir}: no train stage found");
        // Training and fine-tuning epochs are counted apart.
        let (mut train_step, mut finetune_step) = (0u64, 0u64);
        for (t, label) in labels.iter().enumerate() {
            let log: Value = serde_json::from_slice(
                &std::fs::read(blob_of(&p.store(), label, "log.json")).unwrap(),
            )
            .unwrap();
            for entry in log.as_array().unwrap() {
                let (phase, step) = if entry.get("finetune_epoch").is_some() {
                    finetune_step += 1;
                    ("finetune", finetune_step - 1)
                } else {
                    train_step += 1;
                    ("train", train_step - 1)
                };
                let terms: Vec<String> = entry
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| {
                        !["epoch", "finetune_epoch", "device", "images"].contains(&k.as_str())
                    })
                    .map(|k| format!("{phase}/{k}"))
                    .chain([format!("{phase}/total")])
                    .collect();
                for tag in &terms {
                    let want = expected(entry, tag).unwrap();
                    let got = scalars
                        .get(tag)
                        .and_then(|pts| pts.iter().find(|(s, _)| *s == step))
                        .unwrap_or_else(|| panic!("{dir}: no {tag} at step {step} (task {t})"));
                    assert!(
                        close(got.1, want),
                        "{dir} {tag} step {step}: {:?} != {want:?}",
                        got.1
                    );
                    checked += 1;
                }
                if phase == "train" {
                    let task = scalars["task"].iter().find(|(s, _)| *s == step).unwrap().1;
                    assert_eq!(task, Some(t as f64), "{dir} step {step}");
                }
            }
        }
        // Nothing more than log.json's entries.
        assert_eq!(scalars["train/total"].len() as u64, train_step, "{dir}");
        assert_eq!(
            scalars.get("finetune/total").map_or(0, |v| v.len() as u64),
            finetune_step,
            "{dir}"
        );
    }
    assert!(checked > 500, "only {checked} values checked");
}

/// A config whose train stages take a few seconds each, so a reader finds
/// one half-way.
const LIVE: &str = r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 150, test_per_class: 5, image_size: 16, seed: 3}
orders:
  a: {numpy_seed: 1993}
settings:
  s: {base: 4, increment: 2}
methods:
  ce: {preset: finetune, memory: {per_class: 5}}
recipes:
  r: {epochs: 12, batch_size: 16, lr: 0.05}
experiments:
  e: {dataset: synth, orders: [a], settings: [s], methods: [ce], recipe: r, network: tiny}
"#;

/// Live event files of `dir`: (file, size).
fn live_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    if !dir.exists() {
        return Vec::new();
    }
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.file_name().to_string_lossy().contains("tfevents"))
        .map(|e| (e.path().to_path_buf(), e.metadata().unwrap().len()))
        .collect()
}

#[test]
fn tensorboard_reads_the_stages_in_flight_while_the_run_trains() {
    let p = Project::new();
    p.write("c.yaml", LIVE);
    let live = p.store().join("tensorboard/c");
    let mut child = p.spawn(&["run", "c.yaml", "--jobs", "1"]);
    let start = std::time::Instant::now();
    // Wait for a train stage that has written some of its 12 epochs, and
    // read it while the run goes on (the reader starts in a second or two,
    // in which more epochs land).
    let during = loop {
        assert!(start.elapsed().as_secs() < 300, "no live events appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before any live event was read"
        );
        let grown = live_files(&live).iter().any(|(_, len)| *len > 200);
        if grown {
            let read = tensorboard_read(&live);
            let running = child.try_wait().unwrap().is_none();
            break (read, running);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (read, running) = during;
    assert!(running, "the run had ended when its events were read");
    let run = read
        .get("e/a/s/ce/seed0")
        .unwrap_or_else(|| panic!("{:?}", read.keys()));
    // Read before the run's training ended: some of its 2 x 12 epochs.
    let steps = run["train/total"].len();
    assert!(
        (1..24).contains(&steps),
        "the stages in flight: some of the run's 24 epochs, not {steps}"
    );
    assert!(
        run.contains_key("train/ce") && run.contains_key("train/lr"),
        "{:?}",
        run.keys()
    );
    let status = child.wait_with_output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Once the run is done, the live files hold every epoch of both tasks
    // (4 base classes, then 2),
    // with the values the report's files (from log.json) hold.
    let after = tensorboard_read(&live);
    let report = tensorboard_read(&p.path("reports/out/c/tensorboard"));
    let (a, r) = (&after["e/a/s/ce/seed0"], &report["e/a/s/ce/seed0"]);
    assert_eq!(a["train/total"].len(), 12 * 2, "two tasks of 12 epochs");
    for tag in ["train/ce", "train/total", "train/lr", "task"] {
        assert_eq!(a[tag].len(), r[tag].len(), "{tag}");
        for (x, y) in a[tag].iter().zip(&r[tag]) {
            assert_eq!(x.0, y.0, "{tag}");
            assert!(
                close(x.1, y.1),
                "{tag} step {}: {:?} != {:?}",
                x.0,
                x.1,
                y.1
            );
        }
    }
}

/// The index page opened from disk in headless Chromium, with a probe
/// script added in front of the page's own: errors and console errors,
/// images that did not load, SVGs drawn, resources fetched, and a column
/// sorted by a click.
const PROBE: &str = r#"<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push("error: " + (e.message || (e.target && (e.target.src || e.target.href)) || "?"));
}, true);
(function () {
  var err = console.error;
  console.error = function () { window.__errors.push("console.error: " + Array.prototype.join.call(arguments, " ")); err.apply(console, arguments); };
})();
window.addEventListener("load", function () {
  setTimeout(function () {
    var broken = Array.prototype.filter.call(document.images, function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.src; });
    var svgs = document.querySelectorAll("main svg");
    var drawn = Array.prototype.filter.call(svgs, function (s) { var r = s.getBoundingClientRect(); return r.width > 100 && r.height > 100; }).length;
    var sorted = [];
    var th = document.querySelector("section.table table.sortable th:nth-child(2)");
    if (th) {
      th.click();
      var rows = th.closest("table").tBodies[0].rows;
      for (var i = 0; i < rows.length; i++) sorted.push(rows[i].cells[1].textContent.trim());
    }
    var res = performance.getEntriesByType("resource").map(function (r) { return r.name; });
    var pre = document.createElement("pre");
    pre.id = "__probe";
    pre.textContent = JSON.stringify({errors: window.__errors, broken: broken, svgs: svgs.length, drawn: drawn, sorted: sorted, resources: res, tables: document.querySelectorAll("section.table table").length});
    document.body.appendChild(pre);
  }, 50);
});
</script>"#;

fn chromium() -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=5000",
    ]);
    c
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// Opens `page` (written into `dir`, with the probe in front of its own
/// scripts) in headless Chromium and returns what the probe found.
fn probe(dir: &Path, page: &str) -> Value {
    let probed = page.replacen("<head>", &format!("<head>\n{PROBE}"), 1);
    let path = dir.join("probe.html");
    std::fs::write(&path, probed).unwrap();
    let dom = chromium()
        .arg("--dump-dom")
        .arg(format!("file://{}", path.display()))
        .output()
        .expect("chromium (scripts/test-setup.sh installs it)");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&dom.stdout);
    let at = text.find("<pre id=\"__probe\">").unwrap_or_else(|| {
        panic!(
            "the probe did not report:\n{}",
            String::from_utf8_lossy(&dom.stderr)
        )
    });
    let body = &text[at + "<pre id=\"__probe\">".len()..];
    serde_json::from_str(&unescape(&body[..body.find("</pre>").unwrap()])).unwrap()
}

#[test]
fn the_index_page_opens_from_disk_in_chromium_without_errors_or_network() {
    let p = Project::new();
    p.write("c.yaml", REPORTED);
    p.run(&["run", "c.yaml"]).ok();
    let out = p.path("reports/out/c");
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    // Self-contained: no fetch of anything, every figure inline.
    // (The SVGs' `xmlns` is a name, not a fetch.)
    for bad in ["href=\"http", "src=", "url(", "<link", "<img", "@import"] {
        assert!(!index.contains(bad), "index.html has {bad}");
    }
    assert!(index.contains("<strong>"), "the best cell in bold");
    assert!(
        index.contains("a made-up paper") || index.contains("published"),
        "the references"
    );
    // The probe sees what it is for: on a page with a missing image and a
    // console error, it reports both.
    let bad = probe(
        &out,
        "<html><head></head><body><img src=\"missing.png\"><script>console.error(\"boom\")</script></body></html>",
    );
    assert_eq!(bad["broken"].as_array().unwrap().len(), 1, "{bad}");
    assert!(bad["errors"].to_string().contains("boom"), "{bad}");
    let j = probe(&out, &index);
    assert_eq!(j["errors"], serde_json::json!([]), "{j}");
    assert_eq!(j["broken"], serde_json::json!([]), "{j}");
    assert_eq!(j["tables"], 2, "{j}");
    // Accuracy, loss and the timelines (the config's and the run's).
    assert!(j["svgs"].as_u64().unwrap() >= 4, "{j}");
    assert!(j["drawn"].as_u64().unwrap() >= 3, "{j}");
    let local = |r: &Value| r.as_str().unwrap().starts_with("file://");
    assert!(j["resources"].as_array().unwrap().iter().all(local), "{j}");
    // A click on a column's header sorts its rows by their numbers.
    let col: Vec<f64> = j["sorted"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str().unwrap().split_whitespace().next()?.parse().ok())
        .collect();
    assert!(col.len() >= 2, "{j}");
    assert!(col.windows(2).all(|w| w[0] <= w[1]), "{col:?}");
    // Durations sort by their unit, not their leading number (the page's
    // own script, on a table of training times).
    let script = &index[index.rfind("<script>").unwrap()..];
    let times = format!(
        "<html><head></head><body><main><section class=\"table\"><table class=\"sortable\">\
         <thead><tr><th>method</th><th>training time</th></tr></thead><tbody>\
         <tr><td>a</td><td>1.50 h</td></tr><tr><td>b</td><td>45.0 s</td></tr>\
         <tr><td>c</td><td>1 h 02 min</td></tr><tr><td>d</td><td>12.3 min</td></tr>\
         </tbody></table></section></main>{script}"
    );
    let t = probe(&out, &times);
    assert_eq!(
        t["sorted"],
        serde_json::json!(["45.0 s", "12.3 min", "1 h 02 min", "1.50 h"]),
        "{t}"
    );
    // A screenshot of the page, to look at (docs/report-page.png is one).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-page.png");
    let _ = std::fs::remove_file(&shot);
    let r = chromium()
        .args(["--hide-scrollbars", "--window-size=1280,2600"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", out.join("index.html").display()))
        .output()
        .unwrap();
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 20_000)
            .unwrap_or(false),
        "no screenshot: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn the_report_draws_loss_curves_and_timelines_and_the_index_links_them() {
    let p = Project::new();
    p.write("c.yaml", REPORTED);
    p.run(&["run", "c.yaml"]).ok();
    let out = p.path("reports/out/c");
    for f in [
        "curves/e/s2.svg",
        "curves/e/s2.png",
        "timeline.svg",
        "timeline.png",
        "data/e/epochs.csv",
        "data/e/epochs.parquet",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let per_run: Vec<_> = std::fs::read_dir(out.join("timeline")).unwrap().collect();
    assert_eq!(per_run.len(), 2, "one run of `run`: its SVG and PNG");
    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        md.contains("![e s2 training loss](curves/e/s2.png)"),
        "{md}"
    );
    assert!(md.contains("](timeline.png)"), "{md}");
    // The timeline's figures: every stage of the run, one CPU host.
    let svg = std::fs::read_to_string(out.join("timeline.svg")).unwrap();
    let stages = p.run(&["status", "c.yaml", "--json"]).ok().json()["nodes"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        svg.contains(&format!("{stages} stages over")),
        "{stages} stages"
    );
    assert!(svg.contains("cpu: ") && svg.contains("busy "), "per device");
    // The epochs frame: each training epoch's total is its terms' sum.
    let rows = read_csv(&out.join("data/e/epochs.csv"));
    let total: Vec<_> = rows.iter().filter(|r| r["quantity"] == "total").collect();
    // 2 orders x 2 methods x 3 tasks x 2 epochs.
    assert_eq!(total.len(), 24);
    for t in total {
        let terms: f64 = rows
            .iter()
            .filter(|r| {
                r["order"] == t["order"]
                    && r["method"] == t["method"]
                    && r["phase"] == t["phase"]
                    && r["step"] == t["step"]
                    && !["total", "lr", "seconds"].contains(&r["quantity"].as_str())
            })
            .map(|r| r["value"].parse::<f64>().unwrap())
            .sum();
        assert!((terms - t["value"].parse::<f64>().unwrap()).abs() < 1e-9);
    }
}

/// Two methods, one with class-balanced fine-tuning after each
/// incremental task and one without: three tasks of 2 training epochs.
const FINETUNED: &str = r#"
datasets:
  synth:
    synthetic: {classes: 6, train_per_class: 30, test_per_class: 10, image_size: 16, seed: 5}
orders:
  a: {numpy_seed: 1993}
settings:
  s2: {base: 2, increment: 2}
methods:
  plain: {preset: podnet, memory: {per_class: 5}, balanced_finetune: false}
  tuned: {extends: plain, balanced_finetune: true, finetune: {epochs: 1}}
recipes:
  r: {epochs: 2, batch_size: 32, lr: 0.05, schedule: cosine}
experiments:
  e: {dataset: synth, orders: [a], settings: [s2], methods: [plain, tuned], recipe: r, network: tiny}
"#;

#[test]
fn fine_tuning_epochs_do_not_shift_a_runs_training_curve() {
    let p = Project::new();
    p.write("c.yaml", FINETUNED);
    p.run(&["run", "c.yaml"]).ok();
    let steps = |s: &Scalars, run: &str, tag: &str| -> Vec<u64> {
        let (_, tags) = s
            .iter()
            .find(|(r, _)| r.contains(run))
            .unwrap_or_else(|| panic!("no run {run} in {:?}", s.keys()));
        tags.get(tag)
            .map_or(Vec::new(), |v| v.iter().map(|(s, _)| *s).collect())
    };
    let report = tensorboard_read(&p.path("reports/out/c/tensorboard"));
    let live = tensorboard_read(&p.store().join("tensorboard/c"));
    for s in [&report, &live] {
        // Both methods' training epochs are steps 0..6, task by task.
        for run in ["/plain/", "/tuned/"] {
            assert_eq!(
                steps(s, run, "train/total"),
                (0..6).collect::<Vec<_>>(),
                "{run}"
            );
            assert_eq!(steps(s, run, "task"), (0..6).collect::<Vec<_>>(), "{run}");
        }
        // Fine-tuning after tasks 1 and 2, one epoch each, on its own count.
        assert_eq!(steps(s, "/tuned/", "finetune/total"), vec![0, 1]);
        assert!(steps(s, "/plain/", "finetune/total").is_empty());
    }
    assert_eq!(
        report.values().collect::<Vec<_>>(),
        live.values().collect::<Vec<_>>()
    );
    // The epochs frame the loss figure draws from counts the same way.
    let rows = read_csv(&p.path("reports/out/c/data/e/epochs.csv"));
    for (method, phase, want) in [
        ("plain", "train", (0..6).collect::<Vec<u32>>()),
        ("tuned", "train", (0..6).collect()),
        ("tuned", "finetune", vec![0, 1]),
    ] {
        let got: Vec<u32> = rows
            .iter()
            .filter(|r| r["method"] == method && r["phase"] == phase && r["quantity"] == "total")
            .map(|r| r["step"].parse().unwrap())
            .collect();
        assert_eq!(got, want, "{method} {phase}");
    }
}

#[test]
fn cache_gc_removes_the_live_files_of_the_results_it_removes() {
    let p = Project::new();
    p.write("c.yaml", FINETUNED);
    p.run(&["run", "c.yaml"]).ok();
    let files = |run: &str| -> Vec<String> {
        let dir = p
            .store()
            .join("tensorboard/c/e/a/s2")
            .join(run)
            .join("seed0");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let (plain, tuned) = (files("plain"), files("tuned"));
    assert_eq!((plain.len(), tuned.len()), (3, 3), "{plain:?} {tuned:?}");
    // Keep only the plain method's results.
    p.write(
        "only_plain.yaml",
        &FINETUNED.replace("methods: [plain, tuned]", "methods: [plain]"),
    );
    let gc = p
        .run(&["cache", "gc", "--keep", "only_plain.yaml", "--json"])
        .ok()
        .json();
    // A file is named by its stage's seed: tuned's stages shared with plain
    // (none or its base task) keep theirs.
    let seed = |f: &String| f.rsplit('.').next().unwrap().to_string();
    let shared: Vec<&String> = tuned
        .iter()
        .filter(|f| plain.iter().any(|g| seed(g) == seed(f)))
        .collect();
    assert_eq!(files("plain"), plain);
    assert_eq!(files("tuned").len(), shared.len(), "{:?}", files("tuned"));
    assert_eq!(gc["removed_live_files"], (3 - shared.len()) as u64, "{gc}");
    // The kept results are all there.
    let kept = p.status("only_plain.yaml");
    assert!(
        kept.iter()
            .filter(|s| s.0.starts_with("train/"))
            .all(|s| s.1 == "cached"),
        "{kept:?}"
    );
}
