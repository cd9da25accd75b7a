//! How the engine runs each layer: a small adapter per layer type that keeps the readable
//! layer (its parameters and shapes) and calls the fast kernels on chunks of the batch.
//! Layers without a fast kernel of their own run their readable code on chunks.

use crate::kernels::batchnorm::FastBatchNorm;
use crate::kernels::conv::{FastConv, WeightGrad};
use crate::kernels::linear::FastLinear;
use crate::kernels::winograd::Tile;
use crate::kernels::{pool, sum_chunk_grads, Scratch};
use crate::nn::dropout::GROUP;
use crate::nn::{
    Activation, ActivationKind, BatchNorm, Conv2d, Dropout, Flatten, Layer, Linear, Mode, Pool2d,
    PoolKind,
};
use crate::spec::{LayerOp, ResolvedLayer};
use crate::tensor::Tensor;

/// What a fused pass may skip a layer for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Absorb {
    /// A ReLU the layer before it applies itself.
    Relu,
    /// A 2x2, stride-2 max pool the conv or batch norm before it applies itself.
    MaxPool2x2,
    /// A layer that leaves the data as it is (flatten): the next layer reads its input.
    Identity,
    /// In evaluation, a batch norm right after a conv: its per-channel scale and shift
    /// (from the running statistics) are folded into the conv's weights and bias.
    BatchNorm,
}

/// One layer as the engine runs it, on chunks of `CHUNK` samples: `forward_chunk` reads `x`
/// and writes `y`; `backward_chunk` reads `x`, `y` and `dy` and writes `dx` when asked.
/// A layer whose training pass needs statistics of the whole batch (batch norm) is a
/// `batch_barrier`: a stage starts at it, the stage before it gathers its statistics chunk
/// by chunk (`stats_chunk`, then `finish_stats`) and, in the backward pass, writes its input
/// gradient chunk by chunk (`dx_chunk`) once its own backward pass has summed what the
/// batch needs (`backward_chunk`, then `finish_backward`).
pub(crate) trait Op: Send + Sync {
    /// The readable layer: shapes, parameters, buffers.
    fn layer(&self) -> &dyn Layer;
    /// The same, to change.
    fn layer_mut(&mut self) -> &mut dyn Layer;
    /// Whether a training pass needs the whole batch's statistics before this layer runs.
    fn batch_barrier(&self) -> bool {
        false
    }
    /// Whether training passes run this layer as a stage of its own, on chunks of
    /// `WIDE_CHUNK` samples (a linear layer whose weights outgrow the core's L2 cache:
    /// each chunk streams all of them).
    fn wide_chunk(&self) -> bool {
        false
    }
    /// What a fused pass may skip this layer for, if anything.
    fn absorb(&self) -> Option<Absorb> {
        None
    }
    /// Asks the layer to apply `what` to its own output while `on` (and its backward to
    /// its output gradient), so the engine can skip the layer after it. Returns whether
    /// it can.
    fn fuse(&mut self, what: Absorb, on: bool) -> bool {
        let _ = (what, on);
        false
    }
    /// Whether the layer is a per-channel affine map in evaluation (a batch norm), which
    /// `eval_affine` gives.
    fn is_affine(&self) -> bool {
        false
    }
    /// Whether the layer leaves its input as it is in evaluation (dropout), so a fused
    /// evaluation pass may skip it as it skips a flatten.
    fn is_identity_in_eval(&self) -> bool {
        false
    }
    /// In evaluation, the per-channel `(scale, shift)` this layer applies (a batch norm),
    /// computed now from its running statistics; `None` for other layers.
    fn eval_affine(&mut self) -> Option<(Vec<f32>, Vec<f32>)> {
        None
    }
    /// Folds `affine`, the `(scale, shift)` of the batch norm after it, into the weights
    /// of the next evaluation passes (`None`: stop). Returns whether the layer can.
    fn fold_affine(&mut self, affine: Option<(Vec<f32>, Vec<f32>)>) -> bool {
        let _ = affine;
        false
    }
    /// Whether this layer's training backward pass (`backward_chunk`, `finish_backward`)
    /// reads the data of its input `x` and of its output `y`, as now set up (fusions
    /// included). A training forward pass keeps a tensor that neither its writer's nor its
    /// reader's backward reads in a per-thread buffer only (`pipeline.rs`).
    fn backward_reads(&self) -> (bool, bool) {
        (true, true)
    }
    /// Whether this layer's `finish_backward` reads the batch's output gradient `dy` (a
    /// linear layer's weight gradient, one product over the batch). A training backward
    /// pass keeps a gradient that is written and read inside one stage, by a layer that is
    /// not a barrier and does not read it here, in a per-thread buffer only (`pipeline.rs`).
    fn finish_reads_dy(&self) -> bool {
        false
    }
    /// A fast path worth naming that this layer takes, if any.
    fn kernel_path(&self) -> Option<String> {
        None
    }
    /// Called once before a batch's chunks run forward, with the parameters as they are.
    fn prepare(&mut self, mode: Mode) {
        let _ = mode;
    }
    /// Forward pass of chunk `c`: `x` and `y` hold its samples only.
    fn forward_chunk(&self, c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, mode: Mode);
    /// Backward pass of one chunk: writes `dx` (when wanted) and the chunk's share of the
    /// parameter gradients into `s.grad`.
    fn backward_chunk(
        &self,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    );
    /// After every chunk's backward pass: the parameter gradients of the whole batch,
    /// from the first `chunks` scratches' parts or, where one product over the batch is
    /// faster (a linear layer's weight gradient), from `x` and `dy` directly.
    fn finish_backward(&mut self, x: &Tensor, dy: &Tensor, scratch: &[Scratch], chunks: usize) {
        let _ = (x, dy, scratch, chunks);
    }
    /// A barrier's share of the batch statistics from one chunk of its input.
    fn stats_chunk(&self, x: &[f32], s: &mut Scratch) {
        let _ = (x, s);
    }
    /// A barrier's batch statistics from the first `chunks` scratches' shares.
    fn finish_stats(&mut self, scratch: &[Scratch], chunks: usize) {
        let _ = (scratch, chunks);
    }
    /// A barrier's input gradient for one chunk, after its `finish_backward`, from its input
    /// `x`, output gradient `dy` and the chunk's scratch of its own stage (the same chunk:
    /// a barrier's stage and the one below it cut the batch alike, as no `wide_chunk`
    /// layer's output feeds a barrier that keeps anything in its scratch).
    fn dx_chunk(&self, x: &[f32], dy: &[f32], dx: &mut [f32], s: &Scratch) {
        let _ = (x, dy, dx, s);
    }
}

