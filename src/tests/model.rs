//! Model specs, shape inference and its error messages, and saved models.

use super::common::rng;
use crate::engine::Network;
use crate::nn::Mode;
use crate::report::table::layer_table;
use crate::run::checkpoint::{load_model, save_model, TensorFile};
use crate::spec::ModelSpec;

fn build_err(toml: &str) -> String {
    let spec = ModelSpec::from_toml(toml, "test").unwrap();
    spec.resolve().expect_err("should not resolve").to_string()
}

const HEAD: &str = "name = \"m\"\ninput = [1, 28, 28]\n";

#[test]
fn presets_have_the_documented_shapes_and_sizes() {
    let net = Network::build(&ModelSpec::preset("seed-cnn").unwrap()).unwrap();
    let shapes: Vec<Vec<usize>> = net.layers().map(|l| l.output_shape().to_vec()).collect();
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
    let table = layer_table(&net.spec).unwrap();
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
    net.initialize(&mut rng(3), None);
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
    assert_eq!(
        net.forward(Mode::Eval).data,
        loaded.forward(Mode::Eval).data
    );
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

#[test]
fn batch_norm_buffers_are_saved_with_pytorch_names() {
    let spec = ModelSpec::preset("cnn-plus").unwrap();
    let mut net = Network::build(&spec).unwrap();
    net.initialize(&mut rng(3), None);
    for (i, v) in net.input_mut(4).iter_mut().enumerate() {
        *v = (i % 7) as f32 * 0.1;
    }
    net.forward(Mode::Train);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    save_model(&path, &net, &[]).unwrap();
    let file = TensorFile::read(&path).unwrap();
    let names = file.names();
    for n in [
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "bn4.running_var",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert_eq!(file.scalar_i64("bn1.num_batches_tracked").unwrap(), 1);
    let (mut loaded, _) = load_model(&path).unwrap();
    net.input_mut(2).fill(0.3);
    loaded.input_mut(2).fill(0.3);
    assert_eq!(
        net.forward(Mode::Eval).data,
        loaded.forward(Mode::Eval).data,
        "evaluation uses the saved running statistics"
    );
}
