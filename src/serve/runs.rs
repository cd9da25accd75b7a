//! The run folders under the served roots: found again as they appear, with what each
//! holds (status, epochs, best and test accuracy), and the lines appended to their logs
//! since last looked (so a page sees a running training live without re-reading files).
//! Read only: nothing here writes into a run folder, and nothing outside the roots is read.

use crate::run::config::TrainConfig;
use crate::run::metrics::EpochMetrics;
use crate::run::run_dir::{BEST, CHECKPOINT, CONFIG, DIVERGED, LOCK, METRICS, MODEL, STEPS};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How deep below a root run folders are looked for (a sweep's trials are two down).
const MAX_DEPTH: usize = 4;
/// Folders looked at per scan, at most: a root with a huge tree is cut short, not walked.
const MAX_FOLDERS: usize = 20_000;
/// The most bytes of a log read at once.
const MAX_READ: u64 = 16 << 20;

/// A run folder or a sweep folder, by the id the page uses: `<root index>/<path under it>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub id: String,
    pub dir: PathBuf,
}

/// Reads a regular file (not a link) of at most `MAX_READ` bytes inside a run folder.
pub fn read_plain(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_READ {
        return None;
    }
    std::fs::read(path).ok()
}

/// The last `max` bytes of a regular file, from the first whole line in them: a long run's
/// `steps.csv` shows its latest steps rather than nothing.
fn read_tail(path: &Path, max: u64) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    let start = meta.len().saturating_sub(max);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    Some(if start > 0 {
        text.split_once('\n')
            .map_or("", |(_, rest)| rest)
            .to_string()
    } else {
        text.into_owned()
    })
}

fn read_text(path: &Path) -> Option<String> {
    read_plain(path).and_then(|b| String::from_utf8(b).ok())
}

/// Every run folder (holding `config.toml` or `metrics.csv`) and sweep folder (holding
/// `sweep.csv` or a trial plan) under `roots`, without following links.
pub fn scan(roots: &[PathBuf]) -> (Vec<Entry>, Vec<Entry>) {
    let (mut runs, mut sweeps) = (Vec::new(), Vec::new());
    let mut budget = MAX_FOLDERS;
    for (r, root) in roots.iter().enumerate() {
        let mut stack = vec![(root.clone(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let id = if rel.is_empty() {
                r.to_string()
            } else {
                format!("{r}/{rel}")
            };
            let has = |f: &str| std::fs::symlink_metadata(dir.join(f)).is_ok_and(|m| m.is_file());
            if has(CONFIG) || has(METRICS) {
                runs.push(Entry {
                    id,
                    dir: dir.clone(),
                });
                continue;
            }
            if has("sweep.csv") || has("plan.toml") {
                sweeps.push(Entry {
                    id,
                    dir: dir.clone(),
                });
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                // Links are not followed: nothing outside the roots is ever reached.
                if !ft.is_dir() {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((e.path(), rel, depth + 1));
            }
        }
    }
    runs.sort();
    sweeps.sort();
    (runs, sweeps)
}

/// How a run stands, from what its folder holds.
pub fn status(dir: &Path, rows: &[EpochMetrics]) -> &'static str {
    let exists = |f: &str| std::fs::symlink_metadata(dir.join(f)).is_ok();
    if exists(DIVERGED) || rows.iter().any(|m| !m.train.mean_loss().is_finite()) {
        return "diverged";
    }
    if exists(MODEL) {
        return "finished";
    }
    let running = read_text(&dir.join(LOCK))
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
        .is_some_and(crate::run::run_dir::process_alive);
    if running {
        "running"
    } else if exists(CHECKPOINT) || !rows.is_empty() {
        "interrupted"
    } else {
        "new"
    }
}

/// The epochs of `metrics.csv` as JSON objects.
pub fn metrics_json(rows: &[EpochMetrics]) -> Vec<Value> {
    rows.iter().map(row_json).collect()
}

fn row_json(m: &EpochMetrics) -> Value {
    json!({
        "epoch": m.epoch,
        "iteration": m.iteration,
        "lr": m.lr,
        "train_loss": finite(m.train.mean_loss()),
        "train_correct": m.train.correct,
        "train_total": m.train.count,
        "val_loss": finite(m.val.mean_loss()),
        "val_correct": m.val.correct,
        "val_total": m.val.count,
        "seconds": m.seconds,
    })
}

/// JSON has no NaN: a diverged loss goes as null.
fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// The rows of `metrics.csv` in `dir`.
pub fn read_metrics(dir: &Path) -> Vec<EpochMetrics> {
    read_text(&dir.join(METRICS))
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(EpochMetrics::from_csv)
                .collect()
        })
        .unwrap_or_default()
}

