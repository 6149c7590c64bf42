//! The phantom's layout, determinism and per-site differences.

use relkd_core::dataset::{CaseFiles, Dataset, load_case};
use relkd_core::nifti_io::{new_header, write_volume};
use relkd_core::phantom::{MANIFEST, PhantomConfig, generate};
use relkd_core::transforms::{Preprocessing, case_slices};

fn write(config: &PhantomConfig) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate(config, dir.path(), &|_, _| {}).unwrap();
    dir
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let config = PhantomConfig { sites: 2, cases: 1, size: 24, seed: 5 };
    let (a, b) = (write(&config), write(&config));
    let c = write(&PhantomConfig { seed: 6, ..config });
    let file = "BMC/Case00.nii.gz";
    let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(file)).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
    assert_eq!(std::fs::read_to_string(a.path().join(MANIFEST)).unwrap(), config.manifest());
}

#[test]
fn sites_differ_in_acquisition_and_cases_in_anatomy() {
    let dir = write(&PhantomConfig { sites: 6, cases: 2, size: 48, seed: 1 });
    let data = Dataset::discover(dir.path()).unwrap();
    assert_eq!(data.sites.len(), 6);
    let mut spacings = Vec::new();
    let mut peaks = Vec::new();
    for site in &data.sites {
        assert_eq!(site.cases.len(), 2, "{}", site.name);
        let cases: Vec<_> = site.cases.iter().map(|f| load_case(&site.name, f).unwrap()).collect();
        for case in &cases {
            let fg = case.mask.iter().filter(|&&m| m == 1).count() as f64 / case.mask.len() as f64;
            assert!((0.002..0.1).contains(&fg), "{} {}: foreground fraction {fg}", site.name, case.id);
            assert_eq!(case.image.dims[..2], [48, 48]);
        }
        // Two cases of one site have different glands.
        assert_ne!(cases[0].mask, cases[1].mask, "{}", site.name);
        spacings.push(cases[0].image.spacing[0]);
        peaks.push(cases[0].image.data.iter().cloned().fold(0.0, f32::max));
        let labels = &cases[0].label_values;
        if site.name == "RUNMC" {
            assert_eq!(labels, &[0, 1, 2]);
        } else {
            assert_eq!(labels, &[0, 1]);
        }
    }
    // Every site has its own field of view and intensity scale.
    spacings.sort_by(f32::total_cmp);
    spacings.dedup();
    assert_eq!(spacings.len(), 6);
    peaks.sort_by(f32::total_cmp);
    assert!(peaks[5] > 2.5 * peaks[0], "{peaks:?}");
}

#[test]
fn image_and_mask_must_share_shape_and_affine() {
    let dir = tempfile::tempdir().unwrap();
    let affine = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    let shifted = [[1.0, 0.0, 0.0, 5.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    let image = dir.path().join("Case00.nii.gz");
    write_volume(&image, &[0i16; 8], [2, 2, 2], &new_header([1.0, 1.0, 2.0], &affine)).unwrap();
    let files = |mask: &str| CaseFiles { id: "Case00".into(), image: image.clone(), mask: dir.path().join(mask) };

    write_volume(&dir.path().join("small.nii.gz"), &[0u8; 4], [2, 2, 1], &new_header([1.0, 1.0, 2.0], &affine))
        .unwrap();
    let err = load_case("X", &files("small.nii.gz")).unwrap_err();
    assert!(err.message.contains("shape"), "{err}");

    write_volume(&dir.path().join("moved.nii.gz"), &[0u8; 8], [2, 2, 2], &new_header([1.0, 1.0, 2.0], &shifted))
        .unwrap();
    let err = load_case("X", &files("moved.nii.gz")).unwrap_err();
    assert!(err.message.contains("affines differ"), "{err}");
}

#[test]
fn training_slices_keep_only_foreground_and_evaluation_takes_all() {
    let dir = write(&PhantomConfig { sites: 1, cases: 1, size: 32, seed: 4 });
    let data = Dataset::discover(dir.path()).unwrap();
    let case = load_case("RUNMC", &data.sites[0].cases[0]).unwrap();
    let prep = Preprocessing { size: 16, context: 1 };
    let depth = case.image.dims[2];
    let with_fg: Vec<usize> =
        (0..depth).filter(|&z| case.mask[z * 1024..(z + 1) * 1024].iter().any(|&m| m > 0)).collect();
    let training = case_slices(&case.image, &case.mask, &prep, true);
    assert_eq!(training.iter().map(|s| s.z).collect::<Vec<_>>(), with_fg);
    assert!(with_fg.len() < depth, "the phantom has slices without gland");
    let all = case_slices(&case.image, &case.mask, &prep, false);
    assert_eq!(all.len(), depth);
    assert_eq!(all[0].image.len(), 3 * 16 * 16, "2.5D: three channels of 16×16");
    assert_eq!(all[0].mask.len(), 16 * 16);
}
