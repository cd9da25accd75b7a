//! Pictures of what a network does: the confusion matrix as a heat map, a gallery of
//! confident mistakes, conv kernels, and the feature maps of one input.
//! All drawn with plotters in pixel coordinates; PNG (and SVG where it is a figure).

use super::plot::{err, save_figure as save_both, save_png, DrawResult};
use super::report::EvalReport;
use super::table::counted;
use crate::data::Dataset;
use crate::nn::{Layer, LayerKind, ParamRole};
use crate::Error;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

fn lerp(a: (u8, u8, u8), b: (u8, u8, u8), t: f64) -> RGBColor {
    let f = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    RGBColor(f(a.0, b.0), f(a.1, b.1), f(a.2, b.2))
}

/// Interpolates through evenly spaced anchor colours, `t` in [0, 1].
fn ramp(anchors: &[(u8, u8, u8)], t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (anchors.len() - 1) as f64;
    let i = (x.floor() as usize).min(anchors.len() - 2);
    lerp(anchors[i], anchors[i + 1], x - i as f64)
}

/// Viridis (sequential, perceptually uniform).
pub fn viridis(t: f64) -> RGBColor {
    ramp(
        &[
            (68, 1, 84),
            (59, 82, 139),
            (33, 145, 140),
            (94, 201, 98),
            (253, 231, 37),
        ],
        t,
    )
}

/// Blue - white - red for signed values, `t` in [-1, 1].
pub fn diverging(t: f64) -> RGBColor {
    ramp(
        &[
            (33, 102, 172),
            (146, 197, 222),
            (247, 247, 247),
            (244, 165, 130),
            (178, 24, 43),
        ],
        (t + 1.0) / 2.0,
    )
}

/// White to dark blue.
pub fn blues(t: f64) -> RGBColor {
    ramp(
        &[
            (247, 251, 255),
            (158, 202, 225),
            (66, 146, 198),
            (8, 48, 107),
        ],
        t,
    )
}

fn text<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &str,
    (x, y): (i32, i32),
    size: f64,
    anchor: (HPos, VPos),
    color: &RGBColor,
) -> DrawResult {
    let style = TextStyle::from(("sans-serif", size).into_font())
        .pos(Pos::new(anchor.0, anchor.1))
        .color(color);
    root.draw(&Text::new(s.to_string(), (x, y), style))
        .map_err(err)
}

fn rect<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    (x0, y0): (i32, i32),
    (x1, y1): (i32, i32),
    c: RGBColor,
) -> DrawResult {
    root.draw(&Rectangle::new([(x0, y0), (x1, y1)], c.filled()))
        .map_err(err)
}

/// A `w x h` grid of values drawn as `cell`-pixel squares at `at`.
fn tile<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    values: &[f32],
    (w, h): (usize, usize),
    at: (i32, i32),
    cell: i32,
    color: impl Fn(f32) -> RGBColor,
) -> DrawResult {
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (at.0 + x as i32 * cell, at.1 + y as i32 * cell);
            rect(
                root,
                (px, py),
                (px + cell, py + cell),
                color(values[y * w + x]),
            )?;
        }
    }
    Ok(())
}

