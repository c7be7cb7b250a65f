//! Qwen3 (`model_type: "qwen3"`): Qwen2 without the q/k/v biases, with an RMSNorm on each query
//! and key head before the rotary embedding, and an explicit `head_dim`.
//!
//! - Pre-norm decoder layers, plain RMSNorm (`w · x / rms(x)`), SiLU-gated MLP.
//! - Rotary embedding, half-split layout, `rope_theta` (default 10000), optional scaling.
//! - Grouped-query attention, **no biases**; **`q_norm`, `k_norm`** (`[head_dim]`, per head);
//!   **`head_dim` explicit** (default 128), so q and o need not be square.
//! - Sliding window only when `use_sliding_window` is true, on layers ≥ `max_window_layers`
//!   (or as `layer_types` says).
//! - LM head tied when `tie_word_embeddings` is true (default false); an untied checkpoint without
//!   `lm_head.weight` is an error.
//!
//! Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//! vocab_size. Defaults as transformers' `Qwen3Config`: head_dim 128, rms_norm_eps 1e-6,
//! hidden_act "silu", attention_bias false, sliding_window 4096, max_window_layers 28.

use crate::blocks::{
    AttentionOptions, DecoderSpec, NormSpec, QkNorm, inverse_frequencies, load_decoder,
};
use crate::ops::ModelBackend;
use crate::{FamilyModel, Loader, config};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

/// The chat template takes a system turn.
pub const SYSTEM_TURN: bool = true;

#[derive(Debug, Deserialize)]
struct Qwen3Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_head_dim")]
    head_dim: usize,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default = "default_window")]
    sliding_window: Option<usize>,
    #[serde(default = "default_max_window_layers")]
    max_window_layers: usize,
}

fn default_head_dim() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_window() -> Option<usize> {
    Some(4096)
}
fn default_max_window_layers() -> usize {
    28
}

pub fn load<B: ModelBackend>(
    l: &mut Loader<'_, B>,
    raw: &serde_json::Value,
    path: &Path,
) -> Result<FamilyModel<B>> {
    let c: Qwen3Config = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let (kv_heads, head_dim) =
        config::head_dims(path, c.hidden_size, heads, c.num_key_value_heads, Some(c.head_dim))?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    let window = if c.use_sliding_window { c.sliding_window } else { None };
    let sliding = config::sliding_layers(path, raw, c.num_hidden_layers, |i| {
        window.is_some() && i >= c.max_window_layers
    })?;
    let norm = NormSpec::plain(c.rms_norm_eps);
    let spec = DecoderSpec {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        norm,
        act: config::activation(path, &c.hidden_act)?,
        tie_word_embeddings: c.tie_word_embeddings,
        rope: vec![inverse_frequencies(head_dim, theta, &scaling)],
        ..DecoderSpec::default()
    };
    load_decoder(l, &spec, |i| AttentionOptions {
        sliding_window: if sliding[i] { window } else { None },
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        qk_norm: QkNorm::PerHead(norm),
        ..AttentionOptions::new(heads, kv_heads, head_dim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let c: Qwen3Config = serde_json::from_str(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                "num_attention_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap();
        assert_eq!((c.head_dim, c.rms_norm_eps, c.max_window_layers), (128, 1e-6, 28));
        assert!(!c.tie_word_embeddings && !c.attention_bias && !c.use_sliding_window);
        assert_eq!(c.sliding_window, Some(4096));
    }
}
