//! The reliability corpus: bad inputs of every kind (config, safetensors, tokenizer, chat
//! template, data, options, outputs that are not gradlens'), each run through the `gradlens`
//! binary as a user would. Every case must end with exit code 1 (2 for what the argument parser
//! refuses), no panic, one `error:` line naming the file or option and the problem, and no input
//! file changed. Then the faults: two writers on one output, a full disk, non-finite weights,
//! resumed runs with other settings.

use gradlens_tests::{copy_dir, files_under, fixture, rewrite_weights, scratch, tiny_data};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gradlens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gradlens"))
}

/// Every file under `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

/// A copy of the qwen2-tiny checkpoint in `dir/model`.
fn model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    copy_dir(&fixture("qwen2-tiny"), &m);
    m
}

/// A copy of the checkpoint with config.json edited.
fn model_with_config(dir: &Path, edit: impl Fn(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let m = model(dir);
    let p = m.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    m
}

/// A copy of the checkpoint with one file replaced (or removed, for `None`).
fn model_with_file(dir: &Path, name: &str, content: Option<&[u8]>) -> PathBuf {
    let m = model(dir);
    match content {
        Some(c) => std::fs::write(m.join(name), c).unwrap(),
        None => std::fs::remove_file(m.join(name)).unwrap(),
    }
    m
}

/// A copy of the checkpoint whose tokenizer_config.json is edited.
fn model_with_template(dir: &Path, edit: impl Fn(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let m = model(dir);
    let p = m.join("tokenizer_config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    m
}

fn data(dir: &Path) -> PathBuf {
    let d = dir.join("data.json");
    std::fs::copy(tiny_data(), &d).unwrap();
    d
}

fn data_text(dir: &Path, text: &[u8]) -> PathBuf {
    let d = dir.join("data.json");
    std::fs::write(&d, text).unwrap();
    d
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `grads --quiet --model M --data D --out dir/out.jsonl --max-length 96` and `extra`.
fn grads(dir: &Path, m: &Path, d: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "grads".into(),
        "--quiet".into(),
        "--model".into(),
        s(m),
        "--data".into(),
        s(d),
        "--out".into(),
        s(&dir.join("out.jsonl")),
    ];
    if !extra.contains(&"--max-length") {
        a.extend(["--max-length".into(), "96".into()]);
    }
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// `train --quiet --model qwen2-tiny --data D --out dir/run --steps 2` and `extra`.
fn train(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--quiet", "--model"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    a.extend([
        s(&fixture("qwen2-tiny")),
        "--data".into(),
        s(&data(dir)),
        "--out".into(),
        s(&dir.join("run")),
        "--steps".into(),
        "2".into(),
    ]);
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// A copy of the committed PEFT adapter of the Qwen2 fixture (r 4, q/k/v/o) with its
/// adapter_config.json edited.
fn adapter(dir: &Path, edit: impl Fn(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let a = dir.join("adapter");
    copy_dir(
        &gradlens_tests::repo_root().join("fixtures/lora/qwen2-lora/init"),
        &a,
    );
    let p = a.join("adapter_config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    a
}

type Setup = Box<dyn Fn(&Path) -> Vec<String>>;

struct Case {
    name: &'static str,
    setup: Setup,
    /// What the error line must contain: the file or option, and the problem.
    needles: &'static [&'static str],
}

fn case(
    name: &'static str,
    needles: &'static [&'static str],
    setup: impl Fn(&Path) -> Vec<String> + 'static,
) -> Case {
    Case {
        name,
        setup: Box::new(setup),
        needles,
    }
}

/// A config.json edit.
fn config_case(
    name: &'static str,
    needles: &'static [&'static str],
    edit: impl Fn(&mut serde_json::Map<String, Value>) + Clone + 'static,
) -> Case {
    case(name, needles, move |dir| {
        let m = model_with_config(dir, edit.clone());
        grads(dir, &m, &data(dir), &[])
    })
}

/// config.json with one key set.
fn config_set(
    name: &'static str,
    needles: &'static [&'static str],
    key: &'static str,
    value: Value,
) -> Case {
    config_case(name, needles, move |c| {
        c.insert(key.into(), value.clone());
    })
}

/// One file of the checkpoint replaced (or removed, for `None`).
fn file_case(
    name: &'static str,
    needles: &'static [&'static str],
    file: &'static str,
    content: Option<&'static [u8]>,
) -> Case {
    case(name, needles, move |dir| {
        let m = model_with_file(dir, file, content);
        grads(dir, &m, &data(dir), &[])
    })
}

