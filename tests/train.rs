//! Parity of `gradlens train` with torch.optim.AdamW + transformers' schedules (float64 reference:
//! scripts/make_train_reference.py, fixtures/train/<case>/): every value of steps.jsonl and
//! per_sample.jsonl at 1e-9 relative in f64 (the rule of `gradlens::report::compare`), the final weights
//! saved in f64 at 1e-9, and f32 runs at 1e-4 on the first two steps.

use gradlens::backend::{Device, Dtype};
use gradlens::load::safetensors::{HostParam, read_safetensors};
use gradlens::measure::options::RunOptions;
use gradlens::prepare::PromptMode;
use gradlens::report::compare::compare_line;
use gradlens::train::checkpoint::SaveDtype;
use gradlens::train::optimizer::AdamWConfig;
use gradlens::train::schedule::Schedule;
use gradlens::train::{Length, TrainOptions, TrainSet, run_train};
use gradlens_tests::{fixture, repo_root, scratch, tiny_data};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// A reference case's folder: fixtures/train/<case>, or fixtures/lora/<case> for LoRA runs.
fn case_dir(case: &str) -> std::path::PathBuf {
    let train = repo_root().join("fixtures/train").join(case);
    if train.is_dir() {
        train
    } else {
        repo_root().join("fixtures/lora").join(case)
    }
}

/// The gradlens options of a reference case (fixtures/train/<case>/args.json).
fn options(case: &str, dtype: Dtype, out: &Path) -> TrainOptions {
    let args: Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir(case).join("args.json")).unwrap())
            .unwrap();
    let s = |k: &str| args[k].as_str().unwrap().to_string();
    let u = |k: &str| args[k].as_u64().unwrap() as usize;
    let f = |k: &str| args[k].as_f64().unwrap();
    let instruct = args["instruct"].as_bool().unwrap_or(false);
    let model = fixture(&s("fixture"));
    // A LoRA case starts from the PEFT adapter the reference saved (its B is not zero).
    let lora = args.get("r").map(|_| gradlens::train::lora::LoraArgs {
        init: Some(case_dir(case).join("init")),
        ..Default::default()
    });
    TrainOptions {
        run: RunOptions {
            mode: if instruct {
                PromptMode::instruct_from_dir(&model, Default::default()).unwrap()
            } else {
                PromptMode::Base
            },
            dtype,
            backend: Device::Cpu,
            max_length: u("max_length"),
            ..RunOptions::new(model)
        },
        data: vec![tiny_data()],
        out: out.to_path_buf(),
        batch_size: u("batch_size"),
        length: Length::Steps(u("steps")),
        shuffle: args["shuffle"].as_u64(),
        seed: 0,
        train: match args["train"].as_str() {
            Some("all") => TrainSet::All,
            _ => TrainSet::Attention,
        },
        lora,
        save_merged: false,
        lr: f("lr"),
        schedule: match s("schedule").as_str() {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine,
            _ => Schedule::Linear,
        },
        warmup_steps: u("warmup_steps"),
        adamw: AdamWConfig {
            weight_decay: f("weight_decay"),
            ..Default::default()
        },
        max_grad_norm: f("max_grad_norm"),
        stats: Default::default(),
        per_sample: true,
        eval_data: None,
        eval_every: None,
        save_every: None,
        save_dtype: Some(SaveDtype::F64),
        resume: false,
        progress: false,
    }
}

/// A run's JSONL lines keyed by (step, index).
fn lines(path: &Path) -> BTreeMap<(u64, u64), Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let key = (
                v["step"].as_u64().unwrap(),
                v.get("index").and_then(Value::as_u64).unwrap_or(0),
            );
            (key, v)
        })
        .collect()
}

fn compare_jsonl(case: &str, file: &str, out: &Path, rtol: f64, max_step: u64) {
    let expected = lines(&case_dir(case).join(file));
    let actual = lines(&out.join(file));
    let keys = |m: &BTreeMap<(u64, u64), Value>| -> Vec<(u64, u64)> {
        m.keys().copied().filter(|k| k.0 <= max_step).collect()
    };
    assert_eq!(keys(&actual), keys(&expected), "{case}: {file}: the lines");
    let mut errors = Vec::new();
    for key in keys(&expected) {
        for e in compare_line(&expected[&key], &actual[&key], rtol) {
            errors.push(format!("step {} sample {}: {e}", key.0, key.1));
        }
    }
    assert!(
        errors.is_empty(),
        "{case}: {file}: {} differences at rtol {rtol:e}:\n{}",
        errors.len(),
        errors[..errors.len().min(20)].join("\n")
    );
}

