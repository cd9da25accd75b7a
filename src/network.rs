//! A sequential network built from a `ModelSpec`, with shapes inferred and checked.
//!
//! The network owns the activations: `acts[0]` is the input batch, `acts[i + 1]` the
//! output of layer `i`; `grads[i]` is dLoss/d`acts[i]`. All of them are reused between
//! batches.
//!
//! How a batch runs: the batch is cut into fixed chunks of `CHUNK` samples (`EVAL_CHUNK`
//! in evaluation passes, which keep nothing for a backward pass), and each chunk
//! goes through a whole run of layers on one thread (`forward_stage`, `backward_stage`),
//! the chunks in parallel. What one layer writes, the next reads while it is still in that
//! core's cache, and threads meet once per run instead of once per layer. A layer that
//! needs the whole batch (batch norm) ends a run and executes on its own. Because chunks are
//! fixed and their gradient parts are added in chunk order, results do not depend on the
//! number of threads.

use crate::init::{fill_normal, init_std, Init};
use crate::layers::conv::ConvGeometry;
use crate::layers::{
    grow_scratch, Activation, ActivationKind, BatchNorm, Conv2d, Dropout, Flatten, Layer, Linear,
    Param, Pool2d, PoolKind, Scratch, CHUNK,
};
use crate::loss::BatchStats;
use crate::spec::{LayerSpec, ModelSpec};
use crate::tensor::{ShapeDisplay, Tensor};
use crate::Error;
use rand::Rng;
use rayon::prelude::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Network {
    pub spec: ModelSpec,
    layers: Vec<Box<dyn Layer>>,
    /// Runs of layers `[start, end)` executed together, chunk by chunk: maximal runs of
    /// per-chunk layers, and each whole-batch layer (batch norm) alone.
    stages: Vec<(usize, usize)>,
    /// `absorbed[i]`: layer `i` is skipped in fused passes: a ReLU that layer `i - 1`
    /// applies itself (`Layer::fuse_relu`, which also masks the gradient), a 2x2 max pool
    /// the conv before it applies (`Layer::fuse_max_pool`), or a flatten, whose output is
    /// its input's data as is. The layer before a run of skipped layers
    /// writes straight into the last one's output tensor (and reads its gradient).
    absorbed: Vec<bool>,
    /// The last forward pass ran with the fusions above in effect.
    fused_now: bool,
    /// Evaluation passes run every layer, fusing nothing, so that `activation` shows each
    /// layer's own output (the feature-map pictures). Training passes always fuse.
    pub keep_every_output: bool,
    acts: Vec<Tensor>,
    grads: Vec<Tensor>,
    /// Per-layer (forward, backward) time, accumulated while `timing` is on. Layers that run
    /// chunk by chunk on several threads at once count their summed thread time divided by
    /// the number of threads in use.
    pub timing: Option<Vec<(Duration, Duration)>>,
    /// Label smoothing of the training loss (softmax cross-entropy only).
    pub label_smoothing: f32,
}

/// The fields each layer type accepts (besides name and type).
fn allowed_fields(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "conv2d" => &[
            "in_channels",
            "out_channels",
            "kernel",
            "stride",
            "pad",
            "init",
            "init_std",
        ],
        "max_pool2d" | "avg_pool2d" => &["kernel", "stride"],
        "relu" | "sigmoid" | "tanh" | "flatten" => &[],
        "linear" => &["in_features", "out_features", "init", "init_std"],
        "dropout" => &["p"],
        "batch_norm2d" | "batch_norm1d" => &["eps", "momentum"],
        _ => return None,
    })
}

