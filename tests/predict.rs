//! Preprocessing of a user's images and `convnet predict`, on images made here: digits
//! rendered from fonts, drawn strokes, inverted, off-centre, noisy, framed, transparent,
//! in PNG (8 and 16 bit) and JPEG, of many sizes. Ends with a model trained on MNIST
//! classifying them.

use ab_glyph::FontRef;
use convnet::data::preprocess::{preprocess, preprocess_file};
use image::{DynamicImage, Rgba, RgbaImage};
use std::path::Path;
use std::process::Command;

#[path = "common/glyph.rs"]
mod glyph;
use glyph::render;

const BIN: &str = env!("CARGO_BIN_EXE_convnet");

fn fonts() -> Vec<(&'static str, FontRef<'static>)> {
    [
        ("sans", dejavu::sans::regular()),
        ("sans-bold", dejavu::sans::bold()),
        ("serif", dejavu::serif::regular()),
        ("mono", dejavu::sans_mono::regular()),
    ]
    .into_iter()
    .map(|(n, b)| (n, FontRef::try_from_slice(b).unwrap()))
    .collect()
}

const BLACK: [u8; 4] = [0, 0, 0, 255];
const WHITE: [u8; 4] = [255, 255, 255, 255];

fn centre_of_mass(p: &[u8], side: usize) -> (f64, f64) {
    let (mut m, mut x, mut y) = (0.0, 0.0, 0.0);
    for (i, &v) in p.iter().enumerate() {
        let v = v as f64;
        m += v;
        x += v * ((i % side) as f64 + 0.5);
        y += v * ((i / side) as f64 + 0.5);
    }
    (x / m, y / m)
}

fn ink_extent(p: &[u8], side: usize) -> (usize, usize) {
    let on: Vec<usize> = (0..p.len()).filter(|&i| p[i] > 40).collect();
    let xs = on.iter().map(|i| i % side);
    let ys = on.iter().map(|i| i / side);
    (
        xs.clone().max().unwrap() - xs.min().unwrap() + 1,
        ys.clone().max().unwrap() - ys.min().unwrap() + 1,
    )
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn an_off_centre_digit_is_cropped_scaled_to_20px_and_centred() {
    let f = &fonts()[0].1;
    let img = render('7', f, 60.0, (400, 300), (300.0, 20.0), BLACK, WHITE);
    let p = preprocess(&DynamicImage::ImageRgba8(img), 28).unwrap();
    assert!(p.inverted);
    let (cx, cy) = centre_of_mass(&p.pixels, 28);
    assert!(
        (cx - 14.0).abs() <= 1.0 && (cy - 14.0).abs() <= 1.0,
        "centre of mass ({cx}, {cy})"
    );
    let (w, h) = ink_extent(&p.pixels, 28);
    assert!(w.max(h) >= 19 && w.max(h) <= 21, "ink extent {w}x{h}");
    assert!(
        p.ink_box.0 >= 295 && p.ink_box.2 <= 345,
        "ink box {:?}",
        p.ink_box
    );
    assert_eq!(*p.pixels.iter().max().unwrap(), 255);
    assert_eq!(p.pixels[0], 0);
}

#[test]
fn inverted_and_transparent_inputs_give_the_same_digit() {
    let f = &fonts()[1].1;
    let base = preprocess(
        &DynamicImage::ImageRgba8(render('3', f, 80.0, (120, 140), (20.0, 10.0), BLACK, WHITE)),
        28,
    )
    .unwrap();
    let inverted = preprocess(
        &DynamicImage::ImageRgba8(render('3', f, 80.0, (120, 140), (20.0, 10.0), WHITE, BLACK)),
        28,
    )
    .unwrap();
    assert!(!inverted.inverted);
    // A canvas export: transparent background, opaque black ink.
    let transparent = render('3', f, 80.0, (120, 140), (20.0, 10.0), BLACK, [0, 0, 0, 0]);
    let transparent = preprocess(&DynamicImage::ImageRgba8(transparent), 28).unwrap();
    assert!(transparent.inverted, "transparent composites onto white");
    assert!(mean_abs_diff(&base.pixels, &inverted.pixels) < 2.0);
    assert!(mean_abs_diff(&base.pixels, &transparent.pixels) < 2.0);
}

#[test]
fn specks_grey_paper_and_a_frame_do_not_move_the_box() {
    let f = &fonts()[0].1;
    let clean = render('5', f, 70.0, (200, 160), (60.0, 30.0), BLACK, WHITE);
    let want = preprocess(&DynamicImage::ImageRgba8(clean.clone()), 28).unwrap();
    // Grey, unevenly lit paper; a dark frame along the edge; two stray specks.
    let mut noisy = clean;
    for (x, y, p) in noisy.enumerate_pixels_mut() {
        let shade = 200.0 + 30.0 * (x as f32 / 200.0) - 10.0 * (y as f32 / 160.0);
        for k in 0..3 {
            p.0[k] = (p.0[k] as f32 * shade / 255.0).round() as u8;
        }
        if x < 3 || y < 3 || x >= 197 || y >= 157 {
            p.0 = [60, 60, 60, 255];
        }
    }
    for (x, y) in [(15u32, 140u32), (180, 20)] {
        noisy.put_pixel(x, y, Rgba(BLACK));
        noisy.put_pixel(x + 1, y, Rgba(BLACK));
    }
    let got = preprocess(&DynamicImage::ImageRgba8(noisy), 28).unwrap();
    assert_eq!(
        got.ink_box, want.ink_box,
        "the box follows the digit, not the frame or the specks"
    );
    assert!(
        mean_abs_diff(&got.pixels, &want.pixels) < 8.0,
        "{}",
        mean_abs_diff(&got.pixels, &want.pixels)
    );
}

#[test]
fn blank_unreadable_and_absurd_files_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.png");
    RgbaImage::from_pixel(50, 50, Rgba(WHITE))
        .save(&blank)
        .unwrap();
    let msg = preprocess_file(&blank, 28).unwrap_err().to_string();
    assert!(msg.contains("blank.png") && msg.contains("no ink"), "{msg}");
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let msg = preprocess_file(&junk, 28).unwrap_err().to_string();
    assert!(
        msg.contains("junk.png") && msg.contains("cannot be decoded"),
        "{msg}"
    );
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, b"hello").unwrap();
    let msg = preprocess_file(&text, 28).unwrap_err().to_string();
    assert!(
        msg.contains("notes.txt") && msg.contains("PNG or JPEG"),
        "{msg}"
    );
    let huge = dir.path().join("huge.png");
    image::GrayImage::new(13_000, 1).save(&huge).unwrap();
    let msg = preprocess_file(&huge, 28).unwrap_err().to_string();
    assert!(
        msg.contains("huge.png") && msg.contains("too large"),
        "{msg}"
    );
}

