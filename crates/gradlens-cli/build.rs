//! `--cfg slurm` when Slurm answers (the Slurm tests), and with the `tch` feature, record
//! libtorch's library directory in the binary's run path, so
//! `gradlens --backend libtorch` runs without LD_LIBRARY_PATH (which would also redirect any other
//! PyTorch on the machine, e.g. the benchmark's reference side, to this libtorch).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    slurm_cfg();
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    let lib = if let Some(root) = std::env::var_os("LIBTORCH") {
        Some(PathBuf::from(root).join("lib"))
    } else if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        // The interpreter torch-sys uses: `python` in a virtual environment, else `python3`.
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
            "python"
        } else {
            "python3"
        };
        Command::new(python)
            .args([
                "-c",
                "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    } else {
        None
    };
    if let Some(lib) = lib {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
    }
}

/// `--cfg slurm` (the Slurm tests run, tests/slurm.rs) when `GRADLENS_SLURM=1` (then Slurm must
/// answer: .ci/run starts it with scripts/slurm-local.sh) or when Slurm answers as the tests are
/// built; otherwise those tests show as ignored. The same rule as xtask/build.rs.
fn slurm_cfg() {
    println!("cargo::rustc-check-cfg=cfg(slurm)");
    println!("cargo::rerun-if-env-changed=GRADLENS_SLURM");
    let answers = Command::new("sinfo")
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
