//! A GGUF file as a Hugging Face checkpoint directory: `config.json` from the metadata,
//! `model.safetensors` (every tensor dequantized to f32 under its Hugging Face name, Llama's q and k
//! rows put back in Hugging Face's rotary layout, Gemma's norms without llama.cpp's added one),
//! `tokenizer.json` (a byte-level BPE, as transformers builds it from a GGUF vocabulary) and
//! `tokenizer_config.json` with the chat template and the special tokens.
//!
//! What is the same for every family (llama.cpp's Llama names and metadata keys) is here; what a
//! family says differently is its [`GgufNames`], declared in the family's folder
//! (`models/<family>/mod.rs`, `GGUF`) and handed to [`import`] by the model registry.
//! Tokenizers: `gpt2` (byte-level BPE). Anything else is an error naming the metadata key.

use super::{Gguf, GgufError, TensorInfo};
use safetensors::tensor::TensorView;
use serde_json::{Map, Value as Json, json};
use std::path::Path;

/// What one family's GGUF files say in llama.cpp's words, beyond llama.cpp's Llama names (which
/// every family shares): declared in the family's folder, read by [`import`].
#[derive(Debug)]
pub struct GgufNames {
    /// llama.cpp's `general.architecture`.
    pub architecture: &'static str,
    /// A file of that architecture is this family's only when its `general.name` contains this
    /// (lower-cased): llama.cpp writes Mistral's files as `llama`, and transformers tells them
    /// apart by the name.
    pub name_contains: Option<&'static str>,
    /// config.json's `model_type`.
    pub model_type: &'static str,
    /// config.json's `architectures`.
    pub hf_class: &'static str,
    /// config.json's `hidden_act`, when the family's config reads that key.
    pub hidden_act: Option<&'static str>,
    /// The family's own layer tensors: llama.cpp's name inside `blk.N.` → Hugging Face's inside
    /// `model.layers.N.` (taking precedence over the Llama names).
    pub layer_tensors: &'static [(&'static str, &'static str)],
    /// The family's own metadata: the key after `<architecture>.` → config.json's key.
    pub metadata: &'static [(&'static str, &'static str)],
    /// llama.cpp's converter interleaves the two rotary halves of every q and k head (Llama's):
    /// put them back.
    pub permuted_qk: bool,
    /// llama.cpp's converter stores every norm weight as 1 + w (Gemma's): take the one off.
    pub norms_plus_one: bool,
    /// config.json keys computed from the metadata (e.g. Gemma 2's `query_pre_attn_scalar`).
    pub derive: Option<Derive>,
}

/// A family's step that computes config.json keys from a file's metadata (the keys the file's
/// family mapping already wrote are in the map).
pub type Derive = fn(&Gguf, &mut Map<String, Json>) -> Result<(), GgufError>;

impl GgufNames {
    /// Whether a file of `architecture` named `name` is this family's.
    fn claims(&self, architecture: &str, name: &str) -> bool {
        self.architecture == architecture
            && self
                .name_contains
                .is_none_or(|n| name.to_lowercase().contains(n))
    }
}

/// The family of a file: the one whose name marker its `general.name` carries, else the
/// architecture's family without a marker.
fn family_of<'a>(
    families: &[&'a GgufNames],
    architecture: &str,
    name: &str,
) -> Option<&'a GgufNames> {
    families
        .iter()
        .find(|f| f.name_contains.is_some() && f.claims(architecture, name))
        .or_else(|| {
            families
                .iter()
                .find(|f| f.name_contains.is_none() && f.claims(architecture, name))
        })
        .copied()
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The file's `general.architecture`.
    pub architecture: String,
    /// The family it was imported as (config.json's `model_type`).
    pub model_type: String,
    pub tensors: usize,
    pub parameters: u64,
    /// The ggml types of the file's tensors, with counts.
    pub types: std::collections::BTreeMap<String, usize>,
}

