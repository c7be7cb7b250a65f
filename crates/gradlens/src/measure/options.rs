//! One run's options — how a model is run on samples, what `grads`, `train`, sweeps and `bench`
//! share ([`RunOptions`]), with its defaults written once — and their checks before anything is
//! read.

use crate::backend::{Device, Dtype};
use crate::prepare::PromptMode;
use crate::spectra::stats::Spectra;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The tokens a sample is truncated to unless told otherwise (the paper's 1024).
pub const DEFAULT_MAX_LENGTH: usize = 1024;

/// The largest `--pad-to` accepted (padding beyond a sequence's length only costs time).
pub const MAX_PAD_TO: usize = 1 << 16;

/// How a model is run on samples. Every command that measures embeds it; its defaults are
/// [`RunOptions::new`]'s (the command lines take theirs from [`DEFAULT_MAX_LENGTH`] and the types'
/// `Default`s).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The checkpoint directory.
    pub model: PathBuf,
    /// A PEFT LoRA adapter merged into the model on load.
    pub adapter: Option<PathBuf>,
    /// Tokens per sample (longer ones are truncated).
    pub max_length: usize,
    /// The compute dtype.
    pub dtype: Dtype,
    /// Where the model runs.
    pub backend: Device,
    /// How a record becomes text (base, or the chat template).
    pub mode: PromptMode,
    /// How singular values are computed.
    pub spectra: Spectra,
    /// Pad each sequence to a multiple of this (`None`: the backend's default, see
    /// [`RunOptions::pad_to`]).
    pub pad_to: Option<usize>,
    /// Memory (bytes) the run may plan for instead of what the machine has available.
    pub max_memory: Option<u64>,
}

impl RunOptions {
    /// The defaults, for the checkpoint `model`: base prompts, f32 on the CPU, 1024 tokens,
    /// singular values as `auto` picks, no adapter, the backend's padding.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            adapter: None,
            max_length: DEFAULT_MAX_LENGTH,
            dtype: Dtype::default(),
            backend: Device::default(),
            mode: PromptMode::Base,
            spectra: Spectra::default(),
            pad_to: None,
            max_memory: None,
        }
    }

    /// Refuse what no data or checkpoint can make right, before anything is read.
    pub fn check(&self) -> Result<()> {
        check_options(self.max_length, self.pad_to)
    }

    /// The padding multiple: the one asked for, else 64 on CUDA (fewer distinct shapes to
    /// compile kernels for) and 1 (none) on the CPU.
    pub fn pad_to(&self) -> usize {
        self.pad_to.unwrap_or(self.backend.default_pad_to())
    }

    /// Refuse a model and sample length that would not fit in memory ([`check_memory`]).
    pub fn check_memory(&self) -> Result<()> {
        check_memory(
            self.backend,
            self.dtype,
            &self.model,
            self.max_length,
            self.pad_to(),
            self.max_memory,
        )
    }
}

/// Options that no data or checkpoint can make right, refused before anything is read.
pub fn check_options(max_length: usize, pad_to: Option<usize>) -> Result<()> {
    anyhow::ensure!(max_length > 0, "--max-length 0: need at least 1 token");
    if let Some(p) = pad_to {
        anyhow::ensure!(
            (1..=MAX_PAD_TO).contains(&p),
            "--pad-to {p}: expected 1 to {MAX_PAD_TO}"
        );
    }
    Ok(())
}

/// Refuse a model and sample length that would not fit in memory (CPU backends; see
/// [`crate::measure::resources`]).
pub fn check_memory(
    backend: Device,
    dtype: Dtype,
    model: &Path,
    max_length: usize,
    pad_to: usize,
    max_memory: Option<u64>,
) -> Result<()> {
    if matches!(backend, Device::Cuda(_)) {
        return Ok(());
    }
    let tokens = max_length.div_ceil(pad_to.max(1)) * pad_to.max(1);
    let bytes = match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    crate::measure::resources::check_fits(model, tokens, bytes, max_memory).map(|_| ())
}
