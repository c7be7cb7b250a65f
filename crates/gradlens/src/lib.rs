//! gradlens: the layer-wise gradient spectra of arXiv 2410.23743 ("What Happened in LLMs Layers
//! when Trained for Fast vs. Slow Thinking: A Gradient Perspective"), for Hugging Face checkpoints,
//! on any Burn backend.
//!
//! One sample = one forward and one backward pass (batch 1) with the causal-LM loss on the
//! response tokens only; the gradient of every measured weight (attention projections and square
//! matrices) is summarised by its entries and its singular values (faer).
//!
//! The modules are the pipeline's stages, in the order data flows through them:
//! - [`load`]: the data file's records, dataset manifests, the checkpoint (folder, hub id, GGUF);
//! - [`prepare`]: a record as token ids and its loss span (chat template, tokenizer);
//! - [`measure`]: forward and backward, the gradients and their factors, one run's options
//!   ([`measure::options`]) and its typed output line ([`measure::line`]);
//! - [`spectra`]: statistics of a gradient, exactly from its factors (faer; no Burn);
//! - [`sink`]: resumable JSONL outputs and their provenance;
//! - [`report`]: curves, MAD tables, figures, Markdown and HTML, comparisons, the training view;
//! - [`train`]: fine-tuning (AdamW, LoRA) measuring every step, a client of [`measure`];
//! - [`commands`]: `grads`, `bench`, sweeps, `init`, `check` — thin clients of the stages;
//! - [`backend`]: the Burn backends and the dispatch of a job to one.

pub mod backend;
pub mod commands;
pub mod load;
pub mod measure;
pub mod prepare;
pub mod report;
pub mod sink;
pub mod spectra;
pub mod train;

pub use gradlens_core::{Checkpoint, CheckpointError, hub};
pub use gradlens_models::{LoadedModel, SUPPORTED, import_gguf, paper_selector};

/// An error and its causes on one line (`outer: cause: cause`), leaving out a cause whose text
/// the message already carries (many messages quote their source).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Warnings and `RUST_LOG` diagnostics on stderr, in colour only on a terminal (the binaries call
/// this first).
pub fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}
