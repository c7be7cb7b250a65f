//! What families' GGUF declarations share: each family declares what its files say in llama.cpp's
//! words (`GGUF` in its folder, a [`GgufNames`]), most of them from the presets here; the
//! registry hands the declarations to the importer (`crate::registry::import_gguf`).

use serde_json::{Map, Value as Json, json};

pub use gradlens_core::gguf::import::{GgufNames, Imported};

/// A Llama-like file: llama.cpp's Llama tensor names and keys as they are, SiLU.
pub const LLAMA_LIKE: GgufNames = GgufNames {
    architecture: "llama",
    name_contains: None,
    model_type: "llama",
    hf_class: "LlamaForCausalLM",
    hidden_act: Some("silu"),
    layer_tensors: &[],
    metadata: &[],
    permuted_qk: false,
    norms_plus_one: false,
    derive: None,
};

/// Gemma 2's and Gemma 3's norms: llama.cpp's `ffn_norm` is the norm before the MLP, and the norms
/// after attention and after the MLP have names of their own.
pub const GEMMA_NORMS: &[(&str, &str)] = &[
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

/// Gemma's `query_pre_attn_scalar`, which its files do not carry: llama.cpp scales queries by
/// `head_dim^-0.5`, except for the 27B model (`layers_27b` layers), whose scale is
/// `(hidden_size / heads)^-0.5`.
pub fn gemma_query_pre_attn_scalar(c: &mut Map<String, Json>, layers_27b: u64) {
    let n = |k: &str| c.get(k).and_then(Json::as_u64);
    let per_head = n("hidden_size")
        .zip(n("num_attention_heads"))
        .filter(|&(_, heads)| heads > 0)
        .map(|(h, heads)| h / heads);
    let scalar = if n("num_hidden_layers") == Some(layers_27b) {
        per_head
    } else {
        n("head_dim").or(per_head)
    };
    if let Some(s) = scalar {
        c.insert("query_pre_attn_scalar".into(), json!(s));
    }
}