/// (iteration, loss) rows of a `steps.csv` text.
fn parse_steps(text: &str) -> Vec<(u64, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let it = f.next()?.parse().ok()?;
            let loss: f64 = f.nth(1)?.parse().ok()?;
            loss.is_finite().then_some((it, loss))
        })
        .collect()
}

/// The per-step losses of `steps.csv` in `dir`, at most `keep` of them (every n-th).
pub fn read_steps(dir: &Path, keep: usize) -> Vec<(u64, f64)> {
    let rows = read_tail(&dir.join(STEPS), MAX_READ)
        .map(|t| parse_steps(&t))
        .unwrap_or_default();
    let every = rows.len().div_ceil(keep.max(1)).max(1);
    rows.into_iter().step_by(every).collect()
}

/// The run's config, when it has a readable one.
pub fn read_config(dir: &Path) -> Option<TrainConfig> {
    read_text(&dir.join(CONFIG)).and_then(|t| toml::from_str(&t).ok())
}

/// What the runs table shows of one run, from its epochs `rows` and `cfg`.
pub fn summary(e: &Entry, rows: &[EpochMetrics], cfg: Option<&TrainConfig>) -> Value {
    let best = rows.iter().filter(|m| m.val.count > 0).max_by(|a, b| {
        a.val
            .correct
            .cmp(&b.val.correct)
            .then(b.epoch.cmp(&a.epoch))
    });
    let test = model_note(&e.dir.join(MODEL), "convnet.test_accuracy");
    let name = e
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| e.id.clone());
    json!({
        "id": e.id,
        "name": name,
        "status": status(&e.dir, rows),
        "epochs": rows.len(),
        "epochs_total": cfg.map(|c| c.epochs),
        "model": cfg.map(|c| c.model.name.clone()),
        "dataset": cfg.map(|c| c.dataset.to_string()),
        "params": cfg.map(|c| json!({
            "lr": c.lr.to_string(),
            "batch_size": c.batch_size,
            "weight_decay": c.weight_decay.to_string(),
            "optimizer": format!("{:?}", c.optimizer).to_lowercase(),
            "schedule": format!("{:?}", c.schedule),
            "seed": c.seed,
        })),
        "best_val": best.map(|m| json!({"correct": m.val.correct, "total": m.val.count, "epoch": m.epoch})),
        "test": test,
        "seconds": rows.iter().map(|m| m.seconds).sum::<f64>(),
        "updated": std::fs::symlink_metadata(e.dir.join(METRICS))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        "has_model": std::fs::symlink_metadata(e.dir.join(MODEL)).is_ok(),
        "has_best": std::fs::symlink_metadata(e.dir.join(BEST)).is_ok(),
    })
}

/// A metadata value of a safetensors file, from its header alone (its tensors unread).
fn model_note(path: &Path, key: &str) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 1 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let header: Value = serde_json::from_slice(&header).ok()?;
    header["__metadata__"][key].as_str().map(str::to_string)
}

/// A sweep's table: its keys and each trial's values, status and best validation accuracy,
/// with the run id of the trial's folder when it is one.
pub fn sweep_json(e: &Entry, runs: &[Entry]) -> Value {
    let text = read_text(&e.dir.join("sweep.csv")).unwrap_or_default();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let status_at = header
        .iter()
        .position(|h| *h == "status")
        .unwrap_or(header.len());
    let keys: Vec<&str> = header.get(1..status_at).unwrap_or(&[]).to_vec();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (best_at, epoch_at) = (col("best_val_acc"), col("best_epoch"));
    let trials: Vec<Value> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let name = f.first().copied().unwrap_or("");
            let trial = runs.iter().find(|r| r.dir == e.dir.join(name));
            let run = trial.map(|r| r.id.clone());
            // The count behind the accuracy, from the trial's own log.
            let best_val = trial.and_then(|r| {
                let rows = read_metrics(&r.dir);
                let m = rows.iter().filter(|m| m.val.count > 0).max_by(|a, b| {
                    a.val
                        .correct
                        .cmp(&b.val.correct)
                        .then(b.epoch.cmp(&a.epoch))
                })?;
                Some(json!({"correct": m.val.correct, "total": m.val.count}))
            });
            json!({
                "best_val": best_val,
                "name": name,
                "values": f.get(1..status_at).unwrap_or(&[]),
                "status": f.get(status_at).copied().unwrap_or(""),
                "best_val_acc": best_at.and_then(|i| f.get(i)?.parse::<f64>().ok()),
                "best_epoch": epoch_at.and_then(|i| f.get(i)?.parse::<usize>().ok()),
                "run": run,
            })
        })
        .collect();
    // The axes' values in the order the grid gave them (first appearance).
    let mut axes: Vec<Vec<String>> = vec![Vec::new(); keys.len()];
    for t in &trials {
        for (a, v) in axes
            .iter_mut()
            .zip(t["values"].as_array().into_iter().flatten())
        {
            let v = v.as_str().unwrap_or("").to_string();
            if !a.contains(&v) {
                a.push(v);
            }
        }
    }
    let name = e
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    json!({"id": e.id, "name": name, "keys": keys, "axes": axes, "trials": trials})
}

