//! Sweep grids: keys that set settings and layer fields, and their errors.

use crate::report::sweep::{apply, combinations, parse_axis, trial_name};
use crate::run::config::TrainConfig;
use crate::spec::ModelSpec;

fn base() -> TrainConfig {
    TrainConfig::default_for(ModelSpec::preset("seed-cnn").unwrap())
}

#[test]
fn grid_keys_set_settings_and_layer_fields() {
    let c = apply(&base(), "lr", "0.3").unwrap();
    assert_eq!(c.lr, 0.3);
    let c = apply(&c, "batch_size", "32").unwrap();
    assert_eq!(c.batch_size, 32);
    let c = apply(&c, "conv1.kernel", "5").unwrap();
    assert_eq!(c.model.layers[0].kernel, Some(5));
    let c = apply(&c, "fc1.out_features", "64").unwrap();
    assert_eq!(c.model.layers[7].out_features, Some(64));
    let c = apply(&c, "schedule", "constant").unwrap();
    assert_eq!(c.schedule, crate::nn::optim::Schedule::Constant);
    let c = apply(&c, "lr", "1").unwrap();
    assert_eq!(c.lr, 1.0, "an integer is accepted for a float");
    let e = apply(&c, "batch_size", "big").unwrap_err().to_string();
    assert!(e.contains("batch_size=big"), "{e}");
    let e = apply(&c, "conv9.kernel", "3").unwrap_err().to_string();
    assert!(
        e.contains("no layer `conv9`") && e.contains("conv1, relu1"),
        "{e}"
    );
    let e = apply(&c, "learning_rate", "3").unwrap_err().to_string();
    assert!(
        e.contains("not a setting") && e.contains("weight_decay"),
        "{e}"
    );
    assert_eq!(parse_axis("wd=0,0.1").unwrap().key, "weight_decay");
    assert!(parse_axis("lr")
        .unwrap_err()
        .to_string()
        .contains("expected KEY=V1,V2"));
    let axes = [
        parse_axis("lr=1,2").unwrap(),
        parse_axis("conv1.pad=0,1,2").unwrap(),
    ];
    let combos = combinations(&axes);
    assert_eq!(combos.len(), 6);
    assert_eq!(trial_name(&combos[1]), "lr=1_conv1.pad=1");
    assert_eq!(trial_name(&combos[5]), "lr=2_conv1.pad=2");
}

#[test]
fn config_differences_are_named_by_setting_and_layer() {
    use crate::report::plan::config_diff;
    let base = TrainConfig::default_for(crate::spec::ModelSpec::preset("seed-cnn").unwrap());
    let mut other = base.clone();
    assert!(config_diff(&base, &other).is_empty());
    other.threads = 7;
    assert!(
        config_diff(&base, &other).is_empty(),
        "the thread count changes no result"
    );
    other.lr = 0.5;
    other.model.layers[3].out_channels = Some(32);
    let d = config_diff(&base, &other);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d.contains(&"lr is 0.5 there, 0.05 in the plan".to_string()),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|l| l.starts_with("model.layers.conv2.out_channels is 32 there")),
        "{d:?}"
    );
}
