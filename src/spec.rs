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
//! `ModelSpec::resolve` checks every layer's fields and infers every shape, layer by layer,
//! with errors that name the layer and both shapes; `in_channels` / `in_features` may be
//! given and are then checked.

use crate::nn::init::Init;
use crate::nn::loss::Loss;
use crate::nn::{ActivationKind, ConvShape, LayerKind, PoolKind, PoolShape};
use crate::tensor::ShapeDisplay;
use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Pixels (0..=255) enter the network as `(x - mean) / scale`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// Subtracted from every pixel.
    pub mean: f32,
    /// Then divided into it.
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

/// A model: its input, how pixels are normalised, its loss and its layers, as written in
/// a TOML file (see the module docs and `presets/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's name (used in run folder names).
    pub name: String,
    /// Per-sample input shape (C, H, W).
    pub input: Vec<usize>,
    /// How pixels enter the network.
    #[serde(default)]
    pub normalize: Normalize,
    /// The training loss.
    #[serde(default)]
    pub loss: Loss,
    /// Initialisation for layers that do not name their own.
    #[serde(default = "default_init")]
    pub init: Init,
    /// Standard deviation for `gaussian` initialisation.
    #[serde(default = "default_init_std")]
    pub init_std: f32,
    /// The layers, input first.
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
    /// The layer's name (parameters are `<name>.weight`, `<name>.bias`).
    pub name: String,
    /// Its type (`type = "conv2d"`).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Conv: input channels (checked when given).
    pub in_channels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Conv: output channels.
    pub out_channels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Conv, pool: the window's side.
    pub kernel: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Conv (default 1), pool (default the kernel): the step between windows.
    pub stride: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Conv: zero padding on every side (default 0).
    pub pad: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Linear: inputs (checked when given).
    pub in_features: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Linear: outputs.
    pub out_features: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Conv, linear: this layer's initialisation.
    pub init: Option<Init>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Conv, linear: the std of `gaussian` initialisation.
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
    /// A built-in model: `seed-cnn`, `cnn-plus` or `mlp`.
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

    /// Reads a spec from TOML; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<ModelSpec, Error> {
        toml::from_str(text).map_err(|e| Error::Spec(format!("{origin}: {e}")))
    }

    /// Reads a spec file.
    pub fn load(path: &Path) -> Result<ModelSpec, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        ModelSpec::from_toml(&text, &path.display().to_string())
    }

    /// The spec as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a model spec always serialises")
    }
}

/// What a layer computes, with every field checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerOp {
    /// A convolution.
    Conv2d {
        /// Its sizes.
        shape: ConvShape,
    },
    /// Max or average pooling.
    Pool2d {
        /// Max or average.
        kind: PoolKind,
        /// Its sizes.
        shape: PoolShape,
    },
    /// An element-wise activation.
    Activation(ActivationKind),
    /// Flatten to one dimension.
    Flatten,
    /// A fully connected layer.
    Linear {
        /// Inputs.
        in_features: usize,
        /// Outputs.
        out_features: usize,
    },
    /// Dropout with probability `p`.
    Dropout {
        /// The probability of dropping a value.
        p: f32,
    },
    /// Batch norm (2-d for (C, H, W) inputs, 1-d for (C)).
    BatchNorm {
        /// Added to the variance.
        eps: f32,
        /// Weight of the new batch in the running statistics.
        momentum: f32,
    },
}

/// One layer of a spec, checked, with its shapes inferred.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedLayer {
    /// The layer's name.
    pub name: String,
    /// Its type.
    pub kind: LayerKind,
    /// What it computes.
    pub op: LayerOp,
    /// Per-sample input shape.
    pub input: Vec<usize>,
    /// Per-sample output shape.
    pub output: Vec<usize>,
    /// How its weights are drawn (the layer's own choice, else the model's).
    pub init: Init,
    /// The standard deviation of `gaussian` initialisation.
    pub init_std: f32,
}

