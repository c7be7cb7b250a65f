//! Reading the parts of config.json that several families share: the rotary settings (both the
//! classic `rope_theta` + `rope_scaling` keys and transformers 5's `rope_parameters`), and
//! `layer_types` (which layers use sliding-window attention).

use crate::blocks::RopeScaling;
use gradlens_core::{CheckpointError, Result};
use serde_json::Value;
use std::path::Path;

fn config_error(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn number(path: &Path, obj: &Value, key: &str, ctx: &str) -> Result<f64> {
    obj.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| config_error(path, format!("{ctx}: missing number `{key}`")))
}

/// `(rope_theta, scaling)`; `default_theta` is the family's transformers default.
pub fn rope(path: &Path, config: &Value, default_theta: f64) -> Result<(f64, RopeScaling)> {
    // transformers >= 5 writes `rope_parameters`, older checkpoints `rope_theta` / `rope_scaling`.
    let params = config.get("rope_parameters").filter(|v| !v.is_null());
    let theta = match config.get("rope_theta").and_then(Value::as_f64) {
        Some(t) => t,
        None => params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(default_theta),
    };
    let scaling = match config
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .or(params)
    {
        None => RopeScaling::None,
        Some(s) => rope_scaling(path, s)?,
    };
    Ok((theta, scaling))
}

/// One set of rotary parameters (`{"rope_type": …, "factor": …, "rope_theta": …}`, as in one entry
/// of transformers 5's per-layer-type `rope_parameters`): `(rope_theta, scaling)`.
pub fn rope_params(path: &Path, params: &Value, default_theta: f64) -> Result<(f64, RopeScaling)> {
    let theta = params
        .get("rope_theta")
        .and_then(Value::as_f64)
        .unwrap_or(default_theta);
    Ok((theta, rope_scaling(path, params)?))
}

/// The scaling of a `rope_scaling` / `rope_parameters` object.
fn rope_scaling(path: &Path, s: &Value) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: number(path, s, "factor", "rope_scaling (linear)")?,
        },
        "llama3" => {
            let ctx = "rope_scaling (llama3)";
            RopeScaling::Llama3 {
                factor: number(path, s, "factor", ctx)?,
                low_freq_factor: number(path, s, "low_freq_factor", ctx)?,
                high_freq_factor: number(path, s, "high_freq_factor", ctx)?,
                original_max_position_embeddings: number(
                    path,
                    s,
                    "original_max_position_embeddings",
                    ctx,
                )?,
            }
        }
        other => {
            return Err(config_error(
                path,
                format!(
                    "unsupported rope_scaling type {other:?} (supported: default, linear, llama3)"
                ),
            ));
        }
    })
}

/// Per layer, whether it uses sliding-window attention, from `layer_types` when the config has it,
/// else from the family's own rule.
pub fn sliding_layers(
    path: &Path,
    config: &Value,
    layers: usize,
    family_rule: impl Fn(usize) -> bool,
) -> Result<Vec<bool>> {
    match config.get("layer_types").filter(|v| !v.is_null()) {
        None => Ok((0..layers).map(family_rule).collect()),
        Some(Value::Array(types)) if types.len() == layers => types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(config_error(
                    path,
                    format!("layer_types: unsupported entry {t}"),
                )),
            })
            .collect(),
        Some(_) => Err(config_error(
            path,
            format!("layer_types must be a list of {layers} strings"),
        )),
    }
}

/// The activation named by `hidden_act` / `hidden_activation`.
pub fn activation(path: &Path, name: &str) -> Result<crate::blocks::Activation> {
    use crate::blocks::Activation;
    match name {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_pytorch_tanh" | "gelu_tanh" => Ok(Activation::GeluTanh),
        other => Err(config_error(
            path,
            format!("unsupported activation {other:?} (supported: silu, gelu_pytorch_tanh)"),
        )),
    }
}

/// A structural check that config.json passes before any tensor is read.
pub fn ensure(path: &Path, ok: bool, message: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(config_error(path, message))
    }
}

/// Heads must divide evenly: `hidden_size` by heads (when head_dim is derived) and heads by kv heads.
pub fn check_heads(path: &Path, hidden: usize, heads: usize, kv_heads: usize) -> Result<()> {
    ensure(
        path,
        heads > 0 && hidden.is_multiple_of(heads),
        "hidden_size must be a multiple of num_attention_heads",
    )?;
    ensure(
        path,
        kv_heads > 0 && heads.is_multiple_of(kv_heads),
        "num_attention_heads must be a multiple of num_key_value_heads",
    )
}

/// Bounds on config.json's sizes, far above any released model's: a value outside them is a
/// mistake (or a hostile file), refused before anything is allocated.
const SIZE_LIMITS: &[(&str, u64)] = &[
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 4096),
    ("num_attention_heads", 4096),
    ("num_key_value_heads", 4096),
    ("head_dim", 1 << 14),
    ("vocab_size", 1 << 23),
];

/// Every size key present in config.json is a whole number from 1 to its bound, and the largest
/// matrices they imply fit in memory addresses (checked products).
pub fn check_sizes(path: &Path, config: &Value) -> Result<()> {
    let mut sizes = std::collections::HashMap::new();
    for &(key, max) in SIZE_LIMITS {
        let Some(v) = config.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let n = v.as_u64().ok_or_else(|| {
            config_error(
                path,
                format!("field `{key}`: expected a whole number, found {v}"),
            )
        })?;
        ensure(
            path,
            (1..=max).contains(&n),
            format!("field `{key}` is {n}: expected a size from 1 to {max}"),
        )?;
        sizes.insert(key, n);
    }
    let get = |k: &str| sizes.get(k).copied().unwrap_or(1);
    let elements = [
        get("vocab_size").checked_mul(get("hidden_size")),
        get("hidden_size").checked_mul(get("intermediate_size")),
    ];
    for e in elements {
        ensure(
            path,
            e.is_some_and(|n| n < 1 << 40),
            "hidden_size × vocab_size or hidden_size × intermediate_size is beyond 2^40 elements",
        )?;
    }
    Ok(())
}

/// `(kv_heads, head_dim)`: `num_key_value_heads` defaults to the heads, `head_dim` to
/// `hidden_size / heads` (which must then divide evenly); the heads must be a multiple of the kv
/// heads either way.
pub fn head_dims(
    path: &Path,
    hidden: usize,
    heads: usize,
    kv_heads: Option<usize>,
    head_dim: Option<usize>,
) -> Result<(usize, usize)> {
    let kv_heads = kv_heads.unwrap_or(heads);
    let head_dim = match head_dim {
        Some(d) => d,
        None => {
            check_heads(path, hidden, heads, kv_heads)?;
            hidden / heads
        }
    };
    ensure(
        path,
        kv_heads > 0 && heads.is_multiple_of(kv_heads),
        "num_attention_heads must be a multiple of num_key_value_heads",
    )?;
    ensure(path, head_dim > 0, "head_dim must be positive")?;
    Ok((kv_heads, head_dim))
}

/// The activation of the Gemma families: `hidden_activation` first, then `hidden_act`, default
/// `gelu_pytorch_tanh`; plain "gelu" means the tanh approximation there (as transformers reads it).
pub fn gelu_activation(
    path: &Path,
    hidden_act: Option<&str>,
    hidden_activation: Option<&str>,
) -> Result<crate::blocks::Activation> {
    match hidden_activation
        .or(hidden_act)
        .unwrap_or("gelu_pytorch_tanh")
    {
        "gelu" => Ok(crate::blocks::Activation::GeluTanh),
        other => activation(path, other),
    }
}
