//! `POST /api/draw`: a drawing's strokes (or an uploaded image) prepared with the same code as
//! `convnet predict`, classified, with every preparation step and every feature map.

use super::api::{b64, b64_f32, loaded};
use super::http::{Query, Reply};
use super::State;
use crate::data::preprocess::{decode_image, preprocess_steps};
use crate::nn::{LayerKind, Mode};
use image::{DynamicImage, GrayImage, Luma};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// A drawing as the page sends it: strokes of points on a canvas of `width` x `height`.
#[derive(Deserialize)]
struct Drawing {
    width: u32,
    height: u32,
    /// The pen's width in canvas pixels.
    #[serde(default = "default_line")]
    line: f32,
    strokes: Vec<Vec<[f32; 2]>>,
}

fn default_line() -> f32 {
    18.0
}

/// The most points a drawing may have, and the largest canvas side.
const MAX_POINTS: usize = 100_000;
const MAX_CANVAS: u32 = 2048;

/// Black strokes of round pens on white, as a canvas shows them.
fn rasterise(d: &Drawing) -> Result<GrayImage, String> {
    if !(8..=MAX_CANVAS).contains(&d.width) || !(8..=MAX_CANVAS).contains(&d.height) {
        return Err(format!(
            "the canvas must be 8 to {MAX_CANVAS} pixels on each side"
        ));
    }
    let points: usize = d.strokes.iter().map(Vec::len).sum();
    if points > MAX_POINTS {
        return Err(format!("{points} points are more than {MAX_POINTS}"));
    }
    if !(d.line.is_finite() && (1.0..=200.0).contains(&d.line)) {
        return Err("`line` must be 1 to 200 pixels".into());
    }
    let mut img = GrayImage::from_pixel(d.width, d.height, Luma([255]));
    let r = d.line / 2.0;
    let mut dab = |cx: f32, cy: f32| {
        let (x0, x1) = (
            (cx - r).floor().max(0.0) as u32,
            (cx + r).ceil().min(d.width as f32 - 1.0),
        );
        let (y0, y1) = (
            (cy - r).floor().max(0.0) as u32,
            (cy + r).ceil().min(d.height as f32 - 1.0),
        );
        if x1 < 0.0 || y1 < 0.0 {
            return;
        }
        for y in y0..=y1 as u32 {
            for x in x0..=x1 as u32 {
                // Anti-aliased edge: one pixel of falloff, darker wins where dabs overlap.
                let dist = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
                let cover = (r + 0.5 - dist).clamp(0.0, 1.0);
                let v = (255.0 * (1.0 - cover)) as u8;
                let p = img.get_pixel_mut(x, y);
                p.0[0] = p.0[0].min(v);
            }
        }
    };
    for stroke in &d.strokes {
        for p in stroke {
            if !(p[0].is_finite() && p[1].is_finite()) {
                return Err("a point is not a number".into());
            }
        }
        for (i, p) in stroke.iter().enumerate() {
            let q = if i > 0 { stroke[i - 1] } else { *p };
            let len = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
            let n = (len / (r / 3.0).max(0.5)).ceil().max(1.0) as usize;
            for k in 0..=n {
                let t = k as f32 / n as f32;
                dab(q[0] + (p[0] - q[0]) * t, q[1] + (p[1] - q[1]) * t);
            }
        }
    }
    Ok(img)
}

/// A grey picture for the page: (w, h, base64 pixels), at most `side` on its longest side.
fn picture(w: usize, h: usize, pixels: &[u8], side: u32) -> (Value, f64) {
    let img = GrayImage::from_raw(w as u32, h as u32, pixels.to_vec()).expect("w * h pixels");
    let (img, scale) = if w.max(h) as u32 > side {
        let small = DynamicImage::ImageLuma8(img)
            .thumbnail(side, side)
            .to_luma8();
        let scale = small.width() as f64 / w as f64;
        (small, scale)
    } else {
        (img, 1.0)
    };
    (
        json!({"w": img.width(), "h": img.height(), "pixels": b64(img.as_raw())}),
        scale,
    )
}