/// Where the watcher stands in one log file: the bytes already read and an unfinished last
/// line.
#[derive(Default)]
struct Tail {
    offset: u64,
    partial: String,
    /// Whether the file was looked at before: the first look only catches up (a page
    /// reads what exists by itself), later ones are news. A file that did not exist at
    /// the first look is all news when it appears.
    seen: bool,
}

impl Tail {
    /// The complete lines appended since the last call, or `None` if the file shrank (a
    /// resume cut it back): then the whole log is to be read again, and this tail has
    /// caught up with it, so that only lines after that are news.
    fn new_lines(&mut self, path: &Path) -> Option<Vec<String>> {
        let meta = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file());
        let len = meta.map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            *self = Tail {
                seen: true,
                ..Tail::default()
            };
            self.new_lines(path);
            return None;
        }
        if len == self.offset {
            return Some(Vec::new());
        }
        let mut f = std::fs::File::open(path).ok()?;
        f.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut buf = Vec::new();
        f.take((len - self.offset).min(MAX_READ))
            .read_to_end(&mut buf)
            .ok()?;
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = lines.pop().unwrap_or_default();
        Some(lines)
    }
}

/// The watcher's memory of every run's logs, turned into events for the pages.
#[derive(Default)]
pub struct Watch {
    metrics: BTreeMap<String, Tail>,
    steps: BTreeMap<String, Tail>,
    /// Every run's epochs so far, grown from the lines appended.
    rows: BTreeMap<String, Vec<EpochMetrics>>,
    configs: BTreeMap<String, Option<TrainConfig>>,
    /// Every run's table row, by id.
    pub summaries: BTreeMap<String, Value>,
}

/// One thing a page should learn: the JSON of a server-sent event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub name: &'static str,
    pub data: Value,
}

