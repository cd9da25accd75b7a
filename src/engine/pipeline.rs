//! How a batch runs fast: in chunks, in stages, with fusions, and timed when asked.
//!
//! The batch is cut into fixed chunks of `CHUNK` samples (at most `EVAL_CHUNK` in evaluation
//! passes, which keep nothing for a backward pass), and each chunk goes through a whole run
//! of layers (a stage) on one thread, the chunks in parallel. What one layer writes, the
//! next reads while it is still in that core's cache, and threads meet once per stage
//! instead of once per layer. A layer whose training pass needs statistics of the whole
//! batch (batch norm, a `batch_barrier`) starts a stage: the stage before it gathers the
//! statistics from each chunk it writes (still in cache), they are combined once every
//! chunk is done, and the next stage applies them as it reads its input. Backward, the
//! mirror image: the barrier's stage sums what its input gradient needs, and the stage
//! below writes that gradient chunk by chunk before its own layers. Evaluation passes use
//! the running statistics and need no barrier: the whole network may be one stage. In a
//! network of several stages, a linear layer too large for the core's cache (a
//! `wide_chunk` layer: cnn-plus's fc1) is a stage of its own, on chunks of `WIDE_CHUNK`
//! samples, so its weights are streamed once per 64 samples instead of once per 8. Because
//! chunks are fixed and their parts are added in chunk order, results do not depend on the
//! number of threads.
//!
//! Fusion: inside a stage, a ReLU after a conv or a batch norm, a 2x2 max pool after either
//! (and its ReLU), and a flatten are skipped: the conv applies the ReLU and the pool to its
//! own output rows (`kernels/conv.rs`), the batch norm the ReLU and the pool to its output
//! plane by plane (`kernels/batchnorm.rs`; its backward passes then read the pooled
//! gradient, so the full-size one is never written: cnn-plus's bn2 and bn3), and the layer
//! after a flatten reads the flatten's input, whose data is already in order. In evaluation
//! passes a batch norm right after a conv is skipped too: its scale and shift (running
//! statistics) are folded into the conv's weights and bias, and the conv then applies the
//! ReLU and the pool after the batch norm; so is a dropout, which is then the identity.
//! The layer before a run of skipped layers writes straight into the last one's output
//! tensor and reads its gradient.
//!
//! Transient outputs: in a training pass, an output written and read inside one stage, by
//! layers whose backward passes read neither it (`Op::backward_reads`: cnn-plus's batch
//! norms with their ReLUs feeding a conv or a pool, its pools feeding a conv or a dropout),
//! stays in a per-thread buffer; the batch's tensor for it is not written. bn2's and bn3's
//! forward passes 2.6-3.7 -> 2.1-2.3 and 1.3-1.5 -> 1.0-1.2 ms a batch, pool1's 0.8-1.0 ->
//! 0.6-0.8 (`convnet bench`, three alternating pairs). The backward pass does the same
//! with a gradient written and read inside one stage, by a reader that is neither a batch
//! norm (the stage below reads its output gradient again) nor a layer whose
//! `finish_backward` reads it (`Op::finish_reads_dy`: a linear layer): cnn-plus's batch
//! norms' input gradients, which its convs read, and the convs' and dropout's own where a
//! pool reads them.

use super::ops::{Absorb, Op};
use crate::kernels::Scratch;
use crate::nn::loss::{BatchStats, Loss};
use crate::nn::Mode;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Samples per chunk in training passes. Fixed, so the order in which partial gradients
/// are summed, and hence every bit of the result, does not depend on the thread count.
pub const CHUNK: usize = 8;

/// Samples per chunk in evaluation passes, at most. Nothing is kept between passes then, so
/// the chunk can be larger: 24 rows make whole 6-column blocks of the GEMM crate's AVX-512
/// kernel in the linear layers (8 rows leave a 2-column edge), and every sample's result is
/// computed the same way whatever the chunk (`eval_chunk` picks it per pass).
pub const EVAL_CHUNK: usize = 24;

/// The chunk an evaluation pass of `n` samples cuts: at most `EVAL_CHUNK`, and as even a
/// share for each half of the chunks (what the pool gives each of two threads) as whole
/// chunks allow. 128 samples in chunks of 24 are 5 full chunks and one of 8; the pool
/// halves them, so one thread ran 72 samples and the other 56, and evaluation at batch 128
/// ran 12-15% slower than at 1000 (cnn-plus on 2 threads). Chunks of 22 give 66 and 62:
/// 36.5-37.3k -> 40.1-41.1k images/s (`convnet bench --eval-batch-size 128`, alternating
/// rounds, AMD EPYC Zen 5); 1000 samples still run in chunks of 24. The chunk depends on
/// `n` alone, never on the thread count, so evaluation gives the same bits on any number
/// of threads. A chunk of a single sample sums in another order (its logits differ in the
/// last bits from the same sample's in a larger chunk), so none is cut unless the batch is
/// one sample.
pub fn eval_chunk(n: usize) -> usize {
    let half = n.div_ceil(2);
    let size = half.div_ceil(half.div_ceil(EVAL_CHUNK).max(1)).max(1);
    let lone = |s: usize| n > 1 && (s == 1 || n % s == 1);
    if !lone(size) {
        return size;
    }
    // A smaller chunk first (it keeps the bound), else a larger one.
    (2..size)
        .rev()
        .chain(size + 1..=n)
        .find(|&s| !lone(s))
        .unwrap_or(n)
}

