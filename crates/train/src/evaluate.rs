//! Per-case evaluation (SPEC §2): a volume is segmented slice by slice, the logits are resized
//! back to the source's in-plane grid, and 3D Dice, HD95 and ASD are computed per case.

use burn::tensor::{Device, Tensor, TensorData};
use relkd_core::dataset::Case;
use relkd_core::metrics::{dice, surface_distances};
use relkd_core::nifti_io::Volume;
use relkd_core::transforms::{NormalizedVolume, Preprocessing, resize_bilinear};

/// One case's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseScore {
    pub site: String,
    pub case: String,
    pub dice: f64,
    /// Millimetres; infinite when exactly one of prediction and truth is empty.
    pub hd95: f64,
    pub asd: f64,
}

/// Segments `image` with `logits_of` (`[n, c, size, size] → [n, k, size, size]`), `batch`
/// slices at a time, and returns a 0/1 mask on the image's own grid (x fastest).
///
/// The logits are resized back with the same half-pixel bilinear resize that preprocessing
/// used to shrink the slices, then the class with the largest logit wins; class 0 is
/// background.
pub fn predict_volume(
    image: &Volume,
    prep: &Preprocessing,
    batch: usize,
    device: &Device,
    logits_of: &dyn Fn(Tensor<4>) -> Tensor<4>,
) -> Vec<u8> {
    let [nx, ny, nz] = image.dims;
    let norm = NormalizedVolume::new(image);
    let (c, s) = (prep.channels(), prep.size);
    let mut mask = Vec::with_capacity(nx * ny * nz);
    let slices: Vec<usize> = (0..nz).collect();
    for chunk in slices.chunks(batch.max(1)) {
        let input: Vec<f32> = chunk.iter().flat_map(|&z| norm.input(z, prep)).collect();
        let x = Tensor::<4>::from_data(TensorData::new(input, [chunk.len(), c, s, s]), device);
        let logits = logits_of(x);
        let [n, k, h, w] = logits.dims();
        let values: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec::<f32>().expect("float logits");
        for i in 0..n {
            let planes: Vec<Vec<f32>> = (0..k)
                .map(|class| resize_bilinear(&values[(i * k + class) * h * w..][..h * w], h, w, ny, nx))
                .collect();
            mask.extend((0..ny * nx).map(|p| {
                let best = (1..k).fold(0, |best, class| if planes[class][p] > planes[best][p] { class } else { best });
                (best != 0) as u8
            }));
        }
    }
    mask
}

/// Dice, HD95 and ASD of a predicted mask against a case's ground truth.
pub fn score(case: &Case, prediction: &[u8]) -> CaseScore {
    let distances = surface_distances(prediction, &case.mask, case.image.dims, case.image.spacing);
    CaseScore {
        site: case.site.clone(),
        case: case.id.clone(),
        dice: dice(prediction, &case.mask),
        hd95: distances.hd95,
        asd: distances.asd,
    }
}

/// Mean Dice per site, in order of first appearance.
pub fn mean_dice_per_site(scores: &[CaseScore]) -> Vec<(String, f64)> {
    let mut sites: Vec<(String, f64, usize)> = Vec::new();
    for s in scores {
        match sites.iter_mut().find(|(site, _, _)| *site == s.site) {
            Some(entry) => {
                entry.1 += s.dice;
                entry.2 += 1;
            }
            None => sites.push((s.site.clone(), s.dice, 1)),
        }
    }
    sites.into_iter().map(|(site, sum, n)| (site, sum / n as f64)).collect()
}
