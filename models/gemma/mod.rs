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

use crate::ops::ModelBackend;
use crate::blocks::{
    Activation, AttentionOptions, Decoder, Embedding, LmHead, NormKind,
    PreNormLayer, PreNormSpec, RmsNorm, inverse_frequencies,
};
use crate::{FamilyModel, Loader, config};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

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

/// Gemma's activation: `hidden_activation` first, then `hidden_act`; plain "gelu" means tanh.
pub(crate) fn gemma_activation(path: &Path, act: Option<&str>, activation: Option<&str>) -> Result<Activation> {
    match activation.or(act).unwrap_or("gelu_pytorch_tanh") {
        "gelu" => Ok(Activation::GeluTanh),
        other => config::activation(path, other),
    }
}

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, raw: &serde_json::Value, path: &Path) -> Result<FamilyModel<B>> {
    let c: GemmaConfig = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let kv_heads = c.num_key_value_heads.unwrap_or(heads);
    let head_dim = c.head_dim;
    config::ensure(path, kv_heads > 0 && heads.is_multiple_of(kv_heads), "num_attention_heads must be a multiple of num_key_value_heads")?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    let act = gemma_activation(path, c.hidden_act.as_deref(), c.hidden_activation.as_deref())?;

    let h = c.hidden_size;
    let eps = c.rms_norm_eps;
    let norm = NormKind::OnePlusWeight;
    let spec = PreNormSpec {
        hidden: h,
        intermediate: c.intermediate_size,
        eps,
        norm,
        act,
        mlp_bias: false,
    };
    let embed_tokens = Embedding::load(l, "model.embed_tokens", c.vocab_size, h)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let opts = AttentionOptions {
            heads,
            kv_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
            logit_softcap: None,
            sliding_window: None,
            qkv_bias: c.attention_bias,
            o_bias: c.attention_bias,
        };
        layers.push(PreNormLayer::load(l, &p, &spec, opts)?);
    }
    let final_norm = RmsNorm::load(l, "model.norm", h, eps, norm)?;
    let lm_head = LmHead::load(l, &embed_tokens, c.tie_word_embeddings, c.vocab_size, h)?;
    let model = Decoder {
        embed_tokens,
        layers,
        norm: final_norm,
        lm_head,
        inv_freq: inverse_frequencies(head_dim, theta, &scaling),
        embed_scale: Some((h as f64).sqrt()),
        final_logit_softcap: None,
    };
    Ok((Box::new(model), c.num_hidden_layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let c: GemmaConfig = serde_json::from_str(
            r#"{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                "num_attention_heads": 2, "vocab_size": 10}"#,
        )
        .unwrap();
        assert!(c.tie_word_embeddings, "Gemma's head is tied by default");
        assert_eq!((c.head_dim, c.num_key_value_heads, c.rms_norm_eps), (256, Some(16), 1e-6));
        let act = gemma_activation(Path::new("config.json"), c.hidden_act.as_deref(), c.hidden_activation.as_deref());
        assert_eq!(act.unwrap(), Activation::GeluTanh);
        // Older configs: hidden_act "gelu" means the tanh approximation.
        assert_eq!(gemma_activation(Path::new("c"), Some("gelu"), None).unwrap(), Activation::GeluTanh);
    }
}
