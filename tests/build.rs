//! Whether the paper's data is at hand when the tests are built: `--cfg paper_data` when
//! `$GRADLENS_DATA` or `../shared/paper-data` (beside the checkout) is a folder. Tests that need it
//! are `#[cfg_attr(not(paper_data), ignore = …)]`, so without the data they show as ignored in the
//! test summary instead of passing having checked nothing.

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
}
