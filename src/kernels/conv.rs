//! The fast convolution: what `nn::Conv2d` computes, for one chunk of images at a time,
//! with the ReLU and the 2x2 max pool that follow it applied on the output rows when the
//! engine asks (`set_relu`, `set_max_pool`), so that those layers are skipped.
//!
//! Two paths. Stride 1 on a CPU with AVX-512 or AVX2 takes the direct path: the vector
//! kernels of `conv_direct.rs` read the padded input in place, for the forward pass, the
//! input gradient (the same shifted sum with the weights transposed and the offsets
//! negated) and the weight gradient (shifted dots, or with the output channels in the
//! lanes when they fill whole vectors: `lane_dots`); 3x3 layers wide enough run as
//! Winograd F(2x2, 3x3) instead (`winograd.rs`, `winograd_dw.rs`). Otherwise im2col + GEMM
//! (`im2col.rs`): within a chunk the images' columns sit side by side, (CKK,
//! images*cols), so each product is one GEMM per chunk. Each chunk sums its own weight
//! gradient and the engine adds the chunks in order, so the result is the same for any
//! thread count. `tests` compares every path with `nn::Conv2d`, forward and backward, and
//! the fused output with the separate ReLU and pooling layers, bit for bit.

use super::conv_direct::{lane_dots, shifted_dots, shifted_sum, unwiden, widen, Planes};
use super::gemm::sgemm;
use super::im2col::{col2im, pad_whole, unfold_chunk, unpad_from, wide_col2im, ConvLayout};
use super::pool::{max_pool_2x2, unpool_2x2};
use super::simd::{self, round_up, Isa, MAX_LANES};
use super::winograd::{self, Finish, Source, Tile};
use super::winograd_dw;
use super::{grow, sum, PreparedFrom, Scratch};
use crate::nn::{ConvShape, Mode};
use std::cell::RefCell;

thread_local! {
    /// Each worker thread's working memory for evaluation passes (`forward_chunk`).
    static EVAL_SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// Each worker thread's im2col buffer. One per thread, not per chunk: reused by every
    /// chunk the thread runs, it stays in that core's cache.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each worker thread's transposed output gradient and weight-gradient sums for
    /// `lane_dots`, likewise.
    static LANE_DW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each worker thread's output gradient in the wide layout and input gradient rows for
    /// the direct backward pass, likewise. (In each chunk's own `Scratch` they were cold
    /// memory on every pass: writing them waited for each line from DRAM.)
    static BACKWARD: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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

/// The fast path of one convolution layer: its choice of kernels and fusions, and the
/// weights rearranged for them. The weights themselves stay in the `nn::Conv2d`.
pub struct FastConv {
    /// The sizes.
    pub shape: ConvShape,
    /// Apply a ReLU to the output (and mask the output gradient by it).
    relu: bool,
    /// Apply the 2x2, stride-2 max pool after it (after the ReLU): the output is pooled,
    /// the winning positions are kept in `Scratch::indices`, and the output gradient is
    /// the pooled one.
    pool: bool,
    /// Stride 1 on a CPU with vector kernels: the direct path (`conv_direct`), which reads
    /// the padded input in place instead of unfolding it. `None`: im2col + GEMM.
    direct: Option<Isa>,
    /// `shape.tap_offsets()` and their negatives, for the direct path.
    offsets: Vec<isize>,
    back_offsets: Vec<isize>,
    /// The weights as (C, O, K*K), for the direct path's input gradient; refreshed once
    /// per forward pass (`prepare`), not per chunk.
    weight_t: Vec<f32>,
    /// A 3x3 stride-1 layer with enough channels on the direct path: the forward pass and
    /// (pad <= 2) the input gradient run as Winograd F(2x2, 3x3) (`winograd.rs`); the
    /// weight gradient has its own choice (`dw`).
    winograd: bool,
    /// Whether planes for which it takes fewer products (`Tile::four_pays`: cnn-plus's 28x28
    /// and 14x14) run F(4x4, 3x3) instead (`winograd4.rs`): on unless `CONVNET_WINOGRAD=f2`.
    four: bool,
    /// Whether pooled planes run F(4x4) too: on. It was off while its pooling built each
    /// window in a closure the compiler kept out of line, without AVX-512 (6,259-7,881
    /// evaluation images/s against 10,361-10,553 with F(2x2) on an Intel Xeon); as a plain
    /// function it beat F(2x2) in each of six alternating pairs on an AMD EPYC (Zen 4),
    /// 15,182-17,215 against 14,398-16,211. Tests turn it off to keep F(2x2)'s pool checked.
    four_pooled: bool,
    /// The weights transformed for it, forward and for the input gradient (`prepare`).
    wino_u: Vec<f32>,
    wino_back: Vec<f32>,
    /// The weights `wino_u` was made from by an evaluation pass (`prepare_forward`).
    made_from: PreparedFrom,
    /// `weight_t` and `wino_back` are from the weights of the last forward pass: false
    /// after `prepare_forward`, which makes only what a forward pass reads.
    backward_ready: bool,
    /// How the direct path computes the weight gradient.
    dw: WeightGrad,
}

/// How the direct path computes a convolution's weight gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightGrad {
    /// Positions in the lanes (`shifted_dots`): any shape.
    ShiftedDots,
    /// Output channels in the lanes (`lane_dots`): a 3x3, stride-1 layer whose output
    /// channels fill whole vectors.
    LaneDots,
    /// Winograd F(2x2, 3x3) with the output channels in the lanes (`winograd_dw.rs`):
    /// the same shapes.
    Winograd,
}

