//! The fast batch norm: what `nn::BatchNorm` computes, cut into chunks of the batch so that
//! it runs inside the chunk pipeline instead of as passes of its own over whole-batch
//! tensors. Its statistics span the batch, so each pass has two halves with the batch's
//! barrier between them:
//!
//! ```text
//! forward   stats_chunk:  per chunk, per channel (count, mean, M2), right after the layer
//!                         before wrote the chunk (it is still in cache)
//!           finish_stats: the chunks' parts combined in chunk order (Chan et al.), the
//!                         running statistics, scale = w / sqrt(var + eps), shift
//!           apply_chunk:  y = x * scale + shift (and the ReLU after it, when fused), as the
//!                         next stage reads its input
//! backward  grad_chunk:   per chunk, per channel sum(g) and sum(g * (x - mean)), where g
//!                         is dy (masked by the fused ReLU), after the layers above it
//!           finish_grads: the parts added in chunk order: dbias, dweight
//!           dx_chunk:     dx = k * (g - dbias / M - xhat * dweight / M), as the stage
//!                         below starts its backward pass
//! ```
//!
//! A 2x2 max pool after the batch norm (and its ReLU) may be fused too: `apply_chunk` then
//! pools each plane as it is normalised and keeps the windows' winners, and the backward
//! passes read the pooled gradient, sending each value to its winner plane by plane into a
//! buffer in L1 (`Unpool`) exactly as the pool's own backward would. The full-size output
//! gradient is then never written to memory and read back by the stage below.
//!
//! Sums run in f64 (8 interleaved lanes within a chunk); chunks are fixed and combined in
//! order, so results repeat on any thread count. Evaluation passes need no barrier: the
//! running statistics give scale and shift before the pass.

use super::pool;
use super::simd::{self, call_isa_copy, isa_copies, on_best_isa, Isa, Plain, Wide8};
use crate::nn::{ActivationKind, BatchNorm};

// The sums below run in f64, in 8 interleaved partial sums (lanes) over each plane's
// values, added together at the end, the values past the last 8 after them: a fixed
// order, so results repeat, and the same on every vector unit (`Wide8`). The gradient
// sums make sum(g) and sum(g * (x - mean)) in one pass where they took two: they are bound
// by reading `x` (two channels at once, four chains, ran slower). The statistics sum four
// samples' planes at a time, so their add chains overlap (each plane's sum still in its
// own order, added in sample order: the same bits). Explicit vectors: given several plain
// loops, the compiler vectorised across the planes, four lanes gathered from four places,
// or left them scalar. (BENCHMARKS.md, seventeenth session: the batch norms' backward
// 0.5 ms less of a 23-24 ms cnn-plus step on an AMD EPYC, Zen 4.)

/// The lanes of `acc` added in order, then `rest`: how each sum ends.
#[inline(always)]
unsafe fn total<W: Wide8>(acc: W::D, rest: f64) -> f64 {
    W::lanes(acc).iter().sum::<f64>() + rest
}

/// `sum(v)` of each of `N` equally long planes.
#[inline(always)]
unsafe fn plane_sums<W: Wide8, const N: usize>(p: [&[f32]; N]) -> [f64; N] {
    let len = p[0].len();
    assert!(p.iter().all(|p| p.len() == len));
    let mut acc = [W::zero(); N];
    for i in (0..len / 8 * 8).step_by(8) {
        for (acc, p) in acc.iter_mut().zip(p) {
            *acc = W::add(*acc, W::widen(p.as_ptr().add(i)));
        }
    }
    std::array::from_fn(|n| {
        let rest = p[n][len / 8 * 8..].iter().map(|&v| v as f64).sum::<f64>();
        total::<W>(acc[n], rest)
    })
}

/// `sum((v - mean)^2)` of each of `N` equally long planes.
#[inline(always)]
unsafe fn plane_square_sums<W: Wide8, const N: usize>(p: [&[f32]; N], mean: f64) -> [f64; N] {
    let len = p[0].len();
    assert!(p.iter().all(|p| p.len() == len));
    let m = W::splat(mean);
    let mut acc = [W::zero(); N];
    for i in (0..len / 8 * 8).step_by(8) {
        for (acc, p) in acc.iter_mut().zip(p) {
            let d = W::sub(W::widen(p.as_ptr().add(i)), m);
            *acc = W::add(*acc, W::mul(d, d));
        }
    }
    std::array::from_fn(|n| {
        let rest = p[n][len / 8 * 8..]
            .iter()
            .map(|&v| (v as f64 - mean).powi(2));
        total::<W>(acc[n], rest.sum::<f64>())
    })
}

