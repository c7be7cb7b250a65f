//! One run's options, checked before anything is read.

use anyhow::Result;
use std::path::Path;

/// The largest `--pad-to` accepted (padding beyond a sequence's length only costs time).
pub const MAX_PAD_TO: usize = 1 << 16;

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
    backend: crate::backend::Device,
    dtype: crate::backend::Dtype,
    model: &Path,
    max_length: usize,
    pad_to: usize,
    max_memory: Option<u64>,
) -> Result<()> {
    if matches!(backend, crate::backend::Device::Cuda(_)) {
        return Ok(());
    }
    let tokens = max_length.div_ceil(pad_to.max(1)) * pad_to.max(1);
    let bytes = match dtype {
        crate::backend::Dtype::F32 => 4,
        crate::backend::Dtype::F64 => 8,
    };
    crate::measure::resources::check_fits(model, tokens, bytes, max_memory).map(|_| ())
}
