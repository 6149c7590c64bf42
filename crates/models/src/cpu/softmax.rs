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
        let mut p: Vec<f32> = shifted.iter().map(|s| s.exp()).collect();
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
