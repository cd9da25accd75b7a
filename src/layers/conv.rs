//! 2-D convolution (cross-correlation, as in PyTorch) with any kernel size, stride and
//! zero padding.
//!
//! x: (N, C, H, W)   w: (O, C, K, K)   b: (O)   y: (N, O, OH, OW)
//! OH = (H + 2*pad - K) / stride + 1, likewise OW.
//! cols: (C*K*K, OH*OW) per image, the im2col unfolding of x.
//!
//! forward:  y_n  = w (O x CKK) . cols_n (CKK x OHW) + b
//! backward: dw  += dy_n (O x OHW) . cols_n^T (OHW x CKK)
//!           db  += sum over OHW of dy_n
//!           dcols_n = w^T (CKK x O) . dy_n (O x OHW);  dx_n = col2im(dcols_n)
//!
//! The network hands the layer one chunk of `CHUNK` images at a time. Within a chunk the
//! images' columns sit side by side, (CKK, images*OHW), so each of the three products
//! above is one GEMM per chunk rather than one per image. Each chunk sums its own weight
//! gradient and the chunks are added in order, so the result is the same for any thread
//! count. `conv2d_forward_reference` and `conv2d_backward_reference`
//! are the plain loops the tests compare this against.
//!
//! Stride 1 on a CPU with AVX2 or AVX-512 takes the direct path instead (`conv_direct.rs`):
//! the same three products, computed by vector kernels that read the padded input in place
//! rather than from unfolded columns. The network may also ask the layer to apply the ReLU
//! and the 2x2 max pool that follow it (`fuse_relu`, `fuse_max_pool`): the output is then
//! written once, already pooled, and the pooled gradient scattered straight back.

use super::conv_direct::{shifted_dots, shifted_sum, unwiden, widen, Planes};
use super::pool::max_pool_2x2;
use super::{sum, sum_chunk_grads, Layer, Param, Scratch, CHUNK};
use crate::gemm::sgemm;
use crate::simd::{self, round_up, Isa, MAX_LANES};
use crate::tensor::Tensor;
use std::cell::RefCell;

