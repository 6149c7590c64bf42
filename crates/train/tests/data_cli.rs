//! `train phantom` then `train data`, through the real binary.

use std::path::Path;
use std::process::{Command, Output};

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train")).args(args).output().expect("train binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn make_phantom(dir: &Path) {
    let out = train(&["phantom", "--out", dir.to_str().unwrap(), "--cases", "2", "--size", "32", "--seed", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn row<'a>(table: &'a str, site: &str) -> &'a str {
    table.lines().find(|l| l.starts_with(site)).unwrap_or_else(|| panic!("no row for {site} in\n{table}"))
}

#[test]
fn phantom_then_data_lists_six_sites_with_both_quirks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("phantom");
    make_phantom(&root);
    assert!(root.join("BMC/Case00_Segmentation.nii.gz").is_file(), "BMC spells its masks _Segmentation");

    let out = train(&["data", "--root", root.to_str().unwrap()]);
    let table = stdout(&out);
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    for site in ["S1 RUNMC", "S2 BMC", "S3 HCRUDB", "S4 UCL", "S5 BIDMC", "S6 HK"] {
        let r = row(&table, site);
        // Two usable cases per site, 32×32 in-plane.
        let cells: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(cells[2], "2", "{r}");
        assert_eq!(cells[4], "32×32", "{r}");
    }
    // RUNMC's zone label 2 is seen and binarised; BMC's capitalised masks are paired.
    assert!(row(&table, "S1 RUNMC").contains("0,1,2"));
    assert!(row(&table, "S2 BMC").ends_with("_Segmentation"));
    assert!(table.contains("no problems found"));
}

#[test]
fn data_reports_every_problem_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("phantom");
    make_phantom(&root);
    std::fs::remove_file(root.join("UCL/Case01_segmentation.nii.gz")).unwrap();
    let corrupt = root.join("HK/Case00.nii.gz");
    let bytes = std::fs::read(&corrupt).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 3]).unwrap();

    let out = train(&["data", "--root", root.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(!out.status.success());
    assert!(text.contains("2 problem(s)"), "{text}");
    assert!(text.contains("UCL/Case01: no mask"), "{text}");
    assert!(text.contains("HK/Case00") && text.contains("gzip"), "{text}");
    assert!(row(&text, "S6 HK").contains("(1 bad)"), "{text}");
    // The case without its mask still counts, as a bad one.
    assert!(row(&text, "S4 UCL").contains("2 (1 bad)"), "{text}");
}

#[test]
fn phantom_never_writes_into_a_non_empty_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious.txt"), "keep me").unwrap();
    let out = train(&["phantom", "--out", tmp.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn data_on_an_empty_folder_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(&["data", "--root", tmp.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no site folders"));
}

/// `infer`'s outputs beside the data (a mask next to its image, a SITE_masks folder) are left
/// out and listed, never a failure; a constant image is a problem; a site folder given as the
/// root says to pass its parent; a site with no readable case shows no spacing or intensity.
#[test]
fn infer_outputs_are_left_out_and_constant_images_are_problems() {
    use relkd_core::nifti_io::{read_volume, write_mask, write_volume};

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("phantom");
    make_phantom(&root);
    let image = read_volume(&root.join("HK/Case00.nii.gz")).unwrap();
    let mask = vec![0u8; image.data.len()];
    write_mask(&root.join("HK/Case00_mask.nii.gz"), &mask, &image).unwrap();
    std::fs::create_dir(root.join("HK_masks")).unwrap();
    write_mask(&root.join("HK_masks/Case00_mask.nii.gz"), &mask, &image).unwrap();
    let out = train(&["data", "--root", root.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("left out: 1 file(s)") && text.contains("Case00_mask.nii.gz"), "{text}");
    assert!(!text.contains("HK_masks") && text.contains("no problems found"), "{text}");

    let constant = root.join("UCL/Case01.nii.gz");
    let volume = read_volume(&constant).unwrap();
    write_volume(&constant, &vec![0f32; volume.data.len()], volume.dims, &volume.header).unwrap();
    for case in ["Case00", "Case01"] {
        let path = root.join(format!("BIDMC/{case}.nii.gz"));
        std::fs::write(&path, b"truncated").unwrap();
    }
    let out = train(&["data", "--root", root.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(!out.status.success());
    assert!(text.contains("UCL/Case01: the image is constant"), "{text}");
    assert!(row(&text, "S4 UCL").contains("(1 bad)"), "{text}");
    let bidmc = row(&text, "S5 BIDMC");
    assert!(!bidmc.contains("inf") && !bidmc.contains("0.00×0.00"), "{bidmc}");

    let out = train(&["data", "--root", root.join("HK").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("looks like one site's folder"), "{err}");
}