fn parity_f64(case: &str) {
    let out = scratch(&format!("train-{case}-f64"));
    run_train(&options(case, Dtype::F64, &out)).unwrap();
    compare_jsonl(case, "steps.jsonl", &out, 1e-9, u64::MAX);
    compare_jsonl(case, "per_sample.jsonl", &out, 1e-9, u64::MAX);
    // The final weights (LoRA: the final adapter PEFT saved), every tensor, element by element.
    let (expected, actual) = if case_dir(case).join("final.safetensors").is_file() {
        (
            case_dir(case).join("final.safetensors"),
            out.join("final/model.safetensors"),
        )
    } else {
        (
            case_dir(case).join("final/adapter_model.safetensors"),
            out.join("final/adapter_model.safetensors"),
        )
    };
    let expected = read_safetensors(&expected).unwrap();
    let actual = read_safetensors(&actual).unwrap();
    let names = |v: &[HostParam]| -> Vec<String> { v.iter().map(|t| t.name.clone()).collect() };
    assert_eq!(names(&actual), names(&expected), "{case}: saved tensors");
    for (e, a) in expected.iter().zip(&actual) {
        let name = &e.name;
        assert_eq!(e.dims, a.dims, "{case}: {name}: shape");
        for (j, (w, g)) in e.values.iter().zip(&a.values).enumerate() {
            assert!(
                (w - g).abs() <= 1e-9 * w.abs() + 1e-15,
                "{case}: {name}[{j}]: expected {w:e}, got {g:e}"
            );
        }
    }
}

fn parity_f32(case: &str) {
    let out = scratch(&format!("train-{case}-f32"));
    // The whole run (the schedule depends on its length); the first two steps are compared.
    run_train(&options(case, Dtype::F32, &out)).unwrap();
    compare_jsonl(case, "steps.jsonl", &out, 1e-4, 2);
    compare_jsonl(case, "per_sample.jsonl", &out, 1e-4, 2);
}

/// A LoRA run in f32 against the float64 reference: every step's lines and the final adapter at
/// 1e-4 (relative to each adapter matrix's largest entry).
fn lora_parity_f32(case: &str) {
    let out = scratch(&format!("train-{case}-f32-all"));
    run_train(&options(case, Dtype::F32, &out)).unwrap();
    compare_jsonl(case, "steps.jsonl", &out, 1e-4, u64::MAX);
    compare_jsonl(case, "per_sample.jsonl", &out, 1e-4, u64::MAX);
    let expected =
        read_safetensors(&case_dir(case).join("final/adapter_model.safetensors")).unwrap();
    let actual = read_safetensors(&out.join("final/adapter_model.safetensors")).unwrap();
    for (e, a) in expected.iter().zip(&actual) {
        assert_eq!(e.name, a.name);
        let scale = e.values.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (w, g) in e.values.iter().zip(&a.values) {
            assert!(
                (w - g).abs() <= 1e-4 * scale,
                "{case}: {}: expected {w:e}, got {g:e}",
                e.name
            );
        }
    }
}

#[test]
fn qwen2_all_parameters_f64() {
    parity_f64("qwen2-all");
}

#[test]
fn gemma_tied_all_parameters_shuffled_f64() {
    parity_f64("gemma-all");
}

#[test]
fn qwen3_attention_f64() {
    parity_f64("qwen3-attention");
}

/// LoRA against PEFT + torch AdamW (scripts/make_lora_reference.py): Qwen2 r 4 on q/k/v/o from
/// an f32 adapter (warmup + linear, clipping), Llama 3.1 r 2 on q/v with rsLoRA from an f64 adapter
/// (cosine, the chat template), Gemma 2 (tied embeddings) r 4 from a bf16 adapter (shuffled).
#[test]
fn lora_qwen2_f64() {
    parity_f64("qwen2-lora");
}

#[test]
fn lora_llama_instruct_rslora_f64() {
    parity_f64("llama-lora");
}

#[test]
fn lora_gemma2_tied_shuffled_f64() {
    parity_f64("gemma2-lora");
}

#[test]
fn lora_qwen2_f32_whole_run() {
    lora_parity_f32("qwen2-lora");
}

#[test]
fn lora_llama_f32_whole_run() {
    lora_parity_f32("llama-lora");
}

#[test]
fn lora_gemma2_f32_whole_run() {
    lora_parity_f32("gemma2-lora");
}

