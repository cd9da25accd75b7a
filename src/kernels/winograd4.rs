//! Winograd F(4x4, 3x3) (Lavin & Gray 2015, points 0, ±1, ±2): 4x4 outputs a tile from 6x6
//! inputs, 36 multiplications per (input, output) channel pair instead of F(2x2, 3x3)'s 16
//! for a quarter as many outputs: 2.25 an output against 4, and the transformed inputs and
//! products shrink in the same ratio. `winograd.rs` runs it through the same `convolve`
//! for the forward pass and input gradient of layers whose planes it covers with fewer
//! products (`Tile::four_pays`: cnn-plus's 28x28 and 14x14), with the ReLU and 2x2 max pool
//! on the way out; the readable reference is `nn::Conv2d`.
//!
//! ```text
//! Y (4x4) = A^T [ U ⊙ V ] A,   U = G g G^T (6x6),   V = B^T d B (6x6)
//!
//! B^T = | 4  0 -5  0  1  0 |   G = |  1/4     0     0   |   A^T = | 1  1  1  1  1  0 |
//!       | 0 -4 -4  1  1  0 |       | -1/6  -1/6  -1/6  |         | 0  1 -1  2 -2  0 |
//!       | 0  4 -4 -1  1  0 |       | -1/6   1/6  -1/6  |         | 0  1  1  4  4  0 |
//!       | 0 -2 -1  2  1  0 |       |  1/24  1/12  1/6  |         | 0  1 -1  8 -8  1 |
//!       | 0  2 -1 -2  1  0 |       |  1/24 -1/12  1/6  |
//!       | 0  4  0 -5  0  1 |       |  0      0     1   |
//! ```
//!
//! **Float error.** The larger coefficients cost accuracy: simulated in float32 against
//! float64 on uniform inputs and He-scaled weights, the largest error relative to
//! `1 + |y|` is 1.2e-5 to 2.3e-5 for 8 to 64 input channels, about 20 times F(2x2, 3x3)'s
//! (5.8e-7 to 8.6e-7); the points 0, ±1, 1/2, -2 halve it but need twice the transform
//! arithmetic. The tests bound this path at 5e-5 forward (F(2x2): 1e-5) and at the other
//! paths' 1e-4 for the input gradient.
//!
//! **Tiles hanging over the plane's end** (14x14 is 4 tiles of 4, 2 outputs past it). With
//! exact arithmetic an output depends only on its 3x3 window, but in floats a tile's
//! outputs 0 to 2 take rounding error from its input 4 (B^T's rows 0 to 4 read it), and a
//! NaN there would reach them. So such tiles read zeros past the padded plane (masked loads,
//! `load_in`), whatever the memory there holds: the next row's values, the next image's, or
//! a buffer's leftovers. F(2x2)'s outputs 0 and 1 never read input 3, so it needs no mask.
//! 14x14 with F(4x4): 16 tiles, 576 products a channel pair against F(2x2)'s 784; cnn-plus's
//! conv3 forward 12% faster in `cargo bench --bench conv`, its input gradient 3-5%.

use super::simd::{call_isa_copy, isa_copies, prefetch_write, round_up, Isa, Lanes, MAX_LANES};
use super::winograd::{lanes, open_up, Finish, InputArgs};

/// The transform matrix G (6x3), in f64: the weights are transformed once a batch.
const G: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Values read per plane from `Source::start + k * plane` by the input transform of a
/// `grid` of tiles with rows `row` apart: rows up to `4 th + 1`, and per row whole vectors
/// from column `4 t` to `4 t + 4 + 4 LANES` for the last block of tiles `t`.
pub(super) fn reach(grid: (usize, usize), row: usize) -> usize {
    (4 * grid.0 + 1) * row + 4 * round_up(grid.1) + 4
}

/// `U[ξ][row][col] = (G g G^T)[ξ]` into `u` (36 * O * C values), as
/// `winograd::transform_weights` (the same rows, columns and `flip`), in f64. Once a batch,
/// on one thread, for the forward pass and the input gradient: as plain scalar loops this
/// took 1.0-1.3% of a cnn-plus training epoch on an AMD EPYC, so eight kernels go at a time
/// through loops the compiler vectorises (`transform_kernels`).
pub fn transform_weights(w: &[f32], out_c: usize, in_c: usize, flip: bool, u: &mut Vec<f32>) {
    assert_eq!(w.len(), out_c * in_c * 9, "weights are not (O, C, 3, 3)");
    u.clear();
    u.resize(36 * out_c * in_c, 0.0);
    transform_kernels(super::simd::detect(), w, (out_c, in_c), flip, u);
}

/// Kernels transformed at a time by `transform_kernels`: a vector of f64 on AVX-512.
const KERNELS: usize = 8;

