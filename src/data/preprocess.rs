//! A user's image, prepared the way MNIST digits were made, so the network sees what it
//! was trained on:
//!
//! 1. composite any transparency onto white, convert to grey;
//! 2. invert when the background (the median grey) is light (MNIST is white on black);
//! 3. subtract the background level, so grey paper or uneven light is not ink;
//! 4. find the ink with Otsu's threshold and keep its connected pieces, dropping frames
//!    (pieces lying mostly along the image edge), specks (pieces under 5% of the largest)
//!    and border-touching pieces that are not the largest (the edge of a scanned sheet);
//! 5. crop to the kept ink, scale the longest side to 20 px (of 28) with an area-averaging
//!    filter, keeping the aspect ratio;
//! 6. paste into a 28 x 28 canvas with the centre of mass at the centre.
//!
//! Fashion-MNIST was made differently (the product fills the frame, its box centred):
//! `preprocess_as(.., Style::Product)` does that, and `convnet predict` picks the style of
//! the data set the model was trained on.
//!
//! ```
//! use convnet::data::preprocess::preprocess;
//! // A black "1" on a white 60 x 90 canvas, off-centre.
//! let mut img = image::GrayImage::from_pixel(60, 90, image::Luma([255u8]));
//! for y in 10..70 {
//!     for x in 40..46 {
//!         img.put_pixel(x, y, image::Luma([0]));
//!     }
//! }
//! let p = preprocess(&image::DynamicImage::ImageLuma8(img), 28).unwrap();
//! assert!(p.inverted);
//! assert_eq!(p.pixels.len(), 28 * 28);
//! // The stroke is now white on black, 20 px tall, centred.
//! assert_eq!(p.pixels[14 * 28 + 14], 255);
//! assert_eq!(p.pixels[0], 0);
//! ```

use crate::Error;
use image::{imageops::FilterType, DynamicImage, GrayImage, ImageReader, Luma};
use std::path::Path;

/// Largest image side accepted, in pixels; larger files are refused, not decoded.
pub const MAX_SIDE: u32 = 12_000;

/// The most memory decoding one image may take (an 8192 x 8192 RGBA photo); a file that
/// would decode to more is refused, not decoded.
pub const MAX_DECODED: u64 = 256 << 20;

/// Images are worked on at most this many pixels on their longest side: larger ones are
/// first shrunk by area averaging (the network sees 28 pixels, and the preparation's
/// buffers are then a few tens of MB whatever the file).
pub const WORK_SIDE: u32 = 2048;

/// What preprocessing produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessed {
    /// `side * side` bytes, 0 = background, 255 = ink (MNIST's convention).
    pub pixels: Vec<u8>,
    /// The side of the square image.
    pub side: usize,
    /// The input had a light background and was inverted.
    pub inverted: bool,
    /// The ink's bounding box in the source image: (x0, y0, x1, y1), exclusive ends.
    pub ink_box: (u32, u32, u32, u32),
}

/// The largest image file read, in bytes.
pub const MAX_FILE: u64 = 256 << 20;

/// Reads and decodes a PNG or JPEG file (any size, colour type or bit depth), refusing
/// absurd sizes.
pub fn load_image(path: &Path) -> Result<DynamicImage, Error> {
    let bytes = crate::fsutil::read_capped(path, MAX_FILE)?;
    decode_image(&bytes, path)
}

/// Decodes the bytes of an image file; `path` names it in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<DynamicImage, Error> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED);
    reader.limits(limits);
    if reader.format().is_none() {
        return Err(Error::data(
            path,
            "is not an image this tool reads (expected PNG or JPEG)",
        ));
    }
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => Error::data(
            path,
            format!(
                "is too large to read (each side must be at most {MAX_SIDE} px and the decoded image under {} MiB)",
                MAX_DECODED >> 20
            ),
        ),
        e => Error::data(path, format!("cannot be decoded: {e}")),
    })
}

