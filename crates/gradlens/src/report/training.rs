//! The training view of `report`: from run directories of `gradlens train` to figures of the loss
//! and gradient norm over the steps, the per-layer nuclear norms (S_sum) of Q, K, V and O at the
//! first, middle and last step in the paper's style, the MAD of those curves over the steps, and —
//! with several runs — one figure comparing them; `training.md`, `training.html` and
//! `training_mad.csv` beside.

use crate::report::pages::esc;
use crate::report::plot::{FONT, Figure, QKVO, Series, save, slug};
use crate::report::rows::{layer_and_projection, mad};
use crate::report::summary::ReportSummary;
use crate::train::records::{EvalLine, StepLine};
use crate::train::run_dir::{EVAL, STEPS};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Colours of runs compared in one chart.
const RUN_COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One training run, read.
pub struct Run {
    pub name: String,
    pub dir: PathBuf,
    pub steps: Vec<StepLine>,
    pub eval: Vec<EvalLine>,
}

/// Whether `path` is a run directory of `gradlens train`.
pub fn is_run_dir(path: &Path) -> bool {
    path.join("run.json").is_file() && path.join(STEPS).is_file()
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    text.lines()
        .enumerate()
        // A partial last line of a run in progress is not a step yet.
        .filter(|(_, l)| !l.trim().is_empty())
        .map_while(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| (i, e))
                .map(Some)
                .unwrap_or_else(|(i, e)| {
                    tracing::warn!(
                        "{}: line {}: {e}; reading stops there",
                        path.display(),
                        i + 1
                    );
                    None
                })
        })
        .map(Ok)
        .collect()
}

/// Read a run directory.
pub fn read_run(dir: &Path) -> Result<Run> {
    let steps: Vec<StepLine> = read_lines(&dir.join(STEPS))?;
    anyhow::ensure!(
        !steps.is_empty(),
        "{}: no complete step yet",
        dir.join(STEPS).display()
    );
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    Ok(Run {
        name,
        dir: dir.to_path_buf(),
        steps,
        eval: read_lines(&dir.join(EVAL))?,
    })
}

/// The per-layer S_sum of one projection (`q_proj`, …) at one step; `None` when a layer is
/// missing.
fn layer_curve(step: &StepLine, projection: &str) -> Option<Vec<f64>> {
    let mut values: Vec<Option<f64>> = Vec::new();
    for (name, stats) in &step.weights {
        if let Some((layer, proj)) = layer_and_projection(name)
            && proj == projection
        {
            if values.len() <= layer {
                values.resize(layer + 1, None);
            }
            values[layer] = Some(stats.s_sum);
        }
    }
    values
        .into_iter()
        .collect::<Option<Vec<f64>>>()
        .filter(|v| !v.is_empty())
}

/// A LoRA run's adapter gradients of one projection and part (`q_proj`, `lora_A`): at every
/// step the Frobenius norm over all layers, √Σ‖∇A_l‖²; NaN where the run has none.
fn adapter_norm(run: &Run, projection: &str, part: &str) -> Vec<f64> {
    let wanted = format!("{projection}.{part}");
    run.steps
        .iter()
        .map(|s| {
            let squares: Vec<f64> = s
                .weights
                .iter()
                .filter(|(name, _)| layer_and_projection(name).is_some_and(|(_, p)| p == wanted))
                .map(|(_, st)| st.frobenius_norm * st.frobenius_norm)
                .collect();
            if squares.is_empty() {
                f64::NAN
            } else {
                squares.iter().sum::<f64>().sqrt()
            }
        })
        .collect()
}

/// Per projection, the MAD of the per-layer S_sum curve at every step (NaN when the model has
/// fewer than two layers or the projection is missing).
fn mad_over_steps(run: &Run, projection: &str) -> Vec<f64> {
    run.steps
        .iter()
        .map(|s| match layer_curve(s, projection) {
            Some(c) if c.len() >= 2 => mad(&c),
            _ => f64::NAN,
        })
        .collect()
}