/// How thin a 3x3 layer may be and still gain from Winograd: per tile its input transform
/// costs in proportion to C, its output transform to O, the products saved to C * O; so
/// it pays when 1/C + 1/O is small. Measured with `cargo bench --bench conv` and `convnet
/// bench` (BENCHMARKS.md), F(2x2): 32 -> 64 channels gain, 16 -> 32 a little, 8 -> 16 lose.
const WINOGRAD_MAX_THINNESS: f64 = 0.1;

/// The same where the output planes run F(4x4, 3x3) (`Tile::four_pays`), whose products
/// shrink 4x against the direct sums' 2.25x: seed-cnn's conv2 (8 -> 16, 14x14, pooled)
/// trained 56,702-60,903 -> 64,127-66,248 images/s in five alternating `convnet bench`
/// pairs on an AMD EPYC (Zen 4), once conv3's four tile rows a vector had halved the
/// transforms of 14x14 planes.
const WINOGRAD_FOUR_MAX_THINNESS: f64 = 0.2;

/// Whether `shape` can and should run as Winograd on the direct path.
fn wants_winograd(g: &ConvShape) -> bool {
    let four = winograd::four_allowed() && Tile::four_pays(g.out_h, g.out_w);
    let most = if four {
        WINOGRAD_FOUR_MAX_THINNESS
    } else {
        WINOGRAD_MAX_THINNESS
    };
    winograd::allowed()
        && g.kernel == 3
        && g.stride == 1
        && 1.0 / g.in_c as f64 + 1.0 / g.out_c as f64 <= most
}

/// The fewest input channels for which the lane weight gradient is the default (on
/// AVX-512 only): its transposes of the output gradient are shared by the 9 * C rows of
/// sums, so a thin input loses (`cargo bench --bench conv`: 1 -> 16 channels 75 -> 96 us
/// a chunk; 8 -> 16 65 -> 56 us, 16 -> 32 1,072 -> 642, 32 -> 64 728 -> 616). With AVX2's
/// 16 registers it holds one vector of channels, 9 broadcasts for 9 FMAs, and lost on the
/// same machine (8 -> 16 102 -> 117-123 us, 32 -> 64 1,060-1,140 -> 1,374-1,471).
const LANE_DW_MIN_PLANES: usize = 8;

