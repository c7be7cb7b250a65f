//! Will a model and one sample fit in memory? An estimate from the checkpoint's config alone
//! (the family's own tensor list, [`gradlens_models::describe`]), checked against what the machine
//! has before anything large is allocated, so that a bad config ends with an error that gives the
//! numbers instead of an out-of-memory kill.

use anyhow::{Result, bail};
use std::path::Path;

/// The estimated peak memory of measuring one sample, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The weights in the compute dtype.
    pub weights: f64,
    /// One sample of `tokens` positions: saved activations, attention scores, logits, gradients.
    pub sample: f64,
    /// Training: the accumulated batch gradients, AdamW's two moments and the update (of the
    /// trained weights, or of LoRA's adapters with the frozen copies of their targets); 0 for
    /// measuring.
    pub training: f64,
}

impl Estimate {
    pub fn total(&self) -> f64 {
        self.weights + self.sample + self.training
    }
}

/// Estimate for the checkpoint whose config.json is `config`, `tokens` positions per sample and
/// `dtype_bytes` per element (4 for f32, 8 for f64).
pub fn estimate(config: &Path, tokens: usize, dtype_bytes: usize) -> Result<Estimate> {
    let (_, tensors) = gradlens_models::describe(config)?;
    let raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config)?)?;
    let heads = raw
        .get("num_attention_heads")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1) as f64;
    let layers = raw
        .get("num_hidden_layers")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1) as f64;
    let (b, t) = (dtype_bytes as f64, tokens as f64);
    let mut weights = 0.0;
    let mut sample = 0.0;
    for d in &tensors {
        let n: f64 = d.shape.iter().map(|&x| x as f64).product();
        weights += n * b;
        if let [rows, cols] = d.shape[..] {
            // Each matrix's input and output at every position, kept for the backward pass, and
            // their gradients; a measured weight's gradient on the device and on the host.
            sample += 2.0 * t * (rows + cols) as f64 * b;
            if gradlens_models::paper_selector(&d.name, [rows, cols]) {
                sample += 2.0 * n * b;
            }
        }
    }
    // Attention scores and probabilities per layer and head, and their gradients.
    sample += 3.0 * layers * heads * t * t * b;
    Ok(Estimate {
        weights,
        sample,
        training: 0.0,
    })
}

/// LoRA's shape for [`training_state`]: its rank and which weights it adapts (by name).
pub struct LoraShape<'a> {
    pub rank: usize,
    pub targets: &'a dyn Fn(&str) -> bool,
}

/// What training adds to [`estimate`] (`Estimate::training`), per tensor of the checkpoint
/// (name, shape): `trained` tensors keep an accumulated gradient, two moments and the update (4
/// values an element); with `lora` (rank r), each target matrix keeps a frozen copy and its
/// accumulated gradient, and its adapters (r·(rows + cols) elements) 4 values an element; a
/// measured weight that is not trained keeps its accumulated gradient.
pub fn training_state(
    config: &Path,
    dtype_bytes: usize,
    trained: &dyn Fn(&str, &[usize]) -> bool,
    lora: Option<LoraShape<'_>>,
) -> Result<f64> {
    let (_, tensors) = gradlens_models::describe(config)?;
    let b = dtype_bytes as f64;
    let mut bytes = 0.0;
    for d in &tensors {
        let n: f64 = d.shape.iter().map(|&x| x as f64).product();
        let measured =
            matches!(d.shape[..], [r, c] if gradlens_models::paper_selector(&d.name, [r, c]));
        bytes += match (&lora, &d.shape[..]) {
            (Some(l), [rows, cols]) if (l.targets)(&d.name) => {
                2.0 * n * b + 4.0 * (l.rank * (rows + cols)) as f64 * b
            }
            (Some(_), _) if measured => n * b,
            (Some(_), _) => 0.0,
            (None, _) if trained(&d.name, &d.shape) => 4.0 * n * b,
            (None, _) if measured => n * b,
            (None, _) => 0.0,
        };
    }
    Ok(bytes)
}

