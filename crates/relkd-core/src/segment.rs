//! Whole-volume segmentation around any logits function: the one path from a volume to a
//! mask that training's evaluation (Burn) and `infer` (ONNX Runtime) both take, so the two
//! cannot disagree on preprocessing or on how logits return to the source grid.

use crate::nifti_io::Volume;
use crate::transforms::{NormalizedVolume, Preprocessing, resize_bilinear};

/// A volume's segmentation on its own grid (x fastest, like [`Volume::data`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// 1 where a foreground class has the largest logit.
    pub mask: Vec<u8>,
    /// Softmax probability of not being background (class 0), when asked for.
    pub foreground: Option<Vec<f32>>,
}

/// Segments `image` slice by slice, `batch` slices per call of `logits_of`, which maps an
/// input `[n, c, size, size]` (flat) to logits `[n, k, size, size]` (flat). With
/// `probabilities`, the foreground probability is kept too.
///
/// Each slice is z-scored with its volume, resized to the network's size (half-pixel
/// bilinear), and its logits are resized back to the slice's own size with the same resize
/// before the argmax.
pub fn segment_volume<E>(
    image: &Volume,
    prep: &Preprocessing,
    batch: usize,
    probabilities: bool,
    logits_of: &mut dyn FnMut([usize; 4], Vec<f32>) -> Result<Vec<f32>, E>,
) -> Result<Segmentation, E> {
    let [nx, ny, nz] = image.dims;
    let norm = NormalizedVolume::new(image);
    let (c, s) = (prep.channels(), prep.size);
    let mut mask = Vec::with_capacity(nx * ny * nz);
    let mut foreground = probabilities.then(|| Vec::with_capacity(nx * ny * nz));
    let slices: Vec<usize> = (0..nz).collect();
    for chunk in slices.chunks(batch.max(1)) {
        let input: Vec<f32> = chunk.iter().flat_map(|&z| norm.input(z, prep)).collect();
        let logits = logits_of([chunk.len(), c, s, s], input)?;
        let k = logits.len() / (chunk.len() * s * s);
        for i in 0..chunk.len() {
            let planes: Vec<Vec<f32>> = (0..k)
                .map(|class| resize_bilinear(&logits[(i * k + class) * s * s..][..s * s], s, s, ny, nx))
                .collect();
            for p in 0..ny * nx {
                let best = (1..k).fold(0, |best, class| if planes[class][p] > planes[best][p] { class } else { best });
                mask.push((best != 0) as u8);
                if let Some(foreground) = foreground.as_mut() {
                    let top = planes[best][p];
                    let total: f32 = planes.iter().map(|plane| (plane[p] - top).exp()).sum();
                    foreground.push(1.0 - (planes[0][p] - top).exp() / total);
                }
            }
        }
    }
    Ok(Segmentation { mask, foreground })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti_io::new_header;

    #[test]
    fn logits_return_to_the_source_grid_with_softmax_probabilities() {
        // A 6×4×3 volume; the "network" (size 2) says foreground on its right column with
        // logits (0, ln 3): probability 3/4. Resized back with the half-pixel convention, the
        // right half of each 6-wide row is foreground.
        let (dims, spacing) = ([6, 4, 3], [1.0, 1.0, 2.0]);
        let affine = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let data: Vec<f32> = (0..72).map(|i| i as f32).collect();
        let volume = Volume { data, dims, spacing, affine, header: new_header(spacing, &affine) };
        let prep = Preprocessing { size: 2, context: 0 };
        let mut calls = Vec::new();
        let seg = segment_volume::<()>(&volume, &prep, 2, true, &mut |shape, input| {
            calls.push(shape);
            assert_eq!(input.len(), shape.iter().product::<usize>());
            let n = shape[0];
            Ok((0..n).flat_map(|_| [0.0, 0.0, 0.0, 0.0, 0.0, 3f32.ln(), 0.0, 3f32.ln()]).collect())
        })
        .unwrap();
        assert_eq!(calls, vec![[2, 1, 2, 2], [1, 1, 2, 2]]);
        assert_eq!(seg.mask.len(), 72);
        for (i, &m) in seg.mask.iter().enumerate() {
            let x = i % 6;
            // Half-pixel: column x samples source position (x + ½)·2/6 − ½, clamped to [0, 1],
            // which is the right sample's weight: 0, 0, ⅓, ⅔, 1, 1.
            let right = [0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0][x];
            let l1 = right * 3f32.ln();
            assert_eq!(m, (l1 > 0.0) as u8, "voxel {i}");
            let p = l1.exp() / (1.0 + l1.exp());
            let q = seg.foreground.as_ref().unwrap()[i];
            assert!((q - p).abs() < 1e-5, "voxel {i}: {q} vs {p}");
        }
    }
}
