//! `cargo xtask sweep` as a user runs it: killed (SIGKILL) ten times at random moments and rerun,
//! it ends with the files of an uninterrupted sweep (every (model, condition, sample) exactly
//! once, side files included); a unit held by another process fails the sweep at once; bad sweep
//! files and options get one clear error.

use gradlens_tests::{files_under as walk, jsonl_indices as indices, repo_root, scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A sweep file `NAME.toml` in `dir` writing to `dir/NAME`.
fn sweep_file(dir: &Path, name: &str, samples: usize) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "out = \"{name}\"\nmanifest = \"{r}/datasets/builtin.toml\"\nconditions = [\"builtin/*\"]\nsamples = {samples}\nmax_length = 1024\n\
             [[model]]\nname = \"base\"\npath = \"{r}/fixtures/qwen2-tiny\"\n[[model]]\nname = \"it\"\npath = \"{r}/fixtures/qwen2-tiny\"\nmode = \"instruct\"\n",
            r = repo_root().display()
        ),
    )
    .unwrap();
    path
}

fn xtask(sweep: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(["sweep", "--quiet", "--no-report", "--config"])
        .arg(sweep);
    c
}

fn lines(dir: &Path) -> usize {
    walk(dir)
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".jsonl"))
        .map(|p| indices(p).len())
        .sum()
}

#[test]
fn killed_ten_times_the_sweep_resumes_to_an_uninterrupted_sweeps_files() {
    let dir = scratch("sweep-kill");
    let reference = sweep_file(&dir, "ref", 20);
    let t0 = Instant::now();
    let r = xtask(&reference).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let full = t0.elapsed();

    let sweep = sweep_file(&dir, "out", 20);
    // Ten kills placed by progress: alternately soon after the start (planning, loading, the
    // claims) and some samples on, each at a random moment within a sample.
    let per_sample = full / 240;
    let out = dir.join("out");
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut seen = Vec::new();
    let mut landed = Vec::new();
    for k in 0..10 {
        let r = gradlens_tests::xorshift(&mut seed);
        let now = gradlens_tests::complete_lines(&out);
        let ahead = if k % 2 == 0 { 0 } else { 1 + (r % 20) as usize };
        landed.push(gradlens_tests::kill_at(
            &mut xtask(&sweep),
            &|| gradlens_tests::complete_lines(&out),
            now + ahead,
            per_sample.mul_f64((r % 1000) as f64 / 2000.0),
        ));
        seen.push(lines(&out));
    }
    assert!(
        landed.iter().all(|&l| l) && seen.last() < Some(&240),
        "the kills must land mid-run: {seen:?} (landed: {landed:?})"
    );
    let done = xtask(&sweep).output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let merge = xtask(&sweep).arg("--merge").output().unwrap();
    assert!(
        String::from_utf8_lossy(&merge.stdout).contains("complete: all 12 work unit(s)"),
        "{}",
        String::from_utf8_lossy(&merge.stdout)
    );
    eprintln!("kills after {seen:?} sample lines; an uninterrupted sweep takes {full:?}");

    // The same files as the uninterrupted sweep's.
    gradlens_tests::assert_same_sweep(&dir.join("ref"), &dir.join("out"));
}

