//! Unfolding images into columns, so a convolution becomes one GEMM per chunk of images:
//! the loops over the window in `nn::Conv2d::forward` become rows of `cols`.
//!
//! ```text
//! cols: (C*K*K, OH*OW) per image, row (c, ki, kj) holding x[c, i*stride + ki - pad, j*stride + kj - pad]
//! forward:  y_n = w (O x CKK) . cols_n + b                  backward: dw += dy_n . cols_n^T
//!           dcols_n = w^T . dy_n, folded back by col2im:   dx_n = col2im(dcols_n)
//! ```
//! For stride 1 the columns use the "wide" layout (`wide_im2col`): each kernel tap's row is
//! one contiguous run of the padded input, which the direct kernels (`conv_direct.rs`)
//! also read in place. `ConvLayout` holds the sizes of both layouts.

use super::conv_direct::widen;
use super::simd::{round_up, Isa, MAX_LANES};
use crate::nn::ConvShape;

/// The sizes of the layouts a fast convolution uses, derived from its `ConvShape`.
pub trait ConvLayout {
    /// Stride 1 uses the wide layout (see `wide_im2col`); other strides the plain im2col.
    fn is_wide(&self) -> bool;
    /// Width of a zero-padded input row.
    fn padded_w(&self) -> usize;
    /// Values per channel of the padded input, plus slack so that every window's read of
    /// `out_h * padded_w` values, rounded up to whole vectors (`conv_direct`), stays inside.
    fn padded_plane(&self) -> usize;
    /// Columns per image in `cols`: `out_h * padded_w` in the wide layout, `OH*OW` otherwise.
    fn cols_per_image(&self) -> usize;
    /// Distance between output rows in the column layout.
    fn row_step(&self) -> usize;
    /// Temporary values per chunk besides the output block: a padded image (wide layout)
    /// or dw^T.
    fn temp_len(&self) -> usize;
    /// Where kernel tap `t = ki * K + kj` reads in the wide layout, relative to the output
    /// position: `ki * padded_w + kj`.
    fn tap_offsets(&self) -> Vec<isize>;
    /// Direct path: zeros before each output-gradient row, so that the input gradient's
    /// taps, which reach back by up to the largest offset, stay inside.
    fn grad_margin(&self) -> usize;
    /// Direct path: input-gradient positions per channel, the input's rows at the padded
    /// width.
    fn dx_wide(&self) -> usize;
    /// Direct path: one output-gradient row with its margins, long enough for the weight
    /// gradient's reads (whole vectors) and the input gradient's.
    fn grad_row(&self) -> usize;
    /// The output columns `ow` whose input column `ow*stride + kj - pad` lies inside the image.
    fn valid_cols(&self, kj: usize) -> (usize, usize);
}

impl ConvLayout for ConvShape {
    fn is_wide(&self) -> bool {
        self.stride == 1
    }
    fn padded_w(&self) -> usize {
        self.in_w + 2 * self.pad
    }
    fn padded_plane(&self) -> usize {
        (self.in_h + 2 * self.pad) * self.padded_w() + self.kernel + MAX_LANES
    }
    fn cols_per_image(&self) -> usize {
        if self.is_wide() {
            self.out_h * self.padded_w()
        } else {
            self.ohw()
        }
    }
    fn row_step(&self) -> usize {
        if self.is_wide() {
            self.padded_w()
        } else {
            self.out_w
        }
    }
    fn temp_len(&self) -> usize {
        let padded = if self.is_wide() {
            self.in_c * self.padded_plane()
        } else {
            0
        };
        padded.max(self.ckk() * self.out_c)
    }

    fn tap_offsets(&self) -> Vec<isize> {
        let (k, wp) = (self.kernel, self.padded_w());
        (0..k * k)
            .map(|t| ((t / k) * wp + t % k) as isize)
            .collect()
    }
    fn grad_margin(&self) -> usize {
        (self.kernel - 1) * (self.padded_w() + 1)
    }
    fn dx_wide(&self) -> usize {
        self.in_h * self.padded_w()
    }
    fn grad_row(&self) -> usize {
        let dx_reach = self.pad * self.padded_w() + round_up(self.dx_wide());
        // MAX_LANES more: the last row's gather (`widen`) stores whole vectors.
        self.grad_margin() + round_up(self.cols_per_image()).max(dx_reach) + MAX_LANES
    }

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
pub fn im2col(g: &ConvShape, x: &[f32], cols: &mut [f32], ld: usize) {
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
pub fn col2im(g: &ConvShape, cols: &[f32], ld: usize, dx: &mut [f32]) {
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
pub(crate) fn pad_into(g: &ConvShape, x: &[f32], padded: &mut [f32]) {
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
pub(crate) fn unpad_from(g: &ConvShape, padded: &[f32], dx: &mut [f32]) {
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
pub(crate) fn pad_whole(g: &ConvShape, isa: Option<Isa>, x: &[f32], padded: &mut [f32]) {
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

/// im2col for stride 1 in the "wide" layout: output position (oh, ow) sits at column
/// `oh * padded_w + ow`, with `ow` running over the whole padded width. Then the row of
/// kernel tap (c, ki, kj) is one contiguous run of the padded input, starting at
/// `ki * padded_w + kj`: a single copy instead of one per output row. The columns with
/// `ow >= out_w` hold values that straddle two rows; the GEMM computes them and the
/// layer throws them away (`padded_w / out_w` more work, 1.07x for 28x28 pad 1).
pub fn wide_im2col(g: &ConvShape, padded: &[f32], cols: &mut [f32], ld: usize) {
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
pub fn wide_col2im(g: &ConvShape, cols: &[f32], ld: usize, padded: &mut [f32]) {
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
pub(crate) fn unfold_chunk(g: &ConvShape, x: &[f32], cols: &mut [f32], temp: &mut [f32]) {
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
