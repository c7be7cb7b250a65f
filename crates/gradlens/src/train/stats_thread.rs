//! The statistics thread of a training run: the singular values of every gradient of a step
//! (each sample's with `--per-sample`, the batch's), computed while the main thread runs the next
//! samples forward and backward, and the lines appended in order.

use super::records::{PerSampleLine, StepLine};
use crate::measure::backward::HostGrads;
use crate::measure::{Work, finish, statistics};
use crate::sink::output::JsonlAppender;
use anyhow::Result;

/// What the statistics thread is handed, in order: with `--per-sample` each sample's gradients as
/// soon as its backward pass is done, then the step (its line without the statistics, and the
/// batch gradient of every measured weight when the step measures).
pub(super) enum StatsJob {
    Sample {
        step: usize,
        work: Work,
    },
    Step {
        line: StepLine,
        batch: Option<HostGrads>,
    },
}

/// A sample's line of `per_sample.jsonl`: its statistics at step `step`.
fn sample_line(step: usize, work: Work) -> Result<PerSampleLine> {
    let f = finish(work, false)
        .map_err(|s| anyhow::anyhow!("step {step}: sample {}: {}", s.index, s.problem()))?;
    Ok(PerSampleLine {
        step,
        sample: f.line,
    })
}

/// A step's line with the statistics of its batch gradient.
fn step_line(mut line: StepLine, batch: Option<HostGrads>) -> Result<StepLine> {
    let step = line.step;
    if let Some(batch) = &batch {
        let (stats, _) = statistics(step, batch)
            .map_err(|s| anyhow::anyhow!("step {step}: the batch gradient: {}", s.problem()))?;
        line.weights = stats.into_iter().collect();
    }
    Ok(line)
}

/// The statistics thread of a run: the singular values of every gradient of a step — each
/// sample's, the batch's — computed while the main thread runs the next samples forward and
/// backward, and the lines appended in order (a step's samples, then the step). The run waits for
/// it ([`StatsThread::drain`]) before a checkpoint, so that a checkpoint's steps are always in the
/// files.
pub(super) struct StatsThread<'scope> {
    tx: Option<std::sync::mpsc::SyncSender<StatsJob>>,
    done: std::sync::mpsc::Receiver<usize>,
    handle: Option<std::thread::ScopedJoinHandle<'scope, Result<()>>>,
    written: usize,
}

impl<'scope> StatsThread<'scope> {
    pub(super) fn start<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        mut steps_out: JsonlAppender,
        mut per_sample_out: Option<JsonlAppender>,
        written: usize,
    ) -> Self {
        // One job waits while the next sample runs forward and backward.
        let (tx, rx) = std::sync::mpsc::sync_channel::<StatsJob>(1);
        let (done_tx, done) = std::sync::mpsc::channel();
        let handle = scope.spawn(move || -> Result<()> {
            let mut samples = Vec::new();
            for job in rx {
                match job {
                    StatsJob::Sample { step, work } => samples.push(sample_line(step, work)?),
                    StatsJob::Step { line, batch } => {
                        let line = step_line(line, batch)?;
                        if let Some(w) = &mut per_sample_out {
                            for l in samples.drain(..) {
                                w.append(&l)?;
                            }
                        }
                        steps_out.append(&line)?;
                        let _ = done_tx.send(line.step);
                    }
                }
            }
            Ok(())
        });
        Self {
            tx: Some(tx),
            done,
            handle: Some(handle),
            written,
        }
    }

    /// Hand a job over; the thread's own error if it has stopped.
    pub(super) fn send(&mut self, job: StatsJob) -> Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if sent { Ok(()) } else { self.finish() }
    }

    /// Wait until every step up to `step` is written.
    pub(super) fn drain(&mut self, step: usize) -> Result<()> {
        while self.written < step {
            match self.done.recv() {
                Ok(s) => self.written = s,
                Err(_) => return self.finish(),
            }
        }
        Ok(())
    }

    /// Let the thread write what it holds and end; its error, if it had one.
    pub(super) fn finish(&mut self) -> Result<()> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the statistics thread panicked"))?,
            None => Ok(()),
        }
    }
}