/// Samples per chunk of a training stage that is one `wide_chunk` layer: enough rows for
/// the GEMM to reuse each weight it streams from memory (cnn-plus's fc1: 53 GFLOP/s on 8
/// rows, 69 on 32, 82 on 64 forward; 41 and 76 for 8 and 64 rows of its input gradient;
/// `cargo bench --bench gemm`, one thread).
pub const WIDE_CHUNK: usize = 64;

/// Per-layer times are collected for at most this many layers of a stage (the rest are
/// added to the last slot).
const MAX_TIMED: usize = 64;

/// Per-layer (forward, backward) time.
pub type Times = Vec<(Duration, Duration)>;

/// The stages of a network, its fusions and each layer's per-chunk working memory.
pub(crate) struct Pipeline {
    /// Runs of layers `[start, end)` executed together, chunk by chunk, in training passes:
    /// a new one at each batch barrier.
    stages: Vec<(usize, usize)>,
    /// The same for evaluation passes: every layer in one run.
    eval_stages: Vec<(usize, usize)>,
    /// What a fused training pass skips layer `i` for, if it does, and which layer applies
    /// it instead.
    absorbed: Vec<Option<Absorb>>,
    hosts: Vec<usize>,
    /// The same for evaluation passes, where a batch norm after a conv is folded into it
    /// as well (and the conv then applies the ReLU and pool after the batch norm).
    eval_absorbed: Vec<Option<Absorb>>,
    eval_hosts: Vec<usize>,
    /// The fusions of the last forward pass: `Some(mode)` when they were in effect.
    fused_now: Option<Mode>,
    /// Per layer, one `Scratch` per chunk; never shrinks.
    scratch: Vec<Vec<Scratch>>,
    /// Per-layer time, accumulated while `Some`. Layers that run chunk by chunk on several
    /// threads at once count their summed thread time divided by the threads in use.
    pub timing: Option<Times>,
}

/// Splits the layers into runs `[start, end)`, a new one at each batch barrier when
/// `barriers`; then, if that made more than one, each `wide_chunk` layer becomes a run of
/// its own (a network that is one run keeps it: each chunk then goes forward and backward
/// on one thread, which pays more).
fn stages(ops: &[Box<dyn Op>], barriers: bool) -> Vec<(usize, usize)> {
    let cut = |at: &dyn Fn(usize) -> bool| {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for i in 0..ops.len() {
            match out.last_mut() {
                Some((_, end)) if !at(i) => *end = i + 1,
                _ => out.push((i, i + 1)),
            }
        }
        out
    };
    let at_barrier = |i: usize| barriers && ops[i].batch_barrier();
    let out = cut(&at_barrier);
    if out.len() == 1 {
        return out;
    }
    cut(&|i| at_barrier(i) || ops[i].wide_chunk() || (i > 0 && ops[i - 1].wide_chunk()))
}

/// The fusions of passes in `mode` over `stages`: each layer a fused pass skips, with
/// what for and the layer that applies it instead (its host). Only inside a stage and not
/// its last layer: each flatten; each ReLU the layer before it can apply; each 2x2 max pool
/// likewise (the conv or batch norm before it and its ReLU); in evaluation, each dropout
/// (like a flatten: the next layer reads its input) and each batch norm right after a conv
/// (folded into it; the conv then also applies the ReLU and pool after it).
fn fusions(
    ops: &mut [Box<dyn Op>],
    stages: &[(usize, usize)],
    mode: Mode,
) -> (Vec<Option<Absorb>>, Vec<usize>) {
    let mut absorbed: Vec<Option<Absorb>> = vec![None; ops.len()];
    let mut hosts: Vec<usize> = (0..ops.len()).collect();
    for &(start, end) in stages {
        for i in start + 1..end.saturating_sub(1) {
            let what = match ops[i].absorb() {
                None if mode == Mode::Eval && ops[i].is_affine() => Absorb::BatchNorm,
                None if mode == Mode::Eval && ops[i].is_identity_in_eval() => Absorb::Identity,
                None => continue,
                Some(what) => what,
            };
            let host = match what {
                Absorb::Identity => {
                    absorbed[i] = Some(what);
                    continue;
                }
                // Right after its conv, nothing between.
                Absorb::BatchNorm if absorbed[i - 1].is_some() => continue,
                Absorb::BatchNorm => i - 1,
                // The layer before, or the conv a batch norm was folded into.
                Absorb::Relu if absorbed[i - 1] == Some(Absorb::BatchNorm) => hosts[i - 1],
                Absorb::Relu => i - 1,
                Absorb::MaxPool2x2 if absorbed[i - 1].is_some() => hosts[i - 1],
                Absorb::MaxPool2x2 => i - 1,
            };
            let can = match what {
                Absorb::BatchNorm => ops[host].fold_affine(None),
                _ => ops[host].fuse(what, false),
            };
            if can {
                absorbed[i] = Some(what);
                hosts[i] = host;
            }
        }
    }
    (absorbed, hosts)
}

/// Asks each host in a table of fusions to apply (`on`) or stop applying what it absorbs:
/// a ReLU or pool, or a batch norm's scale and shift, taken from the batch norm now.
fn switch_fusions(ops: &mut [Box<dyn Op>], absorbed: &[Option<Absorb>], hosts: &[usize], on: bool) {
    for (i, what) in absorbed.iter().enumerate() {
        match what {
            Some(what @ (Absorb::Relu | Absorb::MaxPool2x2)) => {
                ops[hosts[i]].fuse(*what, on);
            }
            Some(Absorb::BatchNorm) => {
                let affine = if on { ops[i].eval_affine() } else { None };
                ops[hosts[i]].fold_affine(affine);
            }
            Some(Absorb::Identity) | None => {}
        }
    }
}

