//! Sweeps: models × conditions of a manifest, one JSONL per (model, condition) in the paper's
//! layout `<out>/<task folder>/<model name>/grads_<file stem>.jsonl`, resumable at sample level,
//! deterministically shardable, with a `run.json` recording what ran.

use crate::backend::GradBackend;
use crate::backend::{BackendJob, Device, Dtype, dispatch};
use crate::load::data::load_records;
use crate::load::datasets::{Condition, Manifest};
use crate::measure::options::{DEFAULT_MAX_LENGTH, RunOptions};
use crate::measure::{Measurer, progress_bar};
use crate::prepare::{InstructOptions, PromptMode};
use crate::report::rows::{Statistic, curves, mad, read_rows};
use crate::sink::output::{done_indices, skipped_path};
use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Base model or instruct model (chat template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelMode {
    #[default]
    Base,
    Instruct,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Short name: the folder of this model's results.
    pub name: String,
    /// Checkpoint directory (relative to the sweep file's folder), or a hub model id
    /// (`Qwen/Qwen3-1.7B`) in the local Hugging Face cache.
    pub path: String,
    /// With a hub model id: the branch, tag or commit of the cached snapshot (default main).
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub mode: ModelMode,
    /// Instruct mode without adding special tokens to the rendered template (one BOS).
    #[serde(default)]
    pub single_bos: bool,
    /// A PEFT LoRA adapter folder merged into the model on load (relative to the sweep file's
    /// folder).
    #[serde(default)]
    pub adapter: Option<String>,
}

/// A sweep file (TOML).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Output root (relative to the sweep file's folder).
    pub out: String,
    /// Manifest of conditions (relative to the sweep file's folder).
    pub manifest: String,
    /// Data root; else `--data-root`, `$GRADLENS_DATA`, or the manifest's default. A manifest
    /// whose data ships with it (`data_root` in the manifest, e.g. the built-in set) ignores it.
    pub data_root: Option<String>,
    /// Condition ids or globs over the manifest's ids.
    pub conditions: Vec<String>,
    /// Samples per condition: the first N records (all when absent).
    pub samples: Option<usize>,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub dtype: Dtype,
    /// `cpu` (or `cuda` in a build with the cuda feature).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// `auto` (default), `dense` or `factored`.
    #[serde(default)]
    pub spectra: crate::spectra::stats::Spectra,
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
    /// Defaults of `cargo xtask sweep --slurm N` (`[slurm]`).
    #[serde(default)]
    pub slurm: Option<SlurmDefaults>,
}

/// `[slurm]` of a sweep file: what `cargo xtask sweep --slurm N` puts into the job script
/// (`--slurm-throttle` and `--slurm-opt` on the command line come on top).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmDefaults {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gres`, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// `--time`, e.g. `24:00:00`.
    pub time: Option<String>,
    /// At most this many array tasks at once (`%K`).
    pub throttle: Option<usize>,
    /// Further sbatch options, as written on its command line (`--mem=64G`, `--account=X`).
    #[serde(default)]
    pub options: Vec<String>,
}

fn default_max_length() -> usize {
    DEFAULT_MAX_LENGTH
}
fn default_backend() -> String {
    "cpu".into()
}

/// One unit of work: one model on one condition, written to one file.
#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    pub model: usize,
    pub condition: Condition,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Records measured: `0..samples`.
    pub samples: usize,
    /// 1-based shard of `n` this unit belongs to.
    pub shard: usize,
}

/// A validated sweep: every path checked, nothing loaded.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sweep: SweepFile,
    pub sweep_text: String,
    pub sweep_path: PathBuf,
    pub model_dirs: Vec<PathBuf>,
    /// Each model's LoRA adapter folder, when it has one.
    pub adapter_dirs: Vec<Option<PathBuf>>,
    pub out: PathBuf,
    pub data_root: PathBuf,
    pub units: Vec<Unit>,
    pub shards: usize,
    /// Measure again the samples the units' skipped files record (`--retry-skipped`).
    pub retry_skipped: bool,
    /// Memory the run may plan for instead of what the machine has (`--max-memory`).
    pub max_memory: Option<u64>,
}

pub use crate::load::paths::normalize;

/// `I/N` with 1 ≤ I ≤ N.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad =
        || anyhow::anyhow!("--shard {s}: expected I/N with whole numbers 1 ≤ I ≤ N, e.g. 2/3");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = match (i.trim().parse(), n.trim().parse()) {
        (Ok(i), Ok(n)) => (i, n),
        _ => return Err(bad()),
    };
    if n == 0 || i == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