/// model.safetensors' bytes edited (a broken file).
fn weights_bytes_case(
    name: &'static str,
    needles: &'static [&'static str],
    edit: fn(&mut Vec<u8>),
) -> Case {
    case(name, needles, move |dir| {
        let m = model(dir);
        let p = m.join("model.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        edit(&mut b);
        std::fs::write(&p, b).unwrap();
        grads(dir, &m, &data(dir), &[])
    })
}

/// A weights edit.
fn weights_case(
    name: &'static str,
    needles: &'static [&'static str],
    edit: impl Fn(&mut gradlens_tests::TensorMap) + Clone + 'static,
) -> Case {
    case(name, needles, move |dir| {
        let m = model(dir);
        rewrite_weights(&m, edit.clone());
        grads(dir, &m, &data(dir), &[])
    })
}

/// A data file's text.
fn data_case(name: &'static str, needles: &'static [&'static str], text: &'static str) -> Case {
    case(name, needles, move |dir| {
        grads(
            dir,
            &fixture("qwen2-tiny"),
            &data_text(dir, text.as_bytes()),
            &[],
        )
    })
}

/// Options of `grads` on good inputs.
fn option_case(
    name: &'static str,
    needles: &'static [&'static str],
    extra: &'static [&'static str],
) -> Case {
    case(name, needles, move |dir| {
        grads(dir, &fixture("qwen2-tiny"), &data(dir), extra)
    })
}

fn with_tensor(
    name: &'static str,
    f: impl Fn(&mut (safetensors::Dtype, Vec<usize>, Vec<u8>)) + Clone,
) -> impl Fn(&mut gradlens_tests::TensorMap) + Clone {
    move |t| f(t.get_mut(name).unwrap())
}

const Q: &str = "model.layers.0.self_attn.q_proj.weight";
const K: &str = "model.layers.0.self_attn.k_proj.weight";

