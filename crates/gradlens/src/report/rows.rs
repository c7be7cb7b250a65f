//! Reading measurement JSONL (gradlens' or the paper's own script's) into per-layer curves, and
//! the paper's mean absolute difference (MAD) between consecutive layers.

use crate::measure::line::{ReadLine, ReadStats};
use std::collections::BTreeMap;
use std::path::Path;

/// One measured sample: its loss and, per parameter name, its statistics.
#[derive(Debug, Clone)]
pub struct Row {
    pub loss: Option<f64>,
    pub params: BTreeMap<String, BTreeMap<String, Option<f64>>>,
}

/// What reading a file found besides its rows.
#[derive(Debug, Clone, Default)]
pub struct ReadNotes {
    /// Lines that could not be parsed (e.g. a truncated last line), with their numbers.
    pub bad_lines: Vec<(usize, String)>,
}

/// Parse one JSONL line into a row (its loss and, per weight, its statistics).
pub fn parse_row(line: &str) -> Result<Row, String> {
    let line = ReadLine::parse(line)?;
    Ok(Row {
        loss: line.loss,
        params: line
            .weights
            .into_iter()
            .filter_map(|(name, s)| match s {
                ReadStats::Stats(stats) => Some((name, stats)),
                ReadStats::Other => None,
            })
            .collect(),
    })
}

/// Read every row of a JSONL file; unparsable lines are reported in the notes, not fatal.
pub fn read_rows(path: &Path) -> anyhow::Result<(Vec<Row>, ReadNotes)> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut rows = Vec::new();
    let mut notes = ReadNotes::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_row(line) {
            Ok(r) => rows.push(r),
            Err(e) => notes.bad_lines.push((i + 1, e)),
        }
    }
    Ok((rows, notes))
}

/// `model.layers.7.self_attn.q_proj.weight` → (7, `q_proj`); `…layers.3.mlp.up_proj.weight` →
/// (3, `mlp.up_proj`).
pub fn layer_and_projection(name: &str) -> Option<(usize, String)> {
    let idx = name.find("layers.")?;
    let rest = &name[idx + "layers.".len()..];
    let dot = rest.find('.')?;
    let layer: usize = rest[..dot].parse().ok()?;
    let tail = rest[dot + 1..].trim_end_matches(".weight");
    let proj = tail.strip_prefix("self_attn.").unwrap_or(tail);
    Some((layer, proj.to_string()))
}

/// A per-sample statistic of one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Statistic {
    /// Nuclear norm (sum of singular values).
    SSum,
    /// S_max / S_sum.
    SRatio,
    FrobeniusNorm,
    /// S_sum / loss (the paper's "S_sum_regularized").
    SSumOverLoss,
    /// exp(entropy of σ / Σσ) (arXiv 2504.10766).
    EffectiveRank,
    /// Σσ² / σ_max².
    StableRank,
}

impl Statistic {
    pub const ALL: [Statistic; 6] = [
        Statistic::SSum,
        Statistic::SRatio,
        Statistic::FrobeniusNorm,
        Statistic::SSumOverLoss,
        Statistic::EffectiveRank,
        Statistic::StableRank,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Statistic::SSum => "S_sum",
            Statistic::SRatio => "S_ratio",
            Statistic::FrobeniusNorm => "frobenius_norm",
            Statistic::SSumOverLoss => "S_sum_over_loss",
            Statistic::EffectiveRank => "effective_rank",
            Statistic::StableRank => "stable_rank",
        }
    }

    /// Axis label.
    pub fn label(self) -> &'static str {
        match self {
            Statistic::SSum => "nuclear norm (S_sum)",
            Statistic::SRatio => "S_max / S_sum",
            Statistic::FrobeniusNorm => "Frobenius norm",
            Statistic::SSumOverLoss => "S_sum / loss",
            Statistic::EffectiveRank => "effective rank",
            Statistic::StableRank => "stable rank",
        }
    }

    /// The value of one parameter of one sample; `None` when absent or NaN. A zero S_sum gives a
    /// ratio of 0 (as the paper's script does on ZeroDivisionError).
    pub fn value(self, stats: &BTreeMap<String, Option<f64>>, loss: Option<f64>) -> Option<f64> {
        let get = |k: &str| stats.get(k).copied().flatten();
        let ratio = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
        match self {
            Statistic::SSum => get("S_sum"),
            Statistic::SRatio => Some(ratio(get("S_max")?, get("S_sum")?)),
            Statistic::FrobeniusNorm => get("frobenius_norm"),
            Statistic::SSumOverLoss => Some(ratio(get("S_sum")?, loss?)),
            Statistic::EffectiveRank => get("effective_rank"),
            Statistic::StableRank => get("stable_rank"),
        }
    }
}