/// The op that runs a layer of a resolved spec: the readable layer in its adapter.
pub(crate) fn build_op(l: &ResolvedLayer) -> Box<dyn Op> {
    let name = l.name.as_str();
    match l.op {
        LayerOp::Conv2d { shape, .. } => Box::new(ConvOp::new(Conv2d::new(name, shape))),
        LayerOp::Pool2d { kind, shape } => Box::new(PoolOp {
            layer: Pool2d::new(name, kind, shape),
        }),
        LayerOp::Activation(kind) => Box::new(ActivationOp {
            layer: Activation::new(name, kind, &l.input),
        }),
        LayerOp::Flatten => Box::new(FlattenOp {
            layer: Flatten::new(name, &l.input),
        }),
        LayerOp::Linear {
            in_features,
            out_features,
            ..
        } => Box::new(LinearOp::new(Linear::new(name, in_features, out_features))),
        LayerOp::Dropout { p } => Box::new(DropoutOp {
            layer: Dropout::new(name, p, &l.input),
        }),
        LayerOp::BatchNorm { eps, momentum } => Box::new(BatchNormOp {
            layer: BatchNorm::new(name, &l.input, eps, momentum),
            fast: FastBatchNorm::default(),
        }),
    }
}

/// A convolution: `kernels/conv.rs`, which can also apply the ReLU and the 2x2 max pool
/// after it, and in evaluation the batch norm after it (folded into the weights).
struct ConvOp {
    layer: Conv2d,
    fast: FastConv,
    /// The folded batch norm's (scale, shift), while evaluation passes apply it.
    affine: Option<(Vec<f32>, Vec<f32>)>,
    /// The weights and bias with it folded in (`prepare`): `w[o] * scale[o]` and
    /// `b[o] * scale[o] + shift[o]`.
    folded: (Vec<f32>, Vec<f32>),
}

impl ConvOp {
    /// Whether passes in `mode` use the weights with the batch norm folded in.
    fn folds(&self, mode: Mode) -> bool {
        mode == Mode::Eval && self.affine.is_some()
    }

    /// The weights and bias passes in `mode` use.
    fn params(&self, mode: Mode) -> (&[f32], &[f32]) {
        if self.folds(mode) {
            (&self.folded.0, &self.folded.1)
        } else {
            (&self.layer.weight.value, &self.layer.bias.value)
        }
    }
}

