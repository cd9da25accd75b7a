//! Stride-1 convolution without im2col: vector kernels that read the padded input in
//! place. `conv.rs` uses them when the CPU has AVX-512 or AVX2 (see `simd.rs`) and keeps
//! its im2col + GEMM path as the fallback and the reference the tests compare them with.
//!
//! In the wide layout (see `wide_im2col` in conv.rs) output position `p` of a stride-1
//! convolution reads padded input position `p + offset[t]` for kernel tap `t`, where
//! `offset[t] = ki * padded_w + kj`. So a whole convolution is
//!
//! ```text
//! out[r][p] = sum over planes c, taps t of  w[r][c][t] * x[c][p + offset[t]]      (shifted_sum)
//! ```
//!
//! which is a GEMM against im2col columns that are never written out: each tap's row is
//! the input plane itself, shifted. The same form gives the input gradient (planes are
//! the output-gradient channels, the weights transposed, the offsets negated), and the
//! weight gradient is the matching sum of products (`shifted_dots`):
//!
//! ```text
//! dw[r][c][t] += sum over p of  dy[r][p] * x[c][p + offset[t]]
//! ```
//!
//! For 3x3 layers whose output channels fill whole vectors, `lane_dots` computes the
//! same weight gradient with the channels in the lanes instead of the positions (the
//! gradient transposed, the input broadcast): longer runs in registers and no load that
//! straddles a cache line.
//!
//! Both run over whole vectors of positions: the caller rounds `n` up with
//! `simd::round_up`, gives the buffers that much room, and (for `shifted_dots`) zeros
//! past the end, so nothing here needs a scalar tail.

use super::simd::{call_isa_copy, isa_copies, round_up, Isa, Lanes};

/// A set of planes inside a slice: plane `c` of image `i` starts at
/// `start + i * image + c * plane`.
#[derive(Clone, Copy)]
pub struct Planes<'a> {
    pub data: &'a [f32],
    pub start: usize,
    pub plane: usize,
    pub image: usize,
}

impl Planes<'_> {
    /// Panics unless every read `count` planes of `images` images make, at positions
    /// `lo..hi` relative to each plane's start, lies inside the slice.
    fn check(&self, count: usize, images: usize, lo: isize, hi: usize) {
        assert!(
            self.start as isize + lo >= 0,
            "shifted read before the buffer"
        );
        let last = self.start + (images - 1) * self.image + (count - 1) * self.plane + hi;
        assert!(last <= self.data.len(), "shifted read past the buffer");
    }
}

/// `out[r * out_row + p] = sum_c sum_t w[(r * planes + c) * taps + t] * x[c][p + offsets[t]]`
/// for `r < rows`, `p < round_up(n)`, `c < planes`, `t < offsets.len()`; one image.
#[allow(clippy::too_many_arguments)]
pub fn shifted_sum(
    isa: Isa,
    offsets: &[isize],
    n: usize,
    w: &[f32],
    rows: usize,
    planes: usize,
    x: Planes,
    out: &mut [f32],
    out_row: usize,
) {
    let n = round_up(n);
    let (lo, hi) = span(offsets);
    x.check(planes, 1, lo, (n as isize + hi) as usize);
    assert!(w.len() >= rows * planes * offsets.len());
    assert!(rows == 0 || (rows - 1) * out_row + n <= out.len());
    // SAFETY: the reads and writes were checked above; `isa` came from `simd::detect`.
    unsafe {
        let (xp, op) = (x.data.as_ptr().add(x.start), out.as_mut_ptr());
        let args = (
            offsets,
            w.as_ptr(),
            rows,
            planes,
            xp,
            x.plane,
            op,
            out_row,
            n,
        );
        call_isa_copy!(isa, sum_avx512, sum_avx2(args))
    }
}

