//! Experiments: grids over configuration keys (`lr=0.01,0.1`, `conv1.kernel=3,5`), and the
//! summary of a finished run used by sweeps and comparisons.

use crate::run::config::TrainConfig;
use crate::run::metrics::{EpochMetrics, MetricsLog};
use crate::run::run_dir::METRICS;
use crate::Error;
use serde::Serialize;
use std::path::Path;

/// Top-level keys of a training config a grid may set.
pub const CONFIG_KEYS: &[&str] = &[
    "lr",
    "momentum",
    "weight_decay",
    "decay_bias",
    "batch_size",
    "epochs",
    "seed",
    "init",
    "init_std",
    "val_size",
    "train_limit",
    "schedule",
    "optimizer",
    "warmup_epochs",
    "label_smoothing",
    "augment_shift",
    "augment_rotate",
    "augment_flip",
];

/// Fields of a layer a grid may set (`conv1.kernel`).
pub const LAYER_KEYS: &[&str] = &[
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "pad",
    "in_features",
    "out_features",
    "init",
    "init_std",
    "p",
    "eps",
    "momentum",
];

/// Fields of the model spec a grid may set (`model.init`).
pub const MODEL_KEYS: &[&str] = &["init", "init_std", "loss"];

/// One axis of a grid: a key and the values it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

/// Parses `key=v1,v2,...`.
pub fn parse_axis(arg: &str) -> Result<Axis, Error> {
    let (key, values) = arg.split_once('=').ok_or_else(|| {
        Error::Config(format!(
            "--grid `{arg}`: expected KEY=V1,V2,... (e.g. lr=0.01,0.1)"
        ))
    })?;
    let key = match key.trim() {
        "wd" => "weight_decay".to_string(),
        k => k.to_string(),
    };
    let values: Vec<String> = values
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(Error::Config(format!("--grid `{arg}`: no values")));
    }
    Ok(Axis { key, values })
}

/// A TOML value from its text: a number or boolean when it parses as one, else a string.
fn toml_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Checks that `key` names something a grid can set in `cfg`.
pub fn check_key(cfg: &TrainConfig, key: &str) -> Result<(), Error> {
    let unknown = |why: String| {
        Err(Error::Config(format!(
            "--grid key `{key}`: {why}. Keys: {}; a layer field as LAYER.FIELD ({}); model.{}",
            CONFIG_KEYS.join(", "),
            LAYER_KEYS.join(", "),
            MODEL_KEYS.join("|")
        )))
    };
    match key.split_once('.') {
        None if CONFIG_KEYS.contains(&key) => Ok(()),
        None => unknown("not a setting".into()),
        Some(("model", f)) if MODEL_KEYS.contains(&f) => Ok(()),
        Some(("model", _)) => unknown("not a model field".into()),
        Some((layer, field)) => {
            if !cfg.model.layers.iter().any(|l| l.name == layer) {
                let names: Vec<&str> = cfg.model.layers.iter().map(|l| l.name.as_str()).collect();
                return unknown(format!(
                    "the model has no layer `{layer}` (it has {})",
                    names.join(", ")
                ));
            }
            if !LAYER_KEYS.contains(&field) {
                return unknown(format!("`{field}` is not a layer field"));
            }
            Ok(())
        }
    }
}

/// `cfg` with `key` set to `value`. Type errors name the key and value.
pub fn apply(cfg: &TrainConfig, key: &str, value: &str) -> Result<TrainConfig, Error> {
    check_key(cfg, key)?;
    let mut table = toml::Table::try_from(cfg).map_err(|e| Error::Config(e.to_string()))?;
    let v = toml_value(value);
    match key.split_once('.') {
        None if key == "schedule" => {
            let mut t = toml::Table::new();
            t.insert("kind".into(), toml::Value::String(value.to_string()));
            table.insert(key.into(), toml::Value::Table(t));
        }
        None => {
            table.insert(key.into(), v);
        }
        Some(("model", field)) => {
            table["model"]
                .as_table_mut()
                .expect("model is a table")
                .insert(field.into(), v);
        }
        Some((layer, field)) => {
            let layers = table["model"]["layers"]
                .as_array_mut()
                .expect("layers are an array");
            let l = layers
                .iter_mut()
                .find(|l| l.get("name").and_then(|n| n.as_str()) == Some(layer))
                .expect("checked by check_key");
            l.as_table_mut()
                .expect("a layer is a table")
                .insert(field.into(), v);
        }
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            Error::Config(format!("--grid {key}={value}: {}", e.message()))
        })
}

