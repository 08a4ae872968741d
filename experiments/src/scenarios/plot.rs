//! PNG figures of the scenarios: heat maps (RTT matrices, reachability),
//! bar charts (throughput) and a timeline (revocation), drawn with
//! plotters. Text is rendered in Rust (ab_glyph) from the DejaVu Sans font
//! Debian ships in `fonts-dejavu-core`, so no C font stack is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Why a figure could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No usable font file.
    #[error(
        "no TrueType font for the plots: looked for {tried}; install Debian's fonts-dejavu-core \
         (./scripts/setup.sh does) or point SLICENET_FONT at a .ttf file"
    )]
    NoFont {
        /// The paths looked at.
        tried: String,
    },
    /// Drawing or writing the PNG failed.
    #[error("drawing {path}: {message}")]
    Draw {
        /// The PNG being written.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
}

/// Where Debian (and most distributions) keep DejaVu Sans.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// The family name figures ask plotters for.
const FAMILY: &str = "sans-serif";

/// Registers the font once per process.
fn ensure_font() -> Result<(), PlotError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let mut tried: Vec<String> = std::env::var("SLICENET_FONT").into_iter().collect();
            tried.extend(FONT_CANDIDATES.iter().map(|s| s.to_string()));
            for path in &tried {
                if let Ok(bytes) = std::fs::read(path) {
                    // plotters keeps fonts for the life of the process.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                        return Ok(());
                    }
                }
            }
            Err(tried.join(", "))
        })
        .clone()
        .map_err(|tried| PlotError::NoFont { tried })
}

fn draw_err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    }
}

/// One heat map panel: rows × columns of values (`None` = no answer).
#[derive(Debug, Clone)]
pub struct HeatMap {
    /// Panel title.
    pub title: String,
    /// Row labels (e.g. "from" sites).
    pub rows: Vec<String>,
    /// Column labels (e.g. targets).
    pub cols: Vec<String>,
    /// `values[row][col]`.
    pub values: Vec<Vec<Option<f64>>>,
    /// Unit printed after each value ("ms"); empty prints the bare number.
    pub unit: String,
    /// Cells to outline in red (e.g. degraded paths).
    pub marked: Vec<(usize, usize)>,
    /// Text for cells without a value.
    pub missing: String,
    /// Values formatted without decimals.
    pub integers: bool,
}

/// Viridis-like colour stops from low to high.
const STOPS: &[(u8, u8, u8)] = &[
    (68, 1, 84),
    (59, 82, 139),
    (33, 145, 140),
    (94, 201, 98),
    (253, 231, 37),
];

