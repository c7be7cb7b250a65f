//! `cargo xtask sweep --slurm N` against a real one-node Slurm (scripts/slurm-local.sh; .ci/run
//! starts it). Without Slurm these tests show as ignored (`--cfg slurm`, xtask/build.rs).
//!
//! (a) a sweep through `--slurm 4 --wait` equals a local sweep, unit file by unit file;
//! (b) a task cancelled before it runs leaves the sweep unfinished, `--merge` names its shard and
//!     the resubmission, and `--slurm 4 --only-unfinished --wait` completes it.

use gradlens_tests::slurm::{run, states, submitted_job, wait_until};
use gradlens_tests::{assert_same_sweep, repo_root, scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The default sweep's grid (both tiny models, the six built-in conditions) in `dir/NAME`.
fn sweep_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "out = \"{name}\"\nmanifest = \"{r}/datasets/builtin.toml\"\nconditions = [\"builtin/*\"]\nsamples = 8\nmax_length = 1024\n\
             [[model]]\nname = \"qwen2-tiny\"\npath = \"{r}/fixtures/qwen2-tiny\"\n[[model]]\nname = \"qwen2-tiny-instruct\"\npath = \"{r}/fixtures/qwen2-tiny\"\nmode = \"instruct\"\n",
            r = repo_root().display()
        ),
    )
    .unwrap();
    path
}

fn xtask(sweep: &Path, args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["sweep", "--quiet", "--no-report", "--config"])
        .arg(sweep)
        .args(args)
        .current_dir(sweep.parent().unwrap())
        .output()
        .unwrap();
    eprintln!(
        "xtask sweep {args:?}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The test's own xtask binary runs the array tasks (no release build in a test).
const BINARY: &str = env!("CARGO_BIN_EXE_xtask");

#[test]
#[cfg_attr(
    not(slurm),
    ignore = "needs Slurm: scripts/slurm-local.sh start, then GRADLENS_SLURM=1 cargo test"
)]
fn a_sweep_through_slurm_equals_a_local_sweep() {
    let dir = scratch("slurm-sweep");
    let local = sweep_file(&dir, "local");
    assert!(xtask(&local, &[]).status.success());
    let sweep = sweep_file(&dir, "out");
    let r = xtask(
        &sweep,
        &["--slurm", "4", "--wait", "--slurm-binary", BINARY],
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success());
    assert!(stdout.contains("complete: all 12 work unit(s)"), "{stdout}");
    // Four tasks ran, each its own shard, each with its log.
    let job = submitted_job(&stdout);
    for i in 0..4 {
        let log = dir.join(format!("out/slurm/{job}_{i}.log"));
        assert!(log.is_file(), "{}", log.display());
        assert!(
            dir.join(format!("out/run-shard-{}-of-4.json", i + 1))
                .is_file(),
            "shard {}",
            i + 1
        );
    }
    let script = std::fs::read_to_string(dir.join("out/slurm/out.sbatch")).unwrap();
    assert!(
        script.contains("#SBATCH --array=0-3")
            && script.contains("--shard=$((SLURM_ARRAY_TASK_ID + 1))/4"),
        "{script}"
    );
    assert_same_sweep(&dir.join("local"), &dir.join("out"));
}

#[test]
#[cfg_attr(
    not(slurm),
    ignore = "needs Slurm: scripts/slurm-local.sh start, then GRADLENS_SLURM=1 cargo test"
)]
fn a_cancelled_task_is_named_by_the_merge_and_resubmitted_alone() {
    let dir = scratch("slurm-cancel");
    let local = sweep_file(&dir, "local");
    assert!(xtask(&local, &[]).status.success());
    let sweep = sweep_file(&dir, "out");
    // One task at a time: the last one is still pending when it is cancelled.
    let r = xtask(
        &sweep,
        &[
            "--slurm",
            "4",
            "--slurm-throttle",
            "1",
            "--slurm-binary",
            BINARY,
        ],
    );
    assert!(r.status.success());
    let job = submitted_job(&String::from_utf8_lossy(&r.stdout));
    run("scancel", &[&format!("{job}_3")]);
    wait_until(
        "the array to leave the queue",
        Duration::from_secs(300),
        || states(&job).is_empty(),
    );

    let merge = xtask(&sweep, &["--merge"]);
    let text = String::from_utf8_lossy(&merge.stdout);
    assert!(!merge.status.success());
    assert!(
        text.contains("(shard 4/4)")
            && !text.contains("(shard 1/4)")
            && !text.contains("(shard 2/4)")
            && !text.contains("(shard 3/4)")
            && text.contains("--slurm 4 --only-unfinished"),
        "{text}"
    );

    let r = xtask(
        &sweep,
        &[
            "--slurm",
            "4",
            "--only-unfinished",
            "--wait",
            "--slurm-binary",
            BINARY,
        ],
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success());
    assert!(
        stdout.contains("array 3 (1 task(s) of 4 shards)")
            && stdout.contains("complete: all 12 work unit(s)"),
        "{stdout}"
    );
    assert_same_sweep(&dir.join("local"), &dir.join("out"));
    // Nothing left: a further --only-unfinished submits nothing.
    let r = xtask(
        &sweep,
        &[
            "--slurm",
            "4",
            "--only-unfinished",
            "--slurm-binary",
            BINARY,
        ],
    );
    assert!(r.status.success());
    assert!(String::from_utf8_lossy(&r.stdout).contains("nothing to submit"));
}