/// Build the training view of `runs` into `out`.
pub fn build(runs: &[PathBuf], out: &Path) -> Result<ReportSummary> {
    let runs: Vec<Run> = runs.iter().map(|d| read_run(d)).collect::<Result<_>>()?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("font"))?;
    let figdir = out.join("figures");
    std::fs::create_dir_all(&figdir)
        .with_context(|| format!("{}: cannot create", figdir.display()))?;
    let mut figures = Vec::new();
    let mut md = String::from("# Training runs\n\n");
    let mut csv = String::from("run,step,projection,mad_s_sum\n");

    for run in &runs {
        let xs: Vec<f64> = run.steps.iter().map(|s| s.step as f64).collect();
        let loss: Vec<f64> = run.steps.iter().map(|s| s.loss).collect();
        let norm: Vec<f64> = run.steps.iter().map(|s| s.grad_norm).collect();
        let eval_x: Vec<f64> = run.eval.iter().map(|e| e.step as f64).collect();
        let eval_loss: Vec<f64> = run.eval.iter().map(|e| e.loss).collect();
        let mut loss_series = vec![Series {
            label: "batch loss".into(),
            color: RUN_COLOURS[0],
            dashed: false,
            values: &loss,
            x: Some(xs.clone()),
        }];
        if !eval_loss.is_empty() {
            loss_series.push(Series {
                label: "evaluation loss".into(),
                color: RUN_COLOURS[1],
                dashed: true,
                values: &eval_loss,
                x: Some(eval_x),
            });
        }
        let mut cells = vec![vec![
            ("loss".to_string(), "loss", loss_series),
            (
                "gradient norm (before clipping)".to_string(),
                "‖∇L‖",
                vec![Series {
                    label: "grad_norm".into(),
                    color: RUN_COLOURS[0],
                    dashed: false,
                    values: &norm,
                    x: Some(xs.clone()),
                }],
            ),
        ]];
        // A LoRA run: its adapters' gradient norms per projection (A solid, B dashed), beside
        // the base weights' curves below.
        let adapters: Vec<(String, RGBColor, bool, Vec<f64>)> = QKVO
            .iter()
            .flat_map(|(proj, label, colour)| {
                [("lora_A", false), ("lora_B", true)].map(|(part, dashed)| {
                    let label = format!("{label} {}", &part[5..]);
                    (label, *colour, dashed, adapter_norm(run, proj, part))
                })
            })
            .filter(|(.., v)| v.iter().any(|x| x.is_finite()))
            .collect();
        if !adapters.is_empty() {
            cells.push(vec![(
                "LoRA adapters: ‖∇A‖ (solid), ‖∇B‖ (dashed) over the layers".to_string(),
                "‖∇‖",
                adapters
                    .iter()
                    .map(|(label, colour, dashed, v)| Series {
                        label: label.clone(),
                        color: *colour,
                        dashed: *dashed,
                        values: v,
                        x: Some(xs.clone()),
                    })
                    .collect(),
            )]);
        }
        // Per-layer S_sum at the first, middle and last step.
        let n = run.steps.len();
        let picks = {
            let mut p = vec![0, n / 2, n - 1];
            p.dedup();
            p
        };
        let curves: Vec<Vec<Option<Vec<f64>>>> = QKVO
            .iter()
            .map(|(proj, _, _)| {
                picks
                    .iter()
                    .map(|&i| layer_curve(&run.steps[i], proj))
                    .collect()
            })
            .collect();
        let shades = [
            RGBColor(120, 170, 230),
            RGBColor(60, 110, 200),
            RGBColor(10, 30, 120),
        ];
        let mut row = Vec::new();
        for ((_, label, _), per_step) in QKVO.iter().zip(&curves) {
            let series: Vec<Series<'_>> = picks
                .iter()
                .zip(per_step)
                .enumerate()
                .filter_map(|(k, (&i, c))| {
                    c.as_ref().map(|c| Series {
                        label: format!("step {}", run.steps[i].step),
                        color: shades[k.min(2)],
                        dashed: k == 0,
                        values: c,
                        x: None,
                    })
                })
                .collect();
            row.push((format!("{label} | nuclear norm of ∇L"), "S_sum", series));
            if row.len() == 2 {
                cells.push(std::mem::take(&mut row));
            }
        }
        let mads: Vec<Vec<f64>> = QKVO
            .iter()
            .map(|(proj, _, _)| mad_over_steps(run, proj))
            .collect();
        let mad_series: Vec<Series<'_>> = QKVO
            .iter()
            .zip(&mads)
            .map(|((_, label, colour), m)| Series {
                label: label.to_string(),
                color: *colour,
                dashed: false,
                values: m,
                x: Some(xs.clone()),
            })
            .collect();
        cells.push(vec![(
            "MAD of the per-layer S_sum (n/a below 2 layers)".to_string(),
            "MAD",
            mad_series,
        )]);
        let title = format!("{} — training", run.name);
        let path = save_over_steps(
            &title,
            cells,
            &figdir,
            &slug(&format!("{}-training", run.name)),
        )?;
        for (s, step) in run.steps.iter().enumerate() {
            for ((proj, _, _), m) in QKVO.iter().zip(&mads) {
                let _ = writeln!(csv, "{},{},{proj},{}", run.name, step.step, m[s]);
            }
        }
        let (first, last) = (&run.steps[0], &run.steps[n - 1]);
        let _ = writeln!(md, "## {}\n", run.name);
        let _ = writeln!(
            md,
            "{} steps ({}); batch loss {:.4} → {:.4}; gradient norm {:.4} → {:.4}{}\n",
            n,
            run.dir.display(),
            first.loss,
            last.loss,
            first.grad_norm,
            last.grad_norm,
            match (run.eval.first(), run.eval.last()) {
                (Some(a), Some(b)) => format!("; evaluation loss {:.4} → {:.4}", a.loss, b.loss),
                _ => String::new(),
            }
        );
        let _ = writeln!(
            md,
            "| MAD of S_sum | Q | K | V | O |\n| --- | ---: | ---: | ---: | ---: |"
        );
        for (label, i) in [("first step", 0), ("last step", n - 1)] {
            let cells: Vec<String> = mads
                .iter()
                .map(|m| {
                    if m[i].is_finite() {
                        format!("{:.4}", m[i])
                    } else {
                        "n/a".into()
                    }
                })
                .collect();
            let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
        }
        if !adapters.is_empty() {
            let _ = writeln!(
                md,
                "\nLoRA run: the gradient norm is the adapters'. Adapter gradients (Frobenius norm \
                 over the layers), first step → last: {}",
                adapters
                    .iter()
                    .map(|(label, _, _, v)| format!("{label} {:.4} → {:.4}", v[0], v[n - 1]))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(md, "\n![{title}](figures/{})\n", file_name(&path));
        figures.push(path);
    }

    if runs.len() > 1 {
        let mut data: Vec<RunCurves> = Vec::new();
        for run in &runs {
            data.push((
                run.name.clone(),
                run.steps.iter().map(|s| s.step as f64).collect(),
                run.steps.iter().map(|s| s.loss).collect(),
                run.steps.iter().map(|s| s.grad_norm).collect(),
                QKVO.iter()
                    .map(|(p, _, _)| mad_over_steps(run, p))
                    .collect(),
            ));
        }
        let mut cells = vec![vec![
            (
                "batch loss".to_string(),
                "loss",
                per_run(&data, data.iter().map(|d| d.2.as_slice()).collect()),
            ),
            (
                "gradient norm".to_string(),
                "‖∇L‖",
                per_run(&data, data.iter().map(|d| d.3.as_slice()).collect()),
            ),
        ]];
        let mut row = Vec::new();
        for (j, (_, label, _)) in QKVO.iter().enumerate() {
            row.push((
                format!("{label} | MAD of the per-layer S_sum"),
                "MAD",
                per_run(&data, data.iter().map(|d| d.4[j].as_slice()).collect()),
            ));
            if row.len() == 2 {
                cells.push(std::mem::take(&mut row));
            }
        }
        let title = "runs compared over the steps".to_string();
        let path = save_over_steps(&title, cells, &figdir, "training-compare")?;
        let _ = writeln!(
            md,
            "## Runs compared\n\n![{title}](figures/{})\n",
            file_name(&path)
        );
        figures.push(path);
    }
    std::fs::write(out.join("training.md"), &md)?;
    std::fs::write(out.join("training_mad.csv"), csv)?;
    let mut html = String::from(
        "<!doctype html><meta charset=\"utf-8\"><title>gradlens training report</title>\
         <body style=\"font-family:sans-serif;max-width:1100px;margin:auto\">",
    );
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let _ = write!(html, "<h2>{}</h2>", esc(h));
        } else if let Some(h) = line.strip_prefix("# ") {
            let _ = write!(html, "<h1>{}</h1>", esc(h));
        } else if let Some(img) = line.strip_prefix("![") {
            let (alt, src) = img.split_once("](").unwrap_or((img, ""));
            let _ = write!(
                html,
                "<p><img alt=\"{}\" src=\"{}\" style=\"max-width:100%\"></p>",
                esc(alt),
                esc(src.trim_end_matches(')'))
            );
        } else if line.starts_with('|') {
            if line.contains("---") {
                continue;
            }
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| format!("<td>{}</td>", esc(c.trim())))
                .collect();
            let _ = write!(html, "<table><tr>{}</tr></table>", cells.join(""));
        } else if !line.trim().is_empty() {
            let _ = write!(html, "<p>{}</p>", esc(line));
        }
    }
    html.push_str("</body>");
    std::fs::write(out.join("training.html"), html)?;
    Ok(ReportSummary {
        files: runs.len(),
        figures,
        warnings: Vec::new(),
        out: out.to_path_buf(),
    })
}

/// A run's name, steps, loss, gradient norm and MAD per projection over the steps.
type RunCurves = (String, Vec<f64>, Vec<f64>, Vec<f64>, Vec<Vec<f64>>);

/// Save a figure whose x axis is the step (each chart fits its own curves).
fn save_over_steps(
    title: &str,
    cells: Vec<Vec<(String, &'static str, Vec<Series<'_>>)>>,
    dir: &Path,
    stem: &str,
) -> Result<PathBuf> {
    save(
        &Figure {
            title: title.to_string(),
            cells,
            x_desc: "step",
            shared_y: false,
        },
        dir,
        stem,
    )
}

/// One series per run of the values picked from each.
fn per_run<'a>(data: &'a [RunCurves], values: Vec<&'a [f64]>) -> Vec<Series<'a>> {
    data.iter()
        .zip(values)
        .enumerate()
        .map(|(k, (d, values))| Series {
            label: d.0.clone(),
            color: RUN_COLOURS[k % RUN_COLOURS.len()],
            dashed: k >= RUN_COLOURS.len(),
            values,
            x: Some(d.1.clone()),
        })
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
