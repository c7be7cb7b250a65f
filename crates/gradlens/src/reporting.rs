//! `report`: from a folder of measurement JSONL (a sweep's output, or the paper's own files) to
//! `curves.json`, `mad.csv`, figures (PNG and SVG) and `report.md` / `report.html`.

use crate::datasets::{Condition, Cot, Manifest};
use crate::report::{
    Curve, ReadNotes, Row, Statistic, curves_per_projection, layer_count, mad_segments, read_rows,
};
use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const PAPER_MANIFEST: &str = include_str!("../../../datasets/paper.toml");
const BUILTIN_MANIFEST: &str = include_str!("../../../datasets/builtin.toml");
pub(crate) static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");

/// Projections drawn, with their colours (the paper's: red, green, blue, grey).
pub(crate) const QKVO: [(&str, &str, RGBColor); 4] = [
    ("q_proj", "Q", RGBColor(214, 39, 40)),
    ("k_proj", "K", RGBColor(44, 160, 44)),
    ("v_proj", "V", RGBColor(31, 119, 180)),
    ("o_proj", "O", RGBColor(127, 127, 127)),
];

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

/// What a report run found, for messages and tests.
#[derive(Debug, Clone, Default)]
pub struct ReportSummary {
    pub files: usize,
    pub figures: Vec<PathBuf>,
    pub warnings: Vec<String>,
    pub out: PathBuf,
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
    let text = std::fs::read_to_string(crate::output::meta_path(file)).ok()?;
    let p: crate::provenance::Provenance = serde_json::from_str(&text).ok()?;
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
        let skipped_file = crate::output::skipped_path(&file);
        let mut skipped = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&skipped_file) {
            for l in text.lines() {
                let reason = serde_json::from_str::<crate::output::SkippedLine>(l)
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

/// Panels of the paper's figure: per (model, group, dataset or "", responses) the columns; correct
/// responses sort before irrelevant ones.
type PanelKey = (String, String, String, Responses);

/// Which responses a condition holds, in the order reports show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Responses {
    Correct,
    Irrelevant,
}

impl Responses {
    fn of(correct: bool) -> Self {
        if correct {
            Responses::Correct
        } else {
            Responses::Irrelevant
        }
    }
    fn correct(self) -> bool {
        self == Responses::Correct
    }
}

fn column_label(c: &Condition) -> String {
    match c.cot {
        Some(cot) => cot.label().to_string(),
        None => c.name.split(',').next().unwrap_or(&c.dataset).to_string(),
    }
}

fn panel_key(m: &Measured) -> PanelKey {
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

fn column_order(c: &Condition) -> (u8, String) {
    match c.cot {
        Some(Cot::None) => (0, String::new()),
        Some(Cot::Simplified) => (1, String::new()),
        Some(Cot::Detailed) => (2, String::new()),
        None => (3, c.dataset.clone()),
    }
}

fn dataset_title(m: &Measured) -> String {
    let c = &m.condition;
    if c.cot.is_some() {
        c.name.split(',').next().unwrap_or(&c.dataset).to_string()
    } else {
        c.group.clone()
    }
}

/// A series on a chart: label, colour, dashed, values per layer (or at the x positions `x`).
pub(crate) struct Series<'a> {
    pub label: String,
    pub color: RGBColor,
    pub dashed: bool,
    pub values: &'a [f64],
    /// The x of each value (default: 0, 1, 2, … — the layers).
    pub x: Option<Vec<f64>>,
}

impl Series<'_> {
    fn points(&self) -> Vec<(f64, f64)> {
        self.values
            .iter()
            .enumerate()
            .map(|(i, &v)| (self.x.as_ref().map_or(i as f64, |x| x[i]), v))
            .collect()
    }
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    x_desc: &str,
    series: &[Series<'_>],
    y_range: Option<(f64, f64)>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // Series without their own x run over the layers.
    let x_desc = if series.iter().all(|s| s.x.is_none()) {
        "layer"
    } else {
        x_desc
    };
    let (mut x_lo, mut x_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (x, _) in series.iter().flat_map(Series::points) {
        x_lo = x_lo.min(x);
        x_hi = x_hi.max(x);
    }
    if !x_lo.is_finite() {
        (x_lo, x_hi) = (0.0, 1.0);
    } else if x_hi <= x_lo {
        x_hi = x_lo + 1.0;
    }
    let (mut lo, mut hi) = y_range.unwrap_or_else(|| value_range(series));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-12);
    let (lo, hi) = (
        if lo >= 0.0 {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        },
        hi + pad,
    );
    // The legend goes in a strip below the chart, never over the curves.
    let (width, height) = area.dim_in_pixel();
    let layout = legend_layout(series, width);
    let legend_h = layout
        .iter()
        .map(|e| e.1)
        .max()
        .map_or(0, |r| (r + 1) * 18 + 6);
    let (plot_area, legend_area) = area.split_vertically(height.saturating_sub(legend_h as u32));
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x_lo..x_hi, lo..hi)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_labels(((x_hi - x_lo) as usize + 1).min(15))
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_desc(y_label)
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for s in series {
        let pts = s.points();
        let style = ShapeStyle::from(&s.color).stroke_width(2);
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, style))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        } else {
            chart
                .draw_series(LineSeries::new(pts, style))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    // The legend, dashed series dashed there too.
    for (s, (x, row)) in series.iter().zip(layout) {
        let y = row as i32 * 18 + 12;
        let style = ShapeStyle::from(&s.color).stroke_width(2);
        let line = vec![(x, y), (x + 22, y)];
        if s.dashed {
            legend_area.draw(&plotters::element::DashedPathElement::new(
                line, 5, 3, style,
            ))
        } else {
            legend_area.draw(&PathElement::new(line, style.stroke_width(3)))
        }
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        legend_area
            .draw(&Text::new(
                s.label.clone(),
                (x + 28, y - 7),
                ("sans-serif", 13).into_font().color(&BLACK),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// The smallest and largest finite value of the series (infinite when there is none).
fn value_range(series: &[Series<'_>]) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        for &v in s.values {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    (lo, hi)
}

/// Where each series' legend entry goes in the strip below a chart `width` pixels wide: its x and
/// its row (entries flow left to right and wrap).
fn legend_layout(series: &[Series<'_>], width: u32) -> Vec<(i32, usize)> {
    let (mut x, mut row) = (70i32, 0usize);
    series
        .iter()
        .map(|s| {
            let w = 28 + 7 * s.label.chars().count() as i32 + 16;
            if x + w > width as i32 && x > 70 {
                x = 70;
                row += 1;
            }
            let at = (x, row);
            x += w;
            at
        })
        .collect()
}

/// One figure: a title, then a grid of charts (rows × columns), each a list of series.
pub(crate) struct Figure<'a> {
    pub title: String,
    pub cells: Vec<Vec<(String, &'static str, Vec<Series<'a>>)>>,
    /// The x axis' name of the charts whose series have their own x (`step`); the others run
    /// over the layers.
    pub x_desc: &'static str,
    /// One y scale for the charts of a row (the conditions side by side: the paper's contrast
    /// is a difference in level).
    pub shared_y: bool,
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure<'_>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, body) = root.split_vertically(44);
    top.titled(&fig.title, ("sans-serif", 22))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = fig.cells.len();
    let cols = fig.cells.iter().map(Vec::len).max().unwrap_or(1);
    let areas = body.split_evenly((rows, cols));
    for (r, row) in fig.cells.iter().enumerate() {
        let shared = fig.shared_y.then(|| {
            row.iter()
                .map(|(_, _, series)| value_range(series))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (c, d)| {
                    (a.min(c), b.max(d))
                })
        });
        for (c, (title, ylabel, series)) in row.iter().enumerate() {
            draw_chart(
                &areas[r * cols + c],
                title,
                ylabel,
                fig.x_desc,
                series,
                shared,
            )?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

pub(crate) fn save(fig: &Figure<'_>, dir: &Path, stem: &str) -> Result<PathBuf> {
    let rows = fig.cells.len() as u32;
    let cols = fig.cells.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let size = (cols * 480, rows * 340 + 44);
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    render(BitMapBackend::new(&png, size).into_drawing_area(), fig)
        .with_context(|| format!("{}", png.display()))?;
    render(SVGBackend::new(&svg, size).into_drawing_area(), fig)
        .with_context(|| format!("{}", svg.display()))?;
    Ok(png)
}

pub(crate) fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
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
/// Choices of a report.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportOptions {
    /// One y scale across the conditions of a figure row (`--shared-y`).
    pub shared_y: bool,
}

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

/// [`build`], then the warnings on stderr and one line saying where the report is (for the CLIs).
pub fn build_and_print(inputs: &[PathBuf], out: &Path) -> Result<ReportSummary> {
    build_and_print_with(inputs, out, &ReportOptions::default())
}

/// [`build_and_print`] with the report's options.
pub fn build_and_print_with(
    inputs: &[PathBuf],
    out: &Path,
    opts: &ReportOptions,
) -> Result<ReportSummary> {
    // Run directories of `gradlens train` get the training view; the rest the paper's.
    let (runs, rest): (Vec<PathBuf>, Vec<PathBuf>) = inputs
        .iter()
        .cloned()
        .partition(|p| crate::training_report::is_run_dir(p));
    if !runs.is_empty() {
        let r = crate::training_report::build(&runs, out)?;
        println!(
            "training report of {} run(s), {} figure(s): {}",
            r.files,
            r.figures.len(),
            out.join("training.html").display()
        );
        if rest.is_empty() {
            return Ok(r);
        }
    }
    let r = build_with(&rest, out, opts)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "report of {} file(s), {} figure(s): {}",
        r.files,
        r.figures.len(),
        out.join("report.html").display()
    );
    Ok(r)
}

fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The MAD tables in the paper's form: per (model, data set, correctness): rows CoT level × Q/K/V/O,
/// columns early / middle / late / all, for the nuclear norm.
fn mad_tables(
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

fn markdown(
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
    for m in measured {
        let skipped = if m.skipped.is_empty() {
            "0".to_string()
        } else {
            m.skipped
                .iter()
                .map(|(r, n)| format!("{n}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            m.model,
            m.condition.name,
            m.rows.len(),
            skipped,
            m.notes.bad_lines.len()
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

fn md_to_html_tables(
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(
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
    for m in measured {
        let skipped = if m.skipped.is_empty() {
            "0".to_string()
        } else {
            m.skipped
                .iter()
                .map(|(r, n)| format!("{n}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&m.model),
            esc(&m.condition.name),
            m.rows.len(),
            esc(&skipped),
            m.notes.bad_lines.len()
        );
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
