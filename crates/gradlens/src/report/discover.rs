//! Which measurement files a report reads and what each stands for: the JSONL files under the
//! inputs, identified by the dataset catalogue (the manifests' conditions) or by their
//! provenance, read into rows with their notes and skipped samples.

use crate::load::datasets::{Condition, Cot, Manifest};
use crate::report::rows::{ReadNotes, Row, layer_count, read_rows};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PAPER_MANIFEST: &str = include_str!("../../../../datasets/paper.toml");
const BUILTIN_MANIFEST: &str = include_str!("../../../../datasets/builtin.toml");
/// One measurement file and what it stands for.
#[derive(Debug, Clone)]
pub struct Measured {
    pub file: PathBuf,
    pub model: String,
    pub condition: Condition,
    pub rows: Vec<Row>,
    pub notes: ReadNotes,
    /// Reasons of the samples in the `.skipped.jsonl` sidecar, with counts.
    pub skipped: BTreeMap<String, usize>,
    pub layers: usize,
}

fn jsonl_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            jsonl_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "jsonl")
            && !p.to_string_lossy().ends_with(".skipped.jsonl")
            && !p.to_string_lossy().ends_with(".spectrum.jsonl")
        {
            out.push(p);
        }
    }
    Ok(())
}

/// The conditions gradlens knows (paper and built-in manifests), keyed by (task folder, file stem).
fn catalog() -> BTreeMap<(String, String), Condition> {
    let mut map = BTreeMap::new();
    for (name, text) in [
        ("paper.toml", PAPER_MANIFEST),
        ("builtin.toml", BUILTIN_MANIFEST),
    ] {
        let m = Manifest::parse(Path::new(name), text).expect("embedded manifests parse");
        for c in m.conditions {
            map.insert((c.task_folder(), c.file_stem()), c);
        }
    }
    map
}

/// (model, condition) of a file: the sweep layout `<task>/<model>/grads_<stem>.jsonl` mapped
/// through the manifests, else the file's own name.
fn identify(file: &Path, cat: &BTreeMap<(String, String), Condition>) -> (String, Condition) {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let data_stem = stem.strip_prefix("grads_").unwrap_or(&stem).to_string();
    let model_dir = file.parent();
    let model = model_dir
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let task = model_dir
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(c) = cat.get(&(task.clone(), data_stem.clone())) {
        return (model, c.clone());
    }
    // A stand-alone output: its record names the checkpoint and the data file it was made from.
    if let Some(found) = identify_by_provenance(file, cat) {
        return found;
    }
    (model, unlisted_condition(&task, &data_stem, &task))
}

/// A condition no manifest lists: named after its data file `<task>/<stem>.json`.
fn unlisted_condition(task: &str, stem: &str, group: &str) -> Condition {
    Condition {
        id: format!("{task}/{stem}"),
        file: format!("{task}/{stem}.json"),
        group: group.into(),
        dataset: stem.into(),
        cot: None,
        correct: !task.contains("wrong_answer"),
        name: stem.into(),
    }
}