super::simd::on_best_isa! {
    /// `transform_weights`' arithmetic, `KERNELS` kernels in the lanes: the kernels in the
    /// order of their place in `u`, so each of the 36 planes is written front to back.
    fn transform_kernels(w: &[f32], sizes: (usize, usize), flip: bool, u: &mut [f32]) {
        let (out_c, in_c) = sizes;
        let pairs = out_c * in_c;
        let (rows, cols) = if flip { (in_c, out_c) } else { (out_c, in_c) };
        for row in 0..rows {
            let mut col = 0;
            while col < cols {
                let n = (cols - col).min(KERNELS);
                // g[a * 3 + b][lane]: tap (a, b) of each kernel (flipped for the input
                // gradient).
                let mut g = [[0.0f64; KERNELS]; 9];
                for l in 0..n {
                    let (o, c) = if flip { (col + l, row) } else { (row, col + l) };
                    let k = &w[(o * in_c + c) * 9..][..9];
                    for (tap, g) in g.iter_mut().enumerate() {
                        let from = if flip { 8 - tap } else { tap };
                        g[l] = f64::from(k[from]);
                    }
                }
                // t = G g (6x3), then U = t G^T (6x6).
                let mut t = [[[0.0f64; KERNELS]; 3]; 6];
                for (t, gi) in t.iter_mut().zip(&G) {
                    for (j, t) in t.iter_mut().enumerate() {
                        for (l, t) in t.iter_mut().enumerate() {
                            *t = gi[0] * g[j][l] + gi[1] * g[3 + j][l] + gi[2] * g[6 + j][l];
                        }
                    }
                }
                let at = row * cols + col;
                for (i, t) in t.iter().enumerate() {
                    for (j, gj) in G.iter().enumerate() {
                        let mut v = [0.0f32; KERNELS];
                        for (l, v) in v.iter_mut().enumerate() {
                            *v = (t[0][l] * gj[0] + t[1][l] * gj[1] + t[2][l] * gj[2]) as f32;
                        }
                        u[(6 * i + j) * pairs + at..][..n].copy_from_slice(&v[..n]);
                    }
                }
                col += KERNELS;
            }
        }
    }
}

/// B^T applied to six vectors (a tile's row or column in each lane).
#[inline(always)]
unsafe fn bt<S: Lanes>(d: [S::V; 6]) -> [S::V; 6] {
    let [d0, d1, d2, d3, d4, d5] = d;
    let (d12, d34) = (S::add(d1, d2), S::add(d3, d4));
    let (d1m2, d4m3) = (S::sub(d1, d2), S::sub(d4, d3));
    let (d1m3, d4m2) = (S::sub(d1, d3), S::sub(d4, d2));
    [
        S::fma(S::splat(4.0), d0, S::fma(S::splat(-5.0), d2, d4)),
        S::fma(S::splat(-4.0), d12, d34),
        S::fma(S::splat(4.0), d1m2, d4m3),
        S::fma(S::splat(-2.0), d1m3, d4m2),
        S::fma(S::splat(2.0), d1m3, d4m2),
        S::fma(S::splat(4.0), d1, S::fma(S::splat(-5.0), d3, d5)),
    ]
}

/// A^T applied to six vectors.
#[inline(always)]
unsafe fn at<S: Lanes>(p: [S::V; 6]) -> [S::V; 4] {
    let ([y0, y1], [y2, y3]) = (at_half::<S>(p, 0), at_half::<S>(p, 1));
    [y0, y1, y2, y3]
}

/// Outputs `2 half` and `2 half + 1` of A^T applied to six vectors: the same sums as
/// `at`, for a caller that keeps only half of a tile's rows live at a time.
#[inline(always)]
unsafe fn at_half<S: Lanes>(p: [S::V; 6], half: usize) -> [S::V; 2] {
    let [p0, p1, p2, p3, p4, p5] = p;
    let (t1, t2) = (S::add(p1, p2), S::sub(p1, p2));
    let (t3, t4) = (S::add(p3, p4), S::sub(p3, p4));
    if half == 0 {
        [S::add(S::add(p0, t1), t3), S::fma(S::splat(2.0), t4, t2)]
    } else {
        [
            S::fma(S::splat(4.0), t3, t1),
            S::add(S::fma(S::splat(8.0), t4, t2), p5),
        ]
    }
}

isa_copies!(input_avx512, input_avx2 = input_tiles(args: InputArgs));

/// F(4x4)'s input transform on `isa`, for `winograd::input_kernel`, which checks `args`.
///
/// # Safety
/// As `winograd::input_kernel` checks: the reads within reach of each plane, the stores
/// inside `v`, and `isa` on this CPU.
pub(super) unsafe fn input_on(isa: Isa, args: InputArgs) {
    call_isa_copy!(isa, input_avx512, input_avx2(args))
}

#[inline(always)]
unsafe fn input_tiles<S: Lanes>(args: InputArgs) {
    let ((th, tw), (rows, cols)) = (args.3, args.6);
    // Tiles hang over the padded plane's end when its outputs are not whole tiles.
    let masked = 4 * th + 2 > rows || 4 * tw + 2 > cols;
    if 4 * tw <= S::LANES {
        return match masked {
            false => input_quad::<S, false>(args),
            true => input_quad::<S, true>(args),
        };
    }
    match (tw <= S::LANES / 2, masked) {
        (true, false) => input_rows::<S, true, false>(args),
        (false, false) => input_rows::<S, false, false>(args),
        (true, true) => input_rows::<S, true, true>(args),
        (false, true) => input_rows::<S, false, true>(args),
    }
}

