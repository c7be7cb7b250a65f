//! The line of one measured sample in a measurement JSONL: the paper's format (instruction, output,
//! loss, then per measured weight its statistics under the checkpoint's parameter name) with
//! gradlens' record index and token counts. One type for the writer ([`crate::measure::Measurer`]),
//! `per_sample.jsonl` of a training run ([`crate::train::records::PerSampleLine`]) and the readers
//! ([`crate::report::rows`], which also read the paper's own files: [`ReadLine`]).

use crate::spectra::stats::GradStats;
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// One measured sample. `S`: a weight's statistics as written ([`GradStats`]) or as read
/// ([`ReadStats`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleLine<S = GradStats> {
    /// The record's index in the data file (gradlens writes it; the paper's files have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The record's instruction (with its input, as the model saw it).
    #[serde(default)]
    pub instruction: String,
    #[serde(default)]
    pub output: String,
    /// The mean loss over the response tokens (`None` where the paper's script wrote NaN).
    #[serde(default)]
    pub loss: Option<f64>,
    /// Tokens of the sample (after truncation to max_length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_tokens: Option<usize>,
    /// Tokens that carry the loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_loss_tokens: Option<usize>,
    /// Per measured weight (checkpoint name, checkpoint order): its statistics.
    #[serde(flatten)]
    pub weights: IndexMap<String, S>,
}

/// One line of `<out>.spectrum.jsonl` (`grads --save-spectrum`): a sample's singular values per
/// measured weight, descending, those above 1e-12·σ_max.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpectrumLine {
    pub index: usize,
    #[serde(flatten)]
    pub weights: IndexMap<String, Vec<f64>>,
}

/// A line as a reader takes it.
pub type ReadLine = SampleLine<ReadStats>;

/// A weight's statistics as a reader takes them, from gradlens' files or the paper's: every number
/// under its name (`None` where the paper's script wrote NaN). A value of the line that is not an
/// object is not a weight's: `Other`.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadStats {
    Stats(BTreeMap<String, Option<f64>>),
    Other,
}

impl<'de> Deserialize<'de> for ReadStats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Object(stats) => {
                ReadStats::Stats(stats.into_iter().map(|(k, v)| (k, v.as_f64())).collect())
            }
            _ => ReadStats::Other,
        })
    }
}

impl ReadLine {
    /// Parse one JSONL line (NaN and ±Infinity, which Python's json.dumps writes, read as null).
    pub fn parse(line: &str) -> Result<Self, String> {
        serde_json::from_str(&sanitize(line)).map_err(|e| e.to_string())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_lines_read_with_nan_as_none() {
        let l = ReadLine::parse(
            r#"{"instruction": "q", "output": "a", "loss": NaN, "w": {"S_sum": Infinity, "S_max": 1.5}, "note": "x"}"#,
        )
        .unwrap();
        assert_eq!((l.index, l.loss, l.n_tokens), (None, None, None));
        assert_eq!(
            l.weights["w"],
            ReadStats::Stats(BTreeMap::from([
                ("S_max".to_string(), Some(1.5)),
                ("S_sum".to_string(), None)
            ]))
        );
        assert_eq!(l.weights["note"], ReadStats::Other);
    }

    #[test]
    fn a_written_line_has_the_papers_key_order() {
        let s = GradStats {
            m_mean: 0.0,
            m_max: 1.0,
            m_min: -1.0,
            frobenius_norm: 2.0,
            s_sum: 3.0,
            s_max: 2.0,
            s_min: 0.5,
            effective_rank: 1.5,
            stable_rank: 1.2,
        };
        let line = SampleLine {
            index: Some(3),
            instruction: "i".into(),
            output: "o".into(),
            loss: Some(0.5),
            n_tokens: Some(9),
            n_loss_tokens: Some(4),
            weights: IndexMap::from([("z.weight".to_string(), s), ("a.weight".to_string(), s)]),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(
            text.starts_with(r#"{"index":3,"instruction":"i","output":"o","loss":0.5,"n_tokens":9,"n_loss_tokens":4,"z.weight":{"M_mean":0.0,"#),
            "{text}"
        );
        assert!(text.find("z.weight") < text.find("a.weight"));
        let back: ReadLine = ReadLine::parse(&text).unwrap();
        assert_eq!(back.index, Some(3));
        assert_eq!(back.weights.len(), 2);
    }
}
