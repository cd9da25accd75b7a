//! Writes a few digit images of the awkward kinds users give `convnet predict`:
//! dark-on-light, light-on-dark, off-centre on a big canvas, a transparent canvas export,
//! and grey paper with a frame and specks.
//!
//! cargo run --release --example draw_digits -- OUT_DIR

use ab_glyph::FontRef;
use glyph::render;

#[path = "../tests/common/glyph.rs"]
mod glyph;

fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "digits".into()));
    std::fs::create_dir_all(&out).expect("create the output folder");
    let sans = FontRef::try_from_slice(dejavu::sans::bold()).unwrap();
    let serif = FontRef::try_from_slice(dejavu::serif::regular()).unwrap();
    let (black, white) = ([0, 0, 0, 255], [255, 255, 255, 255]);
    let mut framed = render(
        '5',
        &serif,
        150.0,
        (260, 220),
        (80.0, 20.0),
        [30, 30, 30, 255],
        [205, 200, 190, 255],
    );
    for (x, y, p) in framed.enumerate_pixels_mut() {
        if x < 4 || y < 4 || x >= 256 || y >= 216 {
            p.0 = [70, 70, 70, 255];
        }
    }
    for (x, y) in [(30, 190), (220, 40), (40, 40)] {
        framed.put_pixel(x, y, image::Rgba(black));
    }
    let images = [
        (
            "three-dark-on-light",
            render('3', &sans, 200.0, (220, 240), (40.0, 10.0), black, white),
        ),
        (
            "seven-light-on-dark",
            render('7', &serif, 120.0, (160, 160), (40.0, 10.0), white, black),
        ),
        (
            "four-off-centre",
            render(
                '4',
                &sans,
                90.0,
                (800, 600),
                (620.0, 420.0),
                [40, 40, 160, 255],
                white,
            ),
        ),
        (
            "two-transparent",
            render(
                '2',
                &sans,
                100.0,
                (128, 128),
                (30.0, 5.0),
                black,
                [0, 0, 0, 0],
            ),
        ),
        ("five-framed-paper", framed),
    ];
    for (name, img) in images {
        let path = out.join(format!("{name}.png"));
        img.save(&path).expect("write the image");
        println!("{}", path.display());
    }
}
