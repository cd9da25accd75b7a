//! The weight gradient of a 3x3, stride-1 convolution as Winograd F(2x2, 3x3) or, where
//! it takes at most 2/3 of the products (`Tile::four_pays_for_weight_grad`), F(4x4, 3x3),
//! with the tiles as the contraction and the output channels in the vector lanes. `conv.rs` uses it
//! where the output channels fill whole vectors; `conv_direct.rs` keeps the exact shifted
//! dots (and `lane_dots`) it replaces, and `nn::Conv2d` is the reference.
//!
//! The forward pass is `Y = A^T [U ⊙ V] A` per tile (`winograd.rs`), so per tile the
//! gradient of `U` is `D ⊙ V` with `D = A dY A^T` (4x4, from the tile's 2x2 output
//! gradient), and summed over the tiles of a chunk:
//!
//! ```text
//! dU[ξ] (C, O) = sum over tiles t of V[ξ][c][t] * D[ξ][t][o],    dW = G^T dU G (3x3)
//! ```
//!
//! 16 products of C x O over the tiles instead of the direct path's 9 over 4x as many
//! positions: 2.25x fewer multiplications. `V` is the forward pass's input transform, a
//! channel's tiles in a row (broadcast one at a time); `D` is made from the output gradient
//! transposed to one row of channels per position, so each tile's `D[ξ][t]` is whole
//! vectors of output channels. Each (input channel block, output vector block) keeps its
//! sums in registers over a group of images' tiles.
//!
//! F(4x4) is the same with 6x6 `U`, `V` and `D` (`D = A dY A^T` from a 4x4 output-gradient
//! tile, `A` and `G` in `winograd4.rs`): 36 products over 4x fewer tiles than F(2x2)'s 16,
//! 0.56x the products on cnn-plus's 28x28 planes and 0.73x on its 14x14.
//!
//! The sums run in another order than the direct dots, so results differ from them in the
//! last bits; the tests bound the difference against the f64 reference: F(2x2) at the
//! tolerance of every other gradient path (1e-4, measured up to 2.3e-5), F(4x4), whose
//! larger transform constants cost precision, at 4e-4 (measured up to 1.3e-4 on a 28x28
//! plane; relative to 1 + |dw|).

use super::conv_direct::broadcast_dots;
use super::grow;
use super::simd::{self, call_isa_copy, isa_copies, round_up, Isa, Lanes, MAX_LANES};
use super::winograd::{aligned, input_kernel, Source, Tile};
use std::cell::RefCell;

thread_local! {
    /// Each worker thread's transformed inputs `V`, transformed gradients `D`, transposed
    /// output gradient (at the end, the finished (C * 9, O) sums) and sums `dU`: reused by
    /// every chunk the thread runs.
    static BUFFERS: RefCell<[Vec<f32>; 4]> =
        const { RefCell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()]) };
}

/// Tiles a group of images should have at least before its products run: enough for the
/// sums held in registers to pay for loading and storing them. F(4x4)'s tiles are 2.25
/// times larger: the same count would make `V` and `D` 2.25 times larger too.
fn group_tiles(tile: Tile) -> usize {
    match tile {
        Tile::F2 => 192,
        Tile::F4 => 96,
    }
}

