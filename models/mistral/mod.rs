//! Mistral (`model_type: "mistral"`): Llama's layout with sliding-window attention.
//!
//! - Pre-norm decoder layers, plain RMSNorm, SiLU-gated MLP, no biases.
//! - Rotary embedding, half-split layout, `rope_theta` (default 10000).
//! - GQA (`num_key_value_heads`, default 8 as in transformers); `head_dim` from config, or
//!   hidden/heads when null or absent.
//! - **Sliding window** on every layer: key j is visible from query i iff 0 ≤ i − j <
//!   `sliding_window`; `null` means none; absent means transformers' default 4096.
//! - LM head untied unless `tie_word_embeddings` (default false); an untied checkpoint without
//!   `lm_head.weight` is an error.
//!
//! Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//! vocab_size. Defaults as transformers': rms_norm_eps 1e-6, hidden_act "silu".

use crate::blocks::{AttentionOptions, DecoderSpec, NormSpec, inverse_frequencies, load_decoder};
use crate::ops::ModelBackend;
use crate::{FamilyModel, Loader, config};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

/// The chat template takes a system turn.
pub const SYSTEM_TURN: bool = true;

#[derive(Debug, Deserialize)]
struct MistralConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_kv_heads")]
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_window")]
    sliding_window: Option<usize>,
}

fn default_kv_heads() -> Option<usize> {
    Some(8)
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

pub fn load<B: ModelBackend>(
    l: &mut Loader<'_, B>,
    raw: &serde_json::Value,
    path: &Path,
) -> Result<FamilyModel<B>> {
    let c: MistralConfig = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let (kv_heads, head_dim) =
        config::head_dims(path, c.hidden_size, heads, c.num_key_value_heads, c.head_dim)?;
    config::ensure(
        path,
        c.sliding_window != Some(0),
        "sliding_window must be positive or null",
    )?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    let spec = DecoderSpec {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        norm: NormSpec::plain(c.rms_norm_eps),
        act: config::activation(path, &c.hidden_act)?,
        tie_word_embeddings: c.tie_word_embeddings,
        rope: vec![inverse_frequencies(head_dim, theta, &scaling)],
        ..DecoderSpec::default()
    };
    load_decoder(l, &spec, |_| AttentionOptions {
        sliding_window: c.sliding_window,
        ..AttentionOptions::new(heads, kv_heads, head_dim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#""hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "vocab_size": 10"#;

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let c: MistralConfig = serde_json::from_str(&format!("{{{MINIMAL}}}")).unwrap();
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(c.num_key_value_heads, Some(8));
        assert_eq!(c.head_dim, None);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn null_window_and_head_dim_mean_none() {
        let c: MistralConfig =
            serde_json::from_str(&format!("{{{MINIMAL}, \"sliding_window\": null, \"head_dim\": null}}")).unwrap();
        assert_eq!((c.sliding_window, c.head_dim), (None, None));
    }
}
