//! `gradlens report` and `cargo xtask report`: the command line of [`crate::report`].

use crate::report::{ReportOptions, build_and_print_with, default_out};
use anyhow::Result;
use std::path::PathBuf;

/// What `report` takes on the command line (both binaries).
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Folders (searched recursively) or JSONL files.
    #[arg(long = "in", required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// Output folder (default: <folder>/report, or <stem>-report beside a file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// One y scale for the conditions side by side (the paper's contrast is a difference in
    /// level; by default each chart fits its own curves).
    #[arg(long)]
    pub shared_y: bool,
}

/// Build the report and say where it is.
pub fn run(a: &ReportArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.inputs));
    build_and_print_with(
        &a.inputs,
        &out,
        &ReportOptions {
            shared_y: a.shared_y,
        },
    )
    .map(|_| ())
}
