//! OLMo 2 (`model_type: "olmo2"`): no norm before attention or the MLP; an RMSNorm on each
//! sub-layer's output before the residual add, and on the whole query and key projections before
//! they are split into heads.
//!
//! - Post-norm-only layers: `h = x + norm(attn(x)); out = h + norm(mlp(h))`
//!   (`post_attention_layernorm`, `post_feedforward_layernorm`), plain RMSNorm, SiLU-gated MLP.
//! - **`q_norm` over `heads · head_dim`, `k_norm` over `kv_heads · head_dim`**, before the reshape
//!   to heads and the rotary embedding.
//! - Rotary embedding, half-split layout, `rope_theta` (default 10000), optional scaling;
//!   head_dim = hidden_size / heads.
//! - LM head untied unless `tie_word_embeddings` (default false); an untied checkpoint without
//!   `lm_head.weight` is an error.
//!
//! Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//! vocab_size. Defaults as transformers' `Olmo2Config`: num_key_value_heads = heads,
//! rms_norm_eps 1e-5, hidden_act "silu", attention_bias false.

use crate::blocks::{AttentionOptions, DecoderSpec, NormPlacement, QkNorm, load_decoder};
use crate::config::Defaults;
use crate::config::FamilyConfig;
use crate::family::FamilyModel;
use crate::gguf::GgufNames;
use crate::loader::Loader;
use crate::ops::ModelBackend;
use gradlens_core::Result;

/// transformers' `Olmo2Config` defaults: RMSNorm eps 1e-5, otherwise Llama's.
pub const DEFAULTS: Defaults = Defaults {
    rms_norm_eps: 1e-5,
    ..Defaults::LLAMA
};

/// No GGUF import: transformers cannot load OLMo 2 GGUF files, so no reference proves one.
pub static GGUF: Option<GgufNames> = None;

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, f: FamilyConfig<'_>) -> Result<FamilyModel<B>> {
    let attention = AttentionOptions {
        qk_norm: QkNorm::Whole(f.spec.norm),
        ..f.attention.clone()
    };
    let spec = DecoderSpec {
        placement: NormPlacement::PostOnly,
        rope: vec![f.rope_table(10_000.0)?],
        ..f.spec
    };
    load_decoder(l, &spec, |_| attention.clone())
}
