//! The per-epoch metric log, `metrics.csv`: one row per epoch, appended and flushed as
//! training goes, so a plot can be drawn from it at any time.

use crate::nn::loss::BatchStats;
use crate::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The header row of `metrics.csv`.
pub const HEADER: &str = "epoch,iteration,lr,train_loss,train_acc,train_correct,train_total,val_loss,val_acc,val_correct,val_total,seconds,images_per_sec";

/// One epoch of a run: one row of `metrics.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// Iterations done by the end of this epoch, over the whole run.
    pub iteration: usize,
    /// Learning rate at the last iteration of the epoch.
    pub lr: f32,
    /// Loss and accuracy over the epoch's training batches (as they were trained).
    pub train: BatchStats,
    /// Loss and accuracy on the validation split after the epoch.
    pub val: BatchStats,
    /// Training seconds of the epoch (validation excluded).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
}

impl EpochMetrics {
    /// The row of `metrics.csv`.
    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{:.6},{:.6},{},{},{:.6},{:.6},{},{},{:.3},{:.1}",
            self.epoch,
            self.iteration,
            self.lr,
            self.train.mean_loss(),
            self.train.accuracy(),
            self.train.correct,
            self.train.count,
            self.val.mean_loss(),
            self.val.accuracy(),
            self.val.correct,
            self.val.count,
            self.seconds,
            self.images_per_sec
        )
    }

    /// Reads a row of `metrics.csv`; `None` when it is not one.
    pub fn from_csv(line: &str) -> Option<EpochMetrics> {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() < 13 {
            return None;
        }
        let stats = |loss: &str, correct: &str, total: &str| -> Option<BatchStats> {
            let count: usize = total.parse().ok()?;
            Some(BatchStats {
                loss_sum: loss.parse::<f64>().ok()? * count as f64,
                correct: correct.parse().ok()?,
                count,
            })
        };
        Some(EpochMetrics {
            epoch: f[0].parse().ok()?,
            iteration: f[1].parse().ok()?,
            lr: f[2].parse().ok()?,
            train: stats(f[3], f[5], f[6])?,
            val: stats(f[7], f[9], f[10])?,
            seconds: f[11].parse().ok()?,
            images_per_sec: f[12].parse().ok()?,
        })
    }
}

/// `9922/10000 (99.22%)`.
pub fn format_count(correct: usize, total: usize) -> String {
    format!(
        "{correct}/{total} ({:.2}%)",
        100.0 * correct as f64 / total.max(1) as f64
    )
}

pub struct MetricsLog {
    pub path: PathBuf,
}

impl MetricsLog {
    /// Creates the log with its header (or keeps an existing one when resuming).
    pub fn create(path: &Path) -> Result<MetricsLog, Error> {
        if !path.exists() {
            std::fs::write(path, format!("{HEADER}\n")).map_err(|e| Error::io(path, e))?;
        }
        Ok(MetricsLog {
            path: path.to_path_buf(),
        })
    }

    pub fn append(&self, m: &EpochMetrics) -> Result<(), Error> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{}", m.to_csv())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Reads every complete row; a torn last line (from a crash) is ignored.
    pub fn read(path: &Path) -> Result<Vec<EpochMetrics>, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(text
            .lines()
            .skip(1)
            .filter_map(EpochMetrics::from_csv)
            .collect())
    }
}
