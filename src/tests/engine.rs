//! The engine: the chunk pipeline and its fusions give the same bits as each layer run by
//! itself, on any number of threads; the fast engine agrees with the reference engine.

use super::common::{max_rel_diff, rng};
use crate::engine::pipeline::Alone;
use crate::engine::{Engine, Network};
use crate::nn::Mode;
use crate::spec::ModelSpec;
use crate::tensor::Tensor;

fn spec(text: &str) -> ModelSpec {
    ModelSpec::from_toml(text, "test.toml").unwrap()
}

/// A fused ReLU followed by a flatten (two skipped layers in a row).
const SKIPS: &str = r#"
name = "skips"
input = [1, 28, 28]
[[layers]]
name = "conv"
type = "conv2d"
out_channels = 3
kernel = 5
[[layers]]
name = "relu"
type = "relu"
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc"
type = "linear"
out_features = 10
"#;

/// A max pool fused without a ReLU, over an odd-sized map (25x25: the last row and column
/// are dropped), then one after a ReLU over 11x11.
const POOLS: &str = r#"
name = "pools"
input = [1, 28, 28]
[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 3
kernel = 4
[[layers]]
name = "pool1"
type = "max_pool2d"
kernel = 2
[[layers]]
name = "conv2"
type = "conv2d"
out_channels = 4
kernel = 2
[[layers]]
name = "relu2"
type = "relu"
[[layers]]
name = "pool2"
type = "max_pool2d"
kernel = 2
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc"
type = "linear"
out_features = 10
"#;

/// Max pools fused into the batch norm before them: one right after it, over an odd-sized
/// map (25x25: the last row and column are dropped), one after its ReLU over 11x11.
const BN_POOLS: &str = r#"
name = "bn-pools"
input = [1, 28, 28]
[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 3
kernel = 4
[[layers]]
name = "bn1"
type = "batch_norm2d"
[[layers]]
name = "pool1"
type = "max_pool2d"
kernel = 2
[[layers]]
name = "conv2"
type = "conv2d"
out_channels = 4
kernel = 2
[[layers]]
name = "bn2"
type = "batch_norm2d"
[[layers]]
name = "relu2"
type = "relu"
[[layers]]
name = "pool2"
type = "max_pool2d"
kernel = 2
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc"
type = "linear"
out_features = 10
"#;

/// Batch norms where the pipeline has no stage before them to gather their statistics
/// (the network's first layer) and back to back (a stage of one barrier), a ReLU fused
/// into the second, and one before a linear layer (1-d) whose ReLU is the last layer.
const BARRIERS: &str = r#"
name = "barriers"
input = [1, 28, 28]
[[layers]]
name = "bn0"
type = "batch_norm2d"
[[layers]]
name = "conv"
type = "conv2d"
out_channels = 4
kernel = 3
stride = 2
[[layers]]
name = "bn1"
type = "batch_norm2d"
[[layers]]
name = "bn2"
type = "batch_norm2d"
momentum = 0.5
[[layers]]
name = "relu"
type = "relu"
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc"
type = "linear"
out_features = 10
[[layers]]
name = "bn3"
type = "batch_norm1d"
[[layers]]
name = "relu3"
type = "relu"
"#;

/// A linear layer large enough to be a stage of its own on wide chunks (784 x 512 weights),
/// followed by layers that are not barriers (its ReLU cannot be fused into it across the
/// stage's end, and a dropout whose masks go by 8-sample chunks), then a batch norm.
const WIDE: &str = r#"
name = "wide"
input = [1, 28, 28]
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc1"
type = "linear"
out_features = 512
[[layers]]
name = "relu1"
type = "relu"
[[layers]]
name = "drop1"
type = "dropout"
p = 0.3
[[layers]]
name = "bn1"
type = "batch_norm1d"
[[layers]]
name = "fc2"
type = "linear"
out_features = 10
"#;

fn networks() -> Vec<ModelSpec> {
    vec![
        ModelSpec::preset("seed-cnn").unwrap(),
        ModelSpec::preset("cnn-plus").unwrap(),
        spec(SKIPS),
        spec(POOLS),
        spec(BN_POOLS),
        spec(BARRIERS),
        spec(WIDE),
    ]
}

/// A training pass keeps in per-thread buffers only the outputs that are written and read
/// inside one stage by layers whose backward passes read neither (`pipeline.rs`): in
/// cnn-plus, what bn1, bn2 and bn3 write for their fused ReLUs, pool1's and pool2's outputs
/// (pool2's into the skipped flatten's slot) and bn4's; and the output gradients written
/// and read inside one stage by a layer that is no batch norm and no linear layer (conv1's,
/// conv2's and conv3's, which their batch norms write, and drop2's). The gradients of
/// relu2's and relu3's outputs are never written: bn2 and bn3 apply pool1 and pool2 and
/// read the pooled gradients (pool1's and flatten's slots, which the stages below read
/// again). Their tensors are left as they were, and the step's
/// logits and gradients are the same bits as with every tensor written
/// (`the_chunk_pipeline_matches_running_layers_one_at_a_time` checks those against the
/// layers run one at a time).
#[test]
fn a_training_pass_writes_no_tensor_that_no_backward_pass_reads() {
    let spec = ModelSpec::preset("cnn-plus").unwrap();
    let build = || {
        let mut net = Network::build_on(&spec, Engine::Fast).unwrap();
        net.initialize(&mut rng(5), None);
        net.reseed(9);
        net
    };
    let n = 37;
    let input: Vec<f32> = (0..n * 784)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i * 7 % 10) as u8).collect();
    let (mut plain, mut poisoned) = (build(), build());
    for net in [&mut plain, &mut poisoned] {
        net.input_mut(n).copy_from_slice(&input);
        net.forward(Mode::Train);
    }
    // Poisoned after a first step sized every tensor; the step after it is compared.
    for net in [&mut plain, &mut poisoned] {
        net.train_step(&labels);
    }
    poisoned.poison_outputs();
    poisoned.poison_gradients();
    for net in [&mut plain, &mut poisoned] {
        net.input_mut(n).copy_from_slice(&input);
        net.train_step(&labels);
    }
    // bn1-bn4's own slots and pool2's are never written in fused passes (each writes into
    // the skipped layer's after it); the others are the per-thread ones.
    let skipped = ["bn1", "bn2", "bn3", "pool2", "bn4"];
    // The layers `unwritten` names, without the skipped ones (all of which it must name).
    let kept = |unwritten: Vec<usize>| -> Vec<String> {
        let names: Vec<&str> = unwritten
            .into_iter()
            .map(|i| poisoned.resolved()[i].name.as_str())
            .collect();
        let kept: Vec<String> = names
            .iter()
            .filter(|n| !skipped.contains(n))
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names.len(), kept.len() + skipped.len(), "{names:?}");
        kept
    };
    assert_eq!(
        kept(poisoned.unwritten_outputs()),
        ["relu1", "relu2", "pool1", "relu3", "flatten", "relu4"]
    );
    // The same for the output gradients: the skipped layers' are never written; those
    // written and read inside one stage, by a layer that is no batch norm (whose stage
    // below reads its output gradient again) and no linear layer (whose weight gradient
    // reads it over the whole batch), are the per-thread ones.
    assert_eq!(
        kept(poisoned.unwritten_gradients()),
        ["conv1", "conv2", "relu2", "conv3", "relu3", "drop2"]
    );
    assert_eq!(poisoned.output().data, plain.output().data, "logits");
    for ((name, a), (_, b)) in poisoned.named_params().iter().zip(plain.named_params()) {
        assert_eq!(a.grad, b.grad, "gradient of {name}");
    }
}

