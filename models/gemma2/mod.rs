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

use crate::ops::ModelBackend;
use crate::blocks::{
    Attention, AttentionOptions, Decoder, Embedding, GatedMlp, Layer, LmHead, NormKind, RmsNorm,
    SequenceContext, inverse_frequencies,
};
use crate::gemma::gemma_activation;
use crate::{FamilyModel, Loader, config};
use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

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

/// Gemma 2's layer with sandwich norms around attention and MLP.
#[derive(Module, Debug)]
pub struct SandwichLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: crate::blocks::GatedMlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: RmsNorm<B>,
    pub post_feedforward_layernorm: RmsNorm<B>,
}

impl<B: ModelBackend> Layer<B> for SandwichLayer<B> {
    fn forward(&self, x: Tensor<B, 2>, ctx: &SequenceContext<'_, B>) -> Tensor<B, 2> {
        let attn = self.self_attn.forward(self.input_layernorm.forward(x.clone()), ctx);
        let h = x + self.post_attention_layernorm.forward(attn);
        let mlp = self.mlp.forward(self.pre_feedforward_layernorm.forward(h.clone()), ctx);
        h + self.post_feedforward_layernorm.forward(mlp)
    }
}

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, raw: &serde_json::Value, path: &Path) -> Result<FamilyModel<B>> {
    let c: Gemma2Config = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let kv_heads = c.num_key_value_heads.unwrap_or(heads);
    let head_dim = c.head_dim;
    config::ensure(path, kv_heads > 0 && heads.is_multiple_of(kv_heads), "num_attention_heads must be a multiple of num_key_value_heads")?;
    config::ensure(path, c.sliding_window != Some(0), "sliding_window must be positive or null")?;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    let act = gemma_activation(path, c.hidden_act.as_deref(), c.hidden_activation.as_deref())?;
    // Even layers slide, odd layers see everything.
    let sliding = config::sliding_layers(path, raw, c.num_hidden_layers, |i| i % 2 == 0)?;

    let h = c.hidden_size;
    let eps = c.rms_norm_eps;
    let norm = NormKind::OnePlusWeight;
    let embed_tokens = Embedding::load(l, "model.embed_tokens", c.vocab_size, h)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for (i, &is_sliding) in sliding.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let opts = AttentionOptions {
            heads,
            kv_heads,
            head_dim,
            scale: c.query_pre_attn_scalar.powf(-0.5),
            logit_softcap: c.attn_logit_softcapping,
            sliding_window: if is_sliding { c.sliding_window } else { None },
            qkv_bias: c.attention_bias,
            o_bias: c.attention_bias,
        };
        let ln = |l: &mut Loader<'_, B>, name: &str| RmsNorm::load(l, &format!("{p}.{name}"), h, eps, norm);
        layers.push(SandwichLayer {
            self_attn: Attention::load(l, &format!("{p}.self_attn"), h, opts)?,
            mlp: GatedMlp::load(l, &format!("{p}.mlp"), h, c.intermediate_size, act, false)?,
            input_layernorm: ln(l, "input_layernorm")?,
            post_attention_layernorm: ln(l, "post_attention_layernorm")?,
            pre_feedforward_layernorm: ln(l, "pre_feedforward_layernorm")?,
            post_feedforward_layernorm: ln(l, "post_feedforward_layernorm")?,
        });
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
        final_logit_softcap: c.final_logit_softcapping,
    };
    Ok((Box::new(model), c.num_hidden_layers))
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