impl Pipeline {
    /// Finds the stages and which layers fused passes skip: each ReLU the layer before it
    /// can apply, each 2x2 max pool likewise (after the ReLU when there is one), each
    /// flatten; only inside a stage and not its last layer.
    pub fn new(ops: &mut [Box<dyn Op>]) -> Pipeline {
        // Fusions are found inside training stages, which lie inside evaluation ones.
        let stages = stages(ops, true);
        let eval_stages = self::stages(ops, false);
        let (absorbed, hosts) = fusions(ops, &stages, Mode::Train);
        let (eval_absorbed, eval_hosts) = fusions(ops, &eval_stages, Mode::Eval);
        Pipeline {
            eval_stages,
            stages,
            scratch: (0..ops.len()).map(|_| Vec::new()).collect(),
            absorbed,
            hosts,
            eval_absorbed,
            eval_hosts,
            fused_now: None,
            timing: None,
        }
    }

    /// The fusions of passes in `mode`: what each layer is skipped for, and its host.
    fn table(&self, mode: Mode) -> (&[Option<Absorb>], &[usize]) {
        match mode {
            Mode::Train => (&self.absorbed, &self.hosts),
            Mode::Eval => (&self.eval_absorbed, &self.eval_hosts),
        }
    }

    /// Turns every fusion off, then those of `mode` on when `fuse`, for the next passes.
    fn set_fusion(&mut self, ops: &mut [Box<dyn Op>], fuse: bool, mode: Mode) {
        for m in [Mode::Train, Mode::Eval] {
            let (absorbed, hosts) = self.table(m);
            switch_fusions(ops, absorbed, hosts, false);
        }
        if fuse {
            let (absorbed, hosts) = self.table(mode);
            switch_fusions(ops, absorbed, hosts, true);
        }
        self.fused_now = fuse.then_some(mode);
    }

    /// What `f` sees of `ops` with the fusions of training passes on (a conv's Winograd
    /// tile depends on whether it pools), the fusions then put back as they were.
    pub fn as_in_training<T>(
        &mut self,
        ops: &mut [Box<dyn Op>],
        f: impl FnOnce(&[Box<dyn Op>]) -> T,
    ) -> T {
        let before = self.fused_now;
        self.set_fusion(ops, true, Mode::Train);
        let out = f(ops);
        match before {
            Some(mode) => self.set_fusion(ops, true, mode),
            None => self.set_fusion(ops, false, Mode::Train),
        }
        out
    }

    /// The layer that applied layer `i` itself in the last pass (a fused ReLU or max pool;
    /// a skipped flatten gives the layer before it), or `None` if layer `i` ran.
    pub fn applied_by(&self, i: usize) -> Option<usize> {
        let (absorbed, _) = self.table(self.fused_now?);
        absorbed[i]?;
        (0..i).rev().find(|&j| absorbed[j].is_none())
    }

    /// The forward pass over `acts[0]`, every layer's output into `acts[i + 1]` (only the
    /// last of a run of skipped layers' when `fuse`).
    pub fn forward(
        &mut self,
        ops: &mut [Box<dyn Op>],
        acts: &mut [Tensor],
        mode: Mode,
        fuse: bool,
    ) {
        let n = acts[0].batch();
        self.set_fusion(ops, fuse, mode);
        prepare_layers(ops, mode);
        let train = mode == Mode::Train;
        if train && ops[0].batch_barrier() {
            self.input_stats(ops, acts, n);
        }
        let count = if train {
            self.stages.len()
        } else {
            self.eval_stages.len()
        };
        for k in 0..count {
            let (start, end) = if train {
                self.stages[k]
            } else {
                self.eval_stages[k]
            };
            self.forward_stage(ops, acts, start, end, n, mode);
        }
    }

    /// A barrier that is the network's first layer: its statistics from the input, chunk
    /// by chunk, as a stage before it would gather them.
    fn input_stats(&mut self, ops: &mut [Box<dyn Op>], acts: &[Tensor], n: usize) {
        let begin = Instant::now();
        let chunks = n.div_ceil(CHUNK);
        grow_scratch(&mut self.scratch[..1], chunks);
        let per = CHUNK * acts[0].sample_len();
        let op = &*ops[0];
        acts[0]
            .data
            .par_chunks(per)
            .zip(self.scratch[0].par_iter_mut())
            .for_each(|(x, s)| op.stats_chunk(x, s));
        ops[0].finish_stats(&self.scratch[0], chunks);
        if let Some(t) = self.timing.as_mut() {
            t[0].0 += begin.elapsed();
        }
    }

    /// Samples per chunk of training stage `start..end`: `WIDE_CHUNK` for a `wide_chunk`
    /// layer that `stages` made a stage of its own, else `CHUNK`.
    fn train_chunk(&self, ops: &[Box<dyn Op>], start: usize, end: usize) -> usize {
        if self.stages.len() > 1 && end == start + 1 && ops[start].wide_chunk() {
            WIDE_CHUNK
        } else {
            CHUNK
        }
    }

    /// Whether a training stage ending before layer `end` is followed by a barrier, whose
    /// statistics it gathers and whose input gradient it writes.
    fn tail(ops: &[Box<dyn Op>], end: usize) -> bool {
        end < ops.len() && ops[end].batch_barrier()
    }

