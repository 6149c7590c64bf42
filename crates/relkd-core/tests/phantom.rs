//! The phantom: anatomy where it belongs (checked in the files' own RAS millimetres), an organ
//! rather than a prism, T2-weighted contrast, each site's acquisition, layout and determinism.

use std::path::Path;
use std::sync::OnceLock;

use relkd_core::dataset::{CaseFiles, Dataset, load_case};
use relkd_core::nifti_io::{Volume, new_header, read_volume, write_volume};
use relkd_core::phantom::{CaseCount, Extras, MANIFEST, Matrix, PhantomConfig, SITES, Structure, TISSUES, generate};
use relkd_core::transforms::{Preprocessing, case_slices};

fn write(config: &PhantomConfig, extras: &Extras) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate(config, dir.path(), extras, &|_, _| {}).unwrap();
    dir
}

/// One dataset for the anatomy tests: every site, 3 cases, with tissue volumes and previews.
fn dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let config =
            PhantomConfig { sites: 6, cases: CaseCount::Each(3), size: Matrix::Pixels(64), seed: 11, eval_cases: 0 };
        let dir = tempfile::tempdir().unwrap();
        let extras = Extras { tissues: true, preview: Some(dir.path().join("preview")) };
        generate(&config, dir.path(), &extras, &|_, _| {}).unwrap();
        dir
    })
    .path()
}

/// One case of [`dataset`]: (site, case, image, mask, structures).
type Rendered = (String, String, Volume, Vec<u8>, Vec<Structure>);

/// Every case of [`dataset`].
fn cases() -> Vec<Rendered> {
    let root = dataset();
    let data = Dataset::discover(root).unwrap();
    let mut out = vec![];
    for site in &data.sites {
        for files in &site.cases {
            let case = load_case(&site.name, files).unwrap();
            let tissues =
                read_volume(&root.join(TISSUES).join(&site.name).join(format!("{}_tissues.nii.gz", case.id))).unwrap();
            assert_eq!(tissues.affine, case.image.affine);
            let structures = tissues.data.iter().map(|&c| Structure::from_code(c as u8).unwrap()).collect();
            out.push((site.name.clone(), case.id.clone(), case.image, case.mask, structures));
        }
    }
    assert_eq!(out.len(), 18);
    out
}

/// World (RAS mm) position of voxel `v`.
fn world(image: &Volume, v: usize) -> [f64; 3] {
    let [nx, ny, _] = image.dims;
    let ijk = [(v % nx) as f64, ((v / nx) % ny) as f64, (v / (nx * ny)) as f64];
    let a = &image.affine;
    [0, 1, 2].map(|r| a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3])
}

/// Centroid (RAS mm) of the voxels among `voxels` that pass `keep`.
fn centroid(image: &Volume, voxels: impl Iterator<Item = usize>) -> Option<[f64; 3]> {
    let (mut sum, mut n) = ([0.0; 3], 0.0);
    for v in voxels {
        let p = world(image, v);
        (0..3).for_each(|d| sum[d] += p[d]);
        n += 1.0;
    }
    (n > 0.0).then(|| sum.map(|s| s / n))
}

fn is_rectum(s: Structure) -> bool {
    use Structure::*;
    matches!(s, RectalWall | RectalContent | RectalGas | RectalFluid | EndorectalBalloon)
}

