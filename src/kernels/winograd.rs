//! Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2015): a 3x3, stride-1 convolution computed 2x2 outputs at a time with 16
//! multiplications per (input, output) channel pair instead of 36. `conv.rs` uses it for
//! the forward pass and input gradient of layers wide enough to pay
//! (`WINOGRAD_MAX_THINNESS` there); `nn::Conv2d` is the reference, and `conv_direct.rs`
//! keeps the exact shifted sums it replaces.
//!
//! Per 4x4 tile `d` of the padded input (tiles 2 apart) and 3x3 kernel `g`:
//!
//! ```text
//! Y (2x2) = A^T [ U ⊙ V ] A,   U = G g G^T (4x4),   V = B^T d B (4x4)
//!
//! B^T = | 1  0 -1  0 |    G = | 1    0    0  |    A^T = | 1  1  1  0 |
//!       | 0  1  1  0 |        | 1/2  1/2  1/2 |          | 0  1 -1 -1 |
//!       | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//!       | 0  1  0 -1 |        | 0    0    1  |
//! ```
//!
//! Summed over input channels, each of the 16 positions `ξ` of the tile is a matrix
//! product, `M[ξ] (O, tiles) = U[ξ] (O, C) . V[ξ] (C, tiles)`, which runs on the direct
//! kernels' `shifted_sum` with one tap. The input gradient of a stride-1 conv with pad
//! `p <= 2` is the same convolution of the output gradient, padded by `2 - p`, with each
//! kernel flipped and the channels swapped (`transform_weights` with `flip`), so it runs
//! through the same three steps. The weight gradient is in `winograd_dw.rs`.
//!
//! The transforms run over tile rows, a row's tiles in the vector lanes; rows of at most half
//! a vector (conv3's 7 tiles) go two to a vector. The input transform writes 16 streams of an
//! L2-sized buffer and asks for their cache lines ahead (`simd::prefetch_write`).
//!
//! The transforms add and subtract in a different order than the direct sums, so results
//! differ from them in the last bits: the tests bound the difference against the f64
//! reference (`nn::Conv2d`) at the same tolerances as every other path (1e-5 forward,
//! 1e-4 gradients).

use super::conv_direct::{shifted_sum, Planes};
use super::simd::{call_isa_copy, isa_copies, prefetch_write, round_up, Isa, Lanes, MAX_LANES};
use super::winograd4;
use std::cell::RefCell;

/// Which Winograd algorithm `convolve` runs: F(2x2, 3x3) (this file) or F(4x4, 3x3)
/// (`winograd4.rs`, for planes it covers with fewer products).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    F2,
    F4,
}

impl Tile {
    /// Outputs along each side of a tile.
    pub fn side(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Values of a transformed tile: products per (input, output) channel pair.
    pub fn positions(self) -> usize {
        (self.side() + 2) * (self.side() + 2)
    }

    /// The tiles covering an `out_h` x `out_w` plane: (tile rows, tile columns).
    pub fn grid(self, out_h: usize, out_w: usize) -> (usize, usize) {
        (out_h.div_ceil(self.side()), out_w.div_ceil(self.side()))
    }

    /// Products per (input, output) channel pair for an `out_h` x `out_w` plane.
    pub fn products(self, out_h: usize, out_w: usize) -> usize {
        let (th, tw) = self.grid(out_h, out_w);
        self.positions() * th * tw
    }

    /// Whether F(4x4) takes fewer products than F(2x2) for an `out_h` x `out_w` plane:
    /// 14x14 576 against 784, 7x7 144 against 256; 5x5 and 6x6 144 each, 1x1 36 against 16.
    pub fn four_pays(out_h: usize, out_w: usize) -> bool {
        Tile::F4.products(out_h, out_w) < Tile::F2.products(out_h, out_w)
    }

    /// Whether the weight gradient should run F(4x4) on an `out_h` x `out_w` plane: only
    /// where it takes at most 2/3 of F(2x2)'s products, since its input transform costs
    /// more per product saved there than in the forward pass (its `V` is made anew, and on
    /// an AMD EPYC, Zen 4, cnn-plus's conv3 at 14x14, 0.73x the products, ran no faster
    /// while conv2 at 28x28, 0.56x, ran 12% faster).
    pub fn four_pays_for_weight_grad(out_h: usize, out_w: usize) -> bool {
        3 * Tile::F4.products(out_h, out_w) <= 2 * Tile::F2.products(out_h, out_w)
    }

    /// The weights' transform (`transform_weights` or F(4x4)'s).
    pub fn transform_weights(
        self,
        w: &[f32],
        out_c: usize,
        in_c: usize,
        flip: bool,
        u: &mut Vec<f32>,
    ) {
        match self {
            Tile::F2 => transform_weights(w, out_c, in_c, flip, u),
            Tile::F4 => winograd4::transform_weights(w, out_c, in_c, flip, u),
        }
    }
}

/// Where one image's zero-padded planes sit in a slice: padded value (row `r`, column
/// `c`) of plane `k` is at `start + k * plane + r * row + c`. The kernels read whole
/// vectors from it, past its last row and column: `convolve` checks that the slice has
/// room. What is read past the padded plane reaches only the outputs past an odd-sized
/// plane's end, which are dropped.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    pub start: usize,
    pub plane: usize,
    pub row: usize,
}

