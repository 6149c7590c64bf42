//! Student's t distribution: its CDF through the regularised incomplete beta function, and its
//! quantile by bisection on the CDF. Degrees of freedom may be fractional (Satterthwaite's).

/// P(T ≤ t) for T with `df` degrees of freedom.
pub fn cdf(t: f64, df: f64) -> f64 {
    assert!(df > 0.0, "degrees of freedom must be positive, got {df}");
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// The `p` quantile (0 < p < 1) of the t distribution with `df` degrees of freedom.
pub fn quantile(p: f64, df: f64) -> f64 {
    assert!(0.0 < p && p < 1.0, "a quantile needs 0 < p < 1, got {p}");
    if p < 0.5 {
        return -quantile(1.0 - p, df);
    }
    // The CDF is increasing; widen the bracket until it holds p, then halve it to f64's precision.
    let (mut lo, mut hi) = (0.0, 1.0);
    while cdf(hi, df) < p {
        (lo, hi) = (hi, hi * 2.0);
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid == lo || mid == hi {
            break;
        }
        if cdf(mid, df) < p { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// I_x(a, b), the regularised incomplete beta function, by its continued fraction (modified
/// Lentz), on the side of x where it converges fast.
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut h = d;
    for m in 1..1000 {
        let m = m as f64;
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        for coefficient in [even, odd] {
            d = 1.0 + coefficient * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + coefficient / c;
            c = if c.abs() < TINY { TINY } else { c };
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let series = COEFFICIENTS[1..].iter().enumerate().fold(COEFFICIENTS[0], |s, (i, c)| s + c / (x + i as f64 + 1.0));
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_published_tables() {
        // Two-sided 95% and one-sided 80% critical values (e.g. NIST/SEMATECH, Table of the
        // t distribution's upper critical values).
        for (df, t975, t80) in [
            (1.0, 12.706_205, 1.376_382),
            (2.0, 4.302_653, 1.060_660),
            (4.0, 2.776_445, 0.940_965),
            (10.0, 2.228_139, 0.879_058),
            (30.0, 2.042_272, 0.853_767),
            (1e7, 1.959_964, 0.841_621),
        ] {
            assert!((quantile(0.975, df) - t975).abs() < 1e-5, "df {df}: {}", quantile(0.975, df));
            assert!((quantile(0.8, df) - t80).abs() < 1e-5, "df {df}: {}", quantile(0.8, df));
            assert!((quantile(0.025, df) + t975).abs() < 1e-5);
        }
    }

    #[test]
    fn cdf_in_closed_form_at_one_and_two_degrees_of_freedom() {
        for t in [-3.0, -0.7, 0.0, 0.4, 2.5, 9.0] {
            // df 1 is Cauchy: 1/2 + atan(t)/π; df 2: 1/2 + t / (2 √(2 + t²)).
            let cauchy = 0.5 + f64::atan(t) / std::f64::consts::PI;
            let two = 0.5 + t / (2.0 * (2.0 + t * t).sqrt());
            assert!((cdf(t, 1.0) - cauchy).abs() < 1e-12, "t {t}");
            assert!((cdf(t, 2.0) - two).abs() < 1e-12, "t {t}");
        }
        // Fractional degrees of freedom sit between their neighbours.
        let (a, b, c) = (quantile(0.975, 3.0), quantile(0.975, 3.5), quantile(0.975, 4.0));
        assert!(a > b && b > c);
    }

    #[test]
    fn ln_gamma_of_known_values() {
        for (x, expected) in [(1.0, 0.0), (2.0, 0.0), (5.0, 24f64.ln()), (0.5, std::f64::consts::PI.sqrt().ln())] {
            assert!((ln_gamma(x) - expected).abs() < 1e-12, "x {x}");
        }
    }
}
