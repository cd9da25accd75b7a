//! The fast pooling: what `nn::Pool2d` computes, for one chunk of images at a time. A
//! 2x2, stride-2 max pool runs a vector kernel (`max_pool_2x2`), which the fast conv also
//! applies to its own output rows when the pool is fused into it; other windows run the
//! plain loops, which keep each window's winner for the backward pass instead of finding
//! it again as `nn::Pool2d::backward` does. Same values, same winners: the first maximum
//! in row-major order.

use super::simd::{self, isa_copies, Isa, Lanes};
use super::Scratch;
use crate::nn::{PoolKind, PoolShape};

/// The forward pass of pooling `kind` over one chunk: `x` into `y`; max pooling keeps each
/// output's winning position within its plane in `s.indices`.
pub fn forward_chunk(kind: PoolKind, shape: &PoolShape, x: &[f32], y: &mut [f32], s: &mut Scratch) {
    let (k, st) = (shape.kernel, shape.stride);
    let (h, w) = (shape.in_h, shape.in_w);
    let (oh, ow) = (shape.out_h, shape.out_w);
    let (plane_in, plane_out) = (h * w, oh * ow);
    match kind {
        PoolKind::Max => {
            // `indices`: the winning position within its (H, W) plane, per output value.
            s.indices.resize(y.len(), 0);
            if k == 2 && st == 2 {
                // Plane by plane in order, each given the rest of the chunk, so whole
                // vectors may run on into the next plane.
                let isa = simd::detect();
                for p in 0..y.len() / plane_out {
                    let (x, y) = (&x[p * plane_in..], &mut y[p * plane_out..]);
                    let arg = Some(&mut s.indices[p * plane_out..]);
                    max_pool_2x2(isa, x, w, None, false, (oh, ow), y, arg);
                }
                return;
            }
            for ((y, arg), x) in y
                .chunks_mut(plane_out)
                .zip(s.indices.chunks_mut(plane_out))
                .zip(x.chunks(plane_in))
            {
                max_pool_plane(x, w, k, st, y, arg, ow);
            }
        }
        PoolKind::Avg => {
            let scale = 1.0 / (k * k) as f32;
            for (y, x) in y.chunks_mut(plane_out).zip(x.chunks(plane_in)) {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = 0.0;
                        for di in 0..k {
                            let row = (i * st + di) * w + j * st;
                            acc += x[row..row + k].iter().sum::<f32>();
                        }
                        y[i * ow + j] = acc * scale;
                    }
                }
            }
        }
    }
}

