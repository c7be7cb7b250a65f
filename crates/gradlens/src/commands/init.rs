//! `gradlens init`: a random-initialised checkpoint from a config.json, so that benchmarks and
//! memory checks at real shapes need no downloaded weights.
//!
//! The parameter list comes from the family's own loader ([`gradlens_models::describe`]), so every
//! registered architecture is supported and the result loads by construction. Weights (2-D) are
//! drawn from N(0, initializer_range²) as transformers initialises them; biases are 0 and norm
//! scales start at their identity (1 for `w·x`, 0 for Gemma's `(1+w)·x`). The values are a
//! function of the seed and the tensor's name only (reproducible, independent of thread count).

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::io::Write;
use std::path::PathBuf;

/// How `init` stores the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreDtype {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for StoreDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(StoreDtype::F32),
            "bf16" | "bfloat16" => Ok(StoreDtype::Bf16),
            o => Err(format!("unknown storage dtype {o:?} (f32, bf16)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    /// A config.json (or a directory holding one).
    pub config: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub dtype: StoreDtype,
    /// Copy tokenizer.json and tokenizer_config.json from this directory.
    pub tokenizer: Option<PathBuf>,
    /// Replace an existing model.safetensors in `out`.
    pub force: bool,
}

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct InitSummary {
    pub model_type: String,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

/// splitmix64: seeds of independent streams.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across platforms and Rust versions.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// xoshiro-free and dependency-free: xorshift64* uniforms, Box–Muller normals.
struct Normal(u64);
impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn pair(&mut self) -> (f64, f64) {
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        (r * a.cos(), r * a.sin())
    }
}

const CHUNK: usize = 1 << 20;

/// The little-endian bytes of one tensor: N(0, std²) values, or `fill` everywhere.
fn tensor_bytes(
    seed: u64,
    name: &str,
    n: usize,
    std: f64,
    fill: Option<f64>,
    dtype: StoreDtype,
) -> Vec<u8> {
    let width = match dtype {
        StoreDtype::F32 => 4,
        StoreDtype::Bf16 => 2,
    };
    let put = |out: &mut Vec<u8>, x: f64| match dtype {
        StoreDtype::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
        StoreDtype::Bf16 => out.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
    };
    let base = mix(seed ^ name_hash(name));
    let chunks: Vec<Vec<u8>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let len = CHUNK.min(n - c * CHUNK);
            let mut out = Vec::with_capacity(len * width);
            match fill {
                Some(v) => (0..len).for_each(|_| put(&mut out, v)),
                None => {
                    let mut rng = Normal(mix(base ^ mix(c as u64)) | 1);
                    let mut left = len;
                    while left > 0 {
                        let (a, b) = rng.pair();
                        put(&mut out, a * std);
                        if left > 1 {
                            put(&mut out, b * std);
                        }
                        left = left.saturating_sub(2);
                    }
                }
            }
            out
        })
        .collect();
    chunks.concat()
}

/// Write a random checkpoint: config.json, model.safetensors (streamed, one tensor in memory at a
/// time), and the tokenizer files when given.
pub fn init_checkpoint(opts: &InitOptions) -> Result<InitSummary> {
    let config_path = if opts.config.is_dir() {
        opts.config.join("config.json")
    } else {
        opts.config.clone()
    };
    let (model_type, tensors) = gradlens_models::describe(&config_path)?;
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}: cannot read", config_path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", config_path.display()))?;
    let std = match config.get("initializer_range") {
        None => 0.02,
        Some(v) => v.as_f64().filter(|x| *x > 0.0).with_context(|| {
            format!(
                "{}: initializer_range must be a positive number",
                config_path.display()
            )
        })?,
    };
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create", opts.out.display()))?;
    let weights = opts.out.join("model.safetensors");
    if weights.exists() && !opts.force {
        bail!("{}: exists (pass --force to replace it)", weights.display());
    }
    let (dtype_name, width) = match opts.dtype {
        StoreDtype::F32 => ("F32", 4u64),
        StoreDtype::Bf16 => ("BF16", 2u64),
    };
    // One tensor is in memory at a time: the largest must fit.
    let largest = tensors
        .iter()
        .map(|t| t.shape.iter().map(|&d| d as f64).product::<f64>())
        .fold(0.0, f64::max)
        * width as f64;
    if let Some(avail) = crate::measure::resources::available_memory()
        && largest > avail as f64
    {
        bail!(
            "{}: its largest tensor takes {:.2} GiB but only {:.2} GiB of memory is available",
            config_path.display(),
            largest / 1024f64.powi(3),
            avail as f64 / 1024f64.powi(3)
        );
    }
    // The safetensors header: offsets in request order, then padded to 8 bytes.
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    let mut parameters = 0u64;
    for t in &tensors {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product();
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": dtype_name,
                "shape": t.shape,
                "data_offsets": [offset, offset + n * width],
            }),
        );
        offset += n * width;
        parameters += n;
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "gradlens_init_seed": opts.seed.to_string()}),
    );
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let tmp = opts.out.join("model.safetensors.partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 24, file);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    for t in &tensors {
        let n: usize = t.shape.iter().product();
        let fill = match (t.shape.len(), t.identity) {
            (_, Some(v)) => Some(v),
            (1, None) => Some(0.0), // biases
            _ => None,
        };
        w.write_all(&tensor_bytes(opts.seed, &t.name, n, std, fill, opts.dtype))
            .with_context(|| format!("{}: write failed", tmp.display()))?;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, &weights)?;
    config["torch_dtype"] = serde_json::json!(match opts.dtype {
        StoreDtype::F32 => "float32",
        StoreDtype::Bf16 => "bfloat16",
    });
    std::fs::write(
        opts.out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    if let Some(dir) = &opts.tokenizer {
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(dir.join(f), opts.out.join(f))
                .with_context(|| format!("{}: cannot copy", dir.join(f).display()))?;
        }
    }
    Ok(InitSummary {
        model_type,
        tensors: tensors.len(),
        parameters,
        bytes: 8 + header.len() as u64 + offset,
        path: weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_depend_on_seed_and_name_only() {
        let a = tensor_bytes(1, "w", 3 * CHUNK + 5, 0.02, None, StoreDtype::F32);
        let b = tensor_bytes(1, "w", 3 * CHUNK + 5, 0.02, None, StoreDtype::F32);
        let c = tensor_bytes(2, "w", 3 * CHUNK + 5, 0.02, None, StoreDtype::F32);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), (3 * CHUNK + 5) * 4);
        let xs: Vec<f64> = a
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((sd - 0.02).abs() < 1e-4, "sd {sd}");
    }
}
