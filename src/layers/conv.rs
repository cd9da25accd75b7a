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
//! The batch is split into fixed chunks of `CHUNK` images that run in parallel. Within a
//! chunk the images' columns sit side by side, (CKK, images*OHW), so each of the three
//! products above is one GEMM per chunk rather than one per image. Each chunk sums its own
//! weight gradient and the chunks are added in order, so the result is the same for any
//! thread count. `conv2d_forward_reference` and `conv2d_backward_reference`
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

pub struct Conv2d {
    name: String,
    pub geometry: ConvGeometry,
    input: Vec<usize>,
    output: Vec<usize>,
    pub weight: Param,
    pub bias: Param,
    /// im2col columns, one block per chunk of images: (C*K*K, images*OH*OW) with the
    /// images side by side, so each chunk needs one GEMM, not one per image. A training
    /// forward keeps every chunk's block for the backward pass; an evaluation forward
    /// needs one block per chunk as well.
    cols: Vec<f32>,
    cols_hold_batch: bool,
    /// Per chunk: the output (or its gradient) as (O, images*OH*OW), the layout of the
    /// columns, between the GEMM and the NCHW tensor.
    out_block: Vec<f32>,
    /// Per-chunk partial weight and bias gradients, summed in chunk order.
    dw_parts: Vec<f32>,
    db_parts: Vec<f32>,
    /// Stands in for dx (one value per chunk) when the input gradient is not wanted.
    no_dx: Vec<f32>,
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
            out_block: Vec::new(),
            dw_parts: Vec::new(),
            db_parts: Vec::new(),
            no_dx: Vec::new(),
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
        let (in_len, out_len, ohw, ckk) = (g.in_len(), g.out_len(), g.ohw(), g.ckk());
        y.resize_batch(n, &self.output);
        self.cols.resize(n * ckk * ohw, 0.0);
        self.out_block.resize(n * out_len, 0.0);
        self.cols_hold_batch = train;
        let (w, b) = (&self.weight.value, &self.bias.value);
        y.data
            .par_chunks_mut(CHUNK * out_len)
            .zip(x.data.par_chunks(CHUNK * in_len))
            .zip(self.cols.par_chunks_mut(CHUNK * ckk * ohw))
            .zip(self.out_block.par_chunks_mut(CHUNK * out_len))
            .for_each(|(((y, x), cols), block)| {
                let nb = x.len() / in_len;
                let ld = nb * ohw;
                for (i, x) in x.chunks(in_len).enumerate() {
                    im2col(&g, x, &mut cols[i * ohw..], ld);
                }
                // block (O, nb*OHW) = w (O, CKK) . cols (CKK, nb*OHW): one GEMM per chunk,
                // then each image's (O, OHW) slice of it, plus the bias, into y.
                sgemm(g.out_c, ckk, ld, 1.0, w, false, cols, false, 0.0, block);
                for (i, y) in y.chunks_mut(out_len).enumerate() {
                    for (o, (row, &bias)) in y.chunks_mut(ohw).zip(b).enumerate() {
                        let src = &block[o * ld + i * ohw..][..ohw];
                        for (d, &s) in row.iter_mut().zip(src) {
                            *d = s + bias;
                        }
                    }
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
        let (in_len, out_len, ohw, ckk) = (g.in_len(), g.out_len(), g.ohw(), g.ckk());
        let chunks = n.div_ceil(CHUNK);
        let (wn, bn) = (self.weight.value.len(), self.bias.value.len());
        self.dw_parts.resize(chunks * wn, 0.0);
        self.db_parts.resize(chunks * bn, 0.0);
        let w = &self.weight.value;
        let mut dx = dx;
        if let Some(dx) = dx.as_deref_mut() {
            dx.resize_batch(n, &self.input);
        }
        // With no dx wanted, pair each chunk with a placeholder value.
        self.no_dx.resize(chunks, 0.0);
        let (dx_data, dx_step) = match dx {
            Some(d) => (&mut d.data, CHUNK * in_len),
            None => (&mut self.no_dx, 1),
        };
        let want_dx = dx_step != 1;
        self.dw_parts
            .par_chunks_mut(wn)
            .zip(self.db_parts.par_chunks_mut(bn))
            .zip(self.cols.par_chunks_mut(CHUNK * ckk * ohw))
            .zip(self.out_block.par_chunks_mut(CHUNK * out_len))
            .zip(dy.data.par_chunks(CHUNK * out_len))
            .zip(dx_data.par_chunks_mut(dx_step))
            .for_each(|(((((dw, db), cols), block), dy), dx)| {
                let nb = dy.len() / out_len;
                let ld = nb * ohw;
                // Gather dy into (O, nb*OHW), the layout of the columns.
                for (i, dy) in dy.chunks(out_len).enumerate() {
                    for (o, row) in dy.chunks(ohw).enumerate() {
                        block[o * ld + i * ohw..][..ohw].copy_from_slice(row);
                    }
                }
                // dw = block (O, nb*OHW) . cols^T (nb*OHW, CKK); db = row sums of block.
                sgemm(g.out_c, ld, ckk, 1.0, block, false, cols, true, 0.0, dw);
                for (d, row) in db.iter_mut().zip(block.chunks(ld)) {
                    *d = row.iter().sum();
                }
                if want_dx {
                    // The columns are no longer needed: they receive dcols = w^T . block.
                    sgemm(ckk, g.out_c, ld, 1.0, w, true, block, false, 0.0, cols);
                    for (i, dx) in dx.chunks_mut(in_len).enumerate() {
                        col2im(&g, &cols[i * ohw..], ld, dx);
                    }
                }
            });
        sum_parts(&self.dw_parts, &mut self.weight.grad);
        sum_parts(&self.db_parts, &mut self.bias.grad);
        if want_dx {
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