/// Loads and preprocesses one file as an MNIST digit.
pub fn preprocess_file(path: &Path, side: usize) -> Result<Preprocessed, Error> {
    preprocess_file_as(path, side, Style::Digit)
}

/// Loads and preprocesses one file in the given style.
pub fn preprocess_file_as(path: &Path, side: usize, style: Style) -> Result<Preprocessed, Error> {
    let img = load_image(path)?;
    preprocess_as(&img, side, style).map_err(|m| Error::data(path, m))
}

/// How the data set the model learned from was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// MNIST: the digit's longest side is 20 of 28 px, its centre of mass at the centre.
    Digit,
    /// Fashion-MNIST: the product's longest side fills the frame, its box centred.
    Product,
}

impl Style {
    /// The style of a data set.
    pub fn of(kind: crate::data::DatasetKind) -> Style {
        match kind {
            crate::data::DatasetKind::Mnist => Style::Digit,
            crate::data::DatasetKind::FashionMnist => Style::Product,
        }
    }
}

/// Grey levels in [0, 1] with alpha composited onto white.
fn grey_on_white(img: &DynamicImage) -> (Vec<f32>, usize, usize) {
    let rgba = img.to_rgba32f();
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    let grey = rgba
        .pixels()
        .map(|p| {
            let [r, g, b, a] = p.0;
            let a = a.clamp(0.0, 1.0);
            let lum = 0.299 * r + 0.587 * g + 0.114 * b;
            (lum * a + (1.0 - a)).clamp(0.0, 1.0)
        })
        .collect();
    (grey, w, h)
}

fn median(mut v: Vec<f32>) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b)).1
}

/// Otsu's threshold over a 256-bin histogram of values in [0, 1].
fn otsu(values: &[f32]) -> f32 {
    let mut hist = [0usize; 256];
    for &v in values {
        hist[(v * 255.0).round().clamp(0.0, 255.0) as usize] += 1;
    }
    let total = values.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w0, mut sum0, mut best, mut best_t) = (0.0, 0.0, -1.0, 128usize);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c as f64;
        if w0 == 0.0 {
            continue;
        }
        let w1 = total - w0;
        if w1 == 0.0 {
            break;
        }
        sum0 += t as f64 * c as f64;
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t;
        }
    }
    (best_t as f32 + 0.5) / 255.0
}

/// A connected piece of ink.
#[derive(Clone, Copy, Debug, Default)]
struct Piece {
    area: usize,
    touches_border: bool,
    /// Pixels within `band` of the image edge.
    near_border: usize,
}

/// Labels the 8-connected components of `mask`: a label per pixel (0 = none) and, per
/// label, its `Piece`.
fn components(mask: &[bool], w: usize, h: usize, band: usize) -> (Vec<u32>, Vec<Piece>) {
    let mut label = vec![0u32; mask.len()];
    let mut pieces = vec![Piece::default()];
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        let id = pieces.len() as u32;
        pieces.push(Piece::default());
        label[start] = id;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (x, y) = (p % w, p / w);
            let piece = &mut pieces[id as usize];
            piece.area += 1;
            piece.touches_border |= x == 0 || y == 0 || x == w - 1 || y == h - 1;
            let edge_distance = x.min(y).min(w - 1 - x).min(h - 1 - y);
            piece.near_border += usize::from(edge_distance < band);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if mask[q] && label[q] == 0 {
                        label[q] = id;
                        stack.push(q);
                    }
                }
            }
        }
    }
    (label, pieces)
}

/// Which pieces are the digit: not a frame (a piece lying mostly along the image edge),
/// not a speck (under 5% of the largest remaining piece), and not a border-touching
/// piece other than the largest (the edge of a scanned sheet).
fn digit_pieces(pieces: &[Piece]) -> Vec<bool> {
    let frame = |p: &Piece| p.touches_border && p.near_border * 2 > p.area;
    let largest = pieces
        .iter()
        .filter(|p| !frame(p))
        .map(|p| p.area)
        .max()
        .unwrap_or(0);
    let keep: Vec<bool> = pieces
        .iter()
        .map(|p| {
            p.area > 0
                && !frame(p)
                && p.area * 20 >= largest
                && (!p.touches_border || p.area == largest)
        })
        .collect();
    if keep.iter().any(|&k| k) {
        keep
    } else {
        // Nothing but frame-like ink: keep it all rather than nothing.
        pieces.iter().map(|p| p.area > 0).collect()
    }
}