/// `[sum(g), sum(g * (x - mean))]` over a plane of `dy` and `x`, g being `dy` or, with
/// `RELU`, `dy` where `x * a + b > 0`, else 0: both sums in one pass over the planes.
#[inline(always)]
unsafe fn plane_grad_sums<W: Wide8, const RELU: bool>(
    (dy, x): (&[f32], &[f32]),
    mean: f64,
    (a, b): (f32, f32),
) -> [f64; 2] {
    let len = x.len();
    assert_eq!(dy.len(), len);
    let m = W::splat(mean);
    let (mut sg, mut sgx) = (W::zero(), W::zero());
    for i in (0..len / 8 * 8).step_by(8) {
        let (gp, xp) = (dy.as_ptr().add(i), x.as_ptr().add(i));
        let g = if RELU {
            W::widen_relu(gp, xp, a, b)
        } else {
            W::widen(gp)
        };
        sg = W::add(sg, g);
        sgx = W::add(sgx, W::mul(g, W::sub(W::widen(xp), m)));
    }
    let g = |(&g, &x): (&f32, &f32)| if RELU { relu_grad(x * a + b, g) } else { g };
    let tail = || dy[len / 8 * 8..].iter().zip(&x[len / 8 * 8..]);
    let rest_g = tail().map(|p| g(p) as f64).sum::<f64>();
    let rest_gx = tail()
        .map(|p| g(p) as f64 * (*p.1 as f64 - mean))
        .sum::<f64>();
    [total::<W>(sg, rest_g), total::<W>(sgx, rest_gx)]
}

/// Channel `c`'s slice of sample `s` of a chunk.
#[inline(always)]
fn plane_of(data: &[f32], (channels, plane): (usize, usize), s: usize, c: usize) -> &[f32] {
    &data[(s * channels + c) * plane..][..plane]
}

/// The fused ReLU: `nn::ActivationKind::Relu` itself (inlined and vectorised here).
#[inline(always)]
fn relu(v: f32) -> f32 {
    ActivationKind::Relu.apply(v)
}

/// The fused ReLU's backward: `dy` where its output `y` is positive, else 0.
#[inline(always)]
fn relu_grad(y: f32, dy: f32) -> f32 {
    ActivationKind::Relu.gradient(y, dy)
}

/// (count, mean, M2) per channel of one chunk into `stats`.
pub(crate) fn stats_kernel(
    isa: Option<Isa>,
    x: &[f32],
    shape: (usize, usize),
    stats: &mut Vec<f64>,
) {
    // SAFETY: `isa`, when given, is on this CPU (checked); the sums read inside slices.
    unsafe {
        match isa {
            None => stats_on::<Plain>(x, shape, stats),
            Some(isa) => {
                assert!(simd::has(isa), "{isa:?} is not on this CPU");
                call_isa_copy!(isa, stats_avx512, stats_avx2(x, shape, stats))
            }
        }
    }
}

isa_copies!(stats_avx512, stats_avx2 = stats_on(x: &[f32], shape: (usize, usize), stats: &mut Vec<f64>));

/// `stats_kernel` on `W`: each channel's planes four samples at a time, their sums added
/// in sample order.
#[inline(always)]
unsafe fn stats_on<W: Wide8>(x: &[f32], shape: (usize, usize), stats: &mut Vec<f64>) {
    let (channels, plane) = shape;
    let samples = x.len() / (channels * plane).max(1);
    let count = (samples * plane) as f64;
    stats.clear();
    for c in 0..channels {
        let planes =
            |s: usize| -> [&[f32]; 4] { std::array::from_fn(|k| plane_of(x, shape, s + k, c)) };
        let (four, rest) = (samples / 4 * 4, samples / 4 * 4..samples);
        let mut sum = 0.0;
        for s in (0..four).step_by(4) {
            plane_sums::<W, 4>(planes(s)).iter().for_each(|v| sum += v);
        }
        for s in rest.clone() {
            sum += plane_sums::<W, 1>([plane_of(x, shape, s, c)])[0];
        }
        let mean = sum / count;
        let mut m2 = 0.0;
        for s in (0..four).step_by(4) {
            plane_square_sums::<W, 4>(planes(s), mean)
                .iter()
                .for_each(|v| m2 += v);
        }
        for s in rest {
            m2 += plane_square_sums::<W, 1>([plane_of(x, shape, s, c)], mean)[0];
        }
        stats.extend([count, mean, m2]);
    }
}

