//! Resizing planes: bilinear for images and logits, nearest for masks, both with the half-pixel
//! convention (pixel centres at `i + 0.5`).

/// Source coordinate of destination index `i` under the half-pixel convention.
fn source_coord(i: usize, scale: f32) -> f32 {
    (i as f32 + 0.5) * scale - 0.5
}

/// Interpolation taps (lower index, upper index, weight of upper) per destination index,
/// clamping at the borders.
fn bilinear_taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|i| {
            let c = source_coord(i, scale).clamp(0.0, (src - 1) as f32);
            let lo = c.floor() as usize;
            let hi = (lo + 1).min(src - 1);
            (lo, hi, c - lo as f32)
        })
        .collect()
}

/// A bilinear resize from `h × w` to `out_h × out_w`, planned once for many planes.
///
/// Separable: each source row that some destination row reads is first interpolated along x
/// (`a + (b − a)·fx`), then each destination pixel between its two rows (`t + (u − t)·fy`).
/// These are the very operations, in the same order, of interpolating each destination pixel
/// from its four source pixels, so the values are the same bit for bit; the work falls from
/// three interpolations per destination pixel to one, plus one per pixel of the rows read.
#[derive(Debug, Clone)]
pub struct Bilinear {
    h: usize,
    w: usize,
    out_w: usize,
    rows: Vec<(usize, usize, f32)>,
    cols: Vec<(usize, usize, f32)>,
    /// The source rows read, in order; `slot[r]` is row r's place among them.
    read: Vec<usize>,
    slot: Vec<usize>,
}

impl Bilinear {
    pub fn new(h: usize, w: usize, out_h: usize, out_w: usize) -> Self {
        let rows = bilinear_taps(h, out_h);
        let mut needed = vec![false; h];
        for &(r0, r1, _) in &rows {
            needed[r0] = true;
            needed[r1] = true;
        }
        let read: Vec<usize> = (0..h).filter(|&r| needed[r]).collect();
        let mut slot = vec![usize::MAX; h];
        for (i, &r) in read.iter().enumerate() {
            slot[r] = i;
        }
        Self { h, w, out_w, rows, cols: bilinear_taps(w, out_w), read, slot }
    }

    pub fn out_len(&self) -> usize {
        self.rows.len() * self.out_w
    }

    /// The first pass: every source row read, interpolated along x, each value passed through
    /// `map` first (so a z-score applied on the way equals z-scoring the plane, then resizing).
    /// `across` ends up `[rows read, out_w]`.
    fn across(&self, src: &[f32], map: impl Fn(f32) -> f32, across: &mut Vec<f32>) {
        assert_eq!(src.len(), self.h * self.w, "plane size does not match h × w");
        across.clear();
        if self.w == self.out_w {
            // Every weight is 0: each value is its own pixel's (a + (b − a)·0 = a).
            for &r in &self.read {
                across.extend(src[r * self.w..][..self.w].iter().map(|&v| map(v)));
            }
            return;
        }
        for &r in &self.read {
            let a = &src[r * self.w..][..self.w];
            across.extend(self.cols.iter().map(|&(c0, c1, fx)| {
                let (v0, v1) = (map(a[c0]), map(a[c1]));
                v0 + (v1 - v0) * fx
            }));
        }
    }

    /// Destination row `i` from the first pass, written into `out` (`out_w` long).
    fn row_into(&self, across: &[f32], i: usize, out: &mut [f32]) {
        let (r0, r1, fy) = self.rows[i];
        let top = &across[self.slot[r0] * self.out_w..][..self.out_w];
        if fy == 0.0 {
            out.copy_from_slice(top);
            return;
        }
        let bottom = &across[self.slot[r1] * self.out_w..][..self.out_w];
        for ((o, &t), &u) in out.iter_mut().zip(top).zip(bottom) {
            *o = t + (u - t) * fy;
        }
    }

    /// Resizes one plane, each source value passed through `map` first.
    pub fn apply_mapped(&self, src: &[f32], map: impl Fn(f32) -> f32, out: &mut Vec<f32>) {
        let mut across = Vec::with_capacity(self.read.len() * self.out_w);
        self.across(src, map, &mut across);
        let start = out.len();
        out.resize(start + self.out_len(), 0.0);
        for (i, row) in out[start..].chunks_exact_mut(self.out_w).enumerate() {
            self.row_into(&across, i, row);
        }
    }

    /// Resizes `k` planes (`[k, h, w]`) and calls `pixels(row, values)` for each destination
    /// row with the planes' values on it (`values` is `[k, out_w]`).
    pub fn for_each_row(&self, planes: &[f32], k: usize, mut pixels: impl FnMut(usize, &[f32])) {
        let plane = self.h * self.w;
        let mut across = vec![Vec::new(); k];
        for (class, across) in across.iter_mut().enumerate() {
            self.across(&planes[class * plane..][..plane], |v| v, across);
        }
        let mut values = vec![0.0; k * self.out_w];
        for i in 0..self.rows.len() {
            for (class, across) in across.iter().enumerate() {
                self.row_into(across, i, &mut values[class * self.out_w..][..self.out_w]);
            }
            pixels(i, &values);
        }
    }
}

