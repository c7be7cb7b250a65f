//! Measure: one sample's forward and backward pass ([`backward`]), its gradients' statistics, and
//! a data file measured into a resumable JSONL by the [`Measurer`] — the engine of `grads`, `train`,
//! sweeps and `bench`. [`options`]: one run's options and their checks; [`resources`]: will it fit;
//! [`gram`]: the factors' R by Gram products where the factors are (`--spectra gram`).

pub mod backward;
pub mod gram;
pub mod line;
pub mod options;
pub mod resources;

use crate::backend::GradBackend;
use crate::load::data::Record;
use crate::measure::backward::{HostGrads, sample_grads};
use crate::measure::line::{SampleLine, SpectrumLine};
use crate::measure::options::RunOptions;
use crate::prepare::tokenizer::TextTokenizer;
use crate::prepare::{Preparation, PromptMode, prepare, prepare_for_model};
pub use crate::sink::output::spectrum_path;
use crate::sink::output::{JsonlAppender, SkippedLine, claim, skipped_path};
use crate::sink::provenance::{Provenance, Settings};
use crate::spectra::stats::{GradStats, Spectra, stats_from};
use anyhow::Result;
use gradlens_models::{LoadedModel, paper_selector};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// [`crate::prepare::Prepared::padded_ids`]).
    pub pad_to: usize,
    /// Measure again the samples an output's skipped file records.
    pub retry_skipped: bool,
    /// Compute a sample's statistics while the next sample runs forward and backward (the
    /// default), else one after the other; the output is the same. Measured on 2 cores with
    /// NdArray (SmolLM2-135M-Instruct), the overlap is faster (docs/performance.md "CPU speed").
    pub overlap: bool,
    /// The checkpoint directory (for the outputs' provenance).
    pub model_dir: PathBuf,
    /// A PEFT LoRA adapter merged into the model on load ([`Measurer::merge_adapter`]).
    pub adapter: Option<PathBuf>,
    /// Burn's name of the backend (for the outputs' provenance).
    pub backend_name: String,
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
    pub line: SampleLine,
    pub spectrum: Option<SpectrumLine>,
}