/// The sizes of one convolution, shared by the fast path, im2col and the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub in_c: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvGeometry {
    /// Checks that the kernel fits the padded input; the error says why not.
    pub fn new(
        input: [usize; 3],
        out_c: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<ConvGeometry, String> {
        let [in_c, in_h, in_w] = input;
        if kernel == 0 || stride == 0 || out_c == 0 {
            return Err("kernel, stride and out_channels must be at least 1".into());
        }
        if in_h + 2 * pad < kernel || in_w + 2 * pad < kernel {
            return Err(format!(
                "kernel {kernel} is larger than the padded input {}x{} (input {in_h}x{in_w}, pad {pad})",
                in_h + 2 * pad,
                in_w + 2 * pad
            ));
        }
        Ok(ConvGeometry {
            in_c,
            in_h,
            in_w,
            out_c,
            kernel,
            stride,
            pad,
            out_h: (in_h + 2 * pad - kernel) / stride + 1,
            out_w: (in_w + 2 * pad - kernel) / stride + 1,
        })
    }
    fn in_len(&self) -> usize {
        self.in_c * self.in_h * self.in_w
    }
    fn out_len(&self) -> usize {
        self.out_c * self.out_h * self.out_w
    }
    fn ckk(&self) -> usize {
        self.in_c * self.kernel * self.kernel
    }
    fn ohw(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Stride 1 uses the wide layout (see `wide_im2col`); other strides the plain im2col.
    fn is_wide(&self) -> bool {
        self.stride == 1
    }
    /// Width of a zero-padded input row.
    fn padded_w(&self) -> usize {
        self.in_w + 2 * self.pad
    }
    /// Values per channel of the padded input, plus slack so that every window's read of
    /// `out_h * padded_w` values, rounded up to whole vectors (`conv_direct`), stays inside.
    fn padded_plane(&self) -> usize {
        (self.in_h + 2 * self.pad) * self.padded_w() + self.kernel + MAX_LANES
    }
    /// Columns per image in `cols`: `out_h * padded_w` in the wide layout, `OH*OW` otherwise.
    fn cols_per_image(&self) -> usize {
        if self.is_wide() {
            self.out_h * self.padded_w()
        } else {
            self.ohw()
        }
    }
    /// Distance between output rows in the column layout.
    fn row_step(&self) -> usize {
        if self.is_wide() {
            self.padded_w()
        } else {
            self.out_w
        }
    }
    /// Temporary values per chunk besides the output block: a padded image (wide layout)
    /// or dw^T.
    fn temp_len(&self) -> usize {
        let padded = if self.is_wide() {
            self.in_c * self.padded_plane()
        } else {
            0
        };
        padded.max(self.ckk() * self.out_c)
    }

    /// Where kernel tap `t = ki * K + kj` reads in the wide layout, relative to the output
    /// position: `ki * padded_w + kj`.
    fn tap_offsets(&self) -> Vec<isize> {
        let (k, wp) = (self.kernel, self.padded_w());
        (0..k * k)
            .map(|t| ((t / k) * wp + t % k) as isize)
            .collect()
    }
    /// Direct path: zeros before each output-gradient row, so that the input gradient's
    /// taps, which reach back by up to the largest offset, stay inside.
    fn grad_margin(&self) -> usize {
        (self.kernel - 1) * (self.padded_w() + 1)
    }
    /// Direct path: input-gradient positions per channel, the input's rows at the padded
    /// width.
    fn dx_wide(&self) -> usize {
        self.in_h * self.padded_w()
    }
    /// Direct path: one output-gradient row with its margins, long enough for the weight
    /// gradient's reads (whole vectors) and the input gradient's.
    fn grad_row(&self) -> usize {
        let dx_reach = self.pad * self.padded_w() + round_up(self.dx_wide());
        // MAX_LANES more: the last row's gather (`widen`) stores whole vectors.
        self.grad_margin() + round_up(self.cols_per_image()).max(dx_reach) + MAX_LANES
    }

    /// The output columns `ow` whose input column `ow*stride + kj - pad` lies inside the image.
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = if kj >= p { 0 } else { (p - kj).div_ceil(s) };
        let hi = if self.in_w + p <= kj {
            0
        } else {
            ((self.in_w + p - kj - 1) / s + 1).min(self.out_w)
        };
        (lo.min(hi), hi)
    }
}

/// Unfolds one image `x` (C, H, W) into `cols` (C*K*K, OH*OW), whose rows lie `ld` values
/// apart (`ld = OH*OW` for one image alone; larger when images sit side by side).
pub fn im2col(g: &ConvGeometry, x: &[f32], cols: &mut [f32], ld: usize) {
    let (k, ohw) = (g.kernel, g.ohw());
    for c in 0..g.in_c {
        let plane = &x[c * g.in_h * g.in_w..(c + 1) * g.in_h * g.in_w];
        for ki in 0..k {
            for kj in 0..k {
                let row = &mut cols[((c * k + ki) * k + kj) * ld..][..ohw];
                let (lo, hi) = g.valid_cols(kj);
                for oh in 0..g.out_h {
                    let dst = &mut row[oh * g.out_w..(oh + 1) * g.out_w];
                    let ih = (oh * g.stride + ki) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.in_h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * g.in_w..(ih as usize + 1) * g.in_w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if lo == hi {
                        continue;
                    }
                    let first = (lo * g.stride + kj) - g.pad;
                    if g.stride == 1 {
                        dst[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                    } else {
                        for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[first + j * g.stride];
                        }
                    }
                }
            }
        }
    }
}

/// Folds `cols` (C*K*K, OH*OW, rows `ld` apart) back into an image `dx` (C, H, W), summing
/// overlaps.
pub fn col2im(g: &ConvGeometry, cols: &[f32], ld: usize, dx: &mut [f32]) {
    let (k, ohw) = (g.kernel, g.ohw());
    dx.fill(0.0);
    for c in 0..g.in_c {
        let plane = &mut dx[c * g.in_h * g.in_w..(c + 1) * g.in_h * g.in_w];
        for ki in 0..k {
            for kj in 0..k {
                let row = &cols[((c * k + ki) * k + kj) * ld..][..ohw];
                let (lo, hi) = g.valid_cols(kj);
                for oh in 0..g.out_h {
                    let ih = (oh * g.stride + ki) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.in_h as isize || lo == hi {
                        continue;
                    }
                    let src = &row[oh * g.out_w..(oh + 1) * g.out_w];
                    let dst = &mut plane[ih as usize * g.in_w..(ih as usize + 1) * g.in_w];
                    let first = (lo * g.stride + kj) - g.pad;
                    for (j, &v) in src[lo..hi].iter().enumerate() {
                        dst[first + j * g.stride] += v;
                    }
                }
            }
        }
    }
}

