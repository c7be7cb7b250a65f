//! Parity with the transformers reference (float64) on the committed fixtures.
//!
//! Every test is written once, generic over the backend, and instantiated per fixture and dtype:
//! `f64` must agree at relative 1e-9, `f32` at 1e-4 (rule in `gradlens::report::compare`).

use gradlens::backend::GradBackend;
use gradlens::backend::{CpuF32, CpuF64, FlexF32};
use gradlens::load::data::load_records;
use gradlens::measure::Measurer;
use gradlens::prepare::PromptMode;
use gradlens::report::compare::{compare_files, read_jsonl_by_index};
use gradlens::sink::output::skipped_path;
use gradlens_models::paper_selector;
use gradlens_tests::{fixture, fixture_names, paper_data, scratch, tiny_data};
use serde_json::Value;

const F64_RTOL: f64 = 1e-9;
const F32_RTOL: f64 = 1e-4;

fn expected_logits(name: &str) -> Value {
    let path = fixture(name).join("expected/logits.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Logits at a few positions of the first sample equal the reference's.
pub fn check_logits<B: GradBackend>(name: &str, rtol: f64) {
    let loaded =
        gradlens_models::load::<B>(&fixture(name), &Default::default(), &paper_selector).unwrap();
    gradlens_tests::assert_logits(name, &loaded, &expected_logits(name), rtol);
}

/// The whole measurement (loss, n_tokens, every statistic of every measured parameter, the
/// skipped samples) equals the reference's.
pub fn check_jsonl<B: GradBackend>(name: &str, rtol: f64, instruct: bool) {
    let max_length = expected_logits(name)["max_length"].as_u64().unwrap() as usize;
    let suffix = if instruct { "_instruct" } else { "" };
    let mode = if instruct {
        PromptMode::instruct_from_dir(&fixture(name), Default::default()).unwrap()
    } else {
        PromptMode::Base
    };
    let measurer =
        Measurer::<B>::load(&fixture(name), max_length, mode, &Default::default()).unwrap();
    let records = load_records(&tiny_data()).unwrap();
    let dtype = std::any::type_name::<B::FloatElem>();
    let out = scratch(&format!("parity-{name}-{dtype}{suffix}")).join("grads.jsonl");
    let summary = measurer
        .measure_file(&records, &tiny_data(), 0..records.len(), &out, None, None)
        .unwrap();

    let expected = fixture(name).join(format!("expected/grads{suffix}.jsonl"));
    let errs = compare_files(&expected, &out, rtol).unwrap();
    assert!(
        errs.is_empty(),
        "{name} ({dtype}{suffix}): {} difference(s):\n{}",
        errs.len(),
        errs.join("\n")
    );

    // The fixture covers truncation and skipping, and gradlens skips the same samples.
    let lines = read_jsonl_by_index(&expected).unwrap();
    assert!(
        lines
            .values()
            .any(|l| l["n_tokens"].as_u64() == Some(max_length as u64)),
        "no truncated sample"
    );
    let want_skipped =
        read_jsonl_by_index(&fixture(name).join(format!("expected/skipped{suffix}.jsonl")))
            .unwrap();
    let got_skipped = read_jsonl_by_index(&skipped_path(&out)).unwrap();
    assert_eq!(
        want_skipped.keys().collect::<Vec<_>>(),
        got_skipped.keys().collect::<Vec<_>>()
    );
    for (i, w) in &want_skipped {
        let (w, g) = (
            w["reason"].as_str().unwrap(),
            got_skipped[i]["reason"].as_str().unwrap(),
        );
        assert!(g.starts_with(w), "sample {i}: reason {g:?}, expected {w:?}");
    }
    assert!(
        !want_skipped.is_empty(),
        "the fixture has no skipped sample"
    );
    assert_eq!(summary.measured, lines.len());
}

/// The factored spectra (thin QRs of the factors, SVD of the small core) agree with the dense SVD
/// to 1e-10 relative in f64 on every sample, and so do the gram spectra (CholeskyQR) on every
/// sample they take; and the whole JSONL computed with factored spectra equals the transformers
/// reference.
pub fn check_factored(name: &str) {
    use gradlens::measure::backward::HostGrads;
    use gradlens::spectra::stats::{
        Spectra, SpectrumSource, factored_singular_values, singular_values,
    };
    let max_length = expected_logits(name)["max_length"].as_u64().unwrap() as usize;
    let mut measurer = Measurer::<CpuF64>::load(
        &fixture(name),
        max_length,
        PromptMode::Base,
        &Default::default(),
    )
    .unwrap();
    let records = load_records(&tiny_data()).unwrap();
    let mut checked = 0;
    let mut gram_checked = 0;
    let mut gram_worst: f64 = 0.0;
    for (i, r) in records.iter().enumerate() {
        let mut run = |spectra| {
            measurer.spectra = spectra;
            match measurer.forward_backward(i, r).unwrap() {
                gradlens::measure::Work::Measured {
                    grads: HostGrads::F64(g),
                    ..
                } => Some(g),
                gradlens::measure::Work::Measured { .. } => panic!("f64 model, f32 gradients"),
                gradlens::measure::Work::Skipped { .. } => None,
            }
        };
        let (Some(dense), Some(factored)) = (run(Spectra::Dense), run(Spectra::Factored)) else {
            continue;
        };
        for (gd, gf) in dense.iter().zip(&factored) {
            let pname = &gd.name;
            assert_eq!(pname, &gf.name);
            let (SpectrumSource::Dense(g), SpectrumSource::Factored(f)) = (&gd.source, &gf.source)
            else {
                panic!("{name} {i} {pname}: dense and factored sources expected");
            };
            // The entry statistics do not depend on the path.
            assert_eq!(gd.entries, gf.entries, "{name} {i} {pname}: entries");
            let (d, fa) = (
                singular_values(g).unwrap(),
                factored_singular_values(f).unwrap(),
            );
            let (sd, sf): (f64, f64) = (d.iter().sum(), fa.iter().sum());
            let fro = |s: &[f64]| s.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(
                (sd - sf).abs() <= 1e-10 * sd,
                "{name} {i} {pname}: S_sum {sd} vs {sf}"
            );
            assert!(
                (d[0] - fa[0]).abs() <= 1e-10 * d[0],
                "{name} {i} {pname}: S_max {} vs {}",
                d[0],
                fa[0]
            );
            assert!(
                (fro(&d) - fro(&fa)).abs() <= 1e-10 * fro(&d),
                "{name} {i} {pname}: Frobenius"
            );
            checked += 1;
        }
        // `--spectra gram` (R factors by CholeskyQR, gradlens::measure::gram): every singular value within
        // 1e-10 of σ_max of the dense SVD's, wherever the sample is short enough for that path.
        let Some(gram) = run(Spectra::Gram) else {
            continue;
        };
        for (gd, gg) in dense.iter().zip(&gram) {
            let (pname, SpectrumSource::Dense(g)) = (&gd.name, &gd.source) else {
                unreachable!("dense source");
            };
            assert_eq!(gd.entries, gg.entries, "{name} {i} {pname}: entries (gram)");
            let SpectrumSource::Cores(c) = &gg.source else {
                continue;
            };
            let d = singular_values(g).unwrap();
            let s =
                gradlens::spectra::stats::core_singular_values(&c.r_delta, &c.r_x, g.rows, g.cols)
                    .unwrap();
            assert_eq!(d.len(), s.len());
            for (k, (a, b)) in d.iter().zip(&s).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-10 * d[0],
                    "{name} {i} {pname}: σ_{k} dense {a} vs gram {b}"
                );
                gram_worst = gram_worst.max((a - b).abs() / d[0]);
            }
            gram_checked += 1;
        }
    }
    assert!(checked > 0);
    assert!(
        gram_checked > 0,
        "{name}: no sample short enough for the gram path"
    );
    eprintln!(
        "{name}: gram spectra of {gram_checked} matrices, largest deviation {gram_worst:.1e} of σ_max"
    );
    measurer.spectra = Spectra::Factored;
    let out = scratch(&format!("factored-{name}")).join("grads.jsonl");
    measurer
        .measure_file(&records, &tiny_data(), 0..records.len(), &out, None, None)
        .unwrap();
    let errs = compare_files(&fixture(name).join("expected/grads.jsonl"), &out, F64_RTOL).unwrap();
    assert!(errs.is_empty(), "{name} (factored): {}", errs.join("\n"));
}