impl ConvOp {
    fn new(layer: Conv2d) -> ConvOp {
        let fast = FastConv::new(layer.shape);
        ConvOp {
            layer,
            fast,
            affine: None,
            folded: (Vec::new(), Vec::new()),
        }
    }
}

impl Op for ConvOp {
    fn layer(&self) -> &dyn Layer {
        &self.layer
    }
    fn layer_mut(&mut self) -> &mut dyn Layer {
        &mut self.layer
    }
    fn backward_reads(&self) -> (bool, bool) {
        self.fast.backward_reads()
    }
    fn fuse(&mut self, what: Absorb, on: bool) -> bool {
        match what {
            Absorb::Relu => self.fast.set_relu(on),
            Absorb::MaxPool2x2 => self.fast.set_max_pool(on),
            // Folded by `fold_affine`.
            Absorb::BatchNorm => {}
            Absorb::Identity => return false,
        }
        true
    }
    fn fold_affine(&mut self, affine: Option<(Vec<f32>, Vec<f32>)>) -> bool {
        self.affine = affine;
        true
    }
    fn kernel_path(&self) -> Option<String> {
        let name = |t: Tile| match t {
            Tile::F2 => "Winograd F(2x2, 3x3)",
            Tile::F4 => "Winograd F(4x4, 3x3)",
        };
        let winograd = match (self.fast.forward_tile(), self.fast.dx_tile()) {
            (Some(f), Some(d)) if f == d => {
                Some(format!("forward and input gradient as {}", name(f)))
            }
            (Some(f), Some(d)) => Some(format!(
                "forward as {}, input gradient as {}",
                name(f),
                name(d)
            )),
            (Some(f), None) => Some(format!("forward as {}", name(f))),
            _ => None,
        };
        let dw = match (self.fast.weight_grad(), self.fast.dw_tile()) {
            (WeightGrad::LaneDots, _) => {
                Some("weight gradient with the channels in the lanes".to_string())
            }
            (WeightGrad::Winograd, tile) => Some(format!(
                "weight gradient as {} with the channels in the lanes",
                name(tile.unwrap_or(Tile::F2))
            )),
            (WeightGrad::ShiftedDots, _) => None,
        };
        let named: Vec<String> = winograd.into_iter().chain(dw).collect();
        (!named.is_empty()).then(|| named.join(", "))
    }
    fn prepare(&mut self, mode: Mode) {
        if let (Mode::Eval, Some((scale, shift))) = (mode, &self.affine) {
            let (w, b) = (&self.layer.weight.value, &self.layer.bias.value);
            let per_out = w.len() / b.len().max(1);
            let (fw, fb) = &mut self.folded;
            fw.clear();
            fb.clear();
            for (o, w) in w.chunks(per_out).enumerate() {
                fw.extend(w.iter().map(|&v| v * scale[o]));
                fb.push(b[o] * scale[o] + shift[o]);
            }
        }
        let w = if self.folds(mode) {
            &self.folded.0
        } else {
            &self.layer.weight.value
        };
        match mode {
            Mode::Train => self.fast.prepare(w),
            Mode::Eval => self.fast.prepare_forward(w),
        }
    }
    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, mode: Mode) {
        self.fast.forward_chunk(self.params(mode), x, y, s, mode);
    }
    fn backward_chunk(
        &self,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        let params = (&self.layer.weight.value[..], &self.layer.bias.value[..]);
        self.fast.backward_chunk(params, x, y, dy, dx, s);
    }
    fn finish_backward(&mut self, _x: &Tensor, _dy: &Tensor, scratch: &[Scratch], chunks: usize) {
        let l = &mut self.layer;
        let mut out = [&mut l.weight.grad[..], &mut l.bias.grad[..]];
        sum_chunk_grads(scratch, chunks, &mut out);
    }
}

/// Weights (1 MiB of them) from which a linear layer is a `wide_chunk` stage: cnn-plus's
/// fc1 (3136 x 128) ran its per-chunk products at 31-42 GFLOP/s on 8 rows, its weights
/// coming from L3 for each chunk.
const WIDE_LINEAR_WEIGHTS: usize = 1 << 18;

/// A fully connected layer: `kernels/linear.rs`.
struct LinearOp {
    layer: Linear,
    fast: FastLinear,
}

impl LinearOp {
    fn new(layer: Linear) -> LinearOp {
        let fast = FastLinear::new(layer.in_features, layer.out_features);
        LinearOp { layer, fast }
    }
}