/// Copies image `x` (C, H, W) into the interior of `padded` (C planes of `padded_plane`
/// values, rows `padded_w` long); the border must already be zero.
fn pad_into(g: &ConvGeometry, x: &[f32], padded: &mut [f32]) {
    let (wp, p) = (g.padded_w(), g.pad);
    for (plane, dst) in x
        .chunks(g.in_h * g.in_w)
        .zip(padded.chunks_mut(g.padded_plane()))
    {
        for (h, row) in plane.chunks(g.in_w).enumerate() {
            dst[(h + p) * wp + p..][..g.in_w].copy_from_slice(row);
        }
    }
}

/// The inverse of `pad_into`: the interior of `padded` into `dx` (C, H, W).
fn unpad_from(g: &ConvGeometry, padded: &[f32], dx: &mut [f32]) {
    let (wp, p) = (g.padded_w(), g.pad);
    for (plane, src) in dx
        .chunks_mut(g.in_h * g.in_w)
        .zip(padded.chunks(g.padded_plane()))
    {
        for (h, row) in plane.chunks_mut(g.in_w).enumerate() {
            row.copy_from_slice(&src[(h + p) * wp + p..][..g.in_w]);
        }
    }
}

/// Copies image `x` (C, H, W) into `padded` (C planes of `padded_plane` values, rows
/// `padded_w` long), writing every value, the zero border and slack included.
/// `isa`: copy in whole vectors (`widen`).
fn pad_whole(g: &ConvGeometry, isa: Option<Isa>, x: &[f32], padded: &mut [f32]) {
    let (wp, p, w) = (g.padded_w(), g.pad, g.in_w);
    for (src, dst) in x
        .chunks(g.in_h * w)
        .zip(padded.chunks_mut(g.padded_plane()))
    {
        dst[..p * wp + p].fill(0.0);
        // Each row, then zeros for its right border and the next row's left border.
        widen(isa, src, src, g.in_h, w, false, &mut dst[p * wp + p..], wp);
        dst[(g.in_h + p) * wp + p..].fill(0.0);
    }
}

/// Makes `v` at least `len` long; never shrinks it, so what it holds survives.
fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// im2col for stride 1 in the "wide" layout: output position (oh, ow) sits at column
/// `oh * padded_w + ow`, with `ow` running over the whole padded width. Then the row of
/// kernel tap (c, ki, kj) is one contiguous run of the padded input, starting at
/// `ki * padded_w + kj`: a single copy instead of one per output row. The columns with
/// `ow >= out_w` hold values that straddle two rows; the GEMM computes them and the
/// layer throws them away (`padded_w / out_w` more work, 1.07x for 28x28 pad 1).
pub fn wide_im2col(g: &ConvGeometry, padded: &[f32], cols: &mut [f32], ld: usize) {
    let (k, wp, len) = (g.kernel, g.padded_w(), g.cols_per_image());
    for (c, plane) in padded.chunks(g.padded_plane()).enumerate() {
        for ki in 0..k {
            for kj in 0..k {
                let row = ((c * k + ki) * k + kj) * ld;
                cols[row..row + len].copy_from_slice(&plane[ki * wp + kj..][..len]);
            }
        }
    }
}

/// The adjoint of `wide_im2col`: adds each tap's row of `cols` back onto the padded
/// image's run it came from.
pub fn wide_col2im(g: &ConvGeometry, cols: &[f32], ld: usize, padded: &mut [f32]) {
    let (k, wp, len) = (g.kernel, g.padded_w(), g.cols_per_image());
    for (c, plane) in padded.chunks_mut(g.padded_plane()).enumerate() {
        for ki in 0..k {
            for kj in 0..k {
                let row = &cols[((c * k + ki) * k + kj) * ld..][..len];
                for (d, &v) in plane[ki * wp + kj..][..len].iter_mut().zip(row) {
                    *d += v;
                }
            }
        }
    }
}

