//! Helpers shared by gradlens' integration tests: where fixtures and the paper's data live,
//! and scratch directories.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

/// The names of the committed fixtures (the directories holding an `expected/` reference).
pub fn fixture_names() -> Vec<String> {
    let dirs = gradlens::commands::check::fixture_dirs(&repo_root().join("fixtures")).unwrap();
    assert!(!dirs.is_empty(), "no fixtures found");
    dirs.iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The committed tiny data set of the fixtures.
pub fn tiny_data() -> PathBuf {
    fixture("data").join("tiny.json")
}

/// The paper's data: `$GRADLENS_DATA`, else `../shared/paper-data` beside the checkout.
/// `None` (with a notice) when absent, unless `GRADLENS_REQUIRE_DATA=1`, which makes it an error.
pub fn paper_data() -> Option<PathBuf> {
    let dir = std::env::var_os("GRADLENS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/paper-data"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("GRADLENS_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!(
            "the paper's data is required but {} does not exist",
            dir.display()
        );
    }
    eprintln!(
        "NOTICE: {} not found: tests on the paper's data are skipped",
        dir.display()
    );
    None
}

/// A fresh scratch directory under the target dir, removed first if it exists.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo_root().join("target").join("test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copy a directory (flat: checkpoints are flat) into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
}

/// The tensors of a safetensors file: name → (dtype, shape, bytes).
pub type TensorMap = std::collections::BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrite `dir/model.safetensors` with `edit` applied to its tensors.
pub fn rewrite_weights(dir: &Path, edit: impl Fn(&mut TensorMap)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: TensorMap = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

/// The `index` of every line of a JSONL file, in file order (empty when the file is absent).
pub fn jsonl_indices(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("{}: {e}: {l:?}", path.display()))["index"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Every file below `dir`, sorted (empty when `dir` is absent).
/// Complete lines (newline bytes) of the files below `path` (itself a file, or a folder searched
/// recursively) whose names end with `.jsonl`: a run's progress, read safely while it writes.
pub fn complete_lines(path: &Path) -> usize {
    let files = if path.is_dir() {
        files_under(path)
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".jsonl"))
        .map(|p| {
            std::fs::read(p)
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .unwrap_or(0)
        })
        .sum()
}

/// A kill -9 placed by progress, not by the clock: spawn `cmd`, wait until `progress()` reaches
/// `target` (polling every 2 ms), wait `extra`, then SIGKILL it. Returns whether the kill landed
/// while the run was still going (false: it had exited first). Where a kill lands thus depends on
/// what the run has done, whatever the machine's speed, so a test asserting that its kills land
/// mid-run passes every time.
pub fn kill_at(
    cmd: &mut std::process::Command,
    progress: &dyn Fn() -> usize,
    target: usize,
    extra: std::time::Duration,
) -> bool {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while progress() < target {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(extra);
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// The next number of a xorshift sequence (the kill tests' reproducible choices).
pub fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Assert that no temporary of gradlens' atomic writes (`.<name>.tmp.<pid>`) is left under `dir`:
/// what an interrupted run left, a resume must have removed.
pub fn assert_no_temporaries(dir: &Path) {
    let left: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with('.') && name.contains(".tmp.")
        })
        .collect();
    assert!(left.is_empty(), "temporaries left behind: {left:?}");
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The stderr of a command that must have succeeded.
pub fn ok(r: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(r.status.success(), "{stderr}");
    stderr
}

/// The stderr of a command that must have failed with exit code 1 and one clear error (no
/// panic) mentioning each of `needles`.
pub fn err(r: &std::process::Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{stderr:?} does not mention {n:?}");
    }
    stderr
}

/// Assert that the sweep output `actual` holds the files of `expected` (an uninterrupted local
/// sweep): every unit's samples in order, each once, its numbers within 1e-6, its side files and
/// provenance byte for byte. Run records (`run.json`, `run-shard-*.json`) and the `slurm/` folder
/// record times and submissions: left out.
pub fn assert_same_sweep(expected: &Path, actual: &Path) {
    let rel = |root: &Path| -> Vec<PathBuf> {
        files_under(root)
            .into_iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                !(name == "run.json" || name.starts_with("run-shard-") || p.starts_with("slurm"))
            })
            .collect()
    };
    assert_eq!(rel(expected), rel(actual), "the same files");
    for f in rel(expected) {
        let (x, y) = (expected.join(&f), actual.join(&f));
        let name = f.to_string_lossy();
        if name.ends_with(".meta.json") || name.ends_with(".skipped.jsonl") {
            assert_eq!(
                std::fs::read(&x).unwrap(),
                std::fs::read(&y).unwrap(),
                "{name}"
            );
        } else {
            assert_eq!(
                jsonl_indices(&x),
                jsonl_indices(&y),
                "{name}: samples in order, each once"
            );
            let errs = gradlens::report::compare::compare_files(&x, &y, 1e-6).unwrap();
            assert!(errs.is_empty(), "{name}: {}", errs.join("\n"));
        }
    }
}

