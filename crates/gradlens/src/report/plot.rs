//! Drawing: a chart of per-layer series (the paper's projection colours), a figure of panels, and
//! saving it as PNG and SVG (plotters, the bundled DejaVu Sans).

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

pub(crate) static FONT: &[u8] = include_bytes!("../../../../assets/DejaVuSans.ttf");

/// Projections drawn, with their colours (the paper's: red, green, blue, grey).
pub(crate) const QKVO: [(&str, &str, RGBColor); 4] = [
    ("q_proj", "Q", RGBColor(214, 39, 40)),
    ("k_proj", "K", RGBColor(44, 160, 44)),
    ("v_proj", "V", RGBColor(31, 119, 180)),
    ("o_proj", "O", RGBColor(127, 127, 127)),
];

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
