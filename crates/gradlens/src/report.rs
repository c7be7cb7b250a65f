//! Reading measurement JSONL (gradlens' or the paper's own script's) into per-layer curves, and
//! the paper's mean absolute difference (MAD) between consecutive layers.

use serde_json::Value;
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

/// Replace the non-JSON tokens Python's json.dumps writes (NaN, Infinity, -Infinity) by null,
/// outside strings.
fn sanitize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_str = false;
    let mut escaped = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        let rest = &line[i..];
        if c == '"' {
            in_str = true;
            out.push(c);
            i += 1;
        } else if rest.starts_with("NaN") {
            out.push_str("null");
            i += 3;
        } else if rest.starts_with("-Infinity") {
            out.push_str("null");
            i += 9;
        } else if rest.starts_with("Infinity") {
            out.push_str("null");
            i += 8;
        } else {
            // copy one UTF-8 character
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Parse one JSONL line into a row (`None` for lines that are not measurements).
pub fn parse_row(line: &str) -> Result<Row, String> {
    let v: Value = serde_json::from_str(&sanitize(line)).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let mut params = BTreeMap::new();
    for (k, val) in obj {
        if let Value::Object(stats) = val {
            let s = stats
                .iter()
                .map(|(sk, sv)| (sk.clone(), sv.as_f64()))
                .collect();
            params.insert(k.clone(), s);
        }
    }
    Ok(Row {
        loss: obj.get("loss").and_then(Value::as_f64),
        params,
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
    /// S_sum / loss.
    SSumOverLoss,
}

impl Statistic {
    pub const ALL: [Statistic; 4] = [
        Statistic::SSum,
        Statistic::SRatio,
        Statistic::FrobeniusNorm,
        Statistic::SSumOverLoss,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Statistic::SSum => "S_sum",
            Statistic::SRatio => "S_ratio",
            Statistic::FrobeniusNorm => "frobenius_norm",
            Statistic::SSumOverLoss => "S_sum_over_loss",
        }
    }

    pub fn value(self, stats: &BTreeMap<String, Option<f64>>, loss: Option<f64>) -> Option<f64> {
        let get = |k: &str| stats.get(k).copied().flatten();
        match self {
            Statistic::SSum => get("S_sum"),
            Statistic::SRatio => Some(get("S_max")? / get("S_sum")?),
            Statistic::FrobeniusNorm => get("frobenius_norm"),
            Statistic::SSumOverLoss => Some(get("S_sum")? / loss?),
        }
    }
}

/// Per-layer curves of a statistic: projection → value per layer (mean over the kept samples),
/// and the number of samples kept. A sample with any NaN (null) in what the curves use, or a
/// missing loss, is dropped, as the paper's scripts do.
pub fn curves(rows: &[Row], stat: Statistic) -> (BTreeMap<String, Vec<f64>>, usize) {
    let mut sums: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut kept = 0usize;
    for row in rows {
        let Some(loss) = row.loss.filter(|l| l.is_finite()) else {
            continue;
        };
        let mut vals = Vec::new();
        let mut ok = true;
        for (name, stats) in &row.params {
            let Some((layer, proj)) = layer_and_projection(name) else {
                continue;
            };
            match stat.value(stats, Some(loss)) {
                Some(v) if v.is_finite() => vals.push((proj, layer, v)),
                _ => ok = false,
            }
        }
        if !ok || vals.is_empty() {
            continue;
        }
        kept += 1;
        for (proj, layer, v) in vals {
            let c = sums.entry(proj).or_default();
            if c.len() <= layer {
                c.resize(layer + 1, 0.0);
            }
            c[layer] += v;
        }
    }
    for c in sums.values_mut() {
        for v in c.iter_mut() {
            *v /= kept.max(1) as f64;
        }
    }
    (sums, kept)
}

/// The paper's MAD of a curve: mean over i of |c[i+1] − c[i]| (0 for fewer than two layers).
pub fn mad(curve: &[f64]) -> f64 {
    if curve.len() < 2 {
        return 0.0;
    }
    curve.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (curve.len() - 1) as f64
}
