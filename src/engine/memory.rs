//! How much memory a network needs, estimated from its resolved spec before anything is
//! allocated, so that a model too large for the machine is refused with the numbers
//! instead of aborting in the allocator.

use crate::kernels::simd::MAX_LANES;
use crate::nn::Mode;
use crate::spec::{LayerOp, ResolvedLayer};
use crate::Error;

/// Bytes a network needs for one pass over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// The layers' outputs (and, training, their gradients).
    pub activations: u128,
    /// What the kernels keep between passes or per thread (padded images, winners, masks,
    /// unfolded columns).
    pub working: u128,
    /// Parameters with their gradients, optimiser state and transposed copies.
    pub params: u128,
}

impl Footprint {
    /// Everything.
    pub fn total(&self) -> u128 {
        self.activations + self.working + self.params
    }
}

const F32: u128 = 4;

/// An upper estimate of what a pass over `batch` samples needs on `threads` threads.
pub fn estimate(
    input: &[usize],
    layers: &[ResolvedLayer],
    batch: usize,
    mode: Mode,
    threads: usize,
) -> Footprint {
    let n = batch as u128;
    let len = |shape: &[usize]| shape.iter().map(|&d| d as u128).product::<u128>();
    let train = mode == Mode::Train;
    let copies = if train { 2 } else { 1 };
    let mut f = Footprint {
        activations: n * len(input) * F32,
        ..Footprint::default()
    };
    for l in layers {
        let out = len(&l.output);
        f.activations += n * out * F32 * copies;
        // Parameters, their gradients, up to two optimiser buffers, a transposed copy and
        // the copy evaluation passes compare the weights with (`kernels::PreparedFrom`).
        f.params += l.param_count() as u128 * F32 * 6;
        f.working += match l.op {
            LayerOp::Conv2d { shape: s } => {
                let (pw, ph) = (
                    s.in_w as u128 + 2 * s.pad as u128,
                    s.in_h as u128 + 2 * s.pad as u128,
                );
                let padded = s.in_c as u128 * (ph * pw + s.kernel as u128 + MAX_LANES as u128);
                let rows = s.out_c as u128 * (s.out_h as u128 * pw + 2 * MAX_LANES as u128);
                // Per sample: the padded input kept for the backward pass, the output
                // (gradient) rows; per thread: one chunk's unfolded columns.
                let per_sample = if train { padded + rows } else { 0 };
                let columns = s.ckk() as u128 * 24 * s.out_h as u128 * pw;
                (n * per_sample + threads as u128 * (columns + padded * 24 + rows * 24)) * F32
            }
            // Winners or masks.
            LayerOp::Pool2d { .. } | LayerOp::Dropout { .. } if train => n * out * F32,
            _ => 0,
        };
    }
    f
}

/// Bytes of memory this machine has free for the process: `MemAvailable`, or a cgroup's
/// limit when lower; `None` when it cannot tell.
pub fn available() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u128 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let mut bytes = kb * 1024;
    if let Ok(max) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        if let Ok(limit) = max.trim().parse::<u128>() {
            let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
                .ok()
                .and_then(|u| u.trim().parse::<u128>().ok())
                .unwrap_or(0);
            bytes = bytes.min(limit.saturating_sub(used));
        }
    }
    Some(bytes)
}

/// `1.5 GiB`.
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64 / 1024.0;
    for (i, unit) in UNITS.iter().enumerate() {
        if v < 1024.0 || i == UNITS.len() - 1 {
            return if v >= 1e6 {
                format!("more than a million {unit}")
            } else if i >= 2 {
                format!("{v:.1} {unit}")
            } else {
                format!("{v:.0} {unit}")
            };
        }
        v /= 1024.0;
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
#[test]
fn human_sizes_read_well() {
    assert_eq!(human(512 << 10), "512 KiB");
    assert_eq!(human(3 << 20), "3 MiB");
    assert_eq!(human(3 << 29), "1.5 GiB");
    assert_eq!(human(5 << 40), "5.0 TiB");
    assert_eq!(human(u128::MAX), "more than a million PiB");
}

/// Refuses a pass that would not fit: the error gives the estimate, its parts and what the
/// machine has. `what` names the pass (`one training step of 64 images`).
pub fn check(name: &str, f: Footprint, what: &str) -> Result<(), Error> {
    // Without a reading of the machine, refuse only what no machine has.
    let have = available().unwrap_or(1 << 42);
    if f.total() <= have {
        return Ok(());
    }
    Err(Error::Config(format!(
        "model `{name}` needs about {} for {what} ({} of activations, {} of working memory, {} of parameters \
         and optimiser state), but this machine has {} available: lower the batch size or the layer sizes",
        human(f.total()),
        human(f.activations),
        human(f.working),
        human(f.params),
        human(have)
    )))
}
