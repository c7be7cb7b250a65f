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

use crate::blocks::{AttentionOptions, DecoderSpec, load_decoder};
use crate::config::Defaults;
use crate::config::FamilyConfig;
use crate::family::FamilyModel;
use crate::gguf::{GgufNames, LLAMA_LIKE};
use crate::loader::Loader;
use crate::ops::ModelBackend;
use gradlens_core::Result;
use serde::Deserialize;

/// transformers' `MistralConfig` defaults: 8 kv heads, otherwise Llama's.
pub const DEFAULTS: Defaults = Defaults {
    kv_heads: Some(8),
    ..Defaults::LLAMA
};

/// llama.cpp writes Mistral's files as Llama's (`general.architecture` "llama", q and k
/// interleaved); transformers takes one whose `general.name` says mistral for Mistral.
pub static GGUF: Option<GgufNames> = Some(GgufNames {
    name_contains: Some("mistral"),
    model_type: "mistral",
    hf_class: "MistralForCausalLM",
    permuted_qk: true,
    ..LLAMA_LIKE
});

/// Mistral's own key: the window of every layer (`null`: none).
#[derive(Debug, Deserialize)]
struct MistralConfig {
    #[serde(default = "crate::config::window_4096")]
    sliding_window: Option<usize>,
}

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, f: FamilyConfig<'_>) -> Result<FamilyModel<B>> {
    let c: MistralConfig = f.own()?;
    let spec = DecoderSpec {
        rope: vec![f.rope_table(10_000.0)?],
        ..f.spec
    };
    load_decoder(l, &spec, |_| AttentionOptions {
        sliding_window: c.sliding_window,
        ..f.attention.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_defaults_to_4096_and_null_means_none() {
        let c: MistralConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.sliding_window, Some(4096));
        let c: MistralConfig = serde_json::from_str(r#"{"sliding_window": null}"#).unwrap();
        assert_eq!(c.sliding_window, None);
    }
}