/// Unfolds a chunk of images `x` into `cols` (CKK, images*cols_per_image); `temp` holds
/// `temp_len` values of scratch.
fn unfold_chunk(g: &ConvGeometry, x: &[f32], cols: &mut [f32], temp: &mut [f32]) {
    let (ld, cols_len) = (
        x.len() / g.in_len() * g.cols_per_image(),
        g.cols_per_image(),
    );
    if g.is_wide() {
        let padded = &mut temp[..g.in_c * g.padded_plane()];
        padded.fill(0.0);
        for (i, x) in x.chunks(g.in_len()).enumerate() {
            pad_into(g, x, padded);
            wide_im2col(g, padded, &mut cols[i * cols_len..], ld);
        }
    } else {
        for (i, x) in x.chunks(g.in_len()).enumerate() {
            im2col(g, x, &mut cols[i * cols_len..], ld);
        }
    }
}

thread_local! {
    /// Each worker thread's working memory for evaluation passes (`forward_chunk`).
    static EVAL_SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// Each worker thread's im2col buffer. One per thread, not per chunk: reused by every
    /// chunk the thread runs, it stays in that core's cache.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's im2col buffer, `len` values long. `f` must not call into
/// rayon: a task stolen meanwhile could ask for the same buffer.
fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLS.with(|cols| {
        let mut cols = cols.borrow_mut();
        if cols.len() < len {
            cols.resize(len, 0.0);
        }
        f(&mut cols[..len])
    })
}

pub struct Conv2d {
    name: String,
    pub geometry: ConvGeometry,
    input: Vec<usize>,
    output: Vec<usize>,
    pub weight: Param,
    pub bias: Param,
    /// Per chunk, `work`. im2col + GEMM: the output (or its gradient) in the column
    /// layout, (O, images*cols_per_image), between the GEMM and NCHW, then a padded image
    /// or dw^T (`temp_len`); the im2col columns themselves, (CKK, images*cols_per_image)
    /// with the images side by side so each chunk needs one GEMM, live in a per-thread
    /// buffer. Direct path: the chunk's padded images (kept for the backward pass), then
    /// one image's output block, or in the backward pass the output gradient in the wide
    /// layout with margins and one image's input gradient.
    /// `indices`: the fused pool's winning positions. Evaluation passes use a per-thread
    /// scratch instead (`EVAL_SCRATCH`).
    scratch: Vec<Scratch>,
    /// The network fused the following ReLU into this layer (`fuse_relu`): the output is
    /// max(0, conv) and the output gradient is masked by it.
    relu: bool,
    /// The network fused the 2x2, stride-2 max pool after it (and after the ReLU, if
    /// fused) into this layer (`fuse_max_pool`): the output is pooled, the winning
    /// positions are kept in `Scratch::indices`, and the output gradient is the pooled one.
    pool: bool,
    /// Stride 1 on a CPU with vector kernels: the direct path (`conv_direct`), which reads
    /// the padded input in place instead of unfolding it. `None`: im2col + GEMM.
    direct: Option<Isa>,
    /// `geometry.tap_offsets()` and their negatives, for the direct path.
    offsets: Vec<isize>,
    back_offsets: Vec<isize>,
    /// The weights as (C, O, K*K), for the direct path's input gradient; refreshed once
    /// per forward pass (`prepare_forward`), not per chunk.
    weight_t: Vec<f32>,
}

impl Conv2d {
    pub fn new(name: &str, geometry: ConvGeometry) -> Conv2d {
        let g = geometry;
        Conv2d {
            name: name.to_string(),
            geometry: g,
            input: vec![g.in_c, g.in_h, g.in_w],
            output: vec![g.out_c, g.out_h, g.out_w],
            weight: Param::new("weight", &[g.out_c, g.in_c, g.kernel, g.kernel], false),
            bias: Param::new("bias", &[g.out_c], true),
            scratch: Vec::new(),
            relu: false,
            pool: false,
            direct: if g.is_wide() { simd::detect() } else { None },
            offsets: g.tap_offsets(),
            back_offsets: g.tap_offsets().iter().map(|o| -o).collect(),
            weight_t: Vec::new(),
        }
    }

