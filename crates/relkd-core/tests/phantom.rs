//! The phantom's layout, determinism and per-site differences.

use relkd_core::dataset::{Dataset, load_case};
use relkd_core::phantom::{MANIFEST, PhantomConfig, generate};

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