/// The weight gradient `dw` (O, C, 3, 3) of a 3x3 stride-1 convolution over `images`
/// images: image `i`'s `planes` padded input planes at `x` from `src` moved on by
/// `i * x_image` (with room after the last one for whole-vector reads:
/// `winograd::convolve_room`), its `outs` output-gradient planes at `dy` from `dys` moved
/// on by `i * dy_image`, each `out` = (height, width) values in rows `dys.row` apart, zero
/// past each row's width (the wide layout). `outs` is a whole number of vectors of `isa`.
/// `tile`: F(2x2, 3x3) or F(4x4, 3x3), whose tiles may hang over the plane's end as in the
/// forward pass (`winograd4.rs`): 2.25 products an output instead of 4.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad(
    isa: Isa,
    tile: Tile,
    images: usize,
    (x, src, x_image): (&[f32], Source, usize),
    planes: usize,
    (dy, dys, dy_image): (&[f32], Source, usize),
    outs: usize,
    out: (usize, usize),
    dw: &mut [f32],
) {
    assert_eq!(
        dw.len(),
        outs * planes * 9,
        "weight gradient is not (O, C, 3, 3)"
    );
    assert!(outs.is_multiple_of(isa.lanes()), "outputs in whole vectors");
    assert!(
        dys.row > out.1,
        "the gradient rows need a zero past the width"
    );
    let positions = tile.positions();
    let grid = tile.grid(out.0, out.1);
    let per_image = grid.0 * grid.1;
    let values = out.0 * dys.row;
    if images == 0 || per_image == 0 || planes == 0 || outs == 0 {
        dw.fill(0.0);
        return;
    }
    let group = group_tiles(tile).div_ceil(per_image).clamp(1, images);
    let pairs = planes * outs;
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        let [v, d, dyt, du] = &mut *b;
        let most = group * per_image;
        let ld = round_up(most);
        let (vstride, dstride) = (planes * ld + MAX_LANES, most * outs + MAX_LANES);
        grow(v, positions * vstride + MAX_LANES);
        grow(d, positions * dstride + MAX_LANES);
        grow(dyt, (values * outs).max(9 * pairs) + MAX_LANES);
        grow(du, positions * pairs + MAX_LANES);
        let (v, d, dyt, du) = (aligned(v), aligned(d), aligned(dyt), aligned(du));
        let du = &mut du[..positions * pairs];
        du.fill(0.0);
        let mut first = 0;
        while first < images {
            let count = group.min(images - first);
            for i in 0..count {
                let s = Source {
                    start: src.start + (first + i) * x_image,
                    ..src
                };
                let vs = (&mut *v, ld, vstride);
                input_kernel(isa, tile, x, s, planes, out, vs, i * per_image);
                let at = dys.start + (first + i) * dy_image;
                let rows = (&dy[at..], dys.plane);
                simd::transpose_strided(Some(isa), rows, outs, values, (dyt, outs));
                let t0 = i * per_image;
                match tile {
                    Tile::F2 => grad_kernel(isa, dyt, outs, dys.row, grid, out.0, (d, dstride), t0),
                    Tile::F4 => grad4_kernel(isa, dyt, outs, dys.row, out, (d, dstride), t0),
                }
            }
            products(
                isa,
                positions,
                (v, ld, vstride),
                planes,
                (d, dstride),
                outs,
                count * per_image,
                du,
            );
            first += count;
        }
        // dW = G^T dU G per (output, input) channel pair, as (C * 9, O) with the output
        // channels in the lanes, then transposed into (O, C, 3, 3).
        let dwt = &mut dyt[..9 * pairs];
        finish(isa, tile, du, planes, outs, dwt);
        simd::transpose(Some(isa), dwt, planes * 9, outs, dw);
    });
}

/// `dwt[(c * 9 + k) * outs + o] = (G^T dU G)[k]` for each pair's sums `du[ξ][c][o]`
/// (rows of `outs`, position blocks of `planes * outs`): 4x4 for F(2x2), 6x6 for F(4x4)
/// (`G` in `winograd4.rs`).
fn finish(isa: Isa, tile: Tile, du: &[f32], planes: usize, outs: usize, dwt: &mut [f32]) {
    assert!(du.len() >= tile.positions() * planes * outs && dwt.len() >= 9 * planes * outs);
    assert!(outs.is_multiple_of(isa.lanes()));
    // SAFETY: the reads and writes stay within the lengths checked above.
    unsafe {
        let args = (du.as_ptr(), planes, outs, dwt.as_mut_ptr());
        match tile {
            Tile::F2 => call_isa_copy!(isa, finish_avx512, finish_avx2(args)),
            Tile::F4 => call_isa_copy!(isa, finish4_avx512, finish4_avx2(args)),
        }
    }
}