/// llama.cpp's Llama layer tensors (inside `blk.N.`) → Hugging Face's (inside `model.layers.N.`).
const LAYER_TENSORS: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The Hugging Face name of a llama.cpp tensor name (the family's own layer names first).
fn hf_name(name: &str, family: &[(&str, &str)]) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    let top = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(format!("{t}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = family
        .iter()
        .chain(LAYER_TENSORS)
        .find(|(gguf, _)| *gguf == part)
        .map(|(_, hf)| *hf)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undo llama.cpp's reordering of Llama's q/k rows (its converter interleaves the two rotary
/// halves of every head): rows `[heads, 2, d/2]` back to `[heads, d/2, 2]`, as transformers'
/// `reverse_permute_weights`.
fn unpermute(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for two in 0..2 {
                // transformers: w.reshape(heads, half, 2, …).swapaxes(2, 1): new row
                // (h, two, i) takes old row (h, i, two).
                let old = (h * half + i) * 2 + two;
                let new = (h * 2 + two) * half + i;
                out[new * cols..(new + 1) * cols]
                    .copy_from_slice(&values[old * cols..(old + 1) * cols]);
            }
        }
    }
    out
}

fn uint(g: &Gguf, key: &str) -> Result<u64, GgufError> {
    g.get(key)?
        .as_u64()
        .ok_or_else(|| g.bad(key, "expected an unsigned integer"))
}

fn float(g: &Gguf, key: &str) -> Result<f64, GgufError> {
    g.get(key)?
        .as_f64()
        .ok_or_else(|| g.bad(key, "expected a number"))
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>, GgufError> {
    g.get(key)?
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_str().map(String::from)).collect())
        .ok_or_else(|| g.bad(key, "expected an array of strings"))
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`).
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).expect("valid char");
    }
    table
}

/// The pre-tokenizer split of a `tokenizer.ggml.pre` type, as transformers maps them.
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

/// `tokenizer.json` and `tokenizer_config.json` of a `gpt2` (byte-level BPE) GGUF vocabulary.
fn tokenizer_files(g: &Gguf) -> Result<(Json, Json), GgufError> {
    let model = g
        .get("tokenizer.ggml.model")?
        .as_str()
        .ok_or_else(|| g.bad("tokenizer.ggml.model", "expected a string"))?;
    if model != "gpt2" {
        return Err(g.bad(
            "tokenizer.ggml.model",
            format!(
                "{model:?}: gradlens imports byte-level BPE (\"gpt2\") vocabularies only; \
                 convert this one with transformers (scripts/gguf_to_hf_with_transformers.py)"
            ),
        ));
    }
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match g.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_i64()).collect())
            .ok_or_else(|| g.bad("tokenizer.ggml.token_type", "expected integers"))?,
        None => Vec::new(),
    };
    let table = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let spelled = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        let key = if spelled(t) {
            t.clone()
        } else {
            t.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(key, json!(i));
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            json!([a, b])
        })
        .collect();
    // Control tokens (type 3) spelled in the byte alphabet are special added tokens; user-defined
    // ones (type 4) plain added tokens (transformers' add_gguf_special_tokens).
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if (ty == 3 && spelled(t)) || ty == 4 {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == 3,
            }));
        }
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = g
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let pre_tokenizer = match split_regex(pre) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]}),
        None => byte_level.clone(),
    };
    let token_of = |key: &str| -> Option<String> {
        g.metadata
            .get(key)
            .and_then(|v| v.as_u64())
            .and_then(|i| tokens.get(i as usize).cloned())
    };
    let add_bos = g
        .metadata
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let bos = token_of("tokenizer.ggml.bos_token_id");
    let post_processor = match (&bos, add_bos) {
        (Some(bos), true) => {
            let id = vocab.get(bos).cloned().unwrap_or(json!(0));
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.clone(): {"id": bos, "ids": [id], "tokens": [bos]}}})
        }
        _ => json!({"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}}),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let mut config = serde_json::Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("add_bos_token".into(), json!(add_bos));
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(t) = token_of(key) {
            config.insert(name.into(), json!(t));
        }
    }
    if let Some(t) = g
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
    {
        config.insert("chat_template".into(), json!(t));
    }
    Ok((tokenizer, Json::Object(config)))
}

/// A metadata value as JSON.
fn to_json(v: &super::Value) -> Json {
    use super::Value;
    match v {
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
    }
}

/// config.json's `rope_scaling` of the file's `rope.scaling.*` keys (none when absent or
/// `none`): linear and YaRN, as transformers writes them.
fn rope_scaling(g: &Gguf, arch: &str) -> Result<Option<Json>, GgufError> {
    let k = |s: &str| format!("{arch}.{s}");
    let key = k("rope.scaling.type");
    let Some(v) = g.metadata.get(&key) else {
        return Ok(None);
    };
    let kind = v.as_str().ok_or_else(|| g.bad(&key, "expected a string"))?;
    if kind == "none" {
        return Ok(None);
    }
    if kind != "linear" && kind != "yarn" {
        return Err(g.bad(
            &key,
            format!("{kind:?}: gradlens maps linear and yarn rope scaling"),
        ));
    }
    let factor = float(g, &k("rope.scaling.factor"))?;
    let mut scaling = json!({"rope_type": kind, "factor": factor});
    if kind == "yarn" {
        scaling["original_max_position_embeddings"] =
            json!(uint(g, &k("rope.scaling.original_context_length"))?);
    }
    Ok(Some(scaling))
}

/// `config.json` of the file's family.
fn config(g: &Gguf, family: &GgufNames, vocab: usize, tied: bool) -> Result<Json, GgufError> {
    let arch = family.architecture;
    let k = |s: &str| format!("{arch}.{s}");
    let heads = uint(g, &k("attention.head_count"))?;
    let mut c = json!({
        "architectures": [family.hf_class],
        "model_type": family.model_type,
        "hidden_size": uint(g, &k("embedding_length"))?,
        "intermediate_size": uint(g, &k("feed_forward_length"))?,
        "num_hidden_layers": uint(g, &k("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": g.metadata.get(&k("attention.head_count_kv")).and_then(|v| v.as_u64()).unwrap_or(heads),
        "rms_norm_eps": float(g, &k("attention.layer_norm_rms_epsilon"))?,
        "rope_theta": g.metadata.get(&k("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10000.0),
        "max_position_embeddings": uint(g, &k("context_length"))?,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
    });
    let obj = c.as_object_mut().expect("object");
    if let Some(act) = family.hidden_act {
        obj.insert("hidden_act".into(), json!(act));
    }
    if let Some(d) = g
        .metadata
        .get(&k("attention.key_length"))
        .and_then(|v| v.as_u64())
    {
        obj.insert("head_dim".into(), json!(d));
    }
    if let Some(scaling) = rope_scaling(g, arch)? {
        obj.insert("rope_scaling".into(), scaling);
    }
    for (key, name) in family.metadata {
        if let Some(v) = g.metadata.get(&k(key)) {
            obj.insert((*name).into(), to_json(v));
        }
    }
    for (name, key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(v) = g.metadata.get(key).and_then(|v| v.as_u64()) {
            obj.insert(name.into(), json!(v));
        }
    }
    if let Some(derive) = family.derive {
        derive(g, obj)?;
    }
    Ok(c)
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> GgufError + '_ {
    move |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Import `gguf` into the directory `out` (created; written through `.<name>.partial` and a
/// rename, so `out` is complete or absent). `families`: what each family's files say (the model
/// registry's `gguf_families`); the file's `general.architecture` (and `general.name`) picks one.
pub fn import(gguf: &Path, out: &Path, families: &[&GgufNames]) -> Result<Imported, GgufError> {
    let g = Gguf::open(gguf)?;
    let arch = g
        .get("general.architecture")?
        .as_str()
        .ok_or_else(|| g.bad("general.architecture", "expected a string"))?
        .to_string();
    let name = g
        .metadata
        .get("general.name")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let Some(family) = family_of(families, &arch, name) else {
        let mut known: Vec<&str> = families.iter().map(|f| f.architecture).collect();
        known.dedup();
        return Err(g.bad(
            "general.architecture",
            format!(
                "{arch:?}: gradlens imports GGUF files of {}",
                known.join(", ")
            ),
        ));
    };
    let (tokenizer, tokenizer_config) = tokenizer_files(&g)?;
    let vocab = strings(&g, "tokenizer.ggml.tokens")?.len();
    let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
    let config = config(&g, family, vocab, tied)?;
    let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;

    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut types = std::collections::BTreeMap::new();
    let mut parameters = 0u64;
    for t in &g.tensors {
        if t.name == "rope_freqs.weight" {
            // llama.cpp's Llama 3 rope factors: refused unless they change nothing.
            if g.dequantize(t)?.iter().any(|&f| f != 1.0) {
                return Err(GgufError::Tensor {
                    path: g.path.clone(),
                    name: t.name.clone(),
                    message: "rope frequency factors (Llama 3's rope scaling) are not imported: \
                              convert the checkpoint with transformers instead"
                        .into(),
                });
            }
            continue;
        }
        let hf = hf_name(&t.name, family.layer_tensors).ok_or_else(|| GgufError::Tensor {
            path: g.path.clone(),
            name: t.name.clone(),
            message: "no Hugging Face name is known for it".into(),
        })?;
        *types
            .entry(super::dequant::type_name(t.ggml_type))
            .or_insert(0) += 1;
        let shape = t.shape();
        let mut values = g.dequantize(t)?;
        if family.permuted_qk && shape.len() == 2 {
            let heads = match &t.name {
                n if n.ends_with("attn_q.weight") => Some(heads),
                n if n.ends_with("attn_k.weight") => Some(kv_heads),
                _ => None,
            };
            if let Some(h) = heads {
                check_heads(&g, t, shape[0], h)?;
                values = unpermute(&values, shape[0], shape[1], h);
            }
        }
        if family.norms_plus_one && t.name.ends_with("norm.weight") {
            for v in &mut values {
                *v -= 1.0;
            }
        }
        parameters += values.len() as u64;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((hf, shape, bytes));
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    let partial = out.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(write_err(&partial))?;
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let st = partial.join("model.safetensors");
    safetensors::serialize_to_file(views, meta, &st).map_err(|e| GgufError::Io {
        path: st.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for (file, value) in [
        ("config.json", &config),
        ("tokenizer.json", &tokenizer),
        ("tokenizer_config.json", &tokenizer_config),
    ] {
        let path = partial.join(file);
        let text = serde_json::to_string_pretty(value).expect("json") + "\n";
        std::fs::write(&path, text).map_err(write_err(&path))?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(write_err(out))?;
    }
    std::fs::rename(&partial, out).map_err(write_err(out))?;
    Ok(Imported {
        architecture: arch,
        model_type: family.model_type.to_string(),
        tensors: tensors.len(),
        parameters,
        types,
    })
}

fn check_heads(g: &Gguf, t: &TensorInfo, rows: usize, heads: usize) -> Result<(), GgufError> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(GgufError::Tensor {
            path: g.path.clone(),
            name: t.name.clone(),
            message: format!("{rows} rows are not whole rotary halves of {heads} heads"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("token_embd.weight", &[]).unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name("blk.12.attn_output.weight", &[]).unwrap(),
            "model.layers.12.self_attn.o_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_q.bias", &[]).unwrap(),
            "model.layers.0.self_attn.q_proj.bias"
        );
        assert_eq!(hf_name("output.weight", &[]).unwrap(), "lm_head.weight");
        assert!(hf_name("blk.0.mystery.weight", &[]).is_none());
        // A family's own names come first (Gemma 2's norm before its MLP).
        let gemma = [("ffn_norm", "pre_feedforward_layernorm")];
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight", &gemma).unwrap(),
            "model.layers.3.pre_feedforward_layernorm.weight"
        );
    }

    #[test]
    fn unpermute_inverts_llama_cpps_permutation() {
        // llama.cpp: w.reshape(heads, 2, half, cols).swapaxes(1, 2): new row (h, i, two) takes old
        // row (h, two, i). Applying it to row numbers then unpermuting gives them back in order.
        let (heads, half, cols) = (3, 4, 2);
        let rows = heads * 2 * half;
        let original: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut permuted = vec![0f32; original.len()];
        for h in 0..heads {
            for two in 0..2 {
                for i in 0..half {
                    let old = (h * 2 + two) * half + i;
                    let new = (h * half + i) * 2 + two;
                    permuted[new * cols..(new + 1) * cols]
                        .copy_from_slice(&original[old * cols..(old + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute(&permuted, rows, cols, heads), original);
    }

    #[test]
    fn the_byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(
            t.iter().collect::<std::collections::HashSet<_>>().len(),
            256
        );
    }

    /// A GGUF file of metadata only (version 3, no tensors): string, u32 and f32 values.
    fn metadata_only(name: &str, kv: &[(&str, super::super::Value)]) -> Gguf {
        use super::super::Value;
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        for (k, v) in kv {
            string(&mut b, k);
            match v {
                Value::String(s) => {
                    b.extend(8u32.to_le_bytes());
                    string(&mut b, s);
                }
                Value::U64(x) => {
                    b.extend(4u32.to_le_bytes());
                    b.extend((*x as u32).to_le_bytes());
                }
                Value::F64(x) => {
                    b.extend(6u32.to_le_bytes());
                    b.extend((*x as f32).to_le_bytes());
                }
                _ => unreachable!(),
            }
        }
        let dir = std::env::temp_dir().join(format!("gradlens-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, b).unwrap();
        Gguf::open(&path).unwrap()
    }

    #[test]
    fn rope_scaling_in_the_metadata_is_mapped() {
        use super::super::Value::{F64, String as S, U64};
        let none = metadata_only(
            "none.gguf",
            &[("llama.rope.scaling.type", S("none".into()))],
        );
        assert_eq!(rope_scaling(&none, "llama").unwrap(), None);
        let linear = metadata_only(
            "linear.gguf",
            &[
                ("gemma3.rope.scaling.type", S("linear".into())),
                ("gemma3.rope.scaling.factor", F64(8.0)),
            ],
        );
        assert_eq!(
            rope_scaling(&linear, "gemma3").unwrap(),
            Some(json!({"rope_type": "linear", "factor": 8.0}))
        );
        let yarn = metadata_only(
            "yarn.gguf",
            &[
                ("qwen2.rope.scaling.type", S("yarn".into())),
                ("qwen2.rope.scaling.factor", F64(4.0)),
                ("qwen2.rope.scaling.original_context_length", U64(32768)),
            ],
        );
        assert_eq!(
            rope_scaling(&yarn, "qwen2").unwrap(),
            Some(
                json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
            )
        );
        let other = metadata_only(
            "other.gguf",
            &[("llama.rope.scaling.type", S("longrope".into()))],
        );
        let e = rope_scaling(&other, "llama").unwrap_err().to_string();
        assert!(
            e.contains("other.gguf")
                && e.contains("llama.rope.scaling.type")
                && e.contains("longrope"),
            "{e}"
        );
        let no_factor = metadata_only(
            "nofactor.gguf",
            &[("llama.rope.scaling.type", S("linear".into()))],
        );
        let e = rope_scaling(&no_factor, "llama").unwrap_err().to_string();
        assert!(
            e.contains("llama.rope.scaling.factor") && e.contains("missing"),
            "{e}"
        );
    }
}