/// A model name becomes a folder of the output: one plain path component.
fn check_model_name(sweep_path: &Path, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if !ok {
        bail!(
            "{}: model name {name:?}: expected a folder name of letters, digits, '-', '_', '.' \
             or '+' (it names the model's output folder)",
            sweep_path.display()
        );
    }
    Ok(())
}

impl Plan {
    /// Read and validate a sweep: the manifest, the conditions, the model directories and every
    /// data file (which must parse) — before any model is loaded.
    pub fn new(
        sweep_path: &Path,
        sweep_text: &str,
        base_dir: &Path,
        data_root_override: Option<&Path>,
        shards: usize,
    ) -> Result<Self> {
        let sweep: SweepFile = toml::from_str(sweep_text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}",
                sweep_path.display(),
                crate::load::datasets::toml_message(sweep_text, &e)
            )
        })?;
        if sweep.samples == Some(0) {
            bail!(
                "{}: samples = 0 asks for nothing: give a number ≥ 1, or leave samples out for \
                 every record",
                sweep_path.display()
            );
        }
        if sweep.models.is_empty() {
            bail!("{}: no [[model]]", sweep_path.display());
        }
        let mut names = std::collections::BTreeSet::new();
        for m in &sweep.models {
            check_model_name(sweep_path, &m.name)?;
            if !names.insert(m.name.as_str()) {
                bail!(
                    "{}: model name {:?} appears twice",
                    sweep_path.display(),
                    m.name
                );
            }
        }
        let device: Device = sweep
            .backend
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{}: {e}", sweep_path.display()))?;
        crate::backend::check_build(device, sweep.dtype)
            .with_context(|| sweep_path.display().to_string())?;
        let manifest = Manifest::load(&normalize(&base_dir.join(&sweep.manifest)))?;
        let conditions = manifest.select(&sweep.conditions)?;

        let mut model_dirs = Vec::new();
        for m in &sweep.models {
            let dir = normalize(&base_dir.join(&m.path));
            let dir = if !dir.exists() && gradlens_core::hub::is_model_id(Path::new(&m.path)) {
                gradlens_core::hub::resolve(Path::new(&m.path), m.revision.as_deref())
                    .with_context(|| format!("{}: model {:?}", sweep_path.display(), m.name))?
            } else if crate::load::model::is_gguf(&dir) {
                crate::load::model::resolve(&dir, None)
                    .with_context(|| format!("{}: model {:?}", sweep_path.display(), m.name))?
            } else {
                dir
            };
            if !dir.join("config.json").is_file() {
                bail!(
                    "{}: model {:?}: {} is not a checkpoint directory (no config.json)",
                    sweep_path.display(),
                    m.name,
                    dir.display()
                );
            }
            model_dirs.push(dir);
        }
        let mut adapter_dirs = Vec::new();
        for m in &sweep.models {
            let dir = m.adapter.as_ref().map(|a| normalize(&base_dir.join(a)));
            if let Some(d) = &dir
                && !d.join(crate::load::adapter::CONFIG_FILE).is_file()
            {
                bail!(
                    "{}: model {:?}: adapter {} is not a PEFT adapter folder (no {})",
                    sweep_path.display(),
                    m.name,
                    d.display(),
                    crate::load::adapter::CONFIG_FILE
                );
            }
            adapter_dirs.push(dir);
        }

        // A manifest whose data ships with it keeps its own root whatever the run's data root.
        let data_root = match (
            manifest.bundled_root(),
            data_root_override,
            &sweep.data_root,
        ) {
            (Some(bundled), _, _) => bundled,
            (None, Some(d), _) => d.to_path_buf(),
            (None, None, Some(d)) => normalize(&base_dir.join(d)),
            (None, None, None) => manifest.default_root().with_context(|| {
                format!(
                    "{}: no data root (give --data-root or GRADLENS_DATA)",
                    sweep_path.display()
                )
            })?,
        };
        let missing: Vec<&str> = conditions
            .iter()
            .filter(|c| !data_root.join(&c.file).is_file())
            .map(|c| c.file.as_str())
            .collect();
        if !missing.is_empty() {
            bail!(
                "data root {} lacks {} of the sweep's {} file(s): {}",
                data_root.display(),
                missing.len(),
                conditions.len(),
                missing.join(", ")
            );
        }
        let out = normalize(&base_dir.join(&sweep.out));
        let mut units = Vec::new();
        let mut counts = std::collections::HashMap::new();
        for (mi, m) in sweep.models.iter().enumerate() {
            for c in &conditions {
                let data = data_root.join(&c.file);
                let len = match counts.get(&data) {
                    Some(&n) => n,
                    None => {
                        let n = load_records(&data)?.len();
                        counts.insert(data.clone(), n);
                        n
                    }
                };
                let k = units.len();
                units.push(Unit {
                    model: mi,
                    out: out
                        .join(c.task_folder())
                        .join(&m.name)
                        .join(format!("grads_{}.jsonl", c.file_stem())),
                    condition: c.clone(),
                    data,
                    samples: sweep.samples.map_or(len, |s| s.min(len)),
                    shard: k % shards + 1,
                });
            }
        }
        Ok(Self {
            sweep,
            sweep_text: sweep_text.to_string(),
            sweep_path: sweep_path.to_path_buf(),
            model_dirs,
            adapter_dirs,
            out,
            data_root,
            units,
            shards,
            retry_skipped: false,
            max_memory: None,
        })
    }

    /// The plan as a person reads it (`--dry-run`).
    pub fn describe(&self, shard: Option<usize>) -> String {
        let conds: std::collections::BTreeSet<_> =
            self.units.iter().map(|u| u.condition.id.as_str()).collect();
        let samples: usize = self.units.iter().map(|u| u.samples).sum();
        let mut s = format!(
            "sweep {}: {} model(s) × {} condition(s) = {} work unit(s), {} sample(s); data root {}; output {}\n",
            self.sweep_path.display(),
            self.sweep.models.len(),
            conds.len(),
            self.units.len(),
            samples,
            self.data_root.display(),
            self.out.display()
        );
        for u in &self.units {
            if shard.is_some_and(|i| i != u.shard) {
                continue;
            }
            s += &format!(
                "  [shard {}/{}] {:<24} {:<40} {:>5} samples -> {}\n",
                u.shard,
                self.shards,
                self.sweep.models[u.model].name,
                u.condition.id,
                u.samples,
                u.out.display()
            );
        }
        s
    }

    /// Which samples of a unit are still missing from its output (and sidecar).
    pub fn missing(&self, unit: &Unit) -> Result<Vec<usize>> {
        let mut done = done_indices(&unit.out)?;
        done.extend(done_indices(&skipped_path(&unit.out))?);
        Ok((0..unit.samples).filter(|i| !done.contains(i)).collect())
    }
}

