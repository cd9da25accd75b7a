//! Max and average pooling over K x K windows with a stride (no padding).
//!
//! x: (N, C, H, W)   y: (N, C, OH, OW)   OH = (H - K) / stride + 1, likewise OW.
//!
//! Max: y = the largest value in the window; its position is recorded (`argmax`) and the
//! backward pass sends dy to exactly that one position. When values tie, the first in
//! row-major order wins, so the gradient is never copied to every tied position.
//! Average: y = mean of the window; dy / (K*K) goes to every position of it.
//! Overlapping windows (stride < K) add their gradients.

use super::{Layer, Scratch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

pub struct Pool2d {
    name: String,
    kind: PoolKind,
    kernel: usize,
    stride: usize,
    input: Vec<usize>,
    output: Vec<usize>,
    scratch: Vec<Scratch>,
}

impl Pool2d {
    pub fn new(
        name: &str,
        kind: PoolKind,
        input: [usize; 3],
        kernel: usize,
        stride: usize,
    ) -> Result<Pool2d, String> {
        let [c, h, w] = input;
        if kernel == 0 || stride == 0 {
            return Err("kernel and stride must be at least 1".into());
        }
        if h < kernel || w < kernel {
            return Err(format!(
                "a {kernel}x{kernel} pool does not fit the {h}x{w} input"
            ));
        }
        Ok(Pool2d {
            name: name.to_string(),
            kind,
            kernel,
            stride,
            input: input.to_vec(),
            output: vec![c, (h - kernel) / stride + 1, (w - kernel) / stride + 1],
            scratch: Vec::new(),
        })
    }
}

impl Layer for Pool2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_max_pool_2x2(&self) -> bool {
        self.kind == PoolKind::Max && self.kernel == 2 && self.stride == 2
    }
    fn kind(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "max_pool2d",
            PoolKind::Avg => "avg_pool2d",
        }
    }
    fn input_shape(&self) -> &[usize] {
        &self.input
    }
    fn output_shape(&self) -> &[usize] {
        &self.output
    }
    fn geometry(&self) -> String {
        format!("{0}x{0} s{1}", self.kernel, self.stride)
    }

    fn scratch_mut(&mut self) -> &mut Vec<Scratch> {
        &mut self.scratch
    }

    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, _train: bool) {
        let (k, st) = (self.kernel, self.stride);
        let [_, h, w] = [self.input[0], self.input[1], self.input[2]];
        let [_, oh, ow] = [self.output[0], self.output[1], self.output[2]];
        let (plane_in, plane_out) = (h * w, oh * ow);
        match self.kind {
            PoolKind::Max => {
                // `indices`: the winning position within its (H, W) plane, per output value.
                s.indices.resize(y.len(), 0);
                for ((y, arg), x) in y
                    .chunks_mut(plane_out)
                    .zip(s.indices.chunks_mut(plane_out))
                    .zip(x.chunks(plane_in))
                {
                    if k == 2 && st == 2 {
                        max_pool_2x2(x, w, y, arg, ow);
                    } else {
                        max_pool_plane(x, w, k, st, y, arg, ow);
                    }
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

    fn backward_chunk(
        &self,
        _x: &[f32],
        _y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        let Some(dx) = dx else { return };
        let (k, st) = (self.kernel, self.stride);
        let [_, h, w] = [self.input[0], self.input[1], self.input[2]];
        let [_, oh, ow] = [self.output[0], self.output[1], self.output[2]];
        let (plane_in, plane_out) = (h * w, oh * ow);
        dx.fill(0.0);
        match self.kind {
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
}

/// The common 2x2, stride-2 case of max pooling over one plane, unrolled; the same
/// first-wins rule on ties as the general loop (tested against it).
fn max_pool_2x2(x: &[f32], w: usize, y: &mut [f32], arg: &mut [u32], ow: usize) {
    for (i, (yr, ar)) in y
        .chunks_exact_mut(ow)
        .zip(arg.chunks_exact_mut(ow))
        .enumerate()
    {
        let top = &x[2 * i * w..2 * i * w + 2 * ow];
        let bottom = &x[(2 * i + 1) * w..(2 * i + 1) * w + 2 * ow];
        let base = (2 * i * w) as u32;
        for (j, (yv, av)) in yr.iter_mut().zip(ar.iter_mut()).enumerate() {
            let (a, b, c, d) = (top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]);
            let (mut best, mut at) = (a, 2 * j as u32);
            if b > best {
                best = b;
                at = 2 * j as u32 + 1;
            }
            if c > best {
                best = c;
                at = w as u32 + 2 * j as u32;
            }
            if d > best {
                best = d;
                at = w as u32 + 2 * j as u32 + 1;
            }
            *yv = best;
            *av = base + at;
        }
    }
}

/// Max pooling of one (H, W) plane with any kernel and stride: the plain version.
fn max_pool_plane(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrolled_2x2_matches_the_plain_loop_including_ties() {
        // Few distinct values, so most windows hold ties; odd width leaves a ragged edge.
        let (h, w) = (6, 7);
        let x: Vec<f32> = (0..h * w).map(|i| ((i * 7919) % 3) as f32).collect();
        let (oh, ow) = (3, 3);
        let (mut y1, mut a1) = (vec![0.0; oh * ow], vec![0; oh * ow]);
        let (mut y2, mut a2) = (vec![0.0; oh * ow], vec![0; oh * ow]);
        max_pool_2x2(&x, w, &mut y1, &mut a1, ow);
        max_pool_plane(&x, w, 2, 2, &mut y2, &mut a2, ow);
        assert_eq!(y1, y2);
        assert_eq!(a1, a2);
    }
}
