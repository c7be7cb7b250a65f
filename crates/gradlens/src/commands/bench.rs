//! The benchmark (`gradlens bench`, `cargo xtask bench`): gradlens against the paper's pipeline in
//! PyTorch + transformers (full SVD of every gradient) and the svdvals variant, on the same
//! checkpoint and samples, in one run, on the CPU or on CUDA. Prints samples/s, forward+backward
//! and spectra seconds per sample, peak memory, and the ratios.
//!
//! Rows, each after `--warmup` untimed samples (CUDA compiles and autotunes its kernels then):
//! - forward+backward alone (the floor: no statistics, one scalar read back);
//! - factored and dense spectra, sequential (forward+backward, then the statistics: the split);
//! - auto spectra, pipelined: what `gradlens grads` does (statistics of sample i on the CPU
//!   threads while sample i+1 runs forward and backward); `auto-sequential` one after the other;
//! - the PyTorch reference (scripts/bench_reference.py), when torch and transformers import.

use crate::backend::GradBackend;
use crate::backend::{BackendJob, Device, Dtype, dispatch};
use crate::load::data::{Record, load_records};
use crate::measure::options::{DEFAULT_MAX_LENGTH, RunOptions};
use crate::measure::{Measurer, Work, finish};
use crate::spectra::stats::Spectra;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Checkpoints to measure: a checkpoint directory, a GGUF file (imported once), a config.json
    /// (a random checkpoint is made from it once in --workdir, see `gradlens init`), or `tiny`
    /// (the fixture qwen2-tiny).
    #[arg(long = "model", num_args = 1.., default_values_t = vec!["tiny".to_string(), "configs/shapes/qwen2-0.5b.json".to_string()])]
    pub models: Vec<String>,
    /// Samples timed per gradlens row (the first N records of --data).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Samples of the sequential rows (split of forward+backward and spectra); default --samples.
    #[arg(long)]
    pub sequential_samples: Option<usize>,
    /// Samples of each PyTorch row (the first of the same records); default --samples.
    #[arg(long)]
    pub reference_samples: Option<usize>,
    /// Untimed samples first (CUDA compiles and autotunes kernels on first use).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// Pad each sequence to a multiple of this many tokens (exact; see `gradlens grads
    /// --pad-to`); default 64 on CUDA (fewer shapes to compile), none on the CPU.
    #[arg(long)]
    pub pad_to: Option<usize>,
    /// cpu or cuda[:N]; the PyTorch side runs on the same kind of device.
    #[arg(long, default_value_t = Device::default())]
    pub backend: Device,
    /// Rows to run: fwd-bwd, factored, dense, auto (end to end, as `grads` runs), paper,
    /// svdvals; on request auto-sequential (end to end with each sample's statistics before the
    /// next sample instead of beside it), gram (the CholeskyQR spectra of `--spectra gram`,
    /// split) and gram-e2e (the same, end to end), train
    /// (`gradlens train` steps with their statistics) and torch-train (a transformers +
    /// torch.optim.AdamW loop), train-nostats (`--stats none`), train-per-sample (`--per-sample`),
    /// lora (`gradlens train --lora`) and peft-train (a PEFT LoRA loop).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fwd-bwd,factored,dense,auto,paper,svdvals"
    )]
    pub rows: Vec<String>,
    /// Samples per optimizer step of the train rows (the first step is untimed warm-up).
    #[arg(long, default_value_t = 4)]
    pub train_batch: usize,
    /// LoRA rank of the lora and peft-train rows (adapters on q/k/v/o, α = 2r).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// CPU threads for both sides (RAYON_NUM_THREADS, torch.set_num_threads); 0 = all.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Data file (default: the paper's aqua Detailed CoT under ../shared/paper-data or
    /// $GRADLENS_DATA).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The Python with torch and transformers (the reference side is skipped without them).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Where random checkpoints go.
    #[arg(long, default_value = "target/bench")]
    pub workdir: PathBuf,
    /// Tokenizer for random checkpoints made from a config.
    #[arg(long, default_value = "configs/tokenizer")]
    pub tokenizer: PathBuf,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One row of the result table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub model: String,
    pub name: String,
    pub samples: usize,
    pub samples_per_s: f64,
    pub fwd_bwd_s: f64,
    pub spectra_s: f64,
    pub mean_tokens: f64,
    /// Peak host memory (VmHWM) so far.
    pub peak_rss_mb: f64,
    /// Peak GPU memory during the row (nvidia-smi), when on CUDA.
    pub peak_gpu_mb: f64,
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Polls `nvidia-smi` every 100 ms and keeps the highest memory use since the last reset.
struct GpuMemory {
    peak: Arc<AtomicU64>,
    child: Option<std::process::Child>,
}

