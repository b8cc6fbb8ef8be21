//! `index.html`: the report as one self-contained page, beside the
//! Markdown index. Everything is inline (the plots, curves and timelines as
//! SVG, the CSS, a few lines of JavaScript that sort a table by the column
//! clicked): it opens from disk, sent by mail, with no network. Drawn from
//! `templates/index.html.j2` (minijinja, HTML auto-escaping) over the same
//! stage outputs as the Markdown index.

use std::path::Path;

use anyhow::{Context, Result};
use bsce_pipeline::catalog::StageCatalog;
use bsce_pipeline::config::Config;
use bsce_pipeline::digest::Digest;
use bsce_pipeline::exec::{NodeStatus, RunContext};
use bsce_pipeline::plan::Plan;
use serde::Serialize;

use crate::report::{by_host, file_name, MissingRun, TimelineFigure};

const TEMPLATE: &str = include_str!("../templates/index.html.j2");

/// A rendered table of the report.
pub struct Table {
    pub name: String,
    /// Its file name (`tables/<file>.md|tex`).
    pub file: String,
    pub html: String,
}

pub struct PageInput<'a> {
    pub cfg: &'a Config,
    pub full: &'a Plan,
    pub full_status: &'a [NodeStatus],
    /// The report's plan (its plots).
    pub plan: &'a Plan,
    pub tables: &'a [Table],
    pub missing: &'a [MissingRun],
    pub timelines: &'a [TimelineFigure],
    pub ctx: &'a RunContext,
    pub catalog: &'a dyn StageCatalog,
    /// The report folder, where the figures were written.
    pub out: &'a Path,
    /// The files this report wrote there (relative paths): a figure from an
    /// earlier report that a failed stage left behind is not shown.
    pub written: &'a [String],
}

#[derive(Serialize)]
struct View {
    name: String,
    version: String,
    config: String,
    config_sha256: String,
    tables: Vec<TableView>,
    plots: Vec<Figure>,
    curves: Vec<Figure>,
    timelines: Vec<Figure>,
    data: Vec<DataView>,
    missing: Vec<MissingView>,
    hosts: Vec<HostView>,
    gpu_hours: String,
    cpu_hours: String,
    libraries: String,
}

#[derive(Serialize)]
struct TableView {
    name: String,
    file: String,
    html: String,
}

#[derive(Serialize)]
struct Figure {
    title: String,
    /// The SVG, inline.
    svg: String,
    /// Its files in the report folder, without extension.
    file: String,
    lines: Vec<String>,
}

#[derive(Serialize)]
struct DataView {
    experiment: String,
    folder: String,
}

#[derive(Serialize)]
struct MissingView {
    run: String,
    tasks: String,
}

#[derive(Serialize)]
struct HostView {
    host: String,
    device: String,
    stages: usize,
    hours: String,
    first: String,
    last: String,
}

/// An SVG file as inline markup: from its `<svg` on (no XML declaration).
fn inline_svg(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let start = text.find("<svg").unwrap_or(0);
    Ok(text[start..].to_string())
}