/// Prepares an image as an MNIST-style `side x side` digit (the digit's box is
/// `side * 20 / 28`). Errors are plain sentences (the caller adds the file name).
pub fn preprocess(img: &DynamicImage, side: usize) -> Result<Preprocessed, String> {
    preprocess_as(img, side, Style::Digit)
}

/// Like `preprocess`, in the style of the data set the model learned from.
pub fn preprocess_as(
    img: &DynamicImage,
    side: usize,
    style: Style,
) -> Result<Preprocessed, String> {
    prepare(img, side, style, None)
}

/// What each step of the preparation made, for showing it (`convnet serve`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Steps {
    /// The ink after inversion and background removal, at the working size: (w, h, 0-255).
    pub ink: (usize, usize, Vec<u8>),
    /// The kept ink's box in `ink`: (x0, y0, x1, y1), exclusive ends.
    pub ink_box: (usize, usize, usize, usize),
    /// The box scaled so its longest side is the digit size (20 of 28 px): (w, h, 0-255).
    pub scaled: (usize, usize, Vec<u8>),
    /// The centre of mass (digits) or of the box (products) in `scaled`.
    pub centre: (f64, f64),
}

/// `preprocess_as`, also recording every step.
pub fn preprocess_steps(
    img: &DynamicImage,
    side: usize,
    style: Style,
) -> Result<(Preprocessed, Steps), String> {
    let mut steps = Steps::default();
    let p = prepare(img, side, style, Some(&mut steps))?;
    Ok((p, steps))
}

