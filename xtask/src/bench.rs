//! `cargo xtask bench`: gradlens (f32; dense and factored spectra) against the paper's pipeline in
//! PyTorch + transformers (full SVD) and the svdvals variant, on the same checkpoint and the same
//! samples, in one run. Prints samples/s, forward+backward and spectra seconds per sample, peak
//! memory, and the ratios.

use anyhow::{Context, Result, bail};
use gradlens::backend::CpuF32;
use gradlens::data::load_records;
use gradlens::grads::{Measurer, Work, finish};
use gradlens::sample::PromptMode;
use gradlens::stats::Spectra;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A model shape for a random checkpoint (Qwen2 family).
pub struct Shape {
    #[allow(dead_code)]
    pub name: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub inter: usize,
    pub vocab: usize,
}

/// Qwen2-0.5B's public shape.
pub const QWEN2_05B: Shape = Shape {
    name: "qwen2-0.5b",
    hidden: 896,
    layers: 24,
    heads: 14,
    kv_heads: 2,
    inter: 4864,
    vocab: 151936,
};

/// xorshift64* with Box–Muller: deterministic normal samples without a dependency.
struct Normal(u64);
impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn fill(&mut self, n: usize, std: f32) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * 4);
        while out.len() < n * 4 {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            for z in [
                r * (2.0 * std::f64::consts::PI * u2).cos(),
                r * (2.0 * std::f64::consts::PI * u2).sin(),
            ] {
                if out.len() < n * 4 {
                    out.extend_from_slice(&((z as f32) * std).to_le_bytes());
                }
            }
        }
        out
    }
}

/// Write a random-initialised Qwen2 checkpoint of `shape` (f32 safetensors, tied embeddings as
/// Qwen2-0.5B) with the tiny fixture's tokenizer, unless it exists.
pub fn random_checkpoint(
    shape: &Shape,
    dir: &Path,
    tokenizer_from: &Path,
    seed: u64,
) -> Result<()> {
    if dir.join("model.safetensors").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let s = shape;
    let d = s.hidden / s.heads;
    let mut rng = Normal(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let ones = |n: usize| 1f32.to_le_bytes().repeat(n);
    let zeros = |n: usize| vec![0u8; n * 4];
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    tensors.push((
        "model.embed_tokens.weight".into(),
        vec![s.vocab, s.hidden],
        rng.fill(s.vocab * s.hidden, 0.02),
    ));
    for i in 0..s.layers {
        let p = format!("model.layers.{i}");
        let mut mat = |name: &str, r: usize, c: usize| {
            (format!("{p}.{name}"), vec![r, c], rng.fill(r * c, 0.02))
        };
        let list = vec![
            mat("self_attn.q_proj.weight", s.hidden, s.hidden),
            mat("self_attn.k_proj.weight", s.kv_heads * d, s.hidden),
            mat("self_attn.v_proj.weight", s.kv_heads * d, s.hidden),
            mat("self_attn.o_proj.weight", s.hidden, s.hidden),
            mat("mlp.gate_proj.weight", s.inter, s.hidden),
            mat("mlp.up_proj.weight", s.inter, s.hidden),
            mat("mlp.down_proj.weight", s.hidden, s.inter),
        ];
        tensors.extend(list);
        tensors.push((
            format!("{p}.self_attn.q_proj.bias"),
            vec![s.hidden],
            zeros(s.hidden),
        ));
        tensors.push((
            format!("{p}.self_attn.k_proj.bias"),
            vec![s.kv_heads * d],
            zeros(s.kv_heads * d),
        ));
        tensors.push((
            format!("{p}.self_attn.v_proj.bias"),
            vec![s.kv_heads * d],
            zeros(s.kv_heads * d),
        ));
        tensors.push((
            format!("{p}.input_layernorm.weight"),
            vec![s.hidden],
            ones(s.hidden),
        ));
        tensors.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![s.hidden],
            ones(s.hidden),
        ));
    }
    tensors.push(("model.norm.weight".into(), vec![s.hidden], ones(s.hidden)));
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": s.hidden,
        "intermediate_size": s.inter, "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads, "vocab_size": s.vocab, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 32768, "tie_word_embeddings": true, "hidden_act": "silu",
        "torch_dtype": "float32", "use_sliding_window": false
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer_from.join(f), dir.join(f))?;
    }
    Ok(())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One row of the result table.
pub struct Row {
    pub name: String,
    pub samples_per_s: f64,
    pub fwd_bwd_s: f64,
    pub spectra_s: f64,
    pub peak_mb: f64,
}