/// Slurm from the tests (see scripts/slurm-local.sh).
pub mod slurm {
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// The job id in `submitted job J: …` (what `cargo xtask sweep --slurm` prints).
    pub fn submitted_job(stdout: &str) -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("submitted job "))
            .and_then(|r| r.split(':').next())
            .unwrap_or_else(|| panic!("no job id in {stdout:?}"))
            .to_string()
    }

    /// `squeue`'s states of a job's tasks (empty once it has left the queue).
    pub fn states(job: &str) -> Vec<String> {
        let out = Command::new("squeue")
            .args(["-h", "-j", job, "-o", "%T"])
            .output()
            .expect("squeue");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Wait (at most `limit`) until `ready()` holds; panics naming `what` otherwise.
    pub fn wait_until(what: &str, limit: Duration, ready: impl Fn() -> bool) {
        wait_or_report(what, limit, ready, String::new);
    }

    /// [`wait_until`], and when the wait gives up, what `report()` says (Slurm's view of a job,
    /// its log) in the panic's message.
    pub fn wait_or_report(
        what: &str,
        limit: Duration,
        ready: impl Fn() -> bool,
        report: impl Fn() -> String,
    ) {
        let t0 = Instant::now();
        while !ready() {
            assert!(
                t0.elapsed() < limit,
                "waited {limit:?} for {what}\n{}",
                report()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `scontrol show job J` (its state, reason, restarts and times), or why it could not be had.
    pub fn show_job(job: &str) -> String {
        match Command::new("scontrol").args(["show", "job", job]).output() {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("scontrol show job {job}: {e}"),
        }
    }

    /// Run a Slurm command; panics with its stderr when it fails.
    pub fn run(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Assert that `model`'s logits at the positions of `expected` (a reference's logits.json: the
/// first sample's `ids`, `positions`, `logits`) are the reference's within `rtol` of the largest
/// |logit|.
pub fn assert_logits<B: gradlens::backend::GradBackend>(
    name: &str,
    model: &gradlens_models::LoadedModel<B>,
    expected: &serde_json::Value,
    rtol: f64,
) {
    let ids: Vec<u32> = expected["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let hidden = model.model.hidden(&ids, None);
    for (k, pos) in expected["positions"].as_array().unwrap().iter().enumerate() {
        let t = pos.as_u64().unwrap() as usize;
        let got = model
            .model
            .logits(hidden.clone().narrow(0, t, 1))
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap();
        let want: Vec<f64> = expected["logits"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len(), "{name}: vocab size at position {t}");
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= rtol * scale,
                "{name}: logit [{t}, {j}]: got {g:e}, expected {w:e} (rtol {rtol:e} of max |logit| {scale:e})"
            );
        }
    }
}

/// The lines of a JSONL file as JSON values (none when it is absent).
pub fn jsonl_values(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Assert that the training run directory `actual` holds the numbers of `expected` (an
/// uninterrupted run): every line of steps.jsonl, per_sample.jsonl and eval.jsonl and the final
/// weights (or a LoRA run's final adapter) at 1e-12.
pub fn assert_same_run(expected: &Path, actual: &Path) {
    for file in ["steps.jsonl", "per_sample.jsonl", "eval.jsonl"] {
        let (e, a) = (
            jsonl_values(&expected.join(file)),
            jsonl_values(&actual.join(file)),
        );
        assert_eq!(e.len(), a.len(), "{file}: lines");
        for (i, (e, a)) in e.iter().zip(&a).enumerate() {
            let errs = gradlens::report::compare::compare_line(e, a, 1e-12);
            assert!(
                errs.is_empty(),
                "{file}: line {}: {}",
                i + 1,
                errs.join("; ")
            );
        }
    }
    // The final weights, or a LoRA run's final adapter.
    let file = if expected.join("final/adapter_model.safetensors").is_file() {
        "final/adapter_model.safetensors"
    } else {
        "final/model.safetensors"
    };
    let (e, a) = (
        gradlens::load::safetensors::read_safetensors(&expected.join(file)).unwrap(),
        gradlens::load::safetensors::read_safetensors(&actual.join(file)).unwrap(),
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