isa_copies!(finish_avx512, finish_avx2 = finish_sums(args: (*const f32, usize, usize, *mut f32)));

#[inline(always)]
unsafe fn finish_sums<S: Lanes>((du, planes, outs, dwt): (*const f32, usize, usize, *mut f32)) {
    let pairs = planes * outs;
    let (zero, half) = (S::zero(), S::splat(0.5));
    // Plain loops and indexing, no closures: a closure (or `array::from_fn`) the compiler
    // keeps out of line is compiled without the caller's instruction set, and each vector
    // operation in it becomes a call.
    for c in 0..planes {
        for j in (0..outs).step_by(S::LANES) {
            let at = du.add(c * outs + j);
            // G^T down the columns: u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3;
            // then the same along each row.
            let mut t = [[zero; 4]; 3];
            #[allow(clippy::needless_range_loop)] // k indexes t's inner arrays
            for k in 0..4 {
                let u0 = S::load(at.add(k * pairs));
                let u1 = S::load(at.add((4 + k) * pairs));
                let u2 = S::load(at.add((8 + k) * pairs));
                let u3 = S::load(at.add((12 + k) * pairs));
                let s = S::add(u1, u2);
                t[0][k] = S::fma(half, s, u0);
                t[1][k] = S::fma(half, S::sub(u1, u2), zero);
                t[2][k] = S::fma(half, s, u3);
            }
            for (a, t) in t.iter().enumerate() {
                let out = dwt.add((c * 9 + a * 3) * outs + j);
                let s = S::add(t[1], t[2]);
                S::store(out, S::fma(half, s, t[0]));
                S::store(out.add(outs), S::fma(half, S::sub(t[1], t[2]), zero));
                S::store(out.add(2 * outs), S::fma(half, s, t[3]));
            }
        }
    }
}

/// `D[ξ][t0 + t][o] = (A dY_t A^T)[ξ]` into `d` (positions `ξ` `dstride` apart, rows of
/// `outs`) for every 2x2 output tile `t` of one image, from its output gradient `dyt`
/// transposed to one row of `outs` channels per position (positions in rows of `row`;
/// zero past each row's width). A last tile row half below the plane takes zeros.
#[allow(clippy::too_many_arguments)]
fn grad_kernel(
    isa: Isa,
    dyt: &[f32],
    outs: usize,
    row: usize,
    grid: (usize, usize),
    out_h: usize,
    (d, dstride): (&mut [f32], usize),
    t0: usize,
) {
    let (th, tw) = grid;
    assert!(2 * tw <= row && out_h <= 2 * th && dyt.len() >= out_h * row * outs);
    assert!(d.len() >= 15 * dstride + (t0 + th * tw) * outs && (t0 + th * tw) * outs <= dstride);
    // SAFETY: the reads stay within `out_h` rows of `row` positions (checked above, and a
    // tile's second row only when it is below `out_h`), the writes within the 16 rows.
    unsafe {
        let args = (
            dyt.as_ptr(),
            outs,
            row,
            grid,
            out_h,
            d.as_mut_ptr(),
            dstride,
            t0,
        );
        call_isa_copy!(isa, grad_avx512, grad_avx2(args))
    }
}

type GradArgs = (
    *const f32,
    usize,
    usize,
    (usize, usize),
    usize,
    *mut f32,
    usize,
    usize,
);

isa_copies!(grad_avx512, grad_avx2 = grad_tiles(args: GradArgs));

