//! The layer table of a model: output shapes, kernels, parameters and multiply-adds, as
//! `convnet show` prints it and a report would contain it.

use crate::spec::ModelSpec;
use crate::tensor::ShapeDisplay;
use crate::Error;

/// `1234567` -> `1,234,567`.
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1 epoch", "3 epochs": a count and its noun, plural unless the count is one.
pub fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The table's rows: a header, the input, one row per layer, the total.
pub fn layer_rows(spec: &ModelSpec) -> Result<Vec<[String; 6]>, Error> {
    let layers = spec.resolve()?;
    let blank_if_zero = |n: usize| {
        if n > 0 {
            group_digits(n)
        } else {
            String::new()
        }
    };
    let mut rows = vec![
        ["layer", "type", "output", "kernel", "params", "mult-adds"].map(String::from),
        [
            "input".into(),
            String::new(),
            ShapeDisplay(&spec.input).to_string(),
            String::new(),
            String::new(),
            String::new(),
        ],
    ];
    for l in &layers {
        rows.push([
            l.name.clone(),
            l.kind.to_string(),
            ShapeDisplay(&l.output).to_string(),
            l.geometry(),
            blank_if_zero(l.param_count()),
            blank_if_zero(l.macs()),
        ]);
    }
    rows.push([
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        group_digits(layers.iter().map(|l| l.param_count()).sum()),
        group_digits(layers.iter().map(|l| l.macs()).sum()),
    ]);
    Ok(rows)
}

/// The layer table as aligned text, numbers right-aligned.
pub fn layer_table(spec: &ModelSpec) -> Result<String, Error> {
    let rows = layer_rows(spec)?;
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c >= 4 {
                    format!("{v:>w$}", w = widths[c])
                } else {
                    format!("{v:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 || i == rows.len() - 2 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 10));
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::counted;

    #[test]
    fn counts_take_the_plural_unless_one() {
        assert_eq!(counted(1, "epoch"), "1 epoch");
        assert_eq!(counted(0, "epoch"), "0 epochs");
        assert_eq!(counted(15, "epoch"), "15 epochs");
    }
}
