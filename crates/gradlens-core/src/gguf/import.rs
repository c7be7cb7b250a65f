//! A GGUF file as a Hugging Face checkpoint directory: `config.json` from the metadata,
//! `model.safetensors` (every tensor dequantized to f32 under its Hugging Face name, Llama's q and k
//! rows put back in Hugging Face's rotary layout), `tokenizer.json` (a byte-level BPE, as
//! transformers builds it from a GGUF vocabulary) and `tokenizer_config.json` with the chat
//! template and the special tokens.
//!
//! Architectures: `llama` and `qwen2`. Tokenizers: `gpt2` (byte-level BPE). Anything else is an
//! error naming the metadata key.

use super::{Gguf, GgufError, TensorInfo};
use safetensors::tensor::TensorView;
use serde_json::{Value as Json, json};
use std::path::Path;

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    pub architecture: String,
    pub tensors: usize,
    pub parameters: u64,
    /// The ggml types of the file's tensors, with counts.
    pub types: std::collections::BTreeMap<String, usize>,
}

/// The Hugging Face name of a llama.cpp tensor name.
fn hf_name(name: &str) -> Option<String> {
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
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
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

/// `config.json` of the file's architecture.
fn config(g: &Gguf, arch: &str, vocab: usize, tied: bool) -> Result<Json, GgufError> {
    let k = |s: &str| format!("{arch}.{s}");
    for key in [k("rope.scaling.type")] {
        if let Some(v) = g.metadata.get(&key)
            && v.as_str().is_some_and(|s| s != "none")
        {
            return Err(g.bad(&key, format!("{v:?}: rope scaling is not imported yet")));
        }
    }
    let heads = uint(g, &k("attention.head_count"))?;
    let mut c = json!({
        "architectures": [if arch == "llama" { "LlamaForCausalLM" } else { "Qwen2ForCausalLM" }],
        "model_type": arch,
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
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    let obj = c.as_object_mut().expect("object");
    if let Some(d) = g
        .metadata
        .get(&k("attention.key_length"))
        .and_then(|v| v.as_u64())
    {
        obj.insert("head_dim".into(), json!(d));
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
    Ok(c)
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> GgufError + '_ {
    move |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Import `gguf` into the directory `out` (created; written through `.<name>.partial` and a
/// rename, so `out` is complete or absent).
pub fn import(gguf: &Path, out: &Path) -> Result<Imported, GgufError> {
    let g = Gguf::open(gguf)?;
    let arch = g
        .get("general.architecture")?
        .as_str()
        .ok_or_else(|| g.bad("general.architecture", "expected a string"))?
        .to_string();
    if arch != "llama" && arch != "qwen2" {
        return Err(g.bad(
            "general.architecture",
            format!("{arch:?}: gradlens imports llama and qwen2 GGUF files"),
        ));
    }
    let (tokenizer, tokenizer_config) = tokenizer_files(&g)?;
    let vocab = strings(&g, "tokenizer.ggml.tokens")?.len();
    let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
    let config = config(&g, &arch, vocab, tied)?;
    let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;

    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut types = std::collections::BTreeMap::new();
    let mut parameters = 0u64;
    for t in &g.tensors {
        if t.name == "rope_freqs.weight" {
            continue;
        }
        let name = hf_name(&t.name).ok_or_else(|| GgufError::Tensor {
            path: g.path.clone(),
            name: t.name.clone(),
            message: "no Hugging Face name is known for it".into(),
        })?;
        *types
            .entry(super::dequant::type_name(t.ggml_type))
            .or_insert(0) += 1;
        let shape = t.shape();
        let mut values = g.dequantize(t)?;
        if arch == "llama" && shape.len() == 2 {
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
        parameters += values.len() as u64;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
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
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name("blk.12.attn_output.weight").unwrap(),
            "model.layers.12.self_attn.o_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_q.bias").unwrap(),
            "model.layers.0.self_attn.q_proj.bias"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.0.mystery.weight").is_none());
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
}
