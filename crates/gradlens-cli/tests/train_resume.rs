//! `gradlens train` interrupted by `kill -9` and resumed with `--resume` ends with the files of an
//! uninterrupted run: the same step, per-sample and evaluation lines (f64: 1e-12 relative), the
//! same final weights; run directories that are not the run's, or made with other settings, are
//! refused untouched.

use gradlens_tests::{
    assert_same_run, err, fixture, jsonl_values as lines, ok, scratch, tiny_data,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The run's options; `extra` replaces an option's value (`["--lr", "2e-3"]`), adds a flag, or
/// with `--lora R` trains LoRA adapters instead of every parameter (`--train` then goes).
fn train_cmd(out: &Path, data: &Path, extra: &[&str]) -> Command {
    let mut options: Vec<(&str, Option<&str>)> = vec![
        ("--dtype", Some("f64")),
        ("--train", Some("all")),
        ("--batch-size", Some("3")),
        ("--steps", Some("40")),
        ("--lr", Some("1e-3")),
        ("--warmup-steps", Some("2")),
        ("--shuffle", None),
        ("--seed", Some("5")),
        ("--per-sample", None),
        ("--eval-every", Some("5")),
        ("--max-length", Some("96")),
        ("--save-every", Some("2")),
    ];
    let mut i = 0;
    while i < extra.len() {
        let name = extra[i];
        let value = extra.get(i + 1).filter(|v| !v.starts_with("--")).copied();
        i += 1 + usize::from(value.is_some());
        match options.iter_mut().find(|(n, _)| *n == name) {
            Some(o) => o.1 = value,
            None => options.push((name, value)),
        }
    }
    if extra.contains(&"--lora") {
        options.retain(|(n, _)| *n != "--train");
    }
    let mut c = Command::new(env!("CARGO_BIN_EXE_gradlens"));
    c.args(["train", "--quiet", "--model"])
        .arg(fixture("qwen2-tiny"))
        .arg("--data")
        .arg(data)
        .arg("--eval-data")
        .arg(tiny_data())
        .arg("--out")
        .arg(out);
    for (name, value) in options {
        c.arg(name);
        c.args(value);
    }
    c
}

/// The tiny records three times over (18 usable samples).
fn data(dir: &Path) -> PathBuf {
    let records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(tiny_data()).unwrap()).unwrap();
    let many: Vec<_> = records.iter().cycle().take(24).cloned().collect();
    let path = dir.join("train.json");
    std::fs::write(&path, serde_json::to_string(&many).unwrap()).unwrap();
    path
}

#[test]
fn killed_then_resumed_equals_an_uninterrupted_run() {
    killed_then_resumed("train-kill", &[]);
}

/// The same for a LoRA run (r 4 on q/k/v/o): its checkpoints are adapter folders with their
/// training state.
#[test]
fn a_lora_run_killed_then_resumed_equals_an_uninterrupted_run() {
    killed_then_resumed("train-kill-lora", &["--lora", "4", "--lora-alpha", "16"]);
}