#[test]
fn organs_lie_where_they_do_in_a_man_in_every_case() {
    for (site, id, image, mask, structures) in cases() {
        let name = format!("{site}/{id}");
        let plane = image.dims[0] * image.dims[1];
        let gland = centroid(&image, (0..mask.len()).filter(|&v| mask[v] > 0)).unwrap();
        // Rectum posterior to the gland (smaller y) on every slice that holds both.
        let mut both = 0;
        for z in 0..image.dims[2] {
            let slice = z * plane..(z + 1) * plane;
            let g = centroid(&image, slice.clone().filter(|&v| mask[v] > 0));
            let r = centroid(&image, slice.filter(|&v| is_rectum(structures[v])));
            if let (Some(g), Some(r)) = (g, r) {
                assert!(r[1] < g[1] - 5.0, "{name} slice {z}: rectum at y {:.1}, gland at {:.1}", r[1], g[1]);
                both += 1;
            }
        }
        assert!(both >= 3, "{name}: rectum beside the gland on {both} slices");
        // Bladder above the base: its centroid superior to the gland's highest voxel.
        let base = (0..mask.len()).filter(|&v| mask[v] > 0).map(|v| world(&image, v)[2]).fold(f64::MIN, f64::max);
        let bladder = centroid(&image, (0..mask.len()).filter(|&v| structures[v] == Structure::Bladder));
        let bladder = bladder.unwrap_or_else(|| panic!("{name}: no bladder in the field of view"));
        assert!(bladder[2] > base, "{name}: bladder centroid z {:.1} not above the base {base:.1}", bladder[2]);
        // The pubic symphysis anterior to the gland, wherever the field of view shows it.
        let half_fov = image.dims[0] as f64 * image.spacing[0] as f64 / 2.0;
        let pubis: Vec<usize> = (0..mask.len()).filter(|&v| structures[v] == Structure::PubicBone).collect();
        assert!(half_fov < 60.0 || !pubis.is_empty(), "{name}: no pubic symphysis in a {half_fov:.0} mm half field");
        for &v in &pubis {
            assert!(world(&image, v)[1] > gland[1] + 10.0, "{name}: pubic bone not anterior to the gland");
        }
        // Femoral heads lateral, right (+x) and left (−x), never near the midline.
        let heads: Vec<[f64; 3]> =
            (0..mask.len()).filter(|&v| structures[v] == Structure::FemoralHead).map(|v| world(&image, v)).collect();
        assert!(heads.iter().all(|p| (p[0] - gland[0]).abs() > 40.0), "{name}: a femoral head near the midline");
        if half_fov > 105.0 {
            assert!(heads.iter().any(|p| p[0] > gland[0] + 50.0), "{name}: no right femoral head");
            assert!(heads.iter().any(|p| p[0] < gland[0] - 50.0), "{name}: no left femoral head");
        }
    }
}

#[test]
fn the_gland_grows_from_apex_to_mid_gland_and_shrinks_to_the_base() {
    for (site, id, image, mask, _) in cases() {
        let plane = image.dims[0] * image.dims[1];
        let areas: Vec<usize> =
            mask.chunks(plane).map(|s| s.iter().filter(|&&m| m > 0).count()).filter(|&a| a > 0).collect();
        let mid = areas[areas.len() / 2];
        let (apex, base) = (areas[0], areas[areas.len() - 1]);
        assert!(areas.len() >= 4, "{site}/{id}: gland on {} slices", areas.len());
        assert!(mid > apex && mid > base, "{site}/{id}: areas along z {areas:?}");
        // True size: 15–80 cc drawn; the voxelised mask is within a margin of that.
        let voxel_cc = image.spacing.iter().product::<f32>() as f64 / 1000.0;
        let cc = mask.iter().filter(|&&m| m > 0).count() as f64 * voxel_cc;
        assert!((10.0..100.0).contains(&cc), "{site}/{id}: gland {cc:.1} cc");
    }
}

#[test]
fn t2_contrast_orders_urine_fat_peripheral_zone_transition_zone_muscle() {
    for (site, id, image, _, structures) in cases() {
        let mean = |keep: &dyn Fn(Structure) -> bool| {
            let values: Vec<f64> =
                (0..structures.len()).filter(|&v| keep(structures[v])).map(|v| image.data[v] as f64).collect();
            assert!(!values.is_empty(), "{site}/{id}: a tissue is missing");
            values.iter().sum::<f64>() / values.len() as f64
        };
        let order = [
            ("urine", mean(&|s| s == Structure::Bladder)),
            ("fat", mean(&Structure::is_fat)),
            ("peripheral zone", mean(&|s| s == Structure::PeripheralZone)),
            ("transition zone", mean(&|s| s == Structure::TransitionZone)),
            ("muscle", mean(&Structure::is_muscle)),
        ];
        for pair in order.windows(2) {
            assert!(
                pair[0].1 > pair[1].1,
                "{site}/{id}: {} {:.0} not brighter than {} {:.0}",
                pair[0].0,
                pair[0].1,
                pair[1].0,
                pair[1].1
            );
        }
    }
}

