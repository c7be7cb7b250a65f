//! What `--model` names: a checkpoint directory, a hub model id in the local Hugging Face cache
//! ([`gradlens_core::hub`]), or a GGUF file, imported once into gradlens' cache
//! (`$GRADLENS_CACHE`, else `$XDG_CACHE_HOME/gradlens`, else `~/.cache/gradlens`) under its name
//! and content hash, and used from there.

use gradlens_models::import_gguf as import;
use std::path::{Path, PathBuf};

/// gradlens' cache folder.
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("GRADLENS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("gradlens")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gradlens")))
}

/// Whether `path` names a GGUF file.
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The checkpoint directory `--model` stands for.
pub fn resolve(model: &Path, revision: Option<&str>) -> anyhow::Result<PathBuf> {
    let model = gradlens_core::hub::resolve(model, revision)?;
    if !is_gguf(&model) {
        return Ok(model);
    }
    let cache = cache_dir().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: a GGUF file is imported into gradlens' cache, but GRADLENS_CACHE, \
             XDG_CACHE_HOME and HOME are unset; import it with `gradlens import-gguf`",
            model.display()
        )
    })?;
    let hash = crate::load::fingerprint::sha256_file(&model)?;
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let dir = cache.join("gguf").join(format!("{stem}-{}", &hash[..16]));
    if !dir.join("config.json").is_file() {
        eprintln!(
            "importing {} into {} (once)",
            model.display(),
            dir.display()
        );
        std::fs::create_dir_all(dir.parent().expect("a parent"))?;
        import(&model, &dir)?;
    }
    Ok(dir)
}