on_best_isa! {
    /// y = x * scale + shift per channel, then the ReLU when `fused_relu`.
    fn apply_kernel(
        x: &[f32],
        y: &mut [f32],
        shape: (usize, usize),
        scale: &[f32],
        shift: &[f32],
        fused_relu: bool,
    ) {
        let (channels, plane) = shape;
        let per_sample = channels * plane;
        for (y, x) in y.chunks_mut(per_sample).zip(x.chunks(per_sample)) {
            for (c, (y, x)) in y.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
                let (scale, shift) = (scale[c], shift[c]);
                if fused_relu {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = relu(x * scale + shift);
                    }
                } else {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = x * scale + shift;
                    }
                }
            }
        }
    }
}

/// The output gradient of a batch norm whose 2x2 max pool is fused: `dy` is the pooled
/// gradient, `arg` the winners the forward pass kept, each plane (`in_hw`) rebuilt at full
/// size when a kernel reaches it.
#[derive(Clone, Copy)]
pub(crate) struct Unpool<'a> {
    isa: Option<Isa>,
    arg: &'a [u32],
    in_hw: (usize, usize),
}

impl<'a> Unpool<'a> {
    pub(crate) fn new(isa: Option<Isa>, arg: &'a [u32], in_hw: (usize, usize)) -> Self {
        Unpool { isa, arg, in_hw }
    }

    /// Plane `k`'s full-size gradient into `buf` (one plane long): each pooled value at
    /// its window's winner, zeros elsewhere, as `pool::backward_chunk` writes it.
    #[inline(always)]
    fn plane<'b>(&self, dy: &[f32], k: usize, buf: &'b mut [f32]) -> &'b [f32] {
        let (h, w) = self.in_hw;
        let pooled = (h / 2) * (w / 2);
        let (dy, arg) = (
            &dy[k * pooled..][..pooled],
            &self.arg[k * pooled..][..pooled],
        );
        pool::unpool_2x2(self.isa, dy, None, arg, (h / 2, w / 2), w, h, buf);
        buf
    }
}

/// A chunk's output gradient as the gradient kernels read it: `dy` itself, or, with the
/// max pool fused (`pooled`), the pooled gradient that each plane is rebuilt from.
#[derive(Clone, Copy)]
pub(crate) struct OutGrad<'a> {
    pub dy: &'a [f32],
    pub pooled: Option<Unpool<'a>>,
}

impl OutGrad<'_> {
    /// Plane `(s, c)`: `dy`'s own, or rebuilt into `buf` from the pooled one.
    #[inline(always)]
    fn plane<'b>(
        &'b self,
        shape: (usize, usize),
        (s, c): (usize, usize),
        buf: &'b mut [f32],
    ) -> &'b [f32] {
        match &self.pooled {
            Some(u) => u.plane(self.dy, s * shape.0 + c, buf),
            None => plane_of(self.dy, shape, s, c),
        }
    }

    /// The buffer `plane` needs for planes of `len` values.
    fn buffer(&self, len: usize) -> Vec<f32> {
        vec![0.0; if self.pooled.is_some() { len } else { 0 }]
    }
}

/// sum(g) and sum(g * (x - mean)) per channel of one chunk into `sums`, g being `dy`
/// masked by the fused ReLU: where `x * scale + shift`, the ReLU's input, is positive
/// (`relu_of`: that scale and shift). The mask is recomputed from `x`, which is read
/// anyway, rather than read from the ReLU's output: a third less memory traffic.
pub(crate) fn grad_kernel(
    isa: Option<Isa>,
    x: &[f32],
    relu_of: Option<(&[f32], &[f32])>,
    dy: OutGrad<'_>,
    shape: (usize, usize),
    mean: &[f32],
    sums: &mut Vec<f64>,
) {
    let args = (x, relu_of, dy, shape, mean);
    // SAFETY: as `stats_kernel`.
    unsafe {
        match isa {
            None => grad_on::<Plain>(args, sums),
            Some(isa) => {
                assert!(simd::has(isa), "{isa:?} is not on this CPU");
                call_isa_copy!(isa, grad_avx512, grad_avx2(args, sums))
            }
        }
    }
}

