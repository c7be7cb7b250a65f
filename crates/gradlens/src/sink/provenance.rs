//! What made a measurement file: the `<out>.meta.json` record written beside every output gradlens
//! appends to. A resumed run compares it with its own settings and refuses to mix results made
//! otherwise (see [`crate::sink::output::claim`]).

use crate::load::fingerprint::{HashError, adapter_fingerprint, model_fingerprint, sha256_file};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The format tag of a `.meta.json` file (changes when its meaning does).
pub const FORMAT: &str = "gradlens-measurements/1";

/// The settings that decide a measurement file's numbers. Two runs may append to the same file
/// only when every field but `gradlens`, `model` and `data` (where things were, which may move)
/// agrees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub format: String,
    /// The gradlens version that started the file (a different version only warns).
    pub gradlens: String,
    /// The checkpoint directory as given.
    pub model: String,
    /// A PEFT LoRA adapter merged on load (`--adapter`), as given; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// SHA-256 over the adapter's adapter_config.json and adapter_model.safetensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_sha256: Option<String>,
    /// SHA-256 over the checkpoint's config.json, tokenizer files and the headers (names, shapes,
    /// dtypes, offsets) and sizes of its weight files.
    pub model_fingerprint: String,
    /// The data file as given.
    pub data: String,
    /// SHA-256 of the data file's bytes: record indices mean the same records.
    pub data_sha256: String,
    pub dtype: String,
    pub backend: String,
    pub max_length: usize,
    /// `base`, or `instruct` / `instruct single-bos` (the chat template is in the fingerprint).
    pub prompt: String,
    /// Instruct mode: whether the prompt has the system turn (the chat template decides; the
    /// template is in the fingerprint, so it is recorded, not compared). Absent for a base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_turn: Option<bool>,
    pub spectra: String,
    pub save_spectrum: bool,
}

/// The settings of a run, before the files are hashed.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    pub model: &'a Path,
    pub adapter: Option<&'a Path>,
    pub data: &'a Path,
    pub dtype: String,
    pub backend: String,
    pub max_length: usize,
    pub prompt: String,
    pub system_turn: Option<bool>,
    pub spectra: String,
    pub save_spectrum: bool,
}

impl Provenance {
    /// Hash the checkpoint's identifying files and the data file.
    pub fn of(s: &Settings<'_>) -> Result<Self, HashError> {
        Ok(Self {
            format: FORMAT.into(),
            gradlens: env!("CARGO_PKG_VERSION").into(),
            model: s.model.display().to_string(),
            adapter: s.adapter.map(|a| a.display().to_string()),
            adapter_sha256: s.adapter.map(adapter_fingerprint).transpose()?,
            model_fingerprint: model_fingerprint(s.model)?,
            data: s.data.display().to_string(),
            data_sha256: sha256_file(s.data)?,
            dtype: s.dtype.clone(),
            backend: s.backend.clone(),
            max_length: s.max_length,
            prompt: s.prompt.clone(),
            system_turn: s.system_turn,
            spectra: s.spectra.clone(),
            save_spectrum: s.save_spectrum,
        })
    }

    /// The settings in which `self` (this run) differs from `recorded` (the file's), each as
    /// `field: recorded → this run`; empty when the two may share a file.
    pub fn differences(&self, recorded: &Provenance) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |field: &str, old: String, new: String| {
            if old != new {
                d.push(format!("{field}: the file has {old}, this run {new}"));
            }
        };
        cmp("format", recorded.format.clone(), self.format.clone());
        if recorded.model_fingerprint != self.model_fingerprint {
            cmp(
                "the checkpoint (config, tokenizer, weight headers)",
                format!(
                    "{} from {}",
                    short(&recorded.model_fingerprint),
                    recorded.model
                ),
                format!("{} from {}", short(&self.model_fingerprint), self.model),
            );
        }
        if recorded.adapter_sha256 != self.adapter_sha256 {
            let shown = |p: &Provenance| match (&p.adapter, &p.adapter_sha256) {
                (Some(a), Some(h)) => format!("{} from {a}", short(h)),
                _ => "none".to_string(),
            };
            cmp("--adapter", shown(recorded), shown(self));
        }
        if recorded.data_sha256 != self.data_sha256 {
            cmp(
                "the data file's content",
                format!("{} from {}", short(&recorded.data_sha256), recorded.data),
                format!("{} from {}", short(&self.data_sha256), self.data),
            );
        }
        cmp("--dtype", recorded.dtype.clone(), self.dtype.clone());
        cmp(
            "--backend",
            backend_kind(&recorded.backend).into(),
            backend_kind(&self.backend).into(),
        );
        cmp(
            "--max-length",
            recorded.max_length.to_string(),
            self.max_length.to_string(),
        );
        cmp(
            "--instruct/--single-bos",
            recorded.prompt.clone(),
            self.prompt.clone(),
        );
        cmp("--spectra", recorded.spectra.clone(), self.spectra.clone());
        cmp(
            "--save-spectrum",
            recorded.save_spectrum.to_string(),
            self.save_spectrum.to_string(),
        );
        d
    }
}

/// `cuda:1` and `cuda` compute alike: the device index is not a setting.
fn backend_kind(b: &str) -> &str {
    b.split(':').next().unwrap_or(b)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// A record to test with.
#[cfg(test)]
pub(crate) fn example() -> Provenance {
    Provenance {
        format: FORMAT.into(),
        gradlens: "0.1.0".into(),
        model: "m".into(),
        adapter: None,
        adapter_sha256: None,
        model_fingerprint: "aa".into(),
        data: "d.json".into(),
        data_sha256: "bb".into(),
        dtype: "f32".into(),
        backend: "cpu".into(),
        max_length: 1024,
        prompt: "base".into(),
        system_turn: None,
        spectra: "auto".into(),
        save_spectrum: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_setting() {
        let a = example();
        assert!(a.differences(&a).is_empty());
        let mut b = a.clone();
        b.model = "elsewhere".into();
        b.data = "moved.json".into();
        b.gradlens = "0.2.0".into();
        assert!(b.differences(&a).is_empty(), "paths and version may change");
        b.dtype = "f64".into();
        b.max_length = 512;
        b.backend = "cuda:1".into();
        let d = b.differences(&a);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("--dtype: the file has f32, this run f64"));
        assert!(d.iter().any(|l| l.starts_with("--max-length")));
        let mut c = a.clone();
        c.backend = "cuda:1".into();
        let mut a2 = a.clone();
        a2.backend = "cuda".into();
        assert!(c.differences(&a2).is_empty());
    }
}
