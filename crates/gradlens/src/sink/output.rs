//! The files of one measurement: `<out>.jsonl`, its side files `<out>.skipped.jsonl` and
//! `<out>.spectrum.jsonl`, and `<out>.meta.json`, the record of what made them
//! ([`crate::sink::provenance`]).
//!
//! A run first [`claim`]s the output: it refuses a file gradlens cannot prove is its own (one
//! without its `.meta.json`, or one that is an input of the run), takes an exclusive advisory
//! lock so that a second writer fails at once, compares the recorded settings with its own and
//! refuses a mismatch. Only then does it repair what an interrupted run left: a partial last line,
//! and a spectrum line whose sample never reached the output. Every line is then written whole
//! with one `write` and flushed.

use crate::sink::provenance::Provenance;
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
    #[error(
        "{path}: exists but was not written by gradlens (there is no {meta} beside it); refusing \
         to touch it: choose another --out, or move the file away"
    )]
    NotOurs { path: PathBuf, meta: PathBuf },
    #[error("{path}: the output {what}; refusing to write there")]
    IsInput { path: PathBuf, what: String },
    #[error(
        "{path}: another gradlens process is writing this output (it holds the lock); wait for it \
         to finish or choose another --out"
    )]
    Locked { path: PathBuf },
    #[error("{meta}: not a gradlens provenance record: {message}")]
    BadMeta { meta: PathBuf, message: String },
    #[error(
        "{path}: made with other settings than this run's, refusing to mix them in one file \
         (use the same settings, or another --out): {}",
        differences.join("; ")
    )]
    Mismatch {
        path: PathBuf,
        differences: Vec<String>,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<out>.<suffix>` beside `<out>.jsonl` (the `.jsonl` of the output replaced).
fn side_path(out: &Path, suffix: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// `<out>.skipped.jsonl`: the samples that are not measurements, with the reason.
pub fn skipped_path(out: &Path) -> PathBuf {
    side_path(out, "skipped.jsonl")
}

/// `<out>.spectrum.jsonl`: every singular value (with `--save-spectrum`).
pub fn spectrum_path(out: &Path) -> PathBuf {
    side_path(out, "spectrum.jsonl")
}

/// `<out>.meta.json`: what made the output ([`Provenance`]).
pub fn meta_path(out: &Path) -> PathBuf {
    side_path(out, "meta.json")
}

/// Remove an output and its side files (for scratch outputs that a run writes anew).
pub fn remove_output(out: &Path) {
    for f in [
        out.to_path_buf(),
        skipped_path(out),
        spectrum_path(out),
        meta_path(out),
    ] {
        let _ = std::fs::remove_file(f);
    }
}

/// One line of `<out>.skipped.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedLine {
    pub index: usize,
    pub reason: String,
    /// The measured weight the problem was found in (a non-finite gradient, a failed SVD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
}

impl SkippedLine {
    /// What went wrong: `weight: reason`, or the reason alone.
    pub fn problem(&self) -> String {
        match &self.weight {
            Some(w) => format!("{w}: {}", self.reason),
            None => self.reason.clone(),
        }
    }
}

/// The complete lines of a JSONL file, and the file's length.
struct Lines {
    /// Per complete line: the byte offset of its end (after the newline), and its `index`.
    lines: Vec<(usize, usize)>,
    len: usize,
}

/// Read a JSONL file's complete lines. A partial last line (no final newline) is left out; it
/// is not removed (see [`claim`]).
fn complete_lines(path: &Path) -> Result<Lines, OutputError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(path)(e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut lines = Vec::new();
    let mut offset = 0;
    for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        let end = offset + line.len() + 1;
        let start = offset;
        offset = end;
        if start >= complete || line.iter().all(u8::is_ascii_whitespace) {
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
        lines.push((end, index as usize));
    }
    Ok(Lines {
        lines,
        len: bytes.len(),
    })
}

/// The `index` values of the complete lines of `path` (empty when the file does not exist).
/// Read only: a partial last line is ignored, never removed here.
pub fn done_indices(path: &Path) -> Result<BTreeSet<usize>, OutputError> {
    Ok(complete_lines(path)?
        .lines
        .into_iter()
        .map(|l| l.1)
        .collect())
}

/// An output this process holds: locked, checked against its provenance, repaired.
pub struct Claimed {
    /// The output, open for appending; its lock lasts as long as this handle.
    pub writer: JsonlAppender,
    /// Indices measured (in the output) or skipped (in the skipped file) already.
    pub done: BTreeSet<usize>,
    /// Skipped samples taken out of the skipped file to be measured again (`--retry-skipped`).
    pub retried: usize,
    /// What this claim created (nothing for an output that existed).
    pub created: Created,
}

/// The files and folders a [`claim`] created, deepest folder first.
#[derive(Debug, Default)]
pub struct Created(Vec<PathBuf>);

impl Created {
    /// After a run refused once it had claimed a new output `out`: remove what the claim created
    /// (the empty output, its `.meta.json`, empty side files, the folders it made), so that a
    /// refused run leaves nothing behind. Nothing is removed once a line was written to any of
    /// the files: that is a run to resume. Call once the output's writer is dropped.
    pub fn undo_if_empty(&self, out: &Path) {
        let lines = [out.to_path_buf(), skipped_path(out), spectrum_path(out)];
        if self.0.is_empty() || lines.iter().any(|f| non_empty(f)) {
            return;
        }
        for f in lines.iter().chain([&meta_path(out)]) {
            if self.0.contains(f) {
                let _ = std::fs::remove_file(f);
            }
        }
        let _ = remove_stale_temporaries(out.parent().unwrap_or(Path::new("")));
        // A folder that holds anything else stays.
        for d in self.0.iter().filter(|p| p.is_dir()) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Whether a file exists and has content.
fn non_empty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Under the output's lock: compare the recorded provenance with this run's, or write it for a
/// new output (`lines`: the output and its side files, which must then be empty).
fn record(out: &Path, meta: &Path, this: &Provenance, lines: &[&Path]) -> Result<(), OutputError> {
    if meta.exists() {
        let text = std::fs::read_to_string(meta).map_err(io(meta))?;
        let recorded: Provenance =
            serde_json::from_str(&text).map_err(|e| OutputError::BadMeta {
                meta: meta.to_path_buf(),
                message: e.to_string(),
            })?;
        let differences = this.differences(&recorded);
        if !differences.is_empty() {
            return Err(OutputError::Mismatch {
                path: out.to_path_buf(),
                differences,
            });
        }
        if recorded.gradlens != this.gradlens {
            tracing::warn!(
                "{}: started by gradlens {}, continued by {}",
                out.display(),
                recorded.gradlens,
                this.gradlens
            );
        }
    } else {
        // Another process may have written between the check above and the lock.
        if lines.iter().any(|f| non_empty(f)) {
            return Err(OutputError::NotOurs {
                path: out.to_path_buf(),
                meta: meta.to_path_buf(),
            });
        }
        let text = serde_json::to_string_pretty(this).expect("provenance serialises") + "\n";
        write_atomically(meta, text.as_bytes())?;
    }

    Ok(())
}

/// Take the output `out` for a run with provenance `this`: see the module's documentation.
/// `inputs` are the run's input files and folders (a data file, a checkpoint directory): the
/// output, its side files and their folder may be none of them. With `retry_skipped`, the
/// samples in the skipped file are removed from it, to be measured again.
pub fn claim(
    out: &Path,
    this: &Provenance,
    inputs: &[(&str, &Path)],
    retry_skipped: bool,
) -> Result<Claimed, OutputError> {
    let meta = meta_path(out);
    let skipped = skipped_path(out);
    let spectrum = spectrum_path(out);
    if out.is_dir() {
        return Err(io(out)(std::io::Error::other(
            "is a directory; --out takes a file name",
        )));
    }
    for f in [out, &skipped, &spectrum, &meta] {
        for (what, input) in inputs {
            let inside_model = input.is_dir() && f.parent().is_some_and(|p| same_file(p, input));
            if same_file(f, input) || inside_model {
                return Err(OutputError::IsInput {
                    path: f.to_path_buf(),
                    what: what.to_string(),
                });
            }
        }
    }
    // Not ours: content without our record. Checked before anything is created or changed.
    if !meta.exists() {
        for f in [out, &skipped, &spectrum] {
            if non_empty(f) {
                return Err(OutputError::NotOurs {
                    path: f.to_path_buf(),
                    meta,
                });
            }
        }
    }
    // What this claim creates, to be undone if the run is refused before it writes a line: the
    // folders (deepest first), the side files and the output.
    let mut created: Vec<PathBuf> = out
        .ancestors()
        .skip(1)
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    created.extend(
        [out, &skipped, &spectrum, &meta]
            .into_iter()
            .filter(|f| !f.exists())
            .map(|f| f.to_path_buf()),
    );
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let writer = JsonlAppender::open(out)?;
    match writer.file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(OutputError::Locked {
                path: out.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(out)(e)),
    }
    // Under the lock: the record, or a new one. Refused here, the claim undoes what it created.
    let created = Created(created);
    if let Err(e) = record(out, &meta, this, &[out, &skipped, &spectrum]) {
        created.undo_if_empty(out);
        return Err(e);
    }

    // Repairs, now that the files are known to be ours.
    remove_stale_temporaries(out.parent().unwrap_or(Path::new("")))?;
    let done_out = repair(out, None)?;
    let mut done_skipped = BTreeSet::new();
    let mut retried = 0;
    let skipped_lines = complete_lines(&skipped)?.lines;
    if retry_skipped && !skipped_lines.is_empty() {
        retried = skipped_lines.len();
        write_atomically(&skipped, b"")?;
    } else {
        done_skipped = repair(&skipped, None)?;
    }
    // A spectrum line is written just before its sample's line: one whose sample never reached
    // the output (a kill in between) is dropped, so that the sample's rerun does not double it.
    if spectrum.exists() {
        repair(&spectrum, Some(&done_out))?;
    }
    let mut done = done_out;
    done.extend(done_skipped);
    Ok(Claimed {
        writer,
        done,
        retried,
        created,
    })
}

/// Cut a partial last line and, with `keep`, every line from the first whose index is not in
/// `keep`; the indices of the lines kept.
fn repair(path: &Path, keep: Option<&BTreeSet<usize>>) -> Result<BTreeSet<usize>, OutputError> {
    let Lines { lines, len } = complete_lines(path)?;
    let mut end = 0;
    let mut kept = BTreeSet::new();
    for &(line_end, index) in &lines {
        if keep.is_some_and(|k| !k.contains(&index)) {
            break;
        }
        kept.insert(index);
        end = line_end;
    }
    if end < len {
        tracing::warn!(
            "{}: removing {} byte(s) an interrupted run left at its end",
            path.display(),
            len - end
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(end as u64).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok(kept)
}

/// Write a whole file through a temporary beside it and a rename: readers see the old or the
/// new content, never a part. The temporary, `.<name>.tmp.<pid>`, is locked while it is written,
/// so that one an interrupted writer left (a kill between its creation and the rename) is told
/// from one in use and removed by the next write or resume in its folder
/// ([`remove_stale_temporaries`]).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}{TEMPORARY}{}", std::process::id()));
    remove_stale_temporaries(path.parent().unwrap_or(Path::new("")))?;
    let mut f = loop {
        let f = File::create(&tmp).map_err(io(&tmp))?;
        f.lock().map_err(io(&tmp))?;
        // A cleaner may have removed the file between its creation and the lock: make it anew.
        if still_named(&f, &tmp) {
            break f;
        }
    };
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// What names a temporary of [`write_atomically`]: `.<name>.tmp.<pid>`.
const TEMPORARY: &str = ".tmp.";

/// Whether a file name is one of [`write_atomically`]'s temporaries.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(TEMPORARY).is_some_and(|(head, pid)| {
            head.len() > 1 && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Whether `path` still names the open file `f`.
fn still_named(f: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (f.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        path.exists()
    }
}

/// Remove from `dir` the temporaries of [`write_atomically`] that no writer holds: what a killed
/// run left. Returns how many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize, OutputError> {
    let shown = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let entries = match std::fs::read_dir(shown) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(shown)(e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !is_temporary(&name.to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let Ok(f) = File::open(&path) else { continue };
        // Held: a live writer's. Free: its writer is gone (a lock dies with its process).
        if f.try_lock().is_ok() && std::fs::remove_file(&path).is_ok() {
            tracing::debug!("{}: removed what an interrupted write left", path.display());
            removed += 1;
        }
    }
    Ok(removed)
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

    /// Write one record as one line, in a single write, and flush it.
    pub fn append<T: Serialize>(&mut self, line: &T) -> Result<(), OutputError> {
        let mut text = serde_json::to_string(line).expect("records serialise");
        text.push('\n');
        let before = self.file.metadata().map(|m| m.len());
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            // Leave no partial line behind (a full disk); the next run would cut it anyway.
            if let Ok(len) = before {
                let _ = self.file.set_len(len);
            }
            return Err(io(&self.path)(e));
        }
        self.file.flush().map_err(io(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov(max_length: usize) -> Provenance {
        Provenance {
            max_length,
            save_spectrum: true,
            ..crate::sink::provenance::example()
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gradlens-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A run refused after its claim, before any line: the claim's files and folders go; an
    /// output with a line, or one that existed before, stays.
    #[test]
    fn a_refused_claim_is_undone_unless_a_line_was_written() {
        let d = dir("undo");
        let out = d.join("new/deeper/o.jsonl");
        let claimed = claim(&out, &prov(8), &[], false).unwrap();
        assert!(out.is_file() && meta_path(&out).is_file());
        drop(claimed.writer);
        claimed.created.undo_if_empty(&out);
        assert!(!d.join("new").exists());

        let mut claimed = claim(&out, &prov(8), &[], false).unwrap();
        claimed
            .writer
            .append(&serde_json::json!({"index": 0}))
            .unwrap();
        drop(claimed.writer);
        claimed.created.undo_if_empty(&out);
        assert!(out.is_file() && meta_path(&out).is_file());

        // Claimed again (it exists): nothing was created, nothing is removed.
        std::fs::write(&out, b"").unwrap();
        let claimed = claim(&out, &prov(8), &[], false).unwrap();
        drop(claimed.writer);
        claimed.created.undo_if_empty(&out);
        assert!(out.is_file() && meta_path(&out).is_file());
    }

    /// A temporary an interrupted write left (no lock) goes with the next write or claim in its
    /// folder; one a live writer holds stays; other files are never touched.
    #[test]
    fn stale_temporaries_are_removed_held_ones_kept() {
        let d = dir("temporaries");
        let stale = d.join(".run.json.tmp.4242");
        let held = d.join(".other.json.tmp.4343");
        let not_ours = [
            ".run.json.tmp.",
            ".run.json.tmp.12a",
            "run.json.tmp.7",
            ".tmp.9",
        ];
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(&held, b"being written").unwrap();
        for n in not_ours {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        let holder = File::open(&held).unwrap();
        holder.lock().unwrap();
        write_atomically(&d.join("run.json"), b"{}\n").unwrap();
        assert!(!stale.exists());
        assert!(held.exists());
        for n in not_ours {
            assert!(d.join(n).exists(), "{n}");
        }
        assert_eq!(std::fs::read(d.join("run.json")).unwrap(), b"{}\n");
        drop(holder);
        // The claim of an output in the folder removes it once its writer is gone.
        let out = d.join("grads.jsonl");
        claim(&out, &prov(8), &[], false).unwrap();
        assert!(!held.exists());
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp.") && n.starts_with('.') && is_temporary(n))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn claim_records_checks_locks_and_repairs() {
        let d = dir("claim");
        let out = d.join("g.jsonl");
        let c = claim(&out, &prov(96), &[], false).unwrap();
        assert!(c.done.is_empty());
        assert!(meta_path(&out).is_file());
        // Held: a second claim fails at once.
        assert!(matches!(
            claim(&out, &prov(96), &[], false),
            Err(OutputError::Locked { .. })
        ));
        drop(c);
        // Other settings: refused, naming the option; nothing changed.
        std::fs::write(&out, "{\"index\": 0}\n{\"index\": 1}\n{\"ind").unwrap();
        std::fs::write(
            spectrum_path(&out),
            "{\"index\": 0}\n{\"index\": 1}\n{\"index\": 2}\n",
        )
        .unwrap();
        std::fs::write(skipped_path(&out), "{\"index\": 5, \"reason\": \"r\"}\n").unwrap();
        let e = claim(&out, &prov(64), &[], false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--max-length: the file has 96, this run 64"),
            "{e}"
        );
        assert!(std::fs::read_to_string(&out).unwrap().ends_with("{\"ind"));
        // Same settings: the partial line and the spectrum line of sample 2 (never written to the
        // output) go; the skipped sample counts as done.
        let c = claim(&out, &prov(96), &[], false).unwrap();
        assert_eq!(c.done, BTreeSet::from([0, 1, 5]));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"index\": 0}\n{\"index\": 1}\n"
        );
        assert_eq!(
            done_indices(&spectrum_path(&out)).unwrap(),
            BTreeSet::from([0, 1])
        );
        drop(c);
        // --retry-skipped: the skipped sample is pending again.
        let c = claim(&out, &prov(96), &[], true).unwrap();
        assert_eq!((c.done.clone(), c.retried), (BTreeSet::from([0, 1]), 1));
        assert_eq!(std::fs::read_to_string(skipped_path(&out)).unwrap(), "");
    }

    #[test]
    fn claim_refuses_what_is_not_ours() {
        let d = dir("foreign");
        let out = d.join("notes.txt");
        std::fs::write(&out, "no final newline").unwrap();
        assert!(matches!(
            claim(&out, &prov(96), &[], false),
            Err(OutputError::NotOurs { .. })
        ));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "no final newline");
        assert!(!meta_path(&out).exists());
        let data = d.join("data.json");
        std::fs::write(&data, "[]").unwrap();
        assert!(matches!(
            claim(&data, &prov(96), &[("is the data file", &data)], false),
            Err(OutputError::IsInput { .. })
        ));
        // An empty file is adopted.
        let empty = d.join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        assert!(claim(&empty, &prov(96), &[], false).is_ok());
    }
}