fn set_fields(l: &LayerSpec) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut add = |name, set: bool| {
        if set {
            v.push(name)
        }
    };
    add("in_channels", l.in_channels.is_some());
    add("out_channels", l.out_channels.is_some());
    add("kernel", l.kernel.is_some());
    add("stride", l.stride.is_some());
    add("pad", l.pad.is_some());
    add("in_features", l.in_features.is_some());
    add("out_features", l.out_features.is_some());
    add("init", l.init.is_some());
    add("init_std", l.init_std.is_some());
    add("p", l.p.is_some());
    add("eps", l.eps.is_some());
    add("momentum", l.momentum.is_some());
    v
}

/// Builds one layer for an input of per-sample shape `shape`; `prev` names the layer the
/// input comes from, for error messages.
fn build_layer(l: &LayerSpec, shape: &[usize], prev: &str) -> Result<Box<dyn Layer>, String> {
    let allowed = allowed_fields(&l.kind).ok_or_else(|| {
        format!(
            "unknown type `{}`: expected conv2d, max_pool2d, avg_pool2d, relu, sigmoid, tanh, flatten, linear, \
             dropout, batch_norm2d or batch_norm1d",
            l.kind
        )
    })?;
    if let Some(bad) = set_fields(l).into_iter().find(|f| !allowed.contains(f)) {
        return Err(format!("type {} does not take `{bad}`", l.kind));
    }
    let need =
        |v: Option<usize>, field: &str| v.ok_or_else(|| format!("type {} needs `{field}`", l.kind));
    let image = || -> Result<[usize; 3], String> {
        match *shape {
            [c, h, w] => Ok([c, h, w]),
            _ => Err(format!(
                "needs a (C, H, W) input, gets {} from {prev}",
                ShapeDisplay(shape)
            )),
        }
    };
    Ok(match l.kind.as_str() {
        "conv2d" => {
            let input = image()?;
            if let Some(c) = l.in_channels {
                if c != input[0] {
                    return Err(format!(
                        "expects {c} input channels, gets {} ({} from {prev})",
                        input[0],
                        ShapeDisplay(shape)
                    ));
                }
            }
            let g = ConvGeometry::new(
                input,
                need(l.out_channels, "out_channels")?,
                need(l.kernel, "kernel")?,
                l.stride.unwrap_or(1),
                l.pad.unwrap_or(0),
            )?;
            Box::new(Conv2d::new(&l.name, g))
        }
        "max_pool2d" | "avg_pool2d" => {
            let kind = if l.kind == "max_pool2d" {
                PoolKind::Max
            } else {
                PoolKind::Avg
            };
            let k = need(l.kernel, "kernel")?;
            Box::new(Pool2d::new(
                &l.name,
                kind,
                image()?,
                k,
                l.stride.unwrap_or(k),
            )?)
        }
        "relu" => Box::new(Activation::new(&l.name, ActivationKind::Relu, shape)),
        "sigmoid" => Box::new(Activation::new(&l.name, ActivationKind::Sigmoid, shape)),
        "tanh" => Box::new(Activation::new(&l.name, ActivationKind::Tanh, shape)),
        "flatten" => Box::new(Flatten::new(&l.name, shape)),
        "linear" => {
            let [features] = *shape else {
                return Err(format!(
                    "needs a flat input, gets {} from {prev}: add a flatten layer before it",
                    ShapeDisplay(shape)
                ));
            };
            if let Some(fi) = l.in_features {
                if fi != features {
                    return Err(format!(
                        "expects {fi} inputs, gets {features} ({} from {prev})",
                        ShapeDisplay(shape)
                    ));
                }
            }
            Box::new(Linear::new(
                &l.name,
                features,
                need(l.out_features, "out_features")?,
            ))
        }
        "dropout" => Box::new(Dropout::new(&l.name, l.p.unwrap_or(0.5), shape)?),
        "batch_norm2d" | "batch_norm1d" => {
            let want = if l.kind == "batch_norm2d" { 3 } else { 1 };
            if shape.len() != want {
                return Err(format!(
                    "needs a {} input, gets {} from {prev}",
                    if want == 3 { "(C, H, W)" } else { "flat (C)" },
                    ShapeDisplay(shape)
                ));
            }
            Box::new(BatchNorm::new(
                &l.name,
                shape,
                l.eps.unwrap_or(1e-5),
                l.momentum.unwrap_or(0.1),
            )?)
        }
        _ => unreachable!("checked by allowed_fields"),
    })
}