/// The vector at `p`, padded row `row` from column `col` of a `rows` x `cols` plane: with
/// `MASKED`, zero in the lanes past the plane's end (the row past its last row, the columns
/// past its width), as a zero-padded plane holds. A tile hanging over the end then reads
/// zeros, and its outputs inside the plane take rounding error only from their own inputs
/// and zeros: the same bits wherever the image lies and whatever follows it.
#[inline(always)]
unsafe fn load_in<S: Lanes, const MASKED: bool>(
    p: *const f32,
    (row, col): (usize, usize),
    (rows, cols): (usize, usize),
) -> S::V {
    if !MASKED {
        return S::load(p);
    }
    let n = if row < rows {
        cols.saturating_sub(col).min(S::LANES)
    } else {
        0
    };
    S::load_first(p, n)
}

/// Two-source lane indices (`Lanes::permute2`), clamped to the two vectors.
#[inline(always)]
unsafe fn pair_lanes<S: Lanes>(from: impl Fn(usize) -> usize) -> S::Idx {
    let mut idx = [0u32; MAX_LANES];
    for (j, v) in idx.iter_mut().enumerate() {
        *v = from(j).min(2 * S::LANES - 1) as u32;
    }
    S::indices(&idx)
}

/// The input transform, a tile row per vector, or (`PACKED`) two tile rows of at most half a
/// vector each, the second from lane `tw` on: the tiles as they lie in `V`, so the stores
/// need no permute. A tile's columns `4 t + j` come from two rounds of deinterleaving; the
/// second round's indices put the lanes where they belong.
#[inline(always)]
unsafe fn input_rows<S: Lanes, const PACKED: bool, const MASKED: bool>(args: InputArgs) {
    // How far ahead of the stores `prefetch_write` asks for lines, in values (as F(2x2)).
    const PF: usize = 32;
    let (x, src, planes, (th, tw), (v, ld, step), at, extent) = args;
    let l = S::LANES;
    // Lanes below `split` from the first source's even (odd) lanes, the rest from the
    // second's: unpacked, a block's first and second halves of tiles; packed, the two rows.
    let split = if PACKED { tw } else { l / 2 };
    let pick = |odd: usize| {
        pair_lanes::<S>(|j| {
            if j < split {
                2 * j + odd
            } else {
                l + 2 * (j - split) + odd
            }
        })
    };
    let (even, odd) = (pick(0), pick(1));
    for k in 0..planes {
        let plane = x.add(src.start + k * src.plane);
        let vk = v.add(k * ld + at);
        let mut ty = 0;
        while ty < th {
            let rows = plane.add(4 * ty * src.row);
            let both = PACKED && ty + 1 < th;
            let second = if both { rows.add(4 * src.row) } else { rows };
            let mut t = 0;
            while t < tw {
                // B along each of the six input rows: h[i][j] from columns 4 t + j.
                // (Masked, each load knows its padded row and column: `load_in`.)
                let h: [[S::V; 6]; 6] = std::array::from_fn(|i| {
                    let p = rows.add(i * src.row + 4 * t);
                    let (q, qr, qc) = if PACKED {
                        (second.add(i * src.row), 4 * (ty + 1) + i, 4 * t)
                    } else {
                        (p.add(2 * l), 4 * ty + i, 4 * t + 2 * l)
                    };
                    let (pr, pc) = (4 * ty + i, 4 * t);
                    let e = extent;
                    let (e0, o0) = S::deinterleave(
                        load_in::<S, MASKED>(p, (pr, pc), e),
                        load_in::<S, MASKED>(p.add(l), (pr, pc + l), e),
                    );
                    let (e1, o1) = S::deinterleave(
                        load_in::<S, MASKED>(q, (qr, qc), e),
                        load_in::<S, MASKED>(q.add(l), (qr, qc + l), e),
                    );
                    let (f0, g0) = S::deinterleave(
                        load_in::<S, MASKED>(p.add(4), (pr, pc + 4), e),
                        load_in::<S, MASKED>(p.add(l + 4), (pr, pc + l + 4), e),
                    );
                    let (f1, g1) = S::deinterleave(
                        load_in::<S, MASKED>(q.add(4), (qr, qc + 4), e),
                        load_in::<S, MASKED>(q.add(l + 4), (qr, qc + l + 4), e),
                    );
                    bt::<S>([
                        S::permute2(e0, e1, even),
                        S::permute2(o0, o1, even),
                        S::permute2(e0, e1, odd),
                        S::permute2(o0, o1, odd),
                        S::permute2(f0, f1, even),
                        S::permute2(g0, g1, even),
                    ])
                });
                let n = match (PACKED, both) {
                    (true, true) => 2 * tw,
                    (true, false) => tw,
                    (false, _) => (tw - t).min(l),
                };
                // B^T down the columns: col[j][i] is V's value (i, j).
                let col: [[S::V; 6]; 6] =
                    std::array::from_fn(|j| bt::<S>(std::array::from_fn(|i| h[i][j])));
                // The 36 streams in order from one pointer: 36 addresses kept apart were
                // spilled to the stack and reloaded for every store. Each stream's line
                // two vectors on is asked for as it is written (the last stream's address
                // may lie past the buffer: never dereferenced, so `wrapping_add`).
                let mut dst = vk.add(ty * tw + t);
                for i in 0..6 {
                    for c in &col {
                        prefetch_write(dst.wrapping_add(PF));
                        S::store_first(dst, c[i], n);
                        dst = dst.wrapping_add(step);
                    }
                }
                t += l;
            }
            ty += if both { 2 } else { 1 };
        }
    }
}

