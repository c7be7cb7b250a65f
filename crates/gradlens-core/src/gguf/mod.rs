//! GGUF files (llama.cpp's format, versions 2 and 3): the metadata, the tensor directory, and the
//! tensors dequantized ([`dequant`]); [`import`] turns one into a Hugging Face checkpoint
//! directory.
//!
//! Layout: magic `GGUF`, version (u32), tensor count and metadata count (u64), the metadata
//! key/value pairs, the tensor infos (name, dimensions fastest first, ggml type, offset), then the
//! tensor data from the next multiple of `general.alignment` (default 32).

pub mod dequant;
pub mod import;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A GGUF problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: metadata `{key}`: {message}")]
    Metadata {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: tensor {name}: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's entry in the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them, fastest first (a Hugging Face `[out, in]` matrix is
    /// `[in, out]` here).
    pub dims: Vec<u64>,
    /// The ggml type id.
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// The shape as PyTorch and safetensors write it (slowest first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An opened GGUF file (memory-mapped).
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    bytes: memmap2::Mmap,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Format {
                path: self.path.to_path_buf(),
                message: format!(
                    "truncated: {n} more bytes needed at offset {} of {}",
                    self.pos,
                    self.bytes.len()
                ),
            }),
        }
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()?;
        let n = self.len(n, 1)?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|e| GgufError::Format {
            path: self.path.to_path_buf(),
            message: format!("a string at offset {} is not UTF-8: {e}", self.pos - n),
        })
    }
    /// A count of items of `width` bytes each that the rest of the file can hold.
    fn len(&self, n: u64, width: usize) -> Result<usize, GgufError> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(width as u64) > left {
            return Err(GgufError::Format {
                path: self.path.to_path_buf(),
                message: format!(
                    "a count of {n} at offset {} exceeds the file's {} remaining bytes",
                    self.pos, left
                ),
            });
        }
        Ok(n as usize)
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U64(self.take(1)?[0] as u64),
            1 => Value::I64(self.take(1)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_le_bytes(self.take(4)?.try_into().expect("4")) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::String(self.string()?),
            9 if depth < 4 => {
                let item = self.u32()?;
                let n = self.u64()?;
                let n = self.len(n, 1)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(item, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            other => {
                return Err(GgufError::Format {
                    path: self.path.to_path_buf(),
                    message: format!("unknown metadata value type {other} at offset {}", self.pos),
                });
            }
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the file is only read; gradlens never writes to its inputs.
        #[allow(unsafe_code)]
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            path,
        };
        if c.take(4)? != b"GGUF" {
            return Err(GgufError::Format {
                path: path.to_path_buf(),
                message: "the file does not start with the magic `GGUF`".into(),
            });
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Format {
                path: path.to_path_buf(),
                message: format!("version {version} (gradlens reads versions 2 and 3)"),
            });
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        let n_kv = c.len(n_kv, 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let n_tensors = c.len(n_tensors, 24)?;
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(GgufError::Tensor {
                    path: path.to_path_buf(),
                    name,
                    message: format!("{n_dims} dimensions (expected 1 to 4)"),
                });
            }
            let dims = (0..n_dims)
                .map(|_| c.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(GgufError::Metadata {
                        path: path.to_path_buf(),
                        key: "general.alignment".into(),
                        message: format!("{v:?} is not a power of two"),
                    });
                }
            },
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let g = Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            bytes,
        };
        for t in &g.tensors {
            g.raw(t)?;
        }
        Ok(g)
    }

    /// A metadata value, or an error naming the key.
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::Metadata {
            path: self.path.clone(),
            key: key.into(),
            message: "missing".into(),
        })
    }

    /// A metadata value of the wrong kind, as an error.
    pub fn bad(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The bytes of a tensor, checked against the file's length.
    pub fn raw(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let err = |message: String| GgufError::Tensor {
            path: self.path.clone(),
            name: t.name.clone(),
            message,
        };
        let size = dequant::byte_size(t.ggml_type, t.numel()).map_err(err)?;
        let start = (self.data_start as u64)
            .checked_add(t.offset)
            .ok_or_else(|| err("offset overflows".into()))?;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| {
                err(format!(
                    "{size} bytes at offset {start} run past the end of the file ({} bytes): \
                     a truncated download?",
                    self.bytes.len()
                ))
            })?;
        Ok(&self.bytes[start as usize..end as usize])
    }

    /// A tensor dequantized to f32 (in the row-major order of [`TensorInfo::shape`]).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let raw = self.raw(t)?;
        dequant::dequantize(t.ggml_type, raw, t.numel() as usize).map_err(|message| {
            GgufError::Tensor {
                path: self.path.clone(),
                name: t.name.clone(),
                message,
            }
        })
    }
}
