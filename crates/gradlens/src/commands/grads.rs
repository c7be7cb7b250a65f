//! `gradlens grads`: measure every sample of a data file into a resumable JSONL (a client of
//! [`crate::measure::Measurer`]).

use crate::backend::{BackendJob, GradBackend, dispatch};
use crate::load::data::load_records;
use crate::measure::options::RunOptions;
use crate::measure::{Measurer, RunSummary, progress_bar};
use anyhow::Result;
use std::path::PathBuf;

/// Options of one `grads` run.
#[derive(Debug, Clone)]
pub struct GradsOptions {
    /// How the model runs.
    pub run: RunOptions,
    pub data: PathBuf,
    pub out: PathBuf,
    /// First record index to measure.
    pub start: usize,
    /// At most this many records from `start`.
    pub limit: Option<usize>,
    pub save_spectrum: bool,
    /// Measure again the samples recorded in `<out>.skipped.jsonl`.
    pub retry_skipped: bool,
    pub progress: bool,
}

impl GradsOptions {
    /// Every record of `data` into `out`, with `run`'s model; no spectrum file, a progress bar.
    pub fn new(run: RunOptions, data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            run,
            data: data.into(),
            out: out.into(),
            start: 0,
            limit: None,
            save_spectrum: false,
            retry_skipped: false,
            progress: true,
        }
    }
}

/// Run `gradlens grads` with the given options.
pub fn run_grads(opts: &GradsOptions) -> Result<RunSummary> {
    struct Job<'a>(&'a GradsOptions);
    impl BackendJob for Job<'_> {
        type Output = RunSummary;
        fn run<B: GradBackend>(self, device: &B::Device) -> Result<RunSummary> {
            run_on::<B>(self.0, device)
        }
    }
    dispatch(opts.run.backend, opts.run.dtype, Job(opts))
}

/// The records to measure: `[start, start + limit)` within the file.
pub fn record_range(len: usize, start: usize, limit: Option<usize>) -> std::ops::Range<usize> {
    let start = start.min(len);
    let end = limit.map_or(len, |n| start.saturating_add(n).min(len));
    start..end
}

pub fn run_on<B: GradBackend>(opts: &GradsOptions, device: &B::Device) -> Result<RunSummary> {
    opts.run.check()?;
    let records = load_records(&opts.data)?;
    anyhow::ensure!(
        !records.is_empty(),
        "{}: holds no records: nothing to measure",
        opts.data.display()
    );
    anyhow::ensure!(
        opts.start < records.len(),
        "--start {}: past the end of {} ({} records, indices 0 to {})",
        opts.start,
        opts.data.display(),
        records.len(),
        records.len() - 1
    );
    let range = record_range(records.len(), opts.start, opts.limit);
    opts.run.check_memory()?;
    let mut measurer = Measurer::<B>::from_options(&opts.run, device)?;
    measurer.save_spectrum = opts.save_spectrum;
    measurer.retry_skipped = opts.retry_skipped;
    let bar = opts
        .progress
        .then(|| progress_bar(range.len() as u64, "grads"));
    let summary =
        measurer.measure_file(&records, &opts.data, range, &opts.out, bar.as_ref(), None)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(summary)
}
