//! Load: what a run reads before anything is computed — the data file's records ([`data`]), the
//! dataset manifests ([`datasets`], [`paths`]), a checkpoint named by folder, hub id or GGUF file
//! ([`model`]), and the fingerprints outputs record of them ([`fingerprint`]).

pub mod data;
pub mod datasets;
pub mod fingerprint;
pub mod model;
pub mod paths;