#[test]
fn sixteen_bit_png_and_jpeg_read_like_eight_bit_png() {
    let f = &fonts()[0].1;
    let img = render('2', f, 90.0, (150, 150), (30.0, 10.0), BLACK, WHITE);
    let dir = tempfile::tempdir().unwrap();
    let p8 = dir.path().join("d8.png");
    let p16 = dir.path().join("d16.png");
    let jpg = dir.path().join("d.jpg");
    DynamicImage::ImageRgba8(img.clone())
        .to_luma8()
        .save(&p8)
        .unwrap();
    DynamicImage::ImageRgba8(img.clone())
        .to_luma16()
        .save(&p16)
        .unwrap();
    DynamicImage::ImageRgba8(img).to_rgb8().save(&jpg).unwrap();
    let a = preprocess_file(&p8, 28).unwrap();
    assert!(mean_abs_diff(&a.pixels, &preprocess_file(&p16, 28).unwrap().pixels) < 1.0);
    assert!(mean_abs_diff(&a.pixels, &preprocess_file(&jpg, 28).unwrap().pixels) < 6.0);
}

/// A hand-drawn-like "1": a thick slanted stroke, as a mouse would draw it.
fn stroke_one(size: u32) -> RgbaImage {
    let mut img = RgbaImage::from_pixel(size, size, Rgba(WHITE));
    let s = size as f32;
    for t in 0..400 {
        let t = t as f32 / 400.0;
        let (cx, cy) = (0.55 * s - 0.1 * s * t, 0.15 * s + 0.7 * s * t);
        let r = s * 0.04;
        for y in (cy - r) as i32..=(cy + r) as i32 {
            for x in (cx - r) as i32..=(cx + r) as i32 {
                if ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)) <= r * r
                    && x >= 0
                    && y >= 0
                    && x < size as i32
                    && y < size as i32
                {
                    img.put_pixel(x as u32, y as u32, Rgba(BLACK));
                }
            }
        }
    }
    img
}