/// The backward pass of pooling `kind` over one chunk: `dy` into `dx`, through the
/// positions the forward pass kept.
pub fn backward_chunk(kind: PoolKind, shape: &PoolShape, dy: &[f32], dx: &mut [f32], s: &Scratch) {
    let (k, st) = (shape.kernel, shape.stride);
    let (h, w) = (shape.in_h, shape.in_w);
    let (oh, ow) = (shape.out_h, shape.out_w);
    let (plane_in, plane_out) = (h * w, oh * ow);
    if kind == PoolKind::Max && k == 2 && st == 2 {
        let isa = simd::detect();
        for ((dx, arg), dy) in dx
            .chunks_mut(plane_in)
            .zip(s.indices.chunks(plane_out))
            .zip(dy.chunks(plane_out))
        {
            unpool_2x2(isa, dy, None, arg, (oh, ow), w, h, dx);
        }
        return;
    }
    dx.fill(0.0);
    match kind {
        PoolKind::Max => {
            for ((dx, arg), dy) in dx
                .chunks_mut(plane_in)
                .zip(s.indices.chunks(plane_out))
                .zip(dy.chunks(plane_out))
            {
                for (&a, &d) in arg.iter().zip(dy) {
                    dx[a as usize] += d;
                }
            }
        }
        PoolKind::Avg => {
            let scale = 1.0 / (k * k) as f32;
            for (dx, dy) in dx.chunks_mut(plane_in).zip(dy.chunks(plane_out)) {
                for i in 0..oh {
                    for j in 0..ow {
                        let d = dy[i * ow + j] * scale;
                        for di in 0..k {
                            let row = (i * st + di) * w + j * st;
                            for v in &mut dx[row..row + k] {
                                *v += d;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Max pooling of one (H, W) plane with any kernel and stride: the plain version.
pub(crate) fn max_pool_plane(
    x: &[f32],
    w: usize,
    k: usize,
    s: usize,
    y: &mut [f32],
    arg: &mut [u32],
    ow: usize,
) {
    for (o, (yv, av)) in y.iter_mut().zip(arg.iter_mut()).enumerate() {
        let (i, j) = (o / ow, o % ow);
        let mut best = i * s * w + j * s;
        for di in 0..k {
            for dj in 0..k {
                let p = (i * s + di) * w + j * s + dj;
                // Strict `>`: the first of tied values wins.
                if x[p] > x[best] {
                    best = p;
                }
            }
        }
        *yv = x[best];
        *av = best as u32;
    }
}

/// 2x2, stride-2 max pooling of one plane whose rows lie `step` apart in `src`: `ph` x
/// `pw` maxima into `y` and each window's winning position (`row * step + column`) into
/// `arg`. When values tie, the first in row-major order wins. The pooling layer calls it
/// on its input; a conv with the pool fused (`Conv2d::fuse_max_pool`) on its own output
/// rows, with `bias` added and, when `relu`, the ReLU applied first: the same values and
/// the same rule, so a fused network gives the same bits as the separate layers. `arg`
/// `None`: the positions are not wanted (evaluation). With `isa`, rows go in whole vectors
/// where the slices have room (`y` and `arg` may run on past the plane: the next plane,
/// written later, takes the spill), one value at a time otherwise.
#[allow(clippy::too_many_arguments)]
pub fn max_pool_2x2(
    isa: Option<Isa>,
    src: &[f32],
    step: usize,
    bias: Option<f32>,
    relu: bool,
    (ph, pw): (usize, usize),
    y: &mut [f32],
    arg: Option<&mut [u32]>,
) {
    if ph == 0 || pw == 0 {
        return;
    }
    assert!((2 * ph - 1) * step + 2 * pw <= src.len() && 2 * pw <= step);
    assert!(y.len() >= ph * pw && arg.as_ref().is_none_or(|a| a.len() >= ph * pw));
    let shape = (ph, pw);
    // SAFETY: every vector access is checked against the slices in `pool_rows`.
    unsafe {
        match (isa, arg) {
            #[cfg(target_arch = "x86_64")]
            (Some(Isa::Avx512), Some(arg)) => {
                pool_avx512::<true>(src, step, bias, relu, shape, y, arg)
            }
            #[cfg(target_arch = "x86_64")]
            (Some(Isa::Avx512), None) => {
                pool_avx512::<false>(src, step, bias, relu, shape, y, &mut [])
            }
            #[cfg(target_arch = "x86_64")]
            (Some(Isa::Avx2), Some(arg)) => pool_avx2::<true>(src, step, bias, relu, shape, y, arg),
            #[cfg(target_arch = "x86_64")]
            (Some(Isa::Avx2), None) => pool_avx2::<false>(src, step, bias, relu, shape, y, &mut []),
            (_, arg) => pool_plain(src, step, bias, relu, 0..ph, pw, y, arg),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn pool_plain(
    src: &[f32],
    step: usize,
    bias: Option<f32>,
    relu: bool,
    rows: std::ops::Range<usize>,
    pw: usize,
    y: &mut [f32],
    mut arg: Option<&mut [u32]>,
) {
    let act = |v: f32| {
        let v = bias.map_or(v, |b| v + b);
        if !relu || v > 0.0 {
            v
        } else {
            0.0
        }
    };
    for r in rows {
        let (t0, b0) = (2 * r * step, (2 * r + 1) * step);
        let (top, bottom) = (&src[t0..t0 + 2 * pw], &src[b0..b0 + 2 * pw]);
        let yr = &mut y[r * pw..][..pw];
        for (c, yv) in yr.iter_mut().enumerate() {
            let (mut best, mut at) = (act(top[2 * c]), t0 + 2 * c);
            let b = act(top[2 * c + 1]);
            if b > best {
                (best, at) = (b, t0 + 2 * c + 1);
            }
            let c0 = act(bottom[2 * c]);
            if c0 > best {
                (best, at) = (c0, b0 + 2 * c);
            }
            let d = act(bottom[2 * c + 1]);
            if d > best {
                (best, at) = (d, b0 + 2 * c + 1);
            }
            *yv = best;
            if let Some(arg) = arg.as_deref_mut() {
                arg[r * pw + c] = at as u32;
            }
        }
    }
}

isa_copies!(pool_avx512, pool_avx2 = pool_rows<const ARG: bool>(
    src: &[f32],
    step: usize,
    bias: Option<f32>,
    relu: bool,
    shape: (usize, usize),
    y: &mut [f32],
    arg: &mut [u32],
));

/// `max_pool_2x2` a vector of windows at a time: the top and bottom rows' values split
/// into even and odd columns, then the four candidates compared in window order, each
/// with `select_gt` (strictly greater), as the plain loop does. `ARG`: record positions.
#[inline(always)]
unsafe fn pool_rows<S: Lanes, const ARG: bool>(
    src: &[f32],
    step: usize,
    bias: Option<f32>,
    relu: bool,
    (ph, pw): (usize, usize),
    y: &mut [f32],
    arg: &mut [u32],
) {
    let whole = pw.div_ceil(S::LANES) * S::LANES;
    let (b, one, down) = (
        bias.map(|b| S::splat(b)),
        S::splat(1.0),
        S::splat(step as f32),
    );
    let two_iota = S::add(S::iota(), S::iota());
    let act = |v: S::V| {
        let v = b.map_or(v, |b| S::add(v, b));
        if relu {
            S::relu(v)
        } else {
            v
        }
    };
    for r in 0..ph {
        let (t0, b0) = (2 * r * step, (2 * r + 1) * step);
        // Room for whole vectors, and positions exact as floats.
        let room = b0 + 2 * whole <= src.len()
            && r * pw + whole <= y.len()
            && (!ARG || r * pw + whole <= arg.len())
            && b0 + 2 * whole < 1 << 24;
        if !room {
            let arg = ARG.then_some(&mut *arg);
            pool_plain(src, step, bias, relu, r..r + 1, pw, y, arg);
            continue;
        }
        let mut c = 0;
        while c < pw {
            let (tp, bp) = (src.as_ptr().add(t0 + 2 * c), src.as_ptr().add(b0 + 2 * c));
            let (te, to) = S::deinterleave(S::load(tp), S::load(tp.add(S::LANES)));
            let (be, bo) = S::deinterleave(S::load(bp), S::load(bp.add(S::LANES)));
            let pos = S::add(two_iota, S::splat((t0 + 2 * c) as f32));
            let (mut best, mut at) = (act(te), pos);
            for (v, p) in [
                (act(to), S::add(pos, one)),
                (act(be), S::add(pos, down)),
                (act(bo), S::add(S::add(pos, down), one)),
            ] {
                if ARG {
                    at = S::select_gt(v, best, p, at);
                }
                // v > best ? v : best, as the plain loop.
                best = S::max(v, best);
            }
            S::store(y.as_mut_ptr().add(r * pw + c), best);
            if ARG {
                S::store_u32(arg.as_mut_ptr().add(r * pw + c), at);
            }
            c += S::LANES;
        }
    }
}

/// The backward pass of a 2x2, stride-2 max pool for one plane: `dy` (`ph` x `pw`) goes to
/// each window's winner (`arg`, as `max_pool_2x2` wrote it: `row * step + column`), only
/// where `mask` is positive if given (a fused ReLU's output); every other value of `dx`'s
/// `rows` rows of `step` is set to 0. Each window goes to 0.0 + dy, as adding into a zeroed
/// plane does, so a -0.0 gradient becomes +0.0 on every path. With `isa`, a row pair of
/// windows is written in whole vectors, every value once, instead of zeroing the plane and
/// storing the winners one by one: pool1's backward over a batch of 128, one thread,
/// 3.0–4.5 → 2.3–2.7 ms; in `convnet bench --preset cnn-plus` 1.56–1.89 → 1.37–1.42 ms a
/// batch. (Scalar code writing each window once had been 5x slower than the scatter.)
#[allow(clippy::too_many_arguments)]
pub fn unpool_2x2(
    isa: Option<Isa>,
    dy: &[f32],
    mask: Option<&[f32]>,
    arg: &[u32],
    (ph, pw): (usize, usize),
    step: usize,
    rows: usize,
    dx: &mut [f32],
) {
    let n = ph * pw;
    assert!(dy.len() >= n && arg.len() >= n && mask.is_none_or(|m| m.len() >= n));
    assert!(2 * ph <= rows && 2 * pw <= step && dx.len() >= rows * step);
    let exact = rows * step < 1 << 24;
    // SAFETY: the vector path writes `dx` only inside its `rows * step` values (checked
    // above) and reads the first `n` of `dy`, `arg` and `mask`; `arg`'s values are compared,
    // never used as addresses (the plain path indexes with them, checked).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx512) if exact => unpool_avx512(dy, mask, arg, (ph, pw), step, rows, dx),
            #[cfg(target_arch = "x86_64")]
            Some(Isa::Avx2) if exact => unpool_avx2(dy, mask, arg, (ph, pw), step, rows, dx),
            _ => unpool_plain(dy, mask, arg, n, &mut dx[..rows * step]),
        }
    }
}

fn unpool_plain(dy: &[f32], mask: Option<&[f32]>, arg: &[u32], n: usize, dx: &mut [f32]) {
    dx.fill(0.0);
    for (k, (&a, &d)) in arg[..n].iter().zip(dy).enumerate() {
        if mask.is_none_or(|m| m[k] > 0.0) {
            dx[a as usize] += d;
        }
    }
}

isa_copies!(unpool_avx512, unpool_avx2 = unpool_rows(
    dy: &[f32],
    mask: Option<&[f32]>,
    arg: &[u32],
    shape: (usize, usize),
    step: usize,
    rows: usize,
    dx: &mut [f32],
));

/// `unpool_2x2` a vector of windows at a time: each window's offset from its top-left
/// corner (0, 1, `step` or `step + 1`) picks which of its four values gets the gradient;
/// the top and bottom rows' even and odd columns interleaved into place. Windows past
/// `pw` (and columns past `2 pw`) get zeros, rows past `2 ph` zeros.
#[inline(always)]
unsafe fn unpool_rows<S: Lanes>(
    dy: &[f32],
    mask: Option<&[f32]>,
    arg: &[u32],
    (ph, pw): (usize, usize),
    step: usize,
    rows: usize,
    dx: &mut [f32],
) {
    let zero = S::zero();
    let two_iota = S::add(S::iota(), S::iota());
    let (one, down, down_one) = (
        S::splat(1.0),
        S::splat(step as f32),
        S::splat(step as f32 + 1.0),
    );
    let out = dx.as_mut_ptr();
    // Stores `v` at row `r`, from column `c`, cut at the row's end.
    let put = |r: usize, c: usize, v: S::V| {
        if c < step {
            S::store_first(out.add(r * step + c), v, (step - c).min(S::LANES));
        }
    };
    for r in 0..ph {
        let mut c = 0;
        while 2 * c < step {
            let n = pw.saturating_sub(c).min(S::LANES);
            let at = r * pw + c;
            let (mut d, a) = if n > 0 {
                (
                    S::load_first(dy.as_ptr().add(at), n),
                    S::load_u32_first(arg.as_ptr().add(at), n),
                )
            } else {
                (zero, zero)
            };
            if let Some(m) = mask.filter(|_| n > 0) {
                d = S::where_positive(d, S::load_first(m.as_ptr().add(at), n));
            }
            // 0.0 + dy, as the plain loop's sum into zeros: -0.0 becomes +0.0.
            d = S::add(zero, d);
            let off = S::sub(a, S::add(two_iota, S::splat((2 * r * step + 2 * c) as f32)));
            let (t0, t1) = S::interleave(
                S::select_eq(off, zero, d, zero),
                S::select_eq(off, one, d, zero),
            );
            let (b0, b1) = S::interleave(
                S::select_eq(off, down, d, zero),
                S::select_eq(off, down_one, d, zero),
            );
            put(2 * r, 2 * c, t0);
            put(2 * r, 2 * c + S::LANES, t1);
            put(2 * r + 1, 2 * c, b0);
            put(2 * r + 1, 2 * c + S::LANES, b1);
            c += S::LANES;
        }
    }
    dx[2 * ph * step..rows * step].fill(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_2x2_kernel_matches_the_plain_loop_including_ties() {
        // Few distinct values, so most windows hold ties; odd sizes leave ragged edges;
        // rows of 39 need three 16-lane vectors. Several planes in one slice, as a chunk
        // gives them, so whole vectors spill into the next plane.
        let planes = 3;
        for (h, w) in [(6, 7), (5, 39), (4, 16)] {
            let x: Vec<f32> = (0..planes * h * w)
                .map(|i| ((i * 7919) % 3) as f32)
                .collect();
            let (oh, ow) = (h / 2, w / 2);
            let (mut want_y, mut want_a) = (vec![0.0; planes * oh * ow], vec![0; planes * oh * ow]);
            for p in 0..planes {
                let (y, a) = (&mut want_y[p * oh * ow..], &mut want_a[p * oh * ow..]);
                max_pool_plane(
                    &x[p * h * w..],
                    w,
                    2,
                    2,
                    &mut y[..oh * ow],
                    &mut a[..oh * ow],
                    ow,
                );
            }
            let mut paths = vec![None];
            paths.extend(simd::supported().into_iter().map(Some));
            for isa in paths {
                let (mut y, mut a) = (vec![f32::NAN; planes * oh * ow], vec![0; planes * oh * ow]);
                for p in 0..planes {
                    let (yp, ap) = (&mut y[p * oh * ow..], Some(&mut a[p * oh * ow..]));
                    max_pool_2x2(isa, &x[p * h * w..], w, None, false, (oh, ow), yp, ap);
                }
                assert_eq!(y, want_y, "{h}x{w} on {isa:?}");
                assert_eq!(a, want_a, "{h}x{w} on {isa:?}");
            }
        }
    }

    #[test]
    fn the_2x2_backward_kernel_matches_the_plain_scatter() {
        // Winners from the forward kernel over few distinct values (ties); odd sizes (a
        // last row and column outside every window); rows wider than the windows (`step`,
        // the conv's wide layout); -0.0 gradients; with and without a ReLU mask. Planes
        // side by side in one slice, each written whole.
        for (h, w, step) in [
            (6, 7, 7),
            (5, 39, 39),
            (4, 16, 18),
            (7, 9, 12),
            (2, 2, 2),
            (1, 5, 5),
        ] {
            let (ph, pw) = (h / 2, w / 2);
            let planes = 3;
            let x: Vec<f32> = (0..planes * h * step + 64)
                .map(|i| ((i * 7919) % 3) as f32 - 1.0)
                .collect();
            let n = ph * pw;
            let (mut y, mut arg) = (vec![0.0; planes * n + 16], vec![0u32; planes * n + 16]);
            for p in 0..planes {
                let (yp, ap) = (&mut y[p * n..], Some(&mut arg[p * n..]));
                max_pool_2x2(
                    None,
                    &x[p * h * step..],
                    step,
                    None,
                    false,
                    (ph, pw),
                    yp,
                    ap,
                );
            }
            let dy: Vec<f32> = (0..planes * n)
                .map(|i| {
                    if i % 5 == 0 {
                        -0.0
                    } else {
                        (i as f32 * 0.37).sin()
                    }
                })
                .collect();
            for relu in [false, true] {
                let mask = relu.then_some(&y[..]);
                let run = |isa| {
                    let mut dx = vec![f32::NAN; planes * h * step];
                    for (p, dx) in dx.chunks_mut(h * step).enumerate() {
                        let (d, a) = (&dy[p * n..], &arg[p * n..]);
                        let m = mask.map(|m| &m[p * n..]);
                        unpool_2x2(isa, d, m, a, (ph, pw), step, h, dx);
                    }
                    dx.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
                };
                let want = run(None);
                let kept = want.iter().filter(|&&v| v != 0).count();
                assert!(n == 0 || kept > 0, "{h}x{w}: no gradient reached dx");
                for isa in simd::supported() {
                    assert_eq!(
                        run(Some(isa)),
                        want,
                        "{h}x{w} step {step} relu {relu} on {isa:?}"
                    );
                }
            }
        }
    }
}
