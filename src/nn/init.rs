//! Weight initialisation. Biases start at zero, batch norm's scales at one.
//!
//! ```text
//! fan_in = prod(shape[1..]), fan_out = shape[0] * prod(shape[2..])   (PyTorch's definition:
//! a conv weight (O, C, K, K) has fan_in = C*K*K)
//!   gaussian: N(0, std^2)
//!   he:       N(0, 2 / fan_in)                (Kaiming normal, for ReLU networks)
//!   xavier:   N(0, 2 / (fan_in + fan_out))    (Glorot normal)
//! ```

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// How weights are drawn.
pub enum Init {
    /// N(0, std^2) with a given std.
    Gaussian,
    /// N(0, 2 / fan_in): Kaiming normal, for ReLU networks.
    He,
    /// N(0, 2 / (fan_in + fan_out)): Glorot normal.
    Xavier,
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> Result<Init, String> {
        match s {
            "gaussian" => Ok(Init::Gaussian),
            "he" => Ok(Init::He),
            "xavier" => Ok(Init::Xavier),
            _ => Err(format!(
                "unknown init `{s}`: expected gaussian, he or xavier"
            )),
        }
    }
}

/// (fan_in, fan_out) of a weight of this shape, as PyTorch defines them.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    let receptive: usize = shape.get(2..).map(|s| s.iter().product()).unwrap_or(1);
    let fan_in = shape.get(1).copied().unwrap_or(1) * receptive;
    let fan_out = shape[0] * receptive;
    (fan_in, fan_out)
}

/// The standard deviation `init` gives a weight of this shape (`std` is used by gaussian).
pub fn init_std(init: Init, std: f32, shape: &[usize]) -> f32 {
    let (fan_in, fan_out) = fans(shape);
    match init {
        Init::Gaussian => std,
        Init::He => (2.0 / fan_in as f32).sqrt(),
        Init::Xavier => (2.0 / (fan_in + fan_out) as f32).sqrt(),
    }
}

/// Fills `values` from N(0, std^2).
pub fn fill_normal<R: Rng>(values: &mut [f32], std: f32, rng: &mut R) {
    if std == 0.0 {
        values.fill(0.0);
        return;
    }
    let normal = Normal::new(0.0f32, std).expect("std is finite and positive");
    for v in values {
        *v = normal.sample(rng);
    }
}
