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

use crate::blocks::{AttentionOptions, DecoderSpec, NormPlacement, load_decoder};
use crate::config::Defaults;
use crate::config::FamilyConfig;
use crate::family::FamilyModel;
use crate::gguf::{GEMMA_NORMS, GgufNames, LLAMA_LIKE, gemma_query_pre_attn_scalar};
use crate::loader::Loader;
use crate::ops::ModelBackend;
use gradlens_core::Result;
use serde::Deserialize;

/// transformers' `Gemma2Config` defaults: Gemma's, with 4 kv heads.
pub const DEFAULTS: Defaults = Defaults {
    kv_heads: Some(4),
    ..Defaults::GEMMA
};

/// llama.cpp's `gemma2` files: norms stored as 1 + w, four norms per layer ([`GEMMA_NORMS`]),
/// the window and the soft-caps as metadata; `query_pre_attn_scalar` as llama.cpp computes it.
pub static GGUF: Option<GgufNames> = Some(GgufNames {
    architecture: "gemma2",
    model_type: "gemma2",
    hf_class: "Gemma2ForCausalLM",
    hidden_act: None,
    layer_tensors: GEMMA_NORMS,
    metadata: &[
        ("attention.sliding_window", "sliding_window"),
        ("attn_logit_softcapping", "attn_logit_softcapping"),
        ("final_logit_softcapping", "final_logit_softcapping"),
    ],
    norms_plus_one: true,
    derive: Some(|_, c| {
        gemma_query_pre_attn_scalar(c, 46);
        Ok(())
    }),
    ..LLAMA_LIKE
});

/// Gemma 2's own keys.
#[derive(Debug, Deserialize)]
struct Gemma2Config {
    #[serde(default = "default_query_scalar")]
    query_pre_attn_scalar: f64,
    #[serde(default = "default_attn_cap")]
    attn_logit_softcapping: Option<f64>,
    #[serde(default = "default_final_cap")]
    final_logit_softcapping: Option<f64>,
    #[serde(default = "crate::config::window_4096")]
    sliding_window: Option<usize>,
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

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, f: FamilyConfig<'_>) -> Result<FamilyModel<B>> {
    let c: Gemma2Config = f.own()?;
    // Even layers slide, odd layers see everything.
    let sliding = f.sliding_layers(|i| i % 2 == 0)?;
    let spec = DecoderSpec {
        placement: NormPlacement::Sandwich,
        embed_scale: Some((f.spec.hidden as f64).sqrt()),
        final_logit_softcap: c.final_logit_softcapping,
        rope: vec![f.rope_table(10_000.0)?],
        ..f.spec
    };
    load_decoder(l, &spec, |i| AttentionOptions {
        scale: c.query_pre_attn_scalar.powf(-0.5),
        logit_softcap: c.attn_logit_softcapping,
        sliding_window: c.sliding_window.filter(|_| sliding[i]),
        ..f.attention.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let c: Gemma2Config = serde_json::from_str("{}").unwrap();
        assert_eq!(
            (c.attn_logit_softcapping, c.final_logit_softcapping),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(
            (c.query_pre_attn_scalar, c.sliding_window),
            (256.0, Some(4096))
        );
        let raw = serde_json::json!({"num_hidden_layers": 4});
        let path = std::path::Path::new("config.json");
        let sliding = crate::config::sliding_layers(path, &raw, 4, |i| i % 2 == 0).unwrap();
        assert_eq!(
            sliding,
            vec![true, false, true, false],
            "layer 0 slides, layer 1 is global"
        );
    }

    #[test]
    fn null_softcaps_are_off() {
        let c: Gemma2Config = serde_json::from_str(
            r#"{"attn_logit_softcapping": null, "final_logit_softcapping": null}"#,
        )
        .unwrap();
        assert_eq!(
            (c.attn_logit_softcapping, c.final_logit_softcapping),
            (None, None)
        );
    }
}
