//! Load: what a run reads before anything is computed — the data file's records ([`data`]), the
//! dataset manifests ([`datasets`], [`paths`]), a checkpoint named by folder, hub id or GGUF file
//! ([`model`]), a PEFT LoRA adapter ([`adapter`]), host tensors in safetensors files
//! ([`safetensors`]), and the fingerprints outputs record of them ([`fingerprint`]).

pub mod adapter;
pub mod data;
pub mod datasets;
pub mod fingerprint;
pub mod model;
pub mod paths;
pub mod safetensors;
