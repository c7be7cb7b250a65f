//! `gradlens grads`: measure every sample of a data file into a resumable JSONL.

use crate::backend::{CpuF32, CpuF64, Dtype};
use crate::data::{Record, load_records};
use crate::measure::sample_grads;
use crate::output::{JsonlAppender, done_indices, skipped_path};
use crate::sample::{Preparation, PromptMode, prepare};
use crate::stats::{GradStats, grad_stats};
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
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
    pub mode: PromptMode,
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
pub struct Measurer<B: AutodiffBackend> {
    pub model: LoadedModel<B>,
    pub tokenizer: TextTokenizer,
    pub mode: PromptMode,
}

impl<B: AutodiffBackend> Measurer<B> {
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
        })
    }

    /// The JSONL line of one record, or the reason it is skipped.
    pub fn measure(
        &self,
        index: usize,
        record: &Record,
    ) -> Result<std::result::Result<Map<String, Value>, String>> {
        let prepared = match prepare(&self.tokenizer, &self.mode, record)? {
            Preparation::Ready(p) => p,
            Preparation::Skip(reason) => return Ok(Err(reason)),
        };
        let vocab = self.model.model.vocab_size();
        if let Some(&bad) = prepared.ids.iter().find(|&&id| id as usize >= vocab) {
            anyhow::bail!(
                "{}: sample {index}: token id {bad} is outside the model's vocabulary of {vocab}: \
                 tokenizer and checkpoint do not belong together",
                self.tokenizer.path().display()
            );
        }
        let sample = sample_grads(&self.model, &prepared);
        if !sample.loss.is_finite() {
            return Ok(Err(format!("non-finite loss {}", sample.loss)));
        }
        let mut stats = Vec::with_capacity(sample.grads.len());
        for (name, g) in &sample.grads {
            stats.push((
                name.clone(),
                grad_stats(g).with_context(|| format!("sample {index}: {name}"))?,
            ));
        }
        Ok(Ok(sample_line(
            index,
            record,
            sample.loss,
            prepared.ids.len(),
            prepared.n_loss_tokens(),
            &stats,
        )))
    }

    /// Measure `records[range]` into `out`, skipping indices already there or in the sidecar.
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
        let mut summary = RunSummary {
            already_done: range.len() - pending.len(),
            ..Default::default()
        };
        if let Some(o) = overall {
            o.inc(summary.already_done as u64);
        }
        if let Some(bar) = bar {
            bar.set_length(range.len() as u64);
            bar.set_position(summary.already_done as u64);
            bar.reset_eta();
        }
        let mut writer = JsonlAppender::open(out)?;
        let mut skip_writer: Option<JsonlAppender> = None;
        for index in pending {
            match self.measure(index, &records[index])? {
                Ok(line) => {
                    writer.append(&line)?;
                    summary.measured += 1;
                }
                Err(reason) => {
                    let msg = format!("{}: sample {index} skipped: {reason}", out.display());
                    match bar {
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
                    summary.skipped += 1;
                }
            }
            if let Some(bar) = bar {
                bar.inc(1);
            }
            if let Some(o) = overall {
                o.inc(1);
            }
        }
        summary.seconds = t0.elapsed().as_secs_f64();
        Ok(summary)
    }
}

/// One JSONL line in the paper's format (plus `index`, `n_tokens`, `n_loss_tokens`).
pub fn sample_line(
    index: usize,
    record: &Record,
    loss: f64,
    n_tokens: usize,
    n_loss_tokens: usize,
    stats: &[(String, GradStats)],
) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("index".into(), json!(index));
    line.insert("instruction".into(), json!(record.instr()));
    line.insert("output".into(), json!(record.output));
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
    match opts.dtype {
        Dtype::F32 => run_on::<CpuF32>(opts, &Default::default()),
        Dtype::F64 => run_on::<CpuF64>(opts, &Default::default()),
    }
}

/// The records to measure: `[start, start + limit)` within the file.
pub fn record_range(len: usize, start: usize, limit: Option<usize>) -> std::ops::Range<usize> {
    let start = start.min(len);
    let end = limit.map_or(len, |n| start.saturating_add(n).min(len));
    start..end
}

pub fn run_on<B: AutodiffBackend>(opts: &GradsOptions, device: &B::Device) -> Result<RunSummary> {
    let records = load_records(&opts.data)?;
    let range = record_range(records.len(), opts.start, opts.limit);
    let measurer = Measurer::<B>::load(&opts.model, opts.max_length, opts.mode.clone(), device)?;
    let bar = opts
        .progress
        .then(|| progress_bar(range.len() as u64, "grads"));
    let summary = measurer.measure_file(&records, range, &opts.out, bar.as_ref(), None)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(summary)
}