/// The weight gradient the direct path runs unless told otherwise, for a 3x3, stride-1
/// layer whose output channels fill whole vectors: Winograd where the layer runs forward
/// as Winograd (`wants_winograd`); else on AVX-512, with `LANE_DW_MIN_PLANES` input
/// channels, the lanes. Otherwise the shifted dots. `cargo bench --bench conv`, one chunk,
/// best of several runs: cnn-plus conv2 lane 634-669 -> Winograd 557-595 us, conv3
/// 602-617 -> 348-399 us; with AVX2 (where the lanes lose) the shifted dots 485 -> 317 us
/// and 1,184 -> 693 us. seed-cnn's conv2 (8 -> 16) is too thin for Winograd.
fn default_weight_grad(g: &ConvShape, direct: Option<Isa>) -> WeightGrad {
    match direct {
        Some(isa) if lane_dw_fits(g, isa) && wants_winograd(g) => WeightGrad::Winograd,
        Some(isa @ Isa::Avx512) if lane_dw_fits(g, isa) && g.in_c >= LANE_DW_MIN_PLANES => {
            WeightGrad::LaneDots
        }
        _ => WeightGrad::ShiftedDots,
    }
}

/// Whether `lane_dots` can run the weight gradient of `shape` on `isa`: 3x3, stride 1,
/// the output channels in whole vectors.
fn lane_dw_fits(g: &ConvShape, isa: Isa) -> bool {
    g.kernel == 3 && g.stride == 1 && g.out_c.is_multiple_of(isa.lanes())
}

// Per chunk, `Scratch::work`. im2col + GEMM: the output (or its gradient) in the column
// layout, (O, images*cols_per_image), between the GEMM and NCHW, then a padded image
// or dw^T (`temp_len`); the im2col columns themselves, (CKK, images*cols_per_image)
// with the images side by side so each chunk needs one GEMM, live in a per-thread
// buffer. Direct path: the chunk's padded images (kept for the backward pass), then
// one image's output block; the backward pass's output gradient in the wide layout with
// margins and its input-gradient rows live in a per-thread buffer (`BACKWARD`).
// `indices`: the fused pool's winning positions. Evaluation passes use a per-thread
// scratch instead (`EVAL_SCRATCH`).

impl FastConv {
    /// The fast path for `shape`: direct kernels on the widest vector unit when the stride
    /// is 1, im2col + GEMM otherwise.
    pub fn new(shape: ConvShape) -> FastConv {
        let g = shape;
        let direct = if g.is_wide() { simd::detect() } else { None };
        FastConv {
            shape: g,
            relu: false,
            pool: false,
            direct,
            offsets: g.tap_offsets(),
            back_offsets: g.tap_offsets().iter().map(|o| -o).collect(),
            weight_t: Vec::new(),
            winograd: direct.is_some() && wants_winograd(&g),
            four: winograd::four_allowed(),
            four_pooled: true,
            wino_u: Vec::new(),
            wino_back: Vec::new(),
            made_from: PreparedFrom::default(),
            backward_ready: false,
            dw: default_weight_grad(&g, direct),
        }
    }

    /// Runs the direct path's weight gradient as `dw` (the default: `default_weight_grad`).
    /// Refuses what the shape or path cannot run.
    pub fn set_weight_grad(&mut self, dw: WeightGrad) -> Result<(), String> {
        if dw != WeightGrad::ShiftedDots
            && !self
                .direct
                .is_some_and(|isa| lane_dw_fits(&self.shape, isa))
        {
            return Err(format!(
                "{dw:?} needs a 3x3, stride-1 conv on the direct path with output channels \
                 in whole vectors"
            ));
        }
        self.dw = dw;
        Ok(())
    }

    /// How the direct path computes the weight gradient.
    pub fn weight_grad(&self) -> WeightGrad {
        self.dw
    }

    /// Runs the forward pass and (pad <= 2) the input gradient as Winograd F(2x2, 3x3)
    /// while `on` (the default for 3x3, stride-1 layers wide enough,
    /// `WINOGRAD_MAX_THINNESS`, on the direct path). Refuses what the shape or path cannot
    /// run.
    pub fn set_winograd(&mut self, on: bool) -> Result<(), String> {
        let g = &self.shape;
        if on && (self.direct.is_none() || g.kernel != 3 || g.stride != 1) {
            return Err(
                "Winograd F(2x2, 3x3) needs a 3x3, stride-1 conv on the direct path".into(),
            );
        }
        self.winograd = on;
        Ok(())
    }

