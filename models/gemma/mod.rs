//! Gemma v1 (`model_type: "gemma"`).
//!
//! Differences from Llama, all visible below:
//! - RMSNorm scaled by **(1 + w)** ([`NormKind::OnePlusWeight`]).
//! - Embeddings multiplied by **sqrt(hidden_size)** in the compute dtype.
//! - **GeLU with the tanh approximation** in the gated MLP: `hidden_activation`, else `hidden_act`
//!   (older configs say `"gelu"` and mean the tanh approximation, as transformers reads it).
//! - `head_dim` read from config (Gemma-7B's 256 differs from hidden/heads); default 256.
//! - LM head **tied** by default (`tie_word_embeddings` may be omitted).
//!
//! Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//! vocab_size. Defaults as transformers': num_key_value_heads 16, head_dim 256, rms_norm_eps 1e-6,
//! rope_theta 10000, tie_word_embeddings true, attention_bias false.

use crate::blocks::{AttentionOptions, DecoderSpec, NormSpec, inverse_frequencies, load_decoder};
use crate::ops::ModelBackend;
use crate::{FamilyModel, Loader, config};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

/// The chat template takes no system turn (Gemma's templates reject a system role).
pub const SYSTEM_TURN: bool = false;

#[derive(Debug, Deserialize)]
struct GemmaConfig {
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
}

fn default_kv_heads() -> Option<usize> {
    Some(16)
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

pub fn load<B: ModelBackend>(
    l: &mut Loader<'_, B>,
    raw: &serde_json::Value,
    path: &Path,
) -> Result<FamilyModel<B>> {
    let c: GemmaConfig = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let (kv_heads, head_dim) =
        config::head_dims(path, c.hidden_size, heads, c.num_key_value_heads, Some(c.head_dim))?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    let spec = DecoderSpec {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        norm: NormSpec::one_plus_weight(c.rms_norm_eps),
        act: config::gelu_activation(path, c.hidden_act.as_deref(), c.hidden_activation.as_deref())?,
        tie_word_embeddings: c.tie_word_embeddings,
        embed_scale: Some((c.hidden_size as f64).sqrt()),
        rope: vec![inverse_frequencies(head_dim, theta, &scaling)],
        ..DecoderSpec::default()
    };
    load_decoder(l, &spec, |_| AttentionOptions {
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        ..AttentionOptions::new(heads, kv_heads, head_dim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::Activation;

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let c: GemmaConfig = serde_json::from_str(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                "num_attention_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap();
        assert!(c.tie_word_embeddings, "Gemma's head is tied by default");
        assert_eq!((c.head_dim, c.num_key_value_heads, c.rms_norm_eps), (256, Some(16), 1e-6));
        let act = config::gelu_activation(Path::new("config.json"), c.hidden_act.as_deref(), c.hidden_activation.as_deref());
        assert_eq!(act.unwrap(), Activation::GeluTanh);
        // Older configs: hidden_act "gelu" means the tanh approximation.
        assert_eq!(config::gelu_activation(Path::new("c"), Some("gelu"), None).unwrap(), Activation::GeluTanh);
    }
}