/// `grads --adapter`: the base model with PEFT's final adapter merged on load measures as PEFT's
/// merged model (`merge_and_unload`) does, f64 at 1e-9; the output records the adapter.
#[test]
fn grads_with_an_adapter_measure_pefts_merged_model() {
    for case in ["qwen2-lora", "llama-lora", "gemma2-lora"] {
        let o = options(case, Dtype::F64, &scratch("unused"));
        let out = scratch(&format!("grads-adapter-{case}")).join("merged.jsonl");
        let run = RunOptions {
            adapter: Some(case_dir(case).join("final")),
            ..o.run.clone()
        };
        gradlens::commands::grads::run_grads(&gradlens::commands::grads::GradsOptions {
            progress: false,
            ..gradlens::commands::grads::GradsOptions::new(run, tiny_data(), &out)
        })
        .unwrap();
        let errs = gradlens::report::compare::compare_files(
            &case_dir(case).join("merged_grads.jsonl"),
            &out,
            1e-9,
        )
        .unwrap();
        assert!(errs.is_empty(), "{case}: {}", errs.join("\n"));
        let meta = std::fs::read_to_string(gradlens::sink::output::meta_path(&out)).unwrap();
        assert!(
            meta.contains("\"adapter_sha256\"") && meta.contains("final"),
            "{meta}"
        );
    }
}

/// `--stats none`: the same training as with the statistics (loss, rate, gradient norm and the
/// final weights or adapter, f64 at 1e-12), steps.jsonl without them.
#[test]
fn a_plain_loop_trains_the_same_without_statistics() {
    for case in ["qwen2-all", "qwen2-lora"] {
        let with = scratch(&format!("train-stats-{case}"));
        let without = scratch(&format!("train-nostats-{case}"));
        let mut o = options(case, Dtype::F64, &with);
        o.per_sample = false;
        run_train(&o).unwrap();
        o.out = without.clone();
        o.stats = gradlens::train::StepStats::None;
        run_train(&o).unwrap();
        let (a, b) = (
            lines(&with.join("steps.jsonl")),
            lines(&without.join("steps.jsonl")),
        );
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (key, x) in &a {
            let y = &b[key];
            for k in ["loss", "lr", "grad_norm", "n_loss_tokens"] {
                let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-12 * x.abs(),
                    "{case}: {key:?} {k}: {x} vs {y}"
                );
            }
            assert!(
                y.as_object().unwrap().values().all(|v| !v.is_object()),
                "{case}: statistics in a --stats none line"
            );
        }
        let file = if case.ends_with("lora") {
            "final/adapter_model.safetensors"
        } else {
            "final/model.safetensors"
        };
        let (e, g) = (
            read_safetensors(&with.join(file)).unwrap(),
            read_safetensors(&without.join(file)).unwrap(),
        );
        for (e, g) in e.iter().zip(&g) {
            assert_eq!(e.name, g.name);
            for (x, y) in e.values.iter().zip(&g.values) {
                assert!(
                    (x - y).abs() <= 1e-12 * x.abs() + 1e-300,
                    "{case}: {}",
                    e.name
                );
            }
        }
    }
}

/// PEFT's merged model of each final adapter gives gradlens' logits with the adapter merged on
/// load: f64, 1e-9 of the largest |logit|, at a few positions of the first sample.
#[test]
fn an_adapter_merged_on_load_gives_pefts_logits() {
    for case in ["qwen2-lora", "llama-lora", "gemma2-lora"] {
        let o = options(case, Dtype::F64, &scratch("unused"));
        let mut model = gradlens_models::load::<gradlens::backend::CpuF64>(
            &o.run.model,
            &Default::default(),
            &gradlens_models::paper_selector,
        )
        .unwrap();
        let adapter =
            gradlens::load::adapter::read_peft_adapter(&case_dir(case).join("final")).unwrap();
        gradlens::load::adapter::merge_into(&mut model, &adapter).unwrap();
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(case_dir(case).join("merged_logits.json")).unwrap(),
        )
        .unwrap();
        gradlens_tests::assert_logits(case, &model, &expected, 1e-9);
    }
}

