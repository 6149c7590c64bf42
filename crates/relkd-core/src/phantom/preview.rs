//! `train phantom --preview`: what a radiologist looks at first — axial (mid-gland), sagittal
//! and coronal slices through the gland, square pixels in millimetres, the mask's outline in
//! red. Radiological convention: anterior up, the patient's right on the left, superior up.

use super::render::{Rendered, SiteStyle};
use crate::png::{Canvas, RED, WHITE};

const PANEL: usize = 384;
const GAP: usize = 8;
const TITLE: usize = 24;

pub fn render(case: &Rendered, style: &SiteStyle) -> Canvas {
    let [nx, ny, nz] = case.dims;
    let (window_lo, window_hi) = window(&case.image);
    let grey = |v: i16| (((v as f32 - window_lo) / (window_hi - window_lo)).clamp(0.0, 1.0) * 255.0) as u8;
    let [ci, cj, ck] = gland_centre(case);
    let at = |i: usize, j: usize, k: usize| i + nx * (j + ny * k);
    // Rows of the through-plane views, top = superior, each as tall as its millimetres.
    let rows = ((nz as f32 * case.spacing[2] / case.spacing[0]).round() as usize).max(1);
    let k_of_row = |r: usize| nz - 1 - ((r as f32 * case.spacing[0] / case.spacing[2]) as usize).min(nz - 1);

    let axial = View { width: nx, height: ny, index: Box::new(|c, r| at(c, r, ck)) };
    let sagittal = View { width: ny, height: rows, index: Box::new(|c, r| at(ci, c, k_of_row(r))) };
    let coronal = View { width: nx, height: rows, index: Box::new(|c, r| at(c, cj, k_of_row(r))) };
    let zoom = (PANEL / nx.max(ny)).max(1);
    let views = [axial, sagittal, coronal];
    let width = views.iter().map(|v| v.width * zoom + GAP).sum::<usize>() + GAP;
    let height = TITLE + views.iter().map(|v| v.height * zoom).max().unwrap_or(0) + GAP;
    let mut canvas = Canvas::new(width, height, [0, 0, 0]);
    canvas.text(GAP as i64, 6, &format!("{}: {}", style.folder, style.summary), 2, WHITE);
    let mut left = GAP;
    for view in &views {
        for r in 0..view.height {
            for c in 0..view.width {
                let v = (view.index)(c, r);
                let inside = |dc: isize, dr: isize| {
                    let (c2, r2) = (c as isize + dc, r as isize + dr);
                    let within = (0..view.width as isize).contains(&c2) && (0..view.height as isize).contains(&r2);
                    within && case.labels[(view.index)(c2 as usize, r2 as usize)] > 0
                };
                let edge = case.labels[v] > 0 && !(inside(-1, 0) && inside(1, 0) && inside(0, -1) && inside(0, 1));
                let g = grey(case.image[v]);
                let colour = if edge { RED } else { [g, g, g] };
                canvas.fill_rect((left + c * zoom) as i64, (TITLE + r * zoom) as i64, zoom as i64, zoom as i64, colour);
            }
        }
        left += view.width * zoom + GAP;
    }
    canvas
}

struct View<'a> {
    width: usize,
    height: usize,
    /// Voxel index of display pixel (column, row).
    index: Box<dyn Fn(usize, usize) -> usize + 'a>,
}

/// 1st to 99.5th percentile of the image.
fn window(image: &[i16]) -> (f32, f32) {
    let mut sorted = image.to_vec();
    sorted.sort_unstable();
    let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize] as f32;
    let (lo, hi) = (pick(0.01), pick(0.995));
    (lo, hi.max(lo + 1.0))
}

/// Voxel indices of the mask's centroid (the volume's centre when the mask is empty).
fn gland_centre(case: &Rendered) -> [usize; 3] {
    let [nx, ny, nz] = case.dims;
    let (mut sum, mut count) = ([0usize; 3], 0usize);
    for (v, &l) in case.labels.iter().enumerate() {
        if l > 0 {
            let p = [v % nx, (v / nx) % ny, v / (nx * ny)];
            (0..3).for_each(|d| sum[d] += p[d]);
            count += 1;
        }
    }
    if count == 0 { [nx / 2, ny / 2, nz / 2] } else { sum.map(|s| s / count) }
}
