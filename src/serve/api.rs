//! The JSON the page asks for: runs, their logs, sweeps, models, evaluations, test images.

use super::http::{Query, Reply};
use super::runs::{self, Entry};
use super::State;
use crate::data::DatasetKind;
use crate::model::Model;
use crate::nn::loss::{argmax, softmax};
use crate::nn::{LayerKind, ParamRole};
use crate::report::table::layer_rows;
use crate::run::run_dir::{BEST, MODEL};
use crate::Error;
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Base64 of the bytes (compact numbers for the page).
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Base64 of little-endian f32 values (a `Float32Array` in the page).
pub fn b64_f32(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    b64(&bytes)
}

/// How an error reads on the page: a broken model file is the file's fault (422), an
/// unknown id the request's (404).
fn failed(e: Error) -> Reply {
    let status = match e {
        Error::Model { .. } | Error::Spec(_) | Error::Data { .. } | Error::Fetch(_) => 422,
        Error::Config(_) => 400,
        _ => 500,
    };
    Reply::error(status, e.to_string())
}

fn run_of(state: &State, q: &Query) -> Result<Entry, Reply> {
    let id = q.get("run")?;
    state
        .run(id)
        .ok_or_else(|| Reply::error(404, format!("no run `{id}` in the served folders")))
}

pub fn runs(state: &State) -> Reply {
    let (runs, sweeps) = state.found.lock().map(|f| f.clone()).unwrap_or_default();
    let mut summaries = state
        .summaries
        .lock()
        .map(|s| s.clone())
        .unwrap_or(Value::Null);
    if summaries.is_null() {
        // Before the watcher's first look.
        summaries = runs
            .iter()
            .map(|e| {
                let rows = runs::read_metrics(&e.dir);
                runs::summary(e, &rows, runs::read_config(&e.dir).as_ref())
            })
            .collect();
    }
    let sweeps: Vec<Value> = sweeps
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "name": s.dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            })
        })
        .collect();
    let roots: Vec<String> = state
        .roots
        .iter()
        .map(|r| r.display().to_string())
        .collect();
    Reply::json(
        200,
        &json!({"roots": roots, "runs": summaries, "sweeps": sweeps}),
    )
}

pub fn metrics(state: &State, q: &Query) -> Reply {
    match run_of(state, q) {
        Ok(e) => Reply::json(
            200,
            &json!({"rows": runs::metrics_json(&runs::read_metrics(&e.dir))}),
        ),
        Err(r) => r,
    }
}

pub fn steps(state: &State, q: &Query) -> Reply {
    match run_of(state, q) {
        Ok(e) => {
            let rows: Vec<Value> = runs::read_steps(&e.dir, 5000)
                .into_iter()
                .map(|(i, l)| json!([i, l]))
                .collect();
            Reply::json(200, &json!({"rows": rows}))
        }
        Err(r) => r,
    }
}

pub fn sweep(state: &State, q: &Query) -> Reply {
    let id = match q.get("id") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Some(e) = state.sweep(id) else {
        return Reply::error(404, format!("no sweep `{id}` in the served folders"));
    };
    let runs = state.found.lock().map(|f| f.0.clone()).unwrap_or_default();
    Reply::json(200, &runs::sweep_json(&e, &runs))
}

/// The model file a request names: a run's `model.safetensors` or `best.safetensors`.
fn model_path(state: &State, q: &Query) -> Result<PathBuf, Reply> {
    let e = run_of(state, q)?;
    let file = match q.get_or("file", "model") {
        "model" => MODEL,
        "best" => BEST,
        other => {
            return Err(Reply::error(
                400,
                format!("`file` is model or best, not `{other}`"),
            ))
        }
    };
    Ok(e.dir.join(file))
}

pub fn loaded(state: &State, q: &Query) -> Result<(PathBuf, Arc<Mutex<Model>>), Reply> {
    let path = model_path(state, q)?;
    let model = state.model(&path).map_err(failed)?;
    Ok((path, model))
}