fn corpus() -> Vec<Case> {
    vec![
        // config.json
        config_set(
            "hidden-zero",
            &["config.json", "hidden_size", "0"],
            "hidden_size",
            json!(0),
        ),
        config_set(
            "hidden-string",
            &["config.json", "hidden_size", "whole number"],
            "hidden_size",
            json!("64"),
        ),
        config_set(
            "hidden-float",
            &["config.json", "hidden_size", "whole number"],
            "hidden_size",
            json!(64.5),
        ),
        config_set(
            "hidden-huge",
            &["config.json", "hidden_size"],
            "hidden_size",
            json!(1u64 << 40),
        ),
        config_set(
            "layers-absurd",
            &["config.json", "num_hidden_layers"],
            "num_hidden_layers",
            json!(1_000_000_000u64),
        ),
        config_set(
            "layers-negative",
            &["config.json", "num_hidden_layers"],
            "num_hidden_layers",
            json!(-2),
        ),
        config_set(
            "heads-zero",
            &["config.json", "num_attention_heads"],
            "num_attention_heads",
            json!(0),
        ),
        config_set(
            "heads-not-dividing",
            &["config.json", "multiple of"],
            "num_attention_heads",
            json!(5),
        ),
        config_set(
            "kv-heads-not-dividing",
            &["config.json", "num_key_value_heads"],
            "num_key_value_heads",
            json!(3),
        ),
        config_set(
            "vocab-absurd",
            &["config.json", "vocab_size"],
            "vocab_size",
            json!(1u64 << 33),
        ),
        config_set(
            "intermediate-absurd",
            &["config.json", "intermediate_size"],
            "intermediate_size",
            json!(1u64 << 30),
        ),
        config_case("no-model-type", &["config.json", "model_type"], |c| {
            c.remove("model_type");
        }),
        config_set(
            "unknown-model-type",
            &["config.json", "gpt2", "supported"],
            "model_type",
            json!("gpt2"),
        ),
        config_case(
            "missing-required",
            &["config.json", "intermediate_size"],
            |c| {
                c.remove("intermediate_size");
            },
        ),
        config_set(
            "eps-string",
            &["config.json", "rms_norm_eps"],
            "rms_norm_eps",
            json!("small"),
        ),
        config_set(
            "tie-string",
            &["config.json", "tie_word_embeddings"],
            "tie_word_embeddings",
            json!("yes"),
        ),
        config_set(
            "activation",
            &["config.json", "relu", "activation"],
            "hidden_act",
            json!("relu"),
        ),
        config_case(
            "rope-type",
            &["config.json", "rope_scaling", "dynamic"],
            |c| {
                c.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "dynamic", "factor": 2.0}),
                );
            },
        ),
        config_set(
            "rope-linear-no-factor",
            &["config.json", "factor"],
            "rope_scaling",
            json!({"rope_type": "linear"}),
        ),
        config_set(
            "layer-types-length",
            &["config.json", "layer_types"],
            "layer_types",
            json!(["full_attention"]),
        ),
        config_set(
            "layer-types-entry",
            &["config.json", "layer_types"],
            "layer_types",
            json!(["full_attention", "chunked"]),
        ),
        config_set(
            "hidden-mismatch",
            &["model.safetensors", "has shape"],
            "hidden_size",
            json!(32),
        ),
        config_case("layers-more", &["missing tensor", "model.layers.2"], |c| {
            c.insert("num_hidden_layers".into(), json!(3));
            c.insert("layer_types".into(), Value::Null);
        }),
        config_case(
            "layers-fewer",
            &["unexpected tensor", "model.layers.1"],
            |c| {
                c.insert("num_hidden_layers".into(), json!(1));
                c.insert("layer_types".into(), Value::Null);
            },
        ),
        file_case("config-missing", &["config.json"], "config.json", None),
        file_case(
            "config-not-json",
            &["config.json", "not valid JSON"],
            "config.json",
            Some(b"{\"model_type\": "),
        ),
        file_case(
            "config-array",
            &["config.json", "JSON object"],
            "config.json",
            Some(b"[1, 2]"),
        ),
        case("model-is-a-file", &["config.json"], |dir| {
            grads(dir, &tiny_data(), &data(dir), &[])
        }),
        option_case(
            "memory-max-length",
            &["config.json", "needs about", "--max-length"],
            &["--max-length", "50000000"],
        ),
        option_case(
            "memory-limit",
            &["config.json", "needs about", "--max-memory"],
            &["--max-memory", "1K"],
        ),
        // safetensors
        file_case(
            "weights-missing",
            &["no weights found"],
            "model.safetensors",
            None,
        ),
        file_case(
            "weights-empty",
            &["model.safetensors", "broken safetensors"],
            "model.safetensors",
            Some(b""),
        ),
        weights_bytes_case(
            "weights-truncated",
            &["model.safetensors", "broken safetensors"],
            |b| b.truncate(b.len() / 2),
        ),
        weights_bytes_case(
            "weights-header-length",
            &["model.safetensors", "broken safetensors"],
            |b| b[..8].copy_from_slice(&u64::MAX.to_le_bytes()),
        ),
        weights_bytes_case(
            "weights-header-garbage",
            &["model.safetensors", "broken safetensors"],
            |b| b[8..40].fill(b'#'),
        ),
        weights_case("tensor-missing", &["missing tensor", Q], |t| {
            t.remove(Q);
        }),
        weights_case(
            "tensor-extra",
            &["unexpected tensor", "extra.weight"],
            |t| {
                t.insert(
                    "extra.weight".into(),
                    (safetensors::Dtype::F32, vec![2], vec![0; 8]),
                );
            },
        ),
        weights_case(
            "tensor-shape",
            &["model.safetensors", K, "has shape"],
            with_tensor(K, |t| t.1 = vec![t.1[1], t.1[0]]),
        ),
        weights_case(
            "tensor-dtype",
            &["model.safetensors", Q, "unsupported dtype"],
            with_tensor(Q, |t| t.0 = safetensors::Dtype::I32),
        ),
        weights_case(
            "untied-no-head",
            &["missing tensor", "lm_head.weight"],
            |t| {
                t.remove("lm_head.weight");
            },
        ),
        case(
            "index-shard-missing",
            &["model-00009-of-00009.safetensors"],
            |dir| {
                let m = model_with_file(dir, "model.safetensors", None);
                std::fs::write(
                    m.join("model.safetensors.index.json"),
                    r#"{"weight_map": {"x": "model-00009-of-00009.safetensors"}}"#,
                )
                .unwrap();
                grads(dir, &m, &data(dir), &[])
            },
        ),
        file_case(
            "index-no-map",
            &["model.safetensors.index.json", "weight_map"],
            "model.safetensors.index.json",
            Some(b"{}"),
        ),
        file_case(
            "index-not-json",
            &["model.safetensors.index.json", "not valid JSON"],
            "model.safetensors.index.json",
            Some(b"{"),
        ),
        // tokenizer
        file_case(
            "tokenizer-missing",
            &["tokenizer.json"],
            "tokenizer.json",
            None,
        ),
        file_case(
            "tokenizer-not-json",
            &["tokenizer.json"],
            "tokenizer.json",
            Some(b"{\"model\": "),
        ),
        file_case(
            "tokenizer-empty-object",
            &["tokenizer.json"],
            "tokenizer.json",
            Some(b"{}"),
        ),
        // chat template (--instruct)
        case(
            "template-config-missing",
            &["tokenizer_config.json"],
            |dir| {
                let m = model_with_file(dir, "tokenizer_config.json", None);
                grads(dir, &m, &data(dir), &["--instruct"])
            },
        ),
        case(
            "template-absent",
            &["tokenizer_config.json", "chat_template"],
            |dir| {
                let m = model_with_template(dir, |t| {
                    t.remove("chat_template");
                });
                grads(dir, &m, &data(dir), &["--instruct"])
            },
        ),
        case(
            "template-syntax",
            &["tokenizer_config.json", "template"],
            |dir| {
                let m = model_with_template(dir, |t| {
                    t.insert("chat_template".into(), json!("{% for m in messages %}"));
                });
                grads(dir, &m, &data(dir), &["--instruct"])
            },
        ),
        case("template-raises", &["template", "no chats"], |dir| {
            let m = model_with_template(dir, |t| {
                t.insert(
                    "chat_template".into(),
                    json!("{{ raise_exception('no chats') }}"),
                );
            });
            grads(dir, &m, &data(dir), &["--instruct"])
        }),
        case(
            "template-number",
            &["tokenizer_config.json", "chat_template"],
            |dir| {
                let m = model_with_template(dir, |t| {
                    t.insert("chat_template".into(), json!(5));
                });
                grads(dir, &m, &data(dir), &["--instruct"])
            },
        ),
        // refused once the output would be claimed: nothing may be left behind (checked for
        // every case), here with the output in folders the run would have to create
        case(
            "template-raises-new-folders",
            &["template", "no chats"],
            |dir| {
                let m = model_with_template(dir, |t| {
                    t.insert(
                        "chat_template".into(),
                        json!("{{ raise_exception('no chats') }}"),
                    );
                });
                let mut a = grads(dir, &m, &data(dir), &["--instruct"]);
                a[7] = s(&dir.join("new/deeper/out.jsonl"));
                a
            },
        ),
        case(
            "tokenizer-not-the-checkpoints",
            &["tokenizer.json", "vocabulary", "do not belong together"],
            |dir| {
                let m = model(dir);
                std::fs::copy(
                    fixture("llama2-tiny").join("tokenizer.json"),
                    m.join("tokenizer.json"),
                )
                .unwrap();
                let d = data_text(
                    dir,
                    "[{\"instruction\": \"Zebras quietly juggle xylophones\", \"input\": \"\", \"output\": \"Quixotic vexing jumbles\"}]"
                        .as_bytes(),
                );
                grads(dir, &m, &d, &[])
            },
        ),
        option_case("limit-zero", &["--limit", "0"], &["--limit", "0"]),
        case(
            "compare-empty",
            &["a.jsonl", "b.jsonl", "nothing to compare"],
            |dir| {
                std::fs::write(dir.join("a.jsonl"), "").unwrap();
                std::fs::write(dir.join("b.jsonl"), "").unwrap();
                vec![
                    "compare".into(),
                    "--expected".into(),
                    s(&dir.join("a.jsonl")),
                    "--actual".into(),
                    s(&dir.join("b.jsonl")),
                ]
            },
        ),
        // LoRA options and adapters (refused before the run directory is made)
        case("lora-with-train", &["--train", "--lora"], |dir| {
            train(dir, &["--lora", "4", "--train", "all"])
        }),
        case(
            "lora-dropout",
            &["--lora-dropout", "not implemented"],
            |dir| train(dir, &["--lora", "4", "--lora-dropout", "0.1"]),
        ),
        case(
            "lora-targets-none",
            &["--lora-targets", "matches no linear layer", "q_proj"],
            |dir| train(dir, &["--lora", "4", "--lora-targets", "qkv"]),
        ),
        case(
            "lora-init-dora",
            &["adapter_config.json", "use_dora"],
            |dir| {
                let a = adapter(dir, |c| {
                    c.insert("use_dora".into(), json!(true));
                });
                train(dir, &["--lora-init", &s(&a)])
            },
        ),
        case(
            "lora-init-bias",
            &["adapter_config.json", "bias", "none"],
            |dir| {
                let a = adapter(dir, |c| {
                    c.insert("bias".into(), json!("all"));
                });
                train(dir, &["--lora-init", &s(&a)])
            },
        ),
        case(
            "lora-init-layers",
            &["adapter_config.json", "layers_to_transform"],
            |dir| {
                let a = adapter(dir, |c| {
                    c.insert("layers_to_transform".into(), json!([0]));
                });
                train(dir, &["--lora-init", &s(&a)])
            },
        ),
        case(
            "lora-init-disagrees",
            &["--lora 8", "r = 4", "adapter_config.json"],
            |dir| {
                let a = adapter(dir, |_| {});
                train(dir, &["--lora", "8", "--lora-init", &s(&a)])
            },
        ),
        case(
            "lora-init-regex",
            &[
                "adapter_config.json",
                "target_modules",
                "regular expression",
            ],
            |dir| {
                let a = adapter(dir, |c| {
                    c.insert("target_modules".into(), json!(".*proj"));
                });
                train(dir, &["--lora-init", &s(&a)])
            },
        ),
        case(
            "adapter-missing",
            &["nowhere", "adapter_config.json"],
            |dir| {
                let mut a = grads(dir, &fixture("qwen2-tiny"), &data(dir), &[]);
                a.extend(["--adapter".into(), s(&dir.join("nowhere"))]);
                a
            },
        ),
        case(
            "adapter-wrong-model",
            &["adapter_model.safetensors", "do not fit"],
            |dir| {
                // Qwen2's adapter on the Mistral fixture (head_dim 24: other shapes).
                let mut a = grads(dir, &fixture("mistral-tiny"), &data(dir), &[]);
                a.extend(["--adapter".into(), s(&adapter(dir, |_| {}))]);
                a
            },
        ),
        // data
        case("data-missing", &["absent.json", "cannot read"], |dir| {
            grads(dir, &fixture("qwen2-tiny"), &dir.join("absent.json"), &[])
        }),
        case("data-directory", &["cannot read"], |dir| {
            grads(dir, &fixture("qwen2-tiny"), dir, &[])
        }),
        data_case(
            "data-not-json",
            &["data.json", "not valid JSON"],
            "[{\"instruction\": ",
        ),
        data_case(
            "data-object",
            &["data.json", "JSON array"],
            "{\"instruction\": \"x\"}",
        ),
        data_case(
            "data-record-number",
            &["data.json", "record 1"],
            "[{\"instruction\": \"x\", \"output\": \"y\"}, 3]",
        ),
        data_case(
            "data-output-number",
            &["data.json", "\"output\"", "string"],
            "[{\"instruction\": \"x\", \"output\": 5}]",
        ),
        data_case(
            "data-no-output",
            &["data.json", "missing field \"output\""],
            "[{\"instruction\": \"x\"}]",
        ),
        data_case(
            "data-no-instruction",
            &["data.json", "missing field \"instruction\""],
            "[{\"output\": \"x\"}]",
        ),
        data_case(
            "data-input-array",
            &["data.json", "\"input\""],
            "[{\"instruction\": \"x\", \"input\": [], \"output\": \"y\"}]",
        ),
        data_case("data-empty", &["data.json", "no records"], "[]"),
        case("data-not-utf8", &["data.json"], |dir| {
            grads(
                dir,
                &fixture("qwen2-tiny"),
                &data_text(dir, b"[\"\xff\xfe\"]"),
                &[],
            )
        }),
        // options
        option_case(
            "start-past-end",
            &["--start 99", "data.json"],
            &["--start", "99"],
        ),
        option_case("pad-to-zero", &["--pad-to 0"], &["--pad-to", "0"]),
        option_case(
            "pad-to-huge",
            &["--pad-to 1000000000"],
            &["--pad-to", "1000000000"],
        ),
        option_case(
            "max-length-zero",
            &["--max-length 0"],
            &["--max-length", "0"],
        ),
        option_case("dtype", &["f16"], &["--dtype", "f16"]),
        option_case("backend", &["tpu"], &["--backend", "tpu"]),
        option_case("spectra", &["fast"], &["--spectra", "fast"]),
        option_case(
            "max-memory",
            &["--max-memory", "lots"],
            &["--max-memory", "lots"],
        ),
        option_case("single-bos-alone", &["--instruct"], &["--single-bos"]),
        option_case("limit-negative", &["--limit"], &["--limit=-1"]),
        case("compare-rtol", &["--rtol", "-1"], |_| {
            let e = s(&fixture("qwen2-tiny").join("expected/grads.jsonl"));
            vec![
                "compare".into(),
                "--expected".into(),
                e.clone(),
                "--actual".into(),
                e,
                "--rtol=-1".into(),
            ]
        }),
        case("compare-missing", &["nothing.jsonl"], |dir| {
            let e = s(&fixture("qwen2-tiny").join("expected/grads.jsonl"));
            vec![
                "compare".into(),
                "--expected".into(),
                e,
                "--actual".into(),
                s(&dir.join("nothing.jsonl")),
            ]
        }),
        case(
            "compare-duplicate",
            &["twice.jsonl", "line 2", "sample 0", "second time"],
            |dir| {
                let line =
                    std::fs::read_to_string(fixture("qwen2-tiny").join("expected/grads.jsonl"))
                        .unwrap()
                        .lines()
                        .next()
                        .unwrap()
                        .to_string();
                let f = dir.join("twice.jsonl");
                std::fs::write(&f, format!("{line}\n{line}\n")).unwrap();
                let e = s(&fixture("qwen2-tiny").join("expected/grads.jsonl"));
                vec![
                    "compare".into(),
                    "--expected".into(),
                    e,
                    "--actual".into(),
                    s(&f),
                ]
            },
        ),
        case(
            "report-nothing-usable",
            &["no usable measurement", "junk.jsonl"],
            |dir| {
                std::fs::write(dir.join("junk.jsonl"), "not json\n{\n").unwrap();
                vec![
                    "report".into(),
                    "--in".into(),
                    s(dir),
                    "--out".into(),
                    s(&dir.join("r")),
                ]
            },
        ),
        case("init-hidden-zero", &["config.json", "hidden_size"], |dir| {
            let m = model_with_config(dir, |c| {
                c.insert("hidden_size".into(), json!(0));
            });
            vec![
                "init".into(),
                "--config".into(),
                s(&m.join("config.json")),
                "--out".into(),
                s(&dir.join("new")),
            ]
        }),
        case(
            "init-layers-absurd",
            &["config.json", "num_hidden_layers"],
            |dir| {
                let m = model_with_config(dir, |c| {
                    c.insert("num_hidden_layers".into(), json!(1u64 << 40));
                });
                vec![
                    "init".into(),
                    "--config".into(),
                    s(&m.join("config.json")),
                    "--out".into(),
                    s(&dir.join("new")),
                ]
            },
        ),
        // outputs that are not gradlens'
        case(
            "out-is-data",
            &["data.json", "the run's data file", "refusing"],
            |dir| {
                let d = data(dir);
                let mut a = grads(dir, &fixture("qwen2-tiny"), &d, &[]);
                a[7] = s(&d);
                a
            },
        ),
        case(
            "out-foreign-no-newline",
            &["notes.txt", "not written by gradlens"],
            |dir| {
                std::fs::write(dir.join("notes.txt"), "my notes, no final newline").unwrap();
                let mut a = grads(dir, &fixture("qwen2-tiny"), &data(dir), &[]);
                a[7] = s(&dir.join("notes.txt"));
                a
            },
        ),
        case(
            "out-foreign-jsonl",
            &["out.jsonl", "not written by gradlens"],
            |dir| {
                std::fs::write(dir.join("out.jsonl"), "{\"index\": 0}\n{\"index\": 1").unwrap();
                grads(dir, &fixture("qwen2-tiny"), &data(dir), &[])
            },
        ),
        case(
            "out-foreign-skipped",
            &["out.skipped.jsonl", "not written by gradlens"],
            |dir| {
                std::fs::write(
                    dir.join("out.skipped.jsonl"),
                    "{\"index\": 3, \"reason\": \"x\"}",
                )
                .unwrap();
                grads(dir, &fixture("qwen2-tiny"), &data(dir), &[])
            },
        ),
        case(
            "out-paper-like-data",
            &["copy.json", "not written by gradlens"],
            |dir| {
                let d = data(dir);
                std::fs::copy(&d, dir.join("copy.json")).unwrap();
                let mut a = grads(dir, &fixture("qwen2-tiny"), &d, &[]);
                a[7] = s(&dir.join("copy.json"));
                a
            },
        ),
        case("out-directory", &["is a directory"], |dir| {
            let mut a = grads(dir, &fixture("qwen2-tiny"), &data(dir), &[]);
            a[7] = s(dir);
            a
        }),
        case(
            "out-in-checkpoint",
            &["grads.jsonl", "checkpoint folder", "refusing"],
            |dir| {
                let m = model(dir);
                let mut a = grads(dir, &m, &data(dir), &[]);
                a[7] = s(&m.join("grads.jsonl"));
                a
            },
        ),
        case(
            "out-meta-corrupt",
            &["out.meta.json", "provenance"],
            |dir| {
                std::fs::write(dir.join("out.meta.json"), "{\"format\": 3").unwrap();
                grads(dir, &fixture("qwen2-tiny"), &data(dir), &[])
            },
        ),
    ]
}