/// Writes one image per (font, digit, variant) and returns (path, digit).
fn make_test_images(dir: &Path) -> Vec<(std::path::PathBuf, usize)> {
    let mut out = Vec::new();
    for (fname, font) in fonts() {
        for d in 0..10u8 {
            let c = (b'0' + d) as char;
            let variants: Vec<(&str, RgbaImage)> = vec![
                (
                    "plain",
                    render(c, &font, 100.0, (140, 140), (25.0, 5.0), BLACK, WHITE),
                ),
                (
                    "inverted",
                    render(c, &font, 100.0, (140, 140), (25.0, 5.0), WHITE, BLACK),
                ),
                (
                    "offcentre-large",
                    render(c, &font, 120.0, (640, 480), (420.0, 300.0), BLACK, WHITE),
                ),
                (
                    "small",
                    render(c, &font, 24.0, (40, 40), (8.0, 3.0), BLACK, WHITE),
                ),
                (
                    "transparent",
                    render(
                        c,
                        &font,
                        90.0,
                        (128, 128),
                        (30.0, 10.0),
                        [20, 20, 120, 255],
                        [0, 0, 0, 0],
                    ),
                ),
            ];
            for (v, mut img) in variants {
                if v == "plain" {
                    // Salt noise: scattered dark specks.
                    for i in 0..12u32 {
                        img.put_pixel((i * 37) % 140, (i * 53 + 7) % 140, Rgba(BLACK));
                    }
                }
                let path = dir.join(format!("{fname}-{d}-{v}.png"));
                img.save(&path).unwrap();
                out.push((path, d as usize));
            }
        }
    }
    let one = dir.join("stroke-1.png");
    stroke_one(300).save(&one).unwrap();
    out.push((one, 1));
    out
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn a_model_trained_on_mnist_reads_rendered_and_drawn_digits() {
    let data = std::env::var("CONVNET_DATA").expect("CONVNET_DATA must point at the data sets");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = Command::new(BIN)
        .args([
            "train",
            "--epochs",
            "3",
            "--no-plot",
            "--out",
            run.to_str().unwrap(),
            "--data",
            &data,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let images = make_test_images(dir.path());
    let pre = dir.path().join("seen");
    let mut args = vec![
        "predict".to_string(),
        "--model".into(),
        run.display().to_string(),
        "--json".into(),
    ];
    args.extend(["--save-preprocessed".into(), pre.display().to_string()]);
    args.extend(images.iter().map(|(p, _)| p.display().to_string()));
    let o = Command::new(BIN).args(&args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut right = 0;
    let mut wrong = Vec::new();
    for ((path, digit), line) in images.iter().zip(out.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["file"], path.display().to_string());
        let top = v["top"][0]["index"].as_u64().unwrap() as usize;
        assert_eq!(v["top"].as_array().unwrap().len(), 3);
        if top == *digit {
            right += 1;
        } else {
            wrong.push(format!(
                "{} -> {top}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    let acc = right as f64 / images.len() as f64;
    println!(
        "rendered/drawn digits: {right}/{} ({:.1}%), wrong: {wrong:?}",
        images.len(),
        100.0 * acc
    );
    assert!(
        acc >= 0.80,
        "{right}/{} right; wrong: {wrong:?}",
        images.len()
    );
    // The saved 28x28 images are what the network saw.
    let seen = image::open(pre.join("sans-3-plain.png")).unwrap();
    assert_eq!((seen.width(), seen.height()), (28, 28));
}

#[test]
fn one_bad_file_does_not_stop_the_others() {
    // Uses a freshly initialised model: this is about the batch behaviour, not accuracy.
    let dir = tempfile::tempdir().unwrap();
    let spec = convnet::ModelSpec::preset("seed-cnn").unwrap();
    let net = convnet::Network::build(&spec).unwrap();
    let model = dir.path().join("m.safetensors");
    convnet::Model::from_network(net, None)
        .save(&model)
        .unwrap();
    let good = dir.path().join("good.png");
    render(
        '4',
        &fonts()[0].1,
        60.0,
        (80, 80),
        (15.0, 5.0),
        BLACK,
        WHITE,
    )
    .save(&good)
    .unwrap();
    let blank = dir.path().join("blank.png");
    RgbaImage::from_pixel(30, 30, Rgba(WHITE))
        .save(&blank)
        .unwrap();
    let missing = dir.path().join("missing.png");
    let o = Command::new(BIN)
        .args([
            "predict",
            "--model",
            model.to_str().unwrap(),
            good.to_str().unwrap(),
            blank.to_str().unwrap(),
            missing.to_str().unwrap(),
            good.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with(&format!("{}: ", good.display())) && lines[0].contains('%'),
        "{out}"
    );
    assert!(
        lines[1].contains("blank.png: error:") && lines[1].contains("no ink"),
        "{out}"
    );
    assert!(lines[2].contains("missing.png: error:"), "{out}");
    assert!(lines[3].contains('%'), "{out}");
    assert_eq!(o.status.code(), Some(3), "a bad image file is a data error");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("2 of 4 files could not be"), "{err}");
    assert!(
        err.contains("blank.png: could not be classified")
            && !err.contains(&*good.display().to_string()),
        "names the first file that failed, not the first given: {err}"
    );
}

#[test]
fn products_fill_the_frame_as_in_fashion_mnist() {
    use convnet::data::preprocess::{preprocess_as, Style};
    // A dark "bag": a filled rectangle, wider than tall, on white.
    let mut img = RgbaImage::from_pixel(300, 200, Rgba(WHITE));
    for y in 60..140 {
        for x in 40..240 {
            img.put_pixel(x, y, Rgba([40, 40, 40, 255]));
        }
    }
    let p = preprocess_as(&DynamicImage::ImageRgba8(img.clone()), 28, Style::Product).unwrap();
    let (w, h) = ink_extent(&p.pixels, 28);
    assert_eq!(w, 28, "the longest side fills the frame");
    assert!((10..=12).contains(&h), "aspect ratio kept: {w}x{h}");
    let d = preprocess_as(&DynamicImage::ImageRgba8(img), 28, Style::Digit).unwrap();
    assert!(
        ink_extent(&d.pixels, 28).0 <= 21,
        "a digit stays in its 20 px box"
    );
}
