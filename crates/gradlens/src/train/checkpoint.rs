//! A training run's checkpoints: Hugging Face checkpoint directories (config.json, one
//! model.safetensors, the tokenizer files) that transformers and `gradlens grads` load as they
//! are, plus — in `checkpoint-N/` — what an exact resume needs: `training_state.safetensors` (the
//! trained parameters in the compute dtype, AdamW's moments) and `trainer_state.json`.
//!
//! A checkpoint is written into a hidden `.NAME.partial` folder, synced, and renamed: a folder
//! named `checkpoint-N` or `final` is always complete.

use crate::sink::output::write_atomically;
use gradlens_core::StoredDtype;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The files of a checkpoint directory copied as they are from the source checkpoint.
pub const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// The dtype the weights of a saved checkpoint are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    F32,
    F64,
    Bf16,
}

impl SaveDtype {
    pub fn stored(self) -> StoredDtype {
        match self {
            SaveDtype::F32 => StoredDtype::F32,
            SaveDtype::F64 => StoredDtype::F64,
            SaveDtype::Bf16 => StoredDtype::BF16,
        }
    }
}

/// `trainer_state.json`: where a run stands at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken (the next step is `step + 1`; the data position follows from it).
    pub step: usize,
    pub total_steps: usize,
    pub gradlens: String,
}

/// A tensor to write: its name, shape, and values (f64 holds f32 values exactly).
pub struct HostParam {
    pub name: String,
    pub dims: Vec<usize>,
    pub values: Vec<f64>,
    pub dtype: StoredDtype,
}

fn encode(values: &[f64], dtype: StoredDtype) -> (safetensors::Dtype, Vec<u8>) {
    match dtype {
        StoredDtype::F64 => (
            safetensors::Dtype::F64,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        StoredDtype::F32 => (
            safetensors::Dtype::F32,
            values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        ),
        StoredDtype::BF16 => (
            safetensors::Dtype::BF16,
            values
                .iter()
                .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
                .collect(),
        ),
        StoredDtype::F16 => (
            safetensors::Dtype::F16,
            values
                .iter()
                .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
                .collect(),
        ),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{}: {e}", path.display())
}

/// Write tensors to one safetensors file (metadata `format: pt`, as transformers writes it).
pub fn write_safetensors(path: &Path, tensors: &[HostParam]) -> anyhow::Result<()> {
    let encoded: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let (dtype, bytes) = encode(&t.values, t.dtype);
            (t.name.clone(), dtype, t.dims.clone(), bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, dtype, dims, bytes)| {
            TensorView::new(*dtype, dims.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    std::fs::write(path, bytes).map_err(io_err(path))
}

/// Read every tensor of a safetensors file as f64 values (f32, f64, bf16, f16), by name.
pub fn read_safetensors(path: &Path) -> anyhow::Result<Vec<HostParam>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let (dtype, values): (StoredDtype, Vec<f64>) = match view.dtype() {
            safetensors::Dtype::F64 => (
                StoredDtype::F64,
                data.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
            ),
            safetensors::Dtype::F32 => (
                StoredDtype::F32,
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
                    .collect(),
            ),
            safetensors::Dtype::BF16 => (
                StoredDtype::BF16,
                data.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes(b.try_into().expect("2 bytes")).to_f64())
                    .collect(),
            ),
            safetensors::Dtype::F16 => (
                StoredDtype::F16,
                data.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f64())
                    .collect(),
            ),
            other => anyhow::bail!(
                "{}: tensor {name}: unsupported dtype {other:?}",
                path.display()
            ),
        };
        out.push(HostParam {
            name,
            dims: view.shape().to_vec(),
            values,
            dtype,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What goes into one checkpoint directory.
pub struct CheckpointContent<'a> {
    pub source: &'a Path,
    /// Every parameter (the model's weights), in the dtype it is to be saved in.
    pub weights: Vec<HostParam>,
    /// With the training state (`checkpoint-N/`): the trained parameters exactly, and AdamW's
    /// moments, under `param.`, `exp_avg.` and `exp_avg_sq.` + the checkpoint name.
    pub state: Option<(Vec<HostParam>, TrainerState)>,
    /// The dtype written into config.json's `dtype`/`torch_dtype` when the weights are saved in
    /// another dtype than the source's.
    pub config_dtype: Option<SaveDtype>,
}

/// Write a folder as `dir`: `fill` writes its files into `.<name>.partial` beside it, which is
/// then synced and renamed, so that a folder named `dir` is always complete.
pub fn write_folder(
    dir: &Path,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = dir.with_file_name(format!(".{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io_err(&partial))?;
    fill(&partial)?;
    sync_dir(&partial)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::rename(&partial, dir).map_err(io_err(dir))?;
    if let Some(parent) = dir.parent() {
        let _ = std::fs::File::open(parent).and_then(|f| f.sync_all());
    }
    Ok(())
}

/// The training state of a checkpoint (`checkpoint-N/`): `training_state.safetensors` (what an
/// exact resume needs, in the compute dtype) and `trainer_state.json`.
pub fn write_training_state(
    folder: &Path,
    tensors: &[HostParam],
    trainer: &TrainerState,
) -> anyhow::Result<()> {
    if !tensors.is_empty() {
        write_safetensors(&folder.join("training_state.safetensors"), tensors)?;
    }
    write_atomically(
        &folder.join("trainer_state.json"),
        (serde_json::to_string_pretty(trainer)? + "\n").as_bytes(),
    )?;
    Ok(())
}

/// Write a checkpoint as `dir` (through `.<name>.partial` beside it and a rename).
pub fn write_checkpoint(dir: &Path, c: CheckpointContent<'_>) -> anyhow::Result<()> {
    write_folder(dir, |partial| fill_checkpoint(partial, c))
}

fn fill_checkpoint(partial: &Path, c: CheckpointContent<'_>) -> anyhow::Result<()> {
    // config.json, with the saved dtype when it is not the source's.
    let config_src = c.source.join("config.json");
    let text = std::fs::read_to_string(&config_src).map_err(io_err(&config_src))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_src.display()))?;
    if let (Some(d), Some(obj)) = (c.config_dtype, config.as_object_mut()) {
        let name = match d {
            SaveDtype::F32 => "float32",
            SaveDtype::F64 => "float64",
            SaveDtype::Bf16 => "bfloat16",
        };
        let mut set = false;
        for key in ["dtype", "torch_dtype"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), name.into());
                set = true;
            }
        }
        if !set {
            obj.insert("torch_dtype".into(), name.into());
        }
    }
    std::fs::write(
        partial.join("config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )
    .map_err(io_err(partial))?;
    for f in COPIED_FILES {
        let src = c.source.join(f);
        if src.is_file() {
            std::fs::copy(&src, partial.join(f)).map_err(io_err(&src))?;
        }
    }
    write_safetensors(&partial.join("model.safetensors"), &c.weights)?;
    if let Some((tensors, trainer)) = &c.state {
        write_training_state(partial, tensors, trainer)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&path))?;
    }
    Ok(())
}

/// The saved dtype of a parameter stored as `stored` in the source checkpoint.
pub fn save_dtype_of(stored: StoredDtype, chosen: Option<SaveDtype>) -> StoredDtype {
    chosen.map_or(stored, SaveDtype::stored)
}

/// `checkpoint-N` folders of a run directory that are complete, newest last.
pub fn checkpoints(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            let path = e.path();
            path.join("trainer_state.json")
                .is_file()
                .then_some((n, path))
        })
        .collect();
    found.sort();
    found
}

/// Read a checkpoint's `trainer_state.json`.
pub fn read_trainer_state(dir: &Path) -> anyhow::Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
