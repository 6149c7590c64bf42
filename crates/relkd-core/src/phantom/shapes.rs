//! The few solid shapes the phantom's anatomy is built from, in millimetres: lumpy ellipsoids
//! (organs, muscles, bone bodies), tubes with a varying radius (bone rami, vesicles), and a
//! smooth random field for textures and organ contents. Each shape rejects far points with a
//! bounding box first: most samples lie far from most shapes, and that keeps generation fast.

use std::f32::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub type V3 = [f32; 3];

pub fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub fn dot(a: V3, b: V3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub fn norm(a: V3) -> f32 {
    dot(a, a).sqrt()
}

/// A rotation matrix, rows first.
pub type M3 = [V3; 3];

/// The rotation by `yaw` about z (superior), then `pitch` about x (patient right), radians.
pub fn rotation(yaw: f32, pitch: f32) -> M3 {
    let (sy, cy) = yaw.sin_cos();
    let (sp, cp) = pitch.sin_cos();
    // R = Rx(pitch) · Rz(yaw)
    [[cy, -sy, 0.0], [cp * sy, cp * cy, -sp], [sp * sy, sp * cy, cp]]
}

pub fn apply(m: &M3, v: V3) -> V3 {
    [dot(m[0], v), dot(m[1], v), dot(m[2], v)]
}

/// Smooth radial bumps on a unit sphere: Σ amp · sin(freq · (dir · n) + phase).
#[derive(Debug, Clone)]
pub struct Lumps(Vec<(V3, f32, f32, f32)>);

impl Lumps {
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// `count` bumps of relative height up to `amplitude`.
    pub fn random(rng: &mut ChaCha8Rng, count: usize, amplitude: f32) -> Self {
        Self(
            (0..count)
                .map(|_| {
                    let dir = unit(rng);
                    (
                        dir,
                        rng.random_range(1.5..4.0),
                        rng.random_range(0.0..2.0 * PI),
                        amplitude * rng.random_range(0.4..1.0),
                    )
                })
                .collect(),
        )
    }

    /// The relative change of radius in direction `n` (unit).
    pub fn at(&self, n: V3) -> f32 {
        self.0.iter().map(|(dir, freq, phase, amp)| amp * (freq * dot(*dir, n) + phase).sin()).sum()
    }
}

fn unit(rng: &mut ChaCha8Rng) -> V3 {
    let z: f32 = rng.random_range(-1.0..1.0);
    let phi = rng.random_range(0.0..2.0 * PI);
    let s = (1.0 - z * z).sqrt();
    [s * phi.cos(), s * phi.sin(), z]
}

/// An ellipsoid with semi-axes `axes` (mm) in its own rotated frame, its surface pushed in and
/// out by [`Lumps`].
#[derive(Debug, Clone)]
pub struct Blob {
    pub centre: V3,
    rotation: M3,
    axes: V3,
    lumps: Lumps,
    bound: f32,
}

impl Blob {
    pub fn new(centre: V3, axes: V3, rotation: M3, lumps: Lumps) -> Self {
        let bound = axes.iter().copied().fold(0.0, f32::max) * 1.4;
        Self { centre, rotation, axes, lumps, bound }
    }

    /// A plain axis-aligned ellipsoid.
    pub fn ellipsoid(centre: V3, axes: V3) -> Self {
        Self::new(centre, axes, rotation(0.0, 0.0), Lumps::none())
    }

    /// Depth below the surface in mm (positive inside, approximate away from the surface), or
    /// `None` well outside.
    pub fn depth(&self, p: V3) -> Option<f32> {
        let d = sub(p, self.centre);
        if d.iter().any(|v| v.abs() > self.bound) {
            return None;
        }
        let l = apply(&self.rotation, d);
        let q = [l[0] / self.axes[0], l[1] / self.axes[1], l[2] / self.axes[2]];
        let rho = norm(q);
        if rho > 1.3 {
            return None;
        }
        let n = if rho > 1e-6 { q.map(|v| v / rho) } else { [0.0, 0.0, 1.0] };
        let rho = rho / (1.0 + self.lumps.at(n));
        // Scale by the semi-axis in this direction, so shells keep their thickness in mm.
        let radius = 1.0 / (n[0] * n[0] / self.axes[0] + n[1] * n[1] / self.axes[1] + n[2] * n[2] / self.axes[2]);
        Some((1.0 - rho) * radius)
    }
}

/// A segment `a`→`b` with a radius varying linearly from `r0` to `r1` (mm).
#[derive(Debug, Clone)]
pub struct Tube {
    a: V3,
    b: V3,
    r0: f32,
    r1: f32,
    lo: V3,
    hi: V3,
}

impl Tube {
    pub fn new(a: V3, b: V3, r0: f32, r1: f32) -> Self {
        let r = r0.max(r1);
        let lo = [0, 1, 2].map(|k| a[k].min(b[k]) - r);
        let hi = [0, 1, 2].map(|k| a[k].max(b[k]) + r);
        Self { a, b, r0, r1, lo, hi }
    }

    /// Depth below the surface in mm (positive inside), or `None` outside the bounding box.
    pub fn depth(&self, p: V3) -> Option<f32> {
        if (0..3).any(|k| p[k] < self.lo[k] || p[k] > self.hi[k]) {
            return None;
        }
        let ab = sub(self.b, self.a);
        let t = (dot(sub(p, self.a), ab) / dot(ab, ab)).clamp(0.0, 1.0);
        let on = [0, 1, 2].map(|k| self.a[k] + t * ab[k]);
        Some(self.r0 + t * (self.r1 - self.r0) - norm(sub(p, on)))
    }
}

/// Spatially correlated Gaussian noise: standard normal values on a lattice of spacing `step`
/// mm over a box, trilinearly interpolated (zero mean, roughly unit variance at the nodes).
pub struct Field {
    origin: V3,
    step: f32,
    dims: [usize; 3],
    values: Vec<f32>,
}

impl Field {
    pub fn new(rng: &mut ChaCha8Rng, lo: V3, hi: V3, step: f32) -> Self {
        let dims = [0, 1, 2].map(|k| ((hi[k] - lo[k]) / step).ceil() as usize + 2);
        let values = (0..dims[0] * dims[1] * dims[2]).map(|_| gaussian(rng)).collect();
        Self { origin: lo, step, dims, values }
    }

    pub fn at(&self, p: V3) -> f32 {
        let mut base = [0usize; 3];
        let mut frac = [0f32; 3];
        for k in 0..3 {
            let g = ((p[k] - self.origin[k]) / self.step).clamp(0.0, (self.dims[k] - 2) as f32);
            let i = (g.floor() as usize).min(self.dims[k] - 2);
            base[k] = i;
            frac[k] = g - i as f32;
        }
        let [nx, ny, _] = self.dims;
        let idx = |x: usize, y: usize, z: usize| self.values[x + nx * (y + ny * z)];
        let mut v = 0.0;
        for (dz, wz) in [(0, 1.0 - frac[2]), (1, frac[2])] {
            for (dy, wy) in [(0, 1.0 - frac[1]), (1, frac[1])] {
                for (dx, wx) in [(0, 1.0 - frac[0]), (1, frac[0])] {
                    v += wx * wy * wz * idx(base[0] + dx, base[1] + dy, base[2] + dz);
                }
            }
        }
        v
    }
}

/// Standard normal draw (Box–Muller).
pub fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ellipsoid_depth_is_the_distance_to_the_surface_along_each_axis() {
        let b = Blob::ellipsoid([10.0, 0.0, 0.0], [20.0, 10.0, 5.0]);
        // Along x the semi-axis is 20: 5 mm inside the surface at x = 10 + 15.
        assert!((b.depth([25.0, 0.0, 0.0]).unwrap() - 5.0).abs() < 1e-4);
        assert!((b.depth([10.0, 0.0, 4.0]).unwrap() - 1.0).abs() < 1e-4);
        assert!(b.depth([10.0, 11.0, 0.0]).unwrap() < 0.0);
        assert!(b.depth([100.0, 0.0, 0.0]).is_none());
    }

    #[test]
    fn tube_depth_tapers_along_the_segment() {
        let t = Tube::new([0.0; 3], [0.0, 0.0, 10.0], 2.0, 4.0);
        assert!((t.depth([0.0, 0.0, 5.0]).unwrap() - 3.0).abs() < 1e-5);
        assert!((t.depth([1.0, 0.0, 10.0]).unwrap() - 3.0).abs() < 1e-5);
        assert!(t.depth([0.0, 5.0, 5.0]).is_none());
    }

    #[test]
    fn rotation_turns_x_towards_y_by_the_yaw() {
        let m = rotation(PI / 2.0, 0.0);
        let v = apply(&m, [1.0, 0.0, 0.0]);
        assert!((v[0]).abs() < 1e-6 && (v[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn field_interpolates_between_its_nodes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let f = Field::new(&mut rng, [0.0; 3], [10.0; 3], 2.0);
        let (a, b) = (f.at([2.0, 2.0, 2.0]), f.at([4.0, 2.0, 2.0]));
        assert!((f.at([3.0, 2.0, 2.0]) - (a + b) / 2.0).abs() < 1e-5);
    }
}