/// The memory this process may use: the smaller of the system's available memory and what the
/// cgroup (a container, a Slurm job) leaves; `None` where neither can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `64G`, `512M`, `1.5T`, or a number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], t[i..].to_ascii_uppercase()),
        None => (t, String::new()),
    };
    let scale: f64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024f64.powi(2),
        "G" => 1024f64.powi(3),
        "T" => 1024f64.powi(4),
        _ => return Err(format!("{s:?}: expected a size like 64G, 512M or 1T")),
    };
    match num.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok((x * scale) as u64),
        _ => Err(format!(
            "{s:?}: expected a positive size like 64G, 512M or 1T"
        )),
    }
}

/// Bytes as a person reads them (`1.50 GiB`, `12.0 MiB`).
fn gib(x: f64) -> String {
    let units = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (name, shift) in units {
        let scale = (1u64 << shift) as f64;
        if x >= scale {
            return format!("{:.2} {name}", x / scale);
        }
    }
    format!("{x:.0} bytes")
}

/// Refuse a run whose estimate exceeds the memory available (or `max_memory` when given).
pub fn check_fits(
    model_dir: &Path,
    tokens: usize,
    dtype_bytes: usize,
    max_memory: Option<u64>,
) -> Result<Estimate> {
    let config = model_dir.join("config.json");
    let e = estimate(&config, tokens, dtype_bytes)?;
    check_estimate(&config, e, tokens, max_memory)
}

/// Refuse a run whose estimate `e` exceeds the memory available (or `max_memory`).
pub fn check_estimate(
    config: &Path,
    e: Estimate,
    tokens: usize,
    max_memory: Option<u64>,
) -> Result<Estimate> {
    let (limit, source) = match max_memory {
        Some(m) => (Some(m), "is the limit --max-memory sets"),
        None => (available_memory(), "is available on this machine"),
    };
    if let Some(limit) = limit
        && e.total() > limit as f64
    {
        let training = if e.training > 0.0 {
            format!(", training state {}", gib(e.training))
        } else {
            String::new()
        };
        bail!(
            "{}: {} this model needs about {} (weights {}, one sample of {tokens} tokens \
             {}{training}) but only {} {source}: lower --max-length, use a smaller model{}, or \
             give --max-memory SIZE to run anyway",
            config.display(),
            if e.training > 0.0 {
                "training"
            } else {
                "measuring"
            },
            gib(e.total()),
            gib(e.weights),
            gib(e.sample),
            gib(limit as f64),
            if e.training > 0.0 { " or LoRA" } else { "" },
        );
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LoRA's training state (frozen copies, accumulated gradients, adapters and their moments)
    /// is below full fine-tuning's of the same weights, and a limit below the estimate is one
    /// error that names the training state.
    #[test]
    fn the_training_state_knows_lora() {
        let config =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen2-tiny/config.json");
        let attention =
            |n: &str, s: &[usize]| s.len() == 2 && gradlens_models::paper_selector(n, [s[0], s[1]]);
        let full = training_state(&config, 8, &attention, None).unwrap();
        let targets = |n: &str| n.contains("self_attn") && n.ends_with("proj.weight");
        let lora = training_state(
            &config,
            8,
            &|_, _| false,
            Some(LoraShape {
                rank: 4,
                targets: &targets,
            }),
        )
        .unwrap();
        assert!(0.0 < lora && lora < full, "{lora} vs {full}");
        let mut e = estimate(&config, 64, 8).unwrap();
        e.training = lora;
        let err = check_estimate(&config, e, 64, Some(1024))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("training this model") && err.contains("training state"),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64G").unwrap(), 64 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("3Q").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn estimate_grows_with_tokens_and_dtype() {
        let cfg =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/shapes/qwen2-0.5b.json");
        let a = estimate(&cfg, 512, 4).unwrap();
        let b = estimate(&cfg, 1024, 4).unwrap();
        let c = estimate(&cfg, 1024, 8).unwrap();
        // Qwen2-0.5B: 494M parameters (tied head).
        assert!((a.weights / 4.0 - 494e6).abs() < 5e6, "{a:?}");
        assert!(b.sample > a.sample && c.total() > b.total());
        // What the benchmark runs on 24 GiB fits with room to spare.
        assert!(b.total() < 16.0 * 1024f64.powi(3), "{b:?}");
    }
}