/// `dw[(r * planes + c) * taps + t] += sum_i sum_p a[i][r][p] * x[i][c][p + offsets[t]]`
/// for `p < round_up(n)` over `images` images; `a` must be zero from `n` to `round_up(n)`.
#[allow(clippy::too_many_arguments)]
pub fn shifted_dots(
    isa: Isa,
    offsets: &[isize],
    n: usize,
    images: usize,
    a: Planes,
    rows: usize,
    x: Planes,
    planes: usize,
    dw: &mut [f32],
) {
    if images == 0 {
        return;
    }
    let n = round_up(n);
    let (lo, hi) = span(offsets);
    x.check(planes, images, lo, (n as isize + hi) as usize);
    a.check(rows, images, 0, n);
    assert!(dw.len() >= rows * planes * offsets.len());
    // SAFETY: as in `shifted_sum`.
    unsafe {
        let ap = a.data.as_ptr().add(a.start);
        let xp = x.data.as_ptr().add(x.start);
        let args = DotArgs {
            offsets,
            n,
            images,
            a: ap,
            a_row: a.plane,
            a_img: a.image,
            rows,
            x: xp,
            x_plane: x.plane,
            x_img: x.image,
            planes,
            dw: dw.as_mut_ptr(),
        };
        call_isa_copy!(isa, dots_avx512, dots_avx2(&args))
    }
}

/// The lowest and highest offset.
fn span(offsets: &[isize]) -> (isize, isize) {
    let lo = offsets.iter().copied().min().unwrap_or(0);
    let hi = offsets.iter().copied().max().unwrap_or(0);
    (lo, hi)
}

type SumArgs<'a> = (
    &'a [isize],
    *const f32,
    usize,
    usize,
    *const f32,
    usize,
    *mut f32,
    usize,
    usize,
);

struct DotArgs<'a> {
    offsets: &'a [isize],
    n: usize,
    images: usize,
    a: *const f32,
    a_row: usize,
    a_img: usize,
    rows: usize,
    x: *const f32,
    x_plane: usize,
    x_img: usize,
    planes: usize,
    dw: *mut f32,
}

