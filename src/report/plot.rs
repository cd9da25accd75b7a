//! Curves drawn from a run's logs (never re-typed): loss and accuracy per epoch, train
//! against validation, and optionally the per-iteration loss. PNG and SVG, written
//! atomically. Several runs overlay in one figure, one colour each.

use crate::fsutil::write_atomic;
use crate::nn::loss::BatchStats;
use crate::run::config::TrainConfig;
use crate::run::metrics::{EpochMetrics, MetricsLog};
use crate::run::run_dir::{CONFIG, METRICS, STEPS};
use crate::Error;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// One run's curves and the name it has in a legend.
#[derive(Clone, Debug)]
pub struct RunCurves {
    pub label: String,
    pub metrics: Vec<EpochMetrics>,
    /// (iteration, loss) per training batch, from steps.csv.
    pub steps: Vec<(usize, f64)>,
}

/// Registers the embedded DejaVu Sans, so text renders the same on every machine
/// without system fonts.
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Reads a run directory's logs (a run still going or interrupted is fine).
pub fn load_run(dir: &Path) -> Result<RunCurves, Error> {
    let metrics_path = dir.join(METRICS);
    if !metrics_path.exists() {
        return Err(Error::data(
            dir,
            format!("has no {METRICS}: is it a convnet run directory?"),
        ));
    }
    let metrics = MetricsLog::read(&metrics_path)?;
    let steps = std::fs::read_to_string(dir.join(STEPS))
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| {
                    let mut f = l.split(',');
                    let it = f.next()?.parse().ok()?;
                    let loss = f.nth(1)?.parse().ok()?;
                    Some((it, loss))
                })
                .collect()
        })
        .unwrap_or_default();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let label = match std::fs::read_to_string(dir.join(CONFIG))
        .ok()
        .and_then(|t| toml::from_str::<TrainConfig>(&t).ok())
    {
        Some(c) => format!(
            "{name} ({}, lr {}, wd {}, bs {})",
            c.model.name, c.lr, c.weight_decay, c.batch_size
        ),
        None => name,
    };
    Ok(RunCurves {
        label,
        metrics,
        steps,
    })
}

pub(crate) type DrawResult = Result<(), String>;

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Draws the figure and writes `<out_base>.png` and `<out_base>.svg`.
pub fn draw_curves(
    runs: &[RunCurves],
    title: &str,
    with_steps: bool,
    out_base: &Path,
) -> Result<Vec<PathBuf>, Error> {
    let size = (1400u32, if with_steps { 950u32 } else { 560u32 });
    save_figure(
        size,
        out_base,
        |root| draw(root, runs, title, with_steps),
        |root| draw(root, runs, title, with_steps),
    )
}

/// Draws the same figure into an SVG and a PNG: `<out_base>.svg`, `<out_base>.png`.
pub(crate) fn save_figure(
    size: (u32, u32),
    out_base: &Path,
    svg: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
    png: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
) -> Result<Vec<PathBuf>, Error> {
    register_fonts();
    let (svg_path, png_path) = (
        out_base.with_extension("svg"),
        out_base.with_extension("png"),
    );
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        svg(&root).map_err(|e| Error::data(&svg_path, format!("cannot draw: {e}")))?;
        root.present().map_err(|e| Error::data(&svg_path, err(e)))?;
    }
    write_atomic(&svg_path, text.as_bytes())?;
    let bytes =
        render_png(size, png).map_err(|e| Error::data(&png_path, format!("cannot draw: {e}")))?;
    write_atomic(&png_path, &bytes)?;
    Ok(vec![png_path, svg_path])
}

pub(crate) fn save_png(
    size: (u32, u32),
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
) -> Result<PathBuf, Error> {
    let bytes =
        render_png(size, draw).map_err(|e| Error::data(path, format!("cannot draw: {e}")))?;
    write_atomic(path, &bytes)?;
    Ok(path.to_path_buf())
}

/// Draws into an RGB buffer and encodes it as PNG bytes.
pub fn render_png(
    (w, h): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
) -> Result<Vec<u8>, String> {
    register_fonts();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        &buf,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(err)?;
    Ok(out)
}

