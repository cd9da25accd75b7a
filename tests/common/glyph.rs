//! Draws a font glyph onto a canvas: the test images of `tests/predict.rs` and the
//! `draw_digits` example share it.

use ab_glyph::{Font, FontRef, PxScale};
use image::{Rgba, RgbaImage};

/// A canvas of `bg` with the glyph `c` drawn in `ink`, its box's top-left at `at`.
pub fn render(
    c: char,
    font: &FontRef,
    px: f32,
    size: (u32, u32),
    at: (f32, f32),
    ink: [u8; 4],
    bg: [u8; 4],
) -> RgbaImage {
    let mut img = RgbaImage::from_pixel(size.0, size.1, Rgba(bg));
    let glyph = font
        .glyph_id(c)
        .with_scale_and_position(PxScale::from(px), ab_glyph::point(at.0, at.1 + px));
    let outline = font.outline_glyph(glyph).expect("digits have outlines");
    let b = outline.px_bounds();
    outline.draw(|x, y, cov| {
        let (x, y) = (x as i64 + b.min.x as i64, y as i64 + b.min.y as i64);
        if x >= 0 && y >= 0 && x < size.0 as i64 && y < size.1 as i64 {
            let p = img.get_pixel_mut(x as u32, y as u32);
            for (v, &i) in p.0.iter_mut().zip(&ink) {
                *v = (*v as f32 * (1.0 - cov) + i as f32 * cov).round() as u8;
            }
        }
    });
    img
}