    /// Chooses the direct path on vector unit `isa` (one of `simd::supported()`; only
    /// for stride 1) or, with `None`, im2col + GEMM. The tests compare them; everything
    /// else keeps the default, the widest unit.
    pub fn set_direct(&mut self, isa: Option<Isa>) {
        if let Some(isa) = isa {
            assert!(
                simd::supported().contains(&isa),
                "this CPU cannot run {isa:?}"
            );
            assert!(self.geometry.is_wide(), "the direct path needs stride 1");
        }
        self.direct = isa;
    }

    /// Which path runs: the vector unit of the direct path, or `None` for im2col + GEMM.
    pub fn direct(&self) -> Option<Isa> {
        self.direct
    }

    /// im2col + GEMM forward: the output block (O, images * cols_per_image) at the start
    /// of `s.work`.
    fn gemm_forward(&self, x: &[f32], s: &mut Scratch) {
        let g = &self.geometry;
        let ld = x.len() / g.in_len() * g.cols_per_image();
        grow(&mut s.work, g.out_c * ld + g.temp_len());
        let (block, temp) = s.work.split_at_mut(g.out_c * ld);
        with_cols(g.ckk() * ld, |cols| {
            unfold_chunk(g, x, cols, temp);
            // block (O, nb*cols_len) = w (O, CKK) . cols (CKK, nb*cols_len): one GEMM per
            // chunk.
            let w = &self.weight.value;
            sgemm(g.out_c, g.ckk(), ld, 1.0, w, false, cols, false, 0.0, block);
        });
    }

    /// The forward pass of one chunk, working in `s`. Direct path: the padded images at
    /// the start of `s.work` (kept for the backward pass), then one image's output block
    /// (O, round_up(cols_per_image)), computed and written out image by image while it is
    /// in the cache. im2col + GEMM: the whole chunk's block, (O, images * cols_per_image).
    fn forward_into(&self, x: &[f32], y: &mut [f32], s: &mut Scratch, train: bool) {
        let g = &self.geometry;
        let nb = x.len() / g.in_len();
        let cols_len = g.cols_per_image();
        if self.pool && train {
            s.indices.resize(nb * g.out_c * self.out_plane(), 0);
        }
        let Some(isa) = self.direct else {
            self.gemm_forward(x, s);
            let ld = nb * cols_len;
            for i in 0..nb {
                let block = &s.work[..g.out_c * ld];
                self.write_image(i, block, ld, i * cols_len, y, &mut s.indices, train);
            }
            return;
        };
        let (plane, img) = (g.padded_plane(), round_up(cols_len));
        let padded_len = nb * g.in_c * plane;
        // Two rows of slack: the pooling reads whole vectors past the last plane's end.
        grow(&mut s.work, padded_len + g.out_c * img + 2 * MAX_LANES);
        let (padded, block) = s.work.split_at_mut(padded_len);
        for (x, p) in x.chunks(g.in_len()).zip(padded.chunks_mut(g.in_c * plane)) {
            pad_whole(g, self.direct, x, p);
        }
        let (w, rows) = (&self.weight.value, g.out_c);
        for i in 0..nb {
            let x = Planes {
                data: padded,
                start: i * g.in_c * plane,
                plane,
                image: 0,
            };
            shifted_sum(isa, &self.offsets, cols_len, w, rows, g.in_c, x, block, img);
            self.write_image(i, block, img, 0, y, &mut s.indices, train);
        }
    }