/// The statistics of one measured sample (no model needed: runs on a worker thread), or why it
/// is not a measurement: nothing to measure, a non-finite gradient, a singular value
/// decomposition that failed. A problem of one sample never ends the run.
pub fn finish(work: Work, save_spectrum: bool) -> std::result::Result<Finished, SkippedLine> {
    let (index, instruction, output, loss, n_tokens, n_loss_tokens, grads) = match work {
        Work::Skipped { index, reason } => {
            return Err(SkippedLine {
                index,
                reason,
                weight: None,
            });
        }
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
    let (stats, spectra_values) = statistics(index, &grads)?;
    let spectrum = save_spectrum.then(|| SpectrumLine {
        index,
        weights: stats
            .iter()
            .zip(&spectra_values)
            .map(|((name, _), s)| {
                let floor = 1e-12 * s.first().copied().unwrap_or(0.0);
                (
                    name.clone(),
                    s.iter().copied().filter(|&x| x > floor).collect(),
                )
            })
            .collect(),
    });
    let line = SampleLine {
        index: Some(index),
        instruction,
        output,
        loss: Some(loss),
        n_tokens: Some(n_tokens),
        n_loss_tokens: Some(n_loss_tokens),
        weights: stats.into_iter().collect(),
    };
    Ok(Finished { line, spectrum })
}

/// The statistics of every measured gradient (checkpoint names, in order) and their singular
/// values, or why they are not a measurement (a non-finite gradient, a failed decomposition);
/// `index` names the sample (or step) in the reason.
#[allow(clippy::type_complexity)]
pub fn statistics(
    index: usize,
    grads: &HostGrads,
) -> std::result::Result<(Vec<(String, GradStats)>, Vec<Vec<f64>>), SkippedLine> {
    let entries = grads.entries();
    for (name, e) in &entries {
        if ![e.mean, e.max, e.min, e.frobenius]
            .iter()
            .all(|x| x.is_finite())
        {
            return Err(SkippedLine {
                index,
                reason: format!(
                    "non-finite gradient (max {}, min {}, Frobenius norm {}): an overflow in the \
                     compute dtype, or non-finite weights",
                    e.max, e.min, e.frobenius
                ),
                weight: Some(name.clone()),
            });
        }
    }
    let mut spectra_values = Vec::with_capacity(entries.len());
    for ((name, _), r) in entries.iter().zip(grads.spectra_each()) {
        match r {
            Ok(v) => spectra_values.push(v),
            Err(e) => {
                return Err(SkippedLine {
                    index,
                    reason: e.to_string(),
                    weight: Some(name.clone()),
                });
            }
        }
    }
    let stats = entries
        .into_iter()
        .zip(&spectra_values)
        .map(|((name, e), s)| (name, stats_from(e, s)))
        .collect();
    Ok((stats, spectra_values))
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
            overlap: true,
            pad_to: 1,
            retry_skipped: false,
            model_dir: model_dir.to_path_buf(),
            adapter: None,
            backend_name: B::name(device),
        })
    }

    /// A measurer as `run` says: its checkpoint, sample length and prompt mode, singular values,
    /// padding, and adapter (merged on load).
    pub fn from_options(run: &RunOptions, device: &B::Device) -> Result<Self> {
        let mut m = Self::load(&run.model, run.max_length, run.mode.clone(), device)?;
        m.spectra = run.spectra;
        m.pad_to = run.pad_to();
        if let Some(dir) = &run.adapter {
            m.merge_adapter(dir)?;
        }
        Ok(m)
    }

    /// Merge the PEFT LoRA adapter in `dir` into the model: each adapted weight becomes
    /// `W + s · B A` (PEFT's `merge_and_unload`), and the outputs record the adapter.
    pub fn merge_adapter(&mut self, dir: &Path) -> Result<()> {
        let adapter = crate::load::adapter::read_peft_adapter(dir)?;
        crate::load::adapter::merge_into(&mut self.model, &adapter)?;
        self.adapter = Some(dir.to_path_buf());
        Ok(())
    }

    /// What an output measured by this measurer from `data` records of its making.
    pub fn provenance(&self, data: &Path) -> Result<Provenance> {
        let dtype = if <B::FloatElem as burn::tensor::Element>::dtype() == burn::tensor::DType::F64
        {
            "f64"
        } else {
            "f32"
        };
        Ok(Provenance::of(&Settings {
            model: &self.model_dir,
            adapter: self.adapter.as_deref(),
            data,
            dtype: dtype.into(),
            backend: self.backend_name.clone(),
            max_length: self.tokenizer.max_length(),
            prompt: self.mode.describe(),
            system_turn: self.mode.system_turn(),
            spectra: self.spectra.to_string(),
            save_spectrum: self.save_spectrum,
        })?)
    }

    /// Tokenise one record (the prompt rendered by the chat template in instruct mode) and check
    /// its token ids against the model's vocabulary.
    pub fn prepare(&self, index: usize, record: &Record) -> Result<Preparation> {
        prepare_for_model(
            &self.tokenizer,
            &self.mode,
            record,
            index,
            self.model.model.vocab_size(),
        )
    }

    /// Tokenise, forward and backward one record (or say why it is skipped).
    pub fn forward_backward(&self, index: usize, record: &Record) -> Result<Work> {
        let prepared = match self.prepare(index, record)? {
            Preparation::Ready(p) => p,
            Preparation::Skip(reason) => return Ok(Work::Skipped { index, reason }),
        };
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
                crate::measure::backward::forward_backward_only(&self.model, &p, self.pad_to);
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
    ) -> Result<std::result::Result<SampleLine, String>> {
        Ok(finish(self.forward_backward(index, record)?, false)
            .map(|f| f.line)
            .map_err(|s| s.reason))
    }

    /// Measure `records[range]` (read from the file `data`) into `out`, skipping indices already
    /// there or in the sidecar. The output is claimed first ([`claim`]): locked, and checked to be
    /// gradlens' own and made with this measurer's settings. The statistics of sample i run on a
    /// worker thread while sample i+1 runs forward and backward; lines are written in data order.
    pub fn measure_file(
        &self,
        records: &[Record],
        data: &Path,
        range: std::ops::Range<usize>,
        out: &Path,
        bar: Option<&ProgressBar>,
        overall: Option<&ProgressBar>,
    ) -> Result<RunSummary> {
        let t0 = Instant::now();
        // What the first record shows (a chat template that raises, a tokenizer that is not the
        // checkpoint's) refuses the run before its output is created.
        if !range.is_empty() {
            self.prepare(range.start, &records[range.start])?;
        }
        let claimed = claim(
            out,
            &self.provenance(data)?,
            &[
                ("is the run's data file", data),
                ("lies in the run's checkpoint folder", &self.model_dir),
            ],
            self.retry_skipped,
        )?;
        if claimed.retried > 0 {
            tracing::info!(
                "{}: measuring {} skipped sample(s) again",
                out.display(),
                claimed.retried
            );
        }
        let done = claimed.done;
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
        let created = claimed.created;
        let result = self.write_claimed(claimed.writer, records, pending, out, bar, overall);
        if result.is_err() {
            // A refused run leaves nothing behind (what it wrote stays, to be resumed).
            created.undo_if_empty(out);
        }
        let (measured, skipped) = result?;
        Ok(RunSummary {
            measured,
            skipped,
            already_done,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Measure `pending` into the claimed output (its writer): forward and backward here, the
    /// statistics and the writes on a worker thread. The counts measured and skipped.
    fn write_claimed(
        &self,
        mut writer: JsonlAppender,
        records: &[Record],
        pending: Vec<usize>,
        out: &Path,
        bar: Option<&ProgressBar>,
        overall: Option<&ProgressBar>,
    ) -> Result<(usize, usize)> {
        let skipped_file = skipped_path(out);
        let spectrum_file = spectrum_path(out);
        let save_spectrum = self.save_spectrum;
        let (bar, overall) = (bar.cloned(), overall.cloned());
        let overlap = self.overlap;
        std::thread::scope(|scope| -> Result<(usize, usize)> {
            // At most one sample waits for its statistics while the next one is computed; without
            // overlap the next one starts when the statistics thread says it is done.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Work>(1);
            let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<()>(1);
            let worker = scope.spawn(move || -> Result<(usize, usize)> {
                let (mut measured, mut skipped) = (0, 0);
                let mut skip_writer: Option<JsonlAppender> = None;
                let mut spectrum_writer = if save_spectrum {
                    Some(JsonlAppender::open(&spectrum_file)?)
                } else {
                    None
                };
                for work in rx {
                    match finish(work, save_spectrum) {
                        Ok(f) => {
                            if let (Some(w), Some(l)) = (&mut spectrum_writer, &f.spectrum) {
                                w.append(l)?;
                            }
                            writer.append(&f.line)?;
                            measured += 1;
                        }
                        Err(skip) => {
                            let msg = format!(
                                "{}: sample {} skipped: {}",
                                out.display(),
                                skip.index,
                                skip.problem()
                            );
                            match &bar {
                                Some(b) => b.println(format!("warning: {msg}")),
                                None => eprintln!("warning: {msg}"),
                            }
                            let w = match &mut skip_writer {
                                Some(w) => w,
                                None => skip_writer.insert(JsonlAppender::open(&skipped_file)?),
                            };
                            w.append(&skip)?;
                            skipped += 1;
                        }
                    }
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                    if let Some(o) = &overall {
                        o.inc(1);
                    }
                    if !overlap {
                        let _ = done_tx.send(());
                    }
                }
                Ok((measured, skipped))
            });
            let mut failure = None;
            for index in pending {
                match self.forward_backward(index, &records[index]) {
                    Ok(work) => {
                        if tx.send(work).is_err() || (!overlap && done_rx.recv().is_err()) {
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
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spectra::stats::{EntryStats, HostMatrix, MeasuredGrad, SpectrumSource};

    fn work(value: f64) -> Work {
        let g = |name: &str, v: f64| MeasuredGrad {
            name: name.into(),
            rows: 2,
            cols: 2,
            entries: EntryStats {
                mean: v / 4.0,
                max: v,
                min: 0.0,
                frobenius: v.abs(),
            },
            source: SpectrumSource::Dense(HostMatrix {
                rows: 2,
                cols: 2,
                data: vec![v, 0.0, 0.0, 0.0],
            }),
        };
        Work::Measured {
            index: 7,
            instr: "i".into(),
            output: "o".into(),
            loss: 1.0,
            n_tokens: 3,
            n_loss_tokens: 1,
            grads: HostGrads::F64(vec![g("a.weight", 1.0), g("b.weight", value)]),
        }
    }

    #[test]
    fn a_non_finite_gradient_skips_the_sample_naming_the_weight() {
        let f = finish(work(2.0), false).map_err(|s| s.reason).unwrap();
        assert_eq!(f.line.index, Some(7));
        for bad in [f64::INFINITY, f64::NAN] {
            let s = finish(work(bad), false).err().unwrap();
            assert_eq!(s.index, 7);
            assert_eq!(s.weight.as_deref(), Some("b.weight"));
            assert!(s.reason.starts_with("non-finite gradient"), "{}", s.reason);
        }
    }
}
