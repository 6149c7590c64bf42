//! How sure a grid is: the paired effect of distillation on a site, with a 95% confidence
//! interval that counts both sources of noise, training seeds and test cases.
//!
//! Every seed's models are scored on the same test cases, so the paired differences
//! `d[s][c] = Dice_w(s, c) − Dice_w/o(s, c)` form a crossed seeds × cases table. It is read as
//! `d = μ + a_s + b_c + e_sc` with random seed, case and interaction effects; the two-way
//! ANOVA's mean squares estimate their variances, the variance of the grand mean is
//! `σ²_seed/S + σ²_case/C + σ²_residual/(S·C)`, and the interval is Student's t on
//! Satterthwaite's degrees of freedom for that sum. Unlike a t interval over the seeds' means
//! (which holds the test cases fixed), it speaks for new cases of the site as well as new seeds.

pub mod student_t;

use std::fmt;

/// Two-sided confidence level of every interval.
pub const LEVEL: f64 = 0.95;
/// Power at which [`PairedEffect::detectable`] is computed.
pub const POWER: f64 = 0.8;

/// The variances of the seed effect, the case effect and their interaction (with noise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Components {
    pub seed: f64,
    pub case: f64,
    pub residual: f64,
}

impl Components {
    /// Var(grand mean) over `seeds` × `cases`, with the degrees of freedom of its estimate from
    /// a grid of that shape (Satterthwaite, from the mean squares' expectations).
    pub fn variance_of_mean(&self, seeds: usize, cases: usize) -> (f64, f64) {
        let (s, c) = (seeds as f64, cases as f64);
        let expected = MeanSquares {
            seed: self.residual + c * self.seed,
            case: self.residual + s * self.case,
            residual: self.residual,
        };
        expected.variance_of_mean(seeds, cases)
    }

    /// The 95% interval's half-width a grid of `seeds` × `cases` is expected to reach.
    pub fn expected_half_width(&self, seeds: usize, cases: usize) -> f64 {
        let (variance, df) = self.variance_of_mean(seeds, cases);
        critical_value(df) * variance.sqrt()
    }
}

/// The paired effect of one comparison and how sure the grid is of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedEffect {
    /// Mean paired difference over every seed and case.
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub standard_error: f64,
    /// Satterthwaite's degrees of freedom of the standard error.
    pub df: f64,
    /// The smallest true effect this grid would find (interval excluding 0) with 80% power.
    pub detectable: f64,
    pub seeds: usize,
    pub cases: usize,
    pub components: Components,
}

impl PairedEffect {
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0
    }

    /// Whether `value` lies inside the interval.
    pub fn contains(&self, value: f64) -> bool {
        self.low <= value && value <= self.high
    }
}

impl fmt::Display for PairedEffect {
    /// `+0.026 [−0.031, +0.083]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:+.3} [{:+.3}, {:+.3}]", self.mean, self.low, self.high)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("an interval over seeds and cases needs at least 2 of each, got {seeds} seed(s) × {cases} case(s)")]
    TooSmall { seeds: usize, cases: usize },
    #[error("seed {seed} has {got} cases where seed 0 has {expected}: every seed must score the same cases")]
    Ragged { seed: usize, got: usize, expected: usize },
    #[error("difference at seed {seed}, case {case} is {value}")]
    NotFinite { seed: usize, case: usize, value: f64 },
}

