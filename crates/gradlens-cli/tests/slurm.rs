//! `gradlens train` as a Slurm job against a real one-node Slurm (scripts/slurm-local.sh; .ci/run
//! starts it): one job script serves the first start and every requeue (`--resume` on a run
//! directory that does not exist yet starts it), and SIGTERM — what Slurm sends when it requeues
//! or preempts a job — ends the run at a clean point with a checkpoint. A job requeued in the
//! middle ends with the steps and final weights of an uninterrupted run. Without Slurm this test
//! shows as ignored (`--cfg slurm`, build.rs).

use gradlens_tests::slurm::{run, show_job, states, wait_or_report};
use gradlens_tests::{complete_lines, fixture, scratch, tiny_data};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const STEPS: usize = 150;

fn train_args(out: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "train".into(),
        "--quiet".into(),
        "--model".into(),
        fixture("qwen2-tiny").display().to_string(),
        "--data".into(),
        tiny_data().display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for s in [
        "--dtype",
        "f64",
        "--batch-size",
        "2",
        "--steps",
        "150",
        "--lr",
        "1e-3",
        "--shuffle",
        "--seed",
        "3",
        "--save-every",
        "20",
        "--max-length",
        "96",
        "--resume",
    ] {
        a.push(s.into());
    }
    a
}

#[test]
#[cfg_attr(
    not(slurm),
    ignore = "needs Slurm: scripts/slurm-local.sh start, then GRADLENS_SLURM=1 cargo test"
)]
fn a_train_job_requeued_in_the_middle_ends_as_an_uninterrupted_run() {
    let dir = scratch("slurm-train");
    let gradlens = env!("CARGO_BIN_EXE_gradlens");
    let reference = dir.join("ref");
    let r = Command::new(gradlens)
        .args(train_args(&reference))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    // The job script of docs/training.md: requeueable, its log appended across restarts, and
    // gradlens in the shell's place so that it receives the signals itself.
    let out = dir.join("run");
    let script = dir.join("train.sbatch");
    let args: Vec<String> = train_args(&out).iter().map(|a| format!("'{a}'")).collect();
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n#SBATCH --job-name=gradlens-train-test\n#SBATCH --requeue\n\
             #SBATCH --open-mode=append\n#SBATCH --output={}/job.log\nexec {gradlens} {}\n",
            dir.display(),
            args.join(" ")
        ),
    )
    .unwrap();
    let job = run("sbatch", &["--parsable", &script.display().to_string()])
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let steps = out.join("steps.jsonl");
    let job_log = dir.join("job.log");
    let report = || {
        format!(
            "{}\nthe job's log:\n{}",
            show_job(&job),
            std::fs::read_to_string(&job_log).unwrap_or_default()
        )
    };
    wait_or_report(
        "the job's first steps",
        Duration::from_secs(120),
        || complete_lines(&steps) >= 10,
        report,
    );
    run("scontrol", &["requeue", &job]);
    let requeued = Instant::now();
    let at_requeue = complete_lines(&steps);
    // A requeued job waits for its BeginTime (about two minutes) unless told to start now. Not
    // within the second of the requeue, though: slurmd revoked the job's credential at that
    // second, and a credential made in it counts as revoked too ("Killing non-startable batch
    // job: Job credential revoked": the job then leaves the queue without running again — what
    // made this test wait out its limit in 2 of 11 runs). Slurm's own delay is what avoids it.
    let start_now = || {
        requeued.elapsed() >= Duration::from_secs(2)
            && states(&job).iter().any(|s| s == "PENDING")
            && Command::new("scontrol")
                .args(["update", &format!("JobId={job}"), "StartTime=now"])
                .status()
                .is_ok_and(|s| s.success())
    };
    wait_or_report(
        "the requeued job to be pending",
        Duration::from_secs(60),
        start_now,
        report,
    );
    wait_or_report(
        "the job to finish",
        Duration::from_secs(300),
        || {
            // Slurm may set the requeue's BeginTime after the update above: start it again.
            start_now();
            let now = states(&job);
            let finished = out.join("final").is_dir();
            assert!(
                !now.is_empty() || finished,
                "the job left the queue without finishing the run\n{}",
                report()
            );
            now.is_empty() && finished
        },
        report,
    );
    let log = std::fs::read_to_string(dir.join("job.log")).unwrap_or_default();
    eprintln!("requeued after {at_requeue} of {STEPS} steps; the job's log:\n{log}");
    assert!(
        at_requeue < STEPS,
        "the requeue came after the run had finished"
    );
    assert!(
        log.contains("stopped by a termination signal after step"),
        "SIGTERM did not stop the run at a clean point:\n{log}"
    );

    gradlens_tests::assert_same_run(&reference, &out);
}
