//! The report's pages: the MAD tables, `report.md`, and `report.html` from the same content.

use crate::report::discover::{
    Measured, PanelKey, column_label, column_order, dataset_title, panel_key,
};
use crate::report::plot::QKVO;
use crate::report::rows::{Curve, Statistic, mad_segments};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub(crate) fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The MAD tables in the paper's form: per (model, data set, correctness): rows CoT level × Q/K/V/O,
/// columns early / middle / late / all, for the nuclear norm.
pub(crate) fn mad_tables(
    measured: &[Measured],
    all: &[BTreeMap<Statistic, BTreeMap<String, Curve>>],
) -> Vec<(String, Vec<Vec<String>>, &'static str)> {
    let mut panels: BTreeMap<PanelKey, Vec<usize>> = BTreeMap::new();
    for (i, m) in measured.iter().enumerate() {
        panels.entry(panel_key(m)).or_default().push(i);
    }
    let mut out = Vec::new();
    for ((model, _, _, responses), mut idx) in panels {
        let correct = responses.correct();
        idx.sort_by_key(|&i| column_order(&measured[i].condition));
        let mut rows = Vec::new();
        let mut rule = "paper";
        for &i in &idx {
            for (p, label, _) in QKVO {
                if let Some(c) = all[i][&Statistic::SSum].get(p) {
                    let ([e, mi, l, a], r) = mad_segments(&c.values);
                    rule = r;
                    let f = |x: f64| {
                        if x.is_nan() {
                            "n/a".to_string()
                        } else {
                            format!("{x:.4}")
                        }
                    };
                    rows.push(vec![
                        column_label(&measured[i].condition),
                        label.to_string(),
                        f(e),
                        f(mi),
                        f(l),
                        f(a),
                    ]);
                }
            }
        }
        let resp = if correct { "correct" } else { "irrelevant" };
        out.push((
            format!(
                "{model} | {} | {resp} responses",
                dataset_title(&measured[idx[0]])
            ),
            rows,
            rule,
        ));
    }
    out
}

