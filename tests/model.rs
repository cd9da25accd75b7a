//! Model specs, shape inference and its error messages, and saved models.

use convnet::checkpoint::{load_model, save_model, TensorFile};
use convnet::{ModelSpec, Network};
use rand::SeedableRng;

fn build_err(toml: &str) -> String {
    let spec = ModelSpec::from_toml(toml, "test").unwrap();
    Network::build(&spec)
        .err()
        .expect("should not build")
        .to_string()
}

const HEAD: &str = "name = \"m\"\ninput = [1, 28, 28]\n";

#[test]
fn presets_have_the_documented_shapes_and_sizes() {
    let net = Network::build(&ModelSpec::preset("seed-cnn").unwrap()).unwrap();
    let shapes: Vec<Vec<usize>> = net
        .layers()
        .iter()
        .map(|l| l.output_shape().to_vec())
        .collect();
    assert_eq!(shapes[0], vec![8, 28, 28]);
    assert_eq!(shapes[5], vec![16, 7, 7]);
    assert_eq!(shapes[6], vec![784]);
    assert_eq!(shapes[9], vec![10]);
    // conv1 80 + conv2 1168 + fc1 100480 + fc2 1290.
    assert_eq!(net.param_count(), 103_018);
    assert_eq!(
        net.macs(),
        8 * 784 * 9 + 16 * 196 * 72 + 784 * 128 + 128 * 10
    );
    let table = net.layer_table();
    assert!(
        table.contains("conv2    conv2d      16x14x14  3x3 s1 p1    1,168    225,792"),
        "{table}"
    );
    let mlp = Network::build(&ModelSpec::preset("mlp").unwrap()).unwrap();
    assert_eq!(mlp.param_count(), 784 * 128 + 128 + 128 * 10 + 10);
    assert!(ModelSpec::preset("resnet")
        .unwrap_err()
        .to_string()
        .contains("expected one of seed-cnn, mlp"));
}

#[test]
fn a_feature_mismatch_names_the_layer_and_both_shapes() {
    let toml = format!(
        "{HEAD}[[layers]]\nname=\"conv1\"\ntype=\"conv2d\"\nout_channels=32\nkernel=3\npad=1\n\
         [[layers]]\nname=\"pool\"\ntype=\"max_pool2d\"\nkernel=4\n\
         [[layers]]\nname=\"flatten\"\ntype=\"flatten\"\n\
         [[layers]]\nname=\"fc1\"\ntype=\"linear\"\nin_features=784\nout_features=10\n"
    );
    let msg = build_err(&toml);
    assert!(
        msg.contains("layer `fc1`: expects 784 inputs, gets 1568 (1568 from `flatten`)"),
        "{msg}"
    );
}