    /// Layers `start..end`: each chunk of the batch goes through all of them on one thread,
    /// so what one layer writes the next reads from the same core's cache; in training, the
    /// barrier after the stage, if any, gathers its statistics from each chunk's output.
    /// Evaluation passes keep nothing per chunk, so they may cut larger chunks.
    fn forward_stage(
        &mut self,
        ops: &mut [Box<dyn Op>],
        acts: &mut [Tensor],
        start: usize,
        end: usize,
        n: usize,
        mode: Mode,
    ) {
        let size = if mode == Mode::Train {
            self.train_chunk(ops, start, end)
        } else {
            eval_chunk(n)
        };
        let chunks = n.div_ceil(size);
        let tail = mode == Mode::Train && Self::tail(ops, end);
        let last = if tail { end + 1 } else { end };
        // A fused evaluation pass writes only the slots its unskipped layers write into; the
        // others are left empty rather than zero-filled at the batch's size (a one-shot
        // `convnet eval` of cnn-plus spent a quarter of its time filling 100 MB tensors
        // that no layer wrote).
        let written = match (mode, self.fused_now) {
            (Mode::Eval, Some(_)) => Some(
                Skips {
                    absorbed: &self.eval_absorbed[start..],
                    fused: true,
                }
                .written(end - start),
            ),
            _ => None,
        };
        let slots = &mut acts[start..=end];
        prepare_outputs(&mut ops[start..end], slots, written.as_deref(), n);
        grow_scratch(&mut self.scratch[start..last], chunks);
        let views = chunk_views(
            &mut acts[start..=end],
            None,
            &mut self.scratch[start..last],
            (chunks, size),
            false,
        );
        let run = Run::new(
            &ops[start..last],
            end - start,
            match mode {
                Mode::Train => &self.absorbed[start..],
                Mode::Eval => &self.eval_absorbed[start..],
            },
            self.fused_now.is_some(),
            self.timing.is_some(),
        );
        let run = match mode {
            Mode::Train => run.training(),
            Mode::Eval => run,
        };
        let times = run.new_times();
        views.into_par_iter().enumerate().for_each(|(c, mut v)| {
            let mut t = [(Duration::ZERO, Duration::ZERO); MAX_TIMED];
            run.forward_with_spare(c, &mut v, mode, &mut t);
            add_times(&times, &t);
        });
        if tail {
            let begin = Instant::now();
            ops[end].finish_stats(&self.scratch[end], chunks);
            if let Some(t) = self.timing.as_mut() {
                t[end].0 += begin.elapsed();
            }
        }
        self.record_times(start, times, chunks);
    }

    /// The backward pass from `grads[last]` (dLoss/dlogits), every input gradient into
    /// `grads[i]` except the network input's, every parameter gradient in place.
    pub fn backward(&mut self, ops: &mut [Box<dyn Op>], acts: &mut [Tensor], grads: &mut [Tensor]) {
        let batch = acts[0].batch();
        for k in (0..self.stages.len()).rev() {
            let (start, end) = self.stages[k];
            self.backward_stage(ops, acts, grads, start, end, batch);
        }
    }

    /// Where a barrier at `end` reads its output gradient: past the layers it applies.
    fn tail_out(&self, end: usize) -> usize {
        let skips = Skips {
            absorbed: &self.absorbed[end..],
            fused: self.fused_now.is_some(),
        };
        end + skips.out(0)
    }

    /// The backward pass of layers `start..end`, chunk by chunk as in `forward_stage` (the
    /// barrier after the stage, if any, first writes the chunk's output gradient), then
    /// each layer's parameter gradients over the whole batch.
    fn backward_stage(
        &mut self,
        ops: &mut [Box<dyn Op>],
        acts: &mut [Tensor],
        grads: &mut [Tensor],
        start: usize,
        end: usize,
        n: usize,
    ) {
        let size = self.train_chunk(ops, start, end);
        let chunks = n.div_ceil(size);
        let tail = Self::tail(ops, end);
        let (last, reach) = if tail {
            (end + 1, self.tail_out(end))
        } else {
            (end, end)
        };
        prepare_input_grads(&ops[start..end], &mut grads[start..end], start, n);
        grow_scratch(&mut self.scratch[start..last], chunks);
        let views = chunk_views(
            &mut acts[start..=reach],
            Some(&mut grads[start..=reach]),
            &mut self.scratch[start..last],
            (chunks, size),
            start == 0,
        );
        let run = Run::new(
            &ops[start..last],
            end - start,
            &self.absorbed[start..],
            self.fused_now.is_some(),
            self.timing.is_some(),
        )
        .training();
        let times = run.new_times();
        views.into_par_iter().for_each(|mut v| {
            let mut t = [(Duration::ZERO, Duration::ZERO); MAX_TIMED];
            run.backward_with_spare(&mut v, &mut t);
            add_times(&times, &t);
        });
        self.finish_stage(ops, acts, grads, start, end, chunks);
        self.record_times(start, times, chunks);
    }

    /// Each layer's `finish_backward` over the whole batch, its time added to the layer's
    /// backward time.
    fn finish_stage(
        &mut self,
        ops: &mut [Box<dyn Op>],
        acts: &[Tensor],
        grads: &[Tensor],
        start: usize,
        end: usize,
        chunks: usize,
    ) {
        let skips = Skips {
            absorbed: &self.absorbed[start..],
            fused: self.fused_now.is_some(),
        };
        for (j, op) in ops[start..end].iter_mut().enumerate() {
            if skips.skip(j) {
                continue;
            }
            let begin = Instant::now();
            op.finish_backward(
                &acts[start + j],
                &grads[start + skips.out(j)],
                &self.scratch[start + j],
                chunks,
            );
            if let Some(t) = self.timing.as_mut() {
                t[start + j].1 += begin.elapsed();
            }
        }
    }