#[test]
fn a_unit_held_by_another_process_fails_the_sweep_at_once() {
    let dir = scratch("sweep-locked");
    let sweep = sweep_file(&dir, "out", 2);
    let unit = dir.join("out/arith/base/grads_arith_train_no_cot.jsonl");
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    let held = std::fs::File::create(&unit).unwrap();
    held.lock().unwrap();
    let t0 = Instant::now();
    let r = xtask(&sweep).output().unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("grads_arith_train_no_cot.jsonl")
            && stderr.contains("another gradlens process"),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    drop(held);
    let r = xtask(&sweep).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

fn assert_clear_error(name: &str, r: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{name}: {stderr}");
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{name}: no error line in {stderr}"));
    for n in needles {
        assert!(line.contains(n), "{name}: {line:?} does not mention {n:?}");
    }
}

#[test]
fn bad_sweep_files_get_one_clear_error() {
    let dir = scratch("sweep-bad-files");
    let r = repo_root().display().to_string();
    let good_model = format!("[[model]]\nname = \"m\"\npath = \"{r}/fixtures/qwen2-tiny\"\n");
    let head = format!("out = \"o\"\nmanifest = \"{r}/datasets/builtin.toml\"\n");
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("not-toml", "out = ".into(), &["not-toml.toml"]),
        (
            "unknown-key",
            format!("{head}conditions = [\"builtin/*\"]\nsample = 3\n{good_model}"),
            &["unknown-key.toml", "sample"],
        ),
        (
            "no-model",
            format!("{head}conditions = [\"builtin/*\"]\nmodel = []\n"),
            &["no-model.toml", "[[model]]"],
        ),
        (
            "model-name-escapes",
            format!(
                "{head}conditions = [\"builtin/*\"]\n[[model]]\nname = \"../../elsewhere\"\npath = \"{r}/fixtures/qwen2-tiny\"\n"
            ),
            &["model-name-escapes.toml", "../../elsewhere"],
        ),
        (
            "model-twice",
            format!("{head}conditions = [\"builtin/*\"]\n{good_model}{good_model}"),
            &["model-twice.toml", "twice"],
        ),
        (
            "model-path",
            format!(
                "{head}conditions = [\"builtin/*\"]\n[[model]]\nname = \"m\"\npath = \"/nonexistent/ckpt\"\n"
            ),
            &["model-path.toml", "/nonexistent/ckpt"],
        ),
        (
            "condition",
            format!("{head}conditions = [\"builtin/none\"]\n{good_model}"),
            &["builtin.toml", "builtin/none"],
        ),
        (
            "backend",
            format!("{head}conditions = [\"builtin/*\"]\nbackend = \"tpu\"\n{good_model}"),
            &["backend.toml", "tpu"],
        ),
        (
            "samples-type",
            format!("{head}conditions = [\"builtin/*\"]\nsamples = \"all\"\n{good_model}"),
            &["samples-type.toml", "samples"],
        ),
        (
            "manifest-missing",
            format!("out = \"o\"\nmanifest = \"nowhere.toml\"\nconditions = [\"*\"]\n{good_model}"),
            &["nowhere.toml", "cannot read"],
        ),
    ];
    for (name, text, needles) in cases {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, &text).unwrap();
        let r = xtask(&path).output().unwrap();
        assert_clear_error(name, &r, needles);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "{name}: changed"
        );
        assert!(!dir.join("o").exists(), "{name}: wrote output");
    }
    // Manifests whose files point outside the data root.
    let manifest = dir.join("m.toml");
    std::fs::write(
        &manifest,
        "name = \"m\"\n[[condition]]\nid = \"x\"\nfile = \"../../etc/x.json\"\ngroup = \"g\"\ndataset = \"d\"\ncorrect = true\nname = \"x\"\n",
    )
    .unwrap();
    let path = dir.join("escape.toml");
    std::fs::write(
        &path,
        format!("out = \"o\"\nmanifest = \"m.toml\"\nconditions = [\"x\"]\n{good_model}"),
    )
    .unwrap();
    assert_clear_error(
        "manifest-escape",
        &xtask(&path).output().unwrap(),
        &["m.toml", "inside the data root"],
    );
    // Options.
    let good = sweep_file(&dir, "good", 1);
    for (shard, needle) in [
        ("a/2", "--shard a/2"),
        ("3/2", "--shard 3/2"),
        ("0/0", "--shard 0/0"),
        ("2", "--shard 2"),
    ] {
        let r = xtask(&good).args(["--shard", shard]).output().unwrap();
        assert_clear_error(shard, &r, &[needle, "I/N"]);
    }
    let r = xtask(&good).args(["--max-memory", "1K"]).output().unwrap();
    assert_clear_error(
        "max-memory",
        &r,
        &["config.json", "needs about", "--max-memory"],
    );
}

