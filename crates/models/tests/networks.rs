//! The five networks: exact live parameter counts at the paper's widths, any input size, the
//! distillation taps, and the counted FLOPs against Table 1.

use burn::tensor::{Device, Distribution, Tensor};
use relkd_models::{Architecture, NetworkConfig, Segmenter, trainable_params};

/// EMKD's reference counts (SPEC §3) minus the layers that never run (see each model's docs).
fn expected_live_params(a: Architecture) -> usize {
    match a {
        Architecture::Enet => 353_761 - 17_795,                           // bottleneck3_5
        Architecture::Espnet => 183_725,                                  // all live
        Architecture::Erfnet => 2_063_130 - (128 * 2 + 2),                // encoder output_conv
        Architecture::Unetpp => 36_628_546,                               // all live
        Architecture::Deeplabv3plus => 56_795_962 - (2048 * 1000 + 1000), // ImageNet fc
    }
}

#[test]
fn live_parameter_counts_at_paper_width() {
    let device = Device::flex();
    for a in Architecture::ALL {
        let net = NetworkConfig::new(a).init(&device);
        let live = trainable_params(&net);
        assert_eq!(live, expected_live_params(a), "{a}");
        // Within 4% of Table 1, except ENet, whose documented gap is the dead bottleneck3_5.
        let (paper_m, _) = a.paper_table1();
        let gap = (live as f64 / 1e6 - paper_m).abs() / paper_m;
        if a != Architecture::Enet {
            assert!(gap < 0.04, "{a}: {live} vs {paper_m} M ({:.1}%)", 100.0 * gap);
        }
    }
}

#[test]
fn any_input_size_gives_logits_of_that_size() {
    let device = Device::flex();
    for a in Architecture::ALL {
        let net = NetworkConfig::new(a).with_width(0.125).init(&device);
        let tap = net.tap();
        for [h, w] in [[100, 100], [97, 131]] {
            let x = Tensor::<4>::random([2, 1, h, w], Distribution::Normal(0.0, 1.0), &device);
            let out = net.forward_features(x);
            assert_eq!(out.logits.dims(), [2, 2, h, w], "{a} at {h}×{w}");
            let s = net.total_stride();
            let (ph, pw) = (h.next_multiple_of(s), w.next_multiple_of(s));
            assert_eq!(out.feature.dims(), [2, tap.channels, ph / tap.stride, pw / tap.stride], "{a} tap");
        }
    }
}

#[test]
fn taps_at_paper_width() {
    let device = Device::flex();
    let taps: Vec<_> = Architecture::ALL
        .iter()
        .map(|&a| {
            let t = NetworkConfig::new(a).init(&device).tap();
            (a, t.name, t.channels, t.stride)
        })
        .collect();
    assert_eq!(
        taps,
        vec![
            (Architecture::Espnet, "output2_cat", 256, 8),
            (Architecture::Enet, "stage3 (bottleneck3_8)", 128, 8),
            (Architecture::Erfnet, "encoder output", 128, 8),
            (Architecture::Unetpp, "x3_0", 512, 8),
            (Architecture::Deeplabv3plus, "backbone output", 2048, 8),
        ]
    );
}

#[test]
fn three_input_channels_for_2_5d() {
    let device = Device::flex();
    for a in Architecture::ALL {
        let net = NetworkConfig::new(a).with_in_channels(3).with_width(0.125).init(&device);
        let x = Tensor::<4>::random([1, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(net.forward(x).dims(), [1, 2, 32, 32], "{a}");
    }
}

#[test]
fn mac_counter_by_hand() {
    use relkd_models::flops::MacCounter;
    use relkd_models::layers::{conv_same, conv_transpose};
    let device = Device::flex();
    let mut m = MacCounter::default();
    // 3×3 stride 2, 3 → 16 on 384²: 192² outputs × 16 × 3 × 9.
    assert_eq!(m.conv(&conv_same(3, 16, 3, 2, 1, false, &device), [384, 384]), [192, 192]);
    assert_eq!(m.macs, 192 * 192 * 16 * 3 * 9);
    // 2×2 stride 2 transposed, 16 → 2 on 192²: every input pixel scatters 16 × 2 × 4.
    let before = m.macs;
    assert_eq!(m.conv_transpose(&conv_transpose(16, 2, 2, false, &device), [192, 192]), [384, 384]);
    assert_eq!(m.macs - before, 192 * 192 * 16 * 2 * 4);
    assert!((m.gflops() - 2.0 * m.macs as f64 / 1e9).abs() < 1e-12);
}

#[test]
fn counted_gflops_are_close_to_table1() {
    // Table 1 also counts a few non-convolution operations (and ENet's dead bottleneck3_5);
    // convolutions alone land within 11% of it.
    let device = Device::flex();
    for a in Architecture::ALL {
        let net = NetworkConfig::new(a).init(&device);
        let ours = net.gflops(384, 384);
        let (_, paper) = a.paper_table1();
        let gap = (ours - paper).abs() / paper;
        assert!(gap < 0.11, "{a}: {ours:.2} vs {paper} GFLOPs");
        assert!(ours <= paper, "{a}: counted more than Table 1");
    }
}