impl GpuMemory {
    fn start(device: Device) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let Device::Cuda(i) = device else {
            return Self { peak, child: None };
        };
        let child = Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
                "-i",
                &i.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok();
        let mut child = child;
        if let Some(out) = child.as_mut().and_then(|c| c.stdout.take()) {
            let p = peak.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if let Ok(mb) = line.trim().parse::<u64>() {
                        p.fetch_max(mb, Ordering::Relaxed);
                    }
                }
            });
        }
        Self { peak, child }
    }
    fn reset(&self) {
        self.peak.store(0, Ordering::Relaxed);
    }
    fn peak_mb(&self) -> f64 {
        match self.child {
            // Let the poller see the last 100 ms.
            Some(_) => {
                std::thread::sleep(std::time::Duration::from_millis(150));
                self.peak.load(Ordering::Relaxed) as f64
            }
            None => f64::NAN,
        }
    }
}

impl Drop for GpuMemory {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `dir` holds a random checkpoint made from `config` with `tokenizer` (same config keys
/// apart from torch_dtype, same tokenizer.json), so that it can be reused.
fn made_from(dir: &Path, config: &Path, tokenizer: &Path) -> bool {
    let read = |p: &Path| -> Option<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v.as_object_mut()?.remove("torch_dtype");
        Some(v)
    };
    dir.join("model.safetensors").is_file()
        && read(&dir.join("config.json")).is_some_and(|c| Some(c) == read(config))
        && std::fs::read(dir.join("tokenizer.json"))
            .is_ok_and(|t| std::fs::read(tokenizer.join("tokenizer.json")).is_ok_and(|u| t == u))
}

/// Resolve `--model` entries to checkpoint directories (making random ones from configs).
fn checkpoint_dir(spec: &str, a: &BenchArgs, root: &Path) -> Result<PathBuf> {
    if spec == "tiny" {
        return Ok(root.join("fixtures/qwen2-tiny"));
    }
    let p = PathBuf::from(spec);
    if p.is_dir() {
        return Ok(p);
    }
    if crate::load::model::is_gguf(&p) {
        return crate::load::model::resolve(&p, None);
    }
    if p.is_file() {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let dir = a.workdir.join(&name);
        if !made_from(&dir, &p, &a.tokenizer) {
            let t0 = Instant::now();
            eprintln!("random checkpoint from {}: {}", p.display(), dir.display());
            let s = crate::commands::init::init_checkpoint(&crate::commands::init::InitOptions {
                config: p.clone(),
                out: dir.clone(),
                seed: 0,
                dtype: crate::commands::init::StoreDtype::Bf16,
                tokenizer: Some(a.tokenizer.clone()),
                force: true,
            })?;
            eprintln!(
                "  {:.3} B parameters in {:.1} s",
                s.parameters as f64 / 1e9,
                t0.elapsed().as_secs_f64()
            );
        }
        return Ok(dir);
    }
    bail!("{spec}: neither `tiny`, a checkpoint directory, a GGUF file nor a config.json")
}

struct GradlensRows<'a> {
    a: &'a BenchArgs,
    model: &'a Path,
    label: &'a str,
    records: &'a [Record],
    /// The file the records come from.
    data: &'a Path,
    gpu: &'a GpuMemory,
}