/// `fixtures/<name>/expected/grads_<tag>.jsonl` holds the reference (numbers only) of the first
/// samples of the paper's `file` at max_length 1024.
pub fn check_paper_samples<B: GradBackend>(name: &str, file: &str, tag: &str, rtol: f64) {
    let Some(root) = paper_data() else { return };
    let expected = fixture(name).join(format!("expected/grads_{tag}.jsonl"));
    let n = std::fs::read_to_string(&expected).unwrap().lines().count();
    let records = load_records(&root.join(file)).unwrap();
    let measurer =
        Measurer::<B>::load(&fixture(name), 1024, PromptMode::Base, &Default::default()).unwrap();
    let dtype = std::any::type_name::<B::FloatElem>();
    let out = scratch(&format!("paper-{name}-{tag}-{dtype}")).join("grads.jsonl");
    measurer
        .measure_file(&records, &root.join(file), 0..n, &out, None, None)
        .unwrap();
    let errs = compare_files(&expected, &out, rtol).unwrap();
    assert!(
        errs.is_empty(),
        "{name} {tag} ({dtype}): {}",
        errs.join("\n")
    );
}

const DETAILED: &str = "cot_500/aqua_train_with_cot_gpt4o.json";
const ANSWER_ONLY: &str = "cot_500/aqua_train_no_cot.json";