#[inline(always)]
unsafe fn grad_tiles<S: Lanes>(args: GradArgs) {
    let (dyt, outs, row, (th, tw), out_h, d, dstride, t0) = args;
    let zero = S::zero();
    for ty in 0..th {
        let second = 2 * ty + 1 < out_h;
        for tx in 0..tw {
            let p = dyt.add((2 * ty * row + 2 * tx) * outs);
            let t = d.add((t0 + ty * tw + tx) * outs);
            for j in (0..outs).step_by(S::LANES) {
                let (a, b) = (S::load(p.add(j)), S::load(p.add(outs + j)));
                let (c, e) = if second {
                    let q = p.add(row * outs + j);
                    (S::load(q), S::load(q.add(outs)))
                } else {
                    (zero, zero)
                };
                // A dY: rows (a, b), (a + c, b + e), (a - c, b - e), (-c, -e); then each
                // row (x, y) times A^T: x, x + y, x - y, -y.
                let rows = [
                    (a, b),
                    (S::add(a, c), S::add(b, e)),
                    (S::sub(a, c), S::sub(b, e)),
                    (S::sub(zero, c), S::sub(zero, e)),
                ];
                for (i, (x, y)) in rows.into_iter().enumerate() {
                    let cols = [x, S::add(x, y), S::sub(x, y), S::sub(zero, y)];
                    for (k, v) in cols.into_iter().enumerate() {
                        let at = t.add((4 * i + k) * dstride + j);
                        S::store(at, v);
                    }
                }
            }
        }
    }
}

/// F(4x4)'s `D[ξ][t0 + t][o] = (A dY_t A^T)[ξ]` (6x6, from a 4x4 output-gradient tile;
/// `A^T` in `winograd4.rs`) into `d` as `grad_kernel` does, for every tile of one image's
/// `out` plane; a tile hanging over the plane's end takes zeros past it.
fn grad4_kernel(
    isa: Isa,
    dyt: &[f32],
    outs: usize,
    row: usize,
    out: (usize, usize),
    (d, dstride): (&mut [f32], usize),
    t0: usize,
) {
    let (th, tw) = Tile::F4.grid(out.0, out.1);
    assert!(out.1 <= row && dyt.len() >= out.0 * row * outs);
    assert!(d.len() >= 35 * dstride + (t0 + th * tw) * outs && (t0 + th * tw) * outs <= dstride);
    // SAFETY: the reads stay within the plane's `out` positions in rows of `row` (checked
    // above), the writes within the 36 rows.
    unsafe {
        let args = (dyt.as_ptr(), outs, row, out, d.as_mut_ptr(), dstride, t0);
        call_isa_copy!(isa, grad4_avx512, grad4_avx2(args))
    }
}

type Grad4Args = (
    *const f32,
    usize,
    usize,
    (usize, usize),
    *mut f32,
    usize,
    usize,
);

isa_copies!(grad4_avx512, grad4_avx2 = grad4_tiles(args: Grad4Args));

/// `A` (6x4) times four vectors: `y0`, `y0 + y1 + y2 + y3`, `y0 - y1 + y2 - y3`,
/// `y0 + 2 y1 + 4 y2 + 8 y3`, `y0 - 2 y1 + 4 y2 - 8 y3`, `y3`.
#[inline(always)]
unsafe fn a_times<S: Lanes>([y0, y1, y2, y3]: [S::V; 4]) -> [S::V; 6] {
    let (e, o) = (S::add(y0, y2), S::add(y1, y3));
    let e4 = S::fma(S::splat(4.0), y2, y0);
    let o2 = S::fma(S::splat(8.0), y3, S::add(y1, y1));
    [
        y0,
        S::add(e, o),
        S::sub(e, o),
        S::add(e4, o2),
        S::sub(e4, o2),
        y3,
    ]
}

#[inline(always)]
unsafe fn grad4_tiles<S: Lanes>(args: Grad4Args) {
    let (dyt, outs, row, (oh, ow), d, dstride, t0) = args;
    let (th, tw) = (oh.div_ceil(4), ow.div_ceil(4));
    let zero = S::zero();
    for ty in 0..th {
        let rows = (oh - 4 * ty).min(4);
        for tx in 0..tw {
            let cols = (ow - 4 * tx).min(4);
            let p = dyt.add((4 * ty * row + 4 * tx) * outs);
            let t = d.add((t0 + ty * tw + tx) * outs);
            for j in (0..outs).step_by(S::LANES) {
                // A down each of the tile's four columns: s[b][i]; zeros past the plane.
                let mut s = [[zero; 6]; 4];
                for (b, s) in s.iter_mut().enumerate().take(cols) {
                    let mut y = [zero; 4];
                    for (a, y) in y.iter_mut().enumerate().take(rows) {
                        *y = S::load(p.add((a * row + b) * outs + j));
                    }
                    *s = a_times::<S>(y);
                }
                // Then along each row: D[i][k].
                #[allow(clippy::needless_range_loop)] // i indexes s's inner arrays
                for i in 0..6 {
                    let r = a_times::<S>([s[0][i], s[1][i], s[2][i], s[3][i]]);
                    for (k, &v) in r.iter().enumerate() {
                        S::store(t.add((6 * i + k) * dstride + j), v);
                    }
                }
            }
        }
    }
}