/// The network runs each chunk through a whole stage of layers, skipping the fused ones;
/// the plain way is one layer at a time over the whole batch. Both must give the same
/// bits: for a network of per-chunk layers only, for ones whose batch norms split it into
/// several stages (statistics gathered by the stage before, ReLUs fused into them, a batch
/// norm first and two in a row), and for one with two skipped layers in a row; and
/// `train_step` (each chunk forward, through the loss and backward at once) the same again.
#[test]
fn the_chunk_pipeline_matches_running_layers_one_at_a_time() {
    for spec in networks() {
        let name = spec.name.clone();
        let build = || {
            let mut net = Network::build_on(&spec, Engine::Fast).unwrap();
            net.initialize(&mut rng(5), None);
            net.reseed(9);
            net
        };
        let mut net = build();
        // Two wide chunks (cnn-plus's fc1 and the wide network's fc1 run on them) and a
        // ragged one, which is also 18 chunks of 8 and a ragged one.
        let n = 2 * crate::engine::pipeline::WIDE_CHUNK + 21;
        let input: Vec<f32> = (0..n * 784)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i * 7 % 10) as u8).collect();
        net.input_mut(n).copy_from_slice(&input);
        let logits = net.forward(Mode::Train).clone();
        net.backward(&labels);

        // The same layers, each by itself.
        let plain = build();
        let mut alone: Vec<Alone> = plain.resolved().iter().map(Alone::new).collect();
        for (a, l) in alone.iter_mut().zip(plain.layers()) {
            for (p, q) in a.op.layer_mut().params_mut().into_iter().zip(l.params()) {
                p.value.clone_from(&q.value);
            }
        }
        for (i, a) in alone.iter_mut().enumerate() {
            a.op.layer_mut().reseed(crate::seed::derive_seed(
                9,
                crate::seed::STREAM_LAYER,
                i as u64,
            ));
        }
        let mut acts = vec![Tensor::from_vec(&[n, 1, 28, 28], input.clone())];
        for a in alone.iter_mut() {
            let y = a.forward(acts.last().unwrap(), Mode::Train);
            acts.push(y);
        }
        let last = acts.len() - 1;
        assert_eq!(logits.data, acts[last].data, "{name}: logits");
        let mut dy = Tensor::default();
        let want_stats = spec
            .loss
            .forward_backward(&acts[last], &labels, &mut dy, 0.0);
        for (i, a) in alone.iter_mut().enumerate().rev() {
            dy = a.backward(&acts[i], &acts[i + 1], &dy);
        }
        let want: Vec<Vec<f32>> = alone
            .iter()
            .flat_map(|a| a.op.layer().params().into_iter().map(|p| p.grad.clone()))
            .collect();
        let got: Vec<(String, Vec<f32>)> = net
            .named_params()
            .into_iter()
            .map(|(n, p)| (n, p.grad.clone()))
            .collect();
        assert_eq!(got.len(), want.len());
        for ((pname, g), w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{name}: gradient of {pname}");
        }

        let mut stepped = build();
        stepped.input_mut(n).copy_from_slice(&input);
        let stats = stepped.train_step(&labels);
        assert_eq!(stats.correct, want_stats.correct, "{name}");
        assert_eq!(stats.count, n);
        assert!((stats.loss_sum - want_stats.loss_sum).abs() < 1e-9);
        assert_eq!(
            stepped.output().data,
            acts[last].data,
            "{name}: train_step logits"
        );
        for ((pname, g), w) in stepped.named_params().iter().zip(&want) {
            assert_eq!(&g.grad, w, "{name}: train_step gradient of {pname}");
        }
    }
}