/// A LoRA run's folders are PEFT's: adapter_config.json with PEFT's keys, the adapter under its
/// saved names; the training state beside it in checkpoints; --save-merged adds the merged model.
#[test]
fn lora_checkpoints_are_peft_adapter_folders() {
    let out = scratch("train-lora-folders");
    let mut o = options("qwen2-lora", Dtype::F64, &out);
    o.save_every = Some(2);
    o.save_merged = true;
    run_train(&o).unwrap();
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("final/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["k_proj", "o_proj", "q_proj", "v_proj"])
    );
    let names = |p: &Path| -> Vec<String> {
        read_safetensors(p)
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect()
    };
    assert_eq!(
        names(&out.join("final/adapter_model.safetensors")),
        names(&case_dir("qwen2-lora").join("final/adapter_model.safetensors"))
    );
    for f in ["training_state.safetensors", "trainer_state.json"] {
        assert!(out.join("checkpoint-2").join(f).is_file(), "{f}");
    }
    // The merged model is a checkpoint gradlens loads.
    gradlens_models::load::<gradlens::backend::CpuF64>(
        &out.join("final-merged"),
        &Default::default(),
        &gradlens_models::paper_selector,
    )
    .unwrap();
}

#[test]
fn qwen2_all_parameters_f32_first_steps() {
    parity_f32("qwen2-all");
}

#[test]
fn gemma_tied_all_parameters_f32_first_steps() {
    parity_f32("gemma-all");
}

#[test]
fn qwen3_attention_f32_first_steps() {
    parity_f32("qwen3-attention");
}

/// The saved final checkpoint loads in gradlens as it is: measuring it gives the same loss as the
/// trained model's last evaluation would (checked through the JSONL of a grads run on it).
#[test]
fn the_final_checkpoint_is_a_checkpoint() {
    let out = scratch("train-final-loads");
    let mut o = options("qwen2-all", Dtype::F64, &out);
    o.save_dtype = None;
    run_train(&o).unwrap();
    let final_dir = out.join("final");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(final_dir.join(f).is_file(), "final/{f}");
    }
    // Saved in the source's dtype (f32 here) by default.
    let st = std::fs::read(final_dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert!(
        st.tensors()
            .iter()
            .all(|(_, v)| v.dtype() == safetensors::Dtype::F32)
    );
    gradlens_models::load::<gradlens::backend::CpuF64>(
        &final_dir,
        &Default::default(),
        &gradlens_models::paper_selector,
    )
    .unwrap();
}

/// The training view of a LoRA run: its adapters' gradient norms beside the base curves.
#[test]
fn the_report_draws_a_lora_run() {
    let base = scratch("train-report-lora");
    let out = base.join("lora");
    run_train(&options("qwen2-lora", Dtype::F32, &out)).unwrap();
    let report = base.join("report");
    gradlens::report::build_and_print(std::slice::from_ref(&out), &report).unwrap();
    assert!(report.join("figures/lora-training.png").is_file());
    let md = std::fs::read_to_string(report.join("training.md")).unwrap();
    assert!(
        md.contains("LoRA run") && md.contains("Q A ") && md.contains("O B "),
        "{md}"
    );
}

/// `report` on run directories draws the training view: a figure per run, one comparing them,
/// and MADs over the steps that are the MADs of the per-layer S_sum in steps.jsonl.
#[test]
fn the_report_draws_the_training_view() {
    let base = scratch("train-report");
    let mut runs = Vec::new();
    for (name, lr) in [("low-lr", 1e-4), ("high-lr", 3e-3)] {
        let out = base.join(name);
        let mut o = options("qwen2-all", Dtype::F32, &out);
        o.lr = lr;
        o.per_sample = false;
        o.eval_data = Some(tiny_data());
        o.eval_every = Some(2);
        run_train(&o).unwrap();
        runs.push(out);
    }
    let report = base.join("report");
    let r = gradlens::report::build_and_print(&runs, &report).unwrap();
    assert_eq!(r.files, 2);
    for f in [
        "figures/low-lr-training.png",
        "figures/high-lr-training.svg",
        "figures/training-compare.png",
        "training.md",
        "training.html",
    ] {
        assert!(report.join(f).is_file(), "{f}");
    }
    // The CSV's MAD of q_proj at step 1 of the first run, recomputed from steps.jsonl.
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(runs[0].join("steps.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let q: Vec<f64> = (0..2)
        .map(|l| {
            first[format!("model.layers.{l}.self_attn.q_proj.weight")]["S_sum"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let csv = std::fs::read_to_string(report.join("training_mad.csv")).unwrap();
    let row = csv
        .lines()
        .find(|l| l.starts_with("low-lr,1,q_proj,"))
        .unwrap();
    let mad: f64 = row.rsplit(',').next().unwrap().parse().unwrap();
    assert!((mad - (q[1] - q[0]).abs()).abs() <= 1e-12 * mad, "{row}");
    let md = std::fs::read_to_string(report.join("training.md")).unwrap();
    assert!(
        md.contains("## low-lr") && md.contains("evaluation loss"),
        "{md}"
    );
}
