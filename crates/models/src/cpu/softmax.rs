//! The softmax over the classes of each pixel, for the loss operations that take logits
//! (`affinity`, `divergence`): one image's `[k, h·w]` values at a time, each class a plane.

/// One image's class distribution, `[k, plane]` each: the probabilities and their logarithms.
pub(crate) struct ClassDistribution {
    pub p: Vec<f32>,
    pub log_p: Vec<f32>,
}

impl ClassDistribution {
    /// softmax(z / T) over the `k` planes of `logits`, with the maximum subtracted first as
    /// Burn's softmax does; the logarithm as z/T − max − ln Σ e^(z/T − max), one logarithm a
    /// pixel.
    pub fn of(logits: &[f32], k: usize, temperature: f32) -> Self {
        let plane = logits.len() / k;
        let scale = temperature.recip();
        let class = |c: usize| &logits[c * plane..][..plane];
        let mut max = class(0).to_vec();
        for c in 1..k {
            for (m, &z) in max.iter_mut().zip(class(c)) {
                *m = m.max(z);
            }
        }
        // z/T − max/T for each class; the maximum is taken before the scaling (T > 0).
        let shifted: Vec<f32> =
            (0..k).flat_map(|c| class(c).iter().zip(&max).map(|(&z, &m)| (z - m) * scale)).collect();
        let mut p: Vec<f32> = shifted.iter().map(|&s| exp(s)).collect();
        let mut total = vec![0f32; plane];
        for c in 0..k {
            for (t, &e) in total.iter_mut().zip(&p[c * plane..][..plane]) {
                *t += e;
            }
        }
        for c in 0..k {
            for (e, &t) in p[c * plane..][..plane].iter_mut().zip(&total) {
                *e /= t;
            }
        }
        let log_total: Vec<f32> = total.iter().map(|t| t.ln()).collect();
        let log_p =
            (0..k).flat_map(|c| shifted[c * plane..][..plane].iter().zip(&log_total).map(|(&s, &l)| s - l)).collect();
        Self { p, log_p }
    }
}

/// e^x for x ≤ 88, in plain arithmetic the compiler vectorises (the C library's `expf`, one call
/// a value, was most of these operations' time): x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by
/// Cephes' degree-7 polynomial, 2^n written into the exponent's bits. Within 2 units in the last
/// place of `f32::exp` (tested); inputs under −87 give about 10⁻³⁸ rather than less, which a
/// softmax (its maximum subtracted, so every input ≤ 0) cannot tell from 0 next to the 1 of its
/// maximum.
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5 · 2²³: adding it rounds to an integer (to nearest), held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let power = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // ln 2 in two parts, so that n · ln 2 is exact enough for the reduction.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let polynomial =
        (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
            + 0.5)
            * r
            * r
            + r
            + 1.0;
    polynomial * f32::from_bits(((power + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against `f32::exp` over the whole range a softmax feeds it, and where its reduction
    /// changes n.
    #[test]
    fn exp_is_within_two_units_in_the_last_place() {
        let steps = 2_000_000;
        let mut worst = 0f32;
        for i in 0..=steps {
            let x = -87.0 + 175.0 * i as f32 / steps as f32;
            let (ours, exact) = (exp(x), x.exp());
            let ulp = f32::from_bits(exact.to_bits() + 1) - exact;
            worst = worst.max((ours - exact).abs() / ulp);
        }
        assert!(worst <= 2.0, "{worst} units in the last place");
        assert_eq!(exp(0.0), 1.0);
    }
}