#[test]
fn structural_mistakes_are_explained() {
    let conv = |extra: &str| {
        format!("{HEAD}[[layers]]\nname=\"c\"\ntype=\"conv2d\"\nout_channels=2\n{extra}\n")
    };
    assert!(
        build_err(&conv("kernel=31")).contains("kernel 31 is larger than the padded input 28x28")
    );
    assert!(build_err(&conv("")).contains("layer `c`: type conv2d needs `kernel`"));
    assert!(build_err(&conv("kernel=3\nout_features=3")).contains("does not take `out_features`"));
    assert!(
        build_err(&conv("kernel=3\nin_channels=3")).contains("expects 3 input channels, gets 1")
    );
    let lin = format!("{HEAD}[[layers]]\nname=\"fc\"\ntype=\"linear\"\nout_features=10\n");
    assert!(build_err(&lin)
        .contains("needs a flat input, gets 1x28x28 from the input: add a flatten layer"));
    let no_flat_end = conv("kernel=3");
    assert!(build_err(&no_flat_end).contains("the last layer must output one score per class"));
    let typo = format!("{HEAD}[[layers]]\nname=\"x\"\ntype=\"conv3d\"\n");
    assert!(build_err(&typo).contains("unknown type `conv3d`"));
    let pool = format!("{HEAD}[[layers]]\nname=\"p\"\ntype=\"max_pool2d\"\nkernel=29\n");
    assert!(build_err(&pool).contains("a 29x29 pool does not fit the 28x28 input"));
    // Unknown keys are caught by the TOML reader, with the key's name.
    let err = ModelSpec::from_toml(
        &format!("{HEAD}[[layers]]\nname=\"c\"\ntype=\"relu\"\nkernal=3\n"),
        "spec.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("spec.toml") && err.contains("kernal"), "{err}");
}

#[test]
fn saved_models_use_pytorch_names_and_rebuild_from_metadata_alone() {
    let spec = ModelSpec::preset("seed-cnn").unwrap();
    let mut net = Network::build(&spec).unwrap();
    net.initialize(&mut rand_pcg::Pcg64Mcg::seed_from_u64(3), None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_model(&path, &net, &[("convnet.dataset", "mnist".into())]).unwrap();
    let file = TensorFile::read(&path).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(
        names,
        [
            "conv1.bias",
            "conv1.weight",
            "conv2.bias",
            "conv2.weight",
            "fc1.bias",
            "fc1.weight",
            "fc2.bias",
            "fc2.weight"
        ]
    );
    assert_eq!(
        file.tensor("conv1.weight", &[8, 1, 3, 3]).unwrap().len(),
        72
    );
    assert!(file
        .tensor("fc1.weight", &[784, 128])
        .unwrap_err()
        .to_string()
        .contains("has shape [128, 784]"));
    let (mut loaded, _) = load_model(dir.path()).unwrap();
    for ((na, a), (nb, b)) in net.named_params().iter().zip(loaded.named_params()) {
        assert_eq!(na, &nb);
        assert_eq!(a.value, b.value);
    }
    // The same input gives the same output.
    net.input_mut(1).fill(0.25);
    loaded.input_mut(1).fill(0.25);
    assert_eq!(net.forward(false).data, loaded.forward(false).data);
}

#[test]
fn truncated_or_mismatched_model_files_are_refused() {
    let spec = ModelSpec::preset("mlp").unwrap();
    let net = Network::build(&spec).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    save_model(&path, &net, &[]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_model(&path).err().unwrap().to_string();
    assert!(
        msg.contains("m.safetensors") && msg.contains("truncated or corrupt"),
        "{msg}"
    );
    // A file whose weights do not fit the architecture it is loaded into.
    save_model(&path, &net, &[]).unwrap();
    let mut seed = Network::build(&ModelSpec::preset("seed-cnn").unwrap()).unwrap();
    let msg = TensorFile::read(&path)
        .unwrap()
        .load_weights(&mut seed)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no tensor `conv1.weight`"), "{msg}");
}

/// The network runs each chunk through a whole run of layers (`forward_stage`); the plain
/// way is one layer at a time over the whole batch (`Layer::forward` / `backward`). Both
/// must give the same bits, for a network of per-chunk layers only, for one whose batch
/// norm layers split it into several runs, and for one where two skipped layers (a fused
/// ReLU, then a flatten) follow each other.
#[test]
fn the_chunk_pipeline_matches_running_layers_one_at_a_time() {
    use convnet::Tensor;
    let skips = ModelSpec::from_toml(
        r#"
        name = "skips"
        input = [1, 28, 28]
        loss = "softmax_cross_entropy"
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
        "#,
        "skips.toml",
    )
    .unwrap();
    // A max pool fused without a ReLU, over an odd-sized map (25x25: the last row and
    // column are dropped), then one after a ReLU over 11x11.
    let pools = ModelSpec::from_toml(
        r#"
        name = "pools"
        input = [1, 28, 28]
        loss = "softmax_cross_entropy"
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
        "#,
        "pools.toml",
    )
    .unwrap();
    let specs = [
        ModelSpec::preset("seed-cnn").unwrap(),
        ModelSpec::preset("cnn-plus").unwrap(),
        skips,
        pools,
    ];
    for spec in specs {
        let preset = spec.name.clone();
        let mut net = Network::build(&spec).unwrap();
        net.initialize(&mut rand_pcg::Pcg64Mcg::seed_from_u64(5), None);
        let mut plain = Network::build(&spec).unwrap();
        plain.initialize(&mut rand_pcg::Pcg64Mcg::seed_from_u64(5), None);
        net.reseed(9);
        plain.reseed(9);
        // 21 samples: two full chunks and a ragged one.
        let n = 21;
        let input: Vec<f32> = (0..n * 784)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i * 7 % 10) as u8).collect();
        net.input_mut(n).copy_from_slice(&input);
        let logits = net.forward(true).clone();
        net.backward(&labels);

        let layers = plain.layers().len();
        let mut acts = vec![Tensor::from_vec(&[n, 1, 28, 28], input.clone())];
        for i in 0..layers {
            let mut y = Tensor::default();
            plain.layer_mut(i).forward(&acts[i], &mut y, true);
            acts.push(y);
        }
        assert_eq!(logits.data, acts[layers].data, "{preset}: logits");
        let mut dy = Tensor::default();
        spec.loss
            .forward_backward(&acts[layers], &labels, &mut dy, 0.0);
        for i in (0..layers).rev() {
            let mut dx = Tensor::default();
            let want_dx = if i > 0 { Some(&mut dx) } else { None };
            plain
                .layer_mut(i)
                .backward(&acts[i], &acts[i + 1], &dy, want_dx);
            dy = dx;
        }
        let got = net.named_params();
        let want = plain.named_params();
        assert_eq!(got.len(), want.len());
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            assert_eq!(g.grad, w.grad, "{preset}: gradient of {name}");
        }

        // train_step: forward, loss and backward per chunk without a pause between them.
        let mut stepped = Network::build(&spec).unwrap();
        stepped.initialize(&mut rand_pcg::Pcg64Mcg::seed_from_u64(5), None);
        stepped.reseed(9);
        stepped.input_mut(n).copy_from_slice(&input);
        let stats = stepped.train_step(&labels);
        let mut check = Tensor::default();
        let want_stats = spec
            .loss
            .forward_backward(&acts[layers], &labels, &mut check, 0.0);
        assert_eq!(stats.correct, want_stats.correct, "{preset}");
        assert_eq!(stats.count, n);
        assert!((stats.loss_sum - want_stats.loss_sum).abs() < 1e-9);
        assert_eq!(
            stepped.output().data,
            acts[layers].data,
            "{preset}: train_step logits"
        );
        for ((name, g), (_, w)) in stepped.named_params().iter().zip(&want) {
            assert_eq!(g.grad, w.grad, "{preset}: train_step gradient of {name}");
        }
    }
}

