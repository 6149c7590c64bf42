//! Reading and preprocessing one 384×384×24 int16 `.nii.gz` volume, the size of a real case,
//! and what `infer` does around the network: the whole segmentation path with a network that
//! costs nothing (inputs cut, logits resized back, argmax), and writing the mask.
//!
//!     cargo bench -p relkd-core --bench read_preprocess
//!
//! Prints the median and spread of repeated runs for each stage.

use std::hint::black_box;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relkd_core::nifti_io::{new_header, read_volume, write_mask, write_volume};
use relkd_core::segment::segment_volume;
use relkd_core::timing::time_runs;
use relkd_core::transforms::{NormalizedVolume, Preprocessing};

const RUNS: usize = 15;

fn measure(name: &str, f: impl FnMut()) {
    println!("{name:<42} {}", time_runs(1, RUNS, f).summary());
}

fn main() {
    let dims = [384, 384, 24];
    // Smooth anatomy-like structure plus noise, so gzip sees realistic entropy.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let data: Vec<i16> = (0..dims.iter().product::<usize>())
        .map(|i| {
            let (x, y, z) = (i % 384, (i / 384) % 384, i / (384 * 384));
            let r = ((x as f32 - 192.0).powi(2) + (y as f32 - 200.0).powi(2)).sqrt();
            let base = 600.0 + 300.0 * (r / 25.0).sin() + 10.0 * z as f32;
            (base + rng.random_range(-40.0..40.0)) as i16
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Case00.nii.gz");
    let affine = [[0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    write_volume(&path, &data, dims, &new_header([0.5, 0.5, 3.0], &affine)).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    println!("volume 384×384×24 int16, {:.1} MB compressed", size as f64 / 1e6);

    measure("read .nii.gz", || {
        black_box(read_volume(&path).unwrap());
    });
    let volume = read_volume(&path).unwrap();
    measure("z-score", || {
        black_box(NormalizedVolume::new(&volume));
    });
    let norm = NormalizedVolume::new(&volume);
    for prep in [
        Preprocessing { size: 384, context: 0 },
        Preprocessing { size: 256, context: 0 },
        Preprocessing { size: 384, context: 1 },
    ] {
        measure(&format!("24 slice inputs at {0}×{0}, {1} channel(s)", prep.size, prep.channels()), || {
            for z in 0..norm.depth() {
                black_box(norm.input(z, &prep));
            }
        });
    }
    let prep = Preprocessing { size: 384, context: 0 };
    measure("total: read + z-score + 24 inputs at 384", || {
        let v = read_volume(&path).unwrap();
        let n = NormalizedVolume::new(&v);
        for z in 0..n.depth() {
            black_box(n.input(z, &prep));
        }
    });

    // Everything `infer` does around ONNX Runtime, with a network whose logits are ready-made
    // (two classes, a disc of foreground), so only relkd's own work is timed.
    for size in [64, 384] {
        let prep = Preprocessing { size, context: 0 };
        let disc: Vec<f32> = (0..size * size)
            .flat_map(|p| {
                let (x, y) = ((p % size) as f32 / size as f32 - 0.5, (p / size) as f32 / size as f32 - 0.5);
                [0.0, 0.3 - (x * x + y * y).sqrt()]
            })
            .collect();
        // [n, 2, size, size]: class 0's plane, then class 1's, per slice.
        let plane = |class: usize| disc.iter().skip(class).step_by(2).copied();
        let one: Vec<f32> = plane(0).chain(plane(1)).collect();
        measure(&format!("segment 24 slices at {size}×{size}, free network"), || {
            let seg = segment_volume::<()>(&volume, &prep, 8, false, &mut |shape, _| {
                Ok(one.iter().copied().cycle().take(shape[0] * one.len()).collect())
            });
            black_box(seg.unwrap());
        });
    }
    let mask: Vec<u8> = volume.data.iter().map(|&v| (v > 700.0) as u8).collect();
    let out = dir.path().join("mask.nii.gz");
    measure("write the mask .nii.gz", || {
        let _ = std::fs::remove_file(&out);
        write_mask(&out, &mask, &volume).unwrap();
    });
}
