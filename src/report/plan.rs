//! A sweep as files, so that other engines (Slurm job arrays, GNU parallel, several
//! machines sharing the folder) can run its trials and any process can gather them.
//!
//! `plan.toml` holds the grid, the base settings and every trial with its index and name;
//! `trials.txt` the indices, one a line (for `parallel ... :::: trials.txt`); each trial's
//! folder its `config.toml` as planned. A trial is trusted only while its folder's
//! `config.toml` says what the plan says (the thread count aside, which changes no result).
//! Every file is written atomically and each trial only into its own folder under its run
//! lock, so trials may finish in any order, at once, on different machines, and the
//! gathering may run meanwhile.

use super::sweep::{apply, combinations, parse_axis, trial_name, Axis, Status};
use crate::fsutil::write_atomic;
use crate::run::config::TrainConfig;
use crate::run::run_dir::{CHECKPOINT, CONFIG, DIVERGED, LOCK, METRICS, MODEL};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The plan's file in a sweep folder.
pub const PLAN: &str = "plan.toml";
/// The trial indices, one a line.
pub const TRIALS: &str = "trials.txt";
/// In a trial's folder: why its last run failed (removed when it succeeds).
pub const FAILED: &str = "FAILED";
/// The Slurm job-array script.
pub const SBATCH: &str = "sweep.sbatch";
/// The best trial's test accuracy, measured once.
pub const BEST_TEST: &str = "best-test.toml";

/// A sweep: its grid, its base settings, its trials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The file format.
    pub format: u32,
    /// The axes, as `--grid` gave them.
    pub grid: Vec<String>,
    /// Every trial, by index.
    pub trials: Vec<PlannedTrial>,
    /// The settings every trial starts from.
    pub base: TrainConfig,
}

/// One trial of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedTrial {
    pub index: usize,
    /// Its folder under the sweep folder.
    pub name: String,
    /// The value of each axis.
    pub values: Vec<String>,
}

/// A trial as its folder shows it now.
#[derive(Clone, Debug)]
pub struct TrialState {
    pub status: Status,
    /// Why, when it is not done (the first line is shown).
    pub reason: String,
}

impl Plan {
    /// The plan of `grid` (each `KEY=V1,V2`) over `base`.
    pub fn new(base: &TrainConfig, grid: &[String]) -> Result<Plan, Error> {
        let axes = Plan::parse_grid(grid)?;
        for a in &axes {
            super::sweep::check_key(base, &a.key)?;
        }
        let trials = combinations(&axes)
            .into_iter()
            .enumerate()
            .map(|(index, assignment)| PlannedTrial {
                index,
                name: trial_name(&assignment),
                values: assignment.into_iter().map(|(_, v)| v).collect(),
            })
            .collect();
        Ok(Plan {
            format: 1,
            grid: grid.to_vec(),
            trials,
            base: base.clone(),
        })
    }

    fn parse_grid(grid: &[String]) -> Result<Vec<Axis>, Error> {
        grid.iter().map(|g| parse_axis(g)).collect()
    }

    /// The axes of the grid.
    pub fn axes(&self) -> Vec<Axis> {
        Plan::parse_grid(&self.grid).unwrap_or_default()
    }

    /// The settings of trial `k`: the base with the trial's values applied. An error
    /// means the trial is invalid (a value the setting cannot take).
    pub fn trial_config(&self, k: usize) -> Result<TrainConfig, Error> {
        let axes = self.axes();
        let t = &self.trials[k];
        axes.iter()
            .zip(&t.values)
            .try_fold(self.base.clone(), |c, (a, v)| apply(&c, &a.key, v))
    }

    /// Trial `k`'s folder.
    pub fn trial_dir(&self, dir: &Path, k: usize) -> PathBuf {
        dir.join(&self.trials[k].name)
    }

