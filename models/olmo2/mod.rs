//! OLMo 2 (`model_type: "olmo2"`): no norm before attention or the MLP; an RMSNorm on each
//! sub-layer's output before the residual add, and on the whole query and key projections before
//! they are split into heads.
//!
//! - Post-norm-only layers: `h = x + norm(attn(x)); out = h + norm(mlp(h))`
//!   (`post_attention_layernorm`, `post_feedforward_layernorm`), plain RMSNorm, SiLU-gated MLP.
//! - **`q_norm` over `heads · head_dim`, `k_norm` over `kv_heads · head_dim`**, before the reshape
//!   to heads and the rotary embedding.
//! - Rotary embedding, half-split layout, `rope_theta` (default 10000), optional scaling;
//!   head_dim = hidden_size / heads.
//! - LM head untied unless `tie_word_embeddings` (default false); an untied checkpoint without
//!   `lm_head.weight` is an error.
//!
//! Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//! vocab_size. Defaults as transformers' `Olmo2Config`: num_key_value_heads = heads,
//! rms_norm_eps 1e-5, hidden_act "silu", attention_bias false.

use crate::blocks::{
    AttentionOptions, DecoderSpec, NormPlacement, NormSpec, QkNorm, inverse_frequencies,
    load_decoder,
};
use crate::ops::ModelBackend;
use crate::{FamilyModel, Loader, config};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

/// The chat template takes a system turn.
pub const SYSTEM_TURN: bool = true;

#[derive(Debug, Deserialize)]
struct Olmo2Config {
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
    attention_bias: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "silu".into()
}

pub fn load<B: ModelBackend>(
    l: &mut Loader<'_, B>,
    raw: &serde_json::Value,
    path: &Path,
) -> Result<FamilyModel<B>> {
    let c: Olmo2Config = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let (kv_heads, head_dim) =
        config::head_dims(path, c.hidden_size, heads, c.num_key_value_heads, None)?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    let norm = NormSpec::plain(c.rms_norm_eps);
    let spec = DecoderSpec {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        norm,
        act: config::activation(path, &c.hidden_act)?,
        placement: NormPlacement::PostOnly,
        tie_word_embeddings: c.tie_word_embeddings,
        rope: vec![inverse_frequencies(head_dim, theta, &scaling)],
        ..DecoderSpec::default()
    };
    load_decoder(l, &spec, |_| AttentionOptions {
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        qk_norm: QkNorm::Whole(norm),
        ..AttentionOptions::new(heads, kv_heads, head_dim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let c: Olmo2Config = serde_json::from_str(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                "num_attention_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap();
        assert_eq!((c.num_key_value_heads, c.rms_norm_eps), (None, 1e-5));
        assert!(!c.tie_word_embeddings && !c.attention_bias);
    }
}
