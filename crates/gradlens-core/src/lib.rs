//! Loading of Hugging Face checkpoint directories: `config.json` and the weights in safetensors
//! (one `model.safetensors` or shards listed by `model.safetensors.index.json`), f32/f16/bf16,
//! converted to the compute dtype of a Burn backend.
//!
//! Every tensor of a checkpoint must be claimed by the model that loads it: [`Checkpoint::finish`]
//! reports what was left over, [`Checkpoint::take`] what is missing or mis-shaped. Errors name the
//! file and the problem.

mod checkpoint;
mod error;
pub mod gguf;
pub mod hub;

pub use checkpoint::{Checkpoint, Described, HostTensor, StoredDtype};
pub use error::{CheckpointError, Result};

use serde::de::DeserializeOwned;
use std::path::Path;

/// Parse a family's configuration from the raw `config.json` value, naming the file on error.
/// The message names the field (`hidden_size: invalid type: string "64", expected usize`).
pub fn parse_config<T: DeserializeOwned>(path: &Path, value: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner().to_string();
        CheckpointError::Config {
            path: path.to_path_buf(),
            message: if field == "." {
                inner
            } else {
                format!("field `{field}`: {inner}")
            },
        }
    })
}