impl ResolvedLayer {
    /// Learnable values.
    pub fn param_count(&self) -> usize {
        match self.op {
            LayerOp::Conv2d { shape: s } => s.out_c * s.ckk() + s.out_c,
            LayerOp::Linear {
                in_features,
                out_features,
            } => in_features * out_features + out_features,
            LayerOp::BatchNorm { .. } => 2 * self.input[0],
            _ => 0,
        }
    }

    /// Multiply-adds per sample in the forward pass.
    pub fn macs(&self) -> usize {
        match self.op {
            LayerOp::Conv2d { shape: s } => s.out_len() * s.ckk(),
            LayerOp::Linear {
                in_features,
                out_features,
            } => in_features * out_features,
            _ => 0,
        }
    }

    /// Kernel / stride / pad summary for the layer table, empty when not applicable.
    pub fn geometry(&self) -> String {
        match self.op {
            LayerOp::Conv2d { shape: s } => format!("{0}x{0} s{1} p{2}", s.kernel, s.stride, s.pad),
            LayerOp::Pool2d { shape: s, .. } => format!("{0}x{0} s{1}", s.kernel, s.stride),
            LayerOp::Dropout { p } => format!("p={p}"),
            _ => String::new(),
        }
    }
}

impl LayerSpec {
    /// The fields that are set (besides name and type).
    fn set_fields(&self) -> Vec<&'static str> {
        let fields = [
            ("in_channels", self.in_channels.is_some()),
            ("out_channels", self.out_channels.is_some()),
            ("kernel", self.kernel.is_some()),
            ("stride", self.stride.is_some()),
            ("pad", self.pad.is_some()),
            ("in_features", self.in_features.is_some()),
            ("out_features", self.out_features.is_some()),
            ("init", self.init.is_some()),
            ("init_std", self.init_std.is_some()),
            ("p", self.p.is_some()),
            ("eps", self.eps.is_some()),
            ("momentum", self.momentum.is_some()),
        ];
        fields
            .iter()
            .filter(|(_, set)| *set)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// The fields each layer type accepts (besides name and type).
fn allowed_fields(kind: LayerKind) -> &'static [&'static str] {
    match kind {
        LayerKind::Conv2d => &[
            "in_channels",
            "out_channels",
            "kernel",
            "stride",
            "pad",
            "init",
            "init_std",
        ],
        LayerKind::MaxPool2d | LayerKind::AvgPool2d => &["kernel", "stride"],
        LayerKind::Relu | LayerKind::Sigmoid | LayerKind::Tanh | LayerKind::Flatten => &[],
        LayerKind::Linear => &["in_features", "out_features", "init", "init_std"],
        LayerKind::Dropout => &["p"],
        LayerKind::BatchNorm2d | LayerKind::BatchNorm1d => &["eps", "momentum"],
    }
}

/// The largest value any size field (channels, kernel, stride, pad, features, input
/// sides) may take: far beyond any network this tool trains, small enough that no product
/// of sizes overflows.
pub const MAX_FIELD: usize = 1 << 20;

/// The most values one sample of a layer's output, or one layer's parameters, may hold
/// (2^36: 256 GiB of floats); the memory check refuses far less on a real machine.
const MAX_VALUES: u128 = 1 << 36;