fn gradlens_rows(model: &Path, data: &Path, samples: usize, max_length: usize) -> Result<Vec<Row>> {
    let records = load_records(data)?;
    let n = samples.min(records.len());
    let mut measurer =
        Measurer::<CpuF32>::load(model, max_length, PromptMode::Base, &Default::default())?;
    let mut rows = Vec::new();
    for mode in [Spectra::Dense, Spectra::Factored] {
        measurer.spectra = mode;
        let (mut fb, mut st) = (0.0, 0.0);
        for (i, r) in records.iter().take(n).enumerate() {
            let t0 = Instant::now();
            let work = measurer.forward_backward(i, r)?;
            let t1 = Instant::now();
            if let Work::Skipped { reason, .. } = &work {
                bail!("bench sample {i} skipped: {reason}");
            }
            finish(work, mode, false)?.map_err(|(_, r)| anyhow::anyhow!(r))?;
            fb += (t1 - t0).as_secs_f64();
            st += t1.elapsed().as_secs_f64();
        }
        rows.push(Row {
            name: format!("gradlens f32, {mode:?} spectra, sequential").to_lowercase(),
            samples_per_s: n as f64 / (fb + st),
            fwd_bwd_s: fb / n as f64,
            spectra_s: st / n as f64,
            peak_mb: peak_rss_mb(),
        });
    }
    // End to end as users run it: auto spectra, statistics pipelined behind the next sample.
    measurer.spectra = Spectra::Auto;
    let tmp = std::env::temp_dir().join(format!("gradlens-bench-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let t0 = Instant::now();
    measurer.measure_file(&records, 0..n, &tmp, None, None)?;
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(gradlens::output::skipped_path(&tmp));
    rows.push(Row {
        name: "gradlens f32, auto spectra, pipelined (end to end)".into(),
        samples_per_s: n as f64 / secs,
        fwd_bwd_s: f64::NAN,
        spectra_s: f64::NAN,
        peak_mb: peak_rss_mb(),
    });
    Ok(rows)
}

fn python_rows(
    python: &str,
    model: &Path,
    data: &Path,
    samples: usize,
    max_length: usize,
    threads: usize,
) -> Result<Vec<Row>> {
    let ok = Command::new(python)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "note: {python} cannot import torch and transformers: the PyTorch side is skipped (pip install torch transformers tokenizers safetensors)"
        );
        return Ok(Vec::new());
    }
    let script = crate::repo_root().join("scripts/bench_reference.py");
    let mut rows = Vec::new();
    for variant in ["paper", "svdvals"] {
        let out = Command::new(python)
            .arg(&script)
            .arg("--model")
            .arg(model)
            .arg("--data")
            .arg(data)
            .args([
                "--samples",
                &samples.to_string(),
                "--max-length",
                &max_length.to_string(),
                "--threads",
                &threads.to_string(),
                "--variant",
                variant,
            ])
            .env("OMP_NUM_THREADS", threads.to_string())
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
        rows.push(Row {
            name: if variant == "paper" {
                "PyTorch + transformers, the paper's method (full SVD)".into()
            } else {
                "PyTorch + transformers, svdvals".into()
            },
            samples_per_s: v["samples_per_s"].as_f64().unwrap_or(f64::NAN),
            fwd_bwd_s: v["fwd_bwd_s"].as_f64().unwrap_or(f64::NAN),
            spectra_s: v["spectra_s"].as_f64().unwrap_or(f64::NAN),
            peak_mb: v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        });
    }
    Ok(rows)
}

pub struct BenchArgs {
    pub shapes: Vec<String>,
    pub samples: usize,
    pub max_length: usize,
    pub threads: usize,
    pub data: PathBuf,
    pub python: String,
    pub workdir: PathBuf,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let root = crate::repo_root();
    let tiny = root.join("fixtures/qwen2-tiny");
    for shape in &a.shapes {
        let model = match shape.as_str() {
            "tiny" => tiny.clone(),
            "qwen2-0.5b" => {
                let dir = a.workdir.join("qwen2-0.5b");
                eprintln!(
                    "random checkpoint with Qwen2-0.5B's shape: {} (made once)",
                    dir.display()
                );
                random_checkpoint(&QWEN2_05B, &dir, &tiny, 0)?;
                dir
            }
            other => bail!("unknown shape {other:?} (tiny, qwen2-0.5b)"),
        };
        eprintln!(
            "[{shape}] gradlens: {} samples of {}, max_length {}, {} threads",
            a.samples,
            a.data.display(),
            a.max_length,
            a.threads
        );
        let mut rows = gradlens_rows(&model, &a.data, a.samples, a.max_length)?;
        eprintln!("[{shape}] PyTorch reference");
        rows.extend(python_rows(
            &a.python,
            &model,
            &a.data,
            a.samples,
            a.max_length,
            a.threads,
        )?);
        let base = |needle: &str| {
            rows.iter()
                .find(|r| r.name.contains(needle))
                .map(|r| r.samples_per_s)
        };
        let (paper, svdvals) = (base("full SVD"), base("svdvals"));
        println!(
            "\n{shape}: {} samples, max_length {}, {} threads",
            a.samples, a.max_length, a.threads
        );
        println!(
            "{:<56} {:>10} {:>11} {:>11} {:>9} {:>9} {:>9}",
            "pipeline", "samples/s", "fwd+bwd s", "spectra s", "peak MB", "×paper", "×svdvals"
        );
        for r in &rows {
            let ratio = |b: Option<f64>| {
                b.map_or("-".to_string(), |b| format!("{:.2}", r.samples_per_s / b))
            };
            println!(
                "{:<56} {:>10.3} {:>11.3} {:>11.3} {:>9.0} {:>9} {:>9}",
                r.name,
                r.samples_per_s,
                r.fwd_bwd_s,
                r.spectra_s,
                r.peak_mb,
                ratio(paper),
                ratio(svdvals)
            );
        }
    }
    Ok(())
}
