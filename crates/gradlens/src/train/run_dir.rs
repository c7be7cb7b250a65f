//! A training run's directory: `run.json` (what made it), a lock, and the JSONL files cut back to
//! the checkpoint a resumed run continues from.
//!
//! As for `grads` outputs ([`crate::sink::output`]): a folder with content but no `run.json` is not
//! gradlens' and is refused untouched; an input of the run (the checkpoint folder, a data file)
//! cannot be the run directory; a second process on the same directory fails at once (an
//! exclusive lock on `.lock`); a run directory is continued only with `--resume` and the same
//! settings (the error names each that differs).

use super::checkpoint::checkpoints;
use super::records::StepOf;
use crate::load::fingerprint::{model_fingerprint, sha256_file};
use crate::sink::output::write_atomically;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The format tag of `run.json`.
pub const FORMAT: &str = "gradlens-train/1";

/// The JSONL files of a run.
pub const STEPS: &str = "steps.jsonl";
pub const PER_SAMPLE: &str = "per_sample.jsonl";
pub const EVAL: &str = "eval.jsonl";

/// A data file and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    pub path: String,
    pub sha256: String,
}

impl DataFile {
    pub fn of(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            path: path.display().to_string(),
            sha256: sha256_file(path)?,
        })
    }
}

/// `run.json`: the checkpoint, the data and every setting that decides a run's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub format: String,
    pub gradlens: String,
    pub model: String,
    pub model_fingerprint: String,
    pub data: Vec<DataFile>,
    pub eval_data: Option<DataFile>,
    /// The options, as `--name: value` (the error on a mismatch quotes them).
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl RunRecord {
    pub fn new(
        model: &Path,
        data: &[PathBuf],
        eval_data: Option<&Path>,
        settings: serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            format: FORMAT.into(),
            gradlens: env!("CARGO_PKG_VERSION").into(),
            model: model.display().to_string(),
            model_fingerprint: model_fingerprint(model)?,
            data: data
                .iter()
                .map(|d| DataFile::of(d))
                .collect::<anyhow::Result<_>>()?,
            eval_data: eval_data.map(DataFile::of).transpose()?,
            settings,
        })
    }

    /// What differs between the recorded run and this one, one phrase per setting.
    pub fn differences(&self, recorded: &RunRecord) -> Vec<String> {
        let mut d = Vec::new();
        if recorded.format != self.format {
            d.push(format!(
                "format: the run has {}, this run {}",
                recorded.format, self.format
            ));
        }
        if recorded.model_fingerprint != self.model_fingerprint {
            d.push(format!(
                "the checkpoint (config, tokenizer, weight headers): the run has {}, this run {}",
                recorded.model, self.model
            ));
        }
        let hashes =
            |files: &[DataFile]| files.iter().map(|f| f.sha256.clone()).collect::<Vec<_>>();
        if hashes(&recorded.data) != hashes(&self.data) {
            let names = |files: &[DataFile]| {
                files
                    .iter()
                    .map(|f| f.path.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            d.push(format!(
                "--data (files and their content): the run has {}, this run {}",
                names(&recorded.data),
                names(&self.data)
            ));
        }
        if recorded.eval_data.as_ref().map(|f| &f.sha256)
            != self.eval_data.as_ref().map(|f| &f.sha256)
        {
            let name = |f: &Option<DataFile>| f.as_ref().map_or("none".into(), |f| f.path.clone());
            d.push(format!(
                "--eval-data: the run has {}, this run {}",
                name(&recorded.eval_data),
                name(&self.eval_data)
            ));
        }
        let mut keys: Vec<&String> = recorded.settings.keys().collect();
        keys.extend(
            self.settings
                .keys()
                .filter(|k| !recorded.settings.contains_key(*k)),
        );
        for k in keys {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("nothing".into(), |v| v.to_string());
            let (old, new) = (recorded.settings.get(k), self.settings.get(k));
            if old != new {
                d.push(format!(
                    "{k}: the run has {}, this run {}",
                    show(old),
                    show(new)
                ));
            }
        }
        d
    }
}

/// A run directory this process holds.
pub struct RunDir {
    pub path: PathBuf,
    resuming: bool,
    _lock: File,
}

/// Where a run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Every step is done and `final/` is written.
    Complete,
    /// After this many steps: from the start, or from a checkpoint.
    After(usize, Option<PathBuf>),
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether `dir` holds anything but what a run killed while claiming it leaves (its `.lock`, a
/// temporary of its run.json).
fn has_content(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name != ".lock" && !crate::sink::output::is_temporary(&name)
        })
    })
}