// ----- confusion matrix -------------------------------------------------------------

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &EvalReport,
    title: &str,
    cell: i32,
    left: i32,
    top: i32,
) -> DrawResult {
    let black = RGBColor(0, 0, 0);
    root.fill(&WHITE).map_err(err)?;
    let k = r.classes.len() as i32;
    let (w, _) = root.dim_in_pixel();
    text(
        root,
        title,
        (w as i32 / 2, 24),
        24.0,
        (HPos::Center, VPos::Center),
        &black,
    )?;
    text(
        root,
        "predicted class",
        (left + k * cell / 2, top - 48),
        18.0,
        (HPos::Center, VPos::Center),
        &black,
    )?;
    let ylabel = TextStyle::from(
        ("sans-serif", 18)
            .into_font()
            .transform(FontTransform::Rotate270),
    )
    .pos(Pos::new(HPos::Center, VPos::Center))
    .color(&black);
    root.draw(&Text::new(
        "true class".to_string(),
        (18, top + k * cell / 2),
        ylabel,
    ))
    .map_err(err)?;
    for (t, row) in r.confusion.iter().enumerate() {
        let support: usize = row.iter().sum::<usize>().max(1);
        for (p, &v) in row.iter().enumerate() {
            let frac = v as f64 / support as f64;
            let (x, y) = (left + p as i32 * cell, top + t as i32 * cell);
            rect(root, (x, y), (x + cell, y + cell), blues(frac.sqrt()))?;
            let fg = if frac.sqrt() > 0.55 { WHITE } else { black };
            if v > 0 {
                text(
                    root,
                    &v.to_string(),
                    (x + cell / 2, y + cell / 2),
                    (cell as f64 / 3.2).min(18.0),
                    (HPos::Center, VPos::Center),
                    &fg,
                )?;
            }
        }
        let name: String = r.classes[t].chars().take(12).collect();
        text(
            root,
            &name,
            (left - 8, top + t as i32 * cell + cell / 2),
            14.0,
            (HPos::Right, VPos::Center),
            &black,
        )?;
        text(
            root,
            &name,
            (left + t as i32 * cell + cell / 2, top - 14),
            13.0,
            (HPos::Center, VPos::Center),
            &black,
        )?;
    }
    root.draw(&Rectangle::new(
        [(left, top), (left + k * cell, top + k * cell)],
        black.stroke_width(1),
    ))
    .map_err(err)?;
    let note = "cell colour: share of the true class (row); diagonal = recall";
    text(
        root,
        note,
        (left + k * cell / 2, top + k * cell + 22),
        14.0,
        (HPos::Center, VPos::Center),
        &RGBColor(80, 80, 80),
    )
}

/// The confusion matrix as a heat map (PNG + SVG).
pub fn confusion_heatmap(
    r: &EvalReport,
    title: &str,
    out_base: &Path,
) -> Result<Vec<PathBuf>, Error> {
    let k = r.classes.len() as i32;
    let cell = (640 / k.max(1)).clamp(24, 64);
    let (left, top) = (130, 100);
    let size = ((left + k * cell + 40) as u32, (top + k * cell + 50) as u32);
    save_both(
        size,
        out_base,
        |root| draw_confusion(root, r, title, cell, left, top),
        |root| draw_confusion(root, r, title, cell, left, top),
    )
}

// ----- gallery of mistakes ----------------------------------------------------------

/// The most confident mistakes as a grid of images, with true label, prediction and
/// probability under each (PNG).
pub fn mistakes_gallery(r: &EvalReport, ds: &Dataset, path: &Path) -> Result<PathBuf, Error> {
    let n = r.most_confident_mistakes.len().max(1);
    let cols = n.min(8) as i32;
    let rows = n.div_ceil(8) as i32;
    let scale = 4;
    let (iw, ih) = (ds.cols as i32 * scale, ds.rows as i32 * scale);
    let (cw, chh) = (iw.max(150) + 16, ih + 62);
    let size = ((cols * cw + 20) as u32, (rows * chh + 60) as u32);
    save_png(size, path, |root| {
        let black = RGBColor(0, 0, 0);
        root.fill(&WHITE).map_err(err)?;
        let title = format!(
            "The {} most confident mistakes",
            r.most_confident_mistakes.len()
        );
        text(
            root,
            &title,
            (size.0 as i32 / 2, 24),
            22.0,
            (HPos::Center, VPos::Center),
            &black,
        )?;
        for (i, m) in r.most_confident_mistakes.iter().enumerate() {
            let (c, rr) = (i as i32 % cols, i as i32 / cols);
            let (x, y) = (10 + c * cw + (cw - iw) / 2, 50 + rr * chh);
            let px: Vec<f32> = ds
                .image(m.index)
                .iter()
                .map(|&v| v as f32 / 255.0)
                .collect();
            tile(root, &px, (ds.cols, ds.rows), (x, y), scale, |v| {
                let g = (255.0 * (1.0 - v)).round() as u8;
                RGBColor(g, g, g)
            })?;
            let cx = 10 + c * cw + cw / 2;
            let label = |k: usize| r.classes.get(k).cloned().unwrap_or_else(|| k.to_string());
            text(
                root,
                &format!("true {} → {}", label(m.label), label(m.predicted)),
                (cx, y + ih + 14),
                13.0,
                (HPos::Center, VPos::Center),
                &black,
            )?;
            text(
                root,
                &format!("p = {:.1}% · #{}", 100.0 * m.probability, m.index),
                (cx, y + ih + 32),
                12.0,
                (HPos::Center, VPos::Center),
                &RGBColor(180, 30, 30),
            )?;
        }
        Ok(())
    })
}