#[test]
fn each_site_acquires_as_spec_section_2_says() {
    let data = Dataset::discover(dataset()).unwrap();
    assert_eq!(data.sites.len(), 6);
    for (site, style) in data.sites.iter().zip(&SITES) {
        assert_eq!(site.name, style.folder);
        for files in &site.cases {
            let case = load_case(&site.name, files).unwrap();
            let [dx, dy, dz] = case.image.spacing;
            // The 384 grid's pixel, resampled to 64: the field of view is the native one.
            let native = dx * 64.0 / 384.0;
            assert!(native >= style.pixel_mm.0 - 1e-4 && native <= style.pixel_mm.1 + 1e-4, "{}: {native}", site.name);
            assert_eq!(dx, dy);
            assert!(dz >= style.slice_mm.0 - 0.03 && dz <= style.slice_mm.1 + 0.03, "{}: slice {dz}", site.name);
            // The stack covers the gland with margins, 60–110 mm in all.
            let depth = case.image.dims[2] as f32 * dz;
            assert!((55.0..115.0).contains(&depth), "{}: a {depth} mm stack", site.name);
            assert_eq!(case.label_values, if style.zone_labels { vec![0, 1, 2] } else { vec![0, 1] }, "{}", site.name);
            assert!(files.mask.to_string_lossy().ends_with(&format!("{}.nii.gz", style.mask_suffix)));
            // Radiological storage: x and y flipped in the affine, the axes in RAS.
            assert!(case.image.affine[0][0] < 0.0 && case.image.affine[1][1] < 0.0 && case.image.affine[2][2] > 0.0);
        }
    }
    for style in &SITES {
        let png = std::fs::read(dataset().join("preview").join(format!("{}.png", style.folder))).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let config =
        PhantomConfig { sites: 2, cases: CaseCount::Each(1), size: Matrix::Pixels(24), seed: 5, eval_cases: 0 };
    let (a, b) = (write(&config, &Extras::default()), write(&config, &Extras::default()));
    let c = write(&PhantomConfig { seed: 6, ..config }, &Extras::default());
    let file = "BMC/Case00.nii.gz";
    let read = |d: &tempfile::TempDir| std::fs::read(d.path().join(file)).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
    assert_eq!(std::fs::read_to_string(a.path().join(MANIFEST)).unwrap(), config.manifest());
    assert!(!a.path().join(TISSUES).exists(), "tissue volumes only on request");
}

#[test]
fn matrix_reads_a_pixel_count_or_native() {
    assert_eq!("native".parse::<Matrix>().unwrap(), Matrix::Native);
    assert_eq!("96".parse::<Matrix>().unwrap(), Matrix::Pixels(96));
    assert!("big".parse::<Matrix>().unwrap_err().contains("'big'"));
    let yaml: PhantomConfig = serde_yaml::from_str("size: native").unwrap();
    assert_eq!(yaml.size.pixels(), 384);
    let yaml: PhantomConfig = serde_yaml::from_str("{ sites: 2, size: 96 }").unwrap();
    assert_eq!((yaml.sites, yaml.size), (2, Matrix::Pixels(96)));
    assert!(serde_yaml::from_str::<PhantomConfig>("size: huge").is_err());
    let native = PhantomConfig { size: Matrix::Native, ..Default::default() };
    assert_eq!(native.manifest(), "relkd phantom v4 sites=6 cases=8 size=native seed=0\n");
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
    let dir = write(
        &PhantomConfig { sites: 1, cases: CaseCount::Each(1), size: Matrix::Pixels(32), seed: 4, eval_cases: 0 },
        &Extras::default(),
    );
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
