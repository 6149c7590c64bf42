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
        let mut max = logits[..plane].to_vec();
        for class in logits.chunks_exact(plane).skip(1) {
            for (m, &z) in max.iter_mut().zip(class) {
                *m = m.max(z);
            }
        }
        // Each class's z/T − max/T (the maximum is taken before the scaling, T > 0) into
        // `log_p`, its exponential into `p`; every loop a plain one over a plane, which the
        // compiler vectorises.
        let mut log_p = vec![0f32; logits.len()];
        let mut p = vec![0f32; logits.len()];
        let mut total = vec![0f32; plane];
        for ((class, shifted), e) in
            logits.chunks_exact(plane).zip(log_p.chunks_exact_mut(plane)).zip(p.chunks_exact_mut(plane))
        {
            for ((((s, e), t), &z), &m) in shifted.iter_mut().zip(e.iter_mut()).zip(&mut total).zip(class).zip(&max) {
                *s = (z - m) * scale;
                *e = exp(*s);
                *t += *e;
            }
        }
        let log_total: Vec<f32> = total.iter().map(|&t| ln(t)).collect();
        for (e, l) in p.chunks_exact_mut(plane).zip(log_p.chunks_exact_mut(plane)) {
            for (((e, l), &t), &lt) in e.iter_mut().zip(l.iter_mut()).zip(&total).zip(&log_total) {
                *e /= t;
                *l -= lt;
            }
        }
        Self { p, log_p }
    }
}

/// e^x for x ≤ 88, in plain arithmetic the compiler vectorises (the C library's `expf`, one call
/// a value, was most of these operations' time): x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by
/// Cephes' degree-7 polynomial, 2^n written into the exponent's bits. Within one unit in the last
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

/// ln x for a positive normal x (here the softmax's sum, at least 1), in plain arithmetic the
/// compiler vectorises: x = 2^e · m with m in [√½, √2), ln m by Cephes' degree-9 polynomial in
/// m − 1. Within one unit in the last place of `f32::ln` (tested).
#[inline]
pub(crate) fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    // m in [1, 2), then halved (and e raised) above √2, branch-free.
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let high = f32::from(u8::from(m > std::f32::consts::SQRT_2));
    let e = ((bits >> 23) & 0xff) as f32 - 127.0 + high;
    let f = m * (1.0 - 0.5 * high) - 1.0;
    let z = f * f;
    let polynomial =
        ((((((((7.037_683_6e-2 * f - 0.115_146_1) * f + 0.116_769_98) * f - 0.124_201_41) * f + 0.142_493_23) * f
            - 0.166_680_57)
            * f
            + 0.200_007_15)
            * f
            - 0.249_999_94)
            * f
            + 0.333_333_3)
            * f
            * z;
    // ln 2 in two parts, as in `exp`.
    f + (polynomial - 0.5 * z + e * -2.121_944_4e-4) + e * 0.693_359_4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against `f32::exp` over the whole range a softmax feeds it, and where its reduction
    /// changes n.
    #[test]
    fn exp_is_within_one_unit_in_the_last_place() {
        let steps = 2_000_000;
        let mut worst = 0f32;
        for i in 0..=steps {
            let x = -87.0 + 175.0 * i as f32 / steps as f32;
            let (ours, exact) = (exp(x), x.exp());
            let ulp = f32::from_bits(exact.to_bits() + 1) - exact;
            worst = worst.max((ours - exact).abs() / ulp);
        }
        assert!(worst <= 1.0, "{worst} units in the last place");
        assert_eq!(exp(0.0), 1.0);
    }

    /// Against `f32::ln` from 1/16 to 2²⁰ (a softmax's sums are at least 1).
    #[test]
    fn ln_is_within_one_unit_in_the_last_place() {
        let steps = 2_000_000;
        let mut worst = 0f32;
        for i in 0..=steps {
            let x = 2f32.powf(-4.0 + 24.0 * i as f32 / steps as f32);
            let (ours, exact) = (ln(x), x.ln());
            let ulp = f32::from_bits(exact.abs().to_bits() + 1) - exact.abs();
            worst = worst.max((ours - exact).abs() / ulp);
        }
        assert!(worst <= 1.0, "{worst} units in the last place");
        assert_eq!(ln(1.0), 0.0);
    }
}