/// The input transform with four tile rows a vector, for rows of at most a quarter of a
/// vector (`4 tw <= LANES`: cnn-plus's conv3, four tiles a row, then fills AVX-512's 16
/// lanes where `input_rows` filled 8). A row's tiles then lie in one vector from its
/// column 0 (their columns `4 t` to `4 t + 3`) and one from column 4 (`4 t + 4`, `4 t + 5`),
/// so each of the six columns of four rows' tiles takes two two-source permutes and a
/// blend instead of the deinterleaving wider rows need; and a block stores 36 whole
/// vectors where two blocks of two rows stored 72 half ones (as measured, the transform
/// costs about the same per block whatever share of the lanes it fills). The values and
/// arithmetic are `input_rows`'s, so the same bits.
#[inline(always)]
unsafe fn input_quad<S: Lanes, const MASKED: bool>(args: InputArgs) {
    // How far ahead of the stores `prefetch_write` asks for lines, in values (as F(2x2)).
    const PF: usize = 32;
    let (x, src, planes, (th, tw), (v, ld, step), at, extent) = args;
    let l = S::LANES;
    // Column `j` of two rows' tiles, the first row's from lane `base`, the second's after.
    let pair = |base: usize, j: usize| {
        pair_lanes::<S>(|lane| match lane.checked_sub(base) {
            Some(t) if t < tw => 4 * t + j,
            Some(t) if t < 2 * tw => l + 4 * (t - tw) + j,
            _ => 0,
        })
    };
    let low: [S::Idx; 4] = std::array::from_fn(|j| pair(0, j));
    let high: [S::Idx; 4] = std::array::from_fn(|j| pair(2 * tw, j));
    for k in 0..planes {
        let plane = x.add(src.start + k * src.plane);
        let vk = v.add(k * ld + at);
        let mut ty = 0;
        while ty < th {
            let here = (th - ty).min(4);
            // Each tile row's first padded row; rows past the grid's end read row `ty`'s
            // again, never stored.
            let rows: [usize; 4] = std::array::from_fn(|r| 4 * if r < here { ty + r } else { ty });
            let h: [[S::V; 6]; 6] = std::array::from_fn(|i| {
                let from0 = quad_loads::<S, MASKED>(plane, src.row, rows, i, 0, extent);
                let from4 = quad_loads::<S, MASKED>(plane, src.row, rows, i, 4, extent);
                let split = 2 * tw;
                bt::<S>([
                    quad_column::<S>(&from0, low[0], high[0], split),
                    quad_column::<S>(&from0, low[1], high[1], split),
                    quad_column::<S>(&from0, low[2], high[2], split),
                    quad_column::<S>(&from0, low[3], high[3], split),
                    quad_column::<S>(&from4, low[0], high[0], split),
                    quad_column::<S>(&from4, low[1], high[1], split),
                ])
            });
            let n = here * tw;
            let col: [[S::V; 6]; 6] =
                std::array::from_fn(|j| bt::<S>(std::array::from_fn(|i| h[i][j])));
            // As `input_rows`: the 36 streams from one pointer, each line asked for ahead.
            let mut dst = vk.add(ty * tw);
            for i in 0..6 {
                for c in &col {
                    prefetch_write(dst.wrapping_add(PF));
                    S::store_first(dst, c[i], n);
                    dst = dst.wrapping_add(step);
                }
            }
            ty += 4;
        }
    }
}

/// Padded row `rows[r] + i` of each of four tile rows, from column `col`, for `input_quad`.
/// (Plain functions, not closures: one the compiler keeps out of line loses the caller's
/// instruction set, and each vector operation in it becomes a call.)
#[inline(always)]
unsafe fn quad_loads<S: Lanes, const MASKED: bool>(
    plane: *const f32,
    row: usize,
    rows: [usize; 4],
    i: usize,
    col: usize,
    extent: (usize, usize),
) -> [S::V; 4] {
    let load = |r: usize| {
        let pr = rows[r] + i;
        load_in::<S, MASKED>(plane.add(pr * row + col), (pr, col), extent)
    };
    [load(0), load(1), load(2), load(3)]
}

/// One column of four tile rows' tiles from their rows' vectors `q`: the first two rows'
/// lanes by `low`, the other two's by `high`, joined at lane `split`.
#[inline(always)]
unsafe fn quad_column<S: Lanes>(q: &[S::V; 4], low: S::Idx, high: S::Idx, split: usize) -> S::V {
    let first = S::permute2(q[0], q[1], low);
    S::blend_first(first, S::permute2(q[2], q[3], high), split)
}