// One compiled copy per instruction set. Block sizes: AVX-512 has 32 vector registers,
// so `shifted_sum` keeps 4 rows x 6 vectors of accumulators (8 x 3 with one tap); AVX2 has
// 16, so 4 x 2 (6 x 2 with one tap).
// `shifted_dots` keeps 4 rows x 3 taps on both (12 accumulators, 3 inputs and 1 gradient
// vector fill AVX2's 16; 2 rows x 3 taps was 5% slower there, being short of loads).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(args: SumArgs) {
    // One tap (the Winograd products, 16-64 planes long): 8 rows x 3 vectors load each
    // input vector half as often as 4 x 6.
    if args.0.len() == 1 {
        return sum_rows::<super::simd::Avx512, 8, 3>(args);
    }
    sum_rows::<super::simd::Avx512, 4, 6>(args)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_avx2(args: SumArgs) {
    // One tap: 6 rows x 2 vectors (12 of the 16 registers), as AVX-512's 8 x 3.
    if args.0.len() == 1 {
        return sum_rows::<super::simd::Avx2, 6, 2>(args);
    }
    sum_rows::<super::simd::Avx2, 4, 2>(args)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512(args: &DotArgs) {
    with_accumulators::<super::simd::Avx512>(args, |acc| {
        dots_rows::<super::simd::Avx512, 4, 3>(args, acc)
    })
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(args: &DotArgs) {
    with_accumulators::<super::simd::Avx2>(args, |acc| {
        dots_rows::<super::simd::Avx2, 4, 3>(args, acc)
    })
}

thread_local! {
    /// `dots_rows`' vector accumulators carried between images, one per weight-gradient
    /// entry; kept per thread so no call allocates.
    static DOT_ACCUMULATORS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with room for one `S` vector per weight-gradient entry of `d`, 64-byte
/// aligned.
#[inline(always)]
unsafe fn with_accumulators<S: Lanes>(d: &DotArgs, f: impl FnOnce(*mut S::V)) {
    DOT_ACCUMULATORS.with(|buf| {
        let mut buf = buf.borrow_mut();
        let need = d.rows * d.planes * d.offsets.len() * S::LANES + 16;
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        let p = buf.as_mut_ptr();
        let p = p.add(p.align_offset(64));
        f(p.cast::<S::V>())
    })
}

/// `shifted_sum` in blocks of R rows x up to V vectors (then 4 rows, then single rows). A row's vectors
/// are cut into as few blocks as V allows, of nearly equal widths: 13 vectors as 5 + 4 + 4
/// rather than 6 + 6 + 1, whose last block (R accumulators, fewer than the FMA units'
/// latency x throughput) ran at half speed.
#[inline(always)]
unsafe fn sum_rows<S: Lanes, const R: usize, const V: usize>(args: SumArgs) {
    let (offsets, w, rows, planes, x, x_plane, out, out_row, n) = args;
    let k = planes * offsets.len();
    let vectors = n / S::LANES;
    let blocks = vectors.div_ceil(V);
    let mut r = 0;
    while r < rows {
        let block = if rows - r >= R {
            R
        } else if rows - r >= 4 {
            4
        } else {
            1
        };
        let mut v = 0;
        for b in 0..blocks {
            // Blocks `b < vectors % blocks` take one vector more.
            let width = vectors / blocks + usize::from(b < vectors % blocks);
            let (wr, xv, o) = (
                w.add(r * k),
                x.add(v * S::LANES),
                out.add(r * out_row + v * S::LANES),
            );
            let shape = (offsets, wr, k, planes, xv, x_plane, o, out_row);
            match block {
                _ if block == R => sum_width::<S, R, V>(width, shape),
                4 => sum_width::<S, 4, V>(width, shape),
                _ => sum_width::<S, 1, V>(width, shape),
            }
            v += width;
        }
        r += block;
    }
}

/// `sum_block` with `width` (1..=V, at most 6) vectors.
#[inline(always)]
unsafe fn sum_width<S: Lanes, const R: usize, const V: usize>(width: usize, shape: BlockArgs) {
    debug_assert!((1..=V.min(6)).contains(&width));
    match width {
        1 => sum_block::<S, R, 1>(shape),
        2 if V >= 2 => sum_block::<S, R, 2>(shape),
        3 if V >= 3 => sum_block::<S, R, 3>(shape),
        4 if V >= 4 => sum_block::<S, R, 4>(shape),
        5 if V >= 5 => sum_block::<S, R, 5>(shape),
        _ if V >= 6 => sum_block::<S, R, 6>(shape),
        _ => unreachable!("a block of {width} vectors, more than {V}"),
    }
}

type BlockArgs<'a> = (
    &'a [isize],
    *const f32,
    usize,
    usize,
    *const f32,
    usize,
    *mut f32,
    usize,
);

/// R rows x V vectors of `shifted_sum`, held in registers over every plane and tap.
#[inline(always)]
unsafe fn sum_block<S: Lanes, const R: usize, const V: usize>(args: BlockArgs) {
    let (offsets, w, k, planes, x, x_plane, out, out_row) = args;
    let taps = offsets.len();
    let mut acc = [[S::zero(); V]; R];
    if taps == 1 {
        let (mut src, mut wc) = (x.offset(offsets[0]), w);
        for _ in 0..planes {
            let mut xv = [S::zero(); V];
            for (j, xv) in xv.iter_mut().enumerate() {
                *xv = S::load(src.add(j * S::LANES));
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let wv = S::splat(*wc.add(i * k));
                for (a, &xv) in acc.iter_mut().zip(&xv) {
                    *a = S::fma(wv, xv, *a);
                }
            }
            src = src.add(x_plane);
            wc = wc.add(1);
        }
    } else {
        for c in 0..planes {
            let (xc, wc) = (x.add(c * x_plane), w.add(c * taps));
            for (t, &off) in offsets.iter().enumerate() {
                let src = xc.offset(off);
                let mut xv = [S::zero(); V];
                for (j, xv) in xv.iter_mut().enumerate() {
                    *xv = S::load(src.add(j * S::LANES));
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let wv = S::splat(*wc.add(i * k + t));
                    for (a, &xv) in acc.iter_mut().zip(&xv) {
                        *a = S::fma(wv, xv, *a);
                    }
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (j, &a) in acc.iter().enumerate() {
            S::store(out.add(i * out_row + j * S::LANES), a);
        }
    }
}

/// `shifted_dots` one image at a time, in blocks of R rows x T taps for one plane, then
/// single rows and single taps. One image's gradient rows and input planes stay in the
/// core's caches while every block reads them; each block's vector accumulators are kept in
/// `acc` from one image to the next (so every lane adds in the same order as if the images
/// were one long row) and summed across the lanes after the last image.
#[inline(always)]
unsafe fn dots_rows<S: Lanes, const R: usize, const T: usize>(d: &DotArgs, acc: *mut S::V) {
    let taps = d.offsets.len();
    let k = d.planes * taps;
    for img in 0..d.images {
        let (first, last) = (img == 0, img + 1 == d.images);
        let (ai, xi) = (d.a.add(img * d.a_img), d.x.add(img * d.x_img));
        let mut r = 0;
        while r < d.rows {
            let block = if d.rows - r >= R { R } else { 1 };
            for c in 0..d.planes {
                let mut t = 0;
                while t < taps {
                    let wide = taps - t >= T;
                    let b = DotBlock {
                        offsets: &d.offsets[t..],
                        n: d.n,
                        a: ai.add(r * d.a_row),
                        a_row: d.a_row,
                        x: xi.add(c * d.x_plane),
                        at: r * k + c * taps + t,
                        k,
                        first,
                        last,
                    };
                    match (block == R, wide) {
                        (true, true) => dots_block::<S, R, T>(&b, acc, d.dw),
                        (true, false) => dots_block::<S, R, 1>(&b, acc, d.dw),
                        (false, true) => dots_block::<S, 1, T>(&b, acc, d.dw),
                        (false, false) => dots_block::<S, 1, 1>(&b, acc, d.dw),
                    }
                    t += if wide { T } else { 1 };
                }
            }
            r += block;
        }
    }
}

/// One block of `dots_rows` in one image: rows from `a`, the plane at `x`, its
/// accumulators and weight-gradient entries from index `at` (row stride `k`).
struct DotBlock<'a> {
    offsets: &'a [isize],
    n: usize,
    a: *const f32,
    a_row: usize,
    x: *const f32,
    at: usize,
    k: usize,
    first: bool,
    last: bool,
}

/// R rows x T taps of `shifted_dots` for one plane of one image, in registers, the
/// accumulators carried in from the image before (unless `first`) and out to the next
/// (or, when `last`, summed across the lanes into `dw`).
#[inline(always)]
unsafe fn dots_block<S: Lanes, const R: usize, const T: usize>(
    b: &DotBlock,
    saved: *mut S::V,
    dw: *mut f32,
) {
    let mut offs = [0isize; T];
    offs.copy_from_slice(&b.offsets[..T]);
    let mut acc = [[S::zero(); T]; R];
    if !b.first {
        for (i, acc) in acc.iter_mut().enumerate() {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = *saved.add(b.at + i * b.k + j);
            }
        }
    }
    let mut p = 0;
    while p < b.n {
        let mut xv = [S::zero(); T];
        for (xv, &off) in xv.iter_mut().zip(&offs) {
            *xv = S::load(b.x.offset(off).add(p));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = S::load(b.a.add(i * b.a_row + p));
            for (a, &xv) in acc.iter_mut().zip(&xv) {
                *a = S::fma(av, xv, *a);
            }
        }
        p += S::LANES;
    }
    for (i, acc) in acc.iter().enumerate() {
        for (j, &a) in acc.iter().enumerate() {
            let at = b.at + i * b.k + j;
            if b.last {
                *dw.add(at) += S::reduce(a);
            } else {
                *saved.add(at) = a;
            }
        }
    }
}

/// Positions of one image that `lane_dots` runs through before moving to the next plane:
/// a block of the transposed gradient (`LANE_BLOCK` x outputs values: 32 KiB for 64
/// channels) stays in L1 while every plane's nine taps read it (64 and 256 measured no
/// different).
const LANE_BLOCK: usize = 128;

/// The 3x3 weight gradient with the output channels in the vector lanes, for one image:
///
/// ```text
/// dwt[(c * 9 + t) * outs + o] += sum over p < n of  x[c][p + offset[t]] * dyt[p * outs + o]
/// ```
///
/// where `offset[ki * 3 + kj] = ki * step + kj` and `dyt` is the output gradient in the
/// wide layout transposed (one row of `outs` channels per position, zero at the columns
/// past the output's width). Each position's input values are broadcast to every lane and
/// its gradient row is read whole, so no load straddles a cache line and every partial sum
/// of a block of channels stays in registers for a block of positions: `shifted_dots` with
/// the roles of lanes and positions exchanged, for layers with many output channels.
/// `outs` must be a multiple of the vector width; `dwt` holds `planes * 9` rows of `outs`.
#[allow(clippy::too_many_arguments)]
pub fn lane_dots(
    isa: Isa,
    step: usize,
    n: usize,
    x: Planes,
    planes: usize,
    dyt: &[f32],
    outs: usize,
    dwt: &mut [f32],
) {
    if n == 0 || planes == 0 || outs == 0 {
        return;
    }
    assert!(outs.is_multiple_of(isa.lanes()), "outputs in whole vectors");
    x.check(planes, 1, 0, n + 2 * step + 2);
    assert!(dyt.len() >= n * outs && dwt.len() >= planes * 9 * outs);
    let args = LaneArgs {
        step,
        n,
        x: x.data[x.start..].as_ptr(),
        x_plane: x.plane,
        planes,
        dyt: dyt.as_ptr(),
        outs,
        dwt: dwt.as_mut_ptr(),
    };
    // SAFETY: the reads and writes were checked above; `isa` came from `simd::detect`.
    unsafe { call_isa_copy!(isa, lane_avx512, lane_avx2(&args)) }
}

struct LaneArgs {
    step: usize,
    n: usize,
    x: *const f32,
    x_plane: usize,
    planes: usize,
    dyt: *const f32,
    outs: usize,
    dwt: *mut f32,
}

isa_copies!(lane_avx512, lane_avx2 = lane_rows(a: &LaneArgs));

/// `lane_dots` in blocks of positions, then planes, then two vectors of channels (18
/// accumulators, and 9 broadcasts and 2 gradient vectors a position), one vector for the
/// last odd one. AVX2's 16 registers hold one vector's 9 accumulators.
#[inline(always)]
unsafe fn lane_rows<S: Lanes>(a: &LaneArgs) {
    let vectors = a.outs / S::LANES;
    let pairs = S::LANES == 16;
    let mut p0 = 0;
    while p0 < a.n {
        let count = LANE_BLOCK.min(a.n - p0);
        for c in 0..a.planes {
            let x = a.x.add(c * a.x_plane + p0);
            let mut v = 0;
            while v < vectors {
                let dy = a.dyt.add(p0 * a.outs + v * S::LANES);
                let dw = a.dwt.add(c * 9 * a.outs + v * S::LANES);
                if pairs && vectors - v >= 2 {
                    lane_block::<S, 2>(x, a.step, dy, a.outs, count, dw);
                    v += 2;
                } else {
                    lane_block::<S, 1>(x, a.step, dy, a.outs, count, dw);
                    v += 1;
                }
            }
        }
        p0 += count;
    }
}

/// Nine taps x `V` vectors of channels of `lane_dots` over `count` positions, the sums
/// read from and written back to `dw` (rows `outs` apart).
#[inline(always)]
unsafe fn lane_block<S: Lanes, const V: usize>(
    x: *const f32,
    step: usize,
    dy: *const f32,
    outs: usize,
    count: usize,
    dw: *mut f32,
) {
    let taps = std::array::from_fn(|t| (t / 3) * step + t % 3);
    broadcast_dots::<S, 9, V>(x, &taps, dy, outs, count, dw);
}

/// `dw[r][j] += sum over p < count of x[offsets[r] + p] * dy[p][j]` for `R` rows and `V`
/// vectors of channels `j`, `dy` in rows of `outs` and `dw` rows `outs` apart: each
/// position broadcasts `R` values against `V` vectors, `R x V` sums in registers. The hot
/// loop of `lane_dots` (the 9 taps of a 3x3 kernel) and of the Winograd weight gradient
/// (`winograd_dw.rs`, a block of input channels).
#[inline(always)]
pub(super) unsafe fn broadcast_dots<S: Lanes, const R: usize, const V: usize>(
    x: *const f32,
    offsets: &[usize; R],
    dy: *const f32,
    outs: usize,
    count: usize,
    dw: *mut f32,
) {
    let mut acc = [[S::zero(); V]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = S::load(dw.add(r * outs + j * S::LANES));
        }
    }
    for p in 0..count {
        let mut d = [S::zero(); V];
        for (j, d) in d.iter_mut().enumerate() {
            *d = S::load(dy.add(p * outs + j * S::LANES));
        }
        let at = x.add(p);
        for (acc, &offset) in acc.iter_mut().zip(offsets) {
            let b = S::splat(*at.add(offset));
            for (a, &d) in acc.iter_mut().zip(&d) {
                *a = S::fma(b, d, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (j, &a) in acc.iter().enumerate() {
            S::store(dw.add(r * outs + j * S::LANES), a);
        }
    }
}

/// `dst[r * width + j] = act(src[r * step + j] + bias)` for `r < rows`, `j < width`, where
/// act is the ReLU when `relu`: a convolution's wide output rows into NCHW. A row is
/// stored in whole vectors when both slices have room, its last vector running into the
/// next row, which is written after it; otherwise one value at a time. `isa` `None`: the
/// plain loop throughout.
#[allow(clippy::too_many_arguments)]
pub fn unwiden(
    isa: Option<Isa>,
    src: &[f32],
    step: usize,
    rows: usize,
    width: usize,
    bias: f32,
    relu: bool,
    dst: &mut [f32],
) {
    assert!(rows == 0 || ((rows - 1) * step + width <= src.len() && rows * width <= dst.len()));
    // SAFETY: every vector access is checked against the slices in `unwiden_rows`.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx512) => unwiden_avx512(src, step, rows, width, bias, relu, dst),
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx2) => unwiden_avx2(src, step, rows, width, bias, relu, dst),
            _ => unwiden_plain(src, step, 0..rows, width, bias, relu, dst),
        }
    }
}

/// `dst[r * step + j] = dy[r * width + j]` for `j < width` (only where `y > 0` when
/// `relu`: the fused ReLU's backward) and 0 for `width <= j < step`: an output gradient
/// into the wide layout. Whole vectors where `dst` has room; a row's last vector writes
/// zeros past `width`.
#[allow(clippy::too_many_arguments)]
pub fn widen(
    isa: Option<Isa>,
    dy: &[f32],
    y: &[f32],
    rows: usize,
    width: usize,
    relu: bool,
    dst: &mut [f32],
    step: usize,
) {
    assert!(dy.len() >= rows * width && y.len() >= rows * width && dst.len() >= rows * step);
    // SAFETY: every vector access is checked against the slices in `widen_rows`.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx512) => widen_avx512(dy, y, rows, width, relu, dst, step),
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx2) => widen_avx2(dy, y, rows, width, relu, dst, step),
            _ => widen_plain(dy, y, 0..rows, width, relu, dst, step),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn unwiden_plain(
    src: &[f32],
    step: usize,
    rows: std::ops::Range<usize>,
    width: usize,
    bias: f32,
    relu: bool,
    dst: &mut [f32],
) {
    for r in rows {
        let (src, dst) = (&src[r * step..][..width], &mut dst[r * width..][..width]);
        for (d, &s) in dst.iter_mut().zip(src) {
            let v = s + bias;
            *d = if !relu || v > 0.0 { v } else { 0.0 };
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn widen_plain(
    dy: &[f32],
    y: &[f32],
    rows: std::ops::Range<usize>,
    width: usize,
    relu: bool,
    dst: &mut [f32],
    step: usize,
) {
    for r in rows {
        let (dy, y) = (&dy[r * width..][..width], &y[r * width..][..width]);
        let (head, tail) = dst[r * step..][..step].split_at_mut(width);
        if relu {
            for ((d, &g), &y) in head.iter_mut().zip(dy).zip(y) {
                *d = if y > 0.0 { g } else { 0.0 };
            }
        } else {
            head.copy_from_slice(dy);
        }
        tail.fill(0.0);
    }
}

isa_copies!(unwiden_avx512, unwiden_avx2 = unwiden_rows(
    src: &[f32],
    step: usize,
    rows: usize,
    width: usize,
    bias: f32,
    relu: bool,
    dst: &mut [f32],
));
isa_copies!(widen_avx512, widen_avx2 = widen_rows(
    dy: &[f32],
    y: &[f32],
    rows: usize,
    width: usize,
    relu: bool,
    dst: &mut [f32],
    step: usize,
));

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn unwiden_rows<S: Lanes>(
    src: &[f32],
    step: usize,
    rows: usize,
    width: usize,
    bias: f32,
    relu: bool,
    dst: &mut [f32],
) {
    let whole = width.div_ceil(S::LANES) * S::LANES;
    let b = S::splat(bias);
    for r in 0..rows {
        let (s, d) = (r * step, r * width);
        if s + whole > src.len() || d + whole > dst.len() {
            unwiden_plain(src, step, r..r + 1, width, bias, relu, dst);
            continue;
        }
        let (sp, dp) = (src.as_ptr().add(s), dst.as_mut_ptr().add(d));
        let mut j = 0;
        while j < width {
            let v = S::add(S::load(sp.add(j)), b);
            S::store(dp.add(j), if relu { S::relu(v) } else { v });
            j += S::LANES;
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn widen_rows<S: Lanes>(
    dy: &[f32],
    y: &[f32],
    rows: usize,
    width: usize,
    relu: bool,
    dst: &mut [f32],
    step: usize,
) {
    let whole = width.div_ceil(S::LANES) * S::LANES;
    for r in 0..rows {
        let (s, d) = (r * width, r * step);
        if d + whole > dst.len() {
            widen_plain(dy, y, r..r + 1, width, relu, dst, step);
            continue;
        }
        let (gp, yp, dp) = (
            dy.as_ptr().add(s),
            y.as_ptr().add(s),
            dst.as_mut_ptr().add(d),
        );
        let mut j = 0;
        while j < width {
            let n = width - j;
            let g = if n >= S::LANES {
                S::load(gp.add(j))
            } else {
                S::load_first(gp.add(j), n)
            };
            let v = if !relu {
                g
            } else if n >= S::LANES {
                S::where_positive(g, S::load(yp.add(j)))
            } else {
                S::where_positive(g, S::load_first(yp.add(j), n))
            };
            S::store(dp.add(j), v);
            j += S::LANES;
        }
        if whole < step {
            dst[d + whole..d + step].fill(0.0);
        }
    }
}