/// (model, condition) of an output from its `.meta.json`: the checkpoint folder's name (with
/// "instruct" in instruct mode), and the condition of its data file (`<task>/<file>.json` through
/// the manifests, else named after the file).
fn identify_by_provenance(
    file: &Path,
    cat: &BTreeMap<(String, String), Condition>,
) -> Option<(String, Condition)> {
    let text = std::fs::read_to_string(crate::sink::output::meta_path(file)).ok()?;
    let p: crate::sink::provenance::Provenance = serde_json::from_str(&text).ok()?;
    let name = |s: &str| {
        Path::new(s)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    let mut model = name(p.model.trim_end_matches('/'))?;
    if p.prompt.starts_with("instruct") {
        model.push_str(" (instruct)");
    }
    let data = Path::new(&p.data);
    let stem = data.file_stem()?.to_string_lossy().into_owned();
    let task = data
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cond = cat
        .get(&(task.clone(), stem.clone()))
        .cloned()
        .unwrap_or_else(|| Condition {
            id: format!("{task}/{stem}"),
            file: format!("{task}/{stem}.json"),
            group: "data".into(),
            dataset: stem.clone(),
            cot: None,
            correct: !task.contains("wrong_answer"),
            name: stem.clone(),
        });
    Some((model, cond))
}

/// Read the given files, or every JSONL under a folder.
pub fn collect(inputs: &[PathBuf]) -> Result<(Vec<Measured>, Vec<String>)> {
    let mut files = Vec::new();
    for i in inputs {
        if i.is_dir() {
            jsonl_files(i, &mut files)?;
        } else if i.is_file() {
            files.push(i.clone());
        } else {
            bail!("{}: no such file or folder", i.display());
        }
    }
    if files.is_empty() {
        bail!(
            "no measurement JSONL found in {} (expected grads_*.jsonl files, e.g. a sweep's output folder)",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    files.sort();
    let cat = catalog();
    let mut warnings = Vec::new();
    let mut measured = Vec::new();
    for file in files {
        let (rows, notes) = read_rows(&file)?;
        for (line, e) in &notes.bad_lines {
            warnings.push(format!(
                "{}: line {line} skipped (not a complete JSON line: {e})",
                file.display()
            ));
        }
        let skipped_file = crate::sink::output::skipped_path(&file);
        let mut skipped = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&skipped_file) {
            for l in text.lines() {
                let reason = serde_json::from_str::<crate::sink::output::SkippedLine>(l)
                    .map(|s| s.reason)
                    .unwrap_or_else(|_| "unreadable".into());
                // Group "no response token within max_length N (the prompt takes K tokens)".
                let key = reason.split(" (").next().unwrap_or(&reason).to_string();
                *skipped.entry(key).or_insert(0) += 1;
            }
        }
        if rows.is_empty() {
            warnings.push(format!("{}: no measurement in the file", file.display()));
            continue;
        }
        let layers = rows.iter().map(layer_count).max().unwrap_or(0);
        let (model, condition) = identify(&file, &cat);
        measured.push(Measured {
            file,
            model,
            condition,
            rows,
            notes,
            skipped,
            layers,
        });
    }
    // One model, one depth: files that disagree with the model's most common layer count are left out.
    let mut depth: BTreeMap<String, BTreeMap<usize, usize>> = BTreeMap::new();
    for m in &measured {
        *depth
            .entry(m.model.clone())
            .or_default()
            .entry(m.layers)
            .or_default() += 1;
    }
    measured.retain(|m| {
        let counts = &depth[&m.model];
        let usual = counts.iter().max_by_key(|(l, n)| (**n, **l)).map(|(l, _)| *l).unwrap_or(0);
        if m.layers != usual {
            warnings.push(format!(
                "{}: {} layers, but the other files of model {:?} have {usual}: left out (different checkpoints under one model name?)",
                m.file.display(),
                m.layers,
                m.model
            ));
            false
        } else {
            true
        }
    });
    Ok((measured, warnings))
}

/// Panels of the paper's figure: per (model, group, dataset or "", responses) the columns; correct
/// responses sort before irrelevant ones.
pub(crate) type PanelKey = (String, String, String, Responses);

/// Which responses a condition holds, in the order reports show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Responses {
    Correct,
    Irrelevant,
}

impl Responses {
    pub(crate) fn of(correct: bool) -> Self {
        if correct {
            Responses::Correct
        } else {
            Responses::Irrelevant
        }
    }
    pub(crate) fn correct(self) -> bool {
        self == Responses::Correct
    }
}

pub(crate) fn column_label(c: &Condition) -> String {
    match c.cot {
        Some(cot) => cot.label().to_string(),
        None => c.name.split(',').next().unwrap_or(&c.dataset).to_string(),
    }
}

pub(crate) fn panel_key(m: &Measured) -> PanelKey {
    let dataset = if m.condition.cot.is_some() {
        m.condition.dataset.clone()
    } else {
        String::new()
    };
    (
        m.model.clone(),
        m.condition.group.clone(),
        dataset,
        Responses::of(m.condition.correct),
    )
}

pub(crate) fn column_order(c: &Condition) -> (u8, String) {
    match c.cot {
        Some(Cot::None) => (0, String::new()),
        Some(Cot::Simplified) => (1, String::new()),
        Some(Cot::Detailed) => (2, String::new()),
        None => (3, c.dataset.clone()),
    }
}

pub(crate) fn dataset_title(m: &Measured) -> String {
    let c = &m.condition;
    if c.cot.is_some() {
        c.name.split(',').next().unwrap_or(&c.dataset).to_string()
    } else {
        c.group.clone()
    }
}
