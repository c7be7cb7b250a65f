//! `gradlens grads`: measure every sample of a data file into a resumable JSONL (a client of
//! [`crate::measure::Measurer`]).

use crate::backend::{BackendJob, Device, Dtype, GradBackend, dispatch};
use crate::load::data::load_records;
use crate::measure::options::{check_memory, check_options};
use crate::measure::{Measurer, RunSummary, progress_bar};
use crate::prepare::PromptMode;
use crate::spectra::stats::Spectra;
use anyhow::Result;
use std::path::PathBuf;

/// Options of one `grads` run.
#[derive(Debug, Clone)]
pub struct GradsOptions {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    /// First record index to measure.
    pub start: usize,
    /// At most this many records from `start`.
    pub limit: Option<usize>,
    pub max_length: usize,
    pub dtype: Dtype,
    /// Where the model runs (cpu, cuda).
    pub backend: Device,
    pub mode: PromptMode,
    pub spectra: Spectra,
    pub save_spectrum: bool,
    /// Pad sequences to a multiple of this (default: 64 on CUDA, none on the CPU).
    pub pad_to: Option<usize>,
    /// Measure again the samples recorded in `<out>.skipped.jsonl`.
    pub retry_skipped: bool,
    /// Memory (bytes) the run may plan for instead of what the machine has available.
    pub max_memory: Option<u64>,
    /// A PEFT LoRA adapter folder merged into the model on load.
    pub adapter: Option<PathBuf>,
    pub progress: bool,
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
    dispatch(opts.backend, opts.dtype, Job(opts))
}

/// The records to measure: `[start, start + limit)` within the file.
pub fn record_range(len: usize, start: usize, limit: Option<usize>) -> std::ops::Range<usize> {
    let start = start.min(len);
    let end = limit.map_or(len, |n| start.saturating_add(n).min(len));
    start..end
}

pub fn run_on<B: GradBackend>(opts: &GradsOptions, device: &B::Device) -> Result<RunSummary> {
    check_options(opts.max_length, opts.pad_to)?;
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
    let pad_to = opts.pad_to.unwrap_or(opts.backend.default_pad_to());
    check_memory(
        opts.backend,
        opts.dtype,
        &opts.model,
        opts.max_length,
        pad_to,
        opts.max_memory,
    )?;
    let mut measurer =
        Measurer::<B>::load(&opts.model, opts.max_length, opts.mode.clone(), device)?;
    measurer.spectra = opts.spectra;
    measurer.save_spectrum = opts.save_spectrum;
    measurer.pad_to = pad_to;
    measurer.retry_skipped = opts.retry_skipped;
    if let Some(dir) = &opts.adapter {
        measurer.merge_adapter(dir)?;
    }
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
