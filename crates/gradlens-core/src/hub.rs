//! Checkpoints as the Hugging Face hub client caches them: `--model Qwen/Qwen3-1.7B` finds
//! `<cache>/models--Qwen--Qwen3-1.7B/snapshots/<commit>/`, offline. The cache is `$HF_HUB_CACHE`,
//! else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; the revision is a branch or tag name
//! under `refs/` (default `main`) or a commit hash under `snapshots/`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{model}: not a checkpoint directory, and no revision {revision:?} of it in the Hugging \
         Face cache (looked for {looked}); gradlens does not download: fetch it with \
         `huggingface-cli download {model}`, point HF_HUB_CACHE or HF_HOME at the cache, or pass \
         the checkpoint directory"
    )]
    NotCached {
        model: String,
        revision: String,
        looked: String,
    },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `model` reads as a hub model id (`ORG/NAME`).
pub fn is_model_id(model: &Path) -> bool {
    model_id(model).is_some()
}

/// The hub cache folder from the environment.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// `ORG/NAME` (a hub model id, not a path that exists).
fn model_id(model: &Path) -> Option<(String, String)> {
    let s = model.to_str()?;
    let (org, name) = s.split_once('/')?;
    let ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (ok(org) && ok(name)).then(|| (org.to_string(), name.to_string()))
}

/// The checkpoint directory `model` names: itself when it exists (or is not a hub id), else its
/// snapshot in the cache at `revision` (default `main`).
pub fn resolve(model: &Path, revision: Option<&str>) -> Result<PathBuf, HubError> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    let Some((org, name)) = model_id(model) else {
        return Ok(model.to_path_buf());
    };
    let revision = revision.unwrap_or("main");
    let Some(cache) = cache_dir() else {
        return Err(HubError::NotCached {
            model: model.display().to_string(),
            revision: revision.into(),
            looked: "no cache: HF_HUB_CACHE, HF_HOME and HOME are unset".into(),
        });
    };
    let repo = cache.join(format!("models--{org}--{name}"));
    let by_ref = repo.join("refs").join(revision);
    let commit = if by_ref.is_file() {
        std::fs::read_to_string(&by_ref)
            .map_err(|source| HubError::Io {
                path: by_ref.clone(),
                source,
            })?
            .trim()
            .to_string()
    } else {
        revision.to_string()
    };
    let snapshot = repo.join("snapshots").join(&commit);
    if snapshot.join("config.json").is_file() {
        tracing::info!("{}: {}", model.display(), snapshot.display());
        Ok(snapshot)
    } else {
        Err(HubError::NotCached {
            model: model.display().to_string(),
            revision: revision.into(),
            looked: format!("{} and {}", by_ref.display(), snapshot.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        assert_eq!(
            model_id(Path::new("Qwen/Qwen3-1.7B")),
            Some(("Qwen".into(), "Qwen3-1.7B".into()))
        );
        assert_eq!(model_id(Path::new("fixtures/qwen2-tiny/x")), None);
        assert_eq!(model_id(Path::new("../x")), None);
        assert_eq!(model_id(Path::new("/abs")), None);
        // Not an id: returned as given, for the loader to report.
        assert_eq!(
            resolve(Path::new("no-such-dir"), None).unwrap(),
            PathBuf::from("no-such-dir")
        );
    }
}
