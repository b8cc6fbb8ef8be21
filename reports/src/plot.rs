//! The `plot` stage: top-1 accuracy against the number of classes seen for
//! one dataset x setting of an experiment, one line per method (mean over
//! orders and seeds) with a band of +- the population std, a BSCE variant
//! dashed in its base method's colour (`plot.svg|png`); and in the same
//! convention the training loss (`total`, the sum of the loss terms) of
//! each method at every epoch of every task in turn (`loss.svg|png`, from
//! the epochs frame). Written as SVG and PNG; the PNG's
//! text uses DejaVu Sans, built in (`reports/fonts/`), so no system font is
//! needed.

use std::collections::BTreeMap;
use std::path::Path;

use bsce_pipeline::exec::job::{ChildReporter, StageJob};
use bsce_pipeline::params::PlotParams;
use bsce_pipeline::registry::files;
use bsce_stages::{Result, StageError};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::columns as c;
use crate::frame::{bools, floats, ints, read_parquet, strings};

const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (900, 600);
/// Colours of base methods, in order of appearance (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub method: String,
    pub base_method: String,
    pub bsce: bool,
    /// (classes seen, mean top-1, population std), by classes seen.
    pub points: Vec<(f64, f64, f64)>,
}

/// The curves of one setting and classifier, from a tidy frame.
pub fn curves(tidy: &polars::prelude::DataFrame, p: &PlotParams) -> Result<Vec<Curve>> {
    let (setting, clf) = (strings(tidy, c::SETTING)?, strings(tidy, c::CLASSIFIER)?);
    let seen = ints(tidy, c::CLASSES_SEEN)?;
    let top1 = floats(tidy, c::TOP1)?;
    by_method(tidy, |i| {
        (setting[i] == p.setting && clf[i] == p.classifier.name())
            .then_some(top1[i].map(|acc| (seen[i], acc)))
            .flatten()
    })
}

/// The training-loss curves of one setting: per method, the mean and
/// population std over its runs of `total` at each step of the training
/// phase (fine-tuning epochs minimise another loss, on another set).
pub fn loss_curves(epochs: &polars::prelude::DataFrame, setting: &str) -> Result<Vec<Curve>> {
    let (set, phase, q) = (
        strings(epochs, c::SETTING)?,
        strings(epochs, c::PHASE)?,
        strings(epochs, c::QUANTITY)?,
    );
    let step = ints(epochs, c::STEP)?;
    let value = floats(epochs, c::VALUE)?;
    by_method(epochs, |i| {
        (set[i] == setting && phase[i] == "train" && q[i] == "total")
            .then_some(value[i].map(|v| (step[i], v)))
            .flatten()
    })
}

/// One curve per method of `frame`, in order of appearance: the rows
/// `point` keeps, as (x, value), averaged per x over the method's runs.
fn by_method(
    frame: &polars::prelude::DataFrame,
    point: impl Fn(usize) -> Option<(i64, f64)>,
) -> Result<Vec<Curve>> {
    let (method, base) = (strings(frame, c::METHOD)?, strings(frame, c::BASE_METHOD)?);
    let bsce = bools(frame, c::BSCE)?;
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, (String, bool, BTreeMap<i64, Vec<f64>>)> = BTreeMap::new();
    for i in 0..frame.height() {
        let Some((x, v)) = point(i) else { continue };
        if !values.contains_key(&method[i]) {
            order.push(method[i].clone());
        }
        values
            .entry(method[i].clone())
            .or_insert_with(|| (base[i].clone(), bsce[i], BTreeMap::new()))
            .2
            .entry(x)
            .or_default()
            .push(v);
    }
    Ok(order
        .into_iter()
        .map(|m| {
            let (base_method, bsce, by_x) = values.remove(&m).expect("listed");
            Curve {
                method: m,
                base_method,
                bsce,
                points: mean_std(by_x),
            }
        })
        .collect())
}

fn mean_std(by_x: BTreeMap<i64, Vec<f64>>) -> Vec<(f64, f64, f64)> {
    by_x.into_iter()
        .map(|(x, v)| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            (x as f64, mean, var.sqrt())
        })
        .collect()
}