impl Network {
    /// Builds the layers, inferring every shape; parameters start at zero (call `initialize`).
    pub fn build(spec: &ModelSpec) -> Result<Network, Error> {
        let err = |msg: String| Error::Spec(format!("model `{}`: {msg}", spec.name));
        if spec.input.len() != 3 || spec.input.contains(&0) {
            return Err(err(format!(
                "`input` must be [C, H, W] with no zero, got {:?}",
                spec.input
            )));
        }
        if spec.layers.is_empty() {
            return Err(err("has no layers".into()));
        }
        if spec.normalize.scale == 0.0 || !spec.normalize.scale.is_finite() {
            return Err(err("`normalize.scale` must be a non-zero number".into()));
        }
        let mut shape = spec.input.clone();
        let mut prev = "the input".to_string();
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        for l in &spec.layers {
            if l.name.is_empty() {
                return Err(err(format!("a {} layer has no name", l.kind)));
            }
            if spec.layers.iter().filter(|o| o.name == l.name).count() > 1 {
                return Err(err(format!("two layers are named `{}`", l.name)));
            }
            let layer = build_layer(l, &shape, &prev)
                .map_err(|m| err(format!("layer `{}`: {m}", l.name)))?;
            shape = layer.output_shape().to_vec();
            prev = format!("`{}`", l.name);
            layers.push(layer);
        }
        if shape.len() != 1 {
            return Err(err(format!(
                "the last layer must output one score per class, gets {} from {prev}",
                ShapeDisplay(&shape)
            )));
        }
        let n = layers.len();
        let stages = stages(&layers);
        let absorbed = absorbed_layers(&mut layers, &stages);
        Ok(Network {
            spec: spec.clone(),
            stages,
            absorbed,
            fused_now: false,
            keep_every_output: false,
            layers,
            acts: vec![Tensor::default(); n + 1],
            grads: vec![Tensor::default(); n + 1],
            timing: None,
            label_smoothing: 0.0,
        })
    }

    /// Draws every weight matrix or kernel from the layer's initialisation; biases start at
    /// 0 and per-channel scales (batch norm) at 1.
    /// `override_init` replaces every layer's choice (the CLI's `--init` / `--init-std`).
    pub fn initialize<R: Rng>(&mut self, rng: &mut R, override_init: Option<(Init, f32)>) {
        let spec = self.spec.clone();
        for (layer, ls) in self.layers.iter_mut().zip(&spec.layers) {
            let (init, std) = override_init.unwrap_or((
                ls.init.unwrap_or(spec.init),
                ls.init_std.unwrap_or(spec.init_std),
            ));
            layer.visit_params_mut(&mut |p: &mut Param| {
                if p.shape.len() >= 2 {
                    let s = init_std(init, std, &p.shape);
                    fill_normal(&mut p.value, s, rng);
                } else if p.name == "weight" {
                    // A per-channel scale (batch norm) starts at 1.
                    p.value.fill(1.0);
                } else {
                    p.value.fill(0.0);
                }
            });
        }
    }

    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut dyn Layer {
        self.layers[i].as_mut()
    }

