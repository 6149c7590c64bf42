//! `train phantom --preview`: what a radiologist looks at first — axial (mid-gland), sagittal
//! and coronal slices through the gland, square pixels in millimetres, the mask's outline in
//! red. Radiological convention: anterior up, the patient's right on the left, superior up.

use super::render::{Rendered, SiteStyle};
use crate::png::{BLACK, Canvas, WHITE, overlay, row};

const PANEL: usize = 384;
const GAP: usize = 8;
const TITLE: usize = 24;

pub fn render(case: &Rendered, style: &SiteStyle) -> Canvas {
    let [nx, ny, nz] = case.dims;
    let [ci, cj, ck] = gland_centre(case);
    let at = |i: usize, j: usize, k: usize| i + nx * (j + ny * k);
    // Rows of the through-plane views, top = superior, each as tall as its millimetres.
    let rows = ((nz as f32 * case.spacing[2] / case.spacing[0]).round() as usize).max(1);
    let k_of_row = |r: usize| nz - 1 - ((r as f32 * case.spacing[0] / case.spacing[2]) as usize).min(nz - 1);
    let axial = view(case, nx, ny, |c, r| at(c, r, ck));
    let sagittal = view(case, ny, rows, |c, r| at(ci, c, k_of_row(r)));
    let coronal = view(case, nx, rows, |c, r| at(c, cj, k_of_row(r)));
    let zoom = (PANEL / nx.max(ny)).max(1);
    let panels: Vec<(&str, Canvas)> = [axial, sagittal, coronal]
        .into_iter()
        .map(|(w, h, image, mask)| ("", overlay(&image, Some(&mask), &vec![0; w * h], h, w, zoom)))
        .collect();
    let views = row(&panels, GAP, BLACK);
    let mut canvas = Canvas::new(views.width + 2 * GAP, views.height + TITLE + GAP, BLACK);
    canvas.text(GAP as i64, 6, &format!("{}: {}", style.folder, style.summary), 2, WHITE);
    canvas.paste(&views, GAP as i64, TITLE as i64);
    canvas
}

/// A `width × height` view: its intensities and mask, voxel `index(column, row)` at each pixel.
fn view(
    case: &Rendered,
    width: usize,
    height: usize,
    index: impl Fn(usize, usize) -> usize,
) -> (usize, usize, Vec<f32>, Vec<u8>) {
    let voxels: Vec<usize> =
        (0..height).flat_map(|r| (0..width).map(move |c| (c, r))).map(|(c, r)| index(c, r)).collect();
    let image = voxels.iter().map(|&v| case.image[v] as f32).collect();
    let mask = voxels.iter().map(|&v| u8::from(case.labels[v] > 0)).collect();
    (width, height, image, mask)
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
