//! The files of a run folder. Training writes them; everything else only reads them.

use crate::Error;
use std::path::{Path, PathBuf};

/// Everything needed to resume: weights, optimiser state, config, where the run is.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The model after the epoch with the best validation accuracy.
pub const BEST: &str = "best.safetensors";
/// The model at the end of training.
pub const MODEL: &str = "model.safetensors";
/// Every setting of the run, the seed and the model spec.
pub const CONFIG: &str = "config.toml";
/// One row per epoch, appended as training goes.
pub const METRICS: &str = "metrics.csv";
/// One row per training batch.
pub const STEPS: &str = "steps.csv";
/// Written when the run diverged (sweeps read it to skip the trial).
pub const DIVERGED: &str = "DIVERGED";

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A fresh run folder: `out` when given (it must not hold a run yet), else a new one
/// under `runs/` named after the time and `name`. Created on disk.
pub fn create_run_dir(out: Option<&Path>, name: &str) -> Result<PathBuf, Error> {
    let dir = match out {
        Some(d) => {
            if d.join(METRICS).exists() {
                return Err(Error::Config(format!(
                    "{} already holds a run; choose another --out",
                    d.display()
                )));
            }
            d.to_path_buf()
        }
        None => {
            let base = PathBuf::from("runs").join(format!("{}-{name}", timestamp()));
            let mut dir = base.clone();
            let mut k = 2;
            while dir.exists() {
                dir = PathBuf::from(format!("{}-{k}", base.display()));
                k += 1;
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}