/// Values read per plane from `Source::start + k * plane` by the input transform of a
/// `grid` of tiles with rows `row` apart.
fn reach(grid: (usize, usize), row: usize) -> usize {
    (2 * grid.0 + 1) * row + 2 * round_up(grid.1) + 2 * MAX_LANES + 2
}

/// Whether layers may run as Winograd: yes unless `CONVNET_WINOGRAD=off` (to measure or
/// rule out the path, like `CONVNET_SIMD`). Read once per process.
pub fn allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        let v = std::env::var("CONVNET_WINOGRAD").unwrap_or_default();
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "off" | "0" | "no" | "false"
        )
    })
}

/// Whether planes may run F(4x4, 3x3) where it pays: yes unless `CONVNET_WINOGRAD=f2`
/// (F(2x2, 3x3) everywhere, to measure or rule out the larger tiles). Read once per process.
pub fn four_allowed() -> bool {
    static FOUR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUR.get_or_init(|| {
        let v = std::env::var("CONVNET_WINOGRAD").unwrap_or_default();
        !matches!(v.to_ascii_lowercase().as_str(), "f2" | "2x2")
    })
}

/// `U[ξ][row][col] = (G g G^T)[ξ]` into `u` (16 * O * C values) for every kernel of the
/// weights `w`, (O, C, 3, 3). Forward (`flip` false): rows are the output channels,
/// columns the input channels, `g = w[o][c]`. Input gradient (`flip` true): rows are the
/// input channels, columns the output channels, `g[a][b] = w[o][c][2 - a][2 - b]`.
pub fn transform_weights(w: &[f32], out_c: usize, in_c: usize, flip: bool, u: &mut Vec<f32>) {
    assert_eq!(w.len(), out_c * in_c * 9, "weights are not (O, C, 3, 3)");
    let pairs = out_c * in_c;
    u.clear();
    u.resize(16 * pairs, 0.0);
    for o in 0..out_c {
        for c in 0..in_c {
            let k = &w[(o * in_c + c) * 9..][..9];
            let g = |a: usize, b: usize| {
                if flip {
                    k[(2 - a) * 3 + 2 - b]
                } else {
                    k[a * 3 + b]
                }
            };
            // t = G g (4x3), then U = t G^T (4x4).
            let mut t = [[0.0f32; 3]; 4];
            for (j, _) in [(); 3].iter().enumerate() {
                let (g0, g1, g2) = (g(0, j), g(1, j), g(2, j));
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            let at = if flip { c * out_c + o } else { o * in_c + c };
            for (i, t) in t.iter().enumerate() {
                let row = [
                    t[0],
                    0.5 * (t[0] + t[1] + t[2]),
                    0.5 * (t[0] - t[1] + t[2]),
                    t[2],
                ];
                for (j, v) in row.into_iter().enumerate() {
                    u[(4 * i + j) * pairs + at] = v;
                }
            }
        }
    }
}

/// `V[ξ][k][at + tile] = (B^T d B)[ξ]` (`tile`: F(2x2) here, F(4x4) in `winograd4.rs`)
/// for every tile `d` of plane `k < planes` of the image at `src` (tiles row by row, as
/// many as cover an `out` plane), the planes `ld` apart in `v` and the positions `ξ`
/// `vstride` apart. The padded plane is `out` plus 2 each way; F(4x4) reads zeros past it.
#[allow(clippy::too_many_arguments)]
pub(super) fn input_kernel(
    isa: Isa,
    tile: Tile,
    x: &[f32],
    src: Source,
    planes: usize,
    out: (usize, usize),
    (v, ld, vstride): (&mut [f32], usize, usize),
    at: usize,
) {
    let grid = tile.grid(out.0, out.1);
    let (th, tw) = grid;
    let reach = match tile {
        Tile::F2 => reach(grid, src.row),
        Tile::F4 => winograd4::reach(grid, src.row),
    };
    assert!(planes == 0 || src.start + (planes - 1) * src.plane + reach <= x.len());
    assert!(at + th * tw <= ld && planes * ld <= vstride);
    assert!(v.len() >= tile.positions() * vstride);
    // SAFETY: the reads of `x` stay within `reach` of each plane's start, checked above;
    // every store into `v` is cut at the tile row's end, inside the plane (checked above).
    unsafe {
        let args = (
            x.as_ptr(),
            src,
            planes,
            grid,
            (v.as_mut_ptr(), ld, vstride),
            at,
            (out.0 + 2, out.1 + 2),
        );
        match tile {
            Tile::F2 => call_isa_copy!(isa, input_avx512, input_avx2(args)),
            Tile::F4 => winograd4::input_on(isa, args),
        }
    }
}

pub(super) type InputArgs = (
    *const f32,
    Source,
    usize,
    (usize, usize),
    (*mut f32, usize, usize),
    usize,
    (usize, usize),
);

isa_copies!(input_avx512, input_avx2 = input_tiles(args: InputArgs));

#[inline(always)]
unsafe fn input_tiles<S: Lanes>(args: InputArgs) {
    let tw = args.3 .1;
    if tw <= S::LANES / 2 {
        input_rows::<S, true>(args)
    } else {
        input_rows::<S, false>(args)
    }
}

/// `permute` indices taking lane `from(j)` into lane `j` (clamped to the vector: lanes past
/// the values that matter take any lane).
#[inline(always)]
pub(super) unsafe fn lanes<S: Lanes>(from: impl Fn(usize) -> usize) -> S::Idx {
    // A plain loop: `array::from_fn` was left as a call (0.7% of a cnn-plus training
    // profile, the output transform building three of these per plane).
    let mut idx = [0u32; MAX_LANES];
    for (j, v) in idx.iter_mut().enumerate() {
        *v = from(j).min(S::LANES - 1) as u32;
    }
    S::indices(&idx)
}

/// Lane indices that move lanes `half..half + tw` of a vector holding two tile rows (the
/// second one from lane `half` on) down to `tw..2 tw`, next to the first: the two rows'
/// tiles as they lie in memory.
#[inline(always)]
unsafe fn close_up<S: Lanes>(tw: usize) -> S::Idx {
    let half = S::LANES / 2;
    lanes::<S>(|j| if j < tw { j } else { j - tw + half })
}

/// The inverse of `close_up`: lanes `tw..2 tw` (the second tile row's tiles, as loaded)
/// up to `half..half + tw`.
#[inline(always)]
pub(super) unsafe fn open_up<S: Lanes>(tw: usize) -> S::Idx {
    let half = S::LANES / 2;
    lanes::<S>(|j| if j < half { j } else { j - half + tw })
}

/// The input transform, a tile row per vector; or, `PACKED`, two tile rows of at most half a
/// vector each (conv3's 7 tiles a row in AVX-512's 16 lanes), the first in the low lanes and
/// the second from lane `LANES / 2` on, so no lane sits idle for half the work.
#[inline(always)]
unsafe fn input_rows<S: Lanes, const PACKED: bool>(args: InputArgs) {
    // How far ahead of the stores `prefetch_write` asks for lines, in values.
    const PF: usize = 32;
    // F(2x2)'s tiles hanging over the plane read past it only for outputs that are dropped.
    let (x, src, planes, (th, tw), (v, ld, step), at, _) = args;
    let close = close_up::<S>(tw);
    for k in 0..planes {
        let plane = x.add(src.start + k * src.plane);
        let vk = v.add(k * ld + at);
        let mut ty = 0;
        while ty < th {
            let rows = plane.add(2 * ty * src.row);
            // Packed, the second tile row's input rows (past the last tile row, the first
            // one's again, whose upper lanes are not stored).
            let both = PACKED && ty + 1 < th;
            let second = if both { rows.add(2 * src.row) } else { rows };
            let mut t = 0;
            while t < tw {
                // B along each of the tile row's four padded input rows: with e = even
                // columns, o = odd ones, tile t's four values are e[t] - e[t+1],
                // o[t] + e[t+1], e[t+1] - o[t], o[t] - o[t+1].
                let h: [[S::V; 4]; 4] = std::array::from_fn(|i| {
                    let p = rows.add(i * src.row + 2 * t);
                    let q = if PACKED {
                        second.add(i * src.row)
                    } else {
                        p.add(S::LANES)
                    };
                    let (e0, o0) = S::deinterleave(S::load(p), S::load(q));
                    let (e1, o1) = S::deinterleave(S::load(p.add(2)), S::load(q.add(2)));
                    [
                        S::sub(e0, e1),
                        S::add(o0, e1),
                        S::sub(e1, o0),
                        S::sub(o0, o1),
                    ]
                });
                // B^T down the columns: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3.
                let n = match (PACKED, both) {
                    (true, true) => 2 * tw,
                    (true, false) => tw,
                    (false, _) => (tw - t).min(S::LANES),
                };
                let [h0, h1, h2, h3] = h;
                let out = vk.add(ty * tw + t);
                // Each of the 16 streams' line two vectors on, asked for now: these
                // stores otherwise wait on L2 for their lines (half this kernel's time;
                // 64 values ahead measured the same as 32).
                // (The last stream's address may lie past the buffer: never dereferenced,
                // so formed with `wrapping_add`.)
                for j in 0..16 {
                    prefetch_write(out.wrapping_add(j * step + PF));
                }
                let put = |at: usize, v: S::V| {
                    let v = if PACKED { S::permute(v, close) } else { v };
                    S::store_first(out.add(at * step), v, n)
                };
                for j in 0..4 {
                    put(j, S::sub(h0[j], h2[j]));
                    put(4 + j, S::add(h1[j], h2[j]));
                    put(8 + j, S::sub(h2[j], h1[j]));
                    put(12 + j, S::sub(h1[j], h3[j]));
                }
                t += S::LANES;
            }
            ty += if both { 2 } else { 1 };
        }
    }
}

/// What `output_kernel` does with a tile's 2x2 outputs besides adding the bias.
#[derive(Clone, Copy, Debug)]
pub struct Finish {
    /// Apply the ReLU.
    pub relu: bool,
    /// Keep only each tile's maximum (the fused 2x2 max pool: a pool window is a tile),
    /// the pooled plane `out_h / 2` x `out_w / 2`; the winner's position, as
    /// `row * step + column` (the direct path's layout, which its backward pass reads),
    /// into `arg` when that is not empty.
    pub pool: Option<usize>,
}

/// One output plane from the products: tile `t`'s 16 values are
/// `m[start + ξ * stride + t]`; `A^T M A`, plus `bias`, into `y` (`out` = its height
/// and width; pooled per `finish`).
#[allow(clippy::too_many_arguments)]
fn output_kernel(
    isa: Isa,
    m: &[f32],
    start: usize,
    stride: usize,
    grid: (usize, usize),
    out: (usize, usize),
    bias: f32,
    finish: Finish,
    y: &mut [f32],
    arg: &mut [u32],
) {
    let (th, tw) = grid;
    let (oh, ow) = out;
    assert!(oh <= 2 * th && ow <= 2 * tw);
    let per_image = th * tw;
    // Whole vectors read past the image's last tile: `convolve` leaves the slack.
    assert!(start + 15 * stride + per_image + MAX_LANES <= m.len());
    match finish.pool {
        Some(step) => {
            let (ph, pw) = (oh / 2, ow / 2);
            assert!(y.len() >= ph * pw && (arg.is_empty() || arg.len() >= ph * pw));
            assert!(ph == 0 || pw == 0 || (2 * ph - 1) * step + 2 * pw <= 1 << 24);
        }
        None => assert!(y.len() >= oh * ow),
    }
    let pm = m[start..].as_ptr();
    // SAFETY: checked above: reads of `m` in whole vectors up to the last tile's vector
    // from each of its 16 planes; `y` and `arg` written only inside the plane.
    unsafe {
        let args = (pm, stride, grid, out, bias, finish, y.as_mut_ptr(), arg);
        call_isa_copy!(isa, output_avx512, output_avx2(args))
    }
}

type OutputArgs<'a> = (
    *const f32,
    usize,
    (usize, usize),
    (usize, usize),
    f32,
    Finish,
    *mut f32,
    &'a mut [u32],
);

