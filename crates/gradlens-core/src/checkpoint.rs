use crate::error::{CheckpointError, Result};
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors, tensor::TensorInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A tensor read from the checkpoint, still on the host, in f32 (or f64 when stored so).
pub type HostTensor = TensorData;

/// The element type a tensor is stored with in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoredDtype {
    F16,
    BF16,
    F32,
    F64,
}

struct WeightFile {
    path: PathBuf,
    bytes: memmap2::Mmap,
    header_len: usize,
}

struct Entry {
    file: usize,
    info: TensorInfo,
}

/// An opened Hugging Face checkpoint directory.
pub struct Checkpoint {
    dir: PathBuf,
    config_path: PathBuf,
    config: serde_json::Value,
    files: Vec<WeightFile>,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    /// `Some` for [`Checkpoint::describe`]: no weights, every requested tensor is recorded.
    described: Option<Vec<Described>>,
    /// `(asked, stored)` name prefixes: a model wrapped in another (the text model of a multimodal
    /// checkpoint) asks for `model.layers.0…` and finds `language_model.model.layers.0…`.
    prefixes: Vec<(String, String)>,
}

/// A tensor a family asks for, recorded by [`Checkpoint::describe`].
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    pub name: String,
    pub shape: Vec<usize>,
    /// The value of a scale vector that leaves its input unchanged (1 for `w·x`, 0 for Gemma's
    /// `(1+w)·x`), when the family says so; `None` for weights and biases.
    pub identity: Option<f64>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn map_file(path: &Path) -> Result<WeightFile> {
    let file = File::open(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the file is opened read-only; a checkpoint modified while gradlens reads it is
    // outside what any loader can guard against (transformers and candle map it the same way).
    #[allow(unsafe_code)]
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (header_len, _) =
        SafeTensors::read_metadata(&bytes).map_err(|e| CheckpointError::Safetensors {
            path: path.to_path_buf(),
            message: describe_safetensors_error(&e),
        })?;
    Ok(WeightFile {
        path: path.to_path_buf(),
        bytes,
        header_len,
    })
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer | E::InvalidHeaderLength | E::HeaderTooSmall => {
            format!("{e:?} (the file is truncated or its header is corrupt)")
        }
        other => format!("{other:?}"),
    }
}

/// A checkpoint's `config.json`: present, JSON, an object.
fn read_config(config_path: &Path) -> Result<serde_json::Value> {
    if !config_path.is_file() {
        return Err(CheckpointError::Io {
            path: config_path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "config.json not found"),
        });
    }
    let config = read_json(config_path)?;
    if !config.is_object() {
        return Err(CheckpointError::Config {
            path: config_path.to_path_buf(),
            message: "expected a JSON object".into(),
        });
    }
    Ok(config)
}

