//! Reading the parts of config.json that several families share: the rotary settings (both the
//! classic `rope_theta` + `rope_scaling` keys and transformers 5's `rope_parameters`), and
//! `layer_types` (which layers use sliding-window attention).

use crate::blocks::{self, RopeScaling};
use gradlens_core::{CheckpointError, Result};
use serde_json::Value;
use std::path::Path;

/// What a family's `load` starts from: its config.json, and the decoder and attention that the
/// keys every family shares already describe ([`config::common`], with the family's `DEFAULTS`).
pub struct FamilyConfig<'a> {
    pub raw: &'a serde_json::Value,
    pub path: &'a Path,
    pub spec: blocks::DecoderSpec,
    pub attention: blocks::AttentionOptions,
}

impl FamilyConfig<'_> {
    /// The family's own keys (its config struct), errors naming the field.
    pub fn own<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        gradlens_core::parse_config(self.path, self.raw)
    }

    /// The rotary table of `rope_theta` (default `default_theta`) and `rope_scaling`.
    pub fn rope_table(&self, default_theta: f64) -> Result<blocks::RopeTable> {
        rope_table(self.path, self.raw, default_theta, self.attention.head_dim)
    }

    /// Per layer, whether it slides: `layer_types`, else the family's rule.
    pub fn sliding_layers(&self, rule: impl Fn(usize) -> bool) -> Result<Vec<bool>> {
        sliding_layers(self.path, self.raw, self.spec.layers, rule)
    }
}

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
        Some(s) => rope_scaling(
            path,
            s,
            config
                .get("max_position_embeddings")
                .and_then(Value::as_f64),
        )?,
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
    Ok((theta, rope_scaling(path, params, None)?))
}