/// One entry per fixture: logits and JSONL, f64 and f32, on the tiny data and the paper's.
macro_rules! parity_tests {
    ($($module:ident: $fixture:literal),* $(,)?) => {$(
        mod $module {
            use super::*;
            #[test]
            fn logits_f64() { check_logits::<CpuF64>($fixture, F64_RTOL) }
            #[test]
            fn logits_f32() { check_logits::<CpuF32>($fixture, F32_RTOL) }
            #[test]
            fn jsonl_f64() { check_jsonl::<CpuF64>($fixture, F64_RTOL, false) }
            #[test]
            fn jsonl_f32() { check_jsonl::<CpuF32>($fixture, F32_RTOL, false) }
            #[test]
            fn factored_spectra_f64() { check_factored($fixture) }
            #[test]
            #[cfg_attr(not(paper_data), ignore = "needs the paper's data: GRADLENS_DATA=DIR, or ../shared/paper-data beside the checkout (then rebuild the tests)")]
            fn paper_detailed_cot_f64() { check_paper_samples::<CpuF64>($fixture, DETAILED, "aqua_detailed", F64_RTOL) }
            #[test]
            #[cfg_attr(not(paper_data), ignore = "needs the paper's data: GRADLENS_DATA=DIR, or ../shared/paper-data beside the checkout (then rebuild the tests)")]
            fn paper_detailed_cot_f32() { check_paper_samples::<CpuF32>($fixture, DETAILED, "aqua_detailed", F32_RTOL) }
            #[test]
            #[cfg_attr(not(paper_data), ignore = "needs the paper's data: GRADLENS_DATA=DIR, or ../shared/paper-data beside the checkout (then rebuild the tests)")]
            fn paper_answer_only_f64() { check_paper_samples::<CpuF64>($fixture, ANSWER_ONLY, "aqua_none", F64_RTOL) }
            // The same model code on Burn's Flex backend (f32 only).
            #[test]
            fn logits_flex_f32() { check_logits::<FlexF32>($fixture, F32_RTOL) }
            #[test]
            fn jsonl_flex_f32() { check_jsonl::<FlexF32>($fixture, F32_RTOL, false) }
            // And on LibTorch (`cargo test --features tch`, with libtorch 2.9.0 at hand).
            #[cfg(feature = "tch")]
            #[test]
            fn logits_libtorch_f64() { check_logits::<gradlens::backend::TorchF64>($fixture, F64_RTOL) }
            #[cfg(feature = "tch")]
            #[test]
            fn jsonl_libtorch_f64() { check_jsonl::<gradlens::backend::TorchF64>($fixture, F64_RTOL, false) }
            #[cfg(feature = "tch")]
            #[test]
            fn jsonl_libtorch_f32() { check_jsonl::<gradlens::backend::TorchF32>($fixture, F32_RTOL, false) }
        }
    )*};
}

parity_tests! {
    qwen2_tiny: "qwen2-tiny",
    qwen2_tiny_bf16_sharded: "qwen2-tiny-bf16-sharded",
    llama2_tiny: "llama2-tiny",
    llama31_tiny: "llama31-tiny",
    mistral_tiny: "mistral-tiny",
    gemma_tiny: "gemma-tiny",
    gemma2_tiny: "gemma2-tiny",
    qwen3_tiny: "qwen3-tiny",
    olmo2_tiny: "olmo2-tiny",
    gemma3_tiny: "gemma3-tiny",
}

