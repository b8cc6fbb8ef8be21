//! Reports: tables, plots and frames from the store, missing runs, file names, the README quickstart example.

use crate::support::*;

#[test]
fn a_run_ends_with_its_report_and_every_number_comes_from_the_tidy_frame() {
    let p = Project::new();
    p.write("c.yaml", REPORTED);
    let r = p.run(&["run", "c.yaml", "--json"]).ok();
    let ran = executed(&r.json());
    for l in [
        "aggregate/e",
        "plot/e/s2",
        "render/acc",
        "render/forgetting",
    ] {
        assert!(ran.contains(&l.to_string()), "{l} not in {ran:?}");
    }
    // The table is on stderr, and in the report folder with everything else.
    assert!(
        r.stderr.contains("**Synthetic, 2 base classes**"),
        "{}",
        r.stderr
    );
    let out = p.path("reports/out/c");
    for f in [
        "README.md",
        "tables/acc.md",
        "tables/acc.tex",
        "tables/forgetting.md",
        "plots/e/s2.svg",
        "plots/e/s2.png",
        "data/e/tidy.csv",
        "data/e/tidy.parquet",
        "data/e/groups.csv",
        "data/e/runs.csv",
        "data/e/summary.csv",
        "data/e/summary.parquet",
    ] {
        assert!(out.join(f).is_file(), "{f} missing from {}", out.display());
    }
    let png = std::fs::read(out.join("plots/e/s2.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let index = std::fs::read_to_string(out.join("README.md")).unwrap();
    for s in [
        "bsce-pipe 0.1.0",
        "sha256",
        "GPU-hours",
        "polars",
        "tch",
        "None: every run",
    ] {
        assert!(index.contains(s), "{s} not in the index:\n{index}");
    }

    // Every number of the tables, recomputed here from the tidy CSV alone.
    let tidy = read_csv(&out.join("data/e/tidy.csv"));
    let groups = read_csv(&out.join("data/e/groups.csv"));
    let num = |r: &std::collections::BTreeMap<String, String>, k: &str| -> f64 {
        r[k].parse().unwrap_or_else(|_| panic!("{k} = {:?}", r[k]))
    };
    let run_key = |r: &std::collections::BTreeMap<String, String>| {
        format!("{}|{}|{}", r["method"], r["order"], r["seed"])
    };
    let md = std::fs::read_to_string(out.join("tables/acc.md")).unwrap();
    let rows = markdown_rows(&md);
    assert_eq!(rows.len(), 2, "{md}");
    for row in &rows {
        let method = row[0].as_str();
        let mut per_run: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        let mut seconds: std::collections::BTreeMap<String, f64> = Default::default();
        for r in tidy
            .iter()
            .filter(|r| r["method"] == method && r["classifier"] == "cnn")
        {
            per_run.entry(run_key(r)).or_default().push(num(r, "top1"));
            *seconds.entry(run_key(r)).or_default() += num(r, "train_seconds");
        }
        assert_eq!(per_run.len(), 2, "two orders of {method}");
        let aia: Vec<f64> = per_run
            .values()
            .map(|v| v.iter().sum::<f64>() / v.len() as f64)
            .collect();
        let (m, s) = mean_std(&aia);
        assert_eq!(row[1], format!("{m:.2} ± {s:.2}"), "{method} in\n{md}");
        if method == "ce" {
            assert_eq!(row[2], "50.00 ± 1.00");
            assert_eq!(row[3], format!("{:+.2}", m - 50.0));
        } else {
            assert_eq!((row[2].as_str(), row[3].as_str()), ("", ""));
        }
        let mean_secs = seconds.values().sum::<f64>() / seconds.len() as f64;
        let time = &row[4];
        assert!(time.ends_with(" s"), "{time}");
        let shown: f64 = time.trim_end_matches(" s").parse().unwrap();
        assert!((shown - mean_secs).abs() <= 0.051, "{time} vs {mean_secs}");
    }
    assert!(
        md.contains("population std (ddof 0) over 2 class orders x 1 seed"),
        "{md}"
    );
    // Forgetting (NME): per old group, best before the last task minus after it.
    let md = std::fs::read_to_string(out.join("tables/forgetting.md")).unwrap();
    for row in markdown_rows(&md) {
        let method = row[0].as_str();
        let mut acc: std::collections::BTreeMap<String, Vec<(u32, u32, f64)>> = Default::default();
        for r in groups
            .iter()
            .filter(|r| r["method"] == method && r["classifier"] == "nme")
        {
            acc.entry(run_key(r)).or_default().push((
                r["task"].parse().unwrap(),
                r["group"].parse().unwrap(),
                num(r, "top1"),
            ));
        }
        let f: Vec<f64> = acc
            .values()
            .map(|v| {
                let last = v.iter().map(|x| x.0).max().unwrap();
                let per_group: Vec<f64> = (0..last)
                    .map(|g| {
                        let best = v
                            .iter()
                            .filter(|x| x.1 == g && x.0 < last)
                            .map(|x| x.2)
                            .fold(f64::MIN, f64::max);
                        let fin = v.iter().find(|x| x.1 == g && x.0 == last).unwrap().2;
                        best - fin
                    })
                    .collect();
                per_group.iter().sum::<f64>() / per_group.len() as f64
            })
            .collect();
        let (m, s) = mean_std(&f);
        assert_eq!(row[1], format!("{m:.2} ± {s:.2}"), "{method} in\n{md}");
    }

    // `report` from the store: nothing to run, under a second.
    let t = std::time::Instant::now();
    let j = p.run(&["report", "c.yaml", "--json"]).ok().json();
    let took = t.elapsed();
    assert_eq!(j["executed"], 0, "{j}");
    assert!(
        took < std::time::Duration::from_secs(1),
        "report took {took:?}"
    );

    // A template edit reruns rendering only; so does a metric or caption
    // edit (the aggregate computes every metric).
    p.write(
        "my.md.j2",
        "# {{ table.caption }}\n{% for r in rows %}{{ r.label }}\n{% endfor %}",
    );
    let with_template = REPORTED.replace(
        "    reference_source: \"a made-up paper\"\n",
        "    reference_source: \"a made-up paper\"\n    templates: {markdown: my.md.j2}\n",
    );
    p.write("c.yaml", &with_template);
    let j = p.run(&["report", "c.yaml", "--json"]).ok().json();
    assert_eq!(
        j["executed_labels"],
        serde_json::json!(["render/acc"]),
        "{j}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tables/acc.md")).unwrap(),
        "# Synthetic, 2 base classes\nce\nbsce\n"
    );
    p.write(
        "c.yaml",
        &with_template.replace("metric: average_forgetting", "metric: last_accuracy"),
    );
    let j = p.run(&["report", "c.yaml", "--json"]).ok().json();
    assert_eq!(
        j["executed_labels"],
        serde_json::json!(["render/forgetting"]),
        "{j}"
    );
    // A run with nothing new trains nothing and rewrites the same report.
    let j = p.run(&["run", "c.yaml", "--json"]).ok().json();
    assert_eq!(j["executed"], 0, "{j}");
}