/// Every combination of the axes, the first axis varying slowest.
pub fn combinations(axes: &[Axis]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for axis in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                axis.values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((axis.key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    out
}

/// The folder name of a trial: `lr=0.01_weight_decay=0`.
pub fn trial_name(assignment: &[(String, String)]) -> String {
    assignment
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace(['/', '\\', ' '], "-")))
        .collect::<Vec<_>>()
        .join("_")
}

/// How a trial ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Trained to the end.
    Done,
    /// The loss became NaN or infinite.
    Diverged,
    /// Its settings cannot make a network (a kernel larger than its input, ...).
    Invalid,
    /// Stopped by a signal; run the sweep again to continue it.
    Interrupted,
    /// An error the sweep cannot blame on the settings: a full disk, a bug.
    Failed,
    /// Another process is training it now.
    Running,
    /// Planned, not started.
    Missing,
    /// Its folder holds a run with other settings than the plan's: not trusted.
    Mismatch,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Done => "done",
            Status::Diverged => "diverged",
            Status::Invalid => "invalid",
            Status::Interrupted => "interrupted",
            Status::Failed => "failed",
            Status::Running => "running",
            Status::Missing => "missing",
            Status::Mismatch => "mismatch",
        })
    }
}

/// What a run achieved, read back from its metrics.csv.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub epochs: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub val_correct: usize,
    pub val_total: usize,
    pub best_val_acc: f64,
    pub best_val_correct: usize,
    pub best_epoch: usize,
    /// Training seconds (validation excluded).
    pub seconds: f64,
    /// (cumulative training seconds, validation accuracy) at each epoch end.
    #[serde(skip)]
    pub timeline: Vec<(f64, f64)>,
    /// The epoch in which the loss diverged, if it did.
    pub diverged_epoch: Option<usize>,
}

pub fn summarize(metrics: &[EpochMetrics]) -> Summary {
    let mut s = Summary::default();
    let mut t = 0.0;
    for m in metrics {
        if !m.train.mean_loss().is_finite() {
            s.diverged_epoch = Some(m.epoch);
            continue;
        }
        t += m.seconds;
        s.timeline.push((t, m.val.accuracy()));
        s.epochs = m.epoch;
        s.train_loss = m.train.mean_loss();
        s.train_acc = m.train.accuracy();
        s.val_loss = m.val.mean_loss();
        s.val_acc = m.val.accuracy();
        s.val_correct = m.val.correct;
        s.val_total = m.val.count;
        if m.val.accuracy() > s.best_val_acc || s.best_epoch == 0 {
            s.best_val_acc = m.val.accuracy();
            s.best_val_correct = m.val.correct;
            s.best_epoch = m.epoch;
        }
    }
    s.seconds = t;
    s
}

/// Reads and summarises a run directory's metrics (empty when there are none yet).
pub fn summarize_run(dir: &Path) -> Result<Summary, Error> {
    let path = dir.join(METRICS);
    if !path.exists() {
        return Ok(Summary::default());
    }
    Ok(summarize(&MetricsLog::read(&path)?))
}

/// Training seconds until the validation accuracy first reached `target`, if it did.
pub fn time_to_reach(s: &Summary, target: f64) -> Option<f64> {
    s.timeline
        .iter()
        .find(|(_, acc)| *acc >= target)
        .map(|(t, _)| *t)
}