/// Runs `work` on a pool of its own with `threads` threads.
fn on_threads<T: Send>(threads: usize, work: impl FnOnce() -> T + Send) -> T {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(work)
}

/// A fast-engine network of `spec`, initialised from `seed`.
fn fast_net(spec: &ModelSpec, seed: u64) -> Network {
    let mut net = Network::build_on(spec, Engine::Fast).unwrap();
    net.initialize(&mut rng(seed), None);
    net
}

/// Chunks are fixed and their gradient parts are added in chunk order, so a whole network
/// gives the same bits on 1, 2 or 3 threads.
#[test]
fn whole_networks_are_bit_identical_across_thread_counts() {
    for preset in ["seed-cnn", "cnn-plus"] {
        let spec = ModelSpec::preset(preset).unwrap();
        let run = |threads: usize| {
            on_threads(threads, || {
                let mut net = fast_net(&spec, 8);
                net.reseed(4);
                // Past two of cnn-plus fc1's wide chunks, so they too are split over threads.
                let n = 2 * crate::engine::pipeline::WIDE_CHUNK + 9;
                for (i, v) in net.input_mut(n).iter_mut().enumerate() {
                    *v = ((i * 53) % 97) as f32 / 48.0 - 1.0;
                }
                let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
                net.train_step(&labels);
                let logits = net.output().data.clone();
                let grads: Vec<Vec<f32>> = net
                    .named_params()
                    .iter()
                    .map(|(_, p)| p.grad.clone())
                    .collect();
                (logits, grads)
            })
        };
        let one = run(1);
        assert_eq!(one, run(2), "{preset}: 1 vs 2 threads");
        assert_eq!(one, run(3), "{preset}: 1 vs 3 threads");
    }
}