/// Whether `name` is safe as part of a file name and a tensor name: letters, digits, `_`,
/// `-`, `.` (not first), at most 64 characters.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks the numbers of a layer that are not sizes: finite, in range.
fn check_values(l: &LayerSpec) -> Result<(), String> {
    let sizes = [
        ("in_channels", l.in_channels),
        ("out_channels", l.out_channels),
        ("kernel", l.kernel),
        ("stride", l.stride),
        ("pad", l.pad),
        ("in_features", l.in_features),
        ("out_features", l.out_features),
    ];
    for (field, v) in sizes {
        if let Some(v) = v.filter(|&v| v > MAX_FIELD) {
            return Err(format!(
                "`{field} = {v}` is too large (at most {MAX_FIELD})"
            ));
        }
    }
    if l.out_features == Some(0) {
        return Err("`out_features` must be at least 1".into());
    }
    if let Some(s) = l.init_std.filter(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(format!("`init_std` must be a number >= 0, got {s}"));
    }
    if let Some(p) = l.p.filter(|p| !(0.0..1.0).contains(p)) {
        return Err(format!(
            "dropout probability `p` must be in [0, 1), got {p}"
        ));
    }
    if let Some(e) = l.eps.filter(|e| !(e.is_finite() && *e > 0.0)) {
        return Err(format!("batch norm `eps` must be a number > 0, got {e}"));
    }
    if let Some(m) = l.momentum.filter(|m| !(0.0..=1.0).contains(m)) {
        return Err(format!("batch norm `momentum` must be in [0, 1], got {m}"));
    }
    Ok(())
}

/// Resolves one layer for an input of per-sample shape `shape`; `prev` names the layer
/// the input comes from, for error messages.
fn resolve_layer(
    l: &LayerSpec,
    spec: &ModelSpec,
    shape: &[usize],
    prev: &str,
) -> Result<ResolvedLayer, String> {
    let kind = LayerKind::parse(&l.kind).ok_or_else(|| {
        let names: Vec<&str> = LayerKind::ALL.iter().map(|k| k.name()).collect();
        format!(
            "unknown type `{}`: expected one of {}",
            l.kind,
            names.join(", ")
        )
    })?;
    let allowed = allowed_fields(kind);
    if let Some(bad) = l.set_fields().into_iter().find(|f| !allowed.contains(f)) {
        return Err(format!("type {kind} does not take `{bad}`"));
    }
    check_values(l)?;
    let need =
        |v: Option<usize>, field: &str| v.ok_or_else(|| format!("type {kind} needs `{field}`"));
    let image = || -> Result<[usize; 3], String> {
        match *shape {
            [c, h, w] => Ok([c, h, w]),
            _ => Err(format!(
                "needs a (C, H, W) input, gets {} from {prev}",
                ShapeDisplay(shape)
            )),
        }
    };
    let op = match kind {
        LayerKind::Conv2d => {
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
            let shape = ConvShape::new(
                input,
                need(l.out_channels, "out_channels")?,
                need(l.kernel, "kernel")?,
                l.stride.unwrap_or(1),
                l.pad.unwrap_or(0),
            )?;
            LayerOp::Conv2d { shape }
        }
        LayerKind::MaxPool2d | LayerKind::AvgPool2d => {
            let k = need(l.kernel, "kernel")?;
            let shape = PoolShape::new(image()?, k, l.stride.unwrap_or(k))?;
            let kind = if kind == LayerKind::MaxPool2d {
                PoolKind::Max
            } else {
                PoolKind::Avg
            };
            LayerOp::Pool2d { kind, shape }
        }
        LayerKind::Relu => LayerOp::Activation(ActivationKind::Relu),
        LayerKind::Sigmoid => LayerOp::Activation(ActivationKind::Sigmoid),
        LayerKind::Tanh => LayerOp::Activation(ActivationKind::Tanh),
        LayerKind::Flatten => LayerOp::Flatten,
        LayerKind::Linear => {
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
            LayerOp::Linear {
                in_features: features,
                out_features: need(l.out_features, "out_features")?,
            }
        }
        LayerKind::Dropout => LayerOp::Dropout {
            p: l.p.unwrap_or(0.5),
        },
        LayerKind::BatchNorm2d | LayerKind::BatchNorm1d => {
            let want = if kind == LayerKind::BatchNorm2d { 3 } else { 1 };
            if shape.len() != want {
                return Err(format!(
                    "needs a {} input, gets {} from {prev}",
                    if want == 3 { "(C, H, W)" } else { "flat (C)" },
                    ShapeDisplay(shape)
                ));
            }
            LayerOp::BatchNorm {
                eps: l.eps.unwrap_or(1e-5),
                momentum: l.momentum.unwrap_or(0.1),
            }
        }
    };
    let output = match op {
        LayerOp::Conv2d { shape: s } => vec![s.out_c, s.out_h, s.out_w],
        LayerOp::Pool2d { shape: s, .. } => vec![s.channels, s.out_h, s.out_w],
        LayerOp::Flatten => vec![shape.iter().product()],
        LayerOp::Linear { out_features, .. } => vec![out_features],
        _ => shape.to_vec(),
    };
    let values = |dims: &[usize]| dims.iter().map(|&d| d as u128).product::<u128>();
    if values(&output) > MAX_VALUES {
        return Err(format!(
            "its output, {} per sample, is too large",
            ShapeDisplay(&output)
        ));
    }
    let params = match op {
        LayerOp::Conv2d { shape: s } => values(&[s.out_c, s.in_c, s.kernel, s.kernel]),
        LayerOp::Linear {
            in_features,
            out_features,
        } => values(&[in_features, out_features]),
        _ => 0,
    };
    if params > MAX_VALUES {
        return Err(format!("its {params} parameters are too many"));
    }
    Ok(ResolvedLayer {
        name: l.name.clone(),
        kind,
        op,
        input: shape.to_vec(),
        output,
        init: l.init.unwrap_or(spec.init),
        init_std: l.init_std.unwrap_or(spec.init_std),
    })
}

