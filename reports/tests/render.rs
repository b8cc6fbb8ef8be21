//! The default templates on a fixed summary frame: Markdown and LaTeX
//! snapshots (insta), and the LaTeX compiled by pdflatex.

use bsce_pipeline::config::{DEFAULT_LATEX_TEMPLATE, DEFAULT_MARKDOWN_TEMPLATE};
use bsce_pipeline::params::{Field, Metric, ReferenceValue, TableParams};
use bsce_reports::polars::prelude::*;
use bsce_reports::render::{cells, render_template, view};

/// Two settings x three methods; `podnet_bsce` has no run in `b50_s5`.
fn summary() -> DataFrame {
    let rows: &[(&str, &str, &str, bool, f64, f64, f64)] = &[
        ("b50_s10", "podnet", "podnet", false, 63.19, 1.16, 2.5),
        ("b50_s10", "podnet_bsce", "podnet", true, 64.02, 0.81, 2.0),
        ("b50_s10", "lucir", "lucir", false, 61.22, 0.69, 1.5),
        ("b50_s5", "podnet", "podnet", false, 64.83, 0.98, 1.25),
        ("b50_s5", "lucir", "lucir", false, 64.83, 0.91, 0.75),
    ];
    let n = rows.len();
    let s = |f: &dyn Fn(&(&str, &str, &str, bool, f64, f64, f64)) -> String| -> Vec<String> {
        rows.iter().map(f).collect()
    };
    let x = |f: &dyn Fn(&(&str, &str, &str, bool, f64, f64, f64)) -> f64| -> Vec<f64> {
        rows.iter().map(f).collect()
    };
    df!(
        "experiment" => vec!["cifar"; n],
        "dataset" => vec!["cifar100"; n],
        "setting" => s(&|r| r.0.to_string()),
        "method" => s(&|r| r.1.to_string()),
        "base_method" => s(&|r| r.2.to_string()),
        "bsce" => rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        "classifier" => vec!["cnn"; n],
        "runs" => vec![3u32; n],
        "orders" => vec![3u32; n],
        "seeds" => vec![1u32; n],
        "average_incremental_accuracy_mean" => x(&|r| r.4),
        "average_incremental_accuracy_std" => x(&|r| r.5),
        "train_hours_mean" => x(&|r| r.6),
        "train_hours_std" => vec![0.1; n],
    )
    .unwrap()
}

fn table() -> TableParams {
    TableParams {
        name: "cifar".into(),
        caption: "CIFAR-100, 50 base classes (CNN) & 20 exemplars_per_class".into(),
        label: "tab:cifar".into(),
        metric: Metric::AverageIncrementalAccuracy,
        classifier: bsce_pipeline::params::Classifier::Cnn,
        rows: vec![Field::Method],
        columns: vec![Field::Setting],
        time_column: true,
        reference: vec![
            ReferenceValue {
                row: "podnet".into(),
                column: "b50_s10".into(),
                mean: 63.19,
                std: Some(1.16),
            },
            ReferenceValue {
                row: "lucir".into(),
                column: "b50_s5".into(),
                mean: 64.01,
                std: None,
            },
        ],
        reference_source: Some("PODNet, Table 1".into()),
        row_labels: vec!["lucir".into(), "podnet".into(), "podnet_bsce".into()],
        column_labels: vec!["b50_s10".into(), "b50_s5".into()],
    }
}

fn rendered() -> (String, String) {
    let t = table();
    let v = view(&t, &cells(&t, &[summary()]).unwrap());
    (
        render_template("markdown", DEFAULT_MARKDOWN_TEMPLATE, &v).unwrap(),
        render_template("latex", DEFAULT_LATEX_TEMPLATE, &v).unwrap(),
    )
}

#[test]
fn markdown_table() {
    let (md, _) = rendered();
    // The best per column is bold (a tie bolds both), the missing cell
    // says so, and the published value and difference sit beside ours.
    assert!(md.contains("**64.02 ± 0.81**"), "{md}");
    assert!(
        md.contains("**64.83 ± 0.98**") && md.contains("**64.83 ± 0.91**"),
        "{md}"
    );
    assert!(md.contains("| missing |"), "{md}");
    assert!(md.contains("63.19 ± 1.16 | +0.00 |"), "{md}");
    insta::assert_snapshot!("markdown", md);
}

#[test]
fn latex_table() {
    let (_, tex) = rendered();
    assert!(
        tex.contains("\\toprule") && tex.contains("\\bottomrule"),
        "{tex}"
    );
    assert!(
        tex.contains("exemplars\\_per\\_class") && tex.contains("\\&"),
        "{tex}"
    );
    insta::assert_snapshot!("latex", tex);
}

/// The LaTeX compiles: pdflatex (texlive from Debian, installed by
/// scripts/setup.sh) on a minimal document with booktabs.
#[test]
fn latex_compiles_with_pdflatex() {
    let (_, tex) = rendered();
    let dir = tempfile::tempdir().unwrap();
    let doc = format!(
        "\\documentclass{{article}}\n\\usepackage[utf8]{{inputenc}}\n\\usepackage{{booktabs}}\n\\begin{{document}}\n{tex}\\end{{document}}\n"
    );
    std::fs::write(dir.path().join("t.tex"), doc).unwrap();
    let out = std::process::Command::new("pdflatex")
        .args(["-interaction=nonstopmode", "-halt-on-error", "t.tex"])
        .current_dir(dir.path())
        .output()
        .expect("pdflatex runs (scripts/setup.sh installs texlive-latex-base and texlive-latex-recommended)");
    assert!(
        out.status.success(),
        "pdflatex failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(dir.path().join("t.pdf").exists());
}

#[test]
fn a_template_error_names_the_template_and_line() {
    let t = table();
    let v = view(&t, &cells(&t, &[summary()]).unwrap());
    let e =
        render_template("tables.cifar markdown template", "ok\n{{ nope.x }}\n", &v).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("tables.cifar markdown template"), "{msg}");
    assert!(msg.contains("line 2") || msg.contains(":2"), "{msg}");
    // The undefined name, and what a template is given instead.
    assert!(msg.contains("the template uses `nope`"), "{msg}");
    assert!(
        msg.contains("it is given ") && msg.contains("rows") && msg.contains("table"),
        "{msg}"
    );
    // Once, not repeated by the alternate formatting.
    assert_eq!(msg.matches("undefined value").count(), 1, "{msg}");
}