fn check_failure(name: &str, r: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&r.stderr);
    let code = r.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "{name}: exit {:?} (expected 1, or 2 for an argument error); stderr:\n{stderr}",
        r.status
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{name}: panic:\n{stderr}"
    );
    // The error line (with the lines that the argument parser adds to it).
    let at = stderr
        .find("error: ")
        .unwrap_or_else(|| panic!("{name}: no error line in:\n{stderr}"));
    let line = &stderr[at..];
    assert_eq!(
        stderr.matches("\nerror: ").count() + usize::from(stderr.starts_with("error: ")),
        1,
        "{name}: more than one error line:\n{stderr}"
    );
    for n in needles {
        assert!(
            line.contains(n),
            "{name}: error {line:?} does not mention {n:?}"
        );
    }
    assert!(
        !stderr.contains('\x1b'),
        "{name}: colour codes though stderr is not a terminal:\n{stderr}"
    );
}

#[test]
fn every_bad_input_gets_one_clear_error_and_changes_no_file() {
    let cases = corpus();
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    let fixtures_before = snapshot(&fixture("qwen2-tiny"));
    let data_before = std::fs::read(tiny_data()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "case {} twice", c.name);
        let dir = scratch(&format!("corpus/{}", c.name));
        let args = (c.setup)(&dir);
        let before = snapshot(&dir);
        let r = gradlens().args(&args).output().unwrap();
        check_failure(c.name, &r, c.needles);
        let stderr = String::from_utf8_lossy(&r.stderr);
        eprintln!(
            "{:<24} {}",
            c.name,
            stderr
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or("")
        );
        let after = snapshot(&dir);
        for (p, b) in &before {
            assert!(
                after.get(p) == Some(b),
                "{}: {} was changed or removed",
                c.name,
                p.display()
            );
        }
        // A refused run leaves nothing behind: no file, no folder.
        let left: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
        assert!(left.is_empty(), "{}: the refused run left {left:?}", c.name);
        assert!(
            !dir.join("new").exists(),
            "{}: the refused run left a folder",
            c.name
        );
    }
    eprintln!("{} bad inputs, each a clear error", cases.len());
    assert_eq!(snapshot(&fixture("qwen2-tiny")), fixtures_before);
    assert_eq!(std::fs::read(tiny_data()).unwrap(), data_before);
}
