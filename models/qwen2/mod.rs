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

use crate::ops::ModelBackend;
use crate::blocks::{
    AttentionOptions, Decoder, Embedding, LmHead, NormKind, PreNormLayer, PreNormSpec,
    RmsNorm, inverse_frequencies,
};
use crate::{FamilyModel, Loader, config};
use gradlens_core::{Result, parse_config};
use serde::Deserialize;
use std::path::Path;

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

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, raw: &serde_json::Value, path: &Path) -> Result<FamilyModel<B>> {
    let c: Qwen2Config = parse_config(path, raw)?;
    let heads = c.num_attention_heads;
    let kv_heads = c.num_key_value_heads.unwrap_or(heads);
    config::check_heads(path, c.hidden_size, heads, kv_heads)?;
    let head_dim = c.hidden_size / heads;
    let (theta, scaling) = config::rope(path, raw, 10_000.0)?;
    let act = config::activation(path, &c.hidden_act)?;
    let window = if c.use_sliding_window { c.sliding_window } else { None };
    let sliding = config::sliding_layers(path, raw, c.num_hidden_layers, |i| {
        window.is_some() && i >= c.max_window_layers
    })?;

    let h = c.hidden_size;
    let eps = c.rms_norm_eps;
    let spec = PreNormSpec {
        hidden: h,
        intermediate: c.intermediate_size,
        eps,
        norm: NormKind::Plain,
        act,
        mlp_bias: false,
    };
    let embed_tokens = Embedding::load(l, "model.embed_tokens", c.vocab_size, h)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for (i, &is_sliding) in sliding.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let opts = AttentionOptions {
            heads,
            kv_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
            logit_softcap: None,
            sliding_window: if is_sliding { window } else { None },
            qkv_bias: true,
            o_bias: false,
        };
        layers.push(PreNormLayer::load(l, &p, &spec, opts)?);
    }
    let norm = RmsNorm::load(l, "model.norm", h, eps, NormKind::Plain)?;
    let lm_head = LmHead::load(l, &embed_tokens, c.tie_word_embeddings, c.vocab_size, h)?;
    let model = Decoder {
        embed_tokens,
        layers,
        norm,
        lm_head,
        inv_freq: inverse_frequencies(head_dim, theta, &scaling),
        embed_scale: None,
        final_logit_softcap: None,
    };
    Ok((Box::new(model), c.num_hidden_layers))
}
