//! Manifests of data sets and conditions (TOML, `datasets/*.toml`): which data file holds which
//! condition of the paper (task group, CoT level, correct or irrelevant responses).

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The CoT level of a condition's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cot {
    /// Answer only.
    None,
    /// The data set's own short rationale.
    Simplified,
    /// GPT-4o step by step.
    Detailed,
}

impl Cot {
    pub fn label(self) -> &'static str {
        match self {
            Cot::None => "None CoT",
            Cot::Simplified => "Simplified CoT",
            Cot::Detailed => "Detailed CoT",
        }
    }
}

/// One condition: a data file and what it stands for.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// e.g. `reasoning/gsm8k/detailed/correct`.
    pub id: String,
    /// Relative to the data root.
    pub file: String,
    /// `reasoning`, `math` or `wiki`.
    pub group: String,
    /// e.g. `gsm8k`, `algebra`, `popular_100`.
    pub dataset: String,
    /// Absent for knowledge (wiki) conditions.
    pub cot: Option<Cot>,
    /// Correct (true) or irrelevant (false) responses.
    pub correct: bool,
    /// Display name.
    pub name: String,
}

impl Condition {
    /// The folder the paper's layout files results under (the data file's folder, e.g. `cot_500`).
    pub fn task_folder(&self) -> String {
        Path::new(&self.file)
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.group.clone())
    }

    /// The data file's stem (`aqua_train_no_cot`).
    pub fn file_stem(&self) -> String {
        Path::new(&self.file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Where the files are when no data root is given (relative to the manifest's folder).
    pub default_data_root: Option<String>,
    /// Where the files are, always (relative to the manifest's folder): a data set that ships
    /// with its manifest, such as gradlens' built-in one. A run's data root (`--data-root`,
    /// `$GRADLENS_DATA`, a sweep's `data_root`) belongs to other manifests and does not apply.
    pub data_root: Option<String>,
    #[serde(rename = "condition")]
    pub conditions: Vec<Condition>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: no condition matches {pattern:?} (ids look like {example:?})")]
    UnknownCondition {
        path: PathBuf,
        pattern: String,
        example: String,
    },
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Invalid {
            path: path.to_path_buf(),
            message: toml_message(text, &e),
        })?;
        m.path = path.to_path_buf();
        if m.data_root.is_some() && m.default_data_root.is_some() {
            return Err(ManifestError::Invalid {
                path: path.to_path_buf(),
                message: "data_root (the data ships with the manifest) and default_data_root \
                          (a data root given at run time, else this one) exclude each other: keep one"
                    .into(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &m.conditions {
            let file = Path::new(&c.file);
            let inside = !c.file.is_empty()
                && file
                    .components()
                    .all(|p| matches!(p, std::path::Component::Normal(_)));
            if !inside {
                return Err(ManifestError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "condition {:?}: file {:?} must be a path inside the data root (relative, \
                         no '..')",
                        c.id, c.file
                    ),
                });
            }
            if !seen.insert(c.id.as_str()) {
                return Err(ManifestError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("condition id {:?} appears twice", c.id),
                });
            }
        }
        Ok(m)
    }

    /// The conditions whose ids match any of `patterns` (exact ids or globs such as
    /// `reasoning/*/detailed/*`), in manifest order. A pattern that matches nothing is an error.
    pub fn select(&self, patterns: &[String]) -> Result<Vec<Condition>, ManifestError> {
        let mut keep = vec![false; self.conditions.len()];
        for p in patterns {
            let pat = glob::Pattern::new(p).map_err(|e| ManifestError::Invalid {
                path: self.path.clone(),
                message: format!("bad condition pattern {p:?}: {e}"),
            })?;
            let mut any = false;
            for (i, c) in self.conditions.iter().enumerate() {
                if pat.matches(&c.id) {
                    keep[i] = true;
                    any = true;
                }
            }
            if !any {
                return Err(ManifestError::UnknownCondition {
                    path: self.path.clone(),
                    pattern: p.clone(),
                    example: self
                        .conditions
                        .first()
                        .map(|c| c.id.clone())
                        .unwrap_or_default(),
                });
            }
        }
        Ok(self
            .conditions
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(c, _)| c.clone())
            .collect())
    }

    /// The manifest's default data root, resolved against its folder.
    pub fn default_root(&self) -> Option<PathBuf> {
        self.resolve(self.default_data_root.as_deref())
    }

    /// The data root the manifest fixes (its data ships with it), resolved against its folder.
    pub fn bundled_root(&self) -> Option<PathBuf> {
        self.resolve(self.data_root.as_deref())
    }

    fn resolve(&self, root: Option<&str>) -> Option<PathBuf> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        root.map(|r| crate::load::paths::normalize(&base.join(r)))
    }
}

/// A TOML error on one line: `line 4, column 1: unknown field `sample`, expected …`.
pub fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}
