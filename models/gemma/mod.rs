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

use crate::blocks::{DecoderSpec, load_decoder};
use crate::config::Defaults;
use crate::config::FamilyConfig;
use crate::family::FamilyModel;
use crate::gguf::GgufNames;
use crate::loader::Loader;
use crate::ops::ModelBackend;
use gradlens_core::Result;

/// transformers' `GemmaConfig` defaults.
pub const DEFAULTS: Defaults = Defaults::GEMMA;

/// No GGUF import: transformers cannot load Gemma (1) GGUF files, so no reference proves one.
pub static GGUF: Option<GgufNames> = None;

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, f: FamilyConfig<'_>) -> Result<FamilyModel<B>> {
    let spec = DecoderSpec {
        embed_scale: Some((f.spec.hidden as f64).sqrt()),
        rope: vec![f.rope_table(10_000.0)?],
        ..f.spec
    };
    load_decoder(l, &spec, |_| f.attention.clone())
}
