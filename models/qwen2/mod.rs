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

use crate::blocks::{AttentionOptions, DecoderSpec, load_decoder};
use crate::config::FamilyConfig;
use crate::config::{Defaults, SlidingFromLayer};
use crate::family::FamilyModel;
use crate::gguf::{GgufNames, LLAMA_LIKE};
use crate::loader::Loader;
use crate::ops::ModelBackend;
use gradlens_core::Result;

/// transformers' `Qwen2Config` defaults for the shared keys (Llama's).
pub const DEFAULTS: Defaults = Defaults::LLAMA;

/// llama.cpp's `qwen2` files: Llama's names, q/k/v biases, rows as Hugging Face has them.
pub static GGUF: Option<GgufNames> = Some(GgufNames {
    architecture: "qwen2",
    model_type: "qwen2",
    hf_class: "Qwen2ForCausalLM",
    ..LLAMA_LIKE
});

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, f: FamilyConfig<'_>) -> Result<FamilyModel<B>> {
    let windows = f.own::<SlidingFromLayer>()?.windows(&f)?;
    let spec = DecoderSpec {
        rope: vec![f.rope_table(10_000.0)?],
        ..f.spec
    };
    // Biases on q, k and v, none on o.
    load_decoder(l, &spec, |i| AttentionOptions {
        sliding_window: windows[i],
        qkv_bias: true,
        o_bias: false,
        ..f.attention.clone()
    })
}