// ----- filters ----------------------------------------------------------------------

fn draw_filters<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    name: &str,
    shape: &[usize],
    w: &[f32],
    cell: i32,
) -> DrawResult {
    let black = RGBColor(0, 0, 0);
    let (o, c, k) = (shape[0], shape[1], shape[2]);
    let max = w.iter().fold(0.0f32, |a, &b| a.max(b.abs())).max(1e-12);
    root.fill(&WHITE).map_err(err)?;
    let (width, _) = root.dim_in_pixel();
    let title = format!(
        "{name}: {o} kernels of {} ({k}x{k})",
        counted(c, "input channel")
    );
    text(
        root,
        &title,
        (width as i32 / 2, 20),
        20.0,
        (HPos::Center, VPos::Center),
        &black,
    )?;
    text(
        root,
        "rows: output channels · columns: input channels, side by side · shared colour scale",
        (width as i32 / 2, 44),
        13.0,
        (HPos::Center, VPos::Center),
        &RGBColor(80, 80, 80),
    )?;
    let t = k as i32 * cell + 6;
    let (left, top) = (60, 70);
    for oc in 0..o {
        text(
            root,
            &format!("{oc}"),
            (left - 10, top + oc as i32 * t + t / 2),
            12.0,
            (HPos::Right, VPos::Center),
            &black,
        )?;
        for ic in 0..c {
            let start = (oc * c + ic) * k * k;
            tile(
                root,
                &w[start..start + k * k],
                (k, k),
                (left + ic as i32 * t, top + oc as i32 * t),
                cell,
                |v| diverging((v / max) as f64),
            )?;
        }
    }
    // Colour bar.
    let bx = left + c as i32 * t + 30;
    let bh = (o as i32 * t).clamp(60, 300);
    for i in 0..bh {
        let v = 1.0 - 2.0 * i as f64 / (bh - 1).max(1) as f64;
        rect(root, (bx, top + i), (bx + 18, top + i + 1), diverging(v))?;
    }
    text(
        root,
        &format!("+{max:.3}"),
        (bx + 24, top),
        12.0,
        (HPos::Left, VPos::Center),
        &black,
    )?;
    text(
        root,
        "0",
        (bx + 24, top + bh / 2),
        12.0,
        (HPos::Left, VPos::Center),
        &black,
    )?;
    text(
        root,
        &format!("-{max:.3}"),
        (bx + 24, top + bh),
        12.0,
        (HPos::Left, VPos::Center),
        &black,
    )
}

/// Every conv layer's kernels, one figure per layer: `<out_dir>/filters-<layer>.png/.svg`.
pub fn filters<'a>(
    layers: impl Iterator<Item = &'a dyn Layer>,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, Error> {
    let mut written = Vec::new();
    for l in layers.filter(|l| l.kind() == LayerKind::Conv2d) {
        let p = l.params();
        let weight = p
            .iter()
            .find(|p| p.role == ParamRole::Weight)
            .expect("conv has a weight");
        let (o, c, k) = (weight.shape[0], weight.shape[1], weight.shape[2]);
        let cell = (48 / k as i32).clamp(3, 16);
        let t = k as i32 * cell + 6;
        let size = (
            (60 + c as i32 * t + 110).max(520) as u32,
            (70 + (o as i32 * t).max(300) + 30) as u32,
        );
        let base = out_dir.join(format!("filters-{}", l.name()));
        written.extend(save_both(
            size,
            &base,
            |r| draw_filters(r, l.name(), &weight.shape, &weight.value, cell),
            |r| draw_filters(r, l.name(), &weight.shape, &weight.value, cell),
        )?);
    }
    if written.is_empty() {
        return Err(Error::Config(
            "this model has no conv2d layer, so no filters to draw".into(),
        ));
    }
    Ok(written)
}