/// Evaluation passes fuse each conv's ReLU and max pool too, unless every layer's output
/// is wanted (the feature-map pictures); both give the same logits and pooled maps, and
/// only the second shows the conv's own output, negative values included.
#[test]
fn evaluation_fuses_unless_every_output_is_kept() {
    let spec = ModelSpec::preset("seed-cnn").unwrap();
    let mut net = Network::build_on(&spec, Engine::Fast).unwrap();
    net.initialize(&mut rng(2), None);
    let fill = |net: &mut Network| {
        for (i, v) in net.input_mut(10).iter_mut().enumerate() {
            *v = ((i * 29) % 61) as f32 / 30.0 - 1.0;
        }
    };
    fill(&mut net);
    let fused = net.forward(Mode::Eval).data.clone();
    // Fused, conv1 writes the pooled max(0, conv) straight into pool1's tensor.
    let pool1_fused = net.activation(2).data.clone();
    assert!(pool1_fused.iter().all(|&v| v >= 0.0));
    assert!(pool1_fused.iter().any(|&v| v > 0.0));
    // The slots no layer writes (conv1's and relu1's own) are left empty, not filled at
    // the batch's size.
    assert!(net.activation(0).data.is_empty() && net.activation(1).data.is_empty());
    assert_eq!(net.activation(2).data.len(), 10 * 8 * 14 * 14);

    net.keep_every_output = true;
    fill(&mut net);
    assert_eq!(net.forward(Mode::Eval).data, fused);
    let conv1 = net.activation(0).data.clone();
    assert!(conv1.iter().any(|&v| v < 0.0), "conv1 shows its own output");
    let relu1: Vec<f32> = conv1.iter().map(|&v| v.max(0.0)).collect();
    assert_eq!(net.activation(1).data, relu1);
    assert_eq!(net.activation(2).data, pool1_fused);
}

/// Evaluation passes cut larger chunks than training passes (nothing is kept between
/// them); each sample's logits must not depend on that: the same bits as a training-mode
/// forward pass, for a batch that leaves ragged chunks either way.
#[test]
fn evaluation_chunks_give_the_same_logits_as_training_chunks() {
    let spec = ModelSpec::preset("seed-cnn").unwrap();
    let mut net = Network::build_on(&spec, Engine::Fast).unwrap();
    net.initialize(&mut rng(4), None);
    let n = 53;
    let fill = |net: &mut Network| {
        for (i, v) in net.input_mut(n).iter_mut().enumerate() {
            *v = ((i * 31) % 89) as f32 / 44.0 - 1.0;
        }
    };
    fill(&mut net);
    let trained = net.forward(Mode::Train).data.clone();
    fill(&mut net);
    assert_eq!(net.forward(Mode::Eval).data, trained);
}

