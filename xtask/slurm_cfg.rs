// Included by xtask/build.rs and crates/gradlens-cli/build.rs (build scripts share code by
// include!).

/// `--cfg slurm` (the Slurm tests run: xtask/tests/slurm.rs, crates/gradlens-cli/tests/slurm.rs)
/// when `GRADLENS_SLURM=1` (then Slurm must answer: .ci/run starts it with
/// scripts/slurm-local.sh) or when a Slurm node is ready for jobs as the tests are built;
/// otherwise those tests show as ignored.
fn slurm_cfg() {
    println!("cargo::rustc-check-cfg=cfg(slurm)");
    println!("cargo::rerun-if-env-changed=GRADLENS_SLURM");
    let answers = std::process::Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| {
            // A node ready for jobs (a node that is down or still starting is not an answer).
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|state| matches!(state.trim(), "idle" | "mixed" | "allocated"))
        });
    if std::env::var("GRADLENS_SLURM").as_deref() == Ok("1") || answers {
        println!("cargo::rustc-cfg=slurm");
    }
}