    /// Whether the input gradient runs as Winograd too: with the forward pass, when the pad
    /// is at most 2 (the output gradient then needs padding, not cropping).
    pub fn winograd_dx(&self) -> bool {
        self.winograd && self.shape.pad <= 2
    }

    /// Whether the forward pass runs as Winograd (and the input gradient, `winograd_dx`).
    pub fn winograd(&self) -> bool {
        self.winograd
    }

    /// Lets planes run Winograd F(4x4, 3x3) where it takes fewer products while `on` (the
    /// default unless `CONVNET_WINOGRAD=f2`), else F(2x2, 3x3) everywhere.
    pub fn set_winograd_four(&mut self, on: bool) {
        self.four = on;
    }

    /// Lets pooled planes run F(4x4, 3x3) too while `on` (the default: `four_pooled`).
    #[cfg(test)]
    pub fn set_winograd_four_pooled(&mut self, on: bool) {
        self.four_pooled = on;
    }

    /// The Winograd algorithm of the forward pass as the layer stands, if any: F(4x4, 3x3)
    /// for output planes where it takes fewer products (`tile_for`), else F(2x2, 3x3).
    pub fn forward_tile(&self) -> Option<Tile> {
        let g = &self.shape;
        let four = !self.pool || self.four_pooled;
        self.winograd.then(|| self.tile_for(g.out_h, g.out_w, four))
    }

    /// The same for the input gradient (`winograd_dx`), whose output planes are the input's.
    pub fn dx_tile(&self) -> Option<Tile> {
        let g = &self.shape;
        self.winograd_dx()
            .then(|| self.tile_for(g.in_h, g.in_w, true))
    }

    /// The Winograd algorithm of the weight gradient when it runs as Winograd
    /// (`WeightGrad::Winograd`), whose tiles are the output planes': F(4x4) where
    /// `Tile::four_pays_for_weight_grad` (cnn-plus's conv2, not its conv3).
    pub fn dw_tile(&self) -> Option<Tile> {
        let g = &self.shape;
        let four = Tile::four_pays_for_weight_grad(g.out_h, g.out_w);
        (self.dw == WeightGrad::Winograd).then(|| self.tile_for(g.out_h, g.out_w, four))
    }

    fn tile_for(&self, h: usize, w: usize, four: bool) -> Tile {
        if self.four && four && Tile::four_pays(h, w) {
            Tile::F4
        } else {
            Tile::F2
        }
    }

    /// Chooses the direct path on vector unit `isa` (one of `simd::supported()`, stride 1
    /// only) or, with `None`, im2col + GEMM. Tests and benchmarks compare them; otherwise
    /// the default, the widest unit, stays. Refuses what this CPU or shape cannot run.
    #[cfg(test)]
    pub fn set_direct(&mut self, isa: Option<Isa>) -> Result<(), String> {
        if let Some(isa) = isa {
            if !simd::supported().contains(&isa) {
                return Err(format!("this CPU cannot run {isa}"));
            }
            if !self.shape.is_wide() {
                return Err("the direct path needs stride 1".into());
            }
        }
        self.direct = isa;
        if isa.is_none() {
            self.winograd = false;
        }
        self.dw = WeightGrad::ShiftedDots;
        Ok(())
    }

    /// Which path runs: the vector unit of the direct path, or `None` for im2col + GEMM.
    #[cfg(test)]
    pub fn direct(&self) -> Option<Isa> {
        self.direct
    }

    /// Apply a ReLU to the output while `on`.
    pub fn set_relu(&mut self, on: bool) {
        self.relu = on;
    }

    /// What the backward pass reads besides its output gradient: (the input, the output).
    /// The direct path reads neither input (it keeps its own padded copy) nor output but
    /// for the fused ReLU's mask; im2col + GEMM reads the input.
    pub fn backward_reads(&self) -> (bool, bool) {
        let gemm = self.direct.is_none();
        (gemm, gemm || self.relu)
    }

    /// Apply a 2x2, stride-2 max pool to the output (after the ReLU) while `on`.
    pub fn set_max_pool(&mut self, on: bool) {
        self.pool = on;
    }