/// Issue 23 (L5's leftover): a render stage that fails is shown once. The
/// report written at the end of the run does not try it again, and a
/// later `report` says it failed on the same inputs without rerunning it.
#[test]
fn a_failing_template_is_one_failed_line_and_is_not_retried_on_the_same_inputs() {
    let p = Project::new();
    p.write("my.md.j2", "# {{ table.caption }} {{ nosuch.field }}\n");
    p.write(
        "c.yaml",
        &REPORTED.replace(
            "    reference_source: \"a made-up paper\"\n",
            "    reference_source: \"a made-up paper\"\n    templates: {markdown: my.md.j2}\n",
        ),
    );
    // A template is the config's input: exit 2 from `run` and `report`.
    let r = p.run(&["run", "c.yaml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let failed: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("FAILED   render/acc"))
        .collect();
    assert_eq!(failed.len(), 1, "{}", r.stderr);
    assert!(failed[0].contains("nosuch"), "{}", failed[0]);
    let r = p.run(&["report", "c.yaml", "--json"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["executed"], 0, "not rendered again: {j}");
    let again: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("FAILED   render/acc"))
        .collect();
    assert_eq!(again.len(), 1, "{}", r.stderr);
    assert!(
        again[0].contains("failed on the same inputs last time; not run again"),
        "{}",
        again[0]
    );
    // Fixed, it renders.
    p.write("my.md.j2", "# {{ table.caption }}\n");
    let j = p.run(&["report", "c.yaml", "--json"]).ok().json();
    assert_eq!(
        j["executed_labels"],
        serde_json::json!(["render/acc"]),
        "{j}"
    );
}

#[test]
fn report_lists_missing_runs_and_never_trains() {
    let p = Project::new();
    p.write("c.yaml", REPORTED);
    p.run(&["run", "c.yaml"]).ok();
    // A third order: its runs are not in the store.
    let more = REPORTED
        .replace(
            "  b: {numpy_seed: 7}\n",
            "  b: {numpy_seed: 7}\n  c: {numpy_seed: 3}\n",
        )
        .replace("orders: [a, b]", "orders: [a, b, c]");
    p.write("c.yaml", &more);
    let r = p.run(&["report", "c.yaml", "--json"]).ok();
    let j = r.json();
    for l in report_executed(&j) {
        assert!(
            ["aggregate/", "plot/", "render/"]
                .iter()
                .any(|k| l.starts_with(k)),
            "report ran {l}"
        );
    }
    let missing = j["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 2, "{j}");
    assert!(
        missing
            .iter()
            .all(|m| m["run"].as_str().unwrap().contains("/c/")),
        "{j}"
    );
    assert_eq!(missing[0]["tasks"], serde_json::json!([0, 1, 2]));
    let index = std::fs::read_to_string(p.path("reports/out/c/README.md")).unwrap();
    assert!(
        index.contains("e/c/s2/ce/seed0: tasks t0, t1, t2"),
        "{index}"
    );
    assert!(index.contains("c.yaml` computes them"), "{index}");
    // The table is made of the two complete orders.
    let md = std::fs::read_to_string(p.path("reports/out/c/tables/acc.md")).unwrap();
    assert!(md.contains("over 2 class orders"), "{md}");
    let text = p.run(&["report", "c.yaml"]).ok();
    assert!(
        text.stderr
            .contains("2 runs are not (completely) in the store"),
        "{}",
        text.stderr
    );
    // `results` reads the same frames.
    let res = p.run(&["results", "c.yaml", "--json"]).ok().json();
    assert_eq!(res["runs"].as_array().unwrap().len(), 4, "{res}");
    assert_eq!(res["missing"].as_array().unwrap().len(), 2, "{res}");
}

#[test]
fn report_files_of_names_that_differ_only_in_odd_characters_never_collide() {
    // Two settings whose names differ only where an ASCII-only file name
    // would put `_` (and a third that is that `_` name), one base class
    // apart so their curves differ: three plot files, each under its own
    // caption in the index.
    let p = Project::new();
    let cfg = REPORTED
        .replace(
            "  s2: {base: 2, increment: 2}\n",
            "  \"b2%\": {base: 2, increment: 2}\n  \"b2&\": {base: 3, increment: 3}\n  b2_: {base: 4, increment: 2}\n",
        )
        .replace("settings: [s2]", "settings: [\"b2%\", \"b2&\", b2_]")
        .replace("orders: [a, b]", "orders: [a]")
        .replace("reference: {ce: {s2: \"50.0 +- 1.0\"}}", "reference: {ce: {b2_: \"50.0 +- 1.0\"}}");
    p.write("c.yaml", &cfg);
    p.run(&["run", "c.yaml"]).ok();
    let out = p.path("reports/out/c");
    let svgs: Vec<Vec<u8>> = ["plots/e/b2~25.svg", "plots/e/b2~26.svg", "plots/e/b2_.svg"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
        .collect();
    assert_ne!(svgs[0], svgs[1]);
    assert_ne!(svgs[0], svgs[2]);
    assert_ne!(svgs[1], svgs[2]);
    let index = std::fs::read_to_string(out.join("README.md")).unwrap();
    for (caption, file) in [
        ("e b2%", "plots/e/b2~25.png"),
        ("e b2&", "plots/e/b2~26.png"),
        ("e b2_", "plots/e/b2_.png"),
    ] {
        assert!(
            index.contains(&format!("![{caption}]({file})")),
            "{caption} is not shown with {file}:\n{index}"
        );
    }
    // Names that differ only in letter case would be one file on macOS:
    // refused with both names, not one hiding the other.
    let p = Project::new();
    p.write(
        "c.yaml",
        &REPORTED
            .replace(
                "  s2: {base: 2, increment: 2}\n",
                "  s2: {base: 2, increment: 2}\n  S2: {base: 3, increment: 3}\n",
            )
            .replace("settings: [s2]", "settings: [s2, S2]")
            .replace("orders: [a, b]", "orders: [a]"),
    );
    let r = p.run(&["run", "c.yaml"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("plots/e/S2.")
            && r.stderr.contains("plots/e/s2.")
            && r.stderr.contains("letter case"),
        "{}",
        r.stderr
    );
}

/// The README's quickstart example is what the quickstart prints: its
/// stage counts, its table (every accuracy cell, bold included; the
/// training-time column is wall time and left out) and its report's file
/// count. A figure edited in the README, or moved by a change that did not
/// update it, fails here.
#[test]
fn the_readme_quickstart_example_is_what_the_quickstart_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("$ target/bsce-pipe run configs/quickstart.yaml\n")
        .expect("the README shows the quickstart");
    let example = &readme[start..start + readme[start..].find("\n```").unwrap()];
    let p = Project::new();
    p.write(
        "configs/quickstart.yaml",
        &std::fs::read_to_string(root.join("configs/quickstart.yaml")).unwrap(),
    );
    std::fs::create_dir(p.path(".git")).unwrap();
    let r = p
        .run(&["run", "configs/quickstart.yaml", "--jobs", "2"])
        .ok();
    // "77 executed, 0 from cache, 0 failed, 0 skipped in ..."
    let counts = |text: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.contains(" executed, "))
            .unwrap_or_else(|| panic!("no summary line in:\n{text}"));
        line[..line.find(" in ").unwrap()].to_string()
    };
    assert_eq!(counts(example), counts(&r.stderr), "README:\n{example}");
    // The table: caption, header and every row but its time column.
    let table = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| {
                !l.starts_with("**Synthetic 10 classes: average incremental accuracy (CNN)")
            })
            .take_while(|l| !l.starts_with("Average incremental accuracy"))
            .filter(|l| !l.is_empty())
            .map(|l| {
                match l
                    .strip_suffix(" |")
                    .and_then(|x| x.rfind(" | ").map(|i| &x[..i]))
                {
                    Some(cells) if l.starts_with("| ce ") || l.starts_with("| bsce ") => {
                        cells.to_string()
                    }
                    _ => l.to_string(),
                }
            })
            .collect()
    };
    let ours = table(&r.stderr);
    assert_eq!(ours.len(), 5, "{}", r.stderr);
    assert_eq!(
        table(example),
        ours,
        "the README's quickstart table is stale"
    );
    // "report: .../reports/out/quickstart/README.md (19 files)"
    let files = |text: &str| -> String {
        let l = text.lines().find(|l| l.starts_with("report: ")).unwrap();
        l[l.rfind(" (").unwrap()..].to_string()
    };
    assert_eq!(files(example), files(&r.stderr));
}

