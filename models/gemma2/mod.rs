//! Gemma 2 (`model_type: "gemma2"`): everything of Gemma v1, plus
//!
//! - **attention-logit soft-capping** `tanh(s / cap) · cap` before the mask
//!   (`attn_logit_softcapping`, default 50; null = off),
//! - **final-logit soft-capping** (`final_logit_softcapping`, default 30; null = off),
//! - **sliding window on alternating layers**: layer 0 sliding, 1 global, … (or as `layer_types`
//!   says), window `sliding_window` (default 4096),
//! - **sandwich norms**: the attention output and the MLP output are normalised too
//!   (`post_attention_layernorm`, `pre_feedforward_layernorm`, `post_feedforward_layernorm`),
//! - queries scaled by **`query_pre_attn_scalar^-0.5`** (default 256), not head_dim^-0.5.
//!
//! Defaults as transformers': num_key_value_heads 4, head_dim 256, rms_norm_eps 1e-6,
//! rope_theta 10000, hidden_activation "gelu_pytorch_tanh", tie_word_embeddings true.

use crate::blocks::{
    AttentionOptions, DecoderSpec, NormPlacement, NormSpec, inverse_frequencies, load_decoder,
};
use crate::ops::ModelBackend;
use crate::{FamilyModel, Loader, config};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

/// The chat template takes no system turn (Gemma's templates reject a system role).
pub const SYSTEM_TURN: bool = false;

#[derive(Debug, Deserialize)]
struct Gemma2Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_kv_heads")]
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_head_dim")]
    head_dim: usize,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    #[serde(default = "default_tied")]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default = "default_query_scalar")]
    query_pre_attn_scalar: f64,
    #[serde(default = "default_attn_cap")]
    attn_logit_softcapping: Option<f64>,
    #[serde(default = "default_final_cap")]
    final_logit_softcapping: Option<f64>,
    #[serde(default = "default_window")]
    sliding_window: Option<usize>,
}

fn default_kv_heads() -> Option<usize> {
    Some(4)
}
fn default_head_dim() -> usize {
    256
}
fn default_eps() -> f64 {
    1e-6
}
fn default_tied() -> bool {
    true
}
fn default_query_scalar() -> f64 {
    256.0
}
fn default_attn_cap() -> Option<f64> {
    Some(50.0)
}
fn default_final_cap() -> Option<f64> {
    Some(30.0)
}
fn default_window() -> Option<usize> {
    Some(4096)
}

pub fn load<B: ModelBackend>(
    l: &mut Loader<'_, B>,
    raw: &serde_json::Value,
    path: &Path,
) -> Result<FamilyModel<B>> {
    let c: Gemma2Config = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let (kv_heads, head_dim) =
        config::head_dims(path, c.hidden_size, heads, c.num_key_value_heads, Some(c.head_dim))?;
    config::ensure(
        path,
        c.sliding_window != Some(0),
        "sliding_window must be positive or null",
    )?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    // Even layers slide, odd layers see everything.
    let sliding = config::sliding_layers(path, raw, c.num_hidden_layers, |i| i % 2 == 0)?;
    let spec = DecoderSpec {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        norm: NormSpec::one_plus_weight(c.rms_norm_eps),
        act: config::gelu_activation(path, c.hidden_act.as_deref(), c.hidden_activation.as_deref())?,
        placement: NormPlacement::Sandwich,
        tie_word_embeddings: c.tie_word_embeddings,
        embed_scale: Some((c.hidden_size as f64).sqrt()),
        final_logit_softcap: c.final_logit_softcapping,
        rope: vec![inverse_frequencies(head_dim, theta, &scaling)],
        ..DecoderSpec::default()
    };
    load_decoder(l, &spec, |i| AttentionOptions {
        scale: c.query_pre_attn_scalar.powf(-0.5),
        logit_softcap: c.attn_logit_softcapping,
        sliding_window: if sliding[i] { c.sliding_window } else { None },
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        ..AttentionOptions::new(heads, kv_heads, head_dim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let raw: serde_json::Value = serde_json::from_str(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 4,
                "num_attention_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap();
        let c: Gemma2Config = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!((c.attn_logit_softcapping, c.final_logit_softcapping), (Some(50.0), Some(30.0)));
        assert_eq!((c.query_pre_attn_scalar, c.sliding_window, c.head_dim), (256.0, Some(4096), 256));
        assert!(c.tie_word_embeddings);
        let sliding = config::sliding_layers(Path::new("config.json"), &raw, 4, |i| i % 2 == 0).unwrap();
        assert_eq!(sliding, vec![true, false, true, false], "layer 0 slides, layer 1 is global");
    }

    #[test]
    fn null_softcaps_are_off() {
        let c: Gemma2Config = serde_json::from_str(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "vocab_size": 10, "attn_logit_softcapping": null, "final_logit_softcapping": null}"#,
        )
        .unwrap();
        assert_eq!((c.attn_logit_softcapping, c.final_logit_softcapping), (None, None));
    }
}