    /// One training step's passes: forward, the loss against `labels`, backward, leaving
    /// every parameter's gradient in place; the same result as `forward` then the loss then
    /// `backward`. When the whole network is one stage, each chunk goes forward, through
    /// the loss and backward on one thread without waiting for the others, while its
    /// activations are still in that core's cache.
    pub fn train_step(
        &mut self,
        ops: &mut [Box<dyn Op>],
        acts: &mut [Tensor],
        grads: &mut [Tensor],
        (loss, smoothing): (Loss, f32),
        labels: &[u8],
    ) -> BatchStats {
        let end = ops.len();
        if self.stages.len() != 1 || ops[0].batch_barrier() {
            self.forward(ops, acts, Mode::Train, true);
            let stats = loss.forward_backward(&acts[end], labels, &mut grads[end], smoothing);
            self.backward(ops, acts, grads);
            return stats;
        }
        let n = acts[0].batch();
        assert_eq!(labels.len(), n, "one label per sample");
        let chunks = n.div_ceil(CHUNK);
        self.set_fusion(ops, true, Mode::Train);
        prepare_layers(ops, Mode::Train);
        prepare_outputs(ops, &mut acts[..=end], None, n);
        prepare_input_grads(ops, &mut grads[..end], 0, n);
        let classes = ops[end - 1].layer().output_shape()[0];
        grads[end].resize_batch(n, &[classes]);
        grow_scratch(&mut self.scratch, chunks);
        let views = chunk_views(acts, Some(grads), &mut self.scratch, (chunks, CHUNK), true);
        let run = Run::new(
            ops,
            end,
            &self.absorbed,
            self.fused_now.is_some(),
            self.timing.is_some(),
        )
        .training();
        let times = run.new_times();
        let parts: Vec<BatchStats> = views
            .into_par_iter()
            .enumerate()
            .map(|(c, mut v)| {
                let mut t = [(Duration::ZERO, Duration::ZERO); MAX_TIMED];
                run.forward_with_spare(c, &mut v, Mode::Train, &mut t);
                let labels = &labels[c * CHUNK..(c * CHUNK + CHUNK).min(n)];
                let dz = v.grads[end].as_deref_mut().expect("logit gradients exist");
                let stats = loss.chunk_forward_backward(&v.acts[end][..], labels, dz, smoothing, n);
                run.backward_with_spare(&mut v, &mut t);
                add_times(&times, &t);
                stats
            })
            .collect();
        self.finish_stage(ops, acts, grads, 0, end, chunks);
        self.record_times(0, times, chunks);
        let mut stats = BatchStats::default();
        for p in parts {
            stats.add(p);
        }
        stats
    }

    /// Adds a stage's per-chunk thread times, divided by the threads in use, to the
    /// per-layer timing.
    fn record_times(&mut self, start: usize, times: Option<Mutex<Times>>, chunks: usize) {
        let (Some(t), Some(times)) = (self.timing.as_mut(), times) else {
            return;
        };
        let threads = rayon::current_num_threads().min(chunks).max(1) as u32;
        let times = times.into_inner().expect("timing lock");
        for (j, (f, b)) in times.into_iter().enumerate() {
            t[start + j].0 += f / threads;
            t[start + j].1 += b / threads;
        }
    }
}

/// Lets every layer prepare its forward pass (`Op::prepare`), once a pass, all layers at
/// once in parallel: nothing else runs then, and cnn-plus's conv3 (its Winograd weights,
/// 0.26-0.29 ms) and fc1 (its transposed weights, 0.24) took a training step's 0.75-0.8 ms
/// one after the other on one thread when each stage prepared its own layers.
fn prepare_layers(ops: &mut [Box<dyn Op>], mode: Mode) {
    ops.par_iter_mut().for_each(|op| op.prepare(mode));
}

/// Resizes the outputs of `ops` for `n` samples.
fn prepare_outputs(
    ops: &mut [Box<dyn Op>],
    outputs_from_input: &mut [Tensor],
    written: Option<&[bool]>,
    n: usize,
) {
    let outputs = outputs_from_input[1..].iter_mut().enumerate();
    for (op, (j, y)) in ops.iter_mut().zip(outputs) {
        if written.is_none_or(|w| w[j + 1]) {
            y.resize_batch(n, op.layer().output_shape());
        } else {
            // Empty: its capacity kept for the next pass that writes it.
            y.resize_batch(0, op.layer().output_shape());
        }
    }
}

/// Resizes the input gradients of `ops` (the first is layer `first` of the network; the
/// network input's gradient is never made).
fn prepare_input_grads(ops: &[Box<dyn Op>], dxs: &mut [Tensor], first: usize, n: usize) {
    for (j, (op, dx)) in ops.iter().zip(dxs).enumerate() {
        if first + j > 0 {
            dx.resize_batch(n, op.layer().input_shape());
        }
    }
}

/// Makes sure there is a `Scratch` for each of a pass's `chunks` in every layer (an
/// evaluation pass of a small batch may cut more chunks than `CHUNK` would). Never shrinks,
/// so alternating batch sizes (training, then a larger evaluation batch) do not reallocate.
fn grow_scratch(scratch: &mut [Vec<Scratch>], chunks: usize) {
    for s in scratch {
        if s.len() < chunks {
            s.resize_with(chunks, Scratch::default);
        }
    }
}