/// Chunks are fixed and their gradient parts are added in chunk order, so a whole network
/// gives the same bits on 1, 2 or 3 threads.
#[test]
fn whole_networks_are_bit_identical_across_thread_counts() {
    for preset in ["seed-cnn", "cnn-plus"] {
        let spec = ModelSpec::preset(preset).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut net = Network::build(&spec).unwrap();
                net.initialize(&mut rand_pcg::Pcg64Mcg::seed_from_u64(8), None);
                net.reseed(4);
                let n = 37;
                for (i, v) in net.input_mut(n).iter_mut().enumerate() {
                    *v = ((i * 53) % 97) as f32 / 48.0 - 1.0;
                }
                let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
                let logits = net.forward(true).data.clone();
                net.backward(&labels);
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
    let mut net = Network::build(&spec).unwrap();
    net.initialize(&mut rand_pcg::Pcg64Mcg::seed_from_u64(2), None);
    let fill = |net: &mut Network| {
        for (i, v) in net.input_mut(10).iter_mut().enumerate() {
            *v = ((i * 29) % 61) as f32 / 30.0 - 1.0;
        }
    };
    fill(&mut net);
    let fused = net.forward(false).data.clone();
    // Fused, conv1 writes the pooled max(0, conv) straight into pool1's tensor.
    let pool1_fused = net.activation(2).data.clone();
    assert!(pool1_fused.iter().all(|&v| v >= 0.0));
    assert!(pool1_fused.iter().any(|&v| v > 0.0));

    net.keep_every_output = true;
    fill(&mut net);
    assert_eq!(net.forward(false).data, fused);
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
    let mut net = Network::build(&spec).unwrap();
    net.initialize(&mut rand_pcg::Pcg64Mcg::seed_from_u64(4), None);
    let n = 53;
    let fill = |net: &mut Network| {
        for (i, v) in net.input_mut(n).iter_mut().enumerate() {
            *v = ((i * 31) % 89) as f32 / 44.0 - 1.0;
        }
    };
    fill(&mut net);
    let trained = net.forward(true).data.clone();
    fill(&mut net);
    assert_eq!(net.forward(false).data, trained);
}
