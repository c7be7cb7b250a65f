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

// `slurm_cfg`: the Slurm tests' switch, one rule for both packages that have Slurm tests.
include!("../../xtask/slurm_cfg.rs");