    /// Finds a trial by index or by name.
    pub fn find(&self, which: &str) -> Result<usize, Error> {
        if let Ok(k) = which.parse::<usize>() {
            if k < self.trials.len() {
                return Ok(k);
            }
            return Err(Error::Config(format!(
                "--trial {k}: the plan has trials 0 to {}",
                self.trials.len().saturating_sub(1)
            )));
        }
        self.trials
            .iter()
            .position(|t| t.name == which)
            .ok_or_else(|| {
                Error::Config(format!(
                    "--trial `{which}`: no trial of that index or name in the plan ({} trials)",
                    self.trials.len()
                ))
            })
    }

    /// Reads `dir/plan.toml`.
    pub fn read(dir: &Path) -> Result<Plan, Error> {
        let path = dir.join(PLAN);
        if !path.is_file() {
            return Err(Error::Config(format!(
                "{} has no {PLAN}: make one with `convnet sweep --grid KEY=V1,V2 ... --out {} --plan`",
                dir.display(),
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let plan: Plan = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))?;
        let fresh = Plan::new(&plan.base, &plan.grid)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if fresh.trials != plan.trials {
            return Err(Error::Config(format!(
                "{}: its trial list does not follow from its grid; make the plan again",
                path.display()
            )));
        }
        Ok(plan)
    }

    /// Writes the plan into `dir` (and every trial's folder with its `config.toml`), or,
    /// when `dir` already has one, checks that it is this plan: the same grid, the same
    /// base settings. Returns whether it was new, and the trials whose folder could not be
    /// made (their runs will fail and say why). A trial folder whose `config.toml` says
    /// something else is left as it is (and reported when gathered).
    pub fn write_or_check(&self, dir: &Path) -> Result<(bool, Vec<String>), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(PLAN);
        let new = !path.exists();
        if new {
            let text = toml::to_string(self).map_err(|e| Error::Internal(e.to_string()))?;
            write_atomic(
                &path,
                format!(
                    "# convnet sweep plan: the grid, the base settings and every trial.\n\
                     # Made by `convnet sweep ... --plan`; read by --run and --collect.\n{text}"
                )
                .as_bytes(),
            )?;
        } else {
            let old = Plan::read(dir)?;
            let diff = plan_diff(&old, self);
            if !diff.is_empty() {
                return Err(Error::Config(format!(
                    "{} holds a different sweep: {}. Use another --out folder, or the same grid and settings to continue it",
                    dir.display(),
                    diff.join("; ")
                )));
            }
        }
        let indices: String = self
            .trials
            .iter()
            .map(|t| format!("{}\n", t.index))
            .collect();
        let listed = dir.join(TRIALS);
        if std::fs::read_to_string(&listed).ok().as_deref() != Some(indices.as_str()) {
            write_atomic(&listed, indices.as_bytes())?;
        }
        let mut unmade = Vec::new();
        for k in 0..self.trials.len() {
            let Ok(cfg) = self.trial_config(k) else {
                continue;
            };
            let tdir = self.trial_dir(dir, k);
            if tdir.join(CONFIG).exists() {
                continue;
            }
            let made = std::fs::create_dir_all(&tdir)
                .map_err(|e| Error::io(&tdir, e))
                .and_then(|_| write_atomic(&tdir.join(CONFIG), cfg.to_toml().as_bytes()));
            if let Err(e) = made {
                unmade.push(format!("{}: {e}", self.trials[k].name));
            }
        }
        Ok((new, unmade))
    }

    /// Trial `k`'s settings as its folder must hold them to be trusted: the plan's, or
    /// the folder's own `config.toml` when that differs from the plan in the thread count
    /// alone. Errors name the setting that differs.
    pub fn checked_config(&self, dir: &Path, k: usize) -> Result<TrainConfig, Error> {
        let planned = self.trial_config(k)?;
        let path = self.trial_dir(dir, k).join(CONFIG);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(planned);
        };
        let found: TrainConfig = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))?;
        let diff = config_diff(&planned, &found);
        if diff.is_empty() {
            return Ok(found);
        }
        Err(Error::Config(format!(
            "{} does not hold the planned trial: {}; not trusted (remove the folder to train it as planned)",
            path.display(),
            diff.join("; ")
        )))
    }

    /// How trial `k` stands, from its folder alone; nothing is written.
    pub fn state(&self, dir: &Path, k: usize) -> TrialState {
        let tdir = self.trial_dir(dir, k);
        let state = |status, reason: &str| TrialState {
            status,
            reason: reason.to_string(),
        };
        if let Err(e) = self.trial_config(k).and_then(|c| c.validate()) {
            return state(Status::Invalid, &e.to_string());
        }
        if let Err(e) = self.checked_config(dir, k) {
            return state(Status::Mismatch, &e.to_string());
        }
        let has = |f: &str| tdir.join(f).exists();
        if has(MODEL) {
            return state(Status::Done, "");
        }
        if let Ok(why) = std::fs::read_to_string(tdir.join(DIVERGED)) {
            return state(Status::Diverged, why.trim());
        }
        if let Some(holder) = lock_holder(&tdir) {
            return state(Status::Running, &holder);
        }
        if let Ok(why) = std::fs::read_to_string(tdir.join(FAILED)) {
            return state(Status::Failed, why.trim());
        }
        if has(CHECKPOINT) || has(METRICS) {
            return state(
                Status::Interrupted,
                "stopped before its end; run it again to continue",
            );
        }
        state(Status::Missing, "not started")
    }
}

