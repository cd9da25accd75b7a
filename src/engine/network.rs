//! A sequential network built from a resolved model spec.
//!
//! The network owns the activations: `acts[0]` is the input batch, `acts[i + 1]` the
//! output of layer `i`; `grads[i]` is dLoss/d`acts[i]`. All of them are reused between
//! batches. It runs on one of two engines: the fast one (`pipeline.rs`: chunks, stages,
//! fusions, the kernels) or the reference one, which calls each readable layer of `nn/`
//! on the whole batch in turn.

use super::memory;
use super::ops::{build_op, Op};
use super::pipeline::{Pipeline, Times};
use crate::nn::init::{fill_normal, init_std, Init};
use crate::nn::loss::BatchStats;
use crate::nn::{Layer, Mode, Param, ParamRole};
use crate::seed::{derive_seed, STREAM_LAYER};
use crate::spec::{ModelSpec, ResolvedLayer};
use crate::tensor::Tensor;
use crate::Error;
use rand::Rng;
use std::time::Duration;

/// Which code runs a network's passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// The kernels of `kernels/`, chunk by chunk with fusions: the default.
    #[default]
    Fast,
    /// The readable layers of `nn/`, one after another on the whole batch: slow, for
    /// learning and for checking the fast engine.
    Reference,
}

impl Engine {
    /// `Reference` when `CONVNET_SIMD=reference`, else `Fast`.
    pub fn from_env() -> Engine {
        match std::env::var("CONVNET_SIMD").map(|v| v.to_ascii_lowercase()) {
            Ok(v) if v == "reference" => Engine::Reference,
            _ => Engine::Fast,
        }
    }
}

/// A network: its layers, their activations and gradients, and the engine that runs them.
pub struct Network {
    /// The spec it was built from.
    pub spec: ModelSpec,
    resolved: Vec<ResolvedLayer>,
    ops: Vec<Box<dyn Op>>,
    pipeline: Pipeline,
    engine: Engine,
    /// Evaluation passes run every layer, fusing nothing, so that `activation` shows each
    /// layer's own output (the feature-map pictures). Training passes always fuse.
    pub keep_every_output: bool,
    acts: Vec<Tensor>,
    grads: Vec<Tensor>,
    /// Label smoothing of the training loss (softmax cross-entropy only).
    pub label_smoothing: f32,
}

impl Network {
    /// Builds the layers, checking the spec and inferring every shape; parameters start at
    /// zero (call `initialize`). Runs on `Engine::from_env()`.
    pub fn build(spec: &ModelSpec) -> Result<Network, Error> {
        Network::build_on(spec, Engine::from_env())
    }

    /// `build` on a chosen engine.
    pub fn build_on(spec: &ModelSpec, engine: Engine) -> Result<Network, Error> {
        let resolved = spec.resolve()?;
        // Not rayon's count: asking would start its pool before the command chose one.
        let threads = crate::threads::expected(0);
        let f = memory::estimate(&spec.input, &resolved, 1, Mode::Eval, threads);
        memory::check(&spec.name, f, "its parameters and one evaluation pass")?;
        let mut ops: Vec<Box<dyn Op>> = resolved.iter().map(build_op).collect();
        let pipeline = Pipeline::new(&mut ops);
        let n = ops.len();
        Ok(Network {
            spec: spec.clone(),
            resolved,
            ops,
            pipeline,
            engine,
            keep_every_output: false,
            acts: vec![Tensor::default(); n + 1],
            grads: vec![Tensor::default(); n + 1],
            label_smoothing: 0.0,
        })
    }

    /// The engine this network runs on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Draws every weight from its layer's initialisation; biases start at 0 and batch
    /// norm's scales at 1. `override_init` replaces every layer's choice (`--init`,
    /// `--init-std`).
    pub fn initialize<R: Rng>(&mut self, rng: &mut R, override_init: Option<(Init, f32)>) {
        for (op, r) in self.ops.iter_mut().zip(&self.resolved) {
            let (init, std) = override_init.unwrap_or((r.init, r.init_std));
            for p in op.layer_mut().params_mut() {
                match p.role {
                    ParamRole::Weight => {
                        let s = init_std(init, std, &p.shape);
                        fill_normal(&mut p.value, s, rng);
                    }
                    ParamRole::NormScale => p.value.fill(1.0),
                    ParamRole::Bias | ParamRole::NormShift => p.value.fill(0.0),
                }
            }
        }
    }