/// A curve: per layer, the mean over the samples kept for this projection.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Curve {
    pub values: Vec<f64>,
    /// Samples kept (those with every layer's value present and not NaN).
    pub n: usize,
}

/// Per-layer curves of a statistic per projection (values only) and the largest sample count.
pub fn curves(rows: &[Row], stat: Statistic) -> (BTreeMap<String, Vec<f64>>, usize) {
    let c = curves_per_projection(rows, stat);
    let n = c.values().map(|c| c.n).max().unwrap_or(0);
    (c.into_iter().map(|(k, v)| (k, v.values)).collect(), n)
}

/// The layer count of a row (1 + the highest layer index among its parameters).
pub fn layer_count(row: &Row) -> usize {
    row.params
        .keys()
        .filter_map(|n| layer_and_projection(n))
        .map(|(l, _)| l + 1)
        .max()
        .unwrap_or(0)
}

/// Per-layer curves of a statistic, per projection (`q_proj`, …). As in the paper's scripts, a
/// sample is dropped from a projection's curve when any of its layers is NaN (or absent),
/// independently for each projection.
pub fn curves_per_projection(rows: &[Row], stat: Statistic) -> BTreeMap<String, Curve> {
    let layers = rows.iter().map(layer_count).max().unwrap_or(0);
    let mut projections = std::collections::BTreeSet::new();
    for row in rows {
        for n in row.params.keys() {
            if let Some((_, p)) = layer_and_projection(n) {
                projections.insert(p);
            }
        }
    }
    let mut per: BTreeMap<String, (Vec<f64>, usize)> = BTreeMap::new();
    for row in rows {
        let mut by_proj: BTreeMap<&str, Vec<Option<f64>>> = projections
            .iter()
            .map(|p| (p.as_str(), vec![None; layers]))
            .collect();
        for (name, stats) in &row.params {
            let Some((layer, proj)) = layer_and_projection(name) else {
                continue;
            };
            if let Some(v) = by_proj.get_mut(proj.as_str()) {
                v[layer] = stat.value(stats, row.loss).filter(|x| !x.is_nan());
            }
        }
        for (proj, vals) in by_proj {
            if vals.iter().all(Option::is_some) {
                let e = per
                    .entry(proj.to_string())
                    .or_insert_with(|| (vec![0.0; layers], 0));
                for (acc, v) in e.0.iter_mut().zip(&vals) {
                    *acc += v.unwrap();
                }
                e.1 += 1;
            }
        }
    }
    per.into_iter()
        .map(|(p, (sum, n))| {
            let values = sum.into_iter().map(|x| x / n as f64).collect();
            (p, Curve { values, n })
        })
        .collect()
}

/// Layer segments for the early / middle / late MADs and the rule used: the paper's splits for
/// its depths (26, 28, 32, 42 layers), else quarters: `[0, round(L/4))`, `[round(L/4),
/// round(3L/4))`, the rest.
pub fn segments(layers: usize) -> ([std::ops::Range<usize>; 3], &'static str) {
    let split = |a: usize, b: usize| [0..a, a..b, b..layers];
    match layers {
        26 => (split(7, 20), "paper"),
        28 => (split(7, 21), "paper"),
        32 => (split(10, 20), "paper"),
        42 => (split(12, 30), "paper"),
        l => {
            let a = ((l as f64) / 4.0).round() as usize;
            let b = ((3.0 * l as f64) / 4.0).round() as usize;
            (split(a.min(l), b.min(l)), "quarters")
        }
    }
}

/// The MADs of a curve: early, middle, late, all, and the segment rule. A part of fewer than two
/// layers has no MAD: NaN (reports show "n/a"), as has a curve of fewer than two layers.
pub fn mad_segments(curve: &[f64]) -> ([f64; 4], &'static str) {
    let ([a, b, c], rule) = segments(curve.len());
    let part = |r: std::ops::Range<usize>| {
        if r.len() < 2 {
            f64::NAN
        } else {
            mad(&curve[r])
        }
    };
    ([part(a), part(b), part(c), part(0..curve.len())], rule)
}

/// The paper's MAD of a curve: mean over i of |c[i+1] − c[i]| (0 for fewer than two layers).
pub fn mad(curve: &[f64]) -> f64 {
    if curve.len() < 2 {
        return 0.0;
    }
    curve.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (curve.len() - 1) as f64
}