isa_copies!(output_avx512, output_avx2 = output_tiles(args: OutputArgs));

#[inline(always)]
unsafe fn output_tiles<S: Lanes>(args: OutputArgs) {
    let (tw, finish) = (args.2 .1, args.5);
    // Packed also when pooling without keeping the winners (evaluation passes).
    if (finish.pool.is_none() || args.7.is_empty()) && tw <= S::LANES / 2 {
        output_rows::<S, true>(args)
    } else {
        output_rows::<S, false>(args)
    }
}

/// The output transform, a tile row per vector; or, `PACKED` (unpooled planes, or pooled
/// ones without the winners' positions), two tile rows of at most half a vector each, as in
/// `input_rows`.
#[inline(always)]
unsafe fn output_rows<S: Lanes, const PACKED: bool>(args: OutputArgs) {
    let (m, stride, (th, tw), (oh, ow), bias, finish, y, arg) = args;
    let mut pos = [0.0f32; MAX_LANES];
    let b = S::splat(bias);
    let relu = |v: S::V| if finish.relu { S::relu(v) } else { v };
    // Packed: each load's second tile row up to lane `half`, and (pooled) the upper half of
    // a vector of maxima down to lane 0.
    let open = open_up::<S>(tw);
    let down = lanes::<S>(|j| j + S::LANES / 2);
    // Tile row by tile row, reading the products in place: staging all tiles in a buffer
    // and reading it back a tile row at a time (at another alignment) stalled on every
    // load, the store-to-load forwarding failing.
    let mut ty = 0;
    while ty < th {
        let both = PACKED && ty + 1 < th;
        let mut t = 0;
        while t < tw {
            let at = ty * tw + t;
            // A^T down the columns, then along the rows.
            let p: [S::V; 16] = std::array::from_fn(|x| {
                let v = S::load(m.add(x * stride + at));
                if PACKED {
                    S::permute(v, open)
                } else {
                    v
                }
            });
            let s0: [S::V; 4] = std::array::from_fn(|j| S::add(S::add(p[j], p[4 + j]), p[8 + j]));
            let s1: [S::V; 4] =
                std::array::from_fn(|j| S::sub(S::sub(p[4 + j], p[8 + j]), p[12 + j]));
            let yv: [S::V; 4] = std::array::from_fn(|k| {
                let s = if k < 2 { &s0 } else { &s1 };
                let v = if k % 2 == 0 {
                    S::add(S::add(s[0], s[1]), s[2])
                } else {
                    S::sub(S::sub(s[1], s[2]), s[3])
                };
                relu(S::add(v, b))
            });
            match finish.pool {
                Some(_) if PACKED => {
                    // Each tile's maximum (the first of tied values, as below); pooled row
                    // `ty` from the low lanes, row `ty + 1` from the upper half. No winners'
                    // positions: `output_tiles` packs pooled planes only without them.
                    debug_assert!(arg.is_empty());
                    let (ph, pw) = (oh / 2, ow / 2);
                    let mut best = yv[0];
                    for &v in &yv[1..] {
                        best = S::select_gt(v, best, v, best);
                    }
                    if ty < ph {
                        S::store_first(y.add(ty * pw), best, pw);
                    }
                    if both && ty + 1 < ph {
                        S::store_first(y.add((ty + 1) * pw), S::permute(best, down), pw);
                    }
                }
                Some(step) => {
                    // A pool window is a tile: the first of tied values wins, in row-major
                    // order (as `nn::Pool2d`); the winner's position is kept as a float
                    // (whole numbers below 2^24, checked) until it is stored.
                    let (ph, pw) = (oh / 2, ow / 2);
                    if ty < ph && t < pw {
                        let offsets = [0.0, 1.0, step as f32, step as f32 + 1.0];
                        let (mut best, mut off) = (yv[0], S::splat(0.0));
                        for k in 1..4 {
                            off = S::select_gt(yv[k], best, S::splat(offsets[k]), off);
                            best = S::select_gt(yv[k], best, yv[k], best);
                        }
                        let n = (pw - t).min(S::LANES);
                        S::store_first(y.add(ty * pw + t), best, n);
                        if !arg.is_empty() {
                            let two_iota = S::add(S::iota(), S::iota());
                            let base = S::splat((2 * ty * step + 2 * t) as f32);
                            S::store(pos.as_mut_ptr(), S::add(S::add(base, two_iota), off));
                            for (a, &p) in arg[ty * pw + t..][..n].iter_mut().zip(&pos) {
                                *a = p as u32;
                            }
                        }
                    }
                }
                None if PACKED => {
                    // `lo` is output row `row` of tile row `ty` (2 tw >= ow values), `hi`
                    // the same row of tile row `ty + 1`.
                    for r in 0..2 {
                        let row = 2 * ty + r;
                        let (lo, hi) = S::interleave(yv[2 * r], yv[2 * r + 1]);
                        if row < oh {
                            S::store_first(y.add(row * ow), lo, ow);
                        }
                        if both && row + 2 < oh {
                            S::store_first(y.add((row + 2) * ow), hi, ow);
                        }
                    }
                }
                None => {
                    for r in 0..2 {
                        let row = 2 * ty + r;
                        if row >= oh {
                            continue;
                        }
                        let (lo, hi) = S::interleave(yv[2 * r], yv[2 * r + 1]);
                        let (dst, col) = (y.add(row * ow), 2 * t);
                        S::store_first(dst.add(col), lo, (ow - col).min(S::LANES));
                        if ow > col + S::LANES {
                            let n = (ow - col - S::LANES).min(S::LANES);
                            S::store_first(dst.add(col + S::LANES), hi, n);
                        }
                    }
                }
            }
            t += S::LANES;
        }
        ty += if both { 2 } else { 1 };
    }
}