/// One chunk's slices of a stage's activations, their gradients (`None` where not wanted)
/// and its layers' scratch.
#[derive(Default)]
struct ChunkViews<'a> {
    acts: Vec<&'a mut [f32]>,
    grads: Vec<Option<&'a mut [f32]>>,
    scratch: Vec<&'a mut Scratch>,
}

/// Cuts every tensor (and gradient, when given) into its chunks' slices and hands each
/// chunk its own: the views for one pass over a stage. These short lists of borrowed
/// slices are the one thing a pass allocates. `starts_at_input`: the stage begins with
/// the network's first layer, whose input gradient is never wanted.
fn chunk_views<'a>(
    acts: &'a mut [Tensor],
    grads: Option<&'a mut [Tensor]>,
    scratch: &'a mut [Vec<Scratch>],
    (chunks, size): (usize, usize),
    starts_at_input: bool,
) -> Vec<ChunkViews<'a>> {
    let mut views: Vec<ChunkViews> = (0..chunks).map(|_| ChunkViews::default()).collect();
    for t in acts.iter_mut() {
        if t.data.is_empty() {
            // A slot this pass does not write (`forward_stage`): an empty piece per chunk.
            views.iter_mut().for_each(|v| v.acts.push(&mut []));
            continue;
        }
        let per = size * t.sample_len();
        for (v, piece) in views.iter_mut().zip(t.data.chunks_mut(per)) {
            v.acts.push(piece);
        }
    }
    if let Some(grads) = grads {
        add_grad_views(&mut views, grads, size, starts_at_input);
    }
    add_scratch_views(&mut views, scratch);
    views
}

fn add_grad_views<'a>(
    views: &mut [ChunkViews<'a>],
    grads: &'a mut [Tensor],
    size: usize,
    starts_at_input: bool,
) {
    for (i, t) in grads.iter_mut().enumerate() {
        if i == 0 && starts_at_input {
            views.iter_mut().for_each(|v| v.grads.push(None));
            continue;
        }
        let per = size * t.sample_len();
        for (v, piece) in views.iter_mut().zip(t.data.chunks_mut(per)) {
            v.grads.push(Some(piece));
        }
    }
}

fn add_scratch_views<'a>(views: &mut [ChunkViews<'a>], scratch: &'a mut [Vec<Scratch>]) {
    for s in scratch.iter_mut() {
        for (v, s) in views.iter_mut().zip(s.iter_mut()) {
            v.scratch.push(s);
        }
    }
}

/// Which layers of a stage are skipped, and where the others then find their input and
/// output gradient.
#[derive(Clone, Copy)]
struct Skips<'a> {
    absorbed: &'a [Option<Absorb>],
    fused: bool,
}

impl Skips<'_> {
    fn skip(&self, j: usize) -> bool {
        self.fused && self.absorbed[j].is_some()
    }
    /// Where layer `j` writes its output and reads its output gradient: the slot of the
    /// last of the skipped layers right after it (which it applies), else its own, `j + 1`.
    fn out(&self, j: usize) -> usize {
        let mut i = j + 1;
        while i < self.absorbed.len() && self.skip(i) {
            i += 1;
        }
        i
    }
    /// Per slot of a stage of `len` layers (its input, then each layer's output), whether
    /// a pass writes it: the input, and each unskipped layer's `out`.
    fn written(&self, len: usize) -> Vec<bool> {
        let mut written = vec![false; len + 1];
        written[0] = true;
        for j in (0..len).filter(|&j| !self.skip(j)) {
            if let Some(w) = written.get_mut(self.out(j)) {
                *w = true;
            }
        }
        written
    }
}

/// A stage, as one chunk's thread sees it: its `len` layers, and after them the barrier
/// that follows it, if any (the one op past `len`).
struct Run<'a> {
    ops: &'a [Box<dyn Op>],
    len: usize,
    skips: Skips<'a>,
    timed: bool,
    /// Per slot of the stage (its input, then each layer's output), whether a training
    /// forward pass may keep it in a per-thread buffer (`SPARE`) instead of the batch's
    /// tensor: written and read inside the stage, by layers whose backward passes read
    /// neither it (`Op::backward_reads`). Writing whole-batch tensors that are never read
    /// again costs a trip to memory per cache line.
    transient: Vec<bool>,
    /// Per slot, whether a training backward pass may keep its gradient in a per-thread
    /// buffer (`SPARE_GRADS`): written and read inside the stage, by a reader that is not
    /// a barrier (whose output gradient the stage below reads again) and whose
    /// `finish_backward` does not read it (`Op::finish_reads_dy`).
    transient_grads: Vec<bool>,
}