fn killed_then_resumed(name: &str, options: &[&str]) {
    let dir = scratch(name);
    let data = data(&dir);
    let with = |extra: &[&str]| -> Vec<String> {
        options.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let cmd = |out: &Path, extra: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        train_cmd(out, &data, &args)
    };
    let reference = dir.join("ref");
    let t0 = Instant::now();
    ok(&cmd(&reference, &[]).output().unwrap());
    let full = t0.elapsed();
    assert_eq!(lines(&reference.join("steps.jsonl")).len(), 40);

    let run = dir.join("killed");
    let steps = run.join("steps.jsonl");
    let per_step = full / 40;
    // Six kills placed by progress: alternately soon after the start (loading, resuming) and a
    // few steps on, each at a random moment within a step.
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut progress = Vec::new();
    let mut landed = Vec::new();
    for k in 0..6 {
        let r = gradlens_tests::xorshift(&mut seed);
        let extra: &[&str] = if k == 0 { &[] } else { &["--resume"] };
        let now = gradlens_tests::complete_lines(&steps);
        let ahead = if k % 2 == 0 { 0 } else { 1 + (r % 3) as usize };
        landed.push(gradlens_tests::kill_at(
            &mut cmd(&run, extra),
            &|| gradlens_tests::complete_lines(&steps),
            now + ahead,
            per_step.mul_f64((r % 1000) as f64 / 2000.0),
        ));
        progress.push(gradlens_tests::complete_lines(&steps));
    }
    assert!(
        landed.iter().all(|&l| l) && progress.windows(2).any(|w| w[1] > w[0]),
        "the kills must land mid-run and the resumes progress: {progress:?} (landed: {landed:?})"
    );
    // A kill in the middle of a write: a partial last line.
    let mut b = std::fs::read(&steps).unwrap_or_default();
    b.extend_from_slice(b"{\"step\": 99, \"lr\": 0.");
    std::fs::write(&steps, b).unwrap();
    // Without --resume the run directory is refused, unchanged.
    let before = std::fs::read(&steps).unwrap();
    err(
        &cmd(&run, &[]).output().unwrap(),
        &["holds a training run already", "--resume"],
    );
    assert_eq!(before, std::fs::read(&steps).unwrap());
    ok(&cmd(&run, &["--resume"]).output().unwrap());
    eprintln!("kills after {progress:?} steps; a whole run takes {full:?}");
    assert_same_run(&reference, &run);
    gradlens_tests::assert_no_temporaries(&run);
    // Again: nothing to do, nothing changed.
    let before = std::fs::read(&steps).unwrap();
    let stderr = ok(&cmd(&run, &["--resume"]).output().unwrap());
    assert!(stderr.contains("complete already"), "{stderr}");
    assert_eq!(before, std::fs::read(&steps).unwrap());
}

#[test]
fn run_directories_that_are_not_this_runs_are_refused_untouched() {
    let dir = scratch("train-refuse");
    let data = data(&dir);
    // Someone else's folder.
    let foreign = dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    err(
        &train_cmd(&foreign, &data, &[]).output().unwrap(),
        &["not a gradlens run directory"],
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );
    // The checkpoint folder.
    err(
        &train_cmd(&fixture("qwen2-tiny").join("run"), &data, &[])
            .output()
            .unwrap(),
        &["input"],
    );
    assert!(!fixture("qwen2-tiny").join("run").exists());
    // A resume with other settings names them and changes nothing.
    let run = dir.join("run");
    ok(&train_cmd(&run, &data, &["--steps", "3"]).output().unwrap());
    let before = std::fs::read(run.join("steps.jsonl")).unwrap();
    let r = train_cmd(
        &run,
        &data,
        &[
            "--steps",
            "3",
            "--resume",
            "--lr",
            "2e-3",
            "--batch-size",
            "4",
        ],
    )
    .output()
    .unwrap();
    err(
        &r,
        &["--lr: the run has 0.001, this run 0.002", "--batch-size"],
    );
    assert_eq!(before, std::fs::read(run.join("steps.jsonl")).unwrap());
}

/// A run killed while it claimed its directory leaves its `.lock` and maybe a temporary of
/// run.json: the rerun takes the directory (and removes the temporary), it is not someone else's.
#[test]
fn a_directory_left_by_a_killed_claim_is_taken() {
    let dir = scratch("train-killed-claim");
    let data = data(&dir);
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join(".lock"), b"").unwrap();
    std::fs::write(run.join(".run.json.tmp.4242"), b"{\"format\"").unwrap();
    ok(&train_cmd(&run, &data, &["--steps", "2", "--resume"])
        .output()
        .unwrap());
    assert!(run.join("final").is_dir());
    gradlens_tests::assert_no_temporaries(&run);
}