/// What one unit did, for run.json.
#[derive(Debug, Clone, Serialize)]
pub struct UnitRecord {
    pub model: String,
    pub condition: String,
    pub out: PathBuf,
    pub measured: usize,
    pub skipped: usize,
    pub already_done: usize,
    pub seconds: f64,
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run the units of `shard` (all when `None`), each model loaded once, with an overall and a
/// per-file progress bar; write `run.json` (or `run-shard-I-of-N.json`).
pub fn run(plan: &Plan, shard: Option<usize>, progress: bool) -> Result<Vec<UnitRecord>> {
    struct Job<'a>(&'a Plan, Option<usize>, bool);
    impl BackendJob for Job<'_> {
        type Output = Vec<UnitRecord>;
        fn run<B: GradBackend>(self, device: &B::Device) -> Result<Vec<UnitRecord>> {
            run_on::<B>(self.0, self.1, self.2, device)
        }
    }
    let device: Device = plan.sweep.backend.parse().map_err(anyhow::Error::msg)?;
    dispatch(device, plan.sweep.dtype, Job(plan, shard, progress))
}

pub fn run_on<B: GradBackend>(
    plan: &Plan,
    shard: Option<usize>,
    progress: bool,
    device: &B::Device,
) -> Result<Vec<UnitRecord>> {
    let started = unix_time();
    let t0 = Instant::now();
    let mine: Vec<&Unit> = plan
        .units
        .iter()
        .filter(|u| shard.is_none_or(|i| u.shard == i))
        .collect();
    let total: u64 = mine.iter().map(|u| u.samples as u64).sum();
    let multi = MultiProgress::new();
    if !progress {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let overall = multi.add(ProgressBar::new(total));
    overall.set_style(
        ProgressStyle::with_template("overall [{elapsed_precise}] {wide_bar} {pos}/{len} samples  {per_sec}  ETA {eta}  {msg}")
            .expect("valid template"),
    );
    let mut records = Vec::new();
    for (mi, spec) in plan.sweep.models.iter().enumerate() {
        let units: Vec<&&Unit> = mine.iter().filter(|u| u.model == mi).collect();
        if units.is_empty() {
            continue;
        }
        let dir = &plan.model_dirs[mi];
        let mode = match spec.mode {
            ModelMode::Base => PromptMode::Base,
            ModelMode::Instruct => PromptMode::instruct_from_dir(
                dir,
                InstructOptions {
                    add_special_tokens: !spec.single_bos,
                },
            )?,
        };
        let run = RunOptions {
            adapter: plan.adapter_dirs[mi].clone(),
            max_length: plan.sweep.max_length,
            dtype: plan.sweep.dtype,
            backend: plan.sweep.backend.parse().map_err(anyhow::Error::msg)?,
            mode,
            spectra: plan.sweep.spectra,
            max_memory: plan.max_memory,
            ..RunOptions::new(dir)
        };
        run.check_memory()
            .with_context(|| format!("model {:?}", spec.name))?;
        let mut measurer = Measurer::<B>::from_options(&run, device)
            .with_context(|| format!("model {:?}", spec.name))?;
        measurer.retry_skipped = plan.retry_skipped;
        for u in units {
            overall.set_message(format!("{} units done of {}", records.len(), mine.len()));
            let data = load_records(&u.data)?;
            let bar = multi.add(progress_bar(
                u.samples as u64,
                &format!("{}: {}", spec.name, u.condition.id),
            ));
            let s = measurer
                .measure_file(
                    &data,
                    &u.data,
                    0..u.samples,
                    &u.out,
                    Some(&bar),
                    Some(&overall),
                )
                .with_context(|| format!("model {:?}, condition {}", spec.name, u.condition.id))?;
            bar.finish_and_clear();
            multi.remove(&bar);
            records.push(UnitRecord {
                model: spec.name.clone(),
                condition: u.condition.id.clone(),
                out: u.out.clone(),
                measured: s.measured,
                skipped: s.skipped,
                already_done: s.already_done,
                seconds: s.seconds,
            });
        }
    }
    overall.finish_and_clear();
    write_run_json(plan, shard, started, t0.elapsed().as_secs_f64(), &records)?;
    Ok(records)
}

fn write_run_json(
    plan: &Plan,
    shard: Option<usize>,
    started: u64,
    seconds: f64,
    units: &[UnitRecord],
) -> Result<()> {
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("{}: cannot create", plan.out.display()))?;
    let name = match shard {
        Some(i) => format!("run-shard-{i}-of-{}.json", plan.shards),
        None => "run.json".to_string(),
    };
    let record = serde_json::json!({
        "sweep_file": plan.sweep_path,
        "sweep": plan.sweep_text,
        "shard": shard.map(|i| format!("{i}/{}", plan.shards)),
        "data_root": plan.data_root,
        "versions": {
            "gradlens": env!("CARGO_PKG_VERSION"),
            "burn": "0.21.0",
            "backend": format!("{} {}", plan.sweep.backend, plan.sweep.dtype),
        },
        "started_unix": started,
        "seconds": seconds,
        "units": units,
    });
    let path = plan.out.join(name);
    let text = serde_json::to_string_pretty(&record)? + "\n";
    Ok(crate::sink::output::write_atomically(
        &path,
        text.as_bytes(),
    )?)
}