/// `grad_kernel`'s inputs: x, the fused ReLU's scale and shift, the output gradient, the
/// shape (channels, plane) and the mean.
type GradArgs<'a> = (
    &'a [f32],
    Option<(&'a [f32], &'a [f32])>,
    OutGrad<'a>,
    (usize, usize),
    &'a [f32],
);

isa_copies!(grad_avx512, grad_avx2 = grad_on(args: GradArgs, sums: &mut Vec<f64>));

/// `grad_kernel` on `W`.
#[inline(always)]
unsafe fn grad_on<W: Wide8>(args: GradArgs, sums: &mut Vec<f64>) {
    let (x, relu_of, dy, shape, mean) = args;
    let (channels, plane) = shape;
    let samples = x.len() / (channels * plane).max(1);
    let mut full = dy.buffer(plane);
    // The chunk in memory order (samples outer): channels outer jumped a sample's length
    // every plane. Each channel's planes are still added in sample order, so the sums are
    // the same as summed channel by channel.
    sums.clear();
    sums.resize(2 * channels, 0.0);
    for s in 0..samples {
        for c in 0..channels {
            let planes = (dy.plane(shape, (s, c), &mut full), plane_of(x, shape, s, c));
            let m = mean[c] as f64;
            let [sg, sgx] = match relu_of {
                Some((scale, shift)) => plane_grad_sums::<W, true>(planes, m, (scale[c], shift[c])),
                None => plane_grad_sums::<W, false>(planes, m, (1.0, 0.0)),
            };
            sums[2 * c] += sg;
            sums[2 * c + 1] += sgx;
        }
    }
}

/// What `dx_kernel` needs per channel: mean, 1/std, weight, and sum(g)/M, sum(g*xhat)/M
/// (`None` after an evaluation pass, whose statistics are constants).
pub(crate) struct DxTerms<'a> {
    pub mean: &'a [f32],
    pub inv_std: &'a [f32],
    pub weight: &'a [f32],
    pub trained: Option<(&'a [f32], &'a [f32])>,
}

on_best_isa! {
    /// dx = k * (g - mean_dbias - xhat * mean_dweight), or k * g after an evaluation pass,
    /// for one chunk.
    fn dx_kernel(
        x: &[f32],
        relu_of: Option<(&[f32], &[f32])>,
        dy: OutGrad<'_>,
        dx: &mut [f32],
        shape: (usize, usize),
        t: &DxTerms,
    ) {
        let (channels, plane) = shape;
        let samples = x.len() / (channels * plane).max(1);
        let mut full = dy.buffer(plane);
        for s in 0..samples {
            for c in 0..channels {
                let x = plane_of(x, shape, s, c);
                let dy = dy.plane(shape, (s, c), &mut full);
                let dx = &mut dx[(s * channels + c) * plane..][..plane];
                let relu = relu_of.map(|(scale, shift)| (scale[c], shift[c]));
                let k = t.weight[c] * t.inv_std[c];
                let (mc, ic) = (t.mean[c], t.inv_std[c]);
                match (t.trained, relu) {
                    (Some((mdb, mdw)), Some((a, b))) => {
                        let (mdb, mdw) = (mdb[c], mdw[c]);
                        for ((d, &xv), &g) in dx.iter_mut().zip(x).zip(dy) {
                            *d = k * (relu_grad(xv * a + b, g) - mdb - (xv - mc) * ic * mdw);
                        }
                    }
                    (Some((mdb, mdw)), None) => {
                        let (mdb, mdw) = (mdb[c], mdw[c]);
                        for ((d, &xv), &g) in dx.iter_mut().zip(x).zip(dy) {
                            *d = k * (g - mdb - (xv - mc) * ic * mdw);
                        }
                    }
                    (None, Some((a, b))) => {
                        for ((d, &g), &xv) in dx.iter_mut().zip(dy).zip(x) {
                            *d = k * relu_grad(xv * a + b, g);
                        }
                    }
                    (None, None) => {
                        for (d, &g) in dx.iter_mut().zip(dy) {
                            *d = k * g;
                        }
                    }
                }
            }
        }
    }
}

