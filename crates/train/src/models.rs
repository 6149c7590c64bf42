//! `train models`: the five networks against the paper's Table 1.

use std::fmt::Write;

use burn::tensor::Device;
use relkd_models::{Architecture, NetworkConfig, Segmenter, trainable_params};

/// The table for an input of `size × size` (one channel, two classes, paper widths).
pub fn table(size: usize) -> String {
    let device = Device::flex();
    let mut out = String::new();
    writeln!(
        out,
        "{:<11} {:<8} {:>12} {:>9} {:>9} {:>9}  distillation tap",
        "model", "role", "live params", "paper M", "GFLOPs", "paper"
    )
    .unwrap();
    for a in Architecture::ALL {
        let net = NetworkConfig::new(a).init(&device);
        let tap = net.tap();
        let (paper_params, paper_gflops) = a.paper_table1();
        writeln!(
            out,
            "{:<11} {:<8} {:>12} {:>9.3} {:>9.2} {:>9.2}  {} ({} ch, stride {})",
            a.display_name(),
            a.role(),
            group_thousands(trainable_params(&net)),
            paper_params,
            net.gflops(size, size),
            paper_gflops,
            tap.name,
            tap.channels,
            tap.stride
        )
        .unwrap();
    }
    writeln!(
        out,
        "GFLOPs = 2 × multiply-accumulates of (transposed) convolutions for one 1×{size}×{size} image; \
         paper columns: Table 1 (at 384×384)."
    )
    .unwrap();
    out
}

fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
