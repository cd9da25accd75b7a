//! Models as data: a TOML model spec (named layers with their parameters) and the
//! built-in presets.
//!
//! ```toml
//! name = "tiny"
//! input = [1, 28, 28]
//! [[layers]]
//! name = "conv1"
//! type = "conv2d"
//! out_channels = 4
//! kernel = 3
//! pad = 1
//! [[layers]]
//! name = "flatten"
//! type = "flatten"
//! [[layers]]
//! name = "fc"
//! type = "linear"
//! out_features = 10
//! ```
//!
//! Shapes are inferred layer by layer when the network is built (`Network::build`);
//! `in_channels` / `in_features` may be given and are then checked.

use crate::init::Init;
use crate::loss::Loss;
use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Pixels (0..=255) enter the network as `(x - mean) / scale`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: f32,
    pub scale: f32,
}

impl Default for Normalize {
    fn default() -> Normalize {
        Normalize {
            mean: 128.0,
            scale: 255.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    /// Per-sample input shape (C, H, W).
    pub input: Vec<usize>,
    #[serde(default)]
    pub normalize: Normalize,
    #[serde(default)]
    pub loss: Loss,
    /// Initialisation for layers that do not name their own.
    #[serde(default = "default_init")]
    pub init: Init,
    /// Standard deviation for `gaussian` initialisation.
    #[serde(default = "default_init_std")]
    pub init_std: f32,
    pub layers: Vec<LayerSpec>,
}

fn default_init() -> Init {
    Init::He
}
fn default_init_std() -> f32 {
    0.01
}

/// One layer. `type` is one of: conv2d, max_pool2d, avg_pool2d, relu, sigmoid, tanh,
/// flatten, linear, dropout, batch_norm2d, batch_norm1d. Fields a type does not use are rejected when the network is built.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_channels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_channels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_features: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_features: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_std: Option<f32>,
    /// Dropout probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f32>,
    /// Batch norm: added to the variance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    /// Batch norm: weight of the new batch in the running statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f32>,
}

/// The built-in presets, by name.
pub const PRESETS: &[(&str, &str)] = &[
    ("seed-cnn", include_str!("../presets/seed-cnn.toml")),
    ("mlp", include_str!("../presets/mlp.toml")),
    ("cnn-plus", include_str!("../presets/cnn-plus.toml")),
];

impl ModelSpec {
    pub fn preset(name: &str) -> Result<ModelSpec, Error> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            Error::Config(format!(
                "unknown preset `{name}`: expected one of {}",
                names.join(", ")
            ))
        })?;
        ModelSpec::from_toml(text, &format!("preset {name}"))
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<ModelSpec, Error> {
        toml::from_str(text).map_err(|e| Error::Spec(format!("{origin}: {e}")))
    }

    pub fn load(path: &Path) -> Result<ModelSpec, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        ModelSpec::from_toml(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a model spec always serialises")
    }
}
