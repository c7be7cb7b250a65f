//! `gradlens init`: random checkpoints from a config.json, for every family, through the family's
//! own loader; and the backend choice's errors.

use gradlens::backend::{CpuF32, Device, Dtype, check};
use gradlens::commands::init::{InitOptions, StoreDtype, init_checkpoint};
use gradlens::load::data::load_records;
use gradlens::measure::Measurer;
use gradlens::prepare::PromptMode;
use gradlens_tests::{fixture, fixture_names, repo_root, scratch, tiny_data};
use std::collections::BTreeMap;
use std::path::Path;

/// name → shape of every tensor stored in a checkpoint directory (single file or shards).
fn stored(dir: &Path) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            for (name, info) in meta.tensors() {
                out.insert(name, info.shape.clone());
            }
        }
    }
    out
}

/// The tensor list `describe` derives from a fixture's config is exactly what transformers saved
/// (names and shapes); the random checkpoint loads and measures a sample.
#[test]
fn init_matches_every_fixture_layout_and_loads() {
    for name in &fixture_names() {
        let src = fixture(name);
        let (model_type, described) = gradlens_models::describe(&src.join("config.json")).unwrap();
        let want = stored(&src);
        let got: BTreeMap<String, Vec<usize>> = described
            .iter()
            .map(|d| (d.name.clone(), d.shape.clone()))
            .collect();
        assert_eq!(got, want, "{name} ({model_type}): tensor list");

        let out = scratch(&format!("init-{name}"));
        let s = init_checkpoint(&InitOptions {
            config: src.join("config.json"),
            out: out.clone(),
            seed: 7,
            dtype: if name.contains("bf16") {
                StoreDtype::Bf16
            } else {
                StoreDtype::F32
            },
            tokenizer: Some(src.clone()),
            force: true,
        })
        .unwrap();
        assert_eq!(s.tensors, want.len());
        assert_eq!(stored(&out), want, "{name}: written layout");
        let m = Measurer::<CpuF32>::load(&out, 96, PromptMode::Base, &Default::default()).unwrap();
        let records = load_records(&tiny_data()).unwrap();
        let line = m
            .measure(0, &records[0])
            .unwrap()
            .expect("sample 0 measured");
        let loss = line.loss.unwrap();
        // Small random weights: the loss is near ln(vocab) (above it by about the logits'
        // variance / 2).
        let vocab = m.model.model.vocab_size() as f64;
        assert!(
            loss > vocab.ln() - 0.1 && loss < vocab.ln() + 1.5,
            "{name}: loss {loss} vs ln(vocab) {}",
            vocab.ln()
        );
        // The weights' spread is the config's initializer_range.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        let want_std = config["initializer_range"].as_f64().unwrap_or(0.02);
        let mut ckpt = gradlens::Checkpoint::open(&out).unwrap();
        let w = ckpt
            .take(
                "model.layers.0.self_attn.q_proj.weight",
                &want["model.layers.0.self_attn.q_proj.weight"],
            )
            .unwrap()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap();
        let sd = (w.iter().map(|x| x * x).sum::<f64>() / w.len() as f64).sqrt();
        assert!(
            (sd / want_std - 1.0).abs() < 0.15,
            "{name}: weight std {sd}, initializer_range {want_std}"
        );
    }
}

/// Norm scales start at their identity: 1 for w·x, 0 for Gemma's (1+w)·x; biases at 0.
#[test]
fn init_norms_start_at_identity() {
    for (name, identity) in [("qwen2-tiny", 1.0), ("gemma2-tiny", 0.0)] {
        let (_, described) = gradlens_models::describe(&fixture(name).join("config.json")).unwrap();
        let norms: Vec<_> = described
            .iter()
            .filter(|d| d.name.ends_with("norm.weight"))
            .collect();
        assert!(!norms.is_empty());
        for d in norms {
            assert_eq!(d.identity, Some(identity), "{name} {}", d.name);
        }
        assert!(
            described
                .iter()
                .filter(|d| d.name.ends_with(".bias"))
                .all(|d| d.identity.is_none())
        );
    }
}

/// The committed public shapes describe the models of their names.
#[test]
fn shape_configs_have_the_public_parameter_counts() {
    for (file, params) in [
        ("qwen2-0.5b.json", 494_032_768u64),
        ("qwen2-1.5b.json", 1_543_714_304),
        ("gemma-2-2b.json", 2_614_341_888),
        ("llama-3.1-8b.json", 8_030_261_248),
        // transformers' own models of these configs count the same (scripts: meta-device init).
        ("qwen3-1.7b.json", 1_720_574_976),
        ("qwen3-8b.json", 8_190_735_360),
        ("olmo-2-1b.json", 1_484_916_736),
        ("gemma-3-1b.json", 999_885_952),
    ] {
        let (_, d) =
            gradlens_models::describe(&repo_root().join("configs/shapes").join(file)).unwrap();
        let n: u64 = d
            .iter()
            .map(|t| t.shape.iter().map(|&x| x as u64).product::<u64>())
            .sum();
        assert_eq!(n, params, "{file}");
    }
}

#[test]
fn init_refuses_to_overwrite_and_names_bad_configs() {
    let out = scratch("init-errors");
    let opts = InitOptions {
        config: fixture("qwen2-tiny"),
        out: out.clone(),
        seed: 0,
        dtype: StoreDtype::F32,
        tokenizer: None,
        force: false,
    };
    init_checkpoint(&opts).unwrap();
    let e = init_checkpoint(&opts).unwrap_err().to_string();
    assert!(e.contains("exists") && e.contains("--force"), "{e}");

    let bad = out.join("bad.json");
    std::fs::write(&bad, r#"{"model_type": "qwen2", "hidden_size": 64}"#).unwrap();
    let e = format!(
        "{:#}",
        init_checkpoint(&InitOptions {
            config: bad.clone(),
            force: true,
            ..opts.clone()
        })
        .unwrap_err()
    );
    assert!(e.contains("bad.json"), "{e}");
    std::fs::write(&bad, r#"{"model_type": "gpt2"}"#).unwrap();
    let e = format!(
        "{:#}",
        init_checkpoint(&InitOptions {
            config: bad,
            force: true,
            ..opts
        })
        .unwrap_err()
    );
    assert!(e.contains("gpt2") && e.contains("qwen2"), "{e}");
}

/// Backends: parsing, and the errors of a build or machine without CUDA.
#[test]
fn backend_choice_and_its_errors() {
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
    assert!("tpu".parse::<Device>().is_err());
    check(Device::Cpu, Dtype::F64).unwrap();
    let e = check(Device::Cuda(0), Dtype::F64).unwrap_err().to_string();
    if gradlens::backend::CUDA_BUILT {
        assert!(e.contains("f64") || e.contains("cuda"), "{e}");
    } else {
        assert!(e.contains("--features cuda"), "{e}");
    }
}