/// Axis ticks: `3` rather than `3.0`, `2.5` where it is not whole.
fn tick(x: f64) -> String {
    if x.fract().abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn color(i: usize) -> RGBColor {
    // Distinct, colour-blind-friendly hues (Okabe-Ito), then a wider palette.
    const OKABE_ITO: [RGBColor; 7] = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(230, 159, 0),
        RGBColor(86, 180, 233),
        RGBColor(0, 0, 0),
    ];
    if i < OKABE_ITO.len() {
        OKABE_ITO[i]
    } else {
        let c = Palette99::pick(i).to_rgba();
        RGBColor(c.0, c.1, c.2)
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunCurves],
    title: &str,
    with_steps: bool,
) -> DrawResult {
    root.fill(&WHITE).map_err(err)?;
    let root = root.margin(12, 0, 0, 0);
    let root = root
        .titled(title, ("sans-serif", 28).into_font().style(FontStyle::Bold))
        .map_err(err)?;
    let (steps_area, epochs_area) = if with_steps {
        let (_, h) = root.dim_in_pixel();
        let (a, b) = root.split_vertically(h * 9 / 20);
        (Some(a), b)
    } else {
        (None, root)
    };
    let panels = epochs_area.split_evenly((1, 2));
    let max_epoch = runs
        .iter()
        .flat_map(|r| r.metrics.iter().map(|m| m.epoch))
        .max()
        .unwrap_or(1)
        .max(2);

    let losses = runs.iter().flat_map(|r| {
        r.metrics
            .iter()
            .flat_map(|m| [m.train.mean_loss(), m.val.mean_loss()])
    });
    let max_loss = losses
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    let loss = EpochPanel {
        caption: "Loss per epoch (solid: train, dashed: validation)",
        y_desc: "loss",
        y_range: 0.0..max_loss,
        legend: SeriesLabelPosition::UpperRight,
        value: |s: &BatchStats| s.mean_loss(),
    };
    draw_epoch_panel(&panels[0], runs, max_epoch, loss)?;

    let accs = runs.iter().flat_map(|r| {
        r.metrics.iter().flat_map(|m| {
            let mut v = vec![100.0 * m.train.accuracy()];
            if m.val.count > 0 {
                v.push(100.0 * m.val.accuracy());
            }
            v
        })
    });
    let low = (accs.fold(100.0f64, f64::min) - 0.5)
        .floor()
        .clamp(0.0, 99.0);
    let accuracy = EpochPanel {
        caption: "Accuracy per epoch (solid: train, dashed: validation)",
        y_desc: "accuracy (%)",
        y_range: low..100.0,
        legend: SeriesLabelPosition::LowerRight,
        value: |s: &BatchStats| 100.0 * s.accuracy(),
    };
    draw_epoch_panel(&panels[1], runs, max_epoch, accuracy)?;

    if let Some(area) = steps_area {
        draw_steps(&area, runs)?;
    }
    Ok(())
}

/// One per-epoch panel: a quantity of the training and validation statistics.
struct EpochPanel<F: Fn(&BatchStats) -> f64> {
    caption: &'static str,
    y_desc: &'static str,
    y_range: std::ops::Range<f64>,
    legend: SeriesLabelPosition,
    value: F,
}