    /// The layers, in order.
    pub fn layers(&self) -> impl ExactSizeIterator<Item = &dyn Layer> + '_ {
        self.ops.iter().map(|op| op.layer())
    }

    /// Layer `i`.
    pub fn layer(&self, i: usize) -> &dyn Layer {
        self.ops[i].layer()
    }

    /// Layer `i`, to change (tests, loading weights).
    pub fn layer_mut(&mut self, i: usize) -> &mut dyn Layer {
        self.ops[i].layer_mut()
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no layers (never, once built).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The spec's layers as checked, with their shapes.
    pub fn resolved(&self) -> &[ResolvedLayer] {
        &self.resolved
    }

    /// Seeds every layer's randomness (dropout) for the next training pass.
    pub fn reseed(&mut self, seed: u64) {
        for (i, op) in self.ops.iter_mut().enumerate() {
            op.layer_mut()
                .reseed(derive_seed(seed, STREAM_LAYER, i as u64));
        }
    }

    /// Per-sample input shape (C, H, W).
    pub fn input_shape(&self) -> &[usize] {
        &self.spec.input
    }

    /// Number of classes: the last layer's outputs.
    pub fn classes(&self) -> usize {
        self.ops
            .last()
            .map(|op| op.layer().output_shape()[0])
            .unwrap_or(0)
    }

    /// The input buffer for a batch of `n` samples, to be filled by the caller.
    pub fn input_mut(&mut self, n: usize) -> &mut [f32] {
        let shape = self.spec.input.clone();
        self.acts[0].resize_batch(n, &shape);
        &mut self.acts[0].data
    }

    /// Runs every layer on the current input batch and returns the logits.
    pub fn forward(&mut self, mode: Mode) -> &Tensor {
        match self.engine {
            Engine::Fast => {
                let fuse = mode == Mode::Train || !self.keep_every_output;
                self.pipeline
                    .forward(&mut self.ops, &mut self.acts, mode, fuse);
            }
            Engine::Reference => {
                for (i, op) in self.ops.iter_mut().enumerate() {
                    self.acts[i + 1] = op.layer_mut().forward(&self.acts[i], mode);
                }
            }
        }
        self.output()
    }

    /// Computes the loss of the last (training) forward pass against `labels`, then
    /// backpropagates, leaving every parameter's gradient in place.
    pub fn backward(&mut self, labels: &[u8]) -> BatchStats {
        let n = self.ops.len();
        let stats = self.spec.loss.forward_backward(
            &self.acts[n],
            labels,
            &mut self.grads[n],
            self.label_smoothing,
        );
        match self.engine {
            Engine::Fast => self
                .pipeline
                .backward(&mut self.ops, &mut self.acts, &mut self.grads),
            Engine::Reference => {
                for i in (0..n).rev() {
                    let l = self.ops[i].layer_mut();
                    self.grads[i] =
                        l.backward(&self.acts[i], &self.acts[i + 1], &self.grads[i + 1]);
                }
            }
        }
        stats
    }

    /// One training step's passes: forward, the loss against `labels`, backward, leaving
    /// every parameter's gradient in place; the same result as `forward(Mode::Train)` then
    /// `backward(labels)`, faster on the fast engine (each chunk of the batch goes forward
    /// and backward while its activations are in cache).
    pub fn train_step(&mut self, labels: &[u8]) -> BatchStats {
        match self.engine {
            Engine::Fast => self.pipeline.train_step(
                &mut self.ops,
                &mut self.acts,
                &mut self.grads,
                (self.spec.loss, self.label_smoothing),
                labels,
            ),
            Engine::Reference => {
                self.forward(Mode::Train);
                self.backward(labels)
            }
        }
    }

    /// Layers whose fast kernels take a path worth naming in training passes (`convnet
    /// bench` prints them): (layer name, path), e.g. a conv whose forward pass runs as
    /// Winograd.
    pub fn kernel_paths(&mut self) -> Vec<(String, String)> {
        if self.engine == Engine::Reference {
            return Vec::new();
        }
        self.pipeline.as_in_training(&mut self.ops, |ops| {
            let named = ops
                .iter()
                .filter_map(|op| Some((op.layer().name().to_string(), op.kernel_path()?)));
            named.collect()
        })
    }

    /// The layer that applied layer `i` itself in the last pass (a fused ReLU or max pool;
    /// a skipped flatten gives the layer before it), or `None` if layer `i` ran.
    pub fn applied_by(&self, i: usize) -> Option<usize> {
        match self.engine {
            Engine::Fast => self.pipeline.applied_by(i),
            Engine::Reference => None,
        }
    }

    /// The output of layer `i` from the last forward pass (`i = 0` is the first layer).
    /// Every layer's own output only after an evaluation pass with `keep_every_output`
    /// set (or on the reference engine): otherwise a conv followed by a ReLU writes the
    /// ReLU's output into the ReLU's tensor, and its own is stale (empty after an
    /// evaluation pass, which sizes only the tensors it writes); so is the input of a
    /// skipped flatten or (in evaluation) dropout, and after a training pass every output
    /// that no backward pass reads (kept per thread instead: `pipeline.rs`).
    pub fn activation(&self, i: usize) -> &Tensor {
        &self.acts[i + 1]
    }

    /// Test aid: sets every layer's output tensor to NaN.
    #[cfg(test)]
    pub(crate) fn poison_outputs(&mut self) {
        for t in &mut self.acts[1..] {
            t.data.fill(f32::NAN);
        }
    }

    /// Test aid: the layers whose output tensor holds only NaN (written by no pass since
    /// `poison_outputs`).
    #[cfg(test)]
    pub(crate) fn unwritten_outputs(&self) -> Vec<usize> {
        let untouched = |t: &Tensor| !t.data.is_empty() && t.data.iter().all(|v| v.is_nan());
        (0..self.ops.len())
            .filter(|&i| untouched(&self.acts[i + 1]))
            .collect()
    }

    /// Test aid: sets every layer's output gradient but the logits' to NaN.
    #[cfg(test)]
    pub(crate) fn poison_gradients(&mut self) {
        let n = self.ops.len();
        for t in &mut self.grads[1..n] {
            t.data.fill(f32::NAN);
        }
    }

    /// Test aid: the layers whose output gradient holds only NaN (written by no pass since
    /// `poison_gradients`).
    #[cfg(test)]
    pub(crate) fn unwritten_gradients(&self) -> Vec<usize> {
        let untouched = |t: &Tensor| !t.data.is_empty() && t.data.iter().all(|v| v.is_nan());
        (0..self.ops.len() - 1)
            .filter(|&i| untouched(&self.grads[i + 1]))
            .collect()
    }

    /// The logits of the last forward pass.
    pub fn output(&self) -> &Tensor {
        self.acts.last().expect("a network has layers")
    }

    /// Every parameter, in a fixed order (layer by layer, weight then bias): what an
    /// optimiser steps over.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.ops
            .iter_mut()
            .flat_map(|op| op.layer_mut().params_mut())
            .collect()
    }

    /// Every parameter with its PyTorch name (`conv1.weight`), in the same order.
    pub fn named_params(&self) -> Vec<(String, &Param)> {
        self.ops
            .iter()
            .flat_map(|op| {
                let l = op.layer();
                l.params()
                    .into_iter()
                    .map(move |p| (format!("{}.{}", l.name(), p.name), p))
            })
            .collect()
    }

    /// Learnable values in all.
    pub fn param_count(&self) -> usize {
        self.resolved.iter().map(|l| l.param_count()).sum()
    }

    /// Multiply-adds per sample in the forward pass.
    pub fn macs(&self) -> usize {
        self.resolved.iter().map(|l| l.macs()).sum()
    }

    /// Starts timing every layer's passes (`convnet bench`), from zero.
    pub fn start_timing(&mut self) {
        self.pipeline.timing = Some(vec![(Duration::ZERO, Duration::ZERO); self.ops.len()]);
    }

    /// The per-layer (forward, backward) times since timing started; stops timing.
    pub fn take_timing(&mut self) -> Option<Times> {
        self.pipeline.timing.take()
    }
}
