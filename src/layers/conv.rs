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

use super::{sum, sum_chunk_grads, Layer, Param, Scratch, CHUNK};
use crate::gemm::sgemm;
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
    /// Values per channel of the padded input, plus `kernel` of slack so that every
    /// window's read of `out_h * padded_w` values stays inside.
    fn padded_plane(&self) -> usize {
        (self.in_h + 2 * self.pad) * self.padded_w() + self.kernel
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
    /// Per chunk, `work`: the output (or its gradient) in the column layout, (O,
    /// images*cols_per_image), between the GEMM and NCHW, then a padded image or dw^T
    /// (`temp_len`). The im2col columns themselves, (CKK, images*cols_per_image) with the
    /// images side by side so each chunk needs one GEMM, live in a per-thread buffer.
    scratch: Vec<Scratch>,
    /// The network fused the following ReLU into this layer (`fuse_relu`): the output is
    /// max(0, conv) and the output gradient is masked by it.
    relu: bool,
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

    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, train: bool) {
        let g = &self.geometry;
        let (out_len, ckk) = (g.out_len(), g.ckk());
        let nb = x.len() / g.in_len();
        let cols_len = g.cols_per_image();
        let ld = nb * cols_len;
        s.work.resize(g.out_c * ld + g.temp_len(), 0.0);
        s.ready = train;
        let (block, temp) = s.work.split_at_mut(g.out_c * ld);
        with_cols(ckk * ld, |cols| {
            unfold_chunk(g, x, cols, temp);
            // block (O, nb*cols_len) = w (O, CKK) . cols (CKK, nb*cols_len): one GEMM per
            // chunk, then each image's valid outputs, plus the bias, into y.
            let w = &self.weight.value;
            sgemm(g.out_c, ckk, ld, 1.0, w, false, cols, false, 0.0, block);
        });
        let row_step = g.row_step();
        for (i, y) in y.chunks_mut(out_len).enumerate() {
            for (o, (plane, &bias)) in y.chunks_mut(g.ohw()).zip(&self.bias.value).enumerate() {
                let src = &block[o * ld + i * cols_len..][..cols_len];
                for (row, src) in plane.chunks_mut(g.out_w).zip(src.chunks(row_step)) {
                    if self.relu {
                        for (d, &s) in row.iter_mut().zip(src) {
                            let v = s + bias;
                            *d = if v > 0.0 { v } else { 0.0 };
                        }
                    } else {
                        for (d, &s) in row.iter_mut().zip(src) {
                            *d = s + bias;
                        }
                    }
                }
            }
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
        let g = &self.geometry;
        let (in_len, out_len, ckk) = (g.in_len(), g.out_len(), g.ckk());
        let nb = dy.len() / out_len;
        let cols_len = g.cols_per_image();
        let ld = nb * cols_len;
        let (wn, bn) = (self.weight.value.len(), self.bias.value.len());
        s.grad.resize(wn + bn, 0.0);
        let (block, temp) = s.work.split_at_mut(g.out_c * ld);
        let (dw, db) = s.grad.split_at_mut(wn);
        // Gather dy into (O, nb*cols_len), the layout of the columns; in the wide layout the
        // columns past the output's width get zero, so they add nothing below.
        let row_step = g.row_step();
        for (i, (dy, y)) in dy.chunks(out_len).zip(y.chunks(out_len)).enumerate() {
            for (o, (plane, y_plane)) in dy.chunks(g.ohw()).zip(y.chunks(g.ohw())).enumerate() {
                let dst = &mut block[o * ld + i * cols_len..][..cols_len];
                let rows = dst.chunks_mut(row_step).zip(plane.chunks(g.out_w));
                for ((dst, row), y_row) in rows.zip(y_plane.chunks(g.out_w)) {
                    let (head, tail) = dst.split_at_mut(row.len());
                    if self.relu {
                        // The fused ReLU's backward: the gradient passes where it fired.
                        for ((d, &g), &y) in head.iter_mut().zip(row).zip(y_row) {
                            *d = if y > 0.0 { g } else { 0.0 };
                        }
                    } else {
                        head.copy_from_slice(row);
                    }
                    for d in tail {
                        *d = 0.0;
                    }
                }
            }
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
        s.ready = false;
    }

    fn fuse_relu(&mut self, on: bool) -> bool {
        self.relu = on;
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