/// The README's Commands table against the binary: every command it lists
/// exists, and every `--flag` it shows for a command is in that command's
/// `--help`. A flag renamed or dropped in the code, or invented in the
/// README, fails here.
#[test]
fn every_command_and_flag_in_the_readme_is_in_the_binarys_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme.find("\n## Commands\n").expect("a Commands section");
    let end = start + readme[start..].find("\n## Config reference").unwrap();
    let p = Project::new();
    let mut checked = 0;
    for row in readme[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cell = &row[3..row[3..].find('`').unwrap() + 3];
        // The command: its leading lower-case words (`cache gc`, `order show`).
        let words: Vec<&str> = cell
            .split_whitespace()
            .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase()))
            .collect();
        assert!(!words.is_empty(), "no command in {row}");
        let mut args = words.clone();
        args.push("--help");
        let help = p.run(&args);
        assert_eq!(help.code, 0, "{cell}: {}", help.stderr);
        let flags: Vec<&str> = row
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|t| t.starts_with("--") && t.len() > 2)
            .collect();
        for flag in flags {
            assert!(
                help.stdout.contains(flag),
                "README row `{cell}` shows {flag}, which `{}` does not list",
                args.join(" ")
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} flags found in the README's table"
    );
}

/// A report written to a disk that fills up fails with the cause and
/// leaves no temporary file behind (`.<name>.tmp-<pid>`).
#[test]
fn a_report_that_runs_out_of_disk_leaves_no_temporary_file() {
    let p = Project::new();
    p.write("c.yaml", SHARED);
    p.run(&["run", "c.yaml"]).ok();
    let Some((mnt, _guard)) = small_tmpfs(&p, "16k") else {
        return;
    };
    let out = mnt.join("report");
    let r = p.run(&["report", "c.yaml", "--out", out.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    let leftovers: Vec<String> = walkdir::WalkDir::new(&mnt)
        .into_iter()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