impl BackendJob for GradlensRows<'_> {
    type Output = Vec<Row>;
    fn run<B: GradBackend>(self, device: &B::Device) -> Result<Vec<Row>> {
        let GradlensRows {
            a,
            model,
            label,
            records,
            data,
            gpu,
        } = self;
        let t0 = Instant::now();
        let run = RunOptions {
            max_length: a.max_length,
            backend: a.backend,
            pad_to: a.pad_to,
            ..RunOptions::new(model)
        };
        let mut m = Measurer::<B>::from_options(&run, device)?;
        eprintln!("[{label}] loaded in {:.1} s", t0.elapsed().as_secs_f64());
        let w = a.warmup.min(records.len());
        let timed = &records[w..records.len().min(w + a.samples)];
        if timed.is_empty() {
            bail!("no samples left after {w} warm-up sample(s)");
        }
        let seq_n = a.sequential_samples.unwrap_or(a.samples).min(timed.len());
        let backend = a.backend.to_string();
        let mut rows = Vec::new();
        let mut row = |name: String, n: usize, secs: f64, fb: f64, st: f64, tokens: f64| {
            let r = Row {
                model: label.to_string(),
                name,
                samples: n,
                samples_per_s: n as f64 / secs,
                fwd_bwd_s: fb,
                spectra_s: st,
                mean_tokens: tokens,
                peak_rss_mb: peak_rss_mb(),
                peak_gpu_mb: gpu.peak_mb(),
            };
            eprintln!(
                "[{label}] {}: {:.3} samples/s over {} samples",
                r.name, r.samples_per_s, n
            );
            rows.push(r);
        };
        // Warm-up: every path once.
        let t0 = Instant::now();
        for (i, r) in records.iter().take(w).enumerate() {
            m.forward_backward_only(r)?;
            m.spectra = Spectra::Factored;
            let work = m.forward_backward(i, r)?;
            finish(work, false).map_err(|s| anyhow::anyhow!(s.reason))?;
        }
        if w > 0 {
            eprintln!(
                "[{label}] warm-up ({w} sample(s), kernels compiled and tuned): {:.1} s",
                t0.elapsed().as_secs_f64()
            );
        }
        let wants = |r: &str| a.rows.iter().any(|x| x == r);
        if wants("fwd-bwd") {
            gpu.reset();
            let (t0, mut tokens) = (Instant::now(), 0usize);
            for r in timed {
                tokens += m
                    .forward_backward_only(r)?
                    .context("bench sample skipped")?;
            }
            let secs = t0.elapsed().as_secs_f64();
            let n = timed.len();
            row(
                format!("gradlens {backend} f32, forward+backward only"),
                n,
                secs,
                secs / n as f64,
                0.0,
                tokens as f64 / n as f64,
            );
        }
        for (key, mode) in [
            ("factored", Spectra::Factored),
            ("dense", Spectra::Dense),
            ("gram", Spectra::Gram),
        ] {
            if !wants(key) || seq_n == 0 {
                continue;
            }
            gpu.reset();
            m.spectra = mode;
            let (mut fb, mut st, mut tokens) = (0.0, 0.0, 0usize);
            for (i, r) in timed.iter().take(seq_n).enumerate() {
                let t0 = Instant::now();
                let work = m.forward_backward(w + i, r)?;
                let t1 = Instant::now();
                if let Work::Measured { n_tokens, .. } = &work {
                    tokens += n_tokens;
                } else {
                    bail!("bench sample {} skipped", w + i);
                }
                finish(work, false).map_err(|s| anyhow::anyhow!(s.reason))?;
                fb += (t1 - t0).as_secs_f64();
                st += t1.elapsed().as_secs_f64();
            }
            row(
                format!("gradlens {backend} f32, {key} spectra, sequential"),
                seq_n,
                fb + st,
                fb / seq_n as f64,
                st / seq_n as f64,
                tokens as f64 / seq_n as f64,
            );
        }
        for (key, mode, overlap) in [
            ("auto", Spectra::Auto, true),
            ("auto-sequential", Spectra::Auto, false),
            ("gram-e2e", Spectra::Gram, true),
        ] {
            if !wants(key) {
                continue;
            }
            gpu.reset();
            m.spectra = mode;
            m.overlap = overlap;
            let tmp = std::env::temp_dir().join(format!(
                "gradlens-bench-{}-{label}.jsonl",
                std::process::id()
            ));
            crate::sink::output::remove_output(&tmp);
            let t0 = Instant::now();
            let s = m.measure_file(timed, data, 0..timed.len(), &tmp, None, None)?;
            let secs = t0.elapsed().as_secs_f64();
            crate::sink::output::remove_output(&tmp);
            let name = if mode == Spectra::Auto {
                "auto"
            } else {
                "gram"
            };
            let how = if overlap {
                "pipelined"
            } else {
                "one after the other"
            };
            row(
                format!("gradlens {backend} f32, {name} spectra, {how} (end to end)"),
                s.measured,
                secs,
                f64::NAN,
                f64::NAN,
                f64::NAN,
            );
        }
        Ok(rows)
    }
}

