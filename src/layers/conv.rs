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
//! The batch is split into fixed chunks of `CHUNK` images that run in parallel; each chunk
//! sums its own weight gradient and the chunks are added in order, so the result is the
//! same for any thread count. `conv2d_forward_reference` and `conv2d_backward_reference`
//! are the plain loops the tests compare this against.

use super::{Layer, Param, CHUNK};
use crate::gemm::sgemm;
use crate::tensor::Tensor;
use rayon::prelude::*;

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

/// Unfolds one image `x` (C, H, W) into `cols` (C*K*K, OH*OW).
pub fn im2col(g: &ConvGeometry, x: &[f32], cols: &mut [f32]) {
    let (k, ohw) = (g.kernel, g.ohw());
    for c in 0..g.in_c {
        let plane = &x[c * g.in_h * g.in_w..(c + 1) * g.in_h * g.in_w];
        for ki in 0..k {
            for kj in 0..k {
                let row = &mut cols[((c * k + ki) * k + kj) * ohw..][..ohw];
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

/// Folds `cols` (C*K*K, OH*OW) back into an image `dx` (C, H, W), summing overlaps.
pub fn col2im(g: &ConvGeometry, cols: &[f32], dx: &mut [f32]) {
    let (k, ohw) = (g.kernel, g.ohw());
    dx.fill(0.0);
    for c in 0..g.in_c {
        let plane = &mut dx[c * g.in_h * g.in_w..(c + 1) * g.in_h * g.in_w];
        for ki in 0..k {
            for kj in 0..k {
                let row = &cols[((c * k + ki) * k + kj) * ohw..][..ohw];
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

pub struct Conv2d {
    name: String,
    pub geometry: ConvGeometry,
    input: Vec<usize>,
    output: Vec<usize>,
    pub weight: Param,
    pub bias: Param,
    /// im2col columns: one slot per image after a training forward (kept for backward),
    /// one per chunk after an evaluation forward.
    cols: Vec<f32>,
    cols_hold_batch: bool,
    /// Per-chunk partial weight and bias gradients, summed in chunk order.
    dw_parts: Vec<f32>,
    db_parts: Vec<f32>,
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
            cols: Vec::new(),
            cols_hold_batch: false,
            dw_parts: Vec::new(),
            db_parts: Vec::new(),
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

    fn forward(&mut self, x: &Tensor, y: &mut Tensor, train: bool) {
        let g = self.geometry;
        let n = x.batch();
        let (in_len, out_len, col_len) = (g.in_len(), g.out_len(), g.ckk() * g.ohw());
        y.resize_batch(n, &self.output);
        let slots = if train { n } else { n.div_ceil(CHUNK) };
        self.cols.resize(slots * col_len, 0.0);
        self.cols_hold_batch = train;
        let cols_per_chunk = if train { CHUNK * col_len } else { col_len };
        let (w, b) = (&self.weight.value, &self.bias.value);
        y.data
            .par_chunks_mut(CHUNK * out_len)
            .zip(x.data.par_chunks(CHUNK * in_len))
            .zip(self.cols.par_chunks_mut(cols_per_chunk))
            .for_each(|((y, x), cols)| {
                for (i, (y, x)) in y.chunks_mut(out_len).zip(x.chunks(in_len)).enumerate() {
                    let col = if train {
                        &mut cols[i * col_len..(i + 1) * col_len]
                    } else {
                        &mut *cols
                    };
                    im2col(&g, x, col);
                    for (row, &bias) in y.chunks_mut(g.ohw()).zip(b) {
                        row.fill(bias);
                    }
                    sgemm(g.out_c, g.ckk(), g.ohw(), 1.0, w, false, col, false, 1.0, y);
                }
            });
    }

    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) {
        assert!(
            self.cols_hold_batch,
            "{}: backward needs a training-mode forward first",
            self.name
        );
        let g = self.geometry;
        let n = x.batch();
        let (out_len, col_len, ohw, ckk) = (g.out_len(), g.ckk() * g.ohw(), g.ohw(), g.ckk());
        let chunks = n.div_ceil(CHUNK);
        let (wn, bn) = (self.weight.value.len(), self.bias.value.len());
        self.dw_parts.resize(chunks * wn, 0.0);
        self.db_parts.resize(chunks * bn, 0.0);
        self.dw_parts
            .par_chunks_mut(wn)
            .zip(self.db_parts.par_chunks_mut(bn))
            .zip(self.cols.par_chunks(CHUNK * col_len))
            .zip(dy.data.par_chunks(CHUNK * out_len))
            .for_each(|(((dw, db), cols), dy)| {
                db.fill(0.0);
                for (i, (dy, col)) in dy.chunks(out_len).zip(cols.chunks(col_len)).enumerate() {
                    let beta = if i == 0 { 0.0 } else { 1.0 };
                    sgemm(g.out_c, ohw, ckk, 1.0, dy, false, col, true, beta, dw);
                    for (d, row) in db.iter_mut().zip(dy.chunks(ohw)) {
                        *d += row.iter().sum::<f32>();
                    }
                }
            });
        sum_parts(&self.dw_parts, &mut self.weight.grad);
        sum_parts(&self.db_parts, &mut self.bias.grad);

        if let Some(dx) = dx {
            let in_len = g.in_len();
            dx.resize_batch(n, &self.input);
            let w = &self.weight.value;
            // The columns are no longer needed: each image's slot receives its dcols.
            dx.data
                .par_chunks_mut(CHUNK * in_len)
                .zip(self.cols.par_chunks_mut(CHUNK * col_len))
                .zip(dy.data.par_chunks(CHUNK * out_len))
                .for_each(|((dx, cols), dy)| {
                    for ((dx, col), dy) in dx
                        .chunks_mut(in_len)
                        .zip(cols.chunks_mut(col_len))
                        .zip(dy.chunks(out_len))
                    {
                        sgemm(ckk, g.out_c, ohw, 1.0, w, true, dy, false, 0.0, col);
                        col2im(&g, col, dx);
                    }
                });
            self.cols_hold_batch = false;
        }
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}

/// `out = parts[0] + parts[1] + ...`, in order, where `parts` holds `out.len()`-long blocks.
pub(crate) fn sum_parts(parts: &[f32], out: &mut [f32]) {
    let len = out.len();
    out.copy_from_slice(&parts[..len]);
    for part in parts.chunks(len).skip(1) {
        for (o, p) in out.iter_mut().zip(part) {
            *o += p;
        }
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