impl ModelSpec {
    /// Checks every layer and infers every shape. The errors name the model, the layer and
    /// both shapes: `model my-cnn: layer fc1: expects 784 inputs, gets 1568 (32x7x7 from pool2)`.
    pub fn resolve(&self) -> Result<Vec<ResolvedLayer>, Error> {
        let err = |msg: String| Error::Spec(format!("model `{}`: {msg}", self.name));
        if !is_plain_name(&self.name) {
            return Err(err(
                "`name` must be 1-64 letters, digits, `_`, `-` or `.` (not first): it names run folders".into(),
            ));
        }
        if self.input.len() != 3 || self.input.iter().any(|&d| d == 0 || d > MAX_FIELD) {
            return Err(err(format!(
                "`input` must be [C, H, W], each from 1 to {MAX_FIELD}, got {:?}",
                self.input
            )));
        }
        if self.layers.is_empty() {
            return Err(err("has no layers".into()));
        }
        if self.normalize.scale == 0.0 || !self.normalize.scale.is_finite() {
            return Err(err("`normalize.scale` must be a non-zero number".into()));
        }
        if !self.normalize.mean.is_finite() {
            return Err(err(format!(
                "`normalize.mean` must be a number, got {}",
                self.normalize.mean
            )));
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(err(format!(
                "`init_std` must be a number >= 0, got {}",
                self.init_std
            )));
        }
        let mut shape = self.input.clone();
        let mut prev = "the input".to_string();
        let mut out = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            if l.name.is_empty() {
                return Err(err(format!("a {} layer has no name", l.kind)));
            }
            if !is_plain_name(&l.name) {
                return Err(err(format!(
                    "layer name `{}`: use 1-64 letters, digits, `_`, `-` or `.` (not first); it names tensors and files",
                    l.name
                )));
            }
            if self.layers.iter().filter(|o| o.name == l.name).count() > 1 {
                return Err(err(format!("two layers are named `{}`", l.name)));
            }
            let r = resolve_layer(l, self, &shape, &prev)
                .map_err(|m| err(format!("layer `{}`: {m}", l.name)))?;
            shape = r.output.clone();
            prev = format!("`{}`", l.name);
            out.push(r);
        }
        if shape.len() != 1 {
            return Err(err(format!(
                "the last layer must output one score per class, gets {} from {prev}",
                ShapeDisplay(&shape)
            )));
        }
        Ok(out)
    }
}