impl Op for LinearOp {
    fn layer(&self) -> &dyn Layer {
        &self.layer
    }
    fn layer_mut(&mut self) -> &mut dyn Layer {
        &mut self.layer
    }
    /// The weight gradient is one product over the batch's inputs (`finish_backward`).
    fn backward_reads(&self) -> (bool, bool) {
        (true, false)
    }
    fn finish_reads_dy(&self) -> bool {
        true
    }
    fn wide_chunk(&self) -> bool {
        self.layer.in_features * self.layer.out_features >= WIDE_LINEAR_WEIGHTS
    }
    fn prepare(&mut self, mode: Mode) {
        match mode {
            Mode::Train => self.fast.prepare(&self.layer.weight.value),
            Mode::Eval => self.fast.prepare_forward(&self.layer.weight.value),
        }
    }
    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], _s: &mut Scratch, _mode: Mode) {
        self.fast.forward_chunk(&self.layer.bias.value, x, y);
    }
    fn backward_chunk(
        &self,
        _x: &[f32],
        _y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        _s: &mut Scratch,
    ) {
        if let Some(dx) = dx {
            self.fast.input_gradient(&self.layer.weight.value, dy, dx);
        }
    }
    fn finish_backward(&mut self, x: &Tensor, dy: &Tensor, _scratch: &[Scratch], _chunks: usize) {
        let l = &mut self.layer;
        let n = x.batch();
        self.fast
            .weight_gradient(n, &x.data, &dy.data, &mut l.weight.grad, &mut l.bias.grad);
    }
}

/// Max or average pooling: `kernels/pool.rs`.
struct PoolOp {
    layer: Pool2d,
}

impl Op for PoolOp {
    fn layer(&self) -> &dyn Layer {
        &self.layer
    }
    fn layer_mut(&mut self) -> &mut dyn Layer {
        &mut self.layer
    }
    /// Max pooling keeps its winners in the chunk's scratch; average pooling needs nothing.
    fn backward_reads(&self) -> (bool, bool) {
        (false, false)
    }
    fn absorb(&self) -> Option<Absorb> {
        (self.layer.kind == PoolKind::Max && self.layer.shape.is_2x2())
            .then_some(Absorb::MaxPool2x2)
    }
    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, _mode: Mode) {
        pool::forward_chunk(self.layer.kind, &self.layer.shape, x, y, s);
    }
    fn backward_chunk(
        &self,
        _x: &[f32],
        _y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        if let Some(dx) = dx {
            pool::backward_chunk(self.layer.kind, &self.layer.shape, dy, dx, s);
        }
    }
}

/// ReLU, sigmoid or tanh, value by value as `nn::Activation` computes them.
struct ActivationOp {
    layer: Activation,
}

impl Op for ActivationOp {
    fn layer(&self) -> &dyn Layer {
        &self.layer
    }
    fn layer_mut(&mut self) -> &mut dyn Layer {
        &mut self.layer
    }
    /// The gradient is a function of the output.
    fn backward_reads(&self) -> (bool, bool) {
        (false, true)
    }
    fn absorb(&self) -> Option<Absorb> {
        (self.layer.kind == ActivationKind::Relu).then_some(Absorb::Relu)
    }
    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], _s: &mut Scratch, _mode: Mode) {
        let f = self.layer.kind;
        for (y, &x) in y.iter_mut().zip(x) {
            *y = f.apply(x);
        }
    }
    fn backward_chunk(
        &self,
        _x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        _s: &mut Scratch,
    ) {
        let Some(dx) = dx else { return };
        let f = self.layer.kind;
        for (dx, (&y, &dy)) in dx.iter_mut().zip(y.iter().zip(dy)) {
            *dx = f.gradient(y, dy);
        }
    }
}

/// Flatten: a copy when it runs, skipped in fused passes.
struct FlattenOp {
    layer: Flatten,
}

impl Op for FlattenOp {
    fn layer(&self) -> &dyn Layer {
        &self.layer
    }
    fn layer_mut(&mut self) -> &mut dyn Layer {
        &mut self.layer
    }
    fn backward_reads(&self) -> (bool, bool) {
        (false, false)
    }
    fn absorb(&self) -> Option<Absorb> {
        Some(Absorb::Identity)
    }
    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], _s: &mut Scratch, _mode: Mode) {
        y.copy_from_slice(x);
    }
    fn backward_chunk(
        &self,
        _x: &[f32],
        _y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        _s: &mut Scratch,
    ) {
        if let Some(dx) = dx {
            dx.copy_from_slice(dy);
        }
    }
}

/// Dropout: chunk `c`'s mask is group `c`'s of `nn::Dropout` (a chunk is one group).
struct DropoutOp {
    layer: Dropout,
}

