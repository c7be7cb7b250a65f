//! Comparing two measurement JSONL files (e.g. gradlens against the transformers reference).
//!
//! Rule, with relative tolerance `rtol`: `loss`, `frobenius_norm`, `S_sum`, `S_max` within
//! `rtol·|expected|`; `M_mean`, `M_max`, `M_min` within `rtol·max(|M_max|, |M_min|)`; `S_min` within
//! `rtol·S_max` (both of the expected values); integers and strings exactly; the same parameters in
//! the same order. Fields absent from the expected line are not compared.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Read a JSONL file into its lines keyed by `index`.
pub fn read_jsonl_by_index(path: &Path) -> anyhow::Result<BTreeMap<u64, Value>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        let index = v
            .get("index")
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: line {} has no index", path.display(), i + 1))?;
        if out.insert(index, v).is_some() {
            anyhow::bail!(
                "{}: line {}: sample {index} appears a second time (two runs wrote to one file?)",
                path.display(),
                i + 1
            );
        }
    }
    Ok(out)
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Differences between one expected and one actual line (empty when they agree).
/// What a statistic's difference is measured against (see [`compare_line`]): the entries' scale
/// for `M_*`, `S_max` for `S_min`, the expected value itself otherwise.
fn stat_scale(stats: &Value, stat: &str, expected: f64) -> f64 {
    match stat {
        "M_mean" | "M_max" | "M_min" => num(stats, "M_max")
            .unwrap_or(0.0)
            .abs()
            .max(num(stats, "M_min").unwrap_or(0.0).abs()),
        "S_min" => num(stats, "S_max").unwrap_or(0.0).abs(),
        _ => expected.abs(),
    }
}

pub fn compare_line(expected: &Value, actual: &Value, rtol: f64) -> Vec<String> {
    let mut errs = Vec::new();
    let (Some(e), Some(a)) = (expected.as_object(), actual.as_object()) else {
        return vec!["not JSON objects".into()];
    };
    let e_params: Vec<&String> = e
        .iter()
        .filter(|(_, v)| v.is_object())
        .map(|(k, _)| k)
        .collect();
    let a_params: Vec<&String> = a
        .iter()
        .filter(|(_, v)| v.is_object())
        .map(|(k, _)| k)
        .collect();
    if e_params != a_params {
        errs.push(format!(
            "parameters differ: expected {e_params:?}, got {a_params:?}"
        ));
        return errs;
    }
    for (key, ev) in e {
        let Some(av) = a.get(key) else {
            errs.push(format!("{key}: missing"));
            continue;
        };
        match ev {
            Value::Object(es) => {
                for (stat, x) in es {
                    let (Some(x), Some(y)) = (x.as_f64(), av.get(stat).and_then(Value::as_f64))
                    else {
                        errs.push(format!("{key}.{stat}: missing or not a number"));
                        continue;
                    };
                    let tol = rtol * stat_scale(ev, stat, x);
                    // Written so that a NaN on either side fails.
                    let within = (x - y).abs() <= tol;
                    if !within {
                        errs.push(format!(
                            "{key}.{stat}: expected {x:e}, got {y:e} (|diff| {:e} > {tol:e})",
                            (x - y).abs()
                        ));
                    }
                }
            }
            Value::Number(n) if n.is_f64() => {
                let (x, y) = (n.as_f64().unwrap(), av.as_f64().unwrap_or(f64::NAN));
                let within = (x - y).abs() <= rtol * x.abs();
                if !within {
                    errs.push(format!("{key}: expected {x:e}, got {y:e}"));
                }
            }
            other => {
                if other != av {
                    errs.push(format!("{key}: expected {other}, got {av}"));
                }
            }
        }
    }
    errs
}

/// Compare two files: same indices, every line within tolerance. Returns the differences.
pub fn compare_files(expected: &Path, actual: &Path, rtol: f64) -> anyhow::Result<Vec<String>> {
    let e = read_jsonl_by_index(expected)?;
    let a = read_jsonl_by_index(actual)?;
    let mut errs = Vec::new();
    let ek: Vec<_> = e.keys().collect();
    let ak: Vec<_> = a.keys().collect();
    if ek != ak {
        errs.push(format!("indices differ: expected {ek:?}, got {ak:?}"));
    }
    for (i, ev) in &e {
        if let Some(av) = a.get(i) {
            errs.extend(
                compare_line(ev, av, rtol)
                    .into_iter()
                    .map(|m| format!("sample {i}: {m}")),
            );
        }
    }
    Ok(errs)
}

/// The smallest relative tolerance under which every number of `actual` agrees with `expected`
/// (the rule of [`compare_line`]): how far two runs are apart. `None` when the files' indices or
/// parameters differ.
pub fn max_deviation(expected: &Path, actual: &Path) -> anyhow::Result<Option<f64>> {
    let e = read_jsonl_by_index(expected)?;
    let a = read_jsonl_by_index(actual)?;
    if e.keys().ne(a.keys()) {
        return Ok(None);
    }
    let mut worst = 0.0f64;
    for (i, ev) in &e {
        let av = &a[i];
        let (Some(eo), Some(ao)) = (ev.as_object(), av.as_object()) else {
            return Ok(None);
        };
        for (key, x) in eo {
            let y = &ao.get(key);
            match (x, y) {
                (Value::Object(es), Some(Value::Object(as_))) => {
                    for (stat, xv) in es {
                        let (Some(p), Some(q)) =
                            (xv.as_f64(), as_.get(stat).and_then(Value::as_f64))
                        else {
                            return Ok(None);
                        };
                        let scale = stat_scale(x, stat, p);
                        if (p - q).abs() > 0.0 {
                            worst = worst.max((p - q).abs() / scale.max(f64::MIN_POSITIVE));
                        }
                    }
                }
                (Value::Number(n), Some(Value::Number(m))) if n.is_f64() => {
                    let (p, q) = (n.as_f64().unwrap_or(0.0), m.as_f64().unwrap_or(f64::NAN));
                    if (p - q).abs() > 0.0 || q.is_nan() {
                        worst = worst.max((p - q).abs() / p.abs().max(f64::MIN_POSITIVE));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Some(worst))
}