thread_local! {
    /// Each worker thread's transformed inputs and products: reused by every group of
    /// images the thread runs, so they stay in its cache.
    static BUFFERS: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// One Winograd convolution (`tile`) over `images` images: image `i`'s `planes` padded
/// input planes are at `src` moved on by `i * image_len` (with room after the last one for
/// whole-vector reads: `convolve_room`); `u` is from `tile.transform_weights`, with `rows`
/// output planes of size `out`. Once image `i`'s products are ready, `write(i, products)`
/// turns them into its output planes (`Products::plane`). Images go in groups of about
/// 200 tiles, so each product is long enough for the vector kernel's blocks.
#[allow(clippy::too_many_arguments)]
pub fn convolve(
    isa: Isa,
    tile: Tile,
    x: &[f32],
    src: Source,
    image_len: usize,
    images: usize,
    planes: usize,
    u: &[f32],
    rows: usize,
    out: (usize, usize),
    mut write: impl FnMut(usize, &Products),
) {
    let positions = tile.positions();
    assert_eq!(
        u.len(),
        positions * rows * planes,
        "transformed weights of another shape"
    );
    let grid = tile.grid(out.0, out.1);
    let per_image = grid.0 * grid.1;
    if per_image == 0 {
        return;
    }
    // F(4x4)'s tiles are 2.25 times larger: the same 192 tiles would make its buffers
    // 2.25 times larger too (1.4 MB for cnn-plus's conv2, most of an L2). 96: conv kernels'
    // profile share 50.4 / 49.9% of a real epoch against 50.5 / 50.5% for 192.
    let target = match tile {
        Tile::F2 => 192usize,
        Tile::F4 => 96,
    };
    let group = target.div_ceil(per_image).clamp(1, images.max(1));
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        let [v, m] = &mut *b;
        let mut first = 0;
        while first < images {
            let count = group.min(images - first);
            let n = count * per_image;
            let ld = round_up(n);
            // Each tile's values lie `vstride` (`mstride`) apart: 16 (36) streams, kept off
            // multiples of 4 KiB so they cannot crowd into a few L1 sets (no measurable
            // change on the CPU measured; a precaution for others).
            let (vstride, mstride) = (planes * ld + MAX_LANES, rows * ld + MAX_LANES);
            if v.len() < positions * vstride + MAX_LANES {
                v.resize(positions * vstride + MAX_LANES, 0.0);
            }
            // Slack: the output transform reads whole vectors past the last tile.
            if m.len() < positions * mstride + 2 * MAX_LANES {
                m.resize(positions * mstride + 2 * MAX_LANES, 0.0);
            }
            // The products read and write whole vectors from each plane's start: from a
            // 64-byte boundary none of them straddles a cache line.
            let (v, m) = (aligned(v), aligned(m));
            for i in 0..count {
                let s = Source {
                    start: src.start + (first + i) * image_len,
                    ..src
                };
                let vs = (&mut *v, ld, vstride);
                input_kernel(isa, tile, x, s, planes, out, vs, i * per_image);
            }
            for xi in 0..positions {
                let vx = Planes {
                    data: v,
                    start: xi * vstride,
                    plane: ld,
                    image: 0,
                };
                let ux = &u[xi * rows * planes..][..rows * planes];
                let mx = &mut m[xi * mstride..][..rows * ld];
                shifted_sum(isa, &[0], n, ux, rows, planes, vx, mx, ld);
            }
            for i in 0..count {
                let p = Products {
                    isa,
                    tile,
                    m,
                    ld,
                    mstride,
                    at: i * per_image,
                    grid,
                    out,
                };
                write(first + i, &p);
            }
            first += count;
        }
    });
}