/// Evaluation chunks are cut per pass so that two threads get even shares: never more
/// than `EVAL_CHUNK` (or the batch, when smaller), every sample in some
/// chunk, the two halves of the chunks (what the pool gives two threads) at most one chunk
/// apart, and no chunk of a single sample unless the batch is one.
#[test]
fn evaluation_chunks_share_the_batch_evenly_between_threads() {
    use crate::engine::pipeline::{eval_chunk, EVAL_CHUNK};
    for n in 1..=2100 {
        let size = eval_chunk(n);
        assert!((1..=EVAL_CHUNK.min(n)).contains(&size), "n {n}: {size}");
        let chunks = n.div_ceil(size);
        // Not needlessly small: half the batch, or half of EVAL_CHUNK.
        let floor = n.div_ceil(2).min(EVAL_CHUNK / 2);
        assert!(size + 1 >= floor, "n {n}: chunks of {size}");
        assert!(
            n == 1 || (size > 1 && n % size != 1),
            "n {n}: a chunk of one sample"
        );
        if chunks >= 2 {
            let first = (chunks / 2) * size;
            let second = n - first;
            assert!(
                first.abs_diff(second) <= size,
                "n {n}: {first} against {second}"
            );
        }
    }
    assert_eq!(eval_chunk(128), 22, "5 x 22 + 18: 66 and 62 samples");
    assert_eq!(eval_chunk(1000), EVAL_CHUNK);
    assert_eq!(eval_chunk(3), 3, "not 2 + 1");
    assert_eq!(eval_chunk(2), 2, "not 1 + 1");
}

/// A sample's evaluation logits must not depend on the thread count, nor on the batch
/// around it (unless it ends up alone in a chunk: `eval_chunk`): cnn-plus (batch norms
/// folded into the convs) gives the same bits for a batch on 1, 2 and 3 threads and for its
/// first samples evaluated on their own.
#[test]
fn evaluation_logits_do_not_depend_on_the_batch_or_the_threads() {
    let spec = ModelSpec::preset("cnn-plus").unwrap();
    let eval = |threads: usize, n: usize| {
        on_threads(threads, || {
            let mut net = fast_net(&spec, 6);
            for (i, v) in net.input_mut(n).iter_mut().enumerate() {
                *v = ((i * 37) % 83) as f32 / 41.0 - 1.0;
            }
            net.forward(Mode::Eval).data.clone()
        })
    };
    let n = 61;
    let one = eval(1, n);
    assert_eq!(one, eval(2, n), "1 vs 2 threads");
    assert_eq!(one, eval(3, n), "1 vs 3 threads");
    // 23 samples: chunks of 12 and 11; 3 samples: one chunk of 3, not 2 + 1.
    for part in [23, 3] {
        for threads in [1, 2] {
            let first = eval(threads, part);
            assert_eq!(
                first[..],
                one[..first.len()],
                "{part} samples alone vs in a batch of 61"
            );
        }
    }
}

