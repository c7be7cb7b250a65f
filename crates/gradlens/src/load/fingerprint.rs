//! Fingerprints of what a run reads (SHA-256): a file, a checkpoint without its weights, a PEFT
//! adapter. Outputs record them ([`crate::sink::provenance`]); the GGUF cache is keyed by them.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot read: {source}")]
pub struct HashError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> HashError + '_ {
    move |source| HashError {
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 over a PEFT adapter folder's adapter_config.json and adapter_model.safetensors.
pub fn adapter_fingerprint(dir: &Path) -> Result<String, HashError> {
    let mut h = Sha256::new();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        h.update(sha256_file(&dir.join(f))?.as_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

/// SHA-256 of a file's bytes, as hex.
pub fn sha256_file(path: &Path) -> Result<String, HashError> {
    let mut f = std::fs::File::open(path).map_err(read_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(read_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 over what identifies a checkpoint without reading its weights: config.json, the
/// tokenizer files and the chat template, and for every `*.safetensors` file its name, size and
/// header (tensor names, dtypes, shapes and offsets).
pub fn model_fingerprint(dir: &Path) -> Result<String, HashError> {
    let mut h = Sha256::new();
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
    ] {
        let p = dir.join(name);
        if p.is_file() {
            h.update(name.as_bytes());
            h.update(std::fs::read(&p).map_err(read_err(&p))?);
        }
    }
    let mut weights: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    weights.sort();
    for p in weights {
        let mut f = std::fs::File::open(&p).map_err(read_err(&p))?;
        let size = f.metadata().map_err(read_err(&p))?.len();
        h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(size.to_le_bytes());
        // The header: an 8-byte length, then that much JSON (capped: a broken length is the
        // loader's error to report, not ours).
        let mut len = [0u8; 8];
        if f.read_exact(&mut len).is_ok() {
            let n = u64::from_le_bytes(len)
                .min(size.saturating_sub(8))
                .min(100 << 20);
            let mut header = Vec::with_capacity(n as usize);
            (&mut f)
                .take(n)
                .read_to_end(&mut header)
                .map_err(read_err(&p))?;
            h.update(&header);
        }
    }
    Ok(hex(&h.finalize()))
}