    /// Seeds every layer's randomness (dropout) for the next forward pass.
    pub fn reseed(&mut self, seed: u64) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.reseed(crate::train::derive_seed(seed, 100, i as u64));
        }
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.spec.input
    }

    pub fn classes(&self) -> usize {
        self.layers.last().map(|l| l.output_shape()[0]).unwrap_or(0)
    }

    /// The input buffer for a batch of `n` samples, to be filled by the caller.
    pub fn input_mut(&mut self, n: usize) -> &mut [f32] {
        let shape = self.spec.input.clone();
        self.acts[0].resize_batch(n, &shape);
        &mut self.acts[0].data
    }

    /// Runs every layer on the current input batch and returns the logits.
    pub fn forward(&mut self, train: bool) -> &Tensor {
        let n = self.acts[0].batch();
        self.set_fusion(train || !self.keep_every_output);
        for k in 0..self.stages.len() {
            let (start, end) = self.stages[k];
            if self.layers[start].per_chunk() {
                self.forward_stage(start, end, n, train);
            } else {
                let begin = Instant::now();
                let (before, after) = self.acts.split_at_mut(start + 1);
                self.layers[start].forward(&before[start], &mut after[0], train);
                if let Some(t) = self.timing.as_mut() {
                    t[start].0 += begin.elapsed();
                }
            }
        }
        self.acts.last().expect("a network has layers")
    }

    /// Layers `start..end`, all per-chunk: each chunk of the batch goes through all of them
    /// on one thread, so what one layer writes the next reads from the same core's cache.
    /// Evaluation passes keep nothing per chunk, so they may cut larger chunks.
    fn forward_stage(&mut self, start: usize, end: usize, n: usize, train: bool) {
        let size = if train { CHUNK } else { EVAL_CHUNK };
        let chunks = n.div_ceil(size);
        self.prepare_outputs(start, end, n);
        let mut scratch = take_scratch(&mut self.layers[start..end], n);
        let views = chunk_views(
            &mut self.acts[start..=end],
            None,
            &mut scratch,
            (chunks, size),
            false,
        );
        let run = Run::new(
            &self.layers[start..end],
            &self.absorbed[start..end],
            self.fused_now,
            self.timing.is_some(),
        );
        let times = run.new_times();
        views.into_par_iter().enumerate().for_each(|(c, mut v)| {
            let mut t = [(Duration::ZERO, Duration::ZERO); MAX_TIMED];
            run.forward(c, &mut v, train, &mut t);
            add_times(&times, &t);
        });
        give_back_scratch(&mut self.layers[start..end], scratch);
        self.record_times(start, times, chunks);
    }

    /// Resizes the outputs of layers `start..end` for `n` samples and lets each layer
    /// prepare its forward pass.
    fn prepare_outputs(&mut self, start: usize, end: usize, n: usize) {
        let layers = &mut self.layers[start..end];
        for (layer, y) in layers.iter_mut().zip(&mut self.acts[start + 1..=end]) {
            y.resize_batch(n, layer.output_shape());
            layer.prepare_forward();
        }
    }

    /// Resizes the input gradients of layers `start..end` (not the network input's).
    fn prepare_input_grads(&mut self, start: usize, end: usize, n: usize) {
        let layers = &self.layers[start..end];
        for (j, (layer, dx)) in layers.iter().zip(&mut self.grads[start..end]).enumerate() {
            if start + j > 0 {
                dx.resize_batch(n, layer.input_shape());
            }
        }
    }

    /// Adds a run's per-chunk thread times, divided by the threads in use, to the
    /// per-layer timing.
    fn record_times(
        &mut self,
        start: usize,
        times: Option<Mutex<Vec<(Duration, Duration)>>>,
        chunks: usize,
    ) {
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

    /// Turns the fusions on or off for the next passes.
    fn set_fusion(&mut self, fuse: bool) {
        for i in 1..self.layers.len() {
            if !self.absorbed[i] {
                continue;
            }
            match self.layers[i].kind() {
                "relu" => {
                    self.layers[i - 1].fuse_relu(fuse);
                }
                "max_pool2d" => {
                    let host = if self.absorbed[i - 1] { i - 2 } else { i - 1 };
                    self.layers[host].fuse_max_pool(fuse);
                }
                _ => {}
            }
        }
        self.fused_now = fuse;
    }

    /// One training step's passes: forward, loss against `labels`, backward, leaving every
    /// parameter's gradient in place; the same result as `forward(true)` then
    /// `backward(labels)`. When the whole network is one run of per-chunk layers, each
    /// chunk goes forward, through the loss and backward on one thread without waiting for
    /// the others, while its activations are still in that core's cache.
    pub fn train_step(&mut self, labels: &[u8]) -> BatchStats {
        let end = self.layers.len();
        if self.stages.len() != 1 || !self.layers[0].per_chunk() {
            self.forward(true);
            return self.backward(labels);
        }
        let n = self.acts[0].batch();
        assert_eq!(labels.len(), n, "one label per sample");
        let chunks = n.div_ceil(CHUNK);
        self.set_fusion(true);
        self.prepare_outputs(0, end, n);
        self.prepare_input_grads(0, end, n);
        let classes = self.classes();
        self.grads[end].resize_batch(n, &[classes]);
        let (loss, smoothing) = (self.spec.loss, self.label_smoothing);
        let mut scratch = take_scratch(&mut self.layers, n);
        let views = chunk_views(
            &mut self.acts,
            Some(&mut self.grads),
            &mut scratch,
            (chunks, CHUNK),
            true,
        );
        let run = Run::new(
            &self.layers,
            &self.absorbed,
            self.fused_now,
            self.timing.is_some(),
        );
        let times = run.new_times();
        let parts: Vec<BatchStats> = views
            .into_par_iter()
            .enumerate()
            .map(|(c, mut v)| {
                let mut t = [(Duration::ZERO, Duration::ZERO); MAX_TIMED];
                run.forward(c, &mut v, true, &mut t);
                let labels = &labels[c * CHUNK..(c * CHUNK + CHUNK).min(n)];
                let dz = v.grads[end].as_deref_mut().expect("logit gradients exist");
                let stats = loss.chunk_forward_backward(&v.acts[end][..], labels, dz, smoothing, n);
                run.backward(&mut v, &mut t);
                add_times(&times, &t);
                stats
            })
            .collect();
        give_back_scratch(&mut self.layers, scratch);
        self.finish_stage(0, end);
        self.record_times(0, times, chunks);
        let mut stats = BatchStats::default();
        for p in parts {
            stats.add(p);
        }
        stats
    }

    /// The layer that applied layer `i` itself in the last pass (a fused ReLU or max pool;
    /// a skipped flatten gives the layer before it), or `None` if layer `i` ran.
    pub fn applied_by(&self, i: usize) -> Option<usize> {
        if !(self.fused_now && self.absorbed[i]) {
            return None;
        }
        (0..i).rev().find(|&j| !self.absorbed[j])
    }

    /// The output of layer `i` from the last forward pass (`i = 0` is the first layer).
    /// Every layer's own output only after an evaluation pass with `keep_every_output`
    /// set: otherwise a conv followed by a ReLU writes the ReLU's output into the ReLU's
    /// tensor, and its own is stale; so is the input of a skipped flatten.
    pub fn activation(&self, i: usize) -> &Tensor {
        &self.acts[i + 1]
    }

    pub fn output(&self) -> &Tensor {
        self.acts.last().expect("a network has layers")
    }

    /// Computes the loss of the last forward pass against `labels`, then backpropagates,
    /// leaving every parameter's gradient in place.
    pub fn backward(&mut self, labels: &[u8]) -> BatchStats {
        let n = self.layers.len();
        let stats = self.spec.loss.forward_backward(
            &self.acts[n],
            labels,
            &mut self.grads[n],
            self.label_smoothing,
        );
        let batch = self.acts[0].batch();
        for k in (0..self.stages.len()).rev() {
            let (start, end) = self.stages[k];
            if self.layers[start].per_chunk() {
                self.backward_stage(start, end, batch);
            } else {
                let begin = Instant::now();
                let (gb, ga) = self.grads.split_at_mut(start + 1);
                // The input gradient of the first layer is never needed.
                let dx = if start > 0 {
                    Some(&mut gb[start])
                } else {
                    None
                };
                self.layers[start].backward(&self.acts[start], &self.acts[start + 1], &ga[0], dx);
                if let Some(t) = self.timing.as_mut() {
                    t[start].1 += begin.elapsed();
                }
            }
        }
        stats
    }

    /// The backward pass of layers `start..end`, chunk by chunk as in `forward_stage`, then
    /// each layer's parameter gradients over the whole batch.
    fn backward_stage(&mut self, start: usize, end: usize, n: usize) {
        let chunks = n.div_ceil(CHUNK);
        self.prepare_input_grads(start, end, n);
        let mut scratch = take_scratch(&mut self.layers[start..end], n);
        let views = chunk_views(
            &mut self.acts[start..=end],
            Some(&mut self.grads[start..=end]),
            &mut scratch,
            (chunks, CHUNK),
            start == 0,
        );
        let run = Run::new(
            &self.layers[start..end],
            &self.absorbed[start..end],
            self.fused_now,
            self.timing.is_some(),
        );
        let times = run.new_times();
        views.into_par_iter().for_each(|mut v| {
            let mut t = [(Duration::ZERO, Duration::ZERO); MAX_TIMED];
            run.backward(&mut v, &mut t);
            add_times(&times, &t);
        });
        give_back_scratch(&mut self.layers[start..end], scratch);
        self.finish_stage(start, end);
        self.record_times(start, times, chunks);
    }

    /// Each layer's `finish_backward` over the whole batch, its time added to the layer's
    /// backward time.
    fn finish_stage(&mut self, start: usize, end: usize) {
        let skips = Skips {
            absorbed: &self.absorbed[start..end],
            fused: self.fused_now,
        };
        let (acts, grads) = (&self.acts[start..=end], &self.grads[start..=end]);
        for (j, layer) in self.layers[start..end].iter_mut().enumerate() {
            if skips.skip(j) {
                continue;
            }
            let begin = Instant::now();
            layer.finish_backward(&acts[j], &grads[skips.out(j)]);
            if let Some(t) = self.timing.as_mut() {
                t[start + j].1 += begin.elapsed();
            }
        }
    }

    /// Visits every parameter in a fixed order as `f(index, layer name, parameter)`; the
    /// PyTorch name is `{layer}.{parameter.name}` (`conv1.weight`). Nothing is allocated:
    /// the optimiser calls this every step.
    pub fn visit_params_mut(&mut self, mut f: impl FnMut(usize, &str, &mut Param)) {
        let mut index = 0;
        for (layer, spec) in self.layers.iter_mut().zip(&self.spec.layers) {
            layer.visit_params_mut(&mut |p: &mut Param| {
                f(index, &spec.name, p);
                index += 1;
            });
        }
    }

    /// Every parameter with its PyTorch name, in a fixed order.
    pub fn named_params(&self) -> Vec<(String, &Param)> {
        self.layers
            .iter()
            .flat_map(|l| {
                l.params()
                    .into_iter()
                    .map(move |p| (format!("{}.{}", l.name(), p.name), p))
            })
            .collect()
    }

    pub fn param_count(&self) -> usize {
        self.named_params().iter().map(|(_, p)| p.value.len()).sum()
    }

    /// Multiply-adds per sample in the forward pass.
    pub fn macs(&self) -> usize {
        self.layers.iter().map(|l| l.macs()).sum()
    }

    /// The layer table a report would contain.
    pub fn layer_table(&self) -> String {
        let mut rows = vec![[
            "layer".to_string(),
            "type".into(),
            "output".into(),
            "kernel".into(),
            "params".into(),
            "mult-adds".into(),
        ]];
        rows.push([
            "input".into(),
            "".into(),
            ShapeDisplay(&self.spec.input).to_string(),
            "".into(),
            "".into(),
            "".into(),
        ]);
        for l in &self.layers {
            let params: usize = l.params().iter().map(|p| p.value.len()).sum();
            rows.push([
                l.name().to_string(),
                l.kind().to_string(),
                ShapeDisplay(l.output_shape()).to_string(),
                l.geometry(),
                if params > 0 {
                    group_digits(params)
                } else {
                    String::new()
                },
                if l.macs() > 0 {
                    group_digits(l.macs())
                } else {
                    String::new()
                },
            ]);
        }
        rows.push([
            "total".into(),
            "".into(),
            "".into(),
            "".into(),
            group_digits(self.param_count()),
            group_digits(self.macs()),
        ]);
        let widths: Vec<usize> = (0..6)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, v)| {
                    if c >= 4 {
                        format!("{v:>w$}", w = widths[c])
                    } else {
                        format!("{v:<w$}", w = widths[c])
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
            if i == 0 || i == rows.len() - 2 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 10));
                out.push('\n');
            }
        }
        out
    }
}

