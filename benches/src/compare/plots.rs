//! `--plots DIR`: PNG plots of the latency distributions the run measured,
//! drawn from the run's JSON summary (each scenario puts the `cdf` of its
//! latency histograms there), so a plot shows exactly the figures printed.
//!
//! - `hit_latency.png`: the hit path, one panel per group (memory, Redis)
//!   and concurrency, every contender's distribution of per-hit latency.
//! - `stampede_latency.png`: the stampede in one process, one panel per N,
//!   the callers' latency per strategy; `stampede4_latency.png`: the same
//!   over four processes.
//! - `curves.png`: the `curves` scenario (see `curves.rs`).
//!
//! Text is drawn with the DejaVu Sans font read at run time (plotters'
//! `ab_glyph` feature: no fontconfig needed).

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::CoordTranslate;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde_json::Value;

type Res<T> = Result<T, Box<dyn Error>>;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1400, 1000);

/// One line of a panel: a name and its `(latency, quantile)` points.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Draws every plot the summary has data for into `dir`; returns the files.
///
/// # Errors
/// When the font cannot be read or a file cannot be written.
pub fn draw(summary: &Value, dir: &Path) -> Res<Vec<PathBuf>> {
    let font = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e}"))?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| "invalid font")?;
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    if let Some(hit) = summary.get("hit").and_then(Value::as_array) {
        let panels: Vec<(String, Vec<Line>)> = hit
            .iter()
            .map(|g| {
                let title = format!(
                    "{}, {} task(s)",
                    g["title"].as_str().unwrap_or("hit path"),
                    g["tasks"]
                );
                (title, lines(&g["contenders"], "name", 1e3))
            })
            .collect();
        let path = dir.join("hit_latency.png");
        panel_grid(&path, &panels, "latency per hit (µs, log scale)", true)?;
        files.push(path);
    }
    if let Some(st) = summary.get("stampede").and_then(Value::as_array) {
        files.push(stampede(dir, "stampede_latency.png", st, "one process")?);
    }
    if let Some(st) = summary["stampede4"]["rows"].as_array() {
        files.push(stampede(dir, "stampede4_latency.png", st, "4 processes")?);
    }
    if let Some(curves) = summary.get("curves") {
        files.push(super::curves::plot(dir, curves)?);
    }
    Ok(files)
}

/// The stampede's plot: one panel per N, one line per strategy.
fn stampede(dir: &Path, file: &str, st: &[Value], over: &str) -> Res<PathBuf> {
    let mut ns: Vec<u64> = st.iter().filter_map(|s| s["callers"].as_u64()).collect();
    ns.dedup();
    let panels: Vec<(String, Vec<Line>)> = ns
        .iter()
        .map(|n| {
            let rows: Vec<Value> = st
                .iter()
                .filter(|s| s["callers"].as_u64() == Some(*n))
                .cloned()
                .collect();
            (
                format!("Stampede, {over}: {n} callers, one cold key, 50 ms loader"),
                lines(&Value::Array(rows), "strategy", 1e6),
            )
        })
        .collect();
    let path = dir.join(file);
    panel_grid(&path, &panels, "caller latency (ms)", false)?;
    Ok(path)
}

/// The `cdf` of each entry of `rows`, latencies divided by `unit`.
fn lines(rows: &Value, name_field: &str, unit: f64) -> Vec<Line> {
    rows.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let points = r["cdf"]
                .as_array()?
                .iter()
                .filter_map(|p| Some((p[0].as_f64()? / unit, p[1].as_f64()?)))
                .collect();
            Some(Line {
                name: r[name_field].as_str()?.to_owned(),
                points,
            })
        })
        .collect()
}

/// The panels in a grid of two columns, one file.
fn panel_grid(path: &Path, panels: &[(String, Vec<Line>)], x_desc: &str, log_x: bool) -> Res<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let rows = panels.len().div_ceil(2).max(1);
    let areas = root.split_evenly((rows, 2));
    for (area, (title, lines)) in areas.iter().zip(panels) {
        panel(area, title, lines, x_desc, log_x)?;
    }
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    lines: &[Line],
    x_desc: &str,
    log_x: bool,
) -> Res<()>
where
    DB::ErrorType: 'static,
{
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let lo = xs.fold(f64::INFINITY, f64::min).max(1e-3);
    // The axis ends at the largest 99.99th percentile: one outlier would
    // squeeze every distribution into a corner.
    let hi = lines
        .iter()
        .filter_map(|l| l.points.iter().rev().nth(1).map(|p| p.0))
        .fold(lo * 1.01, f64::max);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55);
    if log_x {
        let chart = builder.build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..1.0)?;
        draw_cdf(chart, lines, x_desc, "fraction of calls ≤ x")?;
    } else {
        let lo = (lo * 0.95).floor();
        let chart = builder.build_cartesian_2d(lo..hi * 1.02, 0.0..1.0)?;
        draw_cdf(chart, lines, x_desc, "fraction of callers ≤ x")?;
    }
    Ok(())
}

/// The mesh, one line per distribution and the legend, on either x axis
/// (linear or logarithmic).
fn draw_cdf<'a, DB, X>(
    mut chart: ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    lines: &[Line],
    x_desc: &str,
    y_desc: &str,
) -> Res<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, l) in lines.iter().enumerate() {
        let style = Palette99::pick(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(l.points.iter().copied(), style))?
            .label(l.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    Palette99::pick(i).stroke_width(2),
                )
            });
    }
    legend(&mut chart)
}

pub(super) fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Res<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
