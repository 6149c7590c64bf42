//! Whole-volume segmentation around any logits function: the one path from a volume to a
//! mask that training's evaluation (Burn) and `infer` (ONNX Runtime) both take, so the two
//! cannot disagree on preprocessing or on how logits return to the source grid.

use crate::nifti_io::Volume;
use crate::transforms::{Bilinear, NormalizedVolume, Preprocessing};

/// A volume's segmentation on its own grid (x fastest, like [`Volume::data`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// 1 where a foreground class has the largest logit.
    pub mask: Vec<u8>,
    /// Softmax probability of not being background (class 0), when asked for.
    pub foreground: Option<Vec<f32>>,
}

/// A batch with fewer pixels than this (its slices on the source grid and at the network's
/// size) is cut and returned by one thread. Below it, starting a thread per batch and sharing
/// the cores with ONNX Runtime's workers, which spin for a while after each run, cost more than
/// the split saves: the quick run's ENet on a 128×128×22 volume at 64×64, batch 16 (327,680
/// pixels a batch), took 14–16 ms a volume split and 10–12 ms on one thread (`infer bench`).
/// A 384×384 volume's batch of 8 (1.2 million pixels at 64×64) still gains from the split.
pub const PARALLEL_PIXELS: usize = 1 << 20;

/// Segments `image` slice by slice, `batch` slices per call of `logits_of`, which maps an
/// input `[n, c, size, size]` (flat) to logits `[n, k, size, size]` (flat). With
/// `probabilities`, the foreground probability is kept too.
///
/// Each slice is z-scored with its volume, resized to the network's size (half-pixel
/// bilinear), and its logits are resized back to the slice's own size with the same resize
/// before the argmax. Cutting the inputs and returning the logits run on the machine's cores,
/// slices split between them (each slice's values do not depend on the split), where a batch
/// has enough pixels to pay for it ([`PARALLEL_PIXELS`]).
pub fn segment_volume<E>(
    image: &Volume,
    prep: &Preprocessing,
    batch: usize,
    probabilities: bool,
    logits_of: &mut dyn FnMut([usize; 4], Vec<f32>) -> Result<Vec<f32>, E>,
) -> Result<Segmentation, E> {
    segment_split(image, prep, batch, probabilities, PARALLEL_PIXELS, logits_of)
}

/// [`segment_volume`], splitting the batches of at least `parallel_pixels` pixels between the
/// cores.
fn segment_split<E>(
    image: &Volume,
    prep: &Preprocessing,
    batch: usize,
    probabilities: bool,
    parallel_pixels: usize,
    logits_of: &mut dyn FnMut([usize; 4], Vec<f32>) -> Result<Vec<f32>, E>,
) -> Result<Segmentation, E> {
    let [nx, ny, nz] = image.dims;
    let plane = nx * ny;
    let norm = NormalizedVolume::new(image);
    let (c, s) = (prep.channels(), prep.size);
    let back = Bilinear::new(s, s, ny, nx);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut mask = vec![0; plane * nz];
    let mut foreground = probabilities.then(|| vec![0.0; plane * nz]);
    let batch = batch.max(1);
    for first in (0..nz).step_by(batch) {
        let n = batch.min(nz - first);
        let workers = if n * (plane + s * s) >= parallel_pixels { cores } else { 1 };
        let per_worker = n.div_ceil(workers);
        let mut input = vec![0.0; n * c * s * s];
        on_workers(input.chunks_mut(per_worker * c * s * s).enumerate(), |(group, inputs)| {
            for (i, out) in inputs.chunks_mut(c * s * s).enumerate() {
                out.copy_from_slice(&norm.input(first + group * per_worker + i, prep));
            }
        });
        let logits = logits_of([n, c, s, s], input)?;
        let k = logits.len() / (n * s * s);
        let masks = mask[first * plane..][..n * plane].chunks_mut(per_worker * plane);
        let probabilities: Vec<Option<&mut [f32]>> = match foreground.as_mut() {
            Some(f) => f[first * plane..][..n * plane].chunks_mut(per_worker * plane).map(Some).collect(),
            None => (0..masks.len()).map(|_| None).collect(),
        };
        let groups = masks.zip(probabilities).zip(logits.chunks(per_worker * k * s * s));
        on_workers(groups, |((masks, mut probabilities), logits)| {
            for (i, (mask, logits)) in masks.chunks_mut(plane).zip(logits.chunks(k * s * s)).enumerate() {
                let probabilities = probabilities.as_deref_mut().map(|p| &mut p[i * plane..][..plane]);
                logits_to_mask(&back, logits, k, nx, mask, probabilities);
            }
        });
    }
    Ok(Segmentation { mask, foreground })
}