/// Splits the layers into runs `[start, end)`: consecutive per-chunk layers together, every
/// whole-batch layer on its own.
fn stages(layers: &[Box<dyn Layer>]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        match out.last_mut() {
            Some((start, end)) if l.per_chunk() && layers[*start].per_chunk() => *end = i + 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}

/// Marks the layers a fused pass skips: each ReLU that the layer before it can apply
/// itself (`Layer::fuse_relu`), each 2x2 max pool likewise (`Layer::fuse_max_pool`, after
/// the ReLU when there is one), and each flatten (its output is its input's data). Only
/// inside a run of per-chunk layers and not the last of it.
fn absorbed_layers(layers: &mut [Box<dyn Layer>], stages: &[(usize, usize)]) -> Vec<bool> {
    let mut absorbed = vec![false; layers.len()];
    for &(start, end) in stages {
        for i in start + 1..end.saturating_sub(1) {
            absorbed[i] = match layers[i].kind() {
                "relu" => layers[i - 1].fuse_relu(false),
                "max_pool2d" if layers[i].is_max_pool_2x2() => {
                    let host = if absorbed[i - 1] { i - 2 } else { i - 1 };
                    layers[host].fuse_max_pool(false)
                }
                "flatten" => true,
                _ => false,
            };
        }
    }
    absorbed
}

/// Samples per chunk in evaluation passes. Nothing is kept between passes then, so the
/// chunk can be larger than the training `CHUNK`: 24 rows make whole 6-column blocks of the
/// GEMM crate's AVX-512 kernel in the linear layers (8 rows leave a 2-column edge), and every
/// sample's result is computed the same way whatever the chunk.
const EVAL_CHUNK: usize = 24;

/// Per-layer times are collected for at most this many layers of a stage (the rest are
/// added to the last slot).
const MAX_TIMED: usize = 64;

/// One chunk's slices of a run's activations, their gradients (`None` where not wanted)
/// and its layers' scratch.
#[derive(Default)]
struct ChunkViews<'a> {
    acts: Vec<&'a mut [f32]>,
    grads: Vec<Option<&'a mut [f32]>>,
    scratch: Vec<&'a mut Scratch>,
}

