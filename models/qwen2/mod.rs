//! Qwen2 (`model_type: "qwen2"`): the Llama layout with a bias on the q/k/v projections.
//!
//! - Pre-norm decoder layers, plain RMSNorm (`w · x / rms(x)`), SiLU-gated MLP.
//! - Rotary embedding, half-split layout, `rope_theta` (default 10000), optional scaling.
//! - Grouped-query attention (`num_key_value_heads`, default = heads), **q/k/v biases**, no o bias.
//! - Sliding window only when `use_sliding_window` is true, on layers ≥ `max_window_layers`
//!   (or as `layer_types` says).
//! - LM head tied when `tie_word_embeddings` is true (default false); an untied checkpoint without
//!   `lm_head.weight` is an error.
//!
//! Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//! vocab_size. Defaults as transformers': rms_norm_eps 1e-6, hidden_act "silu", max_window_layers 28.

use crate::blocks::{AttentionOptions, DecoderSpec, NormSpec, inverse_frequencies, load_decoder};
use crate::ops::ModelBackend;
use crate::{FamilyModel, Loader, config};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

/// The chat template takes a system turn.
pub const SYSTEM_TURN: bool = true;

#[derive(Debug, Deserialize)]
struct Qwen2Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    use_sliding_window: bool,
    sliding_window: Option<usize>,
    #[serde(default = "default_max_window_layers")]
    max_window_layers: usize,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_window_layers() -> usize {
    28
}

pub fn load<B: ModelBackend>(
    l: &mut Loader<'_, B>,
    raw: &serde_json::Value,
    path: &Path,
) -> Result<FamilyModel<B>> {
    let c: Qwen2Config = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let (kv_heads, head_dim) =
        config::head_dims(path, c.hidden_size, heads, c.num_key_value_heads, None)?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    let window = if c.use_sliding_window { c.sliding_window } else { None };
    let sliding = config::sliding_layers(path, raw, c.num_hidden_layers, |i| {
        window.is_some() && i >= c.max_window_layers
    })?;
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
    load_decoder(l, &spec, |i| AttentionOptions {
        sliding_window: if sliding[i] { window } else { None },
        qkv_bias: true,
        ..AttentionOptions::new(heads, kv_heads, head_dim)
    })
}