// ----- activations ------------------------------------------------------------------

/// One panel of the activation figure: a layer's output for one sample.
pub struct FeatureMaps {
    pub title: String,
    /// (channels, height, width)
    pub shape: [usize; 3],
    pub values: Vec<f32>,
}

fn draw_activations<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    maps: &[FeatureMaps],
    probs: &[(String, f32)],
    heading: &str,
    per_row: usize,
    tile_px: i32,
) -> DrawResult {
    let black = RGBColor(0, 0, 0);
    root.fill(&WHITE).map_err(err)?;
    text(
        root,
        heading,
        (20, 22),
        20.0,
        (HPos::Left, VPos::Center),
        &black,
    )?;
    let mut y = 50;
    for m in maps {
        let [c, h, w] = m.shape;
        let (lo, hi) = m
            .values
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        text(
            root,
            &format!("{}  (scale {lo:.2} … {hi:.2})", m.title),
            (20, y + 10),
            14.0,
            (HPos::Left, VPos::Center),
            &black,
        )?;
        y += 24;
        let cell = (tile_px / h.max(w) as i32).max(1);
        for ch in 0..c {
            let (col, row) = ((ch % per_row) as i32, (ch / per_row) as i32);
            let at = (20 + col * (tile_px + 6), y + row * (tile_px + 6));
            let plane = &m.values[ch * h * w..(ch + 1) * h * w];
            tile(root, plane, (w, h), at, cell, |v| {
                viridis(((v - lo) / (hi - lo).max(1e-12)) as f64)
            })?;
        }
        y += c.div_ceil(per_row) as i32 * (tile_px + 6) + 10;
    }
    // Final probabilities as bars.
    text(
        root,
        "output probabilities",
        (20, y + 10),
        14.0,
        (HPos::Left, VPos::Center),
        &black,
    )?;
    y += 26;
    let best = probs.iter().map(|p| p.1).fold(0.0, f32::max);
    for (name, p) in probs {
        let color = if *p == best {
            RGBColor(213, 94, 0)
        } else {
            RGBColor(0, 114, 178)
        };
        text(
            root,
            name,
            (130, y + 9),
            13.0,
            (HPos::Right, VPos::Center),
            &black,
        )?;
        rect(
            root,
            (140, y + 2),
            (140 + (p * 400.0).round() as i32, y + 16),
            color,
        )?;
        text(
            root,
            &format!("{:.1}%", 100.0 * p),
            (148 + (p * 400.0).round() as i32, y + 9),
            12.0,
            (HPos::Left, VPos::Center),
            &black,
        )?;
        y += 20;
    }
    Ok(())
}

/// The feature maps of every layer for one input, and the output probabilities
/// (PNG + SVG).
pub fn activations(
    maps: &[FeatureMaps],
    probs: &[(String, f32)],
    heading: &str,
    out_base: &Path,
) -> Result<Vec<PathBuf>, Error> {
    let per_row = 16;
    let tile_px = 84;
    let mut h = 50;
    for m in maps {
        h += 24 + m.shape[0].div_ceil(per_row) as i32 * (tile_px + 6) + 10;
    }
    h += 26 + probs.len() as i32 * 20 + 20;
    let widest = maps
        .iter()
        .map(|m| m.shape[0].min(per_row))
        .max()
        .unwrap_or(1) as i32;
    let size = ((40 + widest * (tile_px + 6)).max(640) as u32, h as u32);
    save_both(
        size,
        out_base,
        |r| draw_activations(r, maps, probs, heading, per_row, tile_px),
        |r| draw_activations(r, maps, probs, heading, per_row, tile_px),
    )
}