impl Watch {
    /// What changed since the last call: runs that appeared, vanished or changed status, and
    /// lines appended to their `metrics.csv` and `steps.csv` (read from where the last look
    /// stopped; a log is read whole again only when a resume cut it back).
    pub fn poll(&mut self, runs: &[Entry]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut summaries = BTreeMap::new();
        for e in runs {
            let id = e.id.clone();
            for (file, name) in [(METRICS, "metrics"), (STEPS, "steps")] {
                let tails = if name == "metrics" {
                    &mut self.metrics
                } else {
                    &mut self.steps
                };
                let tail = tails.entry(id.clone()).or_default();
                let first = !tail.seen;
                tail.seen = true;
                let lines = tail.new_lines(&e.dir.join(file));
                if name == "metrics" {
                    let rows = self.rows.entry(id.clone()).or_default();
                    match &lines {
                        Some(l) => rows.extend(l.iter().filter_map(|l| EpochMetrics::from_csv(l))),
                        None => *rows = read_metrics(&e.dir),
                    }
                }
                match lines {
                    // The first look only sets the offset: a page reads what exists.
                    Some(_) if first => {}
                    Some(lines) if lines.is_empty() => {}
                    Some(lines) => {
                        let rows: Vec<Value> = if name == "metrics" {
                            lines
                                .iter()
                                .filter_map(|l| EpochMetrics::from_csv(l))
                                .map(|m| row_json(&m))
                                .collect()
                        } else {
                            parse_steps(&lines.join("\n"))
                                .into_iter()
                                .map(|(i, l)| json!([i, l]))
                                .collect()
                        };
                        if !rows.is_empty() {
                            events.push(Event {
                                name,
                                data: json!({"id": id, "rows": rows}),
                            });
                        }
                    }
                    None => events.push(Event {
                        name: "reset",
                        data: json!({"id": id}),
                    }),
                }
            }
            let cfg = self
                .configs
                .entry(id.clone())
                .or_insert_with(|| read_config(&e.dir));
            if cfg.is_none() {
                *cfg = read_config(&e.dir);
            }
            let rows = self.rows.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            summaries.insert(id, summary(e, rows, cfg.as_ref()));
        }
        for map in [&mut self.metrics, &mut self.steps] {
            map.retain(|id, _| summaries.contains_key(id));
        }
        self.rows.retain(|id, _| summaries.contains_key(id));
        self.configs.retain(|id, _| summaries.contains_key(id));
        if summaries != self.summaries {
            events.push(Event {
                name: "runs",
                data: json!({"count": summaries.len()}),
            });
            self.summaries = summaries;
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_tail_gives_whole_lines_once_and_starts_over_when_the_file_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.csv");
        let mut t = Tail::default();
        assert_eq!(t.new_lines(&path), Some(vec![]), "no file yet");
        append(&path, "iteration,epoch,loss,lr\n1,1,2.3");
        assert_eq!(t.new_lines(&path).unwrap(), ["iteration,epoch,loss,lr"]);
        assert_eq!(t.new_lines(&path), Some(vec![]), "half a line waits");
        append(&path, ",0.1\n2,1,2.2,0.1\n");
        assert_eq!(t.new_lines(&path).unwrap(), ["1,1,2.3,0.1", "2,1,2.2,0.1"]);
        std::fs::write(&path, "iteration,epoch,loss,lr\n1,1,2.3,0.1\n").unwrap();
        assert_eq!(t.new_lines(&path), None, "cut back");
        assert_eq!(t.new_lines(&path), Some(vec![]), "caught up after the cut");
        append(&path, "2,1,2.25,0.1\n");
        assert_eq!(t.new_lines(&path).unwrap(), ["2,1,2.25,0.1"]);
    }

    #[test]
    fn a_long_log_is_read_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.csv");
        let mut text = String::from("iteration,epoch,loss,lr\n");
        for i in 1..=1000 {
            text.push_str(&format!("{i},1,0.5,0.1\n"));
        }
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_tail(&path, 1 << 20).unwrap(), text);
        let tail = read_tail(&path, 100).unwrap();
        assert!(
            tail.len() <= 100 && tail.ends_with("1000,1,0.5,0.1\n"),
            "{tail}"
        );
        assert!(
            tail.lines().all(|l| l.split(',').count() == 4),
            "whole lines only"
        );
        let steps = parse_steps(&tail);
        assert_eq!(steps.last(), Some(&(1000, 0.5)));
    }

    #[test]
    fn the_watcher_reports_news_not_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("r");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join(STEPS), "iteration,epoch,loss,lr\n1,1,2.3,0.1\n").unwrap();
        let runs = vec![Entry {
            id: "0/r".into(),
            dir: run.clone(),
        }];
        let mut w = Watch::default();
        let names = |ev: &[Event]| ev.iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(&w.poll(&runs)), ["runs"], "a new run, no old lines");
        assert!(w.poll(&runs).is_empty(), "nothing changed");
        append(&run.join(STEPS), "2,1,2.2,0.1\n");
        let ev = w.poll(&runs);
        assert_eq!(names(&ev), ["steps"]);
        assert_eq!(ev[0].data["rows"], json!([[2, 2.2]]));
        // A metrics.csv that appears later is news from its first line.
        let header = crate::run::metrics::HEADER;
        let row = "1,10,0.1,0.5,0.8,8,10,0.6,0.7,7,10,1.0,10.0";
        append(&run.join(METRICS), &format!("{header}\n{row}\n"));
        let ev = w.poll(&runs);
        assert_eq!(
            names(&ev),
            ["metrics", "runs"],
            "the epoch, and the table row changed"
        );
        assert_eq!(ev[0].data["rows"][0]["epoch"], 1);
        assert_eq!(w.summaries["0/r"]["epochs"], 1);
        assert_eq!(names(&w.poll(&[])), ["runs"], "the run vanished");
        assert!(w.summaries.is_empty());
    }
}