fn python_rows(a: &BenchArgs, model: &Path, label: &str, data: &Path) -> Result<Vec<Row>> {
    let variants: Vec<&str> = ["paper", "svdvals", "torch-train", "peft-train"]
        .into_iter()
        .filter(|v| a.rows.iter().any(|r| r == v))
        .collect();
    if variants.is_empty() {
        return Ok(Vec::new());
    }
    let ok = Command::new(&a.python)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "note: {} cannot import torch and transformers: the PyTorch side is skipped \
             (pip install torch transformers tokenizers safetensors)",
            a.python
        );
        return Ok(Vec::new());
    }
    let n = a.reference_samples.unwrap_or(a.samples);
    let device = match a.backend {
        Device::Cpu | Device::Flex | Device::Torch => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
    };
    let mut rows = Vec::new();
    for variant in variants {
        eprintln!("[{label}] PyTorch reference ({variant}, {n} samples, {device})");
        // The train loop: the other rows' samples in batches, after an untimed first step.
        let (variant, n) = match variant {
            "torch-train" => ("train", train_samples(a)),
            "peft-train" => ("lora", train_samples(a)),
            v => (v, n),
        };
        let mut cmd = Command::new(&a.python);
        if a.threads > 0 {
            cmd.env("OMP_NUM_THREADS", a.threads.to_string());
        }
        // The script travels inside the binary: an installed gradlens runs it from anywhere.
        let out = cmd
            .args(["-c", REFERENCE_SCRIPT])
            .arg("--model")
            .arg(model)
            .arg("--data")
            .arg(data)
            .args([
                "--samples",
                &n.to_string(),
                "--warmup",
                &a.warmup.to_string(),
                "--batch-size",
                &a.train_batch.to_string(),
                "--max-length",
                &a.max_length.to_string(),
                "--threads",
                &a.threads.to_string(),
                "--variant",
                variant,
                "--device",
                &device,
                "--lora-r",
                &a.lora_rank.to_string(),
            ])
            .output()
            .context("running the PyTorch reference")?;
        if !out.status.success() {
            bail!(
                "PyTorch reference failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or("{}"))?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        // The train loop's split is forward+backward and the optimizer, not spectra: its time per
        // sample stands in the forward+backward column.
        let (fwd_bwd_s, spectra_s) = if matches!(variant, "train" | "lora") {
            (f("fwd_bwd_s") + f("spectra_s"), f64::NAN)
        } else {
            (f("fwd_bwd_s"), f("spectra_s"))
        };
        rows.push(Row {
            model: label.to_string(),
            name: match variant {
                "paper" => format!("PyTorch {device}, the paper's method (full SVD)"),
                "train" => format!(
                    "PyTorch {device}, AdamW loop (batch {}, no statistics)",
                    a.train_batch
                ),
                "lora" => format!(
                    "PyTorch {device}, PEFT LoRA r {} AdamW loop (batch {}, no statistics)",
                    a.lora_rank, a.train_batch
                ),
                _ => format!("PyTorch {device}, svdvals"),
            },
            samples: v["samples"].as_u64().unwrap_or(0) as usize,
            samples_per_s: f("samples_per_s"),
            fwd_bwd_s,
            spectra_s,
            mean_tokens: f("mean_tokens"),
            peak_rss_mb: f("peak_rss_mb"),
            peak_gpu_mb: f("peak_gpu_mb"),
        });
    }
    Ok(rows)
}

/// Timed samples of the train rows: --samples rounded down to whole batches (at least one).
fn train_samples(a: &BenchArgs) -> usize {
    (a.samples / a.train_batch.max(1)).max(1) * a.train_batch.max(1)
}

/// `gradlens train` on the samples the other rows time (after --warmup), in batches, after an
/// untimed first step on the first batch of them (as the PyTorch loop does); the paper's attention
/// selection trained, the statistics of every step.
fn train_rows(a: &BenchArgs, dir: &Path, label: &str, records: &[Record]) -> Result<Vec<Row>> {
    use crate::train::StepStats::{Batch, None as Plain};
    let mut rows = Vec::new();
    for (row, lora, stats, per_sample) in [
        ("train", None, Batch, false),
        ("train-nostats", None, Plain, false),
        ("train-per-sample", None, Batch, true),
        ("lora", Some(a.lora_rank), Batch, false),
    ] {
        if a.rows.iter().any(|r| r == row) {
            rows.extend(train_row(a, dir, label, records, lora, stats, per_sample)?);
        }
    }
    Ok(rows)
}

/// One train row: the paper's attention selection trained, or LoRA adapters of rank `lora` on
/// q/k/v/o; with the batch statistics or none, and each sample's with `per_sample`.
fn train_row(
    a: &BenchArgs,
    dir: &Path,
    label: &str,
    records: &[Record],
    lora: Option<usize>,
    stats: crate::train::StepStats,
    per_sample: bool,
) -> Result<Option<Row>> {
    let b = a.train_batch.max(1);
    let n = train_samples(a);
    let tmp = std::env::temp_dir().join(format!("gradlens-bench-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let data = tmp.join("data.json");
    let w = a.warmup.min(records.len());
    let timed = &records[w..records.len().min(w + n)];
    let warm = &timed[..timed.len().min(b)];
    let stream: Vec<&Record> = warm.iter().chain(timed).collect();
    std::fs::write(&data, serde_json::to_string(&stream)?)?;
    let what = match lora {
        Some(r) => format!("LoRA r {r} train step"),
        None => "train step".to_string(),
    };
    let recorded = match (stats, per_sample) {
        (crate::train::StepStats::None, _) => "no statistics",
        (_, true) => "statistics, every sample's too",
        _ => "statistics",
    };
    eprintln!(
        "[{label}] gradlens {what} ({n} samples, batch {b}, {})",
        a.backend
    );
    let summary = crate::train::run_train(&crate::train::TrainOptions {
        run: RunOptions {
            backend: a.backend,
            max_length: a.max_length,
            spectra: Spectra::Auto,
            ..RunOptions::new(dir)
        },
        data: vec![data],
        out: tmp.join("run"),
        batch_size: b,
        length: crate::train::Length::Steps(1 + n / b),
        shuffle: None,
        seed: 0,
        train: crate::train::TrainSet::Attention,
        lora: lora.map(|r| crate::train::lora::LoraArgs {
            r: Some(r),
            alpha: Some(2.0 * r as f64),
            ..Default::default()
        }),
        save_merged: false,
        lr: 1e-5,
        schedule: crate::train::schedule::Schedule::Constant,
        warmup_steps: 0,
        adamw: Default::default(),
        max_grad_norm: 1.0,
        stats,
        per_sample,
        eval_data: None,
        eval_every: None,
        save_every: None,
        save_dtype: None,
        resume: false,
        progress: false,
    });
    let _ = std::fs::remove_dir_all(&tmp);
    let summary = summary?;
    let timed = &summary.step_times[1.min(summary.step_times.len())..];
    let (samples, secs) = timed.iter().fold((0, 0.0), |(n, s), (k, t)| (n + k, s + t));
    Ok(Some(Row {
        model: label.to_string(),
        name: format!("gradlens {} f32, {what} (batch {b}, {recorded})", a.backend),
        samples,
        samples_per_s: samples as f64 / secs,
        fwd_bwd_s: f64::NAN,
        spectra_s: f64::NAN,
        mean_tokens: f64::NAN,
        peak_rss_mb: peak_rss_mb(),
        peak_gpu_mb: f64::NAN,
    }))
}

/// The machine a benchmark ran on, as its table names it: the CPU model, its logical CPUs, and
/// the instruction sets gradlens' CPU kernels (gemm's matrix products, pulp's element-wise passes)
/// choose on it at run time; AMX is named when present (PyTorch's oneDNN may use it, gradlens
/// does not).
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    #[cfg(target_arch = "x86_64")]
    let kernels = {
        use std::arch::is_x86_feature_detected as has_isa;
        if has_isa!("avx512f")
            && has_isa!("avx512bw")
            && has_isa!("avx512dq")
            && has_isa!("avx512vl")
        {
            "AVX-512 (x86-64-v4)"
        } else if has_isa!("avx2") && has_isa!("fma") {
            "AVX2+FMA (x86-64-v3)"
        } else {
            "SSE2 (no AVX2)"
        }
    };
    #[cfg(target_arch = "aarch64")]
    let kernels = "NEON";
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let kernels = "scalar";
    let amx = if has("amx_tile") { ", AMX present" } else { "" };
    format!("{model}, {cpus} logical CPU(s); gradlens' CPU kernels: {kernels}{amx}")
}

/// scripts/bench_reference.py, the PyTorch side of the benchmark, run with `python -c`.
const REFERENCE_SCRIPT: &str = include_str!("../../../../scripts/bench_reference.py");

/// The default data file: the paper's aqua Detailed CoT.
pub fn default_data(root: &Path) -> PathBuf {
    std::env::var_os("GRADLENS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/paper-data"))
        .join("cot_500/aqua_train_with_cot_gpt4o.json")
}

/// Run the benchmark from the repository root `root`; prints the table and returns the rows.
pub fn run(a: &BenchArgs, root: &Path) -> Result<Vec<Row>> {
    crate::backend::check(a.backend, Dtype::F32)?;
    let data = a.data.clone().unwrap_or_else(|| default_data(root));
    if !data.is_file() {
        bail!(
            "{}: no such data file (give --data or GRADLENS_DATA)",
            data.display()
        );
    }
    let records = load_records(&data)?;
    eprintln!("machine: {}", machine());
    let gpu = GpuMemory::start(a.backend);
    let mut all = Vec::new();
    for spec in &a.models {
        let dir = checkpoint_dir(spec, a, root)?;
        let label = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.clone());
        eprintln!(
            "[{label}] gradlens on {}: {} samples of {} (+{} warm-up), max_length {}",
            a.backend,
            a.samples,
            data.display(),
            a.warmup,
            a.max_length
        );
        let rows = dispatch(
            a.backend,
            Dtype::F32,
            GradlensRows {
                a,
                model: &dir,
                label: &label,
                records: &records,
                data: &data,
                gpu: &gpu,
            },
        )?;
        all.extend(rows);
        all.extend(train_rows(a, &dir, &label, &records)?);
        all.extend(python_rows(a, &dir, &label, &data)?);
    }
    print_table(&all, a);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&all)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(all)
}

