//! `gradlens grads`: measure every sample of a data file into a resumable JSONL.

use crate::backend::GradBackend;
use crate::backend::{BackendJob, Device, Dtype, dispatch};
use crate::data::{Record, load_records};
use crate::measure::{HostGrads, sample_grads};
use crate::output::{JsonlAppender, done_indices, skipped_path};
use crate::sample::{Preparation, PromptMode, prepare};
use crate::stats::{GradStats, Spectra, stats_from};
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result};
use gradlens_models::{LoadedModel, paper_selector};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub measured: usize,
    pub skipped: usize,
    pub already_done: usize,
    pub seconds: f64,
}

impl RunSummary {
    pub fn line(&self, out: &Path) -> String {
        let rate = if self.seconds > 0.0 {
            self.measured as f64 / self.seconds
        } else {
            0.0
        };
        format!(
            "measured {} sample(s), skipped {}, {} already done, in {:.1} s ({:.3} samples/s) -> {}",
            self.measured,
            self.skipped,
            self.already_done,
            self.seconds,
            rate,
            out.display()
        )
    }
}

/// A loaded model and its tokenizer, ready to measure records.
pub struct Measurer<B: GradBackend> {
    pub model: LoadedModel<B>,
    pub tokenizer: TextTokenizer,
    pub mode: PromptMode,
    /// How singular values are computed (default: auto).
    pub spectra: Spectra,
    /// Also write every singular value above 1e-12·σ_max to `<out>.spectrum.jsonl`.
    pub save_spectrum: bool,
    /// Pad each sequence to a multiple of this many tokens (1: none; see
    /// [`crate::sample::Prepared::padded_ids`]).
    pub pad_to: usize,
}

/// The part of a sample that needs the model (forward and backward), handed to the statistics.
pub enum Work {
    Measured {
        index: usize,
        instr: String,
        output: String,
        loss: f64,
        n_tokens: usize,
        n_loss_tokens: usize,
        grads: HostGrads,
    },
    Skipped {
        index: usize,
        reason: String,
    },
}

/// One sample's JSONL line and, when asked, its spectrum line.
pub struct Finished {
    pub line: Map<String, Value>,
    pub spectrum: Option<Map<String, Value>>,
}

/// The statistics of one measured sample (no model needed: runs on a worker thread).
pub fn finish(
    work: Work,
    save_spectrum: bool,
) -> Result<std::result::Result<Finished, (usize, String)>> {
    let (index, instr, output, loss, n_tokens, n_loss_tokens, grads) = match work {
        Work::Skipped { index, reason } => return Ok(Err((index, reason))),
        Work::Measured {
            index,
            instr,
            output,
            loss,
            n_tokens,
            n_loss_tokens,
            grads,
        } => (index, instr, output, loss, n_tokens, n_loss_tokens, grads),
    };
    let spectra_values = grads.spectra().with_context(|| format!("sample {index}"))?;
    let mut stats = Vec::with_capacity(grads.len());
    let mut spectrum_line = save_spectrum.then(Map::new);
    if let Some(l) = &mut spectrum_line {
        l.insert("index".into(), json!(index));
    }
    for ((name, entries), s) in grads.entries().into_iter().zip(&spectra_values) {
        if let Some(l) = &mut spectrum_line {
            let floor = 1e-12 * s.first().copied().unwrap_or(0.0);
            l.insert(
                name.clone(),
                json!(
                    s.iter()
                        .copied()
                        .filter(|&x| x > floor)
                        .collect::<Vec<f64>>()
                ),
            );
        }
        stats.push((name, stats_from(entries, s)));
    }
    let line = sample_line(
        index,
        &instr,
        &output,
        loss,
        n_tokens,
        n_loss_tokens,
        &stats,
    );
    Ok(Ok(Finished {
        line,
        spectrum: spectrum_line,
    }))
}

impl<B: GradBackend> Measurer<B> {
    pub fn load(
        model_dir: &Path,
        max_length: usize,
        mode: PromptMode,
        device: &B::Device,
    ) -> Result<Self> {
        let tokenizer = TextTokenizer::from_dir(model_dir, max_length)?;
        let model = gradlens_models::load::<B>(model_dir, device, &paper_selector)?;
        Ok(Self {
            model,
            tokenizer,
            mode,
            spectra: Spectra::default(),
            save_spectrum: false,
            pad_to: 1,
        })
    }

    /// Tokenise, forward and backward one record (or say why it is skipped).
    pub fn forward_backward(&self, index: usize, record: &Record) -> Result<Work> {
        let prepared = match prepare(&self.tokenizer, &self.mode, record)? {
            Preparation::Ready(p) => p,
            Preparation::Skip(reason) => return Ok(Work::Skipped { index, reason }),
        };
        let vocab = self.model.model.vocab_size();
        if let Some(&bad) = prepared.ids.iter().find(|&&id| id as usize >= vocab) {
            anyhow::bail!(
                "{}: sample {index}: token id {bad} is outside the model's vocabulary of {vocab}: \
                 tokenizer and checkpoint do not belong together",
                self.tokenizer.path().display()
            );
        }
        let sample = sample_grads(&self.model, &prepared, self.spectra, self.pad_to);
        if !sample.loss.is_finite() {
            return Ok(Work::Skipped {
                index,
                reason: format!("non-finite loss {}", sample.loss),
            });
        }
        Ok(Work::Measured {
            index,
            instr: record.instr(),
            output: record.output.clone(),
            loss: sample.loss,
            n_tokens: prepared.ids.len(),
            n_loss_tokens: prepared.n_loss_tokens(),
            grads: sample.grads,
        })
    }