/// The two engines compute the same network: the fast one's logits and every gradient
/// within a small tolerance of the reference engine's (f32 sums in another order against
/// f64 sums), in training and evaluation mode.
#[test]
fn the_fast_engine_agrees_with_the_reference_engine() {
    for spec in networks() {
        let name = spec.name.clone();
        let n = 19;
        let input: Vec<f32> = (0..n * 784)
            .map(|i| ((i * 41) % 103) as f32 / 51.0 - 1.0)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
        let run = |engine: Engine| {
            let mut net = Network::build_on(&spec, engine).unwrap();
            net.initialize(&mut rng(6), None);
            net.reseed(3);
            net.input_mut(n).copy_from_slice(&input);
            net.train_step(&labels);
            let logits = net.output().data.clone();
            let grads: Vec<(String, Vec<f32>)> = net
                .named_params()
                .into_iter()
                .map(|(n, p)| (n, p.grad.clone()))
                .collect();
            net.input_mut(n).copy_from_slice(&input);
            let eval = net.forward(Mode::Eval).data.clone();
            (logits, grads, eval)
        };
        let (fast, reference) = (run(Engine::Fast), run(Engine::Reference));
        let e = max_rel_diff(&fast.0, &reference.0);
        assert!(e < 1e-4, "{name}: training logits differ by {e}");
        let e = max_rel_diff(&fast.2, &reference.2);
        assert!(e < 1e-4, "{name}: evaluation logits differ by {e}");
        for ((pname, g), (_, w)) in fast.1.iter().zip(&reference.1) {
            let scale = w.iter().map(|v| v.abs()).fold(0.0f32, f32::max).max(1e-3);
            let worst = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst / scale < 1e-3,
                "{name}: gradient of {pname} differs by {worst} (scale {scale})"
            );
        }
    }
}

/// In evaluation a batch norm right after a conv is folded into the conv's weights and
/// bias (its running statistics' scale and shift), and the conv then applies the ReLU and
/// pool after it: cnn-plus's conv2 takes bn2, relu2 and pool1, conv1 and conv3 their batch
/// norm and ReLU (and conv3 its pool), and the dropouts are skipped, while training passes
/// keep each batch norm and dropout. The logits stay within rounding of the unfused pass
/// (every output kept), with running statistics far from their start.
#[test]
fn evaluation_folds_a_batch_norm_into_the_conv_before_it() {
    let spec = ModelSpec::preset("cnn-plus").unwrap();
    let mut net = Network::build_on(&spec, Engine::Fast).unwrap();
    net.initialize(&mut rng(8), None);
    let n = 30;
    let fill = |net: &mut Network, shift: usize| {
        for (i, v) in net.input_mut(n).iter_mut().enumerate() {
            *v = (((i + shift) * 37) % 101) as f32 / 25.0 - 1.5;
        }
    };
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    for step in 0..5 {
        fill(&mut net, step);
        net.train_step(&labels);
    }
    let names: Vec<String> = net.layers().map(|l| l.name().to_string()).collect();
    let at = |name: &str| names.iter().position(|n| n == name).unwrap();
    for layer in ["bn2", "drop1", "drop2"] {
        assert_eq!(net.applied_by(at(layer)), None, "training keeps {layer}");
    }
    fill(&mut net, 99);
    let fused = net.forward(Mode::Eval).data.clone();
    for (layer, host) in [
        ("bn1", "conv1"),
        ("relu1", "conv1"),
        ("bn2", "conv2"),
        ("relu2", "conv2"),
        ("pool1", "conv2"),
        ("bn3", "conv3"),
        ("relu3", "conv3"),
        ("pool2", "conv3"),
        // Dropout is the identity: skipped like the flatten, fc1 reads pool2's slot.
        ("flatten", "conv3"),
        ("drop1", "conv3"),
        ("drop2", "bn4"),
    ] {
        assert_eq!(
            net.applied_by(at(layer)),
            Some(at(host)),
            "{layer} by {host}"
        );
    }
    // The 1-d batch norm after fc1 is not folded (only into convs).
    assert_eq!(net.applied_by(at("bn4")), None);
    net.keep_every_output = true;
    fill(&mut net, 99);
    let unfused = net.forward(Mode::Eval).data.clone();
    assert_eq!(net.applied_by(at("bn2")), None);
    assert_ne!(
        fused, unfused,
        "folding changes the rounding, so the test sees it"
    );
    let e = max_rel_diff(&fused, &unfused);
    assert!(e < 1e-4, "folded logits differ by {e}");
}