/// Completeness of every unit (all shards): `(unit index, missing samples)` for the incomplete.
pub fn check_complete(plan: &Plan) -> Result<Vec<(usize, usize)>> {
    let mut incomplete = Vec::new();
    for (i, u) in plan.units.iter().enumerate() {
        let m = plan.missing(u)?.len();
        if m > 0 {
            incomplete.push((i, m));
        }
    }
    Ok(incomplete)
}

/// The closing table: per (model, condition) the samples, mean loss, mean nuclear norm of the
/// Q/K/V/O gradients (over layers and samples), and the cross-layer MAD of the nuclear-norm curve
/// (mean over Q/K/V/O).
pub fn summary_table(plan: &Plan) -> Result<String> {
    let mut s = format!(
        "{:<22} {:<36} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "model", "condition", "samples", "loss", "S_sum q", "S_sum k", "S_sum v", "S_sum o", "MAD"
    );
    for u in &plan.units {
        let name = &plan.sweep.models[u.model].name;
        if !u.out.exists() {
            s += &format!("{name:<22} {:<36} {:>7}\n", u.condition.id, "-");
            continue;
        }
        let (rows, _) = read_rows(&u.out)?;
        let losses: Vec<f64> = rows.iter().filter_map(|r| r.loss).collect();
        let mean_loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        let (c, _) = curves(&rows, Statistic::SSum);
        let mean = |p: &str| {
            c.get(p)
                .map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
                .unwrap_or(f64::NAN)
        };
        let projs = ["q_proj", "k_proj", "v_proj", "o_proj"];
        let m = projs
            .iter()
            .filter_map(|p| c.get(*p))
            .map(|v| mad(v))
            .sum::<f64>()
            / 4.0;
        s += &format!(
            "{name:<22} {:<36} {:>7} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4}\n",
            u.condition.id,
            rows.len(),
            mean_loss,
            mean("q_proj"),
            mean("k_proj"),
            mean("v_proj"),
            mean("o_proj"),
            m
        );
    }
    Ok(s)
}
