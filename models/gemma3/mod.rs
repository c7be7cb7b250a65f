//! Gemma 3, text only (`model_type: "gemma3_text"`, `Gemma3ForCausalLM`): Gemma 2's layer, plus
//!
//! - **q/k RMSNorm per head** (`q_norm`, `k_norm`, `[head_dim]`, Gemma's `(1 + w)` kind) before the
//!   rotary embedding,
//! - **local and global layers** (`layer_types`; default: five sliding layers, then one global,
//!   `(i + 1) % sliding_window_pattern != 0` slides, pattern 6), window `sliding_window`
//!   (default 4096),
//! - **two rotary tables**: sliding layers use the local base `rope_local_base_freq` (default
//!   10000) without scaling, global layers `rope_theta` (default 1000000) with `rope_scaling`
//!   (e.g. `linear`, factor 8); transformers 5 writes both as `rope_parameters.sliding_attention`
//!   and `rope_parameters.full_attention`,
//! - soft-caps only when set (`attn_logit_softcapping`, `final_logit_softcapping`: default none),
//! - as Gemma 2: `(1 + w)` RMSNorm, sandwich norms, embeddings × sqrt(hidden_size), queries scaled
//!   by `query_pre_attn_scalar^-0.5` (default 256), GeLU-tanh, tied head.
//!
//! Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//! vocab_size. Defaults as transformers' `Gemma3TextConfig`: num_key_value_heads 4, head_dim 256,
//! rms_norm_eps 1e-6, hidden_activation "gelu_pytorch_tanh", tie_word_embeddings true.

use crate::blocks::{
    AttentionOptions, DecoderSpec, NormPlacement, QkNorm, RopeScaling, RopeTable, load_decoder,
};
use crate::config::FamilyConfig;
use crate::config::{self, Defaults};
use crate::family::FamilyModel;
use crate::gguf::{GEMMA_NORMS, GgufNames, LLAMA_LIKE, gemma_query_pre_attn_scalar};
use crate::loader::Loader;
use crate::ops::ModelBackend;
use gradlens_core::Result;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// transformers' `Gemma3TextConfig` defaults: Gemma's, with 4 kv heads.
pub const DEFAULTS: Defaults = Defaults {
    kv_heads: Some(4),
    ..Defaults::GEMMA
};

/// llama.cpp's `gemma3` files (the text model): Gemma 2's layout with q/k norms, the window as
/// metadata, the global rotary base as `rope.freq_base` (the local one is always 10000).
pub static GGUF: Option<GgufNames> = Some(GgufNames {
    architecture: "gemma3",
    model_type: "gemma3_text",
    hf_class: "Gemma3ForCausalLM",
    hidden_act: None,
    layer_tensors: GEMMA_NORMS,
    metadata: &[("attention.sliding_window", "sliding_window")],
    norms_plus_one: true,
    derive: Some(|_, c| {
        gemma_query_pre_attn_scalar(c, 62);
        Ok(())
    }),
    ..LLAMA_LIKE
});

/// Gemma 3's own keys.
#[derive(Debug, Deserialize)]
struct Gemma3Config {
    #[serde(default = "default_query_scalar")]
    query_pre_attn_scalar: f64,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    #[serde(default = "crate::config::window_4096")]
    sliding_window: Option<usize>,
    #[serde(default = "default_pattern")]
    sliding_window_pattern: usize,
    #[serde(default = "default_local_base")]
    rope_local_base_freq: f64,
}

fn default_query_scalar() -> f64 {
    256.0
}
fn default_pattern() -> usize {
    6
}
fn default_local_base() -> f64 {
    10_000.0
}

/// The global and the local rotary parameters: transformers 5's per-layer-type
/// `rope_parameters`, else the classic `rope_theta` + `rope_scaling` (global) and
/// `rope_local_base_freq` (local, never scaled).
fn rope_tables(path: &Path, raw: &Value, c: &Gemma3Config) -> Result<[(f64, RopeScaling); 2]> {
    let per_type = raw
        .get("rope_parameters")
        .filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
    Ok(match per_type {
        Some(p) => {
            let of = |key: &str, default: f64| match p.get(key).filter(|v| !v.is_null()) {
                Some(v) => config::rope_params(path, v, default),
                None => Ok((default, RopeScaling::None)),
            };
            [
                of("full_attention", 1_000_000.0)?,
                of("sliding_attention", c.rope_local_base_freq)?,
            ]
        }
        None => [
            config::rope(path, raw, 1_000_000.0)?,
            (c.rope_local_base_freq, RopeScaling::None),
        ],
    })
}

/// The `model_type` of the multimodal Gemma 3 checkpoints (Gemma3ForConditionalGeneration).
pub const MULTIMODAL: &str = "gemma3";

