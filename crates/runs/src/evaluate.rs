//! Per-case evaluation (SPEC §2): a volume is segmented slice by slice, the logits are resized
//! back to the source's in-plane grid, and 3D Dice, HD95, ASD and fragmentation are computed per
//! case.

use burn::tensor::{Device, Tensor, TensorData};
use relkd_core::dataset::Case;
use relkd_core::metrics::{dice, fragmentation, surface_distances};
use relkd_core::nifti_io::Volume;
use relkd_core::segment::segment_volume;
use relkd_core::transforms::Preprocessing;

/// One case's scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaseScore {
    pub site: String,
    pub case: String,
    pub dice: f64,
    /// Millimetres; infinite when exactly one of prediction and truth is empty.
    pub hd95: f64,
    pub asd: f64,
    /// Label changes per predicted foreground voxel ([`fragmentation`]); NaN when the
    /// prediction is empty or the score predates the metric.
    #[serde(default = "not_measured")]
    pub fragmentation: f64,
}

fn not_measured() -> f64 {
    f64::NAN
}

impl CaseScore {
    /// The CSV columns of every scores file, in this order.
    pub const CSV_HEADER: &str = "site,case,dice,hd95_mm,asd_mm,fragmentation";

    /// This score's fields under [`CaseScore::CSV_HEADER`].
    pub fn csv_fields(&self) -> String {
        format!(
            "{},{},{:.6},{:.4},{:.4},{:.4}",
            self.site, self.case, self.dice, self.hd95, self.asd, self.fragmentation
        )
    }
}

/// Segments `image` with a Burn network's logits function (`[n, c, size, size] → [n, k,
/// size, size]`), `batch` slices at a time, and returns a 0/1 mask on the image's own grid
/// (x fastest), through [`relkd_core::segment::segment_volume`], as `infer` does.
pub fn predict_volume(
    image: &Volume,
    prep: &Preprocessing,
    batch: usize,
    device: &Device,
    logits_of: &dyn Fn(Tensor<4>) -> Tensor<4>,
) -> Vec<u8> {
    let segmentation = segment_volume::<std::convert::Infallible>(image, prep, batch, false, &mut |shape, input| {
        let logits = logits_of(Tensor::from_data(TensorData::new(input, shape), device));
        Ok(logits.into_data().convert::<f32>().try_into_vec::<f32>().expect("float logits"))
    });
    match segmentation {
        Ok(s) => s.mask,
        Err(never) => match never {},
    }
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
        fragmentation: fragmentation(prediction, case.image.dims),
    }
}

/// Dice of `with` minus `without`, case by case in `without`'s order, cases matched by site and
/// id; `None` for a case `with` lacks.
pub fn paired_dice_differences(with: &[CaseScore], without: &[CaseScore]) -> Vec<Option<f64>> {
    without.iter().map(|b| Some(with.iter().find(|a| a.site == b.site && a.case == b.case)?.dice - b.dice)).collect()
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