    /// Once before a batch's chunks run forward, with the weights as they are now.
    pub fn prepare(&mut self, weight: &[f32]) {
        if self.direct.is_none() {
            return;
        }
        let (g, taps) = (&self.shape, self.offsets.len());
        if let Some(tile) = self.forward_tile() {
            tile.transform_weights(weight, g.out_c, g.in_c, false, &mut self.wino_u);
        }
        if let Some(tile) = self.dx_tile() {
            tile.transform_weights(weight, g.out_c, g.in_c, true, &mut self.wino_back);
        }
        self.weight_t.resize(weight.len(), 0.0);
        for (o, w) in weight.chunks(g.in_c * taps).enumerate() {
            for (c, w) in w.chunks(taps).enumerate() {
                self.weight_t[(c * g.out_c + o) * taps..][..taps].copy_from_slice(w);
            }
        }
        self.made_from.forget();
        self.backward_ready = true;
    }

    /// `prepare` for an evaluation pass: only what the forward pass reads (the Winograd
    /// weights; the input gradient's copies are left stale), and nothing when `weight` and
    /// the forward tile, which the fused pool decides, are those of the last such pass.
    /// cnn-plus's conv3 spent 0.26 ms a batch transforming its weights both ways.
    pub fn prepare_forward(&mut self, weight: &[f32]) {
        if self.direct.is_none() {
            return;
        }
        let tile = self.forward_tile();
        let key = tile.map_or(0, Tile::side);
        if self.made_from.matches(weight, key) {
            return;
        }
        if let Some(tile) = tile {
            let g = &self.shape;
            tile.transform_weights(weight, g.out_c, g.in_c, false, &mut self.wino_u);
        }
        self.backward_ready = false;
        self.made_from.remember(weight, key);
    }