/// Output planes `r < bias.len()` of one image from the products: plane `r`'s tile `t` has
/// its 36 values at `m[start + r * ld + ξ * stride + t]`; `A^T M A`, plus `bias[r]`,
/// finished per `finish` (the ReLU; the 2x2 max pool, four windows a tile, the winners'
/// positions into `arg` unless it is empty, as `winograd::Finish` says), into `y`, the
/// planes one after another (`out` = a plane's height and width before pooling; the
/// outputs of tiles hanging over its end are dropped). All of an image's planes in one call: one plane's 49 tiles (cnn-plus's conv2)
/// made a call short enough that its set-up showed.
#[allow(clippy::too_many_arguments)]
pub(super) fn output_kernel(
    isa: Isa,
    m: &[f32],
    (start, ld, stride): (usize, usize, usize),
    grid: (usize, usize),
    out: (usize, usize),
    bias: &[f32],
    finish: Finish,
    y: &mut [f32],
    arg: &mut [u32],
) {
    let (th, tw) = grid;
    let (oh, ow) = out;
    let planes = bias.len();
    assert!(
        oh <= 4 * th && ow <= 4 * tw && th * tw <= ld,
        "a plane larger than its tiles"
    );
    let plane = match finish.pool {
        Some(step) => {
            // Positions kept as floats until stored: whole numbers below 2^24.
            assert!(oh == 0 || (oh - 1) * step + ow <= 1 << 24);
            (oh / 2) * (ow / 2)
        }
        None => oh * ow,
    };
    assert!(y.len() >= planes * plane);
    assert!(arg.is_empty() || (finish.pool.is_some() && arg.len() >= planes * plane));
    // Whole vectors read past the image's last tile: `convolve` leaves the slack.
    assert!(
        planes == 0 || start + (planes - 1) * ld + 35 * stride + th * tw + MAX_LANES <= m.len()
    );
    let pm = m[start..].as_ptr();
    let pa = if arg.is_empty() {
        std::ptr::null_mut()
    } else {
        arg.as_mut_ptr()
    };
    // SAFETY: checked above: reads of `m` in whole vectors up to the last tile's vector
    // from each of its 36 planes, for each output plane; `y` and `arg` written only inside
    // them.
    unsafe {
        let args = (
            pm,
            (ld, stride),
            grid,
            out,
            bias,
            finish,
            y.as_mut_ptr(),
            pa,
        );
        call_isa_copy!(isa, output_avx512, output_avx2(args))
    }
}

type OutputArgs<'a> = (
    *const f32,
    (usize, usize),
    (usize, usize),
    (usize, usize),
    &'a [f32],
    Finish,
    *mut f32,
    *mut u32,
);

isa_copies!(output_avx512, output_avx2 = output_tiles(args: OutputArgs));

#[inline(always)]
unsafe fn output_tiles<S: Lanes>(args: OutputArgs) {
    if 4 * args.2 .1 <= S::LANES {
        match args.5.pool {
            None => output_quad::<S>(args),
            Some(step) => output_quad_pooled::<S>(args, step),
        }
    } else if args.2 .1 <= S::LANES / 2 {
        output_rows::<S, true>(args)
    } else {
        output_rows::<S, false>(args)
    }
}

/// The output transform, a tile row per vector, or (`PACKED`) two tile rows of at most half
/// a vector each, as `input_rows` leaves them; the 16 results moved to the two halves of the
/// vector (`open_up`), then each output row's four columns (or each pooled row's two)
/// interleaved into place.
#[inline(always)]
unsafe fn output_rows<S: Lanes, const PACKED: bool>(args: OutputArgs) {
    let (m, (ld, stride), (th, tw), (oh, ow), bias, finish, y, arg) = args;
    let open = open_up::<S>(tw);
    let plane = if finish.pool.is_some() {
        (oh / 2) * (ow / 2)
    } else {
        oh * ow
    };
    for (r, &bias) in bias.iter().enumerate() {
        let arg = if arg.is_null() {
            arg
        } else {
            arg.add(r * plane)
        };
        let at = (m.add(r * ld), stride);
        let to = (y.add(r * plane), arg);
        output_plane::<S, PACKED>(at, ((th, tw), (oh, ow)), bias, finish, open, to);
    }
}

/// The unpooled output transform with four tile rows a vector, as `input_quad` leaves
/// them (`4 tw <= LANES`): the lanes opened up to the vector's four quarters (`quad_open`),
/// then an output row's four columns of each tile interleaved into place, which turns a
/// tile row's output row per quarter into a whole output row per vector.
#[inline(always)]
unsafe fn output_quad<S: Lanes>(args: OutputArgs) {
    let (m, (ld, stride), (th, tw), (oh, ow), bias, finish, y, _) = args;
    let open = quad_open::<S>(tw);
    for (r, &bias) in bias.iter().enumerate() {
        let (m, y, b) = (m.add(r * ld), y.add(r * oh * ow), S::splat(bias));
        let mut ty = 0;
        while ty < th {
            let here = (th - ty).min(4);
            for a in 0..2 {
                let rows = quad_rows::<S>((m, stride, ty * tw), a, b, finish.relu, open);
                for (k, row) in rows.into_iter().enumerate() {
                    let out = interleave4::<S>(row);
                    for (q, &v) in out.iter().enumerate().take(here) {
                        let row = 4 * (ty + q) + 2 * a + k;
                        if row < oh {
                            S::store_first(y.add(row * ow), v, ow.min(S::LANES));
                        }
                    }
                }
            }
            ty += 4;
        }
    }
}