/// An evaluation pass reuses the copies of the weights the last one made (transposed,
/// Winograd-transformed, with the batch norm folded in) only while the weights are the
/// same bits: after the smallest change to one conv or linear weight, to a batch norm's
/// running statistics, after a training step, or with the fusions switched, the logits are
/// those of a network that never ran an evaluation pass before, and a repeated pass gives
/// the same bits.
#[test]
fn evaluation_passes_see_every_change_to_the_weights() {
    for spec in networks() {
        let name = spec.name.clone();
        let n = 13;
        let fill = |net: &mut Network| {
            for (i, v) in net.input_mut(n).iter_mut().enumerate() {
                *v = ((i * 29) % 97) as f32 / 40.0 - 1.2;
            }
        };
        let labels: Vec<u8> = (0..n).map(|i| (i * 7 % 10) as u8).collect();
        // `seen` evaluates after every change; a fresh copy of it evaluates once.
        let mut seen = fast_net(&spec, 5);
        let eval = |net: &mut Network| {
            fill(net);
            net.forward(Mode::Eval).data.clone()
        };
        let fresh = |seen: &Network| {
            let mut net = Network::build_on(&spec, Engine::Fast).unwrap();
            net.keep_every_output = seen.keep_every_output;
            for (to, from) in net.params_mut().into_iter().zip(seen.named_params()) {
                to.value.copy_from_slice(&from.1.value);
            }
            for i in 0..seen.len() {
                let buffers: Vec<_> = seen
                    .layer(i)
                    .buffers()
                    .into_iter()
                    .map(|b| match b {
                        crate::nn::Buffer::F32(n, v) => (n, v.to_vec(), 0),
                        crate::nn::Buffer::I64(n, c) => (n, Vec::new(), c),
                    })
                    .collect();
                for (b, v, c) in buffers {
                    net.layer_mut(i).set_buffer(b, &v, c);
                }
            }
            eval(&mut net)
        };
        let first = eval(&mut seen);
        assert_eq!(first, eval(&mut seen), "{name}: a repeated pass");
        assert_eq!(first, fresh(&seen), "{name}: before any change");
        let weighted: Vec<usize> = (0..seen.len())
            .filter(|&i| !seen.layer(i).params().is_empty())
            .collect();
        for &i in &weighted {
            let layer = seen.layer(i).name().to_string();
            {
                let mut params = seen.layer_mut(i).params_mut();
                let w = &mut params[0].value;
                let at = w.len() / 2;
                w[at] = f32::from_bits(w[at].to_bits() + 1);
            }
            let after = eval(&mut seen);
            assert_eq!(
                after,
                fresh(&seen),
                "{name}: after nudging {layer}'s weight"
            );
        }
        let norms: Vec<usize> = (0..seen.len())
            .filter(|&i| !seen.layer(i).buffers().is_empty())
            .collect();
        for &i in &norms {
            let var: Vec<f32> = match seen.layer(i).buffers()[1] {
                crate::nn::Buffer::F32(_, v) => v.iter().map(|v| v * 1.5).collect(),
                _ => unreachable!("running_var is the second buffer"),
            };
            seen.layer_mut(i).set_buffer("running_var", &var, 0);
            let after = eval(&mut seen);
            assert_eq!(
                after,
                fresh(&seen),
                "{name}: after changing layer {i}'s variance"
            );
        }
        fill(&mut seen);
        seen.train_step(&labels);
        let after = eval(&mut seen);
        assert_ne!(after, first, "{name}: a training step changes the logits");
        assert_eq!(after, fresh(&seen), "{name}: after a training step");
        // Unfused, a conv may take another Winograd tile (the pool decides it).
        seen.keep_every_output = true;
        let unfused = eval(&mut seen);
        assert_eq!(unfused, fresh(&seen), "{name}: unfused");
        seen.keep_every_output = false;
        assert_eq!(after, eval(&mut seen), "{name}: fused again");
    }
}
