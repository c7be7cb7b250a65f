//! The paper's own data (../shared/paper-data, or $GRADLENS_DATA): every file parses, and the
//! measurement on its first samples equals the transformers reference committed as numbers only.

use burn::tensor::backend::AutodiffBackend;
use gradlens::backend::{CpuF32, CpuF64};
use gradlens::compare::compare_files;
use gradlens::data::load_records;
use gradlens::grads::Measurer;
use gradlens::sample::PromptMode;
use gradlens_tests::{fixture, paper_data, scratch};
use std::path::Path;

fn json_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

#[test]
fn every_paper_data_file_parses() {
    let Some(root) = paper_data() else { return };
    let mut files = Vec::new();
    json_files(&root, &mut files);
    assert_eq!(files.len(), 56, "the paper publishes 56 data files");
    for f in files {
        let records = load_records(&f).unwrap_or_else(|e| panic!("{e}"));
        let wiki_long_tail = f.file_name().unwrap() == "long_tail_wikipedia.json";
        assert_eq!(
            records.len(),
            if wiki_long_tail { 454 } else { 500 },
            "{}",
            f.display()
        );
        assert!(
            records.iter().all(|r| !r.instruction.is_empty()),
            "{}",
            f.display()
        );
    }
}

/// `fixtures/qwen2-tiny/expected/grads_<tag>.jsonl` holds the reference of the first samples of
/// `file` at max_length 1024 (made with `make_fixtures.py --existing … --tag <tag>`).
fn check_paper_samples<B: AutodiffBackend>(file: &str, tag: &str, rtol: f64) {
    let Some(root) = paper_data() else { return };
    let expected = fixture("qwen2-tiny").join(format!("expected/grads_{tag}.jsonl"));
    let n = std::fs::read_to_string(&expected).unwrap().lines().count();
    let records = load_records(&root.join(file)).unwrap();
    let measurer = Measurer::<B>::load(
        &fixture("qwen2-tiny"),
        1024,
        PromptMode::Base,
        &Default::default(),
    )
    .unwrap();
    let dtype = std::any::type_name::<B::FloatElem>();
    let out = scratch(&format!("paper-{tag}-{dtype}")).join("grads.jsonl");
    measurer.measure_file(&records, 0..n, &out, None).unwrap();
    let errs = compare_files(&expected, &out, rtol).unwrap();
    assert!(errs.is_empty(), "{tag} ({dtype}): {}", errs.join("\n"));
}

#[test]
fn aqua_detailed_cot_f64() {
    check_paper_samples::<CpuF64>(
        "cot_500/aqua_train_with_cot_gpt4o.json",
        "aqua_detailed",
        1e-9,
    );
}

#[test]
fn aqua_detailed_cot_f32() {
    check_paper_samples::<CpuF32>(
        "cot_500/aqua_train_with_cot_gpt4o.json",
        "aqua_detailed",
        1e-4,
    );
}

#[test]
fn aqua_answer_only_f64() {
    check_paper_samples::<CpuF64>("cot_500/aqua_train_no_cot.json", "aqua_none", 1e-9);
}
