//! The paper's report of measurement JSONL (a sweep's output, or the paper's own files):
//! `curves.json`, `mad.csv`, the figures of every model and condition, `report.md` and
//! `report.html`.

use crate::report::discover::{
    PanelKey, Responses, collect, column_label, column_order, dataset_title, panel_key,
};
use crate::report::pages::{html, markdown, md_to_html_tables};
use crate::report::plot::{FONT, Figure, QKVO, Series, save, slug};
use crate::report::rows::{Curve, Statistic, curves_per_projection, mad_segments};
use crate::report::summary::{ReportOptions, ReportSummary};
use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct CurveRecord<'a> {
    model: &'a str,
    condition: &'a str,
    condition_name: &'a str,
    file: String,
    projection: &'a str,
    statistic: &'static str,
    values: &'a [f64],
    n_samples: usize,
}

/// Base ↔ instruct pairs by name: `X` with `X-instruct`, `X-Instruct`, `X-it`, `X-chat`
/// (`Llama-2-7b-hf` with `Llama-2-7b-chat-hf`).
fn instruct_pairs(models: &[String]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for base in models {
        for it in models {
            if it == base {
                continue;
            }
            let cands = [
                format!("{base}-instruct"),
                format!("{base}-Instruct"),
                format!("{base}-it"),
                format!("{base}-chat"),
                base.replace("-hf", "-chat-hf"),
            ];
            if cands.iter().any(|c| c == it) {
                pairs.push((base.clone(), it.clone()));
            }
        }
    }
    pairs
}

/// Where a report goes when no `--out` is given: `<folder>/report` for a folder, `<stem>-report`
/// beside a file.
pub fn default_out(inputs: &[PathBuf]) -> PathBuf {
    let first = inputs
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("."));
    if first.is_file() {
        let stem = first
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "measurements".into());
        first.with_file_name(format!("{stem}-report"))
    } else {
        first.join("report")
    }
}

/// Build the whole report into `out`.
pub fn build(inputs: &[PathBuf], out: &Path) -> Result<ReportSummary> {
    build_with(inputs, out, &ReportOptions::default())
}