/// Read the text model of a multimodal Gemma 3 checkpoint: its `text_config` as the config (model
/// type `gemma3_text`), its tensors under `language_model.model.…` (as Google ships them) or
/// `model.language_model.…` (as transformers 5 saves them), the vision tower and the projector
/// left unread, with a note saying so.
pub fn text_part(ckpt: &mut gradlens_core::Checkpoint) -> Result<()> {
    let path = ckpt.config_path().to_path_buf();
    let mut text = match ckpt.config().get("text_config") {
        Some(Value::Object(t)) => t.clone(),
        _ => {
            return Err(gradlens_core::CheckpointError::Config {
                path,
                message: "a multimodal Gemma 3 config (model_type \"gemma3\") without an object \
                          `text_config`"
                    .into(),
            });
        }
    };
    text.insert("model_type".into(), Value::from("gemma3_text"));
    if let Some(tie) = ckpt.config().get("tie_word_embeddings") {
        text.entry("tie_word_embeddings").or_insert(tie.clone());
    }
    ckpt.set_config(Value::Object(text));
    ckpt.with_prefixes(&[
        ("model.", "language_model.model."),
        ("model.", "model.language_model."),
        ("lm_head.", "language_model.lm_head."),
    ]);
    let vision = [
        "vision_tower.",
        "multi_modal_projector.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
    ];
    ckpt.ignore_where(|n| vision.iter().any(|v| n.starts_with(v)));
    tracing::warn!(
        "{}: a multimodal Gemma 3 checkpoint: measuring its text model (text_config, the \
         language_model tensors); the vision tower and the projector are not loaded",
        path.display()
    );
    Ok(())
}

/// Rotary table 0 serves the global layers, table 1 the sliding ones.
const GLOBAL: usize = 0;
const LOCAL: usize = 1;

pub fn load<B: ModelBackend>(l: &mut Loader<'_, B>, f: FamilyConfig<'_>) -> Result<FamilyModel<B>> {
    let c: Gemma3Config = f.own()?;
    config::ensure(
        f.path,
        c.sliding_window_pattern > 0,
        "sliding_window_pattern must be positive",
    )?;
    let sliding = f.sliding_layers(|i| (i + 1) % c.sliding_window_pattern != 0)?;
    let head_dim = f.attention.head_dim;
    let qk_norm = QkNorm::PerHead(f.spec.norm);
    let spec = DecoderSpec {
        placement: NormPlacement::Sandwich,
        embed_scale: Some((f.spec.hidden as f64).sqrt()),
        final_logit_softcap: c.final_logit_softcapping,
        rope: rope_tables(f.path, f.raw, &c)?
            .map(|(theta, scaling)| RopeTable::new(head_dim, theta, &scaling))
            .to_vec(),
        ..f.spec
    };
    load_decoder(l, &spec, |i| AttentionOptions {
        scale: c.query_pre_attn_scalar.powf(-0.5),
        logit_softcap: c.attn_logit_softcapping,
        sliding_window: c.sliding_window.filter(|_| sliding[i]),
        qk_norm,
        rope: if sliding[i] { LOCAL } else { GLOBAL },
        ..f.attention.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> (Value, Gemma3Config) {
        let raw: Value = serde_json::from_str(&format!(
            r#"{{"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 12,
                "num_attention_heads": 2, "vocab_size": 10{extra}}}"#
        ))
        .unwrap();
        let c = serde_json::from_value(raw.clone()).unwrap();
        (raw, c)
    }

    #[test]
    fn omitted_keys_take_transformers_defaults() {
        let (raw, c) = parse("");
        assert_eq!(c.query_pre_attn_scalar, 256.0);
        assert_eq!(
            (c.attn_logit_softcapping, c.final_logit_softcapping),
            (None, None)
        );
        let p = Path::new("config.json");
        let sliding =
            config::sliding_layers(p, &raw, 12, |i| (i + 1) % c.sliding_window_pattern != 0)
                .unwrap();
        let global: Vec<usize> = (0..12).filter(|&i| !sliding[i]).collect();
        assert_eq!(global, vec![5, 11], "five local layers, then one global");
        let [g, loc] = rope_tables(p, &raw, &c).unwrap();
        assert_eq!((g.0, loc.0), (1_000_000.0, 10_000.0));
    }

    #[test]
    fn both_rope_layouts() {
        let p = Path::new("config.json");
        // Checkpoints as Google ships them (transformers 4).
        let (raw, c) = parse(
            r#", "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                "rope_scaling": {"rope_type": "linear", "factor": 8.0}"#,
        );
        let [g, loc] = rope_tables(p, &raw, &c).unwrap();
        assert_eq!(g, (1_000_000.0, RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(loc, (10_000.0, RopeScaling::None));
        // transformers 5: one entry per layer type.
        let (raw, c) = parse(
            r#", "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0,
                "rope_theta": 500.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}"#,
        );
        let [g, loc] = rope_tables(p, &raw, &c).unwrap();
        assert_eq!(g, (500.0, RopeScaling::Linear { factor: 2.0 }));
        assert_eq!(loc, (50.0, RopeScaling::None));
    }
}
