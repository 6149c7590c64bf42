//! The evidence charts of a grid: a forest plot of paired effects with their intervals, and
//! the effects against the teacher's guidance.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use relkd_core::png::Canvas;

use super::{FONT, PALETTE, drawing, legend_at, register_font};

/// The paper's difference: a red cross.
const PAPER: RGBColor = RGBColor(214, 39, 40);

/// One row of a forest plot: an effect, its interval, and the paper's value when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestRow {
    pub label: String,
    pub effect: f64,
    pub low: f64,
    pub high: f64,
    pub paper: Option<f64>,
}

/// Rows top to bottom, each interval as a line with the effect as a dot, zero as a vertical
/// line, the paper's value as a red cross; labels to the left. `x_label` should say so.
pub fn forest(title: &str, x_label: &str, rows: &[ForestRow]) -> anyhow::Result<Canvas> {
    register_font();
    let (width, height) = (900u32, 110 + 34 * rows.len().max(2) as u32);
    let values = rows.iter().flat_map(|r| [r.low, r.high].into_iter().chain(r.paper)).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.08).max(0.01);
    let n = rows.len() as f64;
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (labels, plot) = root.split_horizontally(300);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, (FONT, 17))
            .margin(12)
            .x_label_area_size(40)
            .build_cartesian_2d((lo - pad)..(hi + pad), -0.5..(n - 0.5))
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc(x_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(drawing)?;
        let zero = [(0.0, -0.5), (0.0, n - 0.5)];
        chart.draw_series(std::iter::once(PathElement::new(zero, BLACK.stroke_width(1)))).map_err(drawing)?;
        // Row i is drawn at y = n − 1 − i, so the first row is on top.
        let y = |i: usize| n - 1.0 - i as f64;
        // No legend box, which would hide rows: the x axis says what the marks are.
        let line = PALETTE[0].stroke_width(3);
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| PathElement::new([(r.low, y(i)), (r.high, y(i))], line)))
            .map_err(drawing)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| Circle::new((r.effect, y(i)), 5, PALETTE[0].filled())))
            .map_err(drawing)?;
        let crosses = rows.iter().enumerate().filter_map(|(i, r)| r.paper.map(|p| (p, y(i))));
        chart.draw_series(crosses.map(|p| Cross::new(p, 6, PAPER.stroke_width(2)))).map_err(drawing)?;
        let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, row) in rows.iter().enumerate() {
            let (_, py) = chart.backend_coord(&(lo, y(i)));
            labels.draw_text(&row.label, &style, (290, py)).map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(Canvas::from_rgb(width as usize, height as usize, &rgb))
}

/// One point of the effect against the guidance, with its interval as a vertical bar; `series`
/// picks its colour (e.g. the teacher-side option).
#[derive(Debug, Clone, PartialEq)]
pub struct GuidancePoint {
    pub guidance: f64,
    pub effect: f64,
    pub low: f64,
    pub high: f64,
    pub series: usize,
}

/// The paired effect (y, with its interval) against the teacher's Dice on the students' sites
/// (x, 0 to 1); `series` names each colour in the legend.
pub fn effect_against_guidance(title: &str, series: &[&str], points: &[GuidancePoint]) -> anyhow::Result<Canvas> {
    register_font();
    let (width, height) = (640u32, 440u32);
    let values = points.iter().flat_map(|p| [p.low, p.high]).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.08).max(0.01);
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0, (lo - pad)..(hi + pad))
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_desc("teacher's Dice on the students' sites (guidance)")
            .y_desc("paired effect w/ − w/o")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(drawing)?;
        chart
            .draw_series(std::iter::once(PathElement::new([(0.0, 0.0), (1.0, 0.0)], BLACK.stroke_width(1))))
            .map_err(drawing)?;
        for (s, name) in series.iter().enumerate() {
            let colour = PALETTE[s % PALETTE.len()];
            let mine = || points.iter().filter(move |p| p.series == s);
            chart
                .draw_series(mine().map(|p| PathElement::new([(p.guidance, p.low), (p.guidance, p.high)], colour)))
                .map_err(drawing)?;
            chart
                .draw_series(mine().map(|p| Circle::new((p.guidance, p.effect), 5, colour.filled())))
                .map_err(drawing)?
                .label(*name)
                .legend(move |(x, y)| Circle::new((x + 9, y), 5, colour.filled()));
        }
        legend_at(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(drawing)?;
    }
    Ok(Canvas::from_rgb(width as usize, height as usize, &rgb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns_of(canvas: &Canvas, colour: RGBColor) -> Vec<usize> {
        let mut xs: Vec<usize> = (0..canvas.pixels.len())
            .filter(|&i| canvas.pixels[i] == [colour.0, colour.1, colour.2])
            .map(|i| i % canvas.width)
            .collect();
        xs.sort_unstable();
        xs.dedup();
        xs
    }

    #[test]
    fn a_forest_plot_scales_its_intervals_and_marks_the_paper() {
        let row = |label: &str, effect, low, high, paper| ForestRow { label: label.into(), effect, low, high, paper };
        // Two intervals of width 0.1 and 0.4: the second spans four times the pixels.
        let rows = [row("a", 0.0, -0.05, 0.05, None), row("b", 0.1, -0.1, 0.3, Some(0.2))];
        let canvas = forest("t", "Dice", &rows).unwrap();
        let blue = columns_of(&canvas, PALETTE[0]);
        let (first, last) = (blue[0], *blue.last().unwrap());
        assert!(last > first + 100, "{first}..{last}");
        assert!(!columns_of(&canvas, PAPER).is_empty(), "the paper's cross is drawn");
        let without_paper = forest("t", "Dice", &[row("a", 0.0, -0.05, 0.05, None)]).unwrap();
        assert!(columns_of(&without_paper, PAPER).is_empty());
    }

    #[test]
    fn guidance_points_take_their_series_colour() {
        let point = |guidance, series| GuidancePoint { guidance, effect: 0.02, low: -0.01, high: 0.05, series };
        let canvas = effect_against_guidance("t", &["default", "option"], &[point(0.2, 0), point(0.8, 1)]).unwrap();
        let (a, b) = (columns_of(&canvas, PALETTE[0]), columns_of(&canvas, PALETTE[1]));
        // Apart from the legend's swatches (upper left), the option's point lies to the right.
        assert!(a.iter().max() < b.iter().max(), "{:?} {:?}", a.last(), b.last());
    }
}