/// Runs `work` on each item, each on its own thread (the last on this one).
fn on_workers<T: Send>(items: impl Iterator<Item = T>, work: impl Fn(T) + Sync) {
    let mut items: Vec<T> = items.collect();
    let last = items.pop();
    std::thread::scope(|scope| {
        for item in items {
            scope.spawn(|| work(item));
        }
        if let Some(item) = last {
            work(item);
        }
    });
}

/// One slice's logits `[k, size, size]` back on its own `ny × nx` grid: the argmax into
/// `mask` and, when asked, the softmax probability of not being background.
fn logits_to_mask(
    back: &Bilinear,
    logits: &[f32],
    k: usize,
    nx: usize,
    mask: &mut [u8],
    mut foreground: Option<&mut [f32]>,
) {
    back.for_each_row(logits, k, |row, values| {
        for x in 0..nx {
            let at = |class: usize| values[class * nx + x];
            let best = (1..k).fold(0, |best, class| if at(class) > at(best) { class } else { best });
            mask[row * nx + x] = (best != 0) as u8;
            if let Some(foreground) = foreground.as_deref_mut() {
                let top = at(best);
                let total: f32 = (0..k).map(|class| (at(class) - top).exp()).sum();
                foreground[row * nx + x] = 1.0 - (at(0) - top).exp() / total;
            }
        }
    });
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

    /// The path as it was written before it was split between threads and made separable:
    /// a z-scored copy of the volume, each class plane resized on its own, then the argmax and
    /// softmax per voxel. The segmentation must not move by a bit.
    #[test]
    fn the_threaded_separable_path_equals_the_plain_one_bit_for_bit() {
        use crate::transforms::{resize_bilinear, zscore};
        let (dims, spacing) = ([23, 17, 7], [1.0, 1.0, 2.0]);
        let affine = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let data: Vec<f32> = (0..23 * 17 * 7).map(|i| ((i * 7919) % 1013) as f32).collect();
        let volume = Volume { data: data.clone(), dims, spacing, affine, header: new_header(spacing, &affine) };
        let (prep, k) = (Preprocessing { size: 8, context: 1 }, 3);
        // A "network" whose logits are a fixed function of its input, different per class.
        let network = |shape: [usize; 4], input: Vec<f32>| -> Result<Vec<f32>, ()> {
            let [n, c, h, w] = shape;
            Ok((0..n * k * h * w)
                .map(|i| {
                    let (b, class, p) = (i / (k * h * w), (i / (h * w)) % k, i % (h * w));
                    input[(b * c + class % c) * h * w + p] * (class as f32 - 0.7) + 0.1 * class as f32
                })
                .collect())
        };

        let mut normalized = data;
        zscore(&mut normalized);
        let plane = 23 * 17;
        let (mut mask, mut foreground) = (Vec::new(), Vec::new());
        for z in 0..7 {
            let input: Vec<f32> = (0..3usize)
                .flat_map(|offset| {
                    let zz = (z + offset).saturating_sub(1).min(6);
                    resize_bilinear(&normalized[zz * plane..][..plane], 17, 23, 8, 8)
                })
                .collect();
            let logits = network([1, 3, 8, 8], input).unwrap();
            let planes: Vec<Vec<f32>> =
                (0..k).map(|class| resize_bilinear(&logits[class * 64..][..64], 8, 8, 17, 23)).collect();
            for p in 0..plane {
                let best = (1..k).fold(0, |best, class| if planes[class][p] > planes[best][p] { class } else { best });
                mask.push((best != 0) as u8);
                let top = planes[best][p];
                let total: f32 = planes.iter().map(|plane| (plane[p] - top).exp()).sum();
                foreground.push(1.0 - (planes[0][p] - top).exp() / total);
            }
        }
        // Every batch split between the cores, and none.
        for parallel_pixels in [0, usize::MAX] {
            let seg =
                segment_split(&volume, &prep, 3, true, parallel_pixels, &mut |shape, input| network(shape, input))
                    .unwrap();
            assert_eq!(seg.mask, mask);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(seg.foreground.as_deref().unwrap()), bits(&foreground));
        }
        assert!(mask.contains(&1) && mask.contains(&0));
    }
}