impl RunDir {
    /// Take `path` for the run `this` (see the module documentation). `inputs`: the checkpoint
    /// folder and the data files, which the run directory may not be nor lie in.
    pub fn claim(
        path: &Path,
        this: &RunRecord,
        inputs: &[&Path],
        resume: bool,
    ) -> anyhow::Result<Self> {
        let shown = path.display();
        anyhow::ensure!(
            !path.is_file(),
            "{shown}: is a file; --out takes a run directory"
        );
        for input in inputs {
            let inside = |dir: &Path| {
                let mut p = Some(path);
                while let Some(q) = p {
                    if same_file(q, dir) {
                        return true;
                    }
                    p = q.parent();
                }
                false
            };
            if same_file(path, input) || (input.is_dir() && inside(input)) {
                anyhow::bail!(
                    "{shown}: is or lies in the run's input {}; refusing to write there",
                    input.display()
                );
            }
        }
        let record_path = path.join("run.json");
        if !record_path.exists() && has_content(path) {
            anyhow::bail!(
                "{shown}: exists, holds files and no run.json: not a gradlens run directory; \
                 refusing to touch it: choose another --out"
            );
        }
        std::fs::create_dir_all(path).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        let lock_path = path.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{shown}: another gradlens process is training into this run directory (it holds \
                 the lock); wait for it to finish or choose another --out"
            ),
            Err(std::fs::TryLockError::Error(e)) => anyhow::bail!("{}: {e}", lock_path.display()),
        }
        let resuming = record_path.exists();
        if resuming {
            let text = std::fs::read_to_string(&record_path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", record_path.display()))?;
            let recorded: RunRecord = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{}: not a gradlens run record: {e}", record_path.display())
            })?;
            if !resume {
                anyhow::bail!(
                    "{shown}: holds a training run already; pass --resume to continue it, or \
                     choose another --out"
                );
            }
            let differences = this.differences(&recorded);
            if !differences.is_empty() {
                anyhow::bail!(
                    "{shown}: made with other settings than this run's, refusing to resume it \
                     (use the same settings, or another --out): {}",
                    differences.join("; ")
                );
            }
        } else {
            let text = serde_json::to_string_pretty(this)? + "\n";
            write_atomically(&record_path, text.as_bytes())?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            resuming,
            _lock: lock,
        })
    }

    /// Where a run of `total` steps starts in this directory: complete (`final/` of that step
    /// written), or after the newest complete checkpoint (none: from the start). The JSONL files
    /// are cut back to that step (and a partial last line removed); partial checkpoints of an
    /// interrupted save and temporaries of an interrupted write are removed.
    pub fn start(&self, total: usize) -> anyhow::Result<Start> {
        crate::sink::output::remove_stale_temporaries(&self.path)?;
        for entry in std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".partial") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let complete = super::checkpoint::read_trainer_state(&self.file("final"))
            .is_ok_and(|s| s.step == total);
        let (start, from) = if complete {
            (total, None)
        } else if self.resuming {
            match checkpoints(&self.path).pop() {
                Some((n, dir)) => (n, Some(dir)),
                None => (0, None),
            }
        } else {
            (0, None)
        };
        for file in [STEPS, PER_SAMPLE, EVAL] {
            cut_after_step(&self.file(file), start)?;
        }
        Ok(if complete {
            Start::Complete
        } else {
            Start::After(start, from)
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Keep the complete lines of a run's JSONL file up to the last whose step is ≤ `step` (an
/// evaluation at `step` belongs to it); drop the rest.
fn cut_after_step(path: &Path, step: usize) -> anyhow::Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    let mut keep = 0;
    let mut offset = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        let of: StepOf = serde_json::from_slice(line)
            .map_err(|e| anyhow::anyhow!("{}: a line without a step: {e}", path.display()))?;
        if of.step > step {
            break;
        }
        offset += line.len();
        keep = offset;
    }
    if keep < bytes.len() {
        write_atomically(path, &bytes[..keep])?;
    }
    Ok(())
}

/// Open a run's JSONL file for appending.
pub fn appender(path: &Path) -> anyhow::Result<crate::sink::output::JsonlAppender> {
    Ok(crate::sink::output::JsonlAppender::open(path)?)
}

/// Whether a JSONL file of the run has a line for `step` (e.g. the evaluation at step 0).
pub fn has_step(path: &Path, step: usize) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| {
        t.lines()
            .filter_map(|l| serde_json::from_str::<StepOf>(l).ok())
            .any(|s| s.step == step)
    })
}