/// The merge of a sharded sweep names the shard of each unfinished unit as the run split it, and
/// once complete says how to make the report.
#[test]
fn the_merge_names_the_shards_of_unfinished_units() {
    let dir = scratch("sweep-merge-shards");
    let sweep = sweep_file(&dir, "out", 1);
    let r = xtask(&sweep).args(["--shard", "1/3"]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let merge = xtask(&sweep).arg("--merge").output().unwrap();
    assert!(!merge.status.success());
    let text = String::from_utf8_lossy(&merge.stdout);
    assert!(
        text.contains("(shard 2/3)")
            && text.contains("(shard 3/3)")
            && !text.contains("(shard 1/3)"),
        "{text}"
    );
    for i in [2, 3] {
        let r = xtask(&sweep)
            .args(["--shard", &format!("{i}/3")])
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let merge = xtask(&sweep).arg("--merge").output().unwrap();
    assert!(
        merge.status.success(),
        "{}",
        String::from_utf8_lossy(&merge.stdout)
    );
    assert!(String::from_utf8_lossy(&merge.stderr).contains("xtask report --in"));
}

/// The README's first command with the paper's data root exported, as the README tells a user to:
/// the built-in set's conditions still resolve in the repository (a data root belongs to a
/// manifest whose data is given at run time, not to the whole run). `--dry-run` checks every data
/// file exists and parses; the measuring itself is the other tests'.
#[test]
fn the_default_sweep_ignores_the_paper_data_root() {
    let elsewhere = scratch("sweep-default-data-root");
    for root in [
        gradlens_tests::paper_data().unwrap_or(elsewhere.clone()),
        elsewhere,
    ] {
        let r = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["sweep", "--dry-run"])
            .env("GRADLENS_DATA", &root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "GRADLENS_DATA={}: {}",
            root.display(),
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            stdout.contains("12 work unit(s)")
                && stdout.contains(&format!(
                    "data root {}",
                    repo_root().join("datasets/builtin").display()
                )),
            "{stdout}"
        );
    }
}

/// `--slurm-script-only` writes the job array's script (no Slurm needed): the sweep file's
/// `[slurm]` defaults as #SBATCH lines, the throttle, one shard per array task.
#[test]
fn the_slurm_job_script_carries_the_sweep_files_defaults() {
    let dir = scratch("slurm-script");
    let sweep = sweep_file(&dir, "out", 1);
    let mut text = std::fs::read_to_string(&sweep).unwrap();
    text += "[slurm]\npartition = \"gpu\"\ngres = \"gpu:1\"\ntime = \"02:00:00\"\nthrottle = 2\noptions = [\"--mem=64G\"]\n";
    std::fs::write(&sweep, text).unwrap();
    let r = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["sweep", "--config"])
        .arg(&sweep)
        .args([
            "--slurm",
            "3",
            "--slurm-script-only",
            "--slurm-binary",
            env!("CARGO_BIN_EXE_xtask"),
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let script = std::fs::read_to_string(dir.join("out/slurm/out.sbatch")).unwrap();
    for line in [
        "#SBATCH --array=0-2%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --time=02:00:00",
        "#SBATCH --mem=64G",
        "--shard=$((SLURM_ARRAY_TASK_ID + 1))/3",
    ] {
        assert!(script.contains(line), "{line} in:\n{script}");
    }
    assert!(dir.join("out/slurm/xtask").is_file());
    assert!(
        !dir.join("out/slurm/jobs.json").exists(),
        "nothing submitted"
    );
    // An unknown key of [slurm] is one clear error.
    std::fs::write(
        &sweep,
        std::fs::read_to_string(&sweep).unwrap() + "queue = \"x\"\n",
    )
    .unwrap();
    let r = xtask(&sweep)
        .args(["--slurm", "3", "--slurm-script-only"])
        .output()
        .unwrap();
    assert_clear_error("slurm-unknown-key", &r, &["out.toml", "queue"]);
}
