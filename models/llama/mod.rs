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

use crate::blocks::{DecoderSpec, load_decoder};
use crate::config::Defaults;
use crate::config::FamilyConfig;
use crate::family::FamilyModel;
use crate::gguf::{GgufNames, LLAMA_LIKE};
use crate::loader::Loader;
use crate::ops::ModelBackend;
use gradlens_core::Result;

/// transformers' `LlamaConfig` defaults.
pub const DEFAULTS: Defaults = Defaults::LLAMA;

/// llama.cpp's Llama files: its converter interleaves the rotary halves of q and k.
pub static GGUF: Option<GgufNames> = Some(GgufNames {
    permuted_qk: true,
    ..LLAMA_LIKE
});

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, f: FamilyConfig<'_>) -> Result<FamilyModel<B>> {
    // Checkpoints of older transformers versions store the rotary table.
    l.ignore_where(|n| n.ends_with("rotary_emb.inv_freq"));
    let spec = DecoderSpec {
        rope: vec![f.rope_table(10_000.0)?],
        ..f.spec
    };
    load_decoder(l, &spec, |_| f.attention.clone())
}