/// Colour for `t` in 0..=1.
fn gradient(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws heat map panels side by side into one PNG, sharing one colour scale.
pub fn heat_maps(path: &Path, title: &str, panels: &[HeatMap]) -> Result<(), PlotError> {
    ensure_font()?;
    let err = draw_err(path);
    let cell = 78i32;
    let label_w = 130i32;
    let panel_w = |p: &HeatMap| {
        let grid = label_w + cell * p.cols.len() as i32 + 30;
        grid.max(p.title.chars().count() as i32 * 9 + 20)
    };
    let width = panels
        .iter()
        .map(panel_w)
        .sum::<i32>()
        .max(title.chars().count() as i32 * 11 + 30)
        + 20;
    let max_rows = panels.iter().map(|p| p.rows.len()).max().unwrap_or(1) as i32;
    let height = 70 + 40 + 90 + cell * max_rows + 50;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    root.draw(&Text::new(
        title.to_string(),
        (15, 15),
        (FAMILY, 22).into_font().color(&BLACK),
    ))
    .map_err(|e| err(e.to_string()))?;
    let all: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.values.iter().flatten().flatten().copied())
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let scale = |v: f64| {
        if hi > lo {
            (v - lo) / (hi - lo)
        } else {
            0.5
        }
    };
    let mut x0 = 10;
    for panel in panels {
        draw_panel(&root, panel, x0, 60, cell, label_w, &scale).map_err(&err)?;
        x0 += panel_w(panel);
    }
    if lo.is_finite() {
        let unit = panels.first().map(|p| p.unit.as_str()).unwrap_or("");
        draw_legend(&root, 15, height - 40, lo, hi, unit).map_err(&err)?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn draw_panel(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &HeatMap,
    x0: i32,
    y0: i32,
    cell: i32,
    label_w: i32,
    scale: &dyn Fn(f64) -> f64,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.draw(&Text::new(
        panel.title.clone(),
        (x0, y0),
        (FAMILY, 17).into_font().color(&BLACK),
    ))
    .map_err(e)?;
    let grid_x = x0 + label_w;
    let grid_y = y0 + 110;
    // Column labels, rotated so long target names fit.
    for (j, col) in panel.cols.iter().enumerate() {
        let x = grid_x + cell * j as i32 + cell / 2 - 6;
        root.draw(&Text::new(
            col.clone(),
            (x, grid_y - 8),
            (FAMILY, 14)
                .into_font()
                .transform(FontTransform::Rotate270)
                .color(&BLACK),
        ))
        .map_err(e)?;
    }
    for (i, row) in panel.rows.iter().enumerate() {
        let y = grid_y + cell * i as i32;
        root.draw(&Text::new(
            row.clone(),
            (x0, y + cell / 2 - 8),
            (FAMILY, 15).into_font().color(&BLACK),
        ))
        .map_err(e)?;
        for j in 0..panel.cols.len() {
            let x = grid_x + cell * j as i32;
            let value = panel
                .values
                .get(i)
                .and_then(|r| r.get(j))
                .copied()
                .flatten();
            let (fill, caption) = match value {
                Some(v) => {
                    let caption = if panel.integers || v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.1}")
                    };
                    (gradient(scale(v)), caption)
                }
                None => (RGBColor(225, 225, 225), panel.missing.clone()),
            };
            root.draw(&Rectangle::new(
                [(x, y), (x + cell - 2, y + cell - 2)],
                fill.filled(),
            ))
            .map_err(e)?;
            let dark = value.is_some_and(|v| scale(v) < 0.6);
            let color = if dark { WHITE } else { BLACK };
            let caption = if panel.unit.is_empty() || value.is_none() {
                caption
            } else {
                format!("{caption} {}", panel.unit)
            };
            let width = caption.chars().count() as i32 * 7;
            root.draw(&Text::new(
                caption,
                (x + (cell - width) / 2, y + cell / 2 - 8),
                (FAMILY, 13).into_font().color(&color),
            ))
            .map_err(e)?;
            if panel.marked.contains(&(i, j)) {
                for k in 0..3 {
                    root.draw(&Rectangle::new(
                        [(x + k, y + k), (x + cell - 3 - k, y + cell - 3 - k)],
                        RED.stroke_width(1),
                    ))
                    .map_err(e)?;
                }
            }
        }
    }
    Ok(())
}

fn draw_legend(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    x: i32,
    y: i32,
    lo: f64,
    hi: f64,
    unit: &str,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let steps = 160;
    for k in 0..steps {
        root.draw(&Rectangle::new(
            [(x + 50 + k, y), (x + 51 + k, y + 14)],
            gradient(k as f64 / (steps - 1) as f64).filled(),
        ))
        .map_err(e)?;
    }
    let font = (FAMILY, 13).into_font().color(&BLACK);
    root.draw(&Text::new(format!("{lo:.1}"), (x, y), font.clone()))
        .map_err(e)?;
    root.draw(&Text::new(
        format!("{hi:.1} {unit}"),
        (x + 60 + steps, y),
        font,
    ))
    .map_err(e)?;
    Ok(())
}

/// Draws a bar chart: one bar per label (`None` draws no bar and says so).
pub fn bar_chart(
    path: &Path,
    title: &str,
    labels: &[String],
    values: &[Option<f64>],
    y_label: &str,
) -> Result<(), PlotError> {
    ensure_font()?;
    let err = draw_err(path);
    let width = (160 + 110 * labels.len() as u32).max(520);
    let root = BitMapBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let top = values.iter().flatten().copied().fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let n = labels.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 20))
        .margin(15)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(|e| err(e.to_string()))?;
    let label_of = |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 1e-6 {
            labels.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&label_of)
        .x_label_style((FAMILY, 13))
        .y_desc(y_label)
        .y_label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, value) in values.iter().enumerate() {
        let x = i as f64;
        match value {
            Some(v) => {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x + 0.2, 0.0), (x + 0.8, *v)],
                        RGBColor(59, 82, 139).filled(),
                    )))
                    .map_err(|e| err(e.to_string()))?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        if *v < 10.0 {
                            format!("{v:.1}")
                        } else {
                            format!("{v:.0}")
                        },
                        (x + 0.35, v + top * 0.06),
                        (FAMILY, 14).into_font(),
                    )))
                    .map_err(|e| err(e.to_string()))?;
            }
            None => {
                chart
                    .draw_series(std::iter::once(Text::new(
                        "failed".to_string(),
                        (x + 0.3, top * 0.05),
                        (FAMILY, 14).into_font().color(&RED),
                    )))
                    .map_err(|e| err(e.to_string()))?;
            }
        }
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// A vertical marker on a timeline.
#[derive(Debug, Clone)]
pub struct Marker {
    /// Where on the x axis.
    pub x: f64,
    /// What it marks.
    pub label: String,
}

