//! The `gradlens` binary as a user runs it: bad input gives one clear error line (no panic, exit
//! code ≠ 0). Interrupted runs: `faults.rs`; the corpus of bad inputs: `reliability.rs`.

use gradlens_tests::{
    copy_dir, fixture, jsonl_indices as indices, rewrite_weights, scratch, tiny_data,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gradlens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gradlens"))
}

fn grads(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    gradlens()
        .args(["grads", "--quiet", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Exit code ≠ 0, no panic, and an error line that contains every `needle`.
fn assert_clear_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    for n in needles {
        assert!(
            line.contains(n),
            "error line {line:?} does not mention {n:?}"
        );
    }
}

/// A copy of the qwen2-tiny checkpoint to break.
fn broken_model(name: &str) -> PathBuf {
    let dir = scratch(name).join("model");
    copy_dir(&fixture("qwen2-tiny"), &dir);
    dir
}

#[test]
fn missing_config_json() {
    let dir = broken_model("err-missing-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let out = grads(&dir, &tiny_data(), &dir.join("o.jsonl"), &[]);
    assert_clear_error(&out, &["config.json", "not found"]);
}

#[test]
fn malformed_config_json() {
    let dir = broken_model("err-malformed-config");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"qwen2\", ").unwrap();
    let out = grads(&dir, &tiny_data(), &dir.join("o.jsonl"), &[]);
    assert_clear_error(&out, &["config.json", "not valid JSON"]);
}

#[test]
fn config_missing_required_key() {
    let dir = broken_model("err-config-key");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    c.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let out = grads(&dir, &tiny_data(), &dir.join("o.jsonl"), &[]);
    assert_clear_error(&out, &["config.json", "hidden_size"]);
}

#[test]
fn unsupported_model_type() {
    let dir = broken_model("err-model-type");
    let c = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"qwen2\"", "\"falcon\"");
    std::fs::write(dir.join("config.json"), c).unwrap();
    let out = grads(&dir, &tiny_data(), &dir.join("o.jsonl"), &[]);
    assert_clear_error(
        &out,
        &["config.json", "unsupported model_type \"falcon\"", "qwen2"],
    );
}

#[test]
fn missing_tensor() {
    let dir = broken_model("err-missing-tensor");
    rewrite_weights(&dir, |t| {
        t.remove("model.layers.1.self_attn.k_proj.weight");
    });
    let out = grads(&dir, &tiny_data(), &dir.join("o.jsonl"), &[]);
    assert_clear_error(
        &out,
        &["missing tensor model.layers.1.self_attn.k_proj.weight"],
    );
}

#[test]
fn unexpected_tensor() {
    let dir = broken_model("err-unexpected-tensor");
    rewrite_weights(&dir, |t| {
        t.insert(
            "model.layers.9.extra.weight".into(),
            (safetensors::Dtype::F32, vec![2], vec![0; 8]),
        );
    });
    let out = grads(&dir, &tiny_data(), &dir.join("o.jsonl"), &[]);
    assert_clear_error(&out, &["unexpected tensor", "model.layers.9.extra.weight"]);
}

#[test]
fn misshaped_tensor() {
    let dir = broken_model("err-misshaped-tensor");
    rewrite_weights(&dir, |t| {
        let e = t.get_mut("model.layers.0.self_attn.o_proj.weight").unwrap();
        e.1 = vec![32, 128];
    });
    let out = grads(&dir, &tiny_data(), &dir.join("o.jsonl"), &[]);
    assert_clear_error(
        &out,
        &[
            "model.safetensors",
            "model.layers.0.self_attn.o_proj.weight",
            "[32, 128]",
            "[64, 64]",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = broken_model("err-truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = grads(&dir, &tiny_data(), &dir.join("o.jsonl"), &[]);
    assert_clear_error(&out, &["model.safetensors", "truncated"]);
}

#[test]
fn data_not_an_array_of_records() {
    let dir = scratch("err-data");
    let cases = [
        (
            "object.json",
            "{\"instruction\": \"x\", \"output\": \"y\"}",
            "expected a JSON array",
        ),
        (
            "broken.json",
            "[{\"instruction\": \"x\", ",
            "not valid JSON",
        ),
        (
            "record.json",
            "[{\"instruction\": \"x\", \"output\": \"y\"}, 3]",
            "record 1",
        ),
        (
            "field.json",
            "[{\"instruction\": \"x\", \"output\": 5}]",
            "\"output\" must be a string",
        ),
        (
            "missing.json",
            "[{\"instruction\": \"x\"}]",
            "missing field \"output\"",
        ),
    ];
    for (name, text, needle) in cases {
        let data = dir.join(name);
        std::fs::write(&data, text).unwrap();
        let out = grads(&fixture("qwen2-tiny"), &data, &dir.join("o.jsonl"), &[]);
        assert_clear_error(&out, &[name, needle]);
    }
    let out = grads(
        &fixture("qwen2-tiny"),
        &dir.join("absent.json"),
        &dir.join("o.jsonl"),
        &[],
    );
    assert_clear_error(&out, &["absent.json", "cannot read"]);
}

#[test]
fn start_and_limit_select_records() {
    let dir = scratch("start-limit");
    let out = dir.join("o.jsonl");
    let r = grads(
        &fixture("qwen2-tiny"),
        &tiny_data(),
        &out,
        &["--start", "2", "--limit", "3", "--max-length", "96"],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(indices(&out), vec![2, 3, 4]);
    let r = grads(
        &fixture("qwen2-tiny"),
        &tiny_data(),
        &out,
        &["--limit", "5", "--max-length", "96"],
    );
    assert!(r.status.success());
    assert_eq!(indices(&out), vec![2, 3, 4, 0, 1]);
}

/// `--backend cuda` (and `libtorch`) in a build without the feature (the test build) says how to
/// build it; f64 on Flex is refused; an unknown backend names the choices.
#[test]
fn backend_errors() {
    let out = scratch("cli-backend").join("g.jsonl");
    let r = grads(
        &fixture("qwen2-tiny"),
        &tiny_data(),
        &out,
        &["--backend", "cuda"],
    );
    if cfg!(feature = "cuda") {
        // A CUDA build on a machine without a driver: still one error line, no panic.
        if !r.status.success() {
            assert_clear_error(&r, &["backend cuda"]);
        }
    } else {
        assert_clear_error(&r, &["backend cuda", "--features cuda"]);
    }
    let r = grads(
        &fixture("qwen2-tiny"),
        &tiny_data(),
        &out,
        &["--backend", "tpu"],
    );
    assert!(!r.status.success());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        stderr.contains("cpu, flex, libtorch, cuda or cuda:N"),
        "{stderr}"
    );
    // LibTorch in a build without it says how to build it; Flex is f32 only.
    let r = grads(
        &fixture("qwen2-tiny"),
        &tiny_data(),
        &out,
        &["--backend", "libtorch"],
    );
    if !cfg!(feature = "tch") {
        assert_clear_error(&r, &["backend libtorch", "--features tch"]);
    }
    let r = grads(
        &fixture("qwen2-tiny"),
        &tiny_data(),
        &out,
        &["--backend", "flex", "--dtype", "f64"],
    );
    assert_clear_error(&r, &["backend flex", "f32 only"]);
}

/// `gradlens init` then `gradlens grads` on the new checkpoint, from the command line.
#[test]
fn init_then_grads() {
    let dir = scratch("cli-init");
    let model = dir.join("model");
    let r = gradlens()
        .args([
            "init", "--seed", "3", "--dtype", "bf16", "--force", "--config",
        ])
        .arg(fixture("llama31-tiny").join("config.json"))
        .arg("--tokenizer")
        .arg(fixture("llama31-tiny"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let out = dir.join("g.jsonl");
    let _ = std::fs::remove_file(&out);
    let r = grads(
        &model,
        &tiny_data(),
        &out,
        &["--limit", "2", "--max-length", "96"],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(indices(&out), vec![0, 1]);
}

/// `--model ORG/NAME` finds the snapshot in a Hugging Face cache laid out as the hub client lays it
/// (refs/main → snapshots/<commit>/, files linked to blobs/), offline; a missing one says where it
/// looked.
#[test]
fn hub_ids_resolve_in_the_local_cache() {
    let cache = scratch("hub-cache");
    let repo = cache.join("models--test-org--tiny-qwen2");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(fixture("qwen2-tiny")).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let blob = repo.join("blobs").join(entry.file_name());
        std::fs::copy(entry.path(), &blob).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(entry.file_name()),
            snapshot.join(entry.file_name()),
        )
        .unwrap();
    }
    let out = cache.join("o.jsonl");
    let run = |model: &str, extra: &[&str]| {
        gradlens()
            .env("HF_HUB_CACHE", &cache)
            .args(["grads", "--quiet", "--max-length", "96", "--limit", "2"])
            .args(["--model", model, "--data"])
            .arg(tiny_data())
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let r = run("test-org/tiny-qwen2", &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        indices(&out).len() + indices(&cache.join("o.skipped.jsonl")).len(),
        2
    );
    // A commit hash as the revision.
    let r = run("test-org/tiny-qwen2", &["--revision", commit]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Not cached: the error says where it looked.
    let r = run("test-org/absent", &[]);
    assert_clear_error(
        &r,
        &["test-org/absent", "models--test-org--absent", "refs/main"],
    );
    let r = run("test-org/tiny-qwen2", &["--revision", "v2"]);
    assert_clear_error(&r, &["revision \"v2\"", "refs/v2"]);
}

/// `report --in FILE.jsonl` writes beside the file; `models` lists every family.
#[test]
fn report_of_one_file_and_the_models_list() {
    let dir = scratch("cli-report-file");
    let out = dir.join("o.jsonl");
    let r = grads(
        &fixture("qwen2-tiny"),
        &tiny_data(),
        &out,
        &["--max-length", "96"],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = gradlens()
        .args(["report", "--in"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(dir.join("o-report").join("report.md").is_file());
    let r = gradlens().arg("models").output().unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    for t in gradlens::SUPPORTED {
        assert!(
            text.lines().any(|l| l.starts_with(t)),
            "{t} missing in:\n{text}"
        );
    }
}
