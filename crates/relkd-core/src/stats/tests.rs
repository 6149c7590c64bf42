use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

#[test]
fn a_two_by_three_table_by_hand() {
    // Grand mean 0.25; seed means 0.2, 0.3; case means 0.2, 0.2, 0.35; residuals ±0.05 and 0.
    // MS_seed = 3·(0.05² + 0.05²)/1 = 0.015, MS_case = 2·(0.05² + 0.05² + 0.1²)/2 = 0.015,
    // MS_residual = 4·0.05²/2 = 0.005; Var = (0.015 + 0.015 − 0.005)/6; Satterthwaite's df
    // 0.025² / (0.015²/1 + 0.015²/2 + 0.005²/2) = 1.7857.
    let effect = paired_effect(&[vec![0.1, 0.2, 0.3], vec![0.3, 0.2, 0.4]]).unwrap();
    assert!(close(effect.mean, 0.25, 1e-12));
    assert!(close(effect.standard_error, (0.025f64 / 6.0).sqrt(), 1e-12));
    assert!(close(effect.df, 0.025 * 0.025 / 0.00035, 1e-9));
    let c = effect.components;
    assert!(close(c.seed, 0.01 / 3.0, 1e-12) && close(c.case, 0.005, 1e-12) && close(c.residual, 0.005, 1e-12));
    let half = student_t::quantile(0.975, effect.df) * effect.standard_error;
    assert!(close(effect.low, 0.25 - half, 1e-12) && close(effect.high, 0.25 + half, 1e-12));
    assert!(close(effect.half_width(), half, 1e-12));
}

/// Mean and the one-sample t interval's half-width of `values`, computed directly.
fn one_sample_t(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    (mean, student_t::quantile(0.975, n - 1.0) * sd / n.sqrt())
}

#[test]
fn with_one_source_of_noise_it_is_the_one_sample_t_interval() {
    // Every seed identical: only the cases vary, so the interval is the t interval over cases.
    let cases = [0.12, -0.05, 0.30, 0.07, 0.01];
    let effect = paired_effect(&vec![cases.to_vec(); 3]).unwrap();
    let (mean, half) = one_sample_t(&cases);
    assert!(close(effect.mean, mean, 1e-12) && close(effect.half_width(), half, 1e-9), "{effect:?}");
    assert!(close(effect.df, 4.0, 1e-9));
    // Every case identical within a seed: only the seeds vary, the t interval over seeds.
    let seeds = [0.02, 0.11, -0.04, 0.06];
    let table: Vec<Vec<f64>> = seeds.iter().map(|&s| vec![s; 6]).collect();
    let effect = paired_effect(&table).unwrap();
    let (mean, half) = one_sample_t(&seeds);
    assert!(close(effect.mean, mean, 1e-12) && close(effect.half_width(), half, 1e-9), "{effect:?}");
}

#[test]
fn grids_it_cannot_judge_are_errors() {
    assert_eq!(paired_effect(&[vec![0.1, 0.2]]), Err(StatsError::TooSmall { seeds: 1, cases: 2 }));
    assert_eq!(paired_effect(&[vec![0.1], vec![0.2]]), Err(StatsError::TooSmall { seeds: 2, cases: 1 }));
    assert_eq!(paired_effect(&[vec![0.1, 0.2], vec![0.2]]), Err(StatsError::Ragged { seed: 1, got: 1, expected: 2 }));
    assert!(matches!(
        paired_effect(&[vec![0.1, 0.2], vec![f64::NAN, 0.0]]),
        Err(StatsError::NotFinite { seed: 1, case: 0, .. })
    ));
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A synthetic grid's differences with a known `effect` and variance `components`.
fn synthetic(rng: &mut ChaCha8Rng, effect: f64, c: Components, seeds: usize, cases: usize) -> Vec<Vec<f64>> {
    let seed_effects: Vec<f64> = (0..seeds).map(|_| c.seed.sqrt() * normal(rng)).collect();
    let case_effects: Vec<f64> = (0..cases).map(|_| c.case.sqrt() * normal(rng)).collect();
    seed_effects
        .iter()
        .map(|a| case_effects.iter().map(|b| effect + a + b + c.residual.sqrt() * normal(rng)).collect())
        .collect()
}

/// Variance components of the paired difference measured on the phantom: ENet ← UNet++ on HK,
/// 5 seeds × a 40-case evaluation pool (`configs/experiments/pool-quick.yaml`): seed sd 0.031,
/// case sd 0.035, interaction sd 0.053.
pub(crate) const MEASURED: Components =
    Components { seed: 0.031 * 0.031, case: 0.035 * 0.035, residual: 0.053 * 0.053 };

/// Share of `grids` synthetic grids whose interval holds the true effect.
fn coverage(c: Components, seeds: usize, cases: usize, grids: usize, stream: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(stream);
    let effect = 0.04;
    let hits = (0..grids)
        .filter(|_| paired_effect(&synthetic(&mut rng, effect, c, seeds, cases)).unwrap().contains(effect))
        .count();
    hits as f64 / grids as f64
}

#[test]
fn the_interval_covers_the_true_effect_95_percent_of_the_time() {
    // The grid shapes the experiments use: a site's own test cases (8 under LOSO), and an
    // evaluation pool of 40 with 5 to 20 seeds.
    for (seeds, cases, stream) in [(5, 8, 1), (5, 40, 2), (10, 40, 3), (20, 40, 4)] {
        let share = coverage(MEASURED, seeds, cases, 2000, stream);
        assert!((0.93..=0.97).contains(&share), "{seeds} seeds × {cases} cases: coverage {share}");
    }
    // The old quick grids' 3 seeds × 4 cases: a variance component estimated below 0 is set to
    // 0, which on so few degrees of freedom errs wide (97–98%), never narrow.
    let share = coverage(MEASURED, 3, 4, 2000, 5);
    assert!((0.95..=0.99).contains(&share), "3 seeds × 4 cases: coverage {share}");
}

#[test]
fn the_expected_half_width_matches_what_synthetic_grids_reach() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (seeds, cases) = (10, 40);
    let expected = MEASURED.expected_half_width(seeds, cases);
    let mut widths: Vec<f64> = (0..400)
        .map(|_| paired_effect(&synthetic(&mut rng, 0.0, MEASURED, seeds, cases)).unwrap().half_width())
        .collect();
    widths.sort_by(f64::total_cmp);
    let median = widths[widths.len() / 2];
    assert!((median / expected - 1.0).abs() < 0.1, "median {median}, expected {expected}");
    // Var(mean) by the formula: σ²_seed/10 + σ²_case/40 + σ²_interaction/400.
    let (variance, _) = MEASURED.variance_of_mean(seeds, cases);
    assert!(close(variance, MEASURED.seed / 10.0 + MEASURED.case / 40.0 + MEASURED.residual / 400.0, 1e-12));
    // With SciPy's t (README's planner table): 8 seeds × 40 cases, ±0.0279.
    assert!(close(MEASURED.expected_half_width(8, 40), 0.0279, 5e-5));
}