/// The scaling of a `rope_scaling` / `rope_parameters` object.
fn rope_scaling(path: &Path, s: &Value, max_positions: Option<f64>) -> Result<RopeScaling> {
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
        "yarn" => {
            let ctx = "rope_scaling (yarn)";
            let factor = number(path, s, "factor", ctx)?;
            let opt = |key: &str| s.get(key).and_then(Value::as_f64);
            let mscale = |m: f64| {
                if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * m * factor.ln() + 1.0
                }
            };
            let attention_factor = match (
                opt("attention_factor"),
                opt("mscale"),
                opt("mscale_all_dim"),
            ) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(m) / mscale(all),
                _ => mscale(1.0),
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: opt("original_max_position_embeddings")
                    .or(max_positions)
                    .ok_or_else(|| {
                        config_error(
                            path,
                            format!("{ctx}: missing number `original_max_position_embeddings`"),
                        )
                    })?,
                beta_fast: opt("beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0),
                beta_slow: opt("beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0),
                truncate: s.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                attention_factor,
            }
        }
        other => {
            return Err(config_error(
                path,
                format!(
                    "unsupported rope_scaling type {other:?} (supported: default, linear, llama3, yarn)"
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
    if let Some(w) = config.get("sliding_window").filter(|v| !v.is_null()) {
        ensure(
            path,
            w.as_u64().is_some_and(|w| w >= 1),
            format!(
                "field `sliding_window` is {w}: expected a window of at least 1 token, or null"
            ),
        )?;
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

/// The keys every family's config.json shares. A family reads them through [`common`] with its own
/// transformers defaults ([`Defaults`]), and only its own keys into its config struct.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Common {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent: the family's default; `null`: as many as the heads.
    #[serde(default, deserialize_with = "present")]
    pub num_key_value_heads: Option<Option<usize>>,
    /// Absent: the family's default; `null`: hidden_size / heads.
    #[serde(default, deserialize_with = "present")]
    pub head_dim: Option<Option<usize>>,
    pub vocab_size: usize,
    pub rms_norm_eps: Option<f64>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

/// `Some(value)` for a key that is present, even as `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// A family's transformers defaults for the [`Common`] keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// `None`: as many kv heads as heads.
    pub kv_heads: Option<usize>,
    /// `None`: hidden_size / heads.
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub norm: crate::blocks::NormKind,
    pub tie_word_embeddings: bool,
    /// The Gemma families' reading of the activation ([`gelu_activation`]); else `hidden_act`,
    /// default SiLU.
    pub gelu: bool,
}

impl Defaults {
    /// Llama's: kv heads = heads, head_dim = hidden / heads, plain RMSNorm with eps 1e-6, untied
    /// head, SiLU.
    pub const LLAMA: Defaults = Defaults {
        kv_heads: None,
        head_dim: None,
        rms_norm_eps: 1e-6,
        norm: crate::blocks::NormKind::Plain,
        tie_word_embeddings: false,
        gelu: false,
    };

    /// Gemma's: 16 kv heads, head_dim 256, `(1 + w)` RMSNorm with eps 1e-6, tied head, GeLU-tanh.
    pub const GEMMA: Defaults = Defaults {
        kv_heads: Some(16),
        head_dim: Some(256),
        rms_norm_eps: 1e-6,
        norm: crate::blocks::NormKind::OnePlusWeight,
        tie_word_embeddings: true,
        gelu: true,
    };
}

/// The decoder a config.json describes as far as [`Common`] goes (sizes, norm, activation, tied
/// head) and the attention of every layer (heads, kv heads, head_dim, `attention_bias` on q/k/v
/// and o); the family adds its rotary tables and what else differs.
pub fn common(
    path: &Path,
    raw: &Value,
    d: &Defaults,
) -> Result<(crate::blocks::DecoderSpec, crate::blocks::AttentionOptions)> {
    use crate::blocks::{AttentionOptions, DecoderSpec, NormSpec};
    let c: Common = gradlens_core::parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let (kv_heads, head_dim) = head_dims(
        path,
        c.hidden_size,
        heads,
        c.num_key_value_heads.unwrap_or(d.kv_heads),
        c.head_dim.unwrap_or(d.head_dim),
    )?;
    let act = if d.gelu {
        gelu_activation(
            path,
            c.hidden_act.as_deref(),
            c.hidden_activation.as_deref(),
        )?
    } else {
        activation(path, c.hidden_act.as_deref().unwrap_or("silu"))?
    };
    let spec = DecoderSpec {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        norm: NormSpec {
            kind: d.norm,
            eps: c.rms_norm_eps.unwrap_or(d.rms_norm_eps),
        },
        act,
        mlp_bias: c.mlp_bias,
        tie_word_embeddings: c.tie_word_embeddings.unwrap_or(d.tie_word_embeddings),
        ..DecoderSpec::default()
    };
    let attention = AttentionOptions {
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        ..AttentionOptions::new(heads, kv_heads, head_dim)
    };
    Ok((spec, attention))
}

/// The rotary table of `rope` ([`rope`]'s `(theta, scaling)`) for heads of `head_dim`.
pub fn rope_table(
    path: &Path,
    raw: &Value,
    default_theta: f64,
    head_dim: usize,
) -> Result<crate::blocks::RopeTable> {
    let (theta, scaling) = rope(path, raw, default_theta)?;
    Ok(crate::blocks::RopeTable::new(head_dim, theta, &scaling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::Activation;

    fn rope_of(extra: &str) -> Result<(f64, RopeScaling)> {
        let raw: Value = serde_json::from_str(&format!("{{\"hidden_size\": 8{extra}}}")).unwrap();
        rope(Path::new("config.json"), &raw, 10_000.0)
    }

    #[test]
    fn rope_scaling_types() {
        assert_eq!(rope_of("").unwrap(), (10_000.0, RopeScaling::None));
        assert_eq!(
            rope_of(", \"rope_scaling\": null, \"rope_theta\": 5.0").unwrap(),
            (5.0, RopeScaling::None)
        );
        assert_eq!(
            rope_of(", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}")
                .unwrap()
                .1,
            RopeScaling::Linear { factor: 2.0 }
        );
        let l3 = rope_of(
            r#", "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
        )
        .unwrap();
        assert_eq!(l3.0, 500000.0);
        assert!(matches!(l3.1, RopeScaling::Llama3 { factor: 8.0, .. }));
        let err = rope_of(", \"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 4.0}")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported rope_scaling type \"dynamic\""),
            "{err}"
        );
        assert!(err.to_string().starts_with("config.json:"), "{err}");
    }

    fn common_of(
        heads: usize,
        extra: &str,
        d: &Defaults,
    ) -> (crate::blocks::DecoderSpec, crate::blocks::AttentionOptions) {
        let raw: Value = serde_json::from_str(&format!(
            r#"{{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                "num_attention_heads": {heads}, "vocab_size": 10{extra}}}"#
        ))
        .unwrap();
        common(Path::new("config.json"), &raw, d).unwrap()
    }

    #[test]
    fn omitted_keys_take_the_familys_defaults_and_null_means_derived() {
        let (spec, attn) = common_of(2, "", &Defaults::LLAMA);
        assert_eq!((attn.kv_heads, attn.head_dim, spec.norm.eps), (2, 4, 1e-6));
        assert!(!spec.tie_word_embeddings && !attn.qkv_bias && !spec.mlp_bias);
        assert_eq!(spec.act, Activation::Silu);
        let (spec, attn) = common_of(16, "", &Defaults::GEMMA);
        assert_eq!((attn.kv_heads, attn.head_dim), (16, 256));
        assert!(spec.tie_word_embeddings);
        assert_eq!(spec.act, Activation::GeluTanh);
        // null: as transformers reads None (kv heads = heads, head_dim = hidden / heads).
        let (_, attn) = common_of(
            2,
            r#", "num_key_value_heads": null, "head_dim": null"#,
            &Defaults::GEMMA,
        );
        assert_eq!((attn.kv_heads, attn.head_dim), (2, 4));
        // Older Gemma configs: hidden_act "gelu" means the tanh approximation.
        let (spec, _) = common_of(16, r#", "hidden_act": "gelu""#, &Defaults::GEMMA);
        assert_eq!(spec.act, Activation::GeluTanh);
    }
}

/// The window of transformers' configs that default it to 4096 tokens (`#[serde(default = …)]`).
pub fn window_4096() -> Option<usize> {
    Some(4096)
}

/// Sliding layers the Qwen way (Qwen2, Qwen3): a window only with `use_sliding_window`, on the
/// layers from `max_window_layers` on (default 28), or as `layer_types` says.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SlidingFromLayer {
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default = "window_4096")]
    pub sliding_window: Option<usize>,
    #[serde(default = "max_window_layers_28")]
    pub max_window_layers: usize,
}

fn max_window_layers_28() -> usize {
    28
}

impl SlidingFromLayer {
    /// Per layer, its window (`None`: global).
    pub fn windows(&self, f: &crate::FamilyConfig<'_>) -> Result<Vec<Option<usize>>> {
        let window = self.sliding_window.filter(|_| self.use_sliding_window);
        let sliding = f.sliding_layers(|i| window.is_some() && i >= self.max_window_layers)?;
        Ok(sliding.iter().map(|&s| window.filter(|_| s)).collect())
    }
}