/// Bilinear resize of an `h × w` plane to `out_h × out_w`.
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane size does not match h × w");
    if (h, w) == (out_h, out_w) {
        return src.to_vec();
    }
    let mut out = Vec::with_capacity(out_h * out_w);
    Bilinear::new(h, w, out_h, out_w).apply_mapped(src, |v| v, &mut out);
    out
}

/// Nearest-neighbour resize (for masks): destination pixel i takes source floor((i+0.5)·scale).
pub fn resize_nearest<T: Copy>(src: &[T], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<T> {
    assert_eq!(src.len(), h * w, "plane size does not match h × w");
    let pick = |i: usize, s: usize, d: usize| (((i as f32 + 0.5) * s as f32 / d as f32) as usize).min(s - 1);
    let cols: Vec<usize> = (0..out_w).map(|i| pick(i, w, out_w)).collect();
    let mut out = Vec::with_capacity(out_h * out_w);
    for r in 0..out_h {
        let row = &src[pick(r, h, out_h) * w..][..w];
        out.extend(cols.iter().map(|&c| row[c]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_upsample_by_hand() {
        // 1×2 → 1×4, half-pixel: dst centres map to src x = -0.25, 0.25, 0.75, 1.25,
        // clamped to [0, 1]: values 0, 0.25·10, 0.75·10, 10.
        assert_eq!(resize_bilinear(&[0.0, 10.0], 1, 2, 1, 4), vec![0.0, 2.5, 7.5, 10.0]);
        // 2×2 → 1×1 averages the four pixels (source centre 0.5, 0.5).
        assert_eq!(resize_bilinear(&[0.0, 2.0, 4.0, 6.0], 2, 2, 1, 1), vec![3.0]);
        // Identity size is a copy.
        assert_eq!(resize_bilinear(&[1.0, 2.0], 1, 2, 1, 2), vec![1.0, 2.0]);
    }

    /// Each destination pixel from its four source pixels, as relkd computed it before the
    /// separable form: the separable resize must give the same values bit for bit.
    fn four_taps(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
        let (rows, cols) = (bilinear_taps(h, out_h), bilinear_taps(w, out_w));
        let mut out = Vec::new();
        for &(r0, r1, fy) in &rows {
            let (a, b) = (&src[r0 * w..(r0 + 1) * w], &src[r1 * w..(r1 + 1) * w]);
            for &(c0, c1, fx) in &cols {
                let top = a[c0] + (a[c1] - a[c0]) * fx;
                let bottom = b[c0] + (b[c1] - b[c0]) * fx;
                out.push(top + (bottom - top) * fy);
            }
        }
        out
    }

    #[test]
    fn separable_resize_equals_the_four_tap_form_bit_for_bit() {
        let src: Vec<f32> = (0..37 * 23).map(|i| ((i * 7919) % 1009) as f32 / 97.0 - 5.0).collect();
        for (out_h, out_w) in [(64, 64), (5, 9), (80, 11), (37, 23), (1, 1), (200, 150)] {
            let ours = resize_bilinear(&src, 37, 23, out_h, out_w);
            let theirs = four_taps(&src, 37, 23, out_h, out_w);
            assert_eq!(ours.len(), theirs.len());
            assert!(ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "{out_h}×{out_w}");
        }
        // Mapped on the way equals mapped first.
        let z = |v: f32| ((v as f64 - 0.3) * 1.7) as f32;
        let mapped: Vec<f32> = src.iter().map(|&v| z(v)).collect();
        let mut ours = Vec::new();
        Bilinear::new(37, 23, 16, 16).apply_mapped(&src, z, &mut ours);
        assert_eq!(ours, four_taps(&mapped, 37, 23, 16, 16));
        // Rows of k planes at once equal each plane resized alone.
        let plan = Bilinear::new(37, 23, 10, 7);
        let two: Vec<f32> = src.iter().chain(&mapped).copied().collect();
        let mut rows = vec![Vec::new(); 2];
        plan.for_each_row(&two, 2, |_, values| {
            rows[0].extend_from_slice(&values[..7]);
            rows[1].extend_from_slice(&values[7..]);
        });
        assert_eq!(rows[0], four_taps(&src, 37, 23, 10, 7));
        assert_eq!(rows[1], four_taps(&mapped, 37, 23, 10, 7));
    }

    #[test]
    fn nearest_resize_by_hand() {
        // 2×2 → 4×4 replicates each pixel into a 2×2 block.
        let up = resize_nearest(&[1u8, 2, 3, 4], 2, 2, 4, 4);
        assert_eq!(up, vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
        // 4 → 2 takes source pixels floor(0.5·2)=1 and floor(1.5·2)=3.
        assert_eq!(resize_nearest(&[10u8, 11, 12, 13], 1, 4, 1, 2), vec![11, 13]);
    }
}