/// The paired effect of `differences[seed][case]` with its 95% interval.
pub fn paired_effect(differences: &[Vec<f64>]) -> Result<PairedEffect, StatsError> {
    let seeds = differences.len();
    let cases = differences.first().map_or(0, Vec::len);
    if seeds < 2 || cases < 2 {
        return Err(StatsError::TooSmall { seeds, cases });
    }
    for (seed, row) in differences.iter().enumerate() {
        if row.len() != cases {
            return Err(StatsError::Ragged { seed, got: row.len(), expected: cases });
        }
        if let Some((case, &value)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(StatsError::NotFinite { seed, case, value });
        }
    }
    let squares = MeanSquares::of(differences);
    let (variance, df) = squares.variance_of_mean(seeds, cases);
    let standard_error = variance.sqrt();
    let mean = differences.iter().flatten().sum::<f64>() / (seeds * cases) as f64;
    let half = critical_value(df) * standard_error;
    Ok(PairedEffect {
        mean,
        low: mean - half,
        high: mean + half,
        standard_error,
        df,
        detectable: (critical_value(df) + student_t::quantile(POWER, df)) * standard_error,
        seeds,
        cases,
        components: squares.components(seeds, cases),
    })
}

/// t_{(1 + LEVEL)/2, df}.
pub fn critical_value(df: f64) -> f64 {
    student_t::quantile(0.5 + LEVEL / 2.0, df)
}

/// The two-way ANOVA's mean squares of a seeds × cases table without replication.
#[derive(Debug, Clone, Copy, PartialEq)]
struct MeanSquares {
    seed: f64,
    case: f64,
    residual: f64,
}

impl MeanSquares {
    fn of(table: &[Vec<f64>]) -> Self {
        let (seeds, cases) = (table.len(), table[0].len());
        let grand = table.iter().flatten().sum::<f64>() / (seeds * cases) as f64;
        let seed_means: Vec<f64> = table.iter().map(|row| row.iter().sum::<f64>() / cases as f64).collect();
        let case_means: Vec<f64> =
            (0..cases).map(|c| table.iter().map(|row| row[c]).sum::<f64>() / seeds as f64).collect();
        let squares = |means: &[f64]| means.iter().map(|m| (m - grand).powi(2)).sum::<f64>();
        let residual: f64 = table
            .iter()
            .zip(&seed_means)
            .flat_map(|(row, sm)| row.iter().zip(&case_means).map(move |(d, cm)| (d - sm - cm + grand).powi(2)))
            .sum();
        let (s, c) = (seeds as f64, cases as f64);
        Self {
            seed: c * squares(&seed_means) / (s - 1.0),
            case: s * squares(&case_means) / (c - 1.0),
            residual: residual / ((s - 1.0) * (c - 1.0)),
        }
    }

    /// The variance components, a negative estimate set to 0 (its effect is then not seen).
    fn components(&self, seeds: usize, cases: usize) -> Components {
        let (s, c) = (seeds as f64, cases as f64);
        Components {
            seed: ((self.seed - self.residual) / c).max(0.0),
            case: ((self.case - self.residual) / s).max(0.0),
            residual: self.residual,
        }
    }

    /// Var(grand mean) = (MS_seed + MS_case − MS_residual) / (S·C) when both components are
    /// positive (a truncated one drops its term and MS_residual's minus), with Satterthwaite's
    /// degrees of freedom for that combination of mean squares.
    fn variance_of_mean(&self, seeds: usize, cases: usize) -> (f64, f64) {
        let (s, c) = (seeds as f64, cases as f64);
        // (coefficient, mean square, its degrees of freedom) of each term of S·C·Var.
        let mut terms = vec![(1.0, self.residual, (s - 1.0) * (c - 1.0))];
        for (square, df) in [(self.seed, s - 1.0), (self.case, c - 1.0)] {
            if square > self.residual {
                terms.push((1.0, square, df));
                terms[0].0 -= 1.0;
            }
        }
        let total: f64 = terms.iter().map(|(k, m, _)| k * m).sum();
        let spread: f64 = terms.iter().filter(|(k, _, _)| *k != 0.0).map(|(k, m, df)| (k * m).powi(2) / df).sum();
        let df = if spread > 0.0 { total * total / spread } else { (s - 1.0) * (c - 1.0) };
        (total / (s * c), df.max(1.0))
    }
}

#[cfg(test)]
mod tests;