/// Output rows `2 a` and `2 a + 1` of a block of four tile rows from `at_tile` on
/// (`rows_half`), their lanes opened up to the vector's quarters when that moves any
/// (`quad_open`).
#[inline(always)]
unsafe fn quad_rows<S: Lanes>(
    tile: (*const f32, usize, usize),
    a: usize,
    bias: S::V,
    relu: bool,
    (open, moves): (S::Idx, bool),
) -> [[S::V; 4]; 2] {
    let mut rows = rows_half::<S, false>(tile, a, bias, relu, open);
    if moves {
        for row in &mut rows {
            for v in row {
                *v = S::permute(*v, open);
            }
        }
    }
    rows
}

/// Lane indices moving four tile rows of `tw` tiles each, side by side, to the vector's four
/// quarters, and whether that moves anything (not when a row fills a quarter, as cnn-plus's
/// conv3's four tiles do on AVX-512).
#[inline(always)]
unsafe fn quad_open<S: Lanes>(tw: usize) -> (S::Idx, bool) {
    let quarter = S::LANES / 4;
    let open = lanes::<S>(|j| (j / quarter) * tw + (j % quarter).min(tw - 1));
    (open, tw < quarter)
}

/// The pooled output transform with four tile rows a vector (`output_quad`'s lanes): the
/// two windows of each tile's row of windows, which leaves two pooled rows in each half of
/// a vector (the second moved down before it is stored), and the winners' positions into
/// `arg` unless it is null, as `output_plane` keeps them.
#[inline(always)]
unsafe fn output_quad_pooled<S: Lanes>(args: OutputArgs, step: usize) {
    let (m, (ld, stride), (th, tw), (oh, ow), bias, finish, y, arg) = args;
    let (l, quarter) = (S::LANES, S::LANES / 4);
    let open = quad_open::<S>(tw);
    let down = lanes::<S>(|j| j + l / 2);
    let (ph, pw) = (oh / 2, ow / 2);
    let plane = ph * pw;
    let offsets = [0.0, 1.0, step as f32, step as f32 + 1.0];
    // The first of tied values wins, in row-major order; the winner's position
    // `row * step + column` of the unpooled plane: from the block's first window at `base`
    // (whole numbers below 2^24, so exact as floats).
    let mut base = [0.0f32; MAX_LANES];
    for (j, v) in base.iter_mut().enumerate().take(l) {
        *v = (4 * (j / quarter) * step + 4 * (j % quarter)) as f32;
    }
    let base = S::load(base.as_ptr());
    for (r, &bias) in bias.iter().enumerate() {
        let (m, y, b) = (m.add(r * ld), y.add(r * plane), S::splat(bias));
        let arg = if arg.is_null() {
            arg
        } else {
            arg.add(r * plane)
        };
        let mut ty = 0;
        while ty < th {
            let here = (th - ty).min(4);
            for a in 0..2 {
                let rows = quad_rows::<S>((m, stride, ty * tw), a, b, finish.relu, open);
                let at = S::add(base, S::splat(((4 * ty + 2 * a) * step) as f32));
                let (v0, q0) = window::<S>(&rows, 0, &offsets, at);
                let (v1, q1) = window::<S>(&rows, 1, &offsets, S::add(at, S::splat(2.0)));
                // Pooled row 2 (ty + q) + a, columns 2 t + c, in quarter-rows of 2 t values.
                let (lo, hi) = S::interleave(v0, v1);
                let pooled = [lo, S::permute(lo, down), hi, S::permute(hi, down)];
                for (q, &v) in pooled.iter().enumerate().take(here) {
                    let row = 2 * (ty + q) + a;
                    if row < ph {
                        S::store_first(y.add(row * pw), v, pw);
                    }
                }
                if !arg.is_null() {
                    let (qlo, qhi) = S::interleave(q0, q1);
                    let mut pos = [[0.0f32; MAX_LANES]; 2];
                    S::store(pos[0].as_mut_ptr(), qlo);
                    S::store(pos[1].as_mut_ptr(), qhi);
                    for q in 0..here {
                        let row = 2 * (ty + q) + a;
                        if row < ph {
                            let from = &pos[q / 2][(q % 2) * (l / 2)..][..pw];
                            for (i, &p) in from.iter().enumerate() {
                                *arg.add(row * pw + i) = p as u32;
                            }
                        }
                    }
                }
            }
            ty += 4;
        }
    }
}