// ----- sweep grids ------------------------------------------------------------------

/// A matrix of results: rows are the values of one key, columns of another.
pub struct GridCells<'a> {
    pub title: &'a str,
    pub row_key: &'a str,
    pub rows: &'a [String],
    pub col_key: &'a str,
    pub cols: &'a [String],
    /// The value that sets the colour (e.g. validation accuracy), None for a failed trial.
    pub values: &'a [Vec<Option<f64>>],
    /// The text in each cell.
    pub labels: &'a [Vec<String>],
}

fn draw_grid<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    g: &GridCells,
    cell: (i32, i32),
    left: i32,
    top: i32,
) -> DrawResult {
    let black = RGBColor(0, 0, 0);
    root.fill(&WHITE).map_err(err)?;
    let (w, _) = root.dim_in_pixel();
    text(
        root,
        g.title,
        (w as i32 / 2, 22),
        20.0,
        (HPos::Center, VPos::Center),
        &black,
    )?;
    let finite: Vec<f64> = g
        .values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    // A failed setting (chance-level accuracy) would wash out the differences that matter:
    // the colour scale starts a few spreads below the median, and anything lower is darkest.
    let mut sorted = finite.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(lo);
    let lo = lo.max(median - 3.0 * (hi - median) - 0.1);
    let ncols = g.cols.len() as i32;
    text(
        root,
        g.col_key,
        (left + ncols * cell.0 / 2, top - 40),
        16.0,
        (HPos::Center, VPos::Center),
        &black,
    )?;
    text(
        root,
        g.row_key,
        (left - 10, top - 40),
        16.0,
        (HPos::Right, VPos::Center),
        &black,
    )?;
    for (c, name) in g.cols.iter().enumerate() {
        text(
            root,
            name,
            (left + c as i32 * cell.0 + cell.0 / 2, top - 14),
            14.0,
            (HPos::Center, VPos::Center),
            &black,
        )?;
    }
    for (r, name) in g.rows.iter().enumerate() {
        let y = top + r as i32 * cell.1;
        text(
            root,
            name,
            (left - 10, y + cell.1 / 2),
            14.0,
            (HPos::Right, VPos::Center),
            &black,
        )?;
        for c in 0..g.cols.len() {
            let x = left + c as i32 * cell.0;
            let (fill, fg) = match g.values[r][c] {
                Some(v) if v.is_finite() => {
                    let t = if hi > lo {
                        ((v - lo) / (hi - lo)).max(0.0)
                    } else {
                        1.0
                    };
                    (viridis(t), if t > 0.6 { black } else { WHITE })
                }
                _ => (RGBColor(200, 200, 200), black),
            };
            rect(root, (x, y), (x + cell.0, y + cell.1), fill)?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell.0, y + cell.1)],
                WHITE.stroke_width(2),
            ))
            .map_err(err)?;
            text(
                root,
                &g.labels[r][c],
                (x + cell.0 / 2, y + cell.1 / 2),
                15.0,
                (HPos::Center, VPos::Center),
                &fg,
            )?;
        }
    }
    Ok(())
}

/// A 2-key sweep as a heat map (PNG + SVG).
pub fn grid_heatmap(g: &GridCells, out_base: &Path) -> Result<Vec<PathBuf>, Error> {
    let cell = (110, 44);
    let left = 30
        + g.rows
            .iter()
            .map(|r| r.len())
            .max()
            .unwrap_or(4)
            .max(g.row_key.len()) as i32
            * 9;
    let top = 90;
    let size = (
        (left + g.cols.len() as i32 * cell.0 + 30) as u32,
        (top + g.rows.len() as i32 * cell.1 + 30) as u32,
    );
    save_both(
        size,
        out_base,
        |r| draw_grid(r, g, cell, left, top),
        |r| draw_grid(r, g, cell, left, top),
    )
}