impl Op for DropoutOp {
    fn layer(&self) -> &dyn Layer {
        &self.layer
    }
    fn layer_mut(&mut self) -> &mut dyn Layer {
        &mut self.layer
    }
    /// The mask is kept in the chunk's scratch.
    fn backward_reads(&self) -> (bool, bool) {
        (false, false)
    }
    /// cnn-plus's drop1 copied 1.6 MB a batch of 128 in evaluation passes.
    fn is_identity_in_eval(&self) -> bool {
        true
    }
    fn forward_chunk(&self, c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, mode: Mode) {
        // `saved`: the scale each value was multiplied by (0 or 1/(1-p)).
        let p = self.layer.p;
        s.ready = mode == Mode::Train && p > 0.0;
        if !s.ready {
            y.copy_from_slice(x);
            return;
        }
        s.saved.resize(x.len(), 0.0);
        Dropout::group_mask(p, self.layer.seed(), c, &mut s.saved);
        for ((y, &x), &m) in y.iter_mut().zip(x).zip(&s.saved) {
            *y = x * m;
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
        if !s.ready {
            dx.copy_from_slice(dy);
            return;
        }
        for ((d, &g), &m) in dx.iter_mut().zip(dy).zip(&s.saved) {
            *d = g * m;
        }
    }
}

/// Batch norm: `kernels/batchnorm.rs`, chunk by chunk with the batch's barrier between
/// its statistics and their use; it can apply the ReLU after it.
struct BatchNormOp {
    layer: BatchNorm,
    fast: FastBatchNorm,
}

impl Op for BatchNormOp {
    fn layer(&self) -> &dyn Layer {
        &self.layer
    }
    fn layer_mut(&mut self) -> &mut dyn Layer {
        &mut self.layer
    }
    /// x-hat and the fused ReLU's mask are recomputed from the input.
    fn backward_reads(&self) -> (bool, bool) {
        (true, false)
    }
    fn batch_barrier(&self) -> bool {
        true
    }
    /// The ReLU after it, and a 2x2 max pool after that (or right after it) over 2-d maps.
    fn fuse(&mut self, what: Absorb, on: bool) -> bool {
        match (what, self.layer.input_shape()) {
            (Absorb::Relu, _) => self.fast.relu = on,
            (Absorb::MaxPool2x2, &[_, h, w]) => self.fast.pool = on.then_some((h, w)),
            _ => return false,
        }
        true
    }
    fn prepare(&mut self, mode: Mode) {
        // Training passes get their statistics from `finish_stats` before the stage runs.
        if mode == Mode::Eval {
            self.fast.use_running(&mut self.layer);
        }
    }
    fn is_affine(&self) -> bool {
        true
    }
    fn eval_affine(&mut self) -> Option<(Vec<f32>, Vec<f32>)> {
        self.fast.use_running(&mut self.layer);
        Some(self.fast.scale_shift())
    }
    /// A fused max pool's winners go to the chunk's scratch in training passes.
    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, mode: Mode) {
        let arg = (mode == Mode::Train).then_some(&mut s.indices);
        self.fast.apply_chunk(&self.layer, x, y, arg);
    }
    fn backward_chunk(
        &self,
        x: &[f32],
        _y: &[f32],
        dy: &[f32],
        _dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        // The fused ReLU's mask comes from x (`FastBatchNorm::grad_chunk`), not from y.
        self.fast
            .grad_chunk(&self.layer, x, dy, &s.indices, &mut s.sums);
    }
    fn finish_backward(&mut self, x: &Tensor, _dy: &Tensor, scratch: &[Scratch], chunks: usize) {
        let m = x.batch() * self.layer.plane;
        let parts = scratch[..chunks].iter().map(|s| &s.sums[..]);
        self.fast.finish_grads(&mut self.layer, parts, m);
    }
    fn stats_chunk(&self, x: &[f32], s: &mut Scratch) {
        FastBatchNorm::stats_chunk(&self.layer, x, &mut s.sums);
    }
    fn finish_stats(&mut self, scratch: &[Scratch], chunks: usize) {
        let parts = scratch[..chunks].iter().map(|s| &s.sums[..]);
        self.fast.finish_stats(&mut self.layer, parts);
    }
    fn dx_chunk(&self, x: &[f32], dy: &[f32], dx: &mut [f32], s: &Scratch) {
        self.fast.dx_chunk(&self.layer, x, dy, &s.indices, dx);
    }
}

/// Chunks must be whole groups of dropout masks for the fast and readable passes to draw
/// the same masks.
const _: () = assert!(super::pipeline::CHUNK == GROUP);