impl Checkpoint {
    /// Open `dir`: read `config.json` and map every safetensors file of the checkpoint.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let config = read_config(&config_path)?;

        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index.is_file() {
            let value = read_json(&index)?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| CheckpointError::Config {
                    path: index.clone(),
                    message: "missing object \"weight_map\"".into(),
                })?;
            let mut names = BTreeSet::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| CheckpointError::Config {
                    path: index.clone(),
                    message: format!("weight_map[{tensor:?}] is not a file name"),
                })?;
                names.insert(file.to_string());
            }
            names.into_iter().collect()
        } else if single.is_file() {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(CheckpointError::NoWeights { dir });
        };

        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for name in &shard_names {
            let file = map_file(&dir.join(name))?;
            let (_, metadata) = SafeTensors::read_metadata(&file.bytes).map_err(|e| {
                CheckpointError::Safetensors {
                    path: file.path.clone(),
                    message: describe_safetensors_error(&e),
                }
            })?;
            for (tensor, info) in metadata.tensors() {
                entries.insert(
                    tensor,
                    Entry {
                        file: files.len(),
                        info: info.clone(),
                    },
                );
            }
            files.push(file);
        }

        Ok(Self {
            dir,
            config_path,
            config,
            files,
            entries,
            taken: BTreeSet::new(),
            described: None,
            prefixes: Vec::new(),
        })
    }

    /// A checkpoint without weights for `config` (read from `config_path`): a family's `load`
    /// run against it records the name and shape of every tensor it needs (see
    /// [`Checkpoint::described`]) and gets one-element placeholders, so that the parameter list
    /// of any shape costs no memory. Every optional tensor counts as present.
    pub fn describe(config_path: impl AsRef<Path>) -> Result<Self> {
        let config_path = config_path.as_ref().to_path_buf();
        let config = read_config(&config_path)?;
        Ok(Self {
            dir: config_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            config_path,
            config,
            files: Vec::new(),
            entries: BTreeMap::new(),
            taken: BTreeSet::new(),
            described: Some(Vec::new()),
            prefixes: Vec::new(),
        })
    }

    /// The tensors recorded by a [`Checkpoint::describe`] checkpoint, in request order.
    pub fn described(&self) -> Option<&[Described]> {
        self.described.as_deref()
    }

    /// Record the identity value of a scale vector (describe mode only; a no-op otherwise).
    pub fn note_identity(&mut self, name: &str, identity: f64) {
        if let Some(d) = &mut self.described
            && let Some(t) = d.iter_mut().rev().find(|t| t.name == name)
        {
            t.identity = Some(identity);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// `model_type` from config.json.
    pub fn model_type(&self) -> Result<&str> {
        self.config
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| CheckpointError::Config {
                path: self.config_path.clone(),
                message: "missing string field `model_type`".into(),
            })
    }

    /// Read the model a checkpoint wraps: a tensor asked for as `asked…` is stored as `stored…`
    /// (the first pair that names a stored tensor wins).
    pub fn with_prefixes(&mut self, prefixes: &[(&str, &str)]) {
        self.prefixes = prefixes
            .iter()
            .map(|(a, s)| (a.to_string(), s.to_string()))
            .collect();
    }

    /// Replace the configuration (the text model's part of a wrapper's config.json).
    pub fn set_config(&mut self, config: serde_json::Value) {
        self.config = config;
    }

    /// The name under which the checkpoint stores the tensor asked for as `name`.
    pub fn stored_name(&self, name: &str) -> String {
        for (asked, stored) in &self.prefixes {
            if let Some(rest) = name.strip_prefix(asked.as_str()) {
                let candidate = format!("{stored}{rest}");
                if self.entries.contains_key(&candidate) {
                    return candidate;
                }
            }
        }
        name.to_string()
    }

    /// Whether the checkpoint stores a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.described.is_some() || self.entries.contains_key(&self.stored_name(name))
    }

    /// The stored dtypes of all tensors, for reporting.
    pub fn stored_dtypes(&self) -> BTreeSet<StoredDtype> {
        self.entries
            .values()
            .filter_map(|e| stored_dtype(e.info.dtype))
            .collect()
    }

    /// The dtype tensor `name` is stored in (f32 for a described checkpoint).
    pub fn stored_dtype_of(&self, name: &str) -> Option<StoredDtype> {
        if self.described.is_some() {
            return Some(StoredDtype::F32);
        }
        self.entries
            .get(&self.stored_name(name))
            .and_then(|e| stored_dtype(e.info.dtype))
    }

    /// Whether the model was read out of a wrapper checkpoint (stored names carry a prefix).
    pub fn is_wrapped(&self) -> bool {
        !self.prefixes.is_empty()
    }

    /// Read tensor `name`, check its shape, and convert it to f32 (f64 when stored as f64).
    pub fn take(&mut self, name: &str, expected_shape: &[usize]) -> Result<HostTensor> {
        let stored = self.stored_name(name);
        let name = stored.as_str();
        if let Some(d) = &mut self.described {
            d.push(Described {
                name: name.to_string(),
                shape: expected_shape.to_vec(),
                identity: None,
            });
            return Ok(TensorData::new(vec![0f32], vec![1; expected_shape.len()]));
        }
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
            })?;
        let file = &self.files[entry.file];
        if entry.info.shape != expected_shape {
            return Err(CheckpointError::ShapeMismatch {
                path: file.path.clone(),
                name: name.to_string(),
                found: entry.info.shape.clone(),
                expected: expected_shape.to_vec(),
            });
        }
        let (start, end) = entry.info.data_offsets;
        let base = 8 + file.header_len;
        let bytes = &file.bytes[base + start..base + end];
        let shape = entry.info.shape.clone();
        let data = match entry.info.dtype {
            Dtype::F32 => TensorData::new(
                decode(bytes, 4, |b| f32::from_le_bytes(b.try_into().unwrap())),
                shape,
            ),
            Dtype::F64 => TensorData::new(
                decode(bytes, 8, |b| f64::from_le_bytes(b.try_into().unwrap())),
                shape,
            ),
            Dtype::F16 => TensorData::new(
                decode(bytes, 2, |b| {
                    half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()
                }),
                shape,
            ),
            Dtype::BF16 => TensorData::new(
                decode(bytes, 2, |b| {
                    half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32()
                }),
                shape,
            ),
            other => {
                return Err(CheckpointError::UnsupportedDtype {
                    path: file.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        self.taken.insert(name.to_string());
        Ok(data)
    }

    /// Like [`Checkpoint::take`], for a tensor that some checkpoints of a family omit.
    pub fn take_optional(
        &mut self,
        name: &str,
        expected_shape: &[usize],
    ) -> Result<Option<HostTensor>> {
        if self.contains(name) {
            self.take(name, expected_shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Mark tensors the model deliberately does not use (e.g. stored rotary tables) as accounted for.
    pub fn ignore_where(&mut self, pred: impl Fn(&str) -> bool) {
        if let Some(d) = &mut self.described {
            // A deliberately unused tensor (a tied head's stored copy) is not part of the model.
            d.retain(|t| !pred(&t.name));
            return;
        }
        let names: Vec<String> = self.entries.keys().filter(|n| pred(n)).cloned().collect();
        self.taken.extend(names);
    }

    /// Every tensor must have been taken or ignored: anything else is an error naming it.
    pub fn finish(&self) -> Result<()> {
        let left: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !self.taken.contains(*n))
            .cloned()
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(CheckpointError::UnexpectedTensors {
                dir: self.dir.clone(),
                names: left,
            })
        }
    }
}

fn stored_dtype(d: Dtype) -> Option<StoredDtype> {
    match d {
        Dtype::F16 => Some(StoredDtype::F16),
        Dtype::BF16 => Some(StoredDtype::BF16),
        Dtype::F32 => Some(StoredDtype::F32),
        Dtype::F64 => Some(StoredDtype::F64),
        _ => None,
    }
}

fn decode<T>(bytes: &[u8], width: usize, f: impl Fn(&[u8]) -> T) -> Vec<T> {
    bytes.chunks_exact(width).map(f).collect()
}
