//! Llama 2 and Llama 3.x (`model_type: "llama"`).
//!
//! - Pre-norm decoder layers, plain RMSNorm (`w · x / rms(x)`), SiLU-gated MLP.
//! - Rotary embedding, half-split layout, `rope_theta` (default 10000). `rope_scaling`: none,
//!   `linear`, or Llama 3.1's **`llama3`** band-wise scaling (factor, low_freq_factor,
//!   high_freq_factor, original_max_position_embeddings); any other type is an error.
//! - MHA or GQA (`num_key_value_heads`, default = heads); `head_dim` from config or hidden/heads.
//! - Biases only when `attention_bias` (q/k/v/o) or `mlp_bias` (gate/up/down) is true (default false).
//! - LM head untied unless `tie_word_embeddings` (default false); an untied checkpoint without
//!   `lm_head.weight` is an error.
//! - Stored `rotary_emb.inv_freq` tensors of old checkpoints are ignored (recomputed in f64).
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
struct LlamaConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
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
    mlp_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

pub fn load<B: ModelBackend>(
    l: &mut Loader<'_, B>,
    raw: &serde_json::Value,
    path: &Path,
) -> Result<FamilyModel<B>> {
    let c: LlamaConfig = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let (kv_heads, head_dim) =
        config::head_dims(path, c.hidden_size, heads, c.num_key_value_heads, c.head_dim)?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    l.ignore_where(|n| n.ends_with("rotary_emb.inv_freq"));
    let spec = DecoderSpec {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        norm: NormSpec::plain(c.rms_norm_eps),
        act: config::activation(path, &c.hidden_act)?,
        mlp_bias: c.mlp_bias,
        tie_word_embeddings: c.tie_word_embeddings,
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
    use crate::blocks::RopeScaling;

    fn rope_of(extra: &str) -> gradlens_core::Result<(f64, RopeScaling)> {
        let raw: serde_json::Value = serde_json::from_str(&format!("{{\"hidden_size\": 8{extra}}}")).unwrap();
        config::rope(Path::new("config.json"), &raw, 10_000.0)
    }

    #[test]
    fn rope_scaling_types() {
        assert_eq!(rope_of("").unwrap(), (10_000.0, RopeScaling::None));
        assert_eq!(rope_of(", \"rope_scaling\": null, \"rope_theta\": 5.0").unwrap(), (5.0, RopeScaling::None));
        assert_eq!(
            rope_of(", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}").unwrap().1,
            RopeScaling::Linear { factor: 2.0 }
        );
        let l3 = rope_of(
            r#", "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
        )
        .unwrap();
        assert_eq!(l3.0, 500000.0);
        assert!(matches!(l3.1, RopeScaling::Llama3 { factor: 8.0, .. }));
        let err = rope_of(", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}").unwrap_err();
        assert!(err.to_string().contains("unsupported rope_scaling type \"yarn\""), "{err}");
        assert!(err.to_string().starts_with("config.json:"), "{err}");
    }

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let c: LlamaConfig = serde_json::from_str(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                "num_attention_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap();
        assert_eq!((c.num_key_value_heads, c.head_dim, c.rms_norm_eps), (None, None, 1e-6));
        assert!(!c.tie_word_embeddings && !c.attention_bias && !c.mlp_bias);
    }
}