isa_copies!(finish4_avx512, finish4_avx2 = finish4_sums(args: (*const f32, usize, usize, *mut f32)));

/// `G^T` (3x6) times six vectors: `u0 / 4 - (u1 + u2) / 6 + (u3 + u4) / 24`,
/// `(u2 - u1) / 6 + (u3 - u4) / 12`, `(u3 + u4 - u1 - u2) / 6 + u5`.
#[inline(always)]
unsafe fn gt_times<S: Lanes>([u0, u1, u2, u3, u4, u5]: [S::V; 6]) -> [S::V; 3] {
    let (s12, s34) = (S::add(u1, u2), S::add(u3, u4));
    let (d21, d34) = (S::sub(u2, u1), S::sub(u3, u4));
    let (sixth, zero) = (S::splat(1.0 / 6.0), S::zero());
    let r0 = S::fma(
        S::splat(1.0 / 24.0),
        s34,
        S::fma(S::splat(-1.0 / 6.0), s12, S::fma(S::splat(0.25), u0, zero)),
    );
    let r1 = S::fma(S::splat(1.0 / 12.0), d34, S::fma(sixth, d21, zero));
    let r2 = S::fma(sixth, S::sub(s34, s12), u5);
    [r0, r1, r2]
}

#[inline(always)]
unsafe fn finish4_sums<S: Lanes>((du, planes, outs, dwt): (*const f32, usize, usize, *mut f32)) {
    let pairs = planes * outs;
    let zero = S::zero();
    // Plain loops and indexing, no closures (as `finish_sums`).
    for c in 0..planes {
        for j in (0..outs).step_by(S::LANES) {
            let at = du.add(c * outs + j);
            // G^T down each of the six columns: t[k][a].
            let mut t = [[zero; 3]; 6];
            for (k, t) in t.iter_mut().enumerate() {
                let mut u = [zero; 6];
                for (i, u) in u.iter_mut().enumerate() {
                    *u = S::load(at.add((6 * i + k) * pairs));
                }
                *t = gt_times::<S>(u);
            }
            // Then along each row.
            #[allow(clippy::needless_range_loop)] // a indexes t's inner arrays
            for a in 0..3 {
                let r = gt_times::<S>([t[0][a], t[1][a], t[2][a], t[3][a], t[4][a], t[5][a]]);
                for (b, &v) in r.iter().enumerate() {
                    S::store(dwt.add((c * 9 + a * 3 + b) * outs + j), v);
                }
            }
        }
    }
}

/// `du[ξ][c][o] += sum over t < n of V[ξ][c][t] * D[ξ][t][o]` for the `positions` `ξ`
/// (16 or 36; `du` rows of `outs`, position blocks of `planes * outs`).
#[allow(clippy::too_many_arguments)]
fn products(
    isa: Isa,
    positions: usize,
    (v, ld, vstride): (&[f32], usize, usize),
    planes: usize,
    (d, dstride): (&[f32], usize),
    outs: usize,
    n: usize,
    du: &mut [f32],
) {
    let last = positions - 1;
    assert!(n <= ld && planes * ld <= vstride && v.len() >= last * vstride + planes * ld);
    assert!(n * outs <= dstride && d.len() >= last * dstride + n * outs);
    assert!(du.len() >= positions * planes * outs && outs.is_multiple_of(isa.lanes()));
    // SAFETY: every read and write stays within the bounds checked above.
    unsafe {
        let args = (
            v.as_ptr(),
            ld,
            vstride,
            planes,
            d.as_ptr(),
            dstride,
            outs,
            n,
        );
        let du = (du.as_mut_ptr(), positions);
        call_isa_copy!(isa, products_avx512, products_avx2(args, du))
    }
}

