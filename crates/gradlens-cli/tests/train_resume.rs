//! `gradlens train` interrupted by `kill -9` and resumed with `--resume` ends with the files of an
//! uninterrupted run: the same step, per-sample and evaluation lines (f64: 1e-12 relative), the
//! same final weights; run directories that are not the run's, or made with other settings, are
//! refused untouched.

use gradlens::compare::compare_line;
use gradlens::train::checkpoint::read_safetensors;
use gradlens_tests::{err, fixture, ok, scratch, tiny_data};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The run's options; `extra` replaces an option's value (`["--lr", "2e-3"]`) or adds a flag.
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

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_same_run(expected: &Path, actual: &Path) {
    for file in ["steps.jsonl", "per_sample.jsonl", "eval.jsonl"] {
        let (e, a) = (lines(&expected.join(file)), lines(&actual.join(file)));
        assert_eq!(e.len(), a.len(), "{file}: lines");
        for (i, (e, a)) in e.iter().zip(&a).enumerate() {
            let errs = compare_line(e, a, 1e-12);
            assert!(
                errs.is_empty(),
                "{file}: line {}: {}",
                i + 1,
                errs.join("; ")
            );
        }
    }
    let (e, a) = (
        read_safetensors(&expected.join("final/model.safetensors")).unwrap(),
        read_safetensors(&actual.join("final/model.safetensors")).unwrap(),
    );
    assert_eq!(e.len(), a.len());
    for (e, a) in e.iter().zip(&a) {
        for (w, g) in e.values.iter().zip(&a.values) {
            assert!(
                (w - g).abs() <= 1e-12 * w.abs(),
                "{}: {w:e} vs {g:e}",
                e.name
            );
        }
    }
}

#[test]
fn killed_then_resumed_equals_an_uninterrupted_run() {
    let dir = scratch("train-kill");
    let data = data(&dir);
    let reference = dir.join("ref");
    let t0 = Instant::now();
    ok(&train_cmd(&reference, &data, &[]).output().unwrap());
    let full = t0.elapsed();
    assert_eq!(lines(&reference.join("steps.jsonl")).len(), 40);

    let run = dir.join("killed");
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut progress = Vec::new();
    for k in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let frac = (seed % 1000) as f64 / 1000.0;
        let extra: &[&str] = if k == 0 { &[] } else { &["--resume"] };
        let mut child = train_cmd(&run, &data, extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(0.1 + 0.15 * frac));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        progress.push(lines(&run.join("steps.jsonl")).len());
    }
    assert!(
        progress[..4].iter().all(|&n| n < 40) && progress.windows(2).any(|w| w[1] > w[0]),
        "the kills must land mid-run and the resumes progress: {progress:?}"
    );
    // A kill in the middle of a write: a partial last line.
    let steps = run.join("steps.jsonl");
    let mut b = std::fs::read(&steps).unwrap_or_default();
    b.extend_from_slice(b"{\"step\": 99, \"lr\": 0.");
    std::fs::write(&steps, b).unwrap();
    // Without --resume the run directory is refused, unchanged.
    let before = std::fs::read(&steps).unwrap();
    err(
        &train_cmd(&run, &data, &[]).output().unwrap(),
        &["holds a training run already", "--resume"],
    );
    assert_eq!(before, std::fs::read(&steps).unwrap());
    ok(&train_cmd(&run, &data, &["--resume"]).output().unwrap());
    eprintln!("kills after {progress:?} steps; a whole run takes {full:?}");
    assert_same_run(&reference, &run);
    gradlens_tests::assert_no_temporaries(&run);
    // Again: nothing to do, nothing changed.
    let before = std::fs::read(&steps).unwrap();
    let stderr = ok(&train_cmd(&run, &data, &["--resume"]).output().unwrap());
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