/// Instruct-mode tests of the fixtures with a chat template: `<module>: "<fixture>"`.
macro_rules! instruct_tests {
    ($($module:ident: $fixture:literal),* $(,)?) => {$(
        mod $module {
            use super::super::*;
            #[test]
            fn f64() { check_jsonl::<CpuF64>($fixture, F64_RTOL, true) }
            #[test]
            fn f32() { check_jsonl::<CpuF32>($fixture, F32_RTOL, true) }
        }
    )*};
}

/// Instruct mode (chat template) against transformers' `apply_chat_template`: Qwen2, Qwen3, OLMo 2
/// and Gemma 3 render a system turn, Gemma none (its template raises on one, so it is left out)
/// and starts with the BOS text.
mod instruct {
    use super::*;

    instruct_tests! {
        qwen2: "qwen2-tiny",
        gemma: "gemma-tiny",
        qwen3: "qwen3-tiny",
        gemma3: "gemma3-tiny",
        olmo2: "olmo2-tiny",
    }

    fn ids_of(name: &str, opts: gradlens::prepare::InstructOptions) -> Vec<u32> {
        let mode = PromptMode::instruct_from_dir(&fixture(name), opts).unwrap();
        let tok =
            gradlens::prepare::tokenizer::TextTokenizer::from_dir(&fixture(name), 1024).unwrap();
        let records = load_records(&tiny_data()).unwrap();
        match gradlens::prepare::prepare(&tok, &mode, &records[0]).unwrap() {
            gradlens::prepare::Preparation::Ready(p) => p.ids,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gemma_double_bos_by_default_single_bos_on_request() {
        let bos = 2; // <bos> in the tiny Gemma tokenizer
        let paper = ids_of("gemma-tiny", Default::default());
        assert_eq!(
            &paper[..2],
            &[bos, bos],
            "the paper's way: template BOS + tokenizer BOS"
        );
        let single = ids_of(
            "gemma-tiny",
            gradlens::prepare::InstructOptions {
                add_special_tokens: false,
            },
        );
        assert_eq!(single[0], bos);
        assert_ne!(single[1], bos);
        assert_eq!(&paper[1..], &single[..]);
    }

    /// The template decides the system turn: today's choice on every fixture (Gemma and Gemma 2
    /// reject it, the others take it), and a fine-tuned Qwen2 whose template rejects a system role
    /// renders without one instead of failing.
    #[test]
    fn the_chat_template_decides_the_system_turn() {
        for name in [
            "qwen2-tiny",
            "qwen3-tiny",
            "llama2-tiny",
            "llama31-tiny",
            "mistral-tiny",
            "olmo2-tiny",
            "gemma-tiny",
            "gemma2-tiny",
            "gemma3-tiny",
        ] {
            let mode = PromptMode::instruct_from_dir(&fixture(name), Default::default()).unwrap();
            assert_eq!(
                mode.system_turn(),
                Some(!matches!(name, "gemma-tiny" | "gemma2-tiny")),
                "{name}"
            );
        }
        let dir = scratch("template-rejects-system");
        gradlens_tests::copy_dir(&fixture("qwen2-tiny"), &dir);
        let cfg = dir.join("tokenizer_config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v["chat_template"] = serde_json::json!(
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        );
        std::fs::write(&cfg, v.to_string()).unwrap();
        let mode = PromptMode::instruct_from_dir(&dir, Default::default()).unwrap();
        assert_eq!(mode.system_turn(), Some(false));
        let records = load_records(&tiny_data()).unwrap();
        let text = mode.text(&records[0]).unwrap();
        assert!(
            text.starts_with("<|im_start|>user\n") && !text.contains("system"),
            "{text}"
        );
        // A template that raises whatever the turns is still one clear error.
        v["chat_template"] = serde_json::json!("{{ raise_exception('broken') }}");
        std::fs::write(&cfg, v.to_string()).unwrap();
        let err = PromptMode::instruct_from_dir(&dir, Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("broken"),
            "{err}"
        );
    }

    #[test]
    fn checkpoint_without_chat_template_is_a_clear_error() {
        let dir = scratch("no-chat-template");
        gradlens_tests::copy_dir(&fixture("qwen2-tiny"), &dir);
        let cfg = dir.join("tokenizer_config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("chat_template");
        std::fs::write(&cfg, v.to_string()).unwrap();
        let err = PromptMode::instruct_from_dir(&dir, Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("no chat template"),
            "{err}"
        );
    }
}

/// Padding the sequence (as CUDA runs do by default, to a multiple of 64 tokens) leaves the loss
/// and every statistic as the unpadded reference has them: f64, 1e-9, every fixture, both paths.
#[test]
fn padded_sequences_give_the_reference_numbers() {
    use gradlens::spectra::stats::Spectra;
    let records = load_records(&tiny_data()).unwrap();
    for name in &fixture_names() {
        let max_length = expected_logits(name)["max_length"].as_u64().unwrap() as usize;
        let mut m = Measurer::<CpuF64>::load(
            &fixture(name),
            max_length,
            PromptMode::Base,
            &Default::default(),
        )
        .unwrap();
        // 64 (the CUDA default) and an odd multiple, so that padded loss rows start both at the
        // first response position and before it.
        for (pad_to, spectra) in [
            (64, Spectra::Dense),
            (64, Spectra::Factored),
            (7, Spectra::Dense),
        ] {
            m.pad_to = pad_to;
            m.spectra = spectra;
            let out = scratch(&format!("padded-{name}-{pad_to}-{spectra:?}")).join("grads.jsonl");
            m.measure_file(&records, &tiny_data(), 0..records.len(), &out, None, None)
                .unwrap();
            let errs =
                compare_files(&fixture(name).join("expected/grads.jsonl"), &out, F64_RTOL).unwrap();
            assert!(
                errs.is_empty(),
                "{name} padded to {pad_to} ({spectra:?}): {}",
                errs.join("\n")
            );
        }
    }
}

/// A multimodal Gemma 3 checkpoint (`model_type: "gemma3"`, the text model's config under
/// `text_config`, its tensors under `language_model.`, a vision tower beside them) measures its
/// text model exactly as the text-only checkpoint, under the checkpoint's own tensor names.
#[test]
fn multimodal_gemma3_measures_its_text_model() {
    let dir = scratch("gemma3-multimodal").join("model");
    gradlens_tests::copy_dir(&fixture("gemma3-tiny"), &dir);
    let text: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let wrapped = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text,
        "vision_config": {"hidden_size": 8, "model_type": "siglip_vision_model"},
    });
    std::fs::write(dir.join("config.json"), wrapped.to_string()).unwrap();
    gradlens_tests::rewrite_weights(&dir, |t| {
        let names: Vec<String> = t.keys().cloned().collect();
        for n in names {
            let v = t.remove(&n).unwrap();
            t.insert(format!("language_model.{n}"), v);
        }
        for extra in [
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
            "multi_modal_projector.mm_input_projection_weight",
        ] {
            t.insert(
                extra.into(),
                (safetensors::Dtype::F32, vec![2, 2], vec![0; 16]),
            );
        }
    });
    let max_length = expected_logits("gemma3-tiny")["max_length"]
        .as_u64()
        .unwrap() as usize;
    let m =
        Measurer::<CpuF64>::load(&dir, max_length, PromptMode::Base, &Default::default()).unwrap();
    assert!(
        m.model
            .selected
            .iter()
            .all(|s| s.name.starts_with("language_model.model.layers.")),
        "outputs keep the checkpoint's own names"
    );
    let records = load_records(&tiny_data()).unwrap();
    let out = dir.parent().unwrap().join("grads.jsonl");
    m.measure_file(&records, &tiny_data(), 0..records.len(), &out, None, None)
        .unwrap();
    // The same numbers as the text-only fixture's reference, under the names it would have.
    let renamed = dir.parent().unwrap().join("renamed.jsonl");
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::write(
        &renamed,
        text.replace("\"language_model.model.", "\"model."),
    )
    .unwrap();
    let expected = fixture("gemma3-tiny").join("expected/grads.jsonl");
    let errs = compare_files(&expected, &renamed, F64_RTOL).unwrap();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    assert_eq!(
        read_jsonl_by_index(&expected).unwrap().len(),
        read_jsonl_by_index(&renamed).unwrap().len()
    );
}
