//! Qwen3 (`model_type: "qwen3"`): Qwen2 without the q/k/v biases, with an RMSNorm on each query
//! and key head before the rotary embedding, and an explicit `head_dim`.
//!
//! - Pre-norm decoder layers, plain RMSNorm (`w · x / rms(x)`), SiLU-gated MLP.
//! - Rotary embedding, half-split layout, `rope_theta` (default 10000), optional scaling.
//! - Grouped-query attention, **no biases**; **`q_norm`, `k_norm`** (`[head_dim]`, per head);
//!   **`head_dim` explicit** (default 128), so q and o need not be square.
//! - Sliding window only when `use_sliding_window` is true, on layers ≥ `max_window_layers`
//!   (or as `layer_types` says).
//! - LM head tied when `tie_word_embeddings` is true (default false); an untied checkpoint without
//!   `lm_head.weight` is an error.
//!
//! Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//! vocab_size. Defaults as transformers' `Qwen3Config`: head_dim 128, rms_norm_eps 1e-6,
//! hidden_act "silu", attention_bias false, sliding_window 4096, max_window_layers 28.

use crate::blocks::{AttentionOptions, DecoderSpec, QkNorm, load_decoder};
use crate::config::FamilyConfig;
use crate::config::{Defaults, SlidingFromLayer};
use crate::family::FamilyModel;
use crate::gguf::{GgufNames, LLAMA_LIKE};
use crate::loader::Loader;
use crate::ops::ModelBackend;
use gradlens_core::Result;

/// transformers' `Qwen3Config` defaults: head_dim 128, otherwise Llama's.
pub const DEFAULTS: Defaults = Defaults {
    head_dim: Some(128),
    ..Defaults::LLAMA
};

/// llama.cpp's `qwen3` files: Llama's names with `attn_q_norm`/`attn_k_norm`, `head_dim` as
/// `attention.key_length`.
pub static GGUF: Option<GgufNames> = Some(GgufNames {
    architecture: "qwen3",
    model_type: "qwen3",
    hf_class: "Qwen3ForCausalLM",
    ..LLAMA_LIKE
});

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, f: FamilyConfig<'_>) -> Result<FamilyModel<B>> {
    let windows = f.own::<SlidingFromLayer>()?.windows(&f)?;
    let qk_norm = QkNorm::PerHead(f.spec.norm);
    let spec = DecoderSpec {
        rope: vec![f.rope_table(10_000.0)?],
        ..f.spec
    };
    load_decoder(l, &spec, |i| AttentionOptions {
        sliding_window: windows[i],
        qk_norm,
        ..f.attention.clone()
    })
}