type ProductArgs = (
    *const f32,
    usize,
    usize,
    usize,
    *const f32,
    usize,
    usize,
    usize,
);

isa_copies!(products_avx512, products_avx2 = product_blocks(a: ProductArgs, du: (*mut f32, usize)));

/// Input channels per block (broadcast), each against one or two vectors of output
/// channels: up to 16 sums in registers.
const ROWS: usize = 8;

/// Input channels per block against four vectors of output channels, where the outputs
/// come in fours of 16 (conv3's 64): 24 sums, each output vector loaded once per 6
/// broadcasts instead of 8 per 2 x 8 (that product's share of a cnn-plus training profile
/// 9.1-9.3% -> 8.6-8.7%, two alternating pairs).
const QUAD_ROWS: usize = 6;

#[inline(always)]
unsafe fn product_blocks<S: Lanes>(a: ProductArgs, (du, positions): (*mut f32, usize)) {
    let (v, ld, vstride, planes, d, dstride, outs, n) = a;
    let vectors = outs / S::LANES;
    let quad = S::LANES == 16 && vectors.is_multiple_of(4);
    for xi in 0..positions {
        let (v, d) = (v.add(xi * vstride), d.add(xi * dstride));
        let du = du.add(xi * planes * outs);
        let mut c = 0;
        while c < planes {
            let rows = if quad { QUAD_ROWS } else { ROWS }.min(planes - c);
            let mut j = 0;
            while j < vectors {
                let (vc, dj) = (v.add(c * ld), d.add(j * S::LANES));
                let out = du.add(c * outs + j * S::LANES);
                let width = match vectors - j {
                    _ if quad => 4,
                    2.. if S::LANES == 16 => 2,
                    _ => 1,
                };
                match width {
                    4 => block_rows::<S, 4>(rows, vc, ld, dj, outs, n, out),
                    2 => block_rows::<S, 2>(rows, vc, ld, dj, outs, n, out),
                    _ => block_rows::<S, 1>(rows, vc, ld, dj, outs, n, out),
                }
                j += width;
            }
            c += rows;
        }
    }
}

/// `rows` (at most `ROWS`; `QUAD_ROWS` against 4 vectors, whose 7- and 8-row arms never
/// run) input channels of `v` (`ld` apart) against `V` vectors of output channels of `d`
/// over `n` tiles, into the sums `du` (rows `outs` apart).
#[inline(always)]
unsafe fn block_rows<S: Lanes, const V: usize>(
    rows: usize,
    v: *const f32,
    ld: usize,
    d: *const f32,
    outs: usize,
    n: usize,
    du: *mut f32,
) {
    match rows {
        8 => broadcast_dots::<S, 8, V>(v, &rows_apart(ld), d, outs, n, du),
        7 => broadcast_dots::<S, 7, V>(v, &rows_apart(ld), d, outs, n, du),
        6 => broadcast_dots::<S, 6, V>(v, &rows_apart(ld), d, outs, n, du),
        5 => broadcast_dots::<S, 5, V>(v, &rows_apart(ld), d, outs, n, du),
        4 => broadcast_dots::<S, 4, V>(v, &rows_apart(ld), d, outs, n, du),
        3 => broadcast_dots::<S, 3, V>(v, &rows_apart(ld), d, outs, n, du),
        2 => broadcast_dots::<S, 2, V>(v, &rows_apart(ld), d, outs, n, du),
        _ => broadcast_dots::<S, 1, V>(v, &rows_apart(ld), d, outs, n, du),
    }
}

/// The offsets of `R` rows `ld` apart.
#[inline(always)]
fn rows_apart<const R: usize>(ld: usize) -> [usize; R] {
    std::array::from_fn(|i| i * ld)
}
