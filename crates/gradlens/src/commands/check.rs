//! `gradlens check`: the committed transformers fixtures (`fixtures/<name>/expected/`, made by
//! scripts/make_fixtures.py in float64) measured again on any backend and compared, in one
//! process (on CUDA the kernels are compiled once for all of them). The same comparisons run in
//! `cargo test` on the CPU; this command is how a machine with a GPU checks `--backend cuda`.

use crate::backend::GradBackend;
use crate::backend::{BackendJob, Device, Dtype, dispatch};
use crate::load::data::load_records;
use crate::measure::Measurer;
use crate::prepare::PromptMode;
use crate::report::compare::compare_files;
use crate::spectra::stats::Spectra;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The paper's files behind `expected/grads_<tag>.jsonl` (first samples, max_length 1024).
pub const PAPER_TAGS: &[(&str, &str)] = &[
    ("aqua_detailed", "cot_500/aqua_train_with_cot_gpt4o.json"),
    ("aqua_none", "cot_500/aqua_train_no_cot.json"),
];

/// One comparison.
#[derive(Debug, Clone)]
pub struct Check {
    pub fixture: String,
    pub data: String,
    pub spectra: Spectra,
    pub samples: usize,
    pub seconds: f64,
    /// Differences beyond the tolerance (empty: agrees).
    pub errors: Vec<String>,
    /// The largest relative deviation (see [`crate::report::compare::max_deviation`]).
    pub deviation: Option<f64>,
}

pub struct CheckArgs {
    pub fixtures: PathBuf,
    /// The paper's data root (for the `grads_<tag>.jsonl` references), when present.
    pub paper_data: Option<PathBuf>,
    pub backend: Device,
    pub dtype: Dtype,
    pub rtol: f64,
    /// Sequence padding (None: the backend's default).
    pub pad_to: Option<usize>,
}

struct Job<'a>(&'a CheckArgs, Vec<PathBuf>);

impl BackendJob for Job<'_> {
    type Output = Vec<Check>;
    fn run<B: GradBackend>(self, device: &B::Device) -> Result<Vec<Check>> {
        let Job(a, dirs) = self;
        let tiny = a.fixtures.join("data/tiny.json");
        let mut checks = Vec::new();
        let scratch = std::env::temp_dir().join(format!("gradlens-check-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        for dir in dirs {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let logits: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("expected/logits.json"))
                    .with_context(|| format!("{}: no expected/logits.json", dir.display()))?,
            )?;
            let max_length = logits["max_length"].as_u64().context("max_length")? as usize;
            let mut sets: Vec<(String, PathBuf, PathBuf, usize)> = vec![(
                "tiny".into(),
                tiny.clone(),
                dir.join("expected/grads.jsonl"),
                max_length,
            )];
            if let Some(root) = &a.paper_data {
                for (tag, file) in PAPER_TAGS {
                    let expected = dir.join(format!("expected/grads_{tag}.jsonl"));
                    if expected.is_file() && root.join(file).is_file() {
                        sets.push((tag.to_string(), root.join(file), expected, 1024));
                    }
                }
            }
            for (data_name, data, expected, max_length) in sets {
                let records = load_records(&data)?;
                let n_expected = std::fs::read_to_string(&expected)?.lines().count();
                let mut m = Measurer::<B>::load(&dir, max_length, PromptMode::Base, device)?;
                m.pad_to = a.pad_to.unwrap_or(a.backend.default_pad_to());
                // The tiny data holds skipped samples too: measure it whole; the paper's files
                // only as far as the reference goes.
                let n = if data_name == "tiny" {
                    records.len()
                } else {
                    n_expected
                };
                for spectra in [Spectra::Dense, Spectra::Factored, Spectra::Gram] {
                    m.spectra = spectra;
                    let out = scratch.join(format!("{name}-{data_name}-{spectra:?}.jsonl"));
                    crate::sink::output::remove_output(&out);
                    let t0 = Instant::now();
                    m.measure_file(&records, &data, 0..n, &out, None, None)?;
                    let seconds = t0.elapsed().as_secs_f64();
                    let errors = compare_files(&expected, &out, a.rtol)?;
                    let deviation = crate::report::compare::max_deviation(&expected, &out)?;
                    let c = Check {
                        fixture: name.clone(),
                        data: data_name.clone(),
                        spectra,
                        samples: n_expected,
                        seconds,
                        errors,
                        deviation,
                    };
                    eprintln!(
                        "{:<26} {:<14} {:<9} {:>3} samples  {:>6.1} s  max dev {:>8.1e}  {}",
                        c.fixture,
                        c.data,
                        c.spectra.to_string(),
                        c.samples,
                        c.seconds,
                        c.deviation.unwrap_or(f64::NAN),
                        if c.errors.is_empty() {
                            "ok".to_string()
                        } else {
                            format!("{} DIFFERENCES, first: {}", c.errors.len(), c.errors[0])
                        }
                    );
                    checks.push(c);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(checks)
    }
}

/// Every fixture directory under `fixtures` (those with `expected/grads.jsonl`), sorted.
pub fn fixture_dirs(fixtures: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .with_context(|| format!("{}: cannot list", fixtures.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected/grads.jsonl").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Measure every fixture on the chosen backend and compare with its reference.
pub fn check_fixtures(a: &CheckArgs) -> Result<Vec<Check>> {
    let dirs = fixture_dirs(&a.fixtures)?;
    anyhow::ensure!(
        !dirs.is_empty(),
        "{}: no fixtures (directories with expected/grads.jsonl)",
        a.fixtures.display()
    );
    dispatch(a.backend, a.dtype, Job(a, dirs))
}