    /// Image `i`'s outputs, from `block` (its rows `ld` apart, the image's columns from
    /// `at`), plus the bias and the fused ReLU, into `y`: pooled straight from the column
    /// layout when the max pool is fused (with the winners' positions when training), else
    /// each valid output. Plane by plane in order, so a plane's last vector may run into
    /// the next one.
    #[allow(clippy::too_many_arguments)]
    fn write_image(
        &self,
        i: usize,
        block: &[f32],
        ld: usize,
        at: usize,
        y: &mut [f32],
        indices: &mut [u32],
        train: bool,
    ) {
        let g = &self.geometry;
        let (plane, step, relu) = (self.out_plane(), g.row_step(), self.relu);
        for (o, &bias) in self.bias.value.iter().enumerate() {
            let k = i * g.out_c + o;
            let (src, dst) = (&block[o * ld + at..], &mut y[k * plane..]);
            if self.pool {
                let arg = train.then(|| &mut indices[k * plane..]);
                let shape = (g.out_h / 2, g.out_w / 2);
                max_pool_2x2(self.direct, src, step, Some(bias), relu, shape, dst, arg);
            } else {
                unwiden(self.direct, src, step, g.out_h, g.out_w, bias, relu, dst);
            }
        }
    }

    /// Values per output plane: pooled when the max pool is fused.
    fn out_plane(&self) -> usize {
        let g = &self.geometry;
        if self.pool {
            (g.out_h / 2) * (g.out_w / 2)
        } else {
            g.ohw()
        }
    }

    /// Copies one output-gradient plane into its row of the column layout (`out_h` rows of
    /// `row_step`), zero past each row's `out_w` values and masked by the fused ReLU.
    /// `dst` may run on past the plane: whole vectors then spill zeros into it. With the
    /// max pool fused, `dy` and `y` are pooled and each value goes to its window's winning
    /// position `arg` (the pooling layer's backward, then the ReLU's).
    fn gather_dy(&self, dst: &mut [f32], dy: &[f32], y: &[f32], arg: &[u32]) {
        let g = &self.geometry;
        if self.pool {
            dst[..g.cols_per_image()].fill(0.0);
            // Without a branch: after a ReLU about half the windows pass, unpredictably.
            for ((&d, &y), &a) in dy.iter().zip(y).zip(arg) {
                dst[a as usize] = if !self.relu || y > 0.0 { d } else { 0.0 };
            }
            return;
        }
        widen(
            self.direct,
            dy,
            y,
            g.out_h,
            g.out_w,
            self.relu,
            dst,
            g.row_step(),
        );
    }

    /// Direct backward, from the padded images the forward pass left in `s.work`.
    fn direct_backward(
        &self,
        isa: Isa,
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        let g = &self.geometry;
        let nb = dy.len() / (g.out_c * self.out_plane());
        let (plane, margin, row) = (g.padded_plane(), g.grad_margin(), g.grad_row());
        let (cols_len, dxw_row) = (g.cols_per_image(), round_up(g.dx_wide()));
        let padded_len = nb * g.in_c * plane;
        let dyw_len = nb * g.out_c * row;
        grow(&mut s.work, padded_len + dyw_len + g.in_c * dxw_row);
        let (padded, rest) = s.work.split_at_mut(padded_len);
        let (dyw, dxw) = rest.split_at_mut(dyw_len);
        // dy in the wide layout, one row per image and channel, with zero margins.
        let out_plane = self.out_plane();
        let planes = dy.chunks(out_plane).zip(y.chunks(out_plane));
        for (k, (r, (dy, y))) in dyw.chunks_mut(row).zip(planes).enumerate() {
            r[..margin].fill(0.0);
            r[margin + cols_len..].fill(0.0);
            let arg = if self.pool {
                &s.indices[k * out_plane..][..out_plane]
            } else {
                &[]
            };
            self.gather_dy(&mut r[margin..], dy, y, arg);
        }
        let (wn, bn) = (self.weight.value.len(), self.bias.value.len());
        s.grad.resize(wn + bn, 0.0);
        let (dw, db) = s.grad.split_at_mut(wn);
        dw.fill(0.0);
        let a = Planes {
            data: dyw,
            start: margin,
            plane: row,
            image: g.out_c * row,
        };
        let x = Planes {
            data: padded,
            start: 0,
            plane,
            image: g.in_c * plane,
        };
        shifted_dots(isa, &self.offsets, cols_len, nb, a, g.out_c, x, g.in_c, dw);
        for (o, d) in db.iter_mut().enumerate() {
            let rows = (0..nb).map(|i| &dyw[(i * g.out_c + o) * row + margin..][..cols_len]);
            *d = rows.map(sum).sum();
        }
        let Some(dx) = dx else { return };
        // dx_padded[c][q] = sum over o, t of w[o][c][t] * dy[o][q - offset[t]]: the same
        // shifted sum with the weights transposed (`weight_t`) and the offsets negated.
        let wt = &self.weight_t;
        let (wp, hw) = (g.padded_w(), g.in_h * g.in_w);
        for (i, dx) in dx.chunks_mut(g.in_len()).enumerate() {
            let dyi = Planes {
                data: dyw,
                start: i * g.out_c * row + margin + g.pad * wp,
                plane: row,
                image: 0,
            };
            let (n, rows) = (g.dx_wide(), g.in_c);
            shifted_sum(
                isa,
                &self.back_offsets,
                n,
                wt,
                rows,
                g.out_c,
                dyi,
                dxw,
                dxw_row,
            );
            for (dx, src) in dx.chunks_mut(hw).zip(dxw.chunks(dxw_row)) {
                for (h, dx) in dx.chunks_mut(g.in_w).enumerate() {
                    dx.copy_from_slice(&src[h * wp + g.pad..][..g.in_w]);
                }
            }
        }
    }
}

