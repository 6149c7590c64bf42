//! Charts through plotters: training curves, per-site Dice bars and the grid's evidence
//! ([`evidence`]: forest plot, effect against guidance), with labelled axes, a
//! legend and a title. Drawn in memory with an embedded font (DejaVu Sans: the build machines
//! have no system fonts), then handed to relkd-core's canvas, which writes PNGs.

mod evidence;

use std::sync::Once;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use relkd_core::png::Canvas;

pub use evidence::{ForestRow, GuidancePoint, effect_against_guidance, forest};

/// One colour per model, in the order models are listed.
pub const PALETTE: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| unreachable!("the embedded DejaVu Sans parses"));
    });
}

/// A bar's height and its whisker: the mean and the standard deviation over seeds (0 for one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
}

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn drawing<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// A named line of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// One line chart: its title, its y axis and its series.
pub struct LinePanel<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
}

/// Line charts side by side, each series in its colour with a legend, x labelled `x_label`.
pub fn line_panels(panels: &[LinePanel], x_label: &str) -> anyhow::Result<Canvas> {
    register_font();
    let (width, height) = (480 * panels.len() as u32, 360);
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            line_panel(area, panel, x_label)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(Canvas::from_rgb(width as usize, height as usize, &rgb))
}

fn line_panel(area: &DrawingArea<BitMapBackend, Shift>, panel: &LinePanel, x_label: &str) -> anyhow::Result<()> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x_max, (mut lo, mut hi)) = (
        points().map(|p| p.0).fold(2.0, f64::max),
        points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1))),
    );
    if !(lo.is_finite() && hi.is_finite()) {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1.0..x_max, (lo - pad)..(hi + pad))
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(panel.y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(drawing)?;
    for (i, series) in panel.series.iter().enumerate() {
        let style = colour(i).stroke_width(2);
        let finite = series.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite());
        chart
            .draw_series(LineSeries::new(finite.clone(), style).point_size(3))
            .map_err(drawing)?
            .label(series.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    legend(&mut chart)
}

type Chart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The series' names and swatches in a box at the upper right.
fn legend(chart: &mut Chart) -> anyhow::Result<()> {
    legend_at(chart, SeriesLabelPosition::UpperRight)
}

fn legend_at(chart: &mut Chart, position: SeriesLabelPosition) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(drawing)
}

/// Grouped bars from 0 to 1: one group per entry of `groups`, one bar per named series (a
/// value per group; `None` leaves a gap), each value written above its bar.
pub fn grouped_bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    bars: &[(&str, Vec<Option<Spread>>)],
) -> anyhow::Result<Canvas> {
    register_font();
    let (width, height) = ((160 * groups.len()).max(480) as u32 + 120, 400);
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..groups.len() as f64, 0.0..1.35)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(drawing)?;
        let bar_width = 0.8 / bars.len() as f64;
        for (b, (name, values)) in bars.iter().enumerate() {
            let fill = colour(b).filled();
            let placed: Vec<(f64, Spread)> = values
                .iter()
                .enumerate()
                .filter_map(|(g, v)| v.map(|v| (g as f64 + 0.1 + b as f64 * bar_width, v)))
                .collect();
            let top = |v: Spread| v.mean.clamp(0.0, 1.0);
            chart
                .draw_series(
                    placed.iter().map(|&(x, v)| Rectangle::new([(x, 0.0), (x + bar_width * 0.9, top(v))], fill)),
                )
                .map_err(drawing)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], fill));
            // Whiskers: mean ± one standard deviation over seeds.
            let whiskers = placed.iter().filter(|(_, v)| v.sd > 0.0).flat_map(|&(x, v)| {
                let (centre, cap) = (x + bar_width * 0.45, bar_width * 0.15);
                let (low, high) = ((v.mean - v.sd).max(0.0), (v.mean + v.sd).min(1.3));
                [
                    (centre, low, centre, high),
                    (centre - cap, low, centre + cap, low),
                    (centre - cap, high, centre + cap, high),
                ]
                .map(|(x0, y0, x1, y1)| PathElement::new(vec![(x0, y0), (x1, y1)], BLACK.stroke_width(1)))
            });
            chart.draw_series(whiskers).map_err(drawing)?;
            chart
                .draw_series(placed.iter().map(|&(x, v)| {
                    let above = (v.mean + v.sd).clamp(0.0, 1.3) + 0.03;
                    Text::new(format!("{:.2}", v.mean), (x, above), (FONT, 12).into_font().color(&BLACK))
                }))
                .map_err(drawing)?;
        }
        // Group names under the axis, centred on their groups.
        for (g, name) in groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(name.as_str(), (x, y + 8), style)).map_err(drawing)?;
        }
        legend(&mut chart)?;
        root.present().map_err(drawing)?;
    }
    Ok(Canvas::from_rgb(width as usize, height as usize, &rgb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(canvas: &Canvas, c: RGBColor) -> usize {
        canvas.pixels.iter().filter(|p| **p == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn lines_draw_each_series_in_its_colour_with_text() {
        let series = |name, ys: &[f64]| Series {
            name,
            points: ys.iter().enumerate().map(|(i, &y)| (i as f64 + 1.0, y)).collect(),
        };
        let panel = LinePanel {
            title: "loss",
            y_label: "loss",
            series: vec![series("a", &[1.0, 0.5]), series("b", &[0.8, 0.4])],
        };
        let c = line_panels(&[panel], "epoch").unwrap();
        assert!(count(&c, PALETTE[0]) > 100 && count(&c, PALETTE[1]) > 100);
        assert_eq!(count(&c, PALETTE[2]), 0);
        // Text is drawn: dark anti-aliased glyph pixels that are neither white nor a series colour.
        let greys = c.pixels.iter().filter(|p| p[0] == p[1] && p[1] == p[2] && p[0] < 128).count();
        assert!(greys > 200, "{greys}");
    }

    #[test]
    fn bars_are_as_tall_as_their_values() {
        let groups = vec!["A".to_string(), "B".to_string()];
        let at = |mean| Some(Spread { mean, sd: 0.0 });
        let bars = [("x", vec![at(1.0), at(0.5)]), ("y", vec![None, at(0.25)])];
        let c = grouped_bars("t", "Dice", &groups, &bars).unwrap();
        // The longest vertical run of each colour is its tallest bar: 1.0 against 0.25.
        let tallest = |colour: RGBColor| {
            let mut best = 0;
            for x in 0..c.width {
                let mut run = 0;
                for y in 0..c.height {
                    run = if c.pixels[y * c.width + x] == [colour.0, colour.1, colour.2] { run + 1 } else { 0 };
                    best = best.max(run);
                }
            }
            best
        };
        let (x, y) = (tallest(PALETTE[0]) as f64, tallest(PALETTE[1]) as f64);
        assert!((x / y - 4.0).abs() < 0.1, "bar heights {x} and {y}");
    }
}