/// The batch norm's per-pass state: the scale and shift of the last forward pass and the
/// gradient sums of the last backward pass, per channel.
#[derive(Default)]
pub struct FastBatchNorm {
    /// y = x * scale + shift, per channel.
    scale: Vec<f32>,
    shift: Vec<f32>,
    /// sum(g) / M and sum(g * xhat) / M of the last backward pass, per channel.
    mean_dbias: Vec<f32>,
    mean_dweight: Vec<f32>,
    /// The ReLU after the batch norm is applied here (fused passes).
    pub relu: bool,
    /// The 2x2 max pool after it (and its ReLU) is applied here too (fused passes): the
    /// input planes' (height, width).
    pub pool: Option<(usize, usize)>,
}

impl FastBatchNorm {
    /// Chunk statistics: `stats` gets (count, mean, M2 = sum((x - mean)^2)) per channel.
    pub fn stats_chunk(bn: &BatchNorm, x: &[f32], stats: &mut Vec<f64>) {
        stats_kernel(simd::detect(), x, (bn.channels, bn.plane), stats);
    }

    /// The batch's mean and variance from every chunk's `stats_chunk`, combined in chunk
    /// order; records them in `bn` (running statistics, mean, 1/std) and sets scale and
    /// shift for `apply_chunk`.
    pub fn finish_stats<'a>(
        &mut self,
        bn: &mut BatchNorm,
        chunks: impl Iterator<Item = &'a [f64]>,
    ) {
        let channels = bn.channels;
        let mut total = vec![(0.0f64, 0.0f64, 0.0f64); channels];
        for part in chunks {
            for (t, p) in total.iter_mut().zip(part.chunks_exact(3)) {
                let (nb, mb, m2b) = (p[0], p[1], p[2]);
                let (na, ma, m2a) = *t;
                let n = na + nb;
                // A part without values (its mean is 0/0) adds nothing.
                if nb == 0.0 {
                    continue;
                }
                let delta = mb - ma;
                *t = (
                    n,
                    ma + delta * nb / n,
                    m2a + m2b + delta * delta * na * nb / n,
                );
            }
        }
        for (c, &(n, mean, m2)) in total.iter().enumerate() {
            bn.record_batch(c, mean, m2 / n.max(1.0), n);
        }
        bn.num_batches_tracked += 1;
        bn.trained = true;
        self.set_scale_shift(bn);
    }

    /// Evaluation: the running statistics give scale and shift.
    pub fn use_running(&mut self, bn: &mut BatchNorm) {
        bn.use_running();
        bn.trained = false;
        self.set_scale_shift(bn);
    }

    /// The per-channel (scale, shift) the last `finish_stats` or `use_running` set:
    /// `y = x * scale + shift`.
    pub fn scale_shift(&self) -> (Vec<f32>, Vec<f32>) {
        (self.scale.clone(), self.shift.clone())
    }

    fn set_scale_shift(&mut self, bn: &BatchNorm) {
        let (w, b) = (&bn.weight.value, &bn.bias.value);
        self.scale.clear();
        self.shift.clear();
        for c in 0..bn.channels {
            let scale = w[c] * bn.inv_std[c];
            self.scale.push(scale);
            self.shift.push(b[c] - scale * bn.mean[c]);
        }
    }

    /// y = x * scale + shift for one chunk (then the ReLU, when fused). With the max pool
    /// fused, each plane is normalised into a buffer and pooled from it into `y`, the
    /// windows' winners into `arg` when given (a training pass).
    pub fn apply_chunk(
        &self,
        bn: &BatchNorm,
        x: &[f32],
        y: &mut [f32],
        arg: Option<&mut Vec<u32>>,
    ) {
        let isa = simd::detect();
        let (scale, shift) = (&self.scale[..], &self.shift[..]);
        let Some((h, w)) = self.pool else {
            let shape = (bn.channels, bn.plane);
            return apply_kernel(isa, x, y, shape, scale, shift, self.relu);
        };
        let (plane, pooled) = (bn.plane, (h / 2) * (w / 2));
        let planes = x.len() / plane.max(1);
        let mut arg = arg.map(|a| {
            a.resize(planes * pooled, 0);
            &mut a[..]
        });
        // Past the plane, room for the pool's whole-vector reads of its last rows.
        let mut full = vec![0.0f32; plane + 2 * simd::MAX_LANES];
        for k in 0..planes {
            let c = k % bn.channels;
            let (scale, shift) = (&scale[c..=c], &shift[c..=c]);
            let x = &x[k * plane..][..plane];
            apply_kernel(
                isa,
                x,
                &mut full[..plane],
                (1, plane),
                scale,
                shift,
                self.relu,
            );
            // The rest of the chunk: whole vectors may run on into the next plane.
            let (y, a) = (
                &mut y[k * pooled..],
                arg.as_mut().map(|a| &mut a[k * pooled..]),
            );
            pool::max_pool_2x2(isa, &full, w, None, false, (h / 2, w / 2), y, a);
        }
    }

    /// The output gradient as the gradient kernels read it: `dy` itself, or, with the max
    /// pool fused, the pooled `dy` and the chunk's winners `arg`.
    fn out_grad<'a>(&self, dy: &'a [f32], arg: &'a [u32]) -> OutGrad<'a> {
        let pooled = self
            .pool
            .map(|in_hw| Unpool::new(simd::detect(), arg, in_hw));
        OutGrad { dy, pooled }
    }

    /// The fused ReLU's input is `x * scale + shift` of the last forward pass: where it is
    /// positive the ReLU passed `dy`.
    fn relu_of(&self) -> Option<(&[f32], &[f32])> {
        self.relu.then_some((&self.scale[..], &self.shift[..]))
    }

    /// One chunk's gradient sums after a forward pass of the same chunk: `sums` gets
    /// sum(g) and sum(g * (x - mean)) per channel, g being `dy` masked by the fused ReLU
    /// (with the max pool fused, `dy` is pooled and `arg` holds the chunk's winners).
    pub fn grad_chunk(
        &self,
        bn: &BatchNorm,
        x: &[f32],
        dy: &[f32],
        arg: &[u32],
        sums: &mut Vec<f64>,
    ) {
        let shape = (bn.channels, bn.plane);
        let dy = self.out_grad(dy, arg);
        grad_kernel(simd::detect(), x, self.relu_of(), dy, shape, &bn.mean, sums);
    }

    /// The batch's parameter gradients from every chunk's `grad_chunk`, added in chunk
    /// order over `m` values per channel; keeps what `dx_chunk` needs.
    pub fn finish_grads<'a>(
        &mut self,
        bn: &mut BatchNorm,
        chunks: impl Iterator<Item = &'a [f64]>,
        m: usize,
    ) {
        let channels = bn.channels;
        let mut total = vec![(0.0f64, 0.0f64); channels];
        for part in chunks {
            for (t, p) in total.iter_mut().zip(part.chunks_exact(2)) {
                t.0 += p[0];
                t.1 += p[1];
            }
        }
        let m = m.max(1) as f64;
        self.mean_dbias.clear();
        self.mean_dweight.clear();
        for (c, &(sg, sgx)) in total.iter().enumerate() {
            let dweight = sgx * bn.inv_std[c] as f64;
            bn.bias.grad[c] = sg as f32;
            bn.weight.grad[c] = dweight as f32;
            self.mean_dbias.push((sg / m) as f32);
            self.mean_dweight.push((dweight / m) as f32);
        }
    }

    /// One chunk's input gradient, after `finish_grads` (`dy` and `arg` as in
    /// `grad_chunk`).
    pub fn dx_chunk(&self, bn: &BatchNorm, x: &[f32], dy: &[f32], arg: &[u32], dx: &mut [f32]) {
        let terms = DxTerms {
            mean: &bn.mean,
            inv_std: &bn.inv_std,
            weight: &bn.weight.value,
            trained: bn
                .trained
                .then_some((&self.mean_dbias[..], &self.mean_dweight[..])),
        };
        dx_kernel(
            simd::detect(),
            x,
            self.relu_of(),
            self.out_grad(dy, arg),
            dx,
            (bn.channels, bn.plane),
            &terms,
        );
    }
}
