//! What a report is asked ([`ReportOptions`]) and what it found ([`ReportSummary`]).

use std::path::PathBuf;

/// What a report run found, for messages and tests.
#[derive(Debug, Clone, Default)]
pub struct ReportSummary {
    pub files: usize,
    pub figures: Vec<PathBuf>,
    pub warnings: Vec<String>,
    pub out: PathBuf,
}

/// Choices of a report.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportOptions {
    /// One y scale across the conditions of a figure row (`--shared-y`).
    pub shared_y: bool,
}