/// Cuts every tensor (and gradient, when given) into its chunks' slices and hands each
/// chunk its own: the views for one pass over a run of layers. These short lists of
/// borrowed slices are the one thing a pass allocates. `starts_at_input`: the run
/// begins with the network's first layer, whose input gradient is never wanted.
fn chunk_views<'a>(
    acts: &'a mut [Tensor],
    grads: Option<&'a mut [Tensor]>,
    scratch: &'a mut [Vec<Scratch>],
    (chunks, size): (usize, usize),
    starts_at_input: bool,
) -> Vec<ChunkViews<'a>> {
    let mut views: Vec<ChunkViews> = (0..chunks).map(|_| ChunkViews::default()).collect();
    for t in acts.iter_mut() {
        let per = size * t.sample_len();
        for (v, piece) in views.iter_mut().zip(t.data.chunks_mut(per)) {
            v.acts.push(piece);
        }
    }
    if let Some(grads) = grads {
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
    for s in scratch.iter_mut() {
        for (v, s) in views.iter_mut().zip(s.iter_mut()) {
            v.scratch.push(s);
        }
    }
    views
}

/// Which layers of a run are skipped (see `Network::absorbed`), and where the others then
/// find their input and output gradient.
#[derive(Clone, Copy)]
struct Skips<'a> {
    absorbed: &'a [bool],
    fused: bool,
}