/// Draws points (x, y) on a timeline with vertical markers.
pub fn timeline(
    path: &Path,
    title: &str,
    points: &[(f64, f64)],
    markers: &[Marker],
    x_label: &str,
    y_label: &str,
) -> Result<(), PlotError> {
    ensure_font()?;
    let err = draw_err(path);
    let root = BitMapBackend::new(path, (900, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let xs = points
        .iter()
        .map(|p| p.0)
        .chain(markers.iter().map(|m| m.x));
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (x_lo, x_hi) = if x_lo.is_finite() && x_hi > x_lo {
        // Room on the right for the markers' labels.
        let span = x_hi - x_lo;
        (x_lo - span * 0.03, x_hi + span * 0.3)
    } else {
        (-1.0, 1.0)
    };
    let y_hi = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.25;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 19))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(65)
        .build_cartesian_2d(x_lo..x_hi, 0f64..y_hi)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, RGBColor(59, 82, 139).filled())),
        )
        .map_err(|e| err(e.to_string()))?;
    for (k, marker) in markers.iter().enumerate() {
        let color = if k == 0 { RED } else { RGBColor(33, 145, 140) };
        chart
            .draw_series(LineSeries::new(
                [(marker.x, 0.0), (marker.x, y_hi)],
                color.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(std::iter::once(Text::new(
                marker.label.clone(),
                (marker.x, y_hi * (0.95 - 0.08 * k as f64)),
                (FAMILY, 13).into_font().color(&color),
            )))
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_png(path: &Path) -> bool {
        std::fs::read(path)
            .map(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
            .unwrap_or(false)
    }

    #[test]
    fn gradient_runs_from_dark_to_bright() {
        let RGBColor(r0, g0, b0) = gradient(0.0);
        let RGBColor(r1, g1, b1) = gradient(1.0);
        assert_eq!((r0, g0, b0), STOPS[0]);
        assert_eq!((r1, g1, b1), STOPS[STOPS.len() - 1]);
        assert_eq!(gradient(-3.0), gradient(0.0));
        assert_eq!(gradient(7.0), gradient(1.0));
    }

    #[test]
    fn figures_are_written_as_png_files() {
        if ensure_font().is_err() {
            println!(
                "SKIPPED: figures_are_written_as_png_files: no DejaVu font (fonts-dejavu-core)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["ams", "iad", "nrt"].map(String::from).to_vec();
        let heat = dir.path().join("heat.png");
        heat_maps(
            &heat,
            "RTT",
            &[HeatMap {
                title: "ms".into(),
                rows: names.clone(),
                cols: names.clone(),
                values: vec![
                    vec![None, Some(80.0), Some(140.0)],
                    vec![Some(80.0), None, Some(150.0)],
                    vec![Some(140.0), Some(150.0), None],
                ],
                unit: "ms".into(),
                marked: vec![(0, 2)],
                missing: "-".into(),
                integers: false,
            }],
        )
        .unwrap();
        assert!(is_png(&heat));
        let bars = dir.path().join("bars.png");
        bar_chart(
            &bars,
            "throughput",
            &names,
            &[Some(120.0), None, Some(80.0)],
            "Mbit/s",
        )
        .unwrap();
        assert!(is_png(&bars));
        let line = dir.path().join("line.png");
        timeline(
            &line,
            "revocation",
            &[(-100.0, 10.0), (-50.0, 11.0), (0.0, 10.5)],
            &[Marker {
                x: 0.0,
                label: "removed".into(),
            }],
            "ms",
            "RTT ms",
        )
        .unwrap();
        assert!(is_png(&line));
    }
}
