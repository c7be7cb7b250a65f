//! The lines of a training run's JSONL files, typed: the writer and the readers (`report`,
//! the tests) share these structs.

use crate::measure::line::SampleLine;
use crate::spectra::stats::GradStats;
use serde::{Deserialize, Serialize};

/// One line of `steps.jsonl`: one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLine {
    /// 1-based.
    pub step: usize,
    /// The learning rate this step's update used.
    pub lr: f64,
    /// Token-weighted mean loss of the batch at the weights before the update.
    pub loss: f64,
    /// L2 norm of the batch gradient over every trained parameter, before clipping.
    pub grad_norm: f64,
    pub n_samples: usize,
    pub n_loss_tokens: usize,
    /// Data indices of the batch's samples, in order.
    pub samples: Vec<usize>,
    /// Per measured weight (checkpoint name, checkpoint order): the statistics of the batch
    /// gradient before clipping.
    #[serde(flatten)]
    pub weights: indexmap::IndexMap<String, GradStats>,
}

/// One line of `eval.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    /// Optimizer steps taken before the evaluation (0: the starting weights).
    pub step: usize,
    /// Token-weighted mean loss over the evaluation file's usable samples.
    pub loss: f64,
    pub n_samples: usize,
    pub n_loss_tokens: usize,
}

/// One line of `per_sample.jsonl`: the step and a `grads` line (the sample's own gradient at
/// that step's weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerSampleLine {
    /// The step whose weights the sample's gradient was taken at (1-based).
    pub step: usize,
    #[serde(flatten)]
    pub sample: SampleLine,
}

/// Any line of the run's files: only its step (to cut a run back to a checkpoint).
#[derive(Debug, Deserialize)]
pub struct StepOf {
    pub step: usize,
}