/// The layer table, the classes and every conv layer's kernels.
pub fn model(state: &State, q: &Query) -> Reply {
    let (path, model) = match loaded(state, q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Ok(m) = model.lock() else {
        return Reply::error(500, "the model is unavailable");
    };
    let table = match layer_rows(m.spec()) {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let kernels: Vec<Value> = m
        .network()
        .layers()
        .filter(|l| l.kind() == LayerKind::Conv2d)
        .filter_map(|l| {
            let params = l.params();
            let w = params.iter().find(|p| p.role == ParamRole::Weight)?;
            let bias = params
                .iter()
                .find(|p| p.role == ParamRole::Bias)
                .map(|b| b64_f32(&b.value));
            Some(json!({"layer": l.name(), "shape": w.shape, "data": b64_f32(&w.value), "bias": bias}))
        })
        .collect();
    let layers: Vec<Value> = m
        .network()
        .resolved()
        .iter()
        .map(|l| json!({"name": l.name, "kind": l.kind.name(), "output": l.output}))
        .collect();
    Reply::json(
        200,
        &json!({
            "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "name": m.spec().name,
            "input": m.spec().input,
            "classes": m.class_names(),
            "dataset": m.dataset().map(|d| d.to_string()),
            "table": table,
            "layers": layers,
            "kernels": kernels,
        }),
    )
}

/// Test-set accuracy, the confusion matrix with the images behind each cell, and the most
/// confident mistakes; computed once per model file version.
pub fn evaluation(state: &State, q: &Query) -> Reply {
    let (path, model) = match loaded(state, q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let modified = std::fs::metadata(&path).and_then(|m| m.modified());
    let key = modified.ok().map(|t| (path.clone(), t));
    if let Some(k) = &key {
        if let Some(v) = state
            .evaluations
            .lock()
            .ok()
            .and_then(|c| c.get(k).cloned())
        {
            return Reply::json(200, &v);
        }
    }
    let Ok(mut m) = model.lock() else {
        return Reply::error(500, "the model is unavailable");
    };
    let kind = m.dataset().unwrap_or(DatasetKind::Mnist);
    let splits = match state.splits(kind) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    if let Err(e) = crate::run::trainer::check_data_fits(m.spec(), &splits) {
        return failed(e);
    }
    let k = m.class_names().len();
    let (mut confusion, mut cells) = (vec![vec![0usize; k]; k], vec![vec![Vec::new(); k]; k]);
    let mut mistakes: Vec<(f32, usize, usize, usize)> = Vec::new();
    let ds = &splits.test;
    let stats = crate::run::trainer::evaluate(m.network_mut(), ds, 1000, |i, z| {
        let (t, p) = (ds.labels[i] as usize, argmax(z));
        confusion[t][p] += 1;
        if cells[t][p].len() < 48 {
            cells[t][p].push(i);
        }
        if t != p {
            mistakes.push((softmax(z)[p], i, t, p));
        }
    });
    mistakes.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    mistakes.truncate(24);
    let v = Arc::new(json!({
        "dataset": kind.to_string(),
        "classes": m.class_names(),
        "correct": stats.correct,
        "total": stats.count,
        "loss": stats.mean_loss(),
        "confusion": confusion,
        "cells": cells,
        "mistakes": mistakes.iter().map(|&(prob, index, label, predicted)| {
            json!({"index": index, "label": label, "predicted": predicted, "probability": prob})
        }).collect::<Vec<_>>(),
    }));
    if let (Some(k), Ok(mut c)) = (key, state.evaluations.lock()) {
        c.insert(k, v.clone());
    }
    Reply::json(200, &v)
}

/// Test images by index: their pixels (base64, row-major) and labels.
pub fn images(state: &State, q: &Query) -> Reply {
    let kind: DatasetKind = match q.get_or("dataset", "mnist").parse() {
        Ok(k) => k,
        Err(e) => return Reply::error(400, e),
    };
    let indices: Result<Vec<usize>, _> = q
        .get_or("indices", "")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect();
    let Ok(indices) = indices else {
        return Reply::error(400, "`indices` is a comma-separated list of whole numbers");
    };
    if indices.len() > 200 {
        return Reply::error(400, "at most 200 images at once");
    }
    let splits = match state.splits(kind) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let ds = &splits.test;
    if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
        return Reply::error(
            400,
            format!("image {bad} is out of range (0..{})", ds.len()),
        );
    }
    let list: Vec<Value> = indices
        .iter()
        .map(|&i| json!({"index": i, "label": ds.labels[i], "pixels": b64(ds.image(i))}))
        .collect();
    Reply::json(
        200,
        &json!({"rows": ds.rows, "cols": ds.cols, "images": list}),
    )
}
