//! Instruction data: a JSON array of `{"instruction", "input", "output"}` records, the format of
//! the paper's files. Strings are kept byte for byte.

use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub instruction: String,
    /// Empty when the record has none.
    pub input: String,
    pub output: String,
}

impl Record {
    /// The paper's prompt: the instruction, plus `"\n" + input` when input is non-empty.
    pub fn instr(&self) -> String {
        if self.input.is_empty() {
            self.instruction.clone()
        } else {
            format!("{}\n{}", self.instruction, self.input)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error(
        "{path}: expected a JSON array of {{instruction, input, output}} records, found {found}"
    )]
    NotArray { path: PathBuf, found: &'static str },
    #[error("{path}: record {index}: {message}")]
    Record {
        path: PathBuf,
        index: usize,
        message: String,
    },
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Read and validate a data file. Errors name the file and the record index.
pub fn load_records(path: &Path) -> Result<Vec<Record>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_records(path, &text)
}

/// Validate records already read from `path` (named in errors).
pub fn parse_records(path: &Path, text: &str) -> Result<Vec<Record>, DataError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let Value::Array(items) = value else {
        return Err(DataError::NotArray {
            path: path.to_path_buf(),
            found: kind(&value),
        });
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let err = |message: String| DataError::Record {
                path: path.to_path_buf(),
                index,
                message,
            };
            let Value::Object(map) = item else {
                return Err(err(format!("expected an object, found {}", kind(&item))));
            };
            let string = |key: &str, required: bool| -> Result<String, DataError> {
                match map.get(key) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    None | Some(Value::Null) if !required => Ok(String::new()),
                    None => Err(err(format!("missing field {key:?}"))),
                    Some(other) => Err(err(format!(
                        "field {key:?} must be a string, found {}",
                        kind(other)
                    ))),
                }
            };
            Ok(Record {
                instruction: string("instruction", true)?,
                input: string("input", false)?,
                output: string("output", true)?,
            })
        })
        .collect()
}