/// The page.
pub fn page(p: &PageInput<'_>) -> Result<String> {
    let figure = |file: String, title: String, lines: Vec<String>| -> Result<Figure> {
        Ok(Figure {
            svg: inline_svg(&p.out.join(format!("{file}.svg")))?,
            title,
            file,
            lines,
        })
    };
    let figures = |folder: &str, what: &str| -> Result<Vec<Figure>> {
        crate::report::drawn(&p.plan.plots, folder, p.written)
            .into_iter()
            .map(|(exp, setting, f)| figure(f, format!("{exp} {setting}{what}"), vec![]))
            .collect()
    };
    let plots = figures("plots", "")?;
    let curves = figures("curves", ": training loss")?;
    let timelines = p
        .timelines
        .iter()
        .map(|t| figure(t.file.clone(), t.title.clone(), t.lines.clone()))
        .collect::<Result<Vec<_>>>()?;
    let hosts = by_host(p.full, p.full_status);
    let mut libs = std::collections::BTreeMap::new();
    for k in bsce_pipeline::catalog::StageKind::ALL {
        libs.extend(p.catalog.libraries(k));
    }
    let view = View {
        name: p
            .cfg
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        version: p.ctx.long_version(),
        config: p.cfg.file.display().to_string(),
        config_sha256: std::fs::read(&p.cfg.file)
            .map(|b| Digest::of_bytes(&b).to_hex())
            .unwrap_or_else(|_| "unreadable".into()),
        tables: p
            .tables
            .iter()
            .map(|t| TableView {
                name: t.name.clone(),
                file: t.file.clone(),
                html: t.html.clone(),
            })
            .collect(),
        plots,
        curves,
        timelines,
        data: p
            .plan
            .aggregates
            .iter()
            .map(|(exp, _)| DataView {
                experiment: exp.clone(),
                folder: format!("data/{}", file_name(exp)),
            })
            .collect(),
        missing: p
            .missing
            .iter()
            .map(|m| MissingView {
                run: m.run.clone(),
                tasks: m
                    .tasks
                    .iter()
                    .map(|t| format!("t{t}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .collect(),
        hosts: hosts
            .rows
            .iter()
            .map(|h| HostView {
                host: h.host.clone(),
                device: h.device.clone(),
                stages: h.stages,
                hours: format!("{:.3}", h.hours),
                first: h.first.clone(),
                last: h.last.clone(),
            })
            .collect(),
        gpu_hours: format!("{:.3}", hosts.gpu_hours),
        cpu_hours: format!("{:.3}", hosts.cpu_hours),
        libraries: libs
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("index.html", TEMPLATE)
        .context("the built-in index.html template")?;
    let text = env
        .get_template("index.html")
        .and_then(|t| t.render(&view))
        .context("rendering index.html")?;
    Ok(text)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// Inline Markdown of a table cell or paragraph: escaped, then `**bold**`,
/// `*italic*` and `` `code` ``; `\|` is a `|`; a lone `*` stays itself.
fn inline(md: &str) -> String {
    let text = escape(&md.replace("\\|", "|"));
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    let (mut bold, mut italic, mut code) = (false, false, false);
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("**") && !code {
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
            rest = &rest[2..];
            continue;
        }
        match c {
            '`' => {
                out.push_str(if code { "</code>" } else { "<code>" });
                code = !code;
            }
            // A `*` opens italics right before a letter or digit, with a
            // closing `*` later (`**` apart); otherwise it is itself
            // (`LUCIR*`, `LUCIR*,`: a footnote mark).
            '*' if !code => {
                let after = &rest[1..];
                let opens = after.chars().next().is_some_and(char::is_alphanumeric)
                    && after.replace("**", "").contains('*');
                if italic {
                    out.push_str("</em>");
                    italic = false;
                } else if opens {
                    out.push_str("<em>");
                    italic = true;
                } else {
                    out.push('*');
                }
            }
            _ => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    // Unbalanced markers close where the text ends.
    for (open, close) in [(code, "</code>"), (italic, "</em>"), (bold, "</strong>")] {
        if open {
            out.push_str(close);
        }
    }
    out
}

/// Splits a pipe-table row into its cells (`\|` stays inside a cell).
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let line = line.strip_prefix('|').unwrap_or(line);
    let line = line.strip_suffix('|').unwrap_or(line);
    let mut out = vec![String::new()];
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().expect("one").push_str("\\|");
                chars.next();
            }
            '|' => out.push(String::new()),
            _ => out.last_mut().expect("one").push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

fn is_rule(line: &str) -> bool {
    let c = cells(line);
    !c.is_empty()
        && c.iter().all(|c| {
            let c = c.trim_matches(':');
            !c.is_empty() && c.chars().all(|ch| ch == '-')
        })
}

/// A rendered table's Markdown (the render stage's `table.md`, from the
/// built-in or a config's template) as HTML: pipe tables become `<table>`
/// (right-aligned where the rule says `---:`), other lines paragraphs.
pub fn markdown_to_html(md: &str) -> String {
    let lines: Vec<&str> = md.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let table =
            line.trim_start().starts_with('|') && lines.get(i + 1).is_some_and(|l| is_rule(l));
        if table {
            let head = cells(line);
            let align: Vec<&str> = cells(lines[i + 1])
                .iter()
                .map(|c| if c.ends_with(':') { "right" } else { "left" })
                .collect();
            let al = |j: usize| align.get(j).copied().unwrap_or("left");
            // One row: each cell aligned as its column's rule says.
            let row = |out: &mut String, cells: &[String], tag: &str, extra: &str| {
                out.push_str("<tr>");
                for (j, c) in cells.iter().enumerate() {
                    out.push_str(&format!(
                        "<{tag} style=\"text-align:{}\"{extra}>{}</{tag}>",
                        al(j),
                        inline(c)
                    ));
                }
                out.push_str("</tr>");
            };
            out.push_str("<table class=\"sortable\">\n<thead>");
            row(&mut out, &head, "th", " title=\"sort by this column\"");
            out.push_str("</thead>\n<tbody>\n");
            i += 2;
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                row(&mut out, &cells(lines[i]), "td", "");
                out.push('\n');
                i += 1;
            }
            out.push_str("</tbody></table>\n");
            continue;
        }
        if !line.trim().is_empty() {
            out.push_str(&format!("<p>{}</p>\n", inline(line.trim())));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_table_becomes_an_html_table_with_bold_and_alignment() {
        let md = "**Table 1: CIFAR-100 <b>**\n\n| method | b50 |\n|:---|---:|\n| lucir \\| x | **64.1 ± 0.2** |\n| bsce | 63.0 ± 0.3 |\n\nA *note* with `code`.\n";
        let html = markdown_to_html(md);
        assert!(
            html.contains("<p><strong>Table 1: CIFAR-100 &lt;b&gt;</strong></p>"),
            "{html}"
        );
        assert!(
            html.contains("<th style=\"text-align:right\" title=\"sort by this column\">b50</th>"),
            "{html}"
        );
        assert!(
            html.contains("<td style=\"text-align:left\">lucir | x</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td style=\"text-align:right\"><strong>64.1 ± 0.2</strong></td>"),
            "{html}"
        );
        assert_eq!(html.matches("<tr>").count(), 3, "{html}");
        assert!(
            html.contains("<p>A <em>note</em> with <code>code</code>.</p>"),
            "{html}"
        );
    }

    #[test]
    fn a_lone_asterisk_is_a_footnote_mark_not_italics() {
        assert_eq!(inline("LUCIR*"), "LUCIR*");
        assert_eq!(inline("LUCIR* and PODNet*"), "LUCIR* and PODNet*");
        assert_eq!(inline("LUCIR*, PODNet*"), "LUCIR*, PODNet*");
        assert_eq!(inline("a * b"), "a * b");
        assert_eq!(inline("*x* and y*"), "<em>x</em> and y*");
        assert_eq!(
            inline("**best *of* all**"),
            "<strong>best <em>of</em> all</strong>"
        );
    }

    #[test]
    fn text_that_is_not_a_table_stays_text_and_is_escaped() {
        let html = markdown_to_html("| not a table\n<script>alert(1)</script>\n");
        assert!(!html.contains("<table"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}