impl Layer for Conv2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "conv2d"
    }
    fn input_shape(&self) -> &[usize] {
        &self.input
    }
    fn output_shape(&self) -> &[usize] {
        &self.output
    }
    fn geometry(&self) -> String {
        let g = &self.geometry;
        format!("{0}x{0} s{1} p{2}", g.kernel, g.stride, g.pad)
    }
    fn macs(&self) -> usize {
        self.geometry.out_len() * self.geometry.ckk()
    }
    fn scratch_mut(&mut self) -> &mut Vec<Scratch> {
        &mut self.scratch
    }

    fn prepare_forward(&mut self) {
        if self.direct.is_none() {
            return;
        }
        let (g, taps) = (&self.geometry, self.offsets.len());
        self.weight_t.resize(self.weight.value.len(), 0.0);
        for (o, w) in self.weight.value.chunks(g.in_c * taps).enumerate() {
            for (c, w) in w.chunks(taps).enumerate() {
                self.weight_t[(c * g.out_c + o) * taps..][..taps].copy_from_slice(w);
            }
        }
    }

    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, train: bool) {
        s.ready = train;
        if train {
            self.forward_into(x, y, s, true);
        } else {
            // Nothing is kept for a backward pass, so the working memory is this thread's,
            // reused by every chunk it runs and warm in its cache, rather than the chunk's
            // own (an evaluation batch of 1000 would stream through 125 chunks' worth).
            EVAL_SCRATCH.with(|t| self.forward_into(x, y, &mut t.borrow_mut(), false));
        }
    }

    fn backward_chunk(
        &self,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        assert!(
            s.ready,
            "{}: backward needs a training-mode forward first",
            self.name
        );
        s.ready = false;
        if let Some(isa) = self.direct {
            return self.direct_backward(isa, y, dy, dx, s);
        }
        let g = &self.geometry;
        let (in_len, ckk) = (g.in_len(), g.ckk());
        let nb = x.len() / in_len;
        let cols_len = g.cols_per_image();
        let ld = nb * cols_len;
        let (wn, bn) = (self.weight.value.len(), self.bias.value.len());
        s.grad.resize(wn + bn, 0.0);
        let (block, temp) = s.work.split_at_mut(g.out_c * ld);
        let (dw, db) = s.grad.split_at_mut(wn);
        // Gather dy into (O, nb*cols_len), the layout of the columns; in the wide layout the
        // columns past the output's width get zero, so they add nothing below.
        let plane = self.out_plane();
        for (k, (dy, y)) in dy.chunks(plane).zip(y.chunks(plane)).enumerate() {
            let (i, o) = (k / g.out_c, k % g.out_c);
            let arg = if self.pool {
                &s.indices[k * plane..][..plane]
            } else {
                &[]
            };
            let dst = &mut block[o * ld + i * cols_len..][..cols_len];
            self.gather_dy(dst, dy, y, arg);
        }
        // The columns are unfolded again rather than kept from the forward pass: a
        // thread's one buffer stays in its cache, a copy per chunk would not.
        with_cols(ckk * ld, |cols| {
            unfold_chunk(g, x, cols, temp);
            // dw^T (CKK, O) = cols (CKK, nb*cols_len) . block^T; this orientation runs about
            // twice as fast as dw = block . cols^T in the GEMM crate.
            let dwt = &mut temp[..ckk * g.out_c];
            sgemm(ckk, ld, g.out_c, 1.0, cols, false, block, true, 0.0, dwt);
            for (r, row) in dwt.chunks(g.out_c).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    dw[o * ckk + r] = v;
                }
            }
            for (d, row) in db.iter_mut().zip(block.chunks(ld)) {
                *d = sum(row);
            }
            if let Some(dx) = dx {
                // The columns are no longer needed: they receive dcols = w^T . block.
                let w = &self.weight.value;
                sgemm(ckk, g.out_c, ld, 1.0, w, true, block, false, 0.0, cols);
                for (i, dx) in dx.chunks_mut(in_len).enumerate() {
                    if g.is_wide() {
                        let padded = &mut temp[..g.in_c * g.padded_plane()];
                        padded.fill(0.0);
                        wide_col2im(g, &cols[i * cols_len..], ld, padded);
                        unpad_from(g, padded, dx);
                    } else {
                        col2im(g, &cols[i * cols_len..], ld, dx);
                    }
                }
            }
        });
    }

    fn fuse_relu(&mut self, on: bool) -> bool {
        self.relu = on;
        true
    }

    fn fuse_max_pool(&mut self, on: bool) -> bool {
        self.pool = on;
        true
    }

    fn finish_backward(&mut self, x: &Tensor, _dy: &Tensor) {
        let chunks = x.batch().div_ceil(CHUNK);
        let mut out = [&mut self.weight.grad[..], &mut self.bias.grad[..]];
        sum_chunk_grads(&self.scratch, chunks, &mut out);
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}

