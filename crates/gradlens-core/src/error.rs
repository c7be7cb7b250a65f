use std::path::PathBuf;

/// Everything that can be wrong with a checkpoint directory. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(
        "{path}: unsupported model_type {model_type:?} (supported: {supported})",
        supported = supported.join(", ")
    )]
    UnsupportedModel {
        path: PathBuf,
        model_type: String,
        supported: Vec<&'static str>,
    },
    #[error("{path}: broken safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{dir}: no weights found (expected model.safetensors or model.safetensors.index.json)")]
    NoWeights { dir: PathBuf },
    #[error("{dir}: missing tensor {name}")]
    MissingTensor { dir: PathBuf, name: String },
    #[error("{path}: tensor {name} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor {name} has unsupported dtype {dtype} (supported: F32, F16, BF16, F64)")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{dir}: unexpected tensor(s) the model does not use: {names}", names = names.join(", "))]
    UnexpectedTensors { dir: PathBuf, names: Vec<String> },
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
