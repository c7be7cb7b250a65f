//! A training run's checkpoints: Hugging Face checkpoint directories (config.json, one
//! model.safetensors, the tokenizer files) that transformers and `gradlens grads` load as they
//! are, plus — in `checkpoint-N/` — what an exact resume needs: `training_state.safetensors` (the
//! trained parameters in the compute dtype, AdamW's moments) and `trainer_state.json`.
//!
//! A checkpoint is written into a hidden `.NAME.partial` folder, synced, and renamed: a folder
//! named `checkpoint-N` or `final` is always complete.

use crate::load::safetensors::{HostParam, io_err, write_safetensors};
use crate::sink::output::write_atomically;
use gradlens_core::StoredDtype;
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