pub(crate) fn markdown(
    measured: &[Measured],
    all: &[BTreeMap<Statistic, BTreeMap<String, Curve>>],
    warnings: &[String],
    figs: &[(String, PathBuf)],
    out: &Path,
) -> String {
    let mut s = String::from("# gradlens report\n\n");
    s += "Layer-wise gradient statistics of the attention projections (Q, K, V, O) per sample, as in\n\
          *What Happened in LLMs Layers when Trained for Fast vs. Slow Thinking* (arXiv 2410.23743).\n\
          For each layer, a curve is the mean over samples of a statistic of that layer's weight gradient:\n\
          the **nuclear norm** (sum of singular values, `S_sum`) or the **ratio** `S_max / S_sum`. A large,\n\
          fluctuating nuclear norm across layers means the sample pushes the model hard and unevenly (the\n\
          paper's \"fast thinking\"); small, flat curves mean stable learning (\"slow thinking\", detailed CoT).\n\
          **MAD** is the mean absolute difference between consecutive layers' values: how much a curve\n\
          fluctuates; early / middle / late split the layers as the paper does (rule noted per table).\n\n";
    s += "## Files and samples\n\n| model | condition | samples measured | skipped (why) | unreadable lines |\n|---|---|---|---|---|\n";
    for [model, condition, samples, skipped, unreadable] in files_rows(measured) {
        let _ = writeln!(
            s,
            "| {model} | {condition} | {samples} | {skipped} | {unreadable} |"
        );
    }
    if !warnings.is_empty() {
        s += "\n## Warnings\n\n";
        for w in warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    s += "\n## MAD of the nuclear-norm curves\n\n";
    for (title, rows, rule) in mad_tables(measured, all) {
        let _ = writeln!(
            s,
            "### {title}\n\nSegments: {} rule.\n\n| CoT / set | proj | early | middle | late | all |\n|---|---|---|---|---|---|",
            if rule == "paper" {
                "the paper's"
            } else {
                "quarters (L/4, 3L/4)"
            }
        );
        for r in rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s += "\n";
    }
    s += "## Figures\n\nEach figure: one column per condition; rows: nuclear norm of Q/K/V/O per layer, then the\nratio S_max/S_sum for Q and K, and for V and O. Comparison figures draw one condition solid and the\nother dashed. Machine-readable: `curves.json`, `mad.csv`.\n\n";
    for (title, path) in figs {
        let _ = writeln!(s, "### {title}\n\n![{title}]({})\n", rel(path, out));
    }
    s
}

pub(crate) fn md_to_html_tables(
    measured: &[Measured],
    all: &[BTreeMap<Statistic, BTreeMap<String, Curve>>],
) -> String {
    let mut s = String::new();
    for (title, rows, rule) in mad_tables(measured, all) {
        let _ = write!(
            s,
            "<h3>{}</h3><p>Segments: {}.</p><table><tr><th>CoT / set</th><th>proj</th><th>early</th><th>middle</th><th>late</th><th>all</th></tr>",
            esc(&title),
            if rule == "paper" {
                "the paper's rule"
            } else {
                "quarters (L/4, 3L/4)"
            }
        );
        for r in rows {
            s += "<tr>";
            for c in r {
                let _ = write!(s, "<td>{}</td>", esc(&c));
            }
            s += "</tr>";
        }
        s += "</table>";
    }
    s
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn html(
    tables: &str,
    measured: &[Measured],
    warnings: &[String],
    figs: &[(String, PathBuf)],
    out: &Path,
) -> String {
    let mut s = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>gradlens report</title><style>\
         body{font-family:sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;color:#222}\
         table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
         th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;border:1px solid #eee}\
         .warn{color:#a33}</style></head><body><h1>gradlens report</h1>",
    );
    s += "<p>Layer-wise gradient statistics of the attention projections (Q, K, V, O) per sample, as in <em>What Happened in LLMs Layers \
          when Trained for Fast vs. Slow Thinking</em> (arXiv 2410.23743). A curve is, per layer, the mean over samples of the \
          <b>nuclear norm</b> (sum of singular values) of that layer's weight gradient, or of the <b>ratio</b> S_max/S_sum. \
          <b>MAD</b> is the mean absolute difference between consecutive layers: how much a curve fluctuates across layers \
          (early / middle / late: the paper's layer split). Large, fluctuating norms: \"fast thinking\"; small, flat ones: \
          stable learning (detailed CoT).</p><h2>Files and samples</h2><table><tr><th>model</th><th>condition</th>\
          <th>samples measured</th><th>skipped (why)</th><th>unreadable lines</th></tr>";
    for row in files_rows(measured) {
        s += "<tr>";
        for cell in row {
            let _ = write!(s, "<td>{}</td>", esc(&cell));
        }
        s += "</tr>";
    }
    s += "</table>";
    if !warnings.is_empty() {
        s += "<h2>Warnings</h2><ul>";
        for w in warnings {
            let _ = write!(s, "<li class=\"warn\">{}</li>", esc(w));
        }
        s += "</ul>";
    }
    s += "<h2>MAD of the nuclear-norm curves</h2>";
    s += tables;
    s += "<h2>Figures</h2><p>One column per condition; rows: nuclear norm of Q/K/V/O per layer, then S_max/S_sum for Q and K, and for V and O. \
          Comparison figures: one condition solid, the other dashed. Vector versions (SVG) and <code>curves.json</code>, \
          <code>mad.csv</code> lie beside this file.</p>";
    for (title, path) in figs {
        let r = rel(path, out);
        let _ = write!(
            s,
            "<h3>{}</h3><a href=\"{r}\"><img src=\"{r}\" alt=\"{}\"></a>",
            esc(title),
            esc(title)
        );
    }
    s += "</body></html>\n";
    s
}

/// The rows of the "Files and samples" table, as plain text (the pages format and escape them):
/// model, condition, samples measured, skipped (with the reasons), unreadable lines.
fn files_rows(measured: &[Measured]) -> Vec<[String; 5]> {
    measured
        .iter()
        .map(|m| {
            let skipped = if m.skipped.is_empty() {
                "0".to_string()
            } else {
                m.skipped
                    .iter()
                    .map(|(r, n)| format!("{n}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            [
                m.model.clone(),
                m.condition.name.clone(),
                m.rows.len().to_string(),
                skipped,
                m.notes.bad_lines.len().to_string(),
            ]
        })
        .collect()
}