/// Who holds a trial's run lock, if a live process does: `pid on host`. A lock of a
/// process on another machine cannot be checked from here and counts as held.
fn lock_holder(tdir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(tdir.join(LOCK)).ok()?;
    let text = text.trim();
    let mut parts = text.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let host = text.split(" on ").nth(1).unwrap_or("");
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() || host == here {
        crate::run::run_dir::process_alive(pid).then(|| format!("process {pid} on {here}"))
    } else {
        Some(format!("process {pid} on {host}"))
    }
}

/// Every setting that differs between two configs, by its dotted name (`lr`,
/// `model.layers.conv1.out_channels`), the thread count aside.
pub fn config_diff(expected: &TrainConfig, found: &TrainConfig) -> Vec<String> {
    let flat = |c: &TrainConfig| {
        let mut out = Vec::new();
        if let Ok(v) = toml::Value::try_from(c) {
            flatten("", &v, &mut out);
        }
        out.retain(|(k, _)| k != "threads");
        out
    };
    let (a, b) = (flat(expected), flat(found));
    let mut diff = Vec::new();
    for (k, v) in &a {
        match b.iter().find(|(kb, _)| kb == k) {
            Some((_, w)) if w == v => {}
            Some((_, w)) => diff.push(format!("{k} is {w} there, {v} in the plan")),
            None => diff.push(format!("{k} is missing there ({v} in the plan)")),
        }
    }
    for (k, w) in &b {
        if !a.iter().any(|(ka, _)| ka == k) {
            diff.push(format!("{k} is {w} there, not set in the plan"));
        }
    }
    diff
}

/// (dotted key, value) for every leaf; layers are named by their `name`.
fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&key(k), v, out);
            }
        }
        toml::Value::Array(items) if items.iter().all(|i| i.is_table()) && !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let name = item
                    .get("name")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string());
                flatten(&key(&name), item, out);
            }
        }
        // Settings are f32: shown as the f32 they are, 0.01 rather than 0.009999999776482582.
        toml::Value::Float(f) if (*f as f32) as f64 == *f => {
            out.push((prefix.to_string(), (*f as f32).to_string()))
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// What differs between two plans, in words.
fn plan_diff(old: &Plan, new: &Plan) -> Vec<String> {
    let mut diff = Vec::new();
    if old.grid != new.grid {
        diff.push(format!(
            "its grid is {} there, {} here",
            old.grid.join(" "),
            new.grid.join(" ")
        ));
    }
    for d in config_diff(&new.base, &old.base) {
        diff.push(d.replace(" in the plan", " here"));
    }
    diff
}