impl Skips<'_> {
    fn skip(&self, j: usize) -> bool {
        self.fused && self.absorbed[j]
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
}

/// A run of per-chunk layers, as one chunk's thread sees it.
struct Run<'a> {
    layers: &'a [Box<dyn Layer>],
    skips: Skips<'a>,
    timed: bool,
}

impl<'a> Run<'a> {
    fn new(layers: &'a [Box<dyn Layer>], absorbed: &'a [bool], fused: bool, timed: bool) -> Self {
        Run {
            layers,
            skips: Skips { absorbed, fused },
            timed,
        }
    }

    fn new_times(&self) -> Option<Mutex<Vec<(Duration, Duration)>>> {
        self.timed
            .then(|| Mutex::new(vec![(Duration::ZERO, Duration::ZERO); self.layers.len()]))
    }

    /// Chunk `c` forward through every layer of the run.
    fn forward(&self, c: usize, v: &mut ChunkViews, train: bool, t: &mut [(Duration, Duration)]) {
        for (j, layer) in self.layers.iter().enumerate() {
            if self.skips.skip(j) {
                continue;
            }
            let begin = self.timed.then(Instant::now);
            let (x, y) = v.acts.split_at_mut(self.skips.out(j));
            layer.forward_chunk(c, x[j], y[0], v.scratch[j], train);
            if let Some(b) = begin {
                t[j.min(MAX_TIMED - 1)].0 += b.elapsed();
            }
        }
    }

