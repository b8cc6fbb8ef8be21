//! The `render` stage: a table declared in the config, from its
//! experiments' summary frames, through two minijinja templates (the
//! defaults are `reports/templates/table.md.j2` and `reports/templates/table.tex.j2`) to
//! `table.md` and `table.tex`.
//!
//! A cell is the mean +- population std (ddof 0) of the table's metric over
//! the runs of one row x column; the best mean of each column is bold; a
//! row x column with no complete run is `missing`, never a number. With
//! reference values, each column gains the published value and our
//! difference to it.

use std::collections::BTreeMap;

use bsce_pipeline::exec::job::{ChildReporter, StageJob};
use bsce_pipeline::params::{Field, Metric, RenderParams, TableParams};
use bsce_pipeline::registry::files;
use bsce_stages::{Result, StageError};
use polars::prelude::DataFrame;
use serde::Serialize;

use crate::columns as c;
use crate::frame::{floats, ints, read_parquet, strings};

/// One summary row: the numbers of one cell.
#[derive(Clone, Debug, PartialEq)]
pub struct CellValue {
    pub mean: f64,
    pub std: f64,
    pub runs: i64,
    pub orders: i64,
    pub seeds: i64,
    pub train_hours: f64,
}

/// The table as the templates see it.
#[derive(Debug, Serialize)]
pub struct TableView {
    pub table: TableInfo,
    pub row_header: String,
    pub columns: Vec<ColumnView>,
    pub rows: Vec<RowView>,
    pub reference: bool,
    pub time_column: bool,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct TableInfo {
    pub name: String,
    pub caption: String,
    pub label: String,
    pub metric: String,
    pub metric_title: String,
    pub classifier: String,
}

#[derive(Debug, Serialize)]
pub struct ColumnView {
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct RowView {
    pub label: String,
    pub cells: Vec<CellView>,
    /// Training time of the row (mean per run, summed over the columns);
    /// None when a cell is missing.
    pub time: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CellView {
    pub missing: bool,
    pub bold: bool,
    pub mean: Option<String>,
    pub std: Option<String>,
    pub runs: Option<i64>,
    pub reference: Option<String>,
    pub diff: Option<String>,
}

fn label(fields: &[Field], value: &dyn Fn(Field) -> String) -> String {
    fields
        .iter()
        .map(|&f| value(f))
        .collect::<Vec<_>>()
        .join("/")
}

/// Row label x column label -> the cell's numbers, from summary frames.
pub fn cells(
    t: &TableParams,
    summaries: &[DataFrame],
) -> Result<BTreeMap<(String, String), CellValue>> {
    let mut out = BTreeMap::new();
    let m = t.metric.column();
    for df in summaries {
        let col = |f: Field| strings(df, f.column());
        let (exp, ds, set, meth) = (
            col(Field::Experiment)?,
            col(Field::Dataset)?,
            col(Field::Setting)?,
            col(Field::Method)?,
        );
        let clf = strings(df, c::CLASSIFIER)?;
        let mean = floats(df, &c::summary_column(m, "mean"))?;
        let std = floats(df, &c::summary_column(m, "std"))?;
        let hours = floats(df, &c::summary_column(Metric::TrainHours.column(), "mean"))?;
        let (runs, orders, seeds) = (
            ints(df, c::RUNS)?,
            ints(df, c::ORDERS)?,
            ints(df, c::SEEDS)?,
        );
        for i in 0..df.height() {
            if clf[i] != t.classifier.name() {
                continue;
            }
            let value = |f: Field| match f {
                Field::Experiment => exp[i].clone(),
                Field::Dataset => ds[i].clone(),
                Field::Setting => set[i].clone(),
                Field::Method => meth[i].clone(),
            };
            let key = (label(&t.rows, &value), label(&t.columns, &value));
            if !t.row_labels.contains(&key.0) || !t.column_labels.contains(&key.1) {
                continue;
            }
            // A metric without a value (forgetting of a one-task run) is missing.
            let Some(mean) = mean[i] else { continue };
            let v = CellValue {
                mean,
                std: std[i].unwrap_or(0.0),
                runs: runs[i],
                orders: orders[i],
                seeds: seeds[i],
                train_hours: hours[i].unwrap_or(0.0),
            };
            if out.insert(key.clone(), v).is_some() {
                return Err(StageError::param(
                    format!("tables.{}", t.name),
                    format!(
                        "row {} x column {} gets numbers from more than one experiment, setting or method; \
                         add the field that tells them apart to `rows` or `columns`",
                        key.0, key.1
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn digits(metric: Metric) -> usize {
    match metric {
        Metric::TrainHours => 3,
        _ => 2,
    }
}

/// A duration in hours, as a person reads it.
pub fn duration(hours: f64) -> String {
    let s = hours * 3600.0;
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{hours:.2} h")
    }
}

/// The table's view: every cell formatted, bold and missing decided.
pub fn view(t: &TableParams, cells: &BTreeMap<(String, String), CellValue>) -> TableView {
    let d = digits(t.metric);
    let fmt = |x: f64| format!("{x:.d$}");
    let reference: BTreeMap<(&str, &str), (f64, Option<f64>)> = t
        .reference
        .iter()
        .map(|r| ((r.row.as_str(), r.column.as_str()), (r.mean, r.std)))
        .collect();
    // Best per column, compared as printed so that a tie shows as one.
    let best: BTreeMap<&str, String> = t
        .column_labels
        .iter()
        .filter_map(|c| {
            let vals = t
                .row_labels
                .iter()
                .filter_map(|r| cells.get(&(r.clone(), c.clone())).map(|v| v.mean));
            let b = if t.metric.higher_is_better() {
                vals.fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))
            } else {
                vals.fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))))
            };
            b.map(|b| (c.as_str(), fmt(b)))
        })
        .collect();
    let rows = t
        .row_labels
        .iter()
        .map(|r| {
            let cells_of_row: Vec<CellView> = t
                .column_labels
                .iter()
                .map(|c| {
                    let v = cells.get(&(r.clone(), c.clone()));
                    let refv = reference.get(&(r.as_str(), c.as_str()));
                    CellView {
                        missing: v.is_none(),
                        bold: v.is_some_and(|v| best.get(c.as_str()) == Some(&fmt(v.mean))),
                        mean: v.map(|v| fmt(v.mean)),
                        std: v.map(|v| fmt(v.std)),
                        runs: v.map(|v| v.runs),
                        reference: refv.map(|(m, s)| match s {
                            Some(s) => format!("{} ± {}", fmt(*m), fmt(*s)),
                            None => fmt(*m),
                        }),
                        diff: match (v, refv) {
                            (Some(v), Some((m, _))) => Some(format!("{:+.d$}", v.mean - m)),
                            _ => None,
                        },
                    }
                })
                .collect();
            let hours: Option<f64> = t
                .column_labels
                .iter()
                .map(|c| cells.get(&(r.clone(), c.clone())).map(|v| v.train_hours))
                .sum();
            RowView {
                label: r.clone(),
                cells: cells_of_row,
                time: if t.time_column {
                    hours.map(duration)
                } else {
                    None
                },
            }
        })
        .collect();
    TableView {
        table: TableInfo {
            name: t.name.clone(),
            caption: t.caption.clone(),
            label: t.label.clone(),
            metric: t.metric.column().to_string(),
            metric_title: t.metric.title().to_string(),
            classifier: t.classifier.name().to_string(),
        },
        row_header: t
            .rows
            .iter()
            .map(|f| f.column())
            .collect::<Vec<_>>()
            .join("/"),
        columns: t
            .column_labels
            .iter()
            .map(|c| ColumnView { label: c.clone() })
            .collect(),
        rows,
        reference: !t.reference.is_empty(),
        time_column: t.time_column,
        note: note(t, cells),
    }
}

/// The sentence under a table: metric, classifier, what mean and std are
/// over, where the published values come from, what missing means.
pub fn note(t: &TableParams, cells: &BTreeMap<(String, String), CellValue>) -> String {
    let span = |f: &dyn Fn(&CellValue) -> i64| -> String {
        let lo = cells.values().map(f).min().unwrap_or(0);
        let hi = cells.values().map(f).max().unwrap_or(0);
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    };
    let plural = |n: &str, w: &str| {
        if n == "1" {
            w.to_string()
        } else {
            format!("{w}s")
        }
    };
    let (o, s) = (span(&|v| v.orders), span(&|v| v.seeds));
    let mut note = format!(
        "{}, {} classifier: mean ± population std (ddof 0) over {o} class {} x {s} {}.",
        capitalise(t.metric.title()),
        t.classifier.name().to_uppercase(),
        plural(&o, "order"),
        plural(&s, "seed"),
    );
    if t.metric.higher_is_better() {
        note.push_str(" Best per column in bold.");
    } else {
        note.push_str(" Lowest per column in bold.");
    }
    if !t.reference.is_empty() {
        note.push_str(&format!(
            " Published: {}; diff = ours - published.",
            t.reference_source
                .as_deref()
                .unwrap_or("reference values of the config")
        ));
    }
    if t.time_column {
        note.push_str(" Training time: mean per run, summed over the columns.");
    }
    let expected = t.row_labels.len() * t.column_labels.len();
    if cells.len() < expected {
        note.push_str(&format!(
            " {} of {expected} cells are missing: no complete run in the store (`bsce-pipe report` lists them).",
            expected - cells.len()
        ));
    }
    note
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// LaTeX-escapes text.
pub fn latex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(ch);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '±' => out.push_str("$\\pm$"),
            _ => out.push(ch),
        }
    }
    out
}

/// Escapes what breaks a Markdown table cell.
pub fn markdown_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Renders one template over the view.
pub fn render_template(name: &str, source: &str, view: &TableView) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_filter("latex", |s: String| latex_escape(&s));
    env.add_filter("md", |s: String| markdown_escape(&s));
    let fail = |e: minijinja::Error| StageError::param(name.to_string(), format!("{e:#}"));
    env.add_template(name, source).map_err(fail)?;
    let template = env.get_template(name).map_err(fail)?;
    let mut text = template.render(view).map_err(|e| {
        if e.kind() != minijinja::ErrorKind::UndefinedError {
            return fail(e);
        }
        // minijinja says "undefined value" and where; the name is what a
        // template author needs, with what the template is given.
        let given: Vec<String> = match serde_json::to_value(view) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let mut unknown: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !given.contains(v))
            .collect();
        unknown.sort();
        let what = if unknown.is_empty() {
            "a field that is not there".to_string()
        } else {
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        StageError::param(
            name.to_string(),
            format!(
                "{e}: the template uses {what}; it is given {} (reports/README.md)",
                given.join(", ")
            ),
        )
    })?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

pub fn run(job: &StageJob, _reporter: &ChildReporter) -> Result<()> {
    let p: RenderParams = serde_json::from_value(job.params.clone())
        .map_err(|e| StageError::param("render", format!("bad stage params: {e}")))?;
    let mut summaries = Vec::new();
    for (name, dir) in &job.inputs {
        if name.starts_with("summary.") {
            summaries.push(read_parquet(&dir.join(files::SUMMARY_PARQUET))?);
        }
    }
    let view = view(&p.table, &cells(&p.table, &summaries)?);
    let t = &p.table.name;
    let md = render_template(
        &format!("tables.{t} markdown template"),
        &p.markdown_template,
        &view,
    )?;
    let tex = render_template(
        &format!("tables.{t} latex template"),
        &p.latex_template,
        &view,
    )?;
    let write = |file: &str, text: &str| {
        let path = job.out_dir.join(file);
        std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))
    };
    write(files::TABLE_MD, &md)?;
    write(files::TABLE_TEX, &tex)
}
