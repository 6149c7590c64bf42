//! `train models` prints the five networks against Table 1.

use std::process::Command;

#[test]
fn models_table_lists_all_five_with_live_counts_and_taps() {
    let out = Command::new(env!("CARGO_BIN_EXE_train")).args(["models", "--size", "384"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for (name, role, params, paper, tap) in [
        ("ESPNet", "student", "183,725", "0.183", "output2_cat (256 ch, stride 8)"),
        ("ENet", "student", "335,966", "0.353", "(128 ch, stride 8)"),
        ("ERFNet", "student", "2,062,872", "2.060", "encoder output (128 ch, stride 8)"),
        ("UNet++", "teacher", "36,628,546", "36.600", "x3_0 (512 ch, stride 8)"),
        ("DeepLabV3+", "teacher", "54,746,962", "56.800", "backbone output (2048 ch, stride 8)"),
    ] {
        let row = table.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[1..4], &[role, params, paper], "{row}");
        // Counted GFLOPs and Table 1's, side by side.
        let (ours, theirs): (f64, f64) = (cells[4].parse().unwrap(), cells[5].parse().unwrap());
        assert!(ours > 0.85 * theirs && ours <= theirs, "{row}");
        assert!(row.ends_with(tap), "{row}");
    }
}