    /// One chunk backward through every layer of the run, last first.
    fn backward(&self, v: &mut ChunkViews, t: &mut [(Duration, Duration)]) {
        for (j, layer) in self.layers.iter().enumerate().rev() {
            if self.skips.skip(j) {
                continue;
            }
            let begin = self.timed.then(Instant::now);
            let out = self.skips.out(j);
            let (dx, dy) = v.grads.split_at_mut(j + 1);
            let dy = dy[out - j - 1].as_deref().expect("output gradients exist");
            layer.backward_chunk(
                v.acts[j],
                v.acts[out],
                dy,
                dx[j].as_deref_mut(),
                v.scratch[j],
            );
            if let Some(b) = begin {
                t[j.min(MAX_TIMED - 1)].1 += b.elapsed();
            }
        }
    }
}

/// Moves each layer's per-chunk scratch out (nothing is copied), grown for `n` samples.
fn take_scratch(layers: &mut [Box<dyn Layer>], n: usize) -> Vec<Vec<Scratch>> {
    layers
        .iter_mut()
        .map(|l| {
            let mut s = std::mem::take(l.scratch_mut());
            grow_scratch(&mut s, n);
            s
        })
        .collect()
}

fn give_back_scratch(layers: &mut [Box<dyn Layer>], scratch: Vec<Vec<Scratch>>) {
    for (l, s) in layers.iter_mut().zip(scratch) {
        *l.scratch_mut() = s;
    }
}

fn add_times(total: &Option<Mutex<Vec<(Duration, Duration)>>>, local: &[(Duration, Duration)]) {
    let Some(total) = total else { return };
    let mut t = total.lock().expect("timing lock");
    for (t, l) in t.iter_mut().zip(local) {
        t.0 += l.0;
        t.1 += l.1;
    }
}

/// `1234567` -> `1,234,567`.
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