/// `buf` from its first value on a 64-byte boundary (`buf` has `MAX_LANES` to spare).
pub(super) fn aligned(buf: &mut [f32]) -> &mut [f32] {
    let skew = buf.as_ptr().align_offset(64).min(MAX_LANES);
    &mut buf[skew..]
}

/// Values a caller of `convolve` (`tile`) must leave readable after its last image's last
/// plane (beyond `plane` values), for the input transform's whole-vector reads.
pub fn convolve_room(tile: Tile, out: (usize, usize), row: usize, plane: usize) -> usize {
    let grid = tile.grid(out.0, out.1);
    match tile {
        Tile::F2 => reach(grid, row),
        Tile::F4 => winograd4::reach(grid, row),
    }
    .saturating_sub(plane)
}

/// One image's products, ready to be turned into output planes.
pub struct Products<'a> {
    isa: Isa,
    tile: Tile,
    m: &'a [f32],
    ld: usize,
    mstride: usize,
    at: usize,
    grid: (usize, usize),
    out: (usize, usize),
}

impl Products<'_> {
    /// Output plane `r` (< rows) of the image, plus `bias`, finished per `finish`, into `y`
    /// (and the pool's winners into `arg`, unless it is empty).
    pub fn plane(&self, r: usize, bias: f32, finish: Finish, y: &mut [f32], arg: &mut [u32]) {
        assert!((r + 1) * self.ld <= self.mstride);
        let (start, stride) = (r * self.ld + self.at, self.mstride);
        let (isa, m, grid, out) = (self.isa, self.m, self.grid, self.out);
        match self.tile {
            Tile::F2 => output_kernel(isa, m, start, stride, grid, out, bias, finish, y, arg),
            Tile::F4 => {
                let at = (start, self.ld, stride);
                winograd4::output_kernel(isa, m, at, grid, out, &[bias], finish, y, arg)
            }
        }
    }

    /// Output planes `first..first + bias.len()` of the image, each plus its `bias`,
    /// finished per `finish`, one after another into `y` (and the pool's winners into
    /// `arg`, unless it is empty): F(4x4) in one call for all of them, whose set-up showed
    /// in an evaluation profile when made per plane (1% of it).
    pub fn planes(
        &self,
        first: usize,
        bias: &[f32],
        finish: Finish,
        y: &mut [f32],
        arg: &mut [u32],
    ) {
        let plane = match finish.pool {
            Some(_) => (self.out.0 / 2) * (self.out.1 / 2),
            None => self.out.0 * self.out.1,
        };
        assert!((first + bias.len()) * self.ld <= self.mstride && y.len() >= bias.len() * plane);
        assert!(arg.is_empty() || (finish.pool.is_some() && arg.len() >= bias.len() * plane));
        match self.tile {
            Tile::F2 => {
                for (r, (&b, y)) in bias.iter().zip(y.chunks_mut(plane)).enumerate() {
                    let arg = if arg.is_empty() {
                        &mut []
                    } else {
                        &mut arg[r * plane..][..plane]
                    };
                    self.plane(first + r, b, finish, y, arg);
                }
            }
            Tile::F4 => {
                let at = (first * self.ld + self.at, self.ld, self.mstride);
                let (isa, m, grid, out) = (self.isa, self.m, self.grid, self.out);
                winograd4::output_kernel(isa, m, at, grid, out, bias, finish, y, arg)
            }
        }
    }
}