thread_local! {
    /// Each worker thread's buffers for the transient slots of the chunk it runs, per slot.
    static SPARE: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for the transient gradients of a backward pass.
    static SPARE_GRADS: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<'a> Run<'a> {
    fn new(
        ops: &'a [Box<dyn Op>],
        len: usize,
        absorbed: &'a [Option<Absorb>],
        fused: bool,
        timed: bool,
    ) -> Self {
        Run {
            ops,
            len,
            skips: Skips { absorbed, fused },
            timed,
            transient: Vec::new(),
            transient_grads: Vec::new(),
        }
    }

    /// The same, for a training pass that keeps its transient slots per thread.
    fn training(mut self) -> Self {
        let mut transient = vec![false; self.len + 1];
        for j in 0..self.len {
            if self.skips.skip(j) {
                continue;
            }
            // Layer `j` writes slot `out`; the layer there reads it (the stage's last slot
            // is read by the next stage and the barrier after it).
            let out = self.skips.out(j);
            if out < self.len {
                let writer_reads_output = self.ops[j].backward_reads().1;
                let reader_reads_input = self.ops[out].backward_reads().0;
                transient[out] = !writer_reads_output && !reader_reads_input;
            }
        }
        self.transient = transient;
        // Slot `out`'s gradient is written by the layer there (its input gradient) or, at
        // the stage's end, by the barrier after it, and read by layer `j`.
        let mut transient_grads = vec![false; self.len + 1];
        for j in 0..self.len {
            if self.skips.skip(j) {
                continue;
            }
            let out = self.skips.out(j);
            // `out <= len`: a stage's fusions stay inside it.
            let written = if out < self.len {
                !self.skips.skip(out)
            } else {
                self.tail().is_some()
            };
            let reader = &self.ops[j];
            transient_grads[out] = written && !reader.batch_barrier() && !reader.finish_reads_dy();
        }
        self.transient_grads = transient_grads;
        self
    }

    /// `forward` with this thread's `SPARE` buffers for the transient slots (if they are
    /// in use already, by a task this thread took up while waiting, the batch's tensors).
    fn forward_with_spare(
        &self,
        c: usize,
        v: &mut ChunkViews,
        mode: Mode,
        t: &mut [(Duration, Duration)],
    ) {
        if !self.transient.contains(&true) {
            return self.forward(c, v, mode, t, None);
        }
        SPARE.with(|spare| match spare.try_borrow_mut() {
            Ok(mut spare) => {
                if spare.len() < self.transient.len() {
                    spare.resize_with(self.transient.len(), Vec::new);
                }
                self.forward(c, v, mode, t, Some(&mut spare))
            }
            Err(_) => self.forward(c, v, mode, t, None),
        })
    }

    fn new_times(&self) -> Option<Mutex<Times>> {
        self.timed
            .then(|| Mutex::new(vec![(Duration::ZERO, Duration::ZERO); self.ops.len()]))
    }

    /// The barrier after the stage.
    fn tail(&self) -> Option<&dyn Op> {
        self.ops.get(self.len).map(|op| &**op)
    }

    /// Chunk `c` forward through every layer of the stage, then the following barrier's
    /// share of its statistics from the chunk's output.
    fn forward(
        &self,
        c: usize,
        v: &mut ChunkViews,
        mode: Mode,
        t: &mut [(Duration, Duration)],
        mut spare: Option<&mut Vec<Vec<f32>>>,
    ) {
        for (j, op) in self.ops[..self.len].iter().enumerate() {
            if self.skips.skip(j) {
                continue;
            }
            let begin = self.timed.then(Instant::now);
            let out = self.skips.out(j);
            let (x, y) = v.acts.split_at_mut(out);
            let (x, y): (&[f32], &mut [f32]) = match spare.as_deref_mut() {
                Some(spare) => {
                    // The slot's chunk as long as the tensor's, in this thread's buffer.
                    let (sx, sy) = spare.split_at_mut(out);
                    let x = if self.transient[j] {
                        &sx[j][..x[j].len()]
                    } else {
                        &*x[j]
                    };
                    let y = if self.transient[out] {
                        let n = y[0].len();
                        if sy[0].len() < n {
                            sy[0].resize(n, 0.0);
                        }
                        &mut sy[0][..n]
                    } else {
                        &mut *y[0]
                    };
                    (x, y)
                }
                None => (&*x[j], &mut *y[0]),
            };
            op.forward_chunk(c, x, y, v.scratch[j], mode);
            if let Some(b) = begin {
                t[j.min(MAX_TIMED - 1)].0 += b.elapsed();
            }
        }
        if let Some(barrier) = self.tail() {
            let begin = self.timed.then(Instant::now);
            barrier.stats_chunk(v.acts[self.len], v.scratch[self.len]);
            if let Some(b) = begin {
                t[self.len.min(MAX_TIMED - 1)].0 += b.elapsed();
            }
        }
    }

    /// `backward` with this thread's `SPARE_GRADS` buffers for the transient gradients (if
    /// they are in use already, by a task this thread took up while waiting, the batch's
    /// tensors).
    fn backward_with_spare(&self, v: &mut ChunkViews, t: &mut [(Duration, Duration)]) {
        if !self.transient_grads.contains(&true) {
            return self.backward(v, t, None);
        }
        SPARE_GRADS.with(|spare| match spare.try_borrow_mut() {
            Ok(mut spare) => {
                if spare.len() < self.transient_grads.len() {
                    spare.resize_with(self.transient_grads.len(), Vec::new);
                }
                self.backward(v, t, Some(&mut spare))
            }
            Err(_) => self.backward(v, t, None),
        })
    }

    /// One chunk backward: the following barrier's input gradient first, then every layer
    /// of the stage, last first. With `spare`, the transient gradients live there.
    fn backward(
        &self,
        v: &mut ChunkViews,
        t: &mut [(Duration, Duration)],
        mut spare: Option<&mut Vec<Vec<f32>>>,
    ) {
        // Slot `k`'s gradient: the batch's chunk, or this thread's buffer of its length.
        fn slot<'b>(
            grads: &'b mut [Option<&mut [f32]>],
            spare: Option<&'b mut Vec<f32>>,
            k: usize,
        ) -> Option<&'b mut [f32]> {
            let chunk = grads[k].as_deref_mut()?;
            match spare {
                Some(buf) => {
                    if buf.len() < chunk.len() {
                        buf.resize(chunk.len(), 0.0);
                    }
                    Some(&mut buf[..chunk.len()])
                }
                None => Some(chunk),
            }
        }
        let transient = |k: usize| self.transient_grads.get(k).copied().unwrap_or(false);
        if let Some(barrier) = self.tail() {
            let begin = self.timed.then(Instant::now);
            let out = self.skips.out(self.len);
            let (dx, dy) = v.grads.split_at_mut(out);
            let buf = match spare.as_deref_mut() {
                Some(s) if transient(self.len) => Some(&mut s[self.len]),
                _ => None,
            };
            let dx = slot(dx, buf, self.len).expect("the barrier's input gradient");
            let dy = dy[0].as_deref().expect("output gradients exist");
            barrier.dx_chunk(v.acts[self.len], dy, dx, v.scratch[self.len]);
            if let Some(b) = begin {
                t[self.len.min(MAX_TIMED - 1)].1 += b.elapsed();
            }
        }
        for (j, op) in self.ops[..self.len].iter().enumerate().rev() {
            if self.skips.skip(j) {
                continue;
            }
            let begin = self.timed.then(Instant::now);
            let out = self.skips.out(j);
            let (dx, dy) = v.grads.split_at_mut(j + 1);
            let (sx, sy) = match spare.as_deref_mut() {
                Some(s) => {
                    let (sx, sy) = s.split_at_mut(j + 1);
                    (
                        transient(j).then(|| &mut sx[j]),
                        transient(out).then(|| &mut sy[out - j - 1]),
                    )
                }
                None => (None, None),
            };
            let dy = slot(dy, sy, out - j - 1).expect("output gradients exist");
            op.backward_chunk(v.acts[j], v.acts[out], dy, slot(dx, sx, j), v.scratch[j]);
            if let Some(b) = begin {
                t[j.min(MAX_TIMED - 1)].1 += b.elapsed();
            }
        }
    }
}