/// [`build`] with the report's options.
pub fn build_with(inputs: &[PathBuf], out: &Path, opts: &ReportOptions) -> Result<ReportSummary> {
    let (measured, mut warnings) = collect(inputs)?;
    if measured.is_empty() {
        // Say why each file was unusable (the first few reasons).
        let why: Vec<&str> = warnings.iter().take(5).map(String::as_str).collect();
        bail!(
            "no usable measurement in {}{}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        );
    }
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("font"))?;
    let figdir = out.join("figures");
    std::fs::create_dir_all(&figdir)
        .with_context(|| format!("{}: cannot create", figdir.display()))?;

    // Curves of every statistic for every file.
    let all: Vec<BTreeMap<Statistic, BTreeMap<String, Curve>>> = measured
        .iter()
        .map(|m| {
            Statistic::ALL
                .iter()
                .map(|&s| (s, curves_per_projection(&m.rows, s)))
                .collect()
        })
        .collect();

    // curves.json and mad.csv
    let mut records = Vec::new();
    let mut csv = String::from(
        "model,condition,projection,statistic,early,middle,late,all,layers,segment_rule,n_samples\n",
    );
    for (m, stats) in measured.iter().zip(&all) {
        for (stat, per) in stats {
            for (proj, curve) in per {
                records.push(CurveRecord {
                    model: &m.model,
                    condition: &m.condition.id,
                    condition_name: &m.condition.name,
                    file: m.file.display().to_string(),
                    projection: proj,
                    statistic: stat.key(),
                    values: &curve.values,
                    n_samples: curve.n,
                });
                let ([e, mi, l, a], rule) = mad_segments(&curve.values);
                let _ = writeln!(
                    csv,
                    "{},{},{},{},{e},{mi},{l},{a},{},{rule},{}",
                    m.model,
                    m.condition.id,
                    proj,
                    stat.key(),
                    curve.values.len(),
                    curve.n
                );
            }
        }
    }
    std::fs::write(
        out.join("curves.json"),
        serde_json::to_string_pretty(&records)? + "\n",
    )?;
    std::fs::write(out.join("mad.csv"), csv)?;

    // The paper's figure per (model, data set, correctness).
    let mut panels: BTreeMap<PanelKey, Vec<usize>> = BTreeMap::new();
    for (i, m) in measured.iter().enumerate() {
        panels.entry(panel_key(m)).or_default().push(i);
    }
    for v in panels.values_mut() {
        v.sort_by_key(|&i| column_order(&measured[i].condition));
    }
    let mut figures = Vec::new();
    let mut md_fig: Vec<(String, PathBuf)> = Vec::new();
    let series = |i: usize,
                  stat: Statistic,
                  projs: &[&str],
                  dashed: bool,
                  suffix: &str|
     -> Vec<Series<'_>> {
        QKVO.iter()
            .filter(|(p, _, _)| projs.contains(p))
            .filter_map(|(p, label, color)| {
                all[i][&stat].get(*p).map(|c| Series {
                    label: format!("{label}{suffix}"),
                    color: *color,
                    dashed,
                    values: &c.values,
                    x: None,
                })
            })
            .collect()
    };
    for ((model, _group, _ds, responses), idx) in &panels {
        let correct = &responses.correct();
        let first = &measured[idx[0]];
        let resp = if *correct {
            "correct responses"
        } else {
            "irrelevant responses"
        };
        let title = format!("{model} | {} | {resp}", dataset_title(first));
        let mut rows: Vec<Vec<(String, &'static str, Vec<Series<'_>>)>> =
            vec![Vec::new(), Vec::new(), Vec::new()];
        for &i in idx {
            let col = column_label(&measured[i].condition);
            let n = all[i][&Statistic::SSum]
                .values()
                .map(|c| c.n)
                .max()
                .unwrap_or(0);
            rows[0].push((
                format!("{col} | nuclear norm (n={n})"),
                Statistic::SSum.label(),
                series(
                    i,
                    Statistic::SSum,
                    &["q_proj", "k_proj", "v_proj", "o_proj"],
                    false,
                    "",
                ),
            ));
            rows[1].push((
                format!("{col} | ratio (Q, K)"),
                Statistic::SRatio.label(),
                series(i, Statistic::SRatio, &["q_proj", "k_proj"], false, ""),
            ));
            rows[2].push((
                format!("{col} | ratio (V, O)"),
                Statistic::SRatio.label(),
                series(i, Statistic::SRatio, &["v_proj", "o_proj"], false, ""),
            ));
        }
        let stem = slug(&format!(
            "{model}__{}__{}",
            dataset_title(first),
            if *correct { "correct" } else { "irrelevant" }
        ));
        let path = save(
            &Figure {
                title: title.clone(),
                cells: rows,
                x_desc: "layer",
                shared_y: opts.shared_y,
            },
            &figdir,
            &stem,
        )?;
        md_fig.push((title, path.clone()));
        figures.push(path);
    }

    // Correct vs irrelevant per CoT level, and base vs instruct, as comparison figures.
    let mut compare = |title: String,
                       stem: String,
                       pairs: Vec<(String, usize, usize)>,
                       labels: (&str, &str)|
     -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut row = Vec::new();
        for (col, a, b) in &pairs {
            let mut s = series(
                *a,
                Statistic::SSum,
                &["q_proj", "k_proj", "v_proj", "o_proj"],
                false,
                &format!(" {}", labels.0),
            );
            s.extend(series(
                *b,
                Statistic::SSum,
                &["q_proj", "k_proj", "v_proj", "o_proj"],
                true,
                &format!(" {}", labels.1),
            ));
            row.push((format!("{col} | nuclear norm"), Statistic::SSum.label(), s));
        }
        let path = save(
            &Figure {
                title: title.clone(),
                cells: vec![row],
                x_desc: "layer",
                shared_y: opts.shared_y,
            },
            &figdir,
            &slug(&stem),
        )?;
        md_fig.push((title, path.clone()));
        figures.push(path);
        Ok(())
    };
    for ((model, group, ds, responses), idx) in &panels {
        if !responses.correct() {
            continue;
        }
        let Some(wrong) = panels.get(&(
            model.clone(),
            group.clone(),
            ds.clone(),
            Responses::Irrelevant,
        )) else {
            continue;
        };
        let pairs: Vec<_> = idx
            .iter()
            .filter_map(|&a| {
                let ca = &measured[a].condition;
                wrong
                    .iter()
                    .find(|&&b| {
                        measured[b].condition.cot == ca.cot
                            && measured[b].condition.dataset == ca.dataset
                    })
                    .map(|&b| (column_label(ca), a, b))
            })
            .collect();
        let t = dataset_title(&measured[idx[0]]);
        compare(
            format!("{model} | {t} | correct (solid) vs irrelevant (dashed) responses"),
            format!("{model}__{t}__correct_vs_irrelevant"),
            pairs,
            ("correct", "irrelevant"),
        )?;
    }
    let models: Vec<String> = measured
        .iter()
        .map(|m| m.model.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (base, it) in instruct_pairs(&models) {
        for ((model, group, ds, responses), idx) in &panels {
            if model != &base || !responses.correct() {
                continue;
            }
            let Some(other) =
                panels.get(&(it.clone(), group.clone(), ds.clone(), Responses::Correct))
            else {
                continue;
            };
            let pairs: Vec<_> = idx
                .iter()
                .filter_map(|&a| {
                    let ca = &measured[a].condition;
                    other
                        .iter()
                        .find(|&&b| measured[b].condition.id == ca.id)
                        .map(|&b| (column_label(ca), a, b))
                })
                .collect();
            let t = dataset_title(&measured[idx[0]]);
            compare(
                format!("{t} | {base} (solid) vs {it} (dashed) | correct responses"),
                format!("{base}__vs__{it}__{t}"),
                pairs,
                ("base", "instruct"),
            )?;
        }
    }

    // report.md / report.html
    let md = markdown(&measured, &all, &warnings, &md_fig, out);
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("report.html"),
        html(
            &md_to_html_tables(&measured, &all),
            &measured,
            &warnings,
            &md_fig,
            out,
        ),
    )?;
    warnings.sort();
    Ok(ReportSummary {
        files: measured.len(),
        figures,
        warnings,
        out: out.to_path_buf(),
    })
}