    /// The forward pass of one chunk of images `x` into `y` (pooled when the pool is on).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_chunk(
        &self,
        (w, b): (&[f32], &[f32]),
        x: &[f32],
        y: &mut [f32],
        s: &mut Scratch,
        mode: Mode,
    ) {
        let train = mode == Mode::Train;
        s.ready = train;
        if train {
            self.forward_into((w, b), x, y, s, true);
        } else {
            // Nothing is kept for a backward pass, so the working memory is this thread's,
            // reused by every chunk it runs and warm in its cache, rather than the chunk's
            // own (an evaluation batch of 1000 would stream through 125 chunks' worth).
            EVAL_SCRATCH.with(|t| self.forward_into((w, b), x, y, &mut t.borrow_mut(), false));
        }
    }

    /// The backward pass of one chunk: the chunk's weight and bias gradient into
    /// `s.grad` (weight, then bias), and `dx` when wanted.
    pub fn backward_chunk(
        &self,
        (w, b): (&[f32], &[f32]),
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        assert!(s.ready, "conv backward needs a training-mode forward first");
        s.ready = false;
        if let Some(isa) = self.direct {
            assert!(
                self.backward_ready,
                "conv backward needs a training-mode `prepare` since the last evaluation one"
            );
            return self.direct_backward(isa, (w, b), y, dy, dx, s);
        }
        let g = &self.shape;
        let (in_len, ckk) = (g.in_len(), g.ckk());
        let nb = x.len() / in_len;
        let cols_len = g.cols_per_image();
        let ld = nb * cols_len;
        let (wn, bn) = (w.len(), b.len());
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

    /// im2col + GEMM forward: the output block (O, images * cols_per_image) at the start
    /// of `s.work`.
    fn gemm_forward(&self, w: &[f32], x: &[f32], s: &mut Scratch) {
        let g = &self.shape;
        let ld = x.len() / g.in_len() * g.cols_per_image();
        grow(&mut s.work, g.out_c * ld + g.temp_len());
        let (block, temp) = s.work.split_at_mut(g.out_c * ld);
        with_cols(g.ckk() * ld, |cols| {
            unfold_chunk(g, x, cols, temp);
            // block (O, nb*cols_len) = w (O, CKK) . cols (CKK, nb*cols_len): one GEMM per
            // chunk.
            sgemm(g.out_c, g.ckk(), ld, 1.0, w, false, cols, false, 0.0, block);
        });
    }

    /// The forward pass of one chunk, working in `s`. Direct path: the padded images at
    /// the start of `s.work` (kept for the backward pass), then one image's output block
    /// (O, round_up(cols_per_image)), computed and written out image by image while it is
    /// in the cache. im2col + GEMM: the whole chunk's block, (O, images * cols_per_image).
    fn forward_into(
        &self,
        (w, b): (&[f32], &[f32]),
        x: &[f32],
        y: &mut [f32],
        s: &mut Scratch,
        train: bool,
    ) {
        let g = &self.shape;
        let nb = x.len() / g.in_len();
        let cols_len = g.cols_per_image();
        if self.pool && train {
            s.indices.resize(nb * g.out_c * self.out_plane(), 0);
        }
        let Some(isa) = self.direct else {
            self.gemm_forward(w, x, s);
            let ld = nb * cols_len;
            for i in 0..nb {
                let block = &s.work[..g.out_c * ld];
                self.write_image(b, i, block, ld, i * cols_len, y, &mut s.indices, train);
            }
            return;
        };
        let (plane, img) = (g.padded_plane(), round_up(cols_len));
        let padded_len = nb * g.in_c * plane;
        // Two rows of slack: the pooling reads whole vectors past the last plane's end; the
        // Winograd input transform reads past it as well.
        let tile = self.forward_tile().unwrap_or(Tile::F2);
        let room = winograd::convolve_room(tile, (g.out_h, g.out_w), g.padded_w(), plane);
        grow(
            &mut s.work,
            padded_len + (g.out_c * img + 2 * MAX_LANES).max(room),
        );
        for (x, p) in x.chunks(g.in_len()).zip(s.work.chunks_mut(g.in_c * plane)) {
            pad_whole(g, self.direct, x, p);
        }
        if self.winograd {
            return self.winograd_forward(isa, tile, b, &s.work, nb, y, &mut s.indices, train);
        }
        let (padded, block) = s.work.split_at_mut(padded_len);
        let rows = g.out_c;
        for i in 0..nb {
            let x = Planes {
                data: padded,
                start: i * g.in_c * plane,
                plane,
                image: 0,
            };
            shifted_sum(isa, &self.offsets, cols_len, w, rows, g.in_c, x, block, img);
            self.write_image(b, i, block, img, 0, y, &mut s.indices, train);
        }
    }

    /// The forward pass of a chunk as Winograd (`tile`), bias, ReLU and pool included,
    /// from the `nb` padded images at the start of `padded`.
    #[allow(clippy::too_many_arguments)]
    fn winograd_forward(
        &self,
        isa: Isa,
        tile: Tile,
        bias: &[f32],
        padded: &[f32],
        nb: usize,
        y: &mut [f32],
        indices: &mut [u32],
        train: bool,
    ) {
        let g = &self.shape;
        let src = Source {
            start: 0,
            plane: g.padded_plane(),
            row: g.padded_w(),
        };
        let image = g.in_c * g.padded_plane();
        let plane = self.out_plane();
        let finish = Finish {
            relu: self.relu,
            pool: self.pool.then(|| g.row_step()),
        };
        let keep_arg = self.pool && train;
        let (u, out) = (&self.wino_u, (g.out_h, g.out_w));
        winograd::convolve(
            isa,
            tile,
            padded,
            src,
            image,
            nb,
            g.in_c,
            u,
            g.out_c,
            out,
            |i, p| {
                let planes = &mut y[i * g.out_c * plane..][..g.out_c * plane];
                let arg = if keep_arg {
                    &mut indices[i * g.out_c * plane..][..g.out_c * plane]
                } else {
                    &mut []
                };
                p.planes(0, bias, finish, planes, arg)
            },
        );
    }

    /// Image `i`'s outputs, from `block` (its rows `ld` apart, the image's columns from
    /// `at`), plus the bias and the fused ReLU, into `y`: pooled straight from the column
    /// layout when the max pool is fused (with the winners' positions when training), else
    /// each valid output. Plane by plane in order, so a plane's last vector may run into
    /// the next one.
    #[allow(clippy::too_many_arguments)]
    fn write_image(
        &self,
        bias: &[f32],
        i: usize,
        block: &[f32],
        ld: usize,
        at: usize,
        y: &mut [f32],
        indices: &mut [u32],
        train: bool,
    ) {
        let g = &self.shape;
        let (plane, step, relu) = (self.out_plane(), g.row_step(), self.relu);
        for (o, &bias) in bias.iter().enumerate() {
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
        let g = &self.shape;
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
        let g = &self.shape;
        if self.pool {
            let mask = self.relu.then_some(y);
            let (shape, step) = ((g.out_h / 2, g.out_w / 2), g.row_step());
            unpool_2x2(self.direct, dy, mask, arg, shape, step, g.out_h, dst);
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

    /// The weight gradient of `images` images by `lane_dots`: each image's output gradient
    /// (`dyw`, the wide layout with margins) transposed to one row of channels per position,
    /// the sums gathered as (C*9, O), then transposed into `dw` (O, C*9).
    fn lane_weight_grad(
        &self,
        isa: Isa,
        dyw: &[f32],
        padded: &[f32],
        images: usize,
        dw: &mut [f32],
    ) {
        let g = &self.shape;
        let (plane, margin, row) = (g.padded_plane(), g.grad_margin(), g.grad_row());
        let (n, outs, rows) = (g.cols_per_image(), g.out_c, g.in_c * 9);
        LANE_DW.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = n * outs + rows * outs + MAX_LANES;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            // Whole-vector rows of the transposed gradient start on a vector boundary.
            let skew = buf.as_ptr().align_offset(64).min(MAX_LANES);
            let (dyt, dwt) = buf[skew..].split_at_mut(n * outs);
            let dwt = &mut dwt[..rows * outs];
            dwt.fill(0.0);
            for i in 0..images {
                let src = &dyw[i * outs * row + margin..];
                simd::transpose_strided(Some(isa), (src, row), outs, n, (dyt, outs));
                let x = Planes {
                    data: padded,
                    start: i * g.in_c * plane,
                    plane,
                    image: 0,
                };
                lane_dots(isa, g.padded_w(), n, x, g.in_c, dyt, outs, dwt);
            }
            simd::transpose(Some(isa), dwt, rows, outs, dw);
        });
    }

    /// Direct backward, from the padded images the forward pass left in `s.work`.
    #[allow(clippy::too_many_arguments)]
    fn direct_backward(
        &self,
        isa: Isa,
        (w, b): (&[f32], &[f32]),
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        let g = &self.shape;
        let nb = dy.len() / (g.out_c * self.out_plane());
        let (plane, margin, row) = (g.padded_plane(), g.grad_margin(), g.grad_row());
        let dxw_row = round_up(g.dx_wide());
        let padded_len = nb * g.in_c * plane;
        let dyw_len = nb * g.out_c * row;
        // The Winograd input gradient reads past the last gradient row (into `dxw`), its
        // weight gradient past the last padded image (into the rest of `s.work`).
        let dx_tile = self.dx_tile().unwrap_or(Tile::F2);
        let room = margin + winograd::convolve_room(dx_tile, (g.in_h, g.in_w), g.padded_w(), row);
        let dw_tile = self.dw_tile().unwrap_or(Tile::F2);
        let x_room = winograd::convolve_room(dw_tile, (g.out_h, g.out_w), g.padded_w(), plane);
        grow(&mut s.work, padded_len + x_room);
        BACKWARD.with(|buf| {
            let mut buf = buf.borrow_mut();
            grow(&mut buf, dyw_len + (g.in_c * dxw_row).max(room));
            let work = &s.work[..];
            let (indices, grad) = (&s.indices[..], &mut s.grad);
            let wide = &mut buf[..];
            self.direct_backward_with(
                isa,
                (w, b),
                (y, dy, dx),
                (work, padded_len),
                wide,
                indices,
                grad,
            );
        });
    }

    /// `direct_backward` with its buffers: `work` holds the padded images from the forward
    /// pass (`padded_len` values, then room), `wide` the output gradient in the wide
    /// layout (`dyw`), then room and the input gradient rows.
    #[allow(clippy::too_many_arguments)]
    fn direct_backward_with(
        &self,
        isa: Isa,
        (w, b): (&[f32], &[f32]),
        (y, dy, dx): (&[f32], &[f32], Option<&mut [f32]>),
        (work, padded_len): (&[f32], usize),
        wide: &mut [f32],
        indices: &[u32],
        grad: &mut Vec<f32>,
    ) {
        let g = &self.shape;
        let nb = dy.len() / (g.out_c * self.out_plane());
        let (plane, margin, row) = (g.padded_plane(), g.grad_margin(), g.grad_row());
        let (cols_len, dxw_row) = (g.cols_per_image(), round_up(g.dx_wide()));
        let dyw_len = nb * g.out_c * row;
        let dyw = &mut wide[..dyw_len];
        // dy in the wide layout, one row per image and channel, with zero margins.
        let out_plane = self.out_plane();
        let planes = dy.chunks(out_plane).zip(y.chunks(out_plane));
        for (k, (r, (dy, y))) in dyw.chunks_mut(row).zip(planes).enumerate() {
            r[..margin].fill(0.0);
            r[margin + cols_len..].fill(0.0);
            let arg = if self.pool {
                &indices[k * out_plane..][..out_plane]
            } else {
                &[]
            };
            self.gather_dy(&mut r[margin..], dy, y, arg);
        }
        let (wn, bn) = (w.len(), b.len());
        grad.resize(wn + bn, 0.0);
        let (dw, db) = grad.split_at_mut(wn);
        dw.fill(0.0);
        let (padded, dyw) = (&work[..padded_len], &wide[..dyw_len]);
        match self.dw {
            WeightGrad::LaneDots => self.lane_weight_grad(isa, dyw, padded, nb, dw),
            WeightGrad::ShiftedDots => {
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
                shifted_dots(isa, &self.offsets, cols_len, nb, a, g.out_c, x, g.in_c, dw)
            }
            WeightGrad::Winograd => {
                // `work`, not `padded`: the input transform reads whole vectors past the
                // last padded image, into `dyw`.
                let wp = g.padded_w();
                let x = Source {
                    start: 0,
                    plane,
                    row: wp,
                };
                let dys = Source {
                    start: margin,
                    plane: row,
                    row: wp,
                };
                let (xs, dys) = ((work, x, g.in_c * plane), (dyw, dys, g.out_c * row));
                let out = (g.out_h, g.out_w);
                let tile = self.dw_tile().unwrap_or(Tile::F2);
                winograd_dw::weight_grad(isa, tile, nb, xs, g.in_c, dys, g.out_c, out, dw);
            }
        }
        for (o, d) in db.iter_mut().enumerate() {
            let rows = (0..nb).map(|i| &dyw[(i * g.out_c + o) * row + margin..][..cols_len]);
            *d = rows.map(sum).sum();
        }
        let Some(dx) = dx else { return };
        if let Some(tile) = self.dx_tile() {
            // The same convolution of dy, padded by 2 - pad, with the kernels flipped and the
            // channels swapped (`wino_back`). The wide layout holds dy padded already: its
            // margins and the zeros past each row's `out_w` values are the padding.
            let (wp, back) = (g.padded_w(), 2 - g.pad);
            let src = Source {
                start: margin - back * wp - back,
                plane: row,
                row: wp,
            };
            let (u, out, hw) = (&self.wino_back, (g.in_h, g.in_w), g.in_h * g.in_w);
            let no_bias = vec![0.0; g.in_c];
            let image = g.out_c * row;
            let rest = &wide[..];
            winograd::convolve(
                isa,
                tile,
                rest,
                src,
                image,
                nb,
                g.out_c,
                u,
                g.in_c,
                out,
                |i, p| {
                    let finish = Finish {
                        relu: false,
                        pool: None,
                    };
                    let dx = &mut dx[i * g.in_c * hw..][..g.in_c * hw];
                    p.planes(0, &no_bias, finish, dx, &mut [])
                },
            );
            return;
        }
        // dx_padded[c][q] = sum over o, t of w[o][c][t] * dy[o][q - offset[t]]: the same
        // shifted sum with the weights transposed (`weight_t`) and the offsets negated.
        let wt = &self.weight_t;
        let (wp, hw) = (g.padded_w(), g.in_h * g.in_w);
        let (dyw, dxw) = wide.split_at_mut(dyw_len);
        let dyw = &*dyw;
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