/// The largest of window `c`'s four values in two output rows `yv` (the first of tied values
/// in row-major order) and its position: `at` plus the winner's offset. A plain function, not
/// a closure: one the compiler keeps out of line loses the caller's instruction set.
#[inline(always)]
unsafe fn window<S: Lanes>(
    yv: &[[S::V; 4]; 2],
    c: usize,
    offsets: &[f32; 4],
    at: S::V,
) -> (S::V, S::V) {
    let cand = [
        yv[0][2 * c],
        yv[0][2 * c + 1],
        yv[1][2 * c],
        yv[1][2 * c + 1],
    ];
    let (mut best, mut off) = (cand[0], S::splat(0.0));
    for k in 1..4 {
        off = S::select_gt(cand[k], best, S::splat(offsets[k]), off);
        best = S::select_gt(cand[k], best, cand[k], best);
    }
    (best, S::add(at, off))
}

/// One plane of `output_rows`.
#[inline(always)]
unsafe fn output_plane<S: Lanes, const PACKED: bool>(
    (m, stride): (*const f32, usize),
    ((th, tw), (oh, ow)): ((usize, usize), (usize, usize)),
    bias: f32,
    finish: Finish,
    open: S::Idx,
    (y, arg): (*mut f32, *mut u32),
) {
    let (l, half, b) = (S::LANES, S::LANES / 2, S::splat(bias));
    let mut ty = 0;
    while ty < th {
        let both = PACKED && ty + 1 < th;
        let mut t = 0;
        while t < tw {
            let at_tile = ty * tw + t;
            // Half the tile's rows at a time (`rows_half`).
            let tile = (m, stride, at_tile);
            match finish.pool {
                None => {
                    for a in 0..2 {
                        let [first, second] = rows_half::<S, PACKED>(tile, a, b, finish.relu, open);
                        let at = (y, (ow, oh), t, both);
                        store_row::<S, PACKED>(at, 4 * ty + 2 * a, first);
                        store_row::<S, PACKED>(at, 4 * ty + 2 * a + 1, second);
                    }
                }
                Some(step) => {
                    // Each tile's four 2x2 windows: the first of tied values wins, in
                    // row-major order (as `nn::Pool2d` and F(2x2)'s pool); the winner's
                    // position as `row * step + column` of the unpooled plane.
                    let (ph, pw) = (oh / 2, ow / 2);
                    let mut base = [0.0f32; MAX_LANES];
                    for (j, v) in base.iter_mut().enumerate().take(l) {
                        let (row, tile) = match (PACKED, j < half) {
                            (true, true) => (ty, j),
                            (true, false) => (ty + 1, j - half),
                            (false, _) => (ty, t + j),
                        };
                        *v = (4 * row * step + 4 * tile) as f32;
                    }
                    let base = S::load(base.as_ptr());
                    let offsets = [0.0, 1.0, step as f32, step as f32 + 1.0];
                    for a in 0..2 {
                        let yv = rows_half::<S, PACKED>(tile, a, b, finish.relu, open);
                        let at = S::add(base, S::splat((2 * a * step) as f32));
                        let (v0, q0) = window::<S>(&yv, 0, &offsets, at);
                        let at = S::add(base, S::splat((2 * a * step + 2) as f32));
                        let (v1, q1) = window::<S>(&yv, 1, &offsets, at);
                        // Pooled columns 2 t + c.
                        let (lo, hi) = S::interleave(v0, v1);
                        let row = 2 * ty + a;
                        put::<S, PACKED>((y, (pw, ph), 2), both, row, 2 * t, lo, hi);
                        if !arg.is_null() {
                            let (qlo, qhi) = S::interleave(q0, q1);
                            let mut pos = [[0.0f32; MAX_LANES]; 2];
                            S::store(pos[0].as_mut_ptr(), qlo);
                            S::store(pos[1].as_mut_ptr(), qhi);
                            let keep = |row: usize, col: usize, p: &[f32; MAX_LANES]| {
                                let n = if row < ph {
                                    pw.saturating_sub(col).min(l)
                                } else {
                                    0
                                };
                                for (i, &p) in p[..n].iter().enumerate() {
                                    *arg.add(row * pw + col + i) = p as u32;
                                }
                            };
                            if PACKED {
                                keep(row, 0, &pos[0]);
                                if both {
                                    keep(row + 2, 0, &pos[1]);
                                }
                            } else {
                                keep(row, 2 * t, &pos[0]);
                                keep(row, 2 * t + l, &pos[1]);
                            }
                        }
                    }
                }
            }
            t += l;
        }
        ty += if both { 2 } else { 1 };
    }
}