/// Direct convolution, seven nested loops in f64: the reference for the im2col path.
/// Returns y (N, O, OH, OW).
pub fn conv2d_forward_reference(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
) -> Vec<f32> {
    let k = g.kernel;
    let mut y = vec![0.0f32; n * g.out_len()];
    for img in 0..n {
        for o in 0..g.out_c {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let mut acc = b[o] as f64;
                    for c in 0..g.in_c {
                        for ki in 0..k {
                            for kj in 0..k {
                                let ih = (oh * g.stride + ki) as isize - g.pad as isize;
                                let iw = (ow * g.stride + kj) as isize - g.pad as isize;
                                if ih < 0
                                    || iw < 0
                                    || ih >= g.in_h as isize
                                    || iw >= g.in_w as isize
                                {
                                    continue;
                                }
                                let xv = x[((img * g.in_c + c) * g.in_h + ih as usize) * g.in_w
                                    + iw as usize];
                                acc += xv as f64 * w[((o * g.in_c + c) * k + ki) * k + kj] as f64;
                            }
                        }
                    }
                    y[((img * g.out_c + o) * g.out_h + oh) * g.out_w + ow] = acc as f32;
                }
            }
        }
    }
    y
}

/// Direct backward pass: returns (dx, dw, db) for the loss gradient `dy`.
pub fn conv2d_backward_reference(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let k = g.kernel;
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let mut db = vec![0.0f64; g.out_c];
    for img in 0..n {
        for o in 0..g.out_c {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let d = dy[((img * g.out_c + o) * g.out_h + oh) * g.out_w + ow] as f64;
                    db[o] += d;
                    for c in 0..g.in_c {
                        for ki in 0..k {
                            for kj in 0..k {
                                let ih = (oh * g.stride + ki) as isize - g.pad as isize;
                                let iw = (ow * g.stride + kj) as isize - g.pad as isize;
                                if ih < 0
                                    || iw < 0
                                    || ih >= g.in_h as isize
                                    || iw >= g.in_w as isize
                                {
                                    continue;
                                }
                                let xi = ((img * g.in_c + c) * g.in_h + ih as usize) * g.in_w
                                    + iw as usize;
                                let wi = ((o * g.in_c + c) * k + ki) * k + kj;
                                dx[xi] += d * w[wi] as f64;
                                dw[wi] += d * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (f(dx), f(dw), f(db))
}