/// Train (solid, with points) and validation (dashed, with dots) per epoch, one colour per run.
fn draw_epoch_panel<DB: DrawingBackend, F: Fn(&BatchStats) -> f64>(
    area: &DrawingArea<DB, Shift>,
    runs: &[RunCurves],
    max_epoch: usize,
    panel: EpochPanel<F>,
) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(1f64..max_epoch as f64, panel.y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(panel.y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .x_labels(max_epoch.min(12))
        .x_label_formatter(&|x| tick(*x))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = color(i);
        let train: Vec<(f64, f64)> = r
            .metrics
            .iter()
            .map(|m| (m.epoch as f64, (panel.value)(&m.train)))
            .filter(|p| p.1.is_finite())
            .collect();
        let val: Vec<(f64, f64)> = r
            .metrics
            .iter()
            .filter(|m| m.val.count > 0)
            .map(|m| (m.epoch as f64, (panel.value)(&m.val)))
            .collect();
        chart
            .draw_series(LineSeries::new(train, c.stroke_width(3)).point_size(4))
            .map_err(err)?
            .label(format!("{} train", r.label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart
            .draw_series(DashedLineSeries::new(val.clone(), 10, 6, c.stroke_width(3)))
            .map_err(err)?;
        chart
            .draw_series(val.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(err)?
            .label(format!("{} validation", r.label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(panel.legend)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Per-iteration training loss on a log scale, with the x axis in epochs.
fn draw_steps<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[RunCurves]) -> DrawResult {
    let per_epoch = |r: &RunCurves| {
        r.metrics
            .first()
            .map(|m| m.iteration)
            .unwrap_or_else(|| r.steps.len().max(1))
            .max(1) as f64
    };
    let pts: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let (lo, hi) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if pts.is_empty() {
        (1e-3, 1.0)
    } else {
        (lo * 0.8, hi * 1.25)
    };
    let max_x = runs
        .iter()
        .map(|r| {
            r.steps
                .last()
                .map(|s| s.0 as f64 / per_epoch(r))
                .unwrap_or(1.0)
        })
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Training loss per iteration (faint) and its 50-step moving average",
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..max_x, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss (log scale)")
        .x_label_formatter(&|x| tick(*x))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = color(i);
        let pe = per_epoch(r);
        let raw: Vec<(f64, f64)> = r
            .steps
            .iter()
            .filter(|s| s.1 > 0.0 && s.1.is_finite())
            .map(|&(it, l)| (it as f64 / pe, l))
            .collect();
        chart
            .draw_series(LineSeries::new(raw.clone(), c.mix(0.25).stroke_width(1)))
            .map_err(err)?;
        let window = 50;
        let smooth: Vec<(f64, f64)> = raw
            .iter()
            .enumerate()
            .map(|(k, &(x, _))| {
                let from = k.saturating_sub(window - 1);
                let s = &raw[from..=k];
                (x, s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(smooth, c.stroke_width(2)))
            .map_err(err)?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One line of an x-y chart.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Axis descriptions and ticks of an x-y chart.
pub struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    /// Categorical x ticks: tick `i` is labelled `x_names[i]`.
    pub x_names: Option<&'a [String]>,
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    lines: &[Line],
    a: &Axes,
) -> DrawResult {
    root.fill(&WHITE).map_err(err)?;
    let root = root.margin(10, 10, 10, 10);
    let pts = lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (x0, x1, y0, y1) = pts.fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), (x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    let (x0, x1) = if x0 > x1 {
        (0.0, 1.0)
    } else if x0 == x1 {
        (x0 - 0.5, x1 + 0.5)
    } else {
        (x0, x1)
    };
    let (y0, y1) = if y0 > y1 { (0.0, 1.0) } else { (y0, y1) };
    let pad = ((y1 - y0) * 0.08).max(0.05);
    let xpad = if a.x_names.is_some() { 0.3 } else { 0.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(a.title, ("sans-serif", 22))
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d((x0 - xpad)..(x1 + xpad), (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    let names = a.x_names;
    let fmt = move |x: &f64| match names {
        Some(n) => {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n.len() {
                n[i as usize].clone()
            } else {
                String::new()
            }
        }
        None => tick(*x),
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(a.x)
        .y_desc(a.y)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .x_label_formatter(&fmt)
        .light_line_style(WHITE.mix(0.0));
    if let Some(n) = names {
        mesh.x_labels(n.len() * 2 + 1);
    }
    mesh.draw().map_err(err)?;
    for (i, l) in lines.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(l.points.clone(), c.stroke_width(3)).point_size(4))
            .map_err(err)?
            .label(l.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// An x-y line chart (PNG + SVG).
pub fn draw_line_chart(
    lines: &[Line],
    axes: &Axes,
    out_base: &Path,
) -> Result<Vec<PathBuf>, Error> {
    save_figure(
        (1000, 600),
        out_base,
        |root| draw_lines(root, lines, axes),
        |root| draw_lines(root, lines, axes),
    )
}