/// The spectra's share of a sample's time: from the split where a row has one, and for the end to
/// end rows (no split) the time they add to the forward+backward-only row (`*`).
fn spectra_share(r: &Row, fwd_samples_per_s: Option<f64>) -> Option<(f64, &'static str)> {
    if r.spectra_s.is_finite() && r.fwd_bwd_s.is_finite() && r.spectra_s > 0.0 {
        return Some((r.spectra_s / (r.fwd_bwd_s + r.spectra_s), ""));
    }
    if r.name.contains("(end to end)") {
        return fwd_samples_per_s.map(|f| (1.0 - r.samples_per_s / f, "*"));
    }
    None
}

/// The result table, with ratios against the paper's pipeline and the svdvals variant (same model).
pub fn print_table(rows: &[Row], a: &BenchArgs) {
    let models: Vec<&str> = {
        let mut m: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
        m.dedup();
        m
    };
    println!("\nmachine: {}", machine());
    for model in models {
        let rows: Vec<&Row> = rows.iter().filter(|r| r.model == model).collect();
        let base = |needle: &str| {
            rows.iter()
                .find(|r| r.name.contains(needle))
                .map(|r| r.samples_per_s)
        };
        let (paper, svdvals) = (base("full SVD"), base("svdvals"));
        let fwd = rows
            .iter()
            .find(|r| r.name.contains("forward+backward only"))
            .map(|r| r.samples_per_s);
        println!(
            "\n{model}: max_length {}, warm-up {}, {} CPU threads, backend {}",
            a.max_length,
            a.warmup,
            if a.threads == 0 {
                "all".to_string()
            } else {
                a.threads.to_string()
            },
            a.backend
        );
        println!(
            "{:<66} {:>4} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>8} {:>7} {:>9}",
            "pipeline",
            "n",
            "tokens",
            "samples/s",
            "fwd+bwd s",
            "spectra s",
            "host MB",
            "GPU MB",
            "×paper",
            "×svdvals",
            "÷fwdbwd",
            "spectra %"
        );
        for r in rows {
            let ratio = |b: Option<f64>| {
                b.map_or("-".to_string(), |b| format!("{:.2}", r.samples_per_s / b))
            };
            let slow = fwd.map_or("-".to_string(), |f| format!("{:.2}", f / r.samples_per_s));
            let share = spectra_share(r, fwd)
                .map_or("-".to_string(), |(p, how)| format!("{:.1}{how}", 100.0 * p));
            println!(
                "{:<66} {:>4} {:>6.0} {:>9.3} {:>9.3} {:>9.3} {:>8.0} {:>8.0} {:>7} {:>8} {:>7} {:>9}",
                r.name,
                r.samples,
                r.mean_tokens,
                r.samples_per_s,
                r.fwd_bwd_s,
                r.spectra_s,
                r.peak_rss_mb,
                r.peak_gpu_mb,
                ratio(paper),
                ratio(svdvals),
                slow,
                share
            );
        }
        println!(
            "spectra %: share of a sample's time; rows with the split: spectra ÷ (fwd+bwd + spectra); \
             * pipelined: the time added to forward+backward alone, 1 − (samples/s ÷ forward+backward \
             only's)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{Row, spectra_share};

    fn row(name: &str, samples_per_s: f64, fwd_bwd_s: f64, spectra_s: f64) -> Row {
        Row {
            model: "m".into(),
            name: name.into(),
            samples: 20,
            samples_per_s,
            fwd_bwd_s,
            spectra_s,
            mean_tokens: 549.0,
            peak_rss_mb: 1.0,
            peak_gpu_mb: f64::NAN,
        }
    }

    #[test]
    fn spectra_share_from_the_split_or_the_added_time() {
        // Sequential: 1.75 s of 7.41 + 1.75 s.
        let (p, how) =
            spectra_share(&row("factored, sequential", 0.109, 7.41, 1.75), None).unwrap();
        assert!((p - 1.75 / 9.16).abs() < 1e-12 && how.is_empty());
        // Pipelined: 0.119 samples/s against 0.152 for forward+backward alone.
        let r = row(
            "auto spectra, pipelined (end to end)",
            0.119,
            f64::NAN,
            f64::NAN,
        );
        let (p, how) = spectra_share(&r, Some(0.152)).unwrap();
        assert!((p - (1.0 - 0.119 / 0.152)).abs() < 1e-12 && how == "*");
        assert!(spectra_share(&r, None).is_none());
        // Forward+backward only: no spectra.
        assert!(
            spectra_share(&row("forward+backward only", 0.152, 6.59, 0.0), Some(0.152)).is_none()
        );
    }
}
