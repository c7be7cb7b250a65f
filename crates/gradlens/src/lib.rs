//! gradlens: the layer-wise gradient spectra of arXiv 2410.23743 ("What Happened in LLMs Layers
//! when Trained for Fast vs. Slow Thinking: A Gradient Perspective"), for Hugging Face checkpoints,
//! on any Burn backend.
//!
//! One sample = one forward and one backward pass (batch 1) with the causal-LM loss on the
//! response tokens only; the gradient of every measured weight (attention projections and square
//! matrices) is summarised by its entries and its singular values (faer).

pub mod backend;
pub mod bench;
pub mod chat;
pub mod compare;
pub mod data;
pub mod datasets;
pub mod fixtures;
pub mod grads;
pub mod gram;
pub mod householder;
pub mod init;
pub mod measure;
pub mod model_source;
pub mod output;
pub mod paths;
pub mod provenance;
pub mod report;
pub mod reporting;
pub mod resources;
pub mod sample;
pub mod signals;
pub mod stats;
pub mod svd;
pub mod sweep;
pub mod tokenizer;
pub mod train;
pub mod training_report;
pub mod two_stage;

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
