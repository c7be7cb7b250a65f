//! The transformer families gradlens measures, each a readable composition of [`blocks`].
//!
//! A family is one folder (`models/<family>/mod.rs`): its config defaults, a `load` function that
//! reads its config.json keys and the checkpoint's tensors into the shared blocks, and what its
//! GGUF files say (`GGUF`). Adding an architecture is that folder, its `pub mod` line below and
//! its line in the [`registry`] (see `models/README.md`).
//!
//! - [`family`]: the model trait, what a family's `load` returns, the loaded model, the capture of
//!   the gradients' factors;
//! - [`registry`]: `model_type` → family; loading, describing and importing (GGUF) through it;
//! - [`blocks`], [`config`]: the shared decoder blocks; the config keys every family shares and
//!   what a family's `load` starts from;
//! - [`loader`], [`params`], [`tensor`]: reading tensors, the parameters and their gradients;
//! - [`ops`], `cpu`: the backend operations the blocks use, and their NdArray kernels;
//! - [`gguf`]: what the families' GGUF declarations share.

pub mod blocks;
pub mod config;
mod cpu;
pub mod family;
pub mod gguf;
pub mod loader;
pub mod ops;
pub mod params;
pub mod registry;
pub mod tensor;

// The families (registered in registry.rs).
pub mod gemma;
pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod olmo2;
pub mod qwen2;
pub mod qwen3;

pub use config::FamilyConfig;
pub use family::{CausalLm, FamilyModel, LoadedModel};
pub use loader::{Loader, Selected, Selector, TrainSelector, paper_selector};
pub use ops::ModelBackend;
pub use params::{ParamReplacer, ParamValue, Parameter};
pub use registry::{SUPPORTED, describe, gguf_families, import_gguf, load, load_for_training};
