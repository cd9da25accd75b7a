//! The evaluation report: accuracy with counts, per-class precision / recall / F1, the
//! confusion matrix, and the most confidently wrong samples.

use crate::data::Dataset;
use crate::engine::Network;
use crate::nn::loss::{argmax, softmax, BatchStats};
use crate::run::metrics::format_count;
use crate::run::trainer::evaluate;
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Samples of this class.
    pub support: usize,
}

/// A misclassified sample.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Mistake {
    pub index: usize,
    pub label: usize,
    pub predicted: usize,
    /// Probability the network gave its (wrong) prediction.
    pub probability: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub classes: Vec<String>,
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
    pub loss: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// The most confident mistakes, most confident first.
    pub most_confident_mistakes: Vec<Mistake>,
}

/// Evaluates `net` on `ds` and builds the report, keeping the `n_mistakes` most confident
/// mistakes.
pub fn evaluate_report(
    net: &mut Network,
    ds: &Dataset,
    batch: usize,
    n_mistakes: usize,
) -> EvalReport {
    let k = net.classes();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut mistakes = Vec::new();
    let stats: BatchStats = evaluate(net, ds, batch, |i, z| {
        let (t, p) = (ds.labels[i] as usize, argmax(z));
        confusion[t][p] += 1;
        if t != p {
            mistakes.push(Mistake {
                index: i,
                label: t,
                predicted: p,
                probability: softmax(z)[p],
            });
        }
    });
    mistakes.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(a.index.cmp(&b.index))
    });
    mistakes.truncate(n_mistakes);
    let mut classes = ds.class_names.clone();
    classes.resize_with(k, || "?".into());
    let per_class = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: classes[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    EvalReport {
        classes,
        correct: stats.correct,
        total: stats.count,
        accuracy: stats.accuracy(),
        loss: stats.mean_loss(),
        per_class,
        confusion,
        most_confident_mistakes: mistakes,
    }
}

impl EvalReport {
    pub fn summary(&self) -> String {
        format!(
            "accuracy {}, loss {:.4}",
            format_count(self.correct, self.total),
            self.loss
        )
    }

    /// Per-class precision, recall and F1 as an aligned table.
    pub fn per_class_table(&self) -> String {
        let w = self
            .classes
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(5)
            .max(9);
        let mut s = format!(
            "{:<w$}  {:>9}  {:>6}  {:>6}  {:>7}\n",
            "class", "precision", "recall", "F1", "support"
        );
        for m in &self.per_class {
            s.push_str(&format!(
                "{:<w$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n",
                m.class, m.precision, m.recall, m.f1, m.support
            ));
        }
        let n = self.per_class.len().max(1) as f64;
        let avg = |f: fn(&ClassMetrics) -> f64| self.per_class.iter().map(f).sum::<f64>() / n;
        s.push_str(&format!(
            "{:<w$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n",
            "macro avg",
            avg(|m| m.precision),
            avg(|m| m.recall),
            avg(|m| m.f1),
            self.total
        ));
        s
    }

    /// The confusion matrix as an aligned table: rows are true classes, columns predictions.
    pub fn confusion_table(&self) -> String {
        let short: Vec<String> = self
            .classes
            .iter()
            .map(|c| c.chars().take(7).collect())
            .collect();
        let cw = self
            .confusion
            .iter()
            .flatten()
            .map(|v| v.to_string().len())
            .chain(short.iter().map(|c| c.len()))
            .max()
            .unwrap_or(1);
        let rw = short.iter().map(|c| c.len()).max().unwrap_or(4).max(10);
        let mut s = format!("{:<rw$} predicted →\n", "true ↓");
        s.push_str(&format!("{:<rw$}", ""));
        for c in &short {
            s.push_str(&format!(" {c:>cw$}"));
        }
        s.push('\n');
        for (t, row) in self.confusion.iter().enumerate() {
            s.push_str(&format!("{:<rw$}", short[t]));
            for v in row {
                s.push_str(&format!(" {v:>cw$}"));
            }
            s.push('\n');
        }
        s
    }
}