/// What a figure's axes show.
struct Axes {
    x: &'static str,
    y: String,
    /// Accuracy: the y range stays within 0..100, in whole numbers.
    percent: bool,
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    axes: &Axes,
    curves: &[Curve],
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let pts = curves.iter().flat_map(|c| c.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, m, s) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(m - s);
        y1 = y1.max(m + s);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 100.0);
    }
    if x1 - x0 < 1.0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let (y0, y1) = if axes.percent {
        let pad = ((y1 - y0) * 0.08).max(1.0);
        ((y0 - pad).max(0.0), (y1 + pad).min(100.0))
    } else {
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        ((y0 - pad).max(0.0), y1 + pad)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(&axes.y)
        .axis_desc_style(("sans-serif", 20))
        .label_style(("sans-serif", 16))
        // Classes seen are whole numbers; accuracy needs no decimals at
        // this scale.
        .x_labels(((x1 - x0) as usize + 1).clamp(2, 11))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if axes.percent {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    let mut colours: Vec<&str> = Vec::new();
    for c in curves {
        if !colours.contains(&c.base_method.as_str()) {
            colours.push(&c.base_method);
        }
    }
    for c in curves {
        let i = colours
            .iter()
            .position(|b| *b == c.base_method)
            .unwrap_or(0);
        let colour = PALETTE[i % PALETTE.len()];
        let mut band: Vec<(f64, f64)> = c.points.iter().map(|&(x, m, s)| (x, m + s)).collect();
        band.extend(c.points.iter().rev().map(|&(x, m, s)| (x, m - s)));
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                colour.mix(0.15).filled(),
            )))
            .map_err(e)?;
        let line: Vec<(f64, f64)> = c.points.iter().map(|&(x, m, _)| (x, m)).collect();
        let style = colour.stroke_width(3);
        if c.bsce {
            chart
                .draw_series(DashedLineSeries::new(line, 10, 6, style))
                .map_err(e)?
                .label(&c.method)
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 28, y)], 6, 4, style)
                });
        } else {
            chart
                .draw_series(LineSeries::new(line, style))
                .map_err(e)?
                .label(&c.method)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 28, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 18))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

/// The built-in font, registered once per process for the PNGs' text.
pub fn register_font() {
    static FONT_READY: std::sync::Once = std::sync::Once::new();
    FONT_READY.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws accuracy curves to an SVG and a PNG file.
pub fn write_plots(
    svg: &Path,
    png: &Path,
    title: &str,
    classifier: &str,
    curves: &[Curve],
) -> Result<()> {
    let axes = Axes {
        x: "number of classes seen",
        y: format!("top-1 accuracy (%), {}", classifier.to_uppercase()),
        percent: true,
    };
    write_both(svg, png, title, &axes, curves)
}

fn write_both(svg: &Path, png: &Path, title: &str, axes: &Axes, curves: &[Curve]) -> Result<()> {
    register_font();
    draw(
        SVGBackend::new(svg, SIZE).into_drawing_area(),
        title,
        axes,
        curves,
    )
    .map_err(|m| StageError::Other(format!("drawing {}: {m}", svg.display())))?;
    draw(
        BitMapBackend::new(png, SIZE).into_drawing_area(),
        title,
        axes,
        curves,
    )
    .map_err(|m| StageError::Other(format!("drawing {}: {m}", png.display())))
}

pub fn run(job: &StageJob, _reporter: &ChildReporter) -> Result<()> {
    let p: PlotParams = serde_json::from_value(job.params.clone())
        .map_err(|e| StageError::param("plot", format!("bad stage params: {e}")))?;
    let dir = job
        .input("frames")
        .ok_or_else(|| StageError::Other("plot stage has no frames input".into()))?;
    let tidy = read_parquet(&dir.join(files::TIDY_PARQUET))?;
    let curves = curves(&tidy, &p)?;
    if curves.is_empty() {
        return Err(StageError::invalid(
            dir.join(files::TIDY_PARQUET),
            format!(
                "no {} evaluation of setting {}",
                p.classifier.name(),
                p.setting
            ),
        ));
    }
    let title = format!("{} {}: {}", p.dataset, p.setting, p.experiment);
    write_plots(
        &job.out_dir.join(files::PLOT_SVG),
        &job.out_dir.join(files::PLOT_PNG),
        &title,
        p.classifier.name(),
        &curves,
    )?;
    let epochs = read_parquet(&dir.join(files::EPOCHS_PARQUET))?;
    let losses = loss_curves(&epochs, &p.setting)?;
    write_both(
        &job.out_dir.join(files::LOSS_SVG),
        &job.out_dir.join(files::LOSS_PNG),
        &format!(
            "{} {}: {}, training loss",
            p.dataset, p.setting, p.experiment
        ),
        &Axes {
            x: "epoch, every task in turn",
            y: "training loss (sum of its terms)".into(),
            percent: false,
        },
        &losses,
    )
}