    /// Forward and backward of one record without any statistics (for the benchmark); `None`
    /// when the record is skipped.
    pub fn forward_backward_only(&self, record: &Record) -> Result<Option<usize>> {
        match prepare(&self.tokenizer, &self.mode, record)? {
            Preparation::Ready(p) => {
                crate::measure::forward_backward_only(&self.model, &p, self.pad_to);
                Ok(Some(p.ids.len()))
            }
            Preparation::Skip(_) => Ok(None),
        }
    }

    /// The JSONL line of one record, or the reason it is skipped (no pipelining).
    pub fn measure(
        &self,
        index: usize,
        record: &Record,
    ) -> Result<std::result::Result<Map<String, Value>, String>> {
        Ok(finish(self.forward_backward(index, record)?, false)?
            .map(|f| f.line)
            .map_err(|(_, r)| r))
    }

    /// Measure `records[range]` into `out`, skipping indices already there or in the sidecar.
    /// The statistics of sample i run on a worker thread while sample i+1 runs forward and
    /// backward; lines are written in data order.
    pub fn measure_file(
        &self,
        records: &[Record],
        range: std::ops::Range<usize>,
        out: &Path,
        bar: Option<&ProgressBar>,
        overall: Option<&ProgressBar>,
    ) -> Result<RunSummary> {
        let t0 = Instant::now();
        let skipped_file = skipped_path(out);
        let mut done = done_indices(out)?;
        done.extend(done_indices(&skipped_file)?);
        let pending: Vec<usize> = range.clone().filter(|i| !done.contains(i)).collect();
        let already_done = range.len() - pending.len();
        if let Some(bar) = bar {
            bar.set_length(range.len() as u64);
            bar.set_position(already_done as u64);
            bar.reset_eta();
        }
        if let Some(o) = overall {
            o.inc(already_done as u64);
        }
        let mut writer = JsonlAppender::open(out)?;
        let spectrum_file = spectrum_path(out);
        let save_spectrum = self.save_spectrum;
        let (bar, overall) = (bar.cloned(), overall.cloned());
        let (measured, skipped) = std::thread::scope(|scope| -> Result<(usize, usize)> {
            // At most one sample waits for its statistics while the next one is computed.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Work>(1);
            let worker = scope.spawn(move || -> Result<(usize, usize)> {
                let (mut measured, mut skipped) = (0, 0);
                let mut skip_writer: Option<JsonlAppender> = None;
                let mut spectrum_writer = if save_spectrum {
                    Some(JsonlAppender::open(&spectrum_file)?)
                } else {
                    None
                };
                for work in rx {
                    match finish(work, save_spectrum)? {
                        Ok(f) => {
                            if let (Some(w), Some(l)) = (&mut spectrum_writer, &f.spectrum) {
                                w.append(l)?;
                            }
                            writer.append(&f.line)?;
                            measured += 1;
                        }
                        Err((index, reason)) => {
                            let msg =
                                format!("{}: sample {index} skipped: {reason}", out.display());
                            match &bar {
                                Some(b) => b.println(format!("warning: {msg}")),
                                None => eprintln!("warning: {msg}"),
                            }
                            let w = match &mut skip_writer {
                                Some(w) => w,
                                None => skip_writer.insert(JsonlAppender::open(&skipped_file)?),
                            };
                            let mut line = Map::new();
                            line.insert("index".into(), json!(index));
                            line.insert("reason".into(), json!(reason));
                            w.append(&line)?;
                            skipped += 1;
                        }
                    }
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                    if let Some(o) = &overall {
                        o.inc(1);
                    }
                }
                Ok((measured, skipped))
            });
            let mut failure = None;
            for index in pending {
                match self.forward_backward(index, &records[index]) {
                    Ok(work) => {
                        if tx.send(work).is_err() {
                            break; // the worker failed: its error is reported below
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            drop(tx);
            let counts = worker
                .join()
                .map_err(|_| anyhow::anyhow!("the statistics thread panicked"))??;
            match failure {
                Some(e) => Err(e),
                None => Ok(counts),
            }
        })?;
        Ok(RunSummary {
            measured,
            skipped,
            already_done,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// `<out>.spectrum.jsonl` beside `<out>.jsonl`.
pub fn spectrum_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.spectrum.jsonl"))
}

/// One JSONL line in the paper's format (plus `index`, `n_tokens`, `n_loss_tokens`).
pub fn sample_line(
    index: usize,
    instr: &str,
    output: &str,
    loss: f64,
    n_tokens: usize,
    n_loss_tokens: usize,
    stats: &[(String, GradStats)],
) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("index".into(), json!(index));
    line.insert("instruction".into(), json!(instr));
    line.insert("output".into(), json!(output));
    line.insert("loss".into(), json!(loss));
    line.insert("n_tokens".into(), json!(n_tokens));
    line.insert("n_loss_tokens".into(), json!(n_loss_tokens));
    for (name, s) in stats {
        line.insert(
            name.clone(),
            serde_json::to_value(s).expect("stats serialise"),
        );
    }
    line
}

/// A progress bar with samples/s and ETA (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} samples  {per_sec}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(label.to_string());
    bar
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
    let records = load_records(&opts.data)?;
    let range = record_range(records.len(), opts.start, opts.limit);
    let mut measurer =
        Measurer::<B>::load(&opts.model, opts.max_length, opts.mode.clone(), device)?;
    measurer.spectra = opts.spectra;
    measurer.save_spectrum = opts.save_spectrum;
    measurer.pad_to = opts.pad_to.unwrap_or(opts.backend.default_pad_to());
    let bar = opts
        .progress
        .then(|| progress_bar(range.len() as u64, "grads"));
    let summary = measurer.measure_file(&records, range, &opts.out, bar.as_ref(), None)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(summary)
}
