//! `report`: from measurement JSONL (a sweep's output, or the paper's own files) to the paper's
//! curves, MAD tables, figures and pages ([`measurements`]), and from `gradlens train` run
//! directories to the training view ([`training`]). [`discover`] finds and identifies the files,
//! [`rows`] reads them, [`plot`] draws, [`pages`] writes Markdown and HTML, [`compare`] checks one
//! JSONL against another.

pub mod compare;
pub mod discover;
pub mod measurements;
pub mod pages;
pub mod plot;
pub mod rows;
pub mod summary;
pub mod training;

pub use measurements::{build, build_with, default_out};
pub use summary::{ReportOptions, ReportSummary};

use anyhow::Result;
use std::path::{Path, PathBuf};

/// [`build`], then the warnings on stderr and one line saying where the report is (for the CLIs).
pub fn build_and_print(inputs: &[PathBuf], out: &Path) -> Result<ReportSummary> {
    build_and_print_with(inputs, out, &ReportOptions::default())
}

/// [`build_and_print`] with the report's options.
pub fn build_and_print_with(
    inputs: &[PathBuf],
    out: &Path,
    opts: &ReportOptions,
) -> Result<ReportSummary> {
    // Run directories of `gradlens train` get the training view; the rest the paper's.
    let (runs, rest): (Vec<PathBuf>, Vec<PathBuf>) = inputs
        .iter()
        .cloned()
        .partition(|p| training::is_run_dir(p));
    if !runs.is_empty() {
        let r = training::build(&runs, out)?;
        println!(
            "training report of {} run(s), {} figure(s): {}",
            r.files,
            r.figures.len(),
            out.join("training.html").display()
        );
        if rest.is_empty() {
            return Ok(r);
        }
    }
    let r = measurements::build_with(&rest, out, opts)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "report of {} file(s), {} figure(s): {}",
        r.files,
        r.figures.len(),
        out.join("report.html").display()
    );
    Ok(r)
}