/// Output rows `2 a` and `2 a + 1` of the tile at `at_tile` of `output_plane`: A^T down
/// the columns (s[j][r]), then along the rows, plus the bias, the ReLU and (packed) the
/// lanes opened up. Half the rows at a time, reading the 36 products twice: all 16 results
/// at once kept 40 vectors live and spilled them (the output transform was 8.7% of a
/// cnn-plus training profile on an AMD EPYC). Plain calls of inline functions: closures
/// and `array::from_fn` here were left as calls, compiled without the vector unit's target
/// features (8x slower).
#[inline(always)]
unsafe fn rows_half<S: Lanes, const PACKED: bool>(
    (m, stride, at_tile): (*const f32, usize, usize),
    a: usize,
    bias: S::V,
    relu: bool,
    open: S::Idx,
) -> [[S::V; 4]; 2] {
    let at_tile = m.add(at_tile);
    let s = [
        column_half::<S>(at_tile, stride, 0, a),
        column_half::<S>(at_tile, stride, 1, a),
        column_half::<S>(at_tile, stride, 2, a),
        column_half::<S>(at_tile, stride, 3, a),
        column_half::<S>(at_tile, stride, 4, a),
        column_half::<S>(at_tile, stride, 5, a),
    ];
    let [r0, r1] = [0, 1].map(|r| [s[0][r], s[1][r], s[2][r], s[3][r], s[4][r], s[5][r]]);
    [
        finish_row::<S, PACKED>(at::<S>(r0), bias, relu, open),
        finish_row::<S, PACKED>(at::<S>(r1), bias, relu, open),
    ]
}

/// Column `j` of a tile's 6x6 products (planes `6 i + j` from `at`), A^T's outputs
/// `2 a`, `2 a + 1`.
#[inline(always)]
unsafe fn column_half<S: Lanes>(at: *const f32, stride: usize, j: usize, a: usize) -> [S::V; 2] {
    let p = |i: usize| at.add((6 * i + j) * stride);
    at_half::<S>(
        [
            S::load(p(0)),
            S::load(p(1)),
            S::load(p(2)),
            S::load(p(3)),
            S::load(p(4)),
            S::load(p(5)),
        ],
        a,
    )
}

/// One output row of a tile: plus the bias, the ReLU if asked, and (packed) the lanes
/// opened up.
#[inline(always)]
unsafe fn finish_row<S: Lanes, const PACKED: bool>(
    row: [S::V; 4],
    bias: S::V,
    relu: bool,
    open: S::Idx,
) -> [S::V; 4] {
    let mut row = row;
    for v in &mut row {
        *v = S::add(*v, bias);
        if relu {
            *v = S::relu(*v);
        }
        if PACKED {
            *v = S::permute(*v, open);
        }
    }
    row
}

/// Output row `row` of a block of tiles (`at` = (the plane, its (width, height), the block's
/// first tile column, `both` tile rows)): columns 4 t + c, a block's first half of tiles in
/// (a0, a1), its second half (packed: the second tile row) in (a2, a3).
#[inline(always)]
unsafe fn store_row<S: Lanes, const PACKED: bool>(
    (y, ow, t, both): (*mut f32, (usize, usize), usize, bool),
    row: usize,
    [y0, y1, y2, y3]: [S::V; 4],
) {
    let l = S::LANES;
    let [a0, a1, a2, a3] = interleave4::<S>([y0, y1, y2, y3]);
    if PACKED {
        put::<S, PACKED>((y, ow, 4), both, row, 0, a0, a2);
        put::<S, PACKED>((y, ow, 4), both, row, l, a1, a3);
    } else {
        put::<S, PACKED>((y, ow, 4), both, row, 4 * t, a0, a1);
        put::<S, PACKED>((y, ow, 4), both, row, 4 * t + 2 * l, a2, a3);
    }
}

/// Four vectors of an output row's columns 0 to 3 of each tile, interleaved into the row's
/// order (lane `t` of `y[c]` to value `4 t + c`), a quarter of the lanes at a time.
#[inline(always)]
unsafe fn interleave4<S: Lanes>([y0, y1, y2, y3]: [S::V; 4]) -> [S::V; 4] {
    let (p0, p1) = S::interleave(y0, y2);
    let (q0, q1) = S::interleave(y1, y3);
    let (a0, a1) = S::interleave(p0, q0);
    let (a2, a3) = S::interleave(p1, q1);
    [a0, a1, a2, a3]
}

/// Stores `lo` and `hi` into a plane `cols` wide and `rows` high (`to` = (its start, its
/// size, rows between a tile row and the next)), cut at its end: unpacked, row `row` from
/// column `col`, a vector each; packed, from column `col` of row `row` (the first tile
/// row's) and, if `both`, of row `row + next` (the second's). A function: as a closure it
/// was left as a call (0.9% of a cnn-plus training profile).
#[inline(always)]
unsafe fn put<S: Lanes, const PACKED: bool>(
    (dst, (cols, rows), next): (*mut f32, (usize, usize), usize),
    both: bool,
    row: usize,
    col: usize,
    lo: S::V,
    hi: S::V,
) {
    let l = S::LANES;
    let cut = |c: usize| cols.saturating_sub(c).min(l);
    if PACKED {
        if row < rows {
            S::store_first(dst.add(row * cols + col), lo, cut(col));
        }
        if both && row + next < rows {
            S::store_first(dst.add((row + next) * cols + col), hi, cut(col));
        }
    } else {
        if row >= rows {
            return;
        }
        if col < cols {
            S::store_first(dst.add(row * cols + col), lo, cut(col));
        }
        if col + l < cols {
            S::store_first(dst.add(row * cols + col + l), hi, cut(col + l));
        }
    }
}
