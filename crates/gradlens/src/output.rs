//! Append-only JSONL files that survive interruption: every line is written whole with one
//! `write` and flushed; on resume a partial last line (from a kill mid-write) is cut off, and the
//! `index` of every complete line is known to be done.

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `index` values of the complete lines of `path` (empty when the file does not exist).
/// A trailing partial line is removed from the file, with a warning.
pub fn done_indices(path: &Path) -> Result<BTreeSet<usize>, OutputError> {
    let mut done = BTreeSet::new();
    if !path.exists() {
        return Ok(done);
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < bytes.len() {
        tracing::warn!(
            "{}: removing an incomplete last line ({} bytes) left by an interrupted run",
            path.display(),
            bytes.len() - complete
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(complete as u64).map_err(io(path))?;
    }
    for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let corrupt = |message: String| OutputError::Corrupt {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let v: Value =
            serde_json::from_slice(line).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        let index = v
            .get("index")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("no integer \"index\": not a gradlens output file".into()))?;
        done.insert(index as usize);
    }
    Ok(done)
}

/// Appends whole lines to a JSONL file.
pub struct JsonlAppender {
    path: PathBuf,
    file: File,
}

impl JsonlAppender {
    pub fn open(path: &Path) -> Result<Self, OutputError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Write one object as one line, in a single write, and flush it.
    pub fn append(&mut self, line: &Map<String, Value>) -> Result<(), OutputError> {
        let mut text = serde_json::to_string(line).expect("JSON maps serialise");
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(io(&self.path))?;
        self.file.flush().map_err(io(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `<out>.skipped.jsonl` beside `<out>.jsonl`.
pub fn skipped_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.skipped.jsonl"))
}