pub fn draw(state: &State, q: &Query, content_type: &str, body: &[u8]) -> Reply {
    let start = Instant::now();
    let img = if content_type.starts_with("image/") || content_type == "application/octet-stream" {
        match decode_image(body, Path::new("the uploaded file")) {
            Ok(img) => img,
            Err(e) => return Reply::error(422, e.to_string()),
        }
    } else {
        let drawing: Drawing = match serde_json::from_slice(body) {
            Ok(d) => d,
            Err(e) => {
                return Reply::error(400, format!("the drawing is not the JSON expected: {e}"))
            }
        };
        if drawing.strokes.iter().all(|s| s.is_empty()) {
            return Reply::error(422, "nothing is drawn: draw a digit first");
        }
        match rasterise(&drawing) {
            Ok(img) => DynamicImage::ImageLuma8(img),
            Err(e) => return Reply::error(400, e),
        }
    };
    let (_, model) = match loaded(state, q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Ok(mut m) = model.lock() else {
        return Reply::error(500, "the model is unavailable");
    };
    let shape = m.network().input_shape().to_vec();
    if shape[0] != 1 || shape[1] != shape[2] {
        return Reply::error(422, "this model does not take square grey images");
    }
    let (prepared, steps) = match preprocess_steps(&img, shape[1], m.style()) {
        Ok(p) => p,
        Err(e) => return Reply::error(422, format!("the drawing {e}")),
    };
    let prediction = match m.classify_pixels(&prepared.pixels) {
        Ok(p) => p,
        Err(e) => return Reply::error(422, e.to_string()),
    };
    // The feature maps: every layer's own output, for the prepared image alone.
    let net = m.network_mut();
    net.keep_every_output = true;
    let lut = crate::data::dataset::PixelLut::new(net.spec.normalize);
    for (d, &v) in net.input_mut(1).iter_mut().zip(&prepared.pixels) {
        *d = lut.0[v as usize];
    }
    net.forward(Mode::Eval);
    let maps: Vec<Value> = (0..net.len())
        .filter_map(|i| {
            let l = net.layer(i);
            let [c, h, w] = *l.output_shape() else {
                return None;
            };
            let shown = matches!(
                l.kind(),
                LayerKind::Conv2d
                    | LayerKind::Relu
                    | LayerKind::Sigmoid
                    | LayerKind::Tanh
                    | LayerKind::MaxPool2d
                    | LayerKind::AvgPool2d
                    | LayerKind::BatchNorm2d
            );
            if !shown {
                return None;
            }
            let values = net.activation(i).sample(0);
            let max_abs = values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            Some(json!({
                "layer": l.name(),
                "kind": l.kind().name(),
                "shape": [c, h, w],
                "signed": values.iter().any(|&v| v < 0.0),
                "max_abs": max_abs,
                "data": b64_f32(values),
            }))
        })
        .collect();
    net.keep_every_output = false;
    let (ink, ink_scale) = picture(steps.ink.0, steps.ink.1, &steps.ink.2, 280);
    let b = steps.ink_box;
    let scaled = picture(steps.scaled.0, steps.scaled.1, &steps.scaled.2, 280).0;
    let side = shape[1];
    Reply::json(
        200,
        &json!({
            "label": prediction.label,
            "class": prediction.class,
            "probability": prediction.probability,
            "probabilities": prediction.probabilities,
            "classes": m.class_names(),
            "steps": {
                "inverted": prepared.inverted,
                "ink": ink,
                "box": [b.0 as f64 * ink_scale, b.1 as f64 * ink_scale, b.2 as f64 * ink_scale, b.3 as f64 * ink_scale],
                "scaled": scaled,
                "centre": [steps.centre.0, steps.centre.1],
                "final": {"w": side, "h": side, "pixels": b64(&prepared.pixels)},
            },
            "maps": maps,
            "server_ms": start.elapsed().as_secs_f64() * 1e3,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strokes_are_drawn_as_thick_anti_aliased_lines() {
        let d = Drawing {
            width: 100,
            height: 100,
            line: 10.0,
            strokes: vec![vec![[50.3, 10.0], [50.3, 90.0]]],
        };
        let img = rasterise(&d).unwrap();
        assert_eq!(img.get_pixel(50, 50).0[0], 0, "ink on the line");
        assert_eq!(img.get_pixel(50, 12).0[0], 0);
        assert_eq!(img.get_pixel(20, 50).0[0], 255, "paper off the line");
        assert!(
            (1..255).contains(&img.get_pixel(55, 50).0[0]),
            "a soft edge"
        );
        let bad = |width, line| {
            rasterise(&Drawing {
                width,
                height: 100,
                line,
                strokes: vec![vec![[1.0, 1.0]]],
            })
            .is_err()
        };
        assert!(bad(5, 10.0) && bad(5000, 10.0) && bad(100, f32::NAN) && bad(100, 0.0));
    }
}