/// The preparation itself; `steps`, when given, receives each step's picture.
fn prepare(
    img: &DynamicImage,
    side: usize,
    style: Style,
    mut steps: Option<&mut Steps>,
) -> Result<Preprocessed, String> {
    if img.width() == 0 || img.height() == 0 {
        return Err("is an empty image (0 pixels)".into());
    }
    // Work on a copy at most WORK_SIDE on its longest side; the ink box is scaled back.
    let shrunk;
    let (img, shrink) = if img.width().max(img.height()) > WORK_SIDE {
        shrunk = img.thumbnail(WORK_SIDE, WORK_SIDE);
        (&shrunk, img.width() as f64 / shrunk.width() as f64)
    } else {
        (img, 1.0)
    };
    let (grey, w, h) = grey_on_white(img);
    // Background: the median grey level. Ink covers far less than half of a digit image,
    // so this is the paper (or screen) even when a frame or shadow lines the edges.
    // A light background means dark ink: invert, since MNIST is white on black.
    let paper = median(grey.clone());
    let inverted = paper > 0.5;
    let ink: Vec<f32> = grey
        .iter()
        .map(|&g| if inverted { 1.0 - g } else { g })
        .collect();
    let bg = if inverted { 1.0 - paper } else { paper };
    let ink: Vec<f32> = ink
        .iter()
        .map(|&v| ((v - bg) / (1.0 - bg).max(1e-6)).clamp(0.0, 1.0))
        .collect();
    let peak = ink.iter().fold(0.0f32, |a, &b| a.max(b));
    if peak < 0.15 {
        return Err("has no ink: the image is (nearly) uniform".into());
    }
    let t = otsu(&ink).max(0.1 * peak);
    let mask: Vec<bool> = ink.iter().map(|&v| v >= t).collect();
    let band = (w.min(h) / 25).max(2);
    let (labels, pieces) = components(&mask, w, h, band);
    if pieces.len() < 2 {
        return Err("has no ink".into());
    }
    let keep = digit_pieces(&pieces);
    let to_bytes = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .map(|&x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    };
    // Bounding box of the kept pieces.
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (p, &l) in labels.iter().enumerate() {
        if l != 0 && keep[l as usize] {
            let (x, y) = (p % w, p / w);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
    }
    // Keep the anti-aliased edge around kept strokes (one pixel), drop everything else.
    let near_kept = |x: usize, y: usize| {
        (y.saturating_sub(1)..(y + 2).min(h)).any(|yy| {
            (x.saturating_sub(1)..(x + 2).min(w)).any(|xx| {
                let l = labels[yy * w + xx];
                l != 0 && keep[l as usize]
            })
        })
    };
    let (x0e, y0e, x1e, y1e) = (
        x0.saturating_sub(1),
        y0.saturating_sub(1),
        (x1 + 1).min(w),
        (y1 + 1).min(h),
    );
    let (cw, ch) = (x1e - x0e, y1e - y0e);
    let mut crop = image::ImageBuffer::<Luma<f32>, Vec<f32>>::new(cw as u32, ch as u32);
    for y in y0e..y1e {
        for x in x0e..x1e {
            let v = if near_kept(x, y) { ink[y * w + x] } else { 0.0 };
            crop.put_pixel((x - x0e) as u32, (y - y0e) as u32, Luma([v]));
        }
    }
    // Longest side to 20/28 of the canvas, aspect ratio kept.
    let digit = match style {
        Style::Digit => ((side * 20) as f32 / 28.0).round().max(1.0) as usize,
        Style::Product => side,
    };
    let scale = digit as f32 / cw.max(ch) as f32;
    let (nw, nh) = (
        ((cw as f32 * scale).round() as u32).max(1),
        ((ch as f32 * scale).round() as u32).max(1),
    );
    let small = image::imageops::resize(&crop, nw, nh, FilterType::Triangle);
    if let Some(st) = steps.as_deref_mut() {
        st.ink = (w, h, to_bytes(&ink));
        st.ink_box = (x0, y0, x1, y1);
        st.scaled = (nw as usize, nh as usize, to_bytes(small.as_raw()));
    }
    // Centre of mass (digits) or of the box (products) to the centre of the canvas.
    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in small.enumerate_pixels() {
        let v = p.0[0].max(0.0) as f64;
        mass += v;
        mx += v * (x as f64 + 0.5);
        my += v * (y as f64 + 0.5);
    }
    let (cx, cy) = if style == Style::Product {
        (nw as f64 / 2.0, nh as f64 / 2.0)
    } else if mass > 0.0 {
        (mx / mass, my / mass)
    } else {
        (nw as f64 / 2.0, nh as f64 / 2.0)
    };
    if let Some(st) = steps {
        st.centre = (cx, cy);
    }
    let off_x = (side as f64 / 2.0 - cx).round() as i64;
    let off_y = (side as f64 / 2.0 - cy).round() as i64;
    let mut pixels = vec![0u8; side * side];
    for (x, y, p) in small.enumerate_pixels() {
        let (tx, ty) = (x as i64 + off_x, y as i64 + off_y);
        if tx >= 0 && ty >= 0 && (tx as usize) < side && (ty as usize) < side {
            pixels[ty as usize * side + tx as usize] =
                (p.0[0].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    // Stretch so the strongest stroke is full white, as in MNIST.
    let max = *pixels.iter().max().unwrap_or(&0);
    if max > 0 && max < 255 {
        for v in &mut pixels {
            *v = ((*v as u32 * 255 + max as u32 / 2) / max as u32) as u8;
        }
    }
    Ok(Preprocessed {
        pixels,
        side,
        inverted,
        ink_box: (
            (x0 as f64 * shrink) as u32,
            (y0 as f64 * shrink) as u32,
            (x1 as f64 * shrink).ceil() as u32,
            (y1 as f64 * shrink).ceil() as u32,
        ),
    })
}

/// The preprocessed digit as an image (to save what the network saw).
pub fn to_gray_image(p: &Preprocessed) -> GrayImage {
    GrayImage::from_raw(p.side as u32, p.side as u32, p.pixels.clone()).expect("side * side pixels")
}