fn add_times(total: &Option<Mutex<Times>>, local: &[(Duration, Duration)]) {
    let Some(total) = total else { return };
    let mut t = total.lock().expect("timing lock");
    for (t, l) in t.iter_mut().zip(local) {
        t.0 += l.0;
        t.1 += l.1;
    }
}

/// One layer run by itself over a whole batch on the fast engine, chunk by chunk, no
/// fusion: what the tests compare the pipeline and the readable layers with.
#[cfg(test)]
pub(crate) struct Alone {
    pub op: Box<dyn Op>,
    scratch: Vec<Scratch>,
}

#[cfg(test)]
impl Alone {
    pub fn new(l: &crate::spec::ResolvedLayer) -> Alone {
        Alone {
            op: super::ops::build_op(l),
            scratch: Vec::new(),
        }
    }

    fn grow(&mut self, n: usize) {
        let chunks = n.div_ceil(CHUNK);
        if self.scratch.len() < chunks {
            self.scratch.resize_with(chunks, Scratch::default);
        }
    }

    /// A barrier's statistics gathered chunk by chunk first, as the stage before it would.
    pub fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        let n = x.batch();
        let mut y = Tensor::default();
        y.resize_batch(n, self.op.layer().output_shape());
        self.grow(n);
        let (xl, yl) = (x.sample_len(), y.sample_len());
        if mode == Mode::Train && self.op.batch_barrier() {
            let op = &*self.op;
            x.data
                .par_chunks(CHUNK * xl)
                .zip(self.scratch.par_iter_mut())
                .for_each(|(x, s)| op.stats_chunk(x, s));
            self.op.finish_stats(&self.scratch, n.div_ceil(CHUNK));
        }
        self.op.prepare(mode);
        let op = &*self.op;
        y.data
            .par_chunks_mut(CHUNK * yl)
            .zip(x.data.par_chunks(CHUNK * xl))
            .zip(self.scratch.par_iter_mut())
            .enumerate()
            .for_each(|(c, ((y, x), s))| op.forward_chunk(c, x, y, s, mode));
        y
    }

    /// Sets the parameter gradients and returns dx (a barrier's after its sums).
    pub fn backward(&mut self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Tensor {
        let n = x.batch();
        let mut dx = Tensor::default();
        dx.resize_batch(n, self.op.layer().input_shape());
        self.grow(n);
        self.each_chunk(&mut dx, (x, y, dy), |op, dx, (x, y, dy), s| {
            op.backward_chunk(x, y, dy, Some(dx), s)
        });
        self.op
            .finish_backward(x, dy, &self.scratch, n.div_ceil(CHUNK));
        if self.op.batch_barrier() {
            self.each_chunk(&mut dx, (x, y, dy), |op, dx, (x, _, dy), s| {
                op.dx_chunk(x, dy, dx, s)
            });
        }
        dx
    }

    /// `f` on every chunk's slices of dx, (x, y, dy) and its scratch, in parallel.
    fn each_chunk(
        &mut self,
        dx: &mut Tensor,
        (x, y, dy): (&Tensor, &Tensor, &Tensor),
        f: impl Fn(&dyn Op, &mut [f32], (&[f32], &[f32], &[f32]), &mut Scratch) + Sync,
    ) {
        let (xl, yl) = (x.sample_len(), y.sample_len());
        let op = &*self.op;
        dx.data
            .par_chunks_mut(CHUNK * xl)
            .zip(x.data.par_chunks(CHUNK * xl))
            .zip(
                y.data
                    .par_chunks(CHUNK * yl)
                    .zip(dy.data.par_chunks(CHUNK * yl)),
            )
            .zip(self.scratch.par_iter_mut())
            .for_each(|(((dx, x), (y, dy)), s)| f(op, dx, (x, y, dy), s));
    }
}
