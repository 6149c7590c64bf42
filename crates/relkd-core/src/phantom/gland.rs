//! The prostate: a chestnut-shaped organ from a pointed apex to a blunt base, tilted, with
//! its zones (peripheral zone posterior-lateral, the central gland growing with the gland's
//! volume, BPH nodules, the anterior fibromuscular stroma), a thin capsule and the venous
//! plexus outside it. Its volume is drawn first and its shape scaled to it.

use std::f32::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::anatomy::{GlandExtent, Structure};
use super::shapes::{Field, Lumps, M3, V3, apply, gaussian, norm, rotation, sub};

/// The prostate with its zones, capsule and venous plexus.
pub struct Gland {
    /// Semi-axes at mid-gland: half width, half antero-posterior depth, half length (mm).
    pub a: f32,
    pub b: f32,
    pub h: f32,
    /// Long-axis tilt (base posterior), radians.
    tilt: f32,
    frame: M3,
    lumps: Lumps,
    /// Size of the central gland (transition and central zones) relative to the whole.
    central: f32,
    /// BPH nodules in the central gland: centre (gland frame, mm), radius, glandular or stromal.
    nodules: Vec<(V3, f32, bool)>,
}

/// Cross-section scale along the gland's axis, t = −1 at the apex to 1 at the base: widest
/// just above mid-gland, tapering to the apex and ending bluntly at the base.
fn profile(t: f32) -> f32 {
    if t < 0.0 { (1.0 - t * t).max(0.0).powf(0.55) } else { (1.0 - t.powi(4)).max(0.0).powf(0.3) * (1.0 + 0.1 * t) }
}

impl Gland {
    pub fn new(rng: &mut ChaCha8Rng) -> Self {
        // Log-normal volume around 38 cc, clipped to the range seen in screening cohorts.
        let volume_cc = (38.0 * (0.38 * gaussian(rng)).exp()).clamp(15.0, 80.0);
        let ratios =
            [1.25 * rng.random_range(0.9..1.1), 0.85 * rng.random_range(0.9..1.1), 1.1 * rng.random_range(0.9..1.1)];
        let tilt = rng.random_range(10.0f32..25.0).to_radians();
        let frame = rotation(rng.random_range(-6.0f32..6.0).to_radians(), -tilt);
        let lumps = Lumps::random(rng, 4, 0.06);
        let mut gland =
            Self { a: ratios[0], b: ratios[1], h: ratios[2], tilt, frame, lumps, central: 0.0, nodules: vec![] };
        // Scale the unit-sized shape to the drawn volume.
        let scale = (volume_cc * 1000.0 / gland.volume()).cbrt();
        gland.a *= scale;
        gland.b *= scale;
        gland.h *= scale;
        // The central gland's share of the volume (transition zone index) is about 0.3–0.5
        // in men of screening age with some BPH and grows with the gland: mean 0.40 ± 0.13 in
        // clinical BPH (Tarmono et al., Indonesian J Urol 2013), > 0.5 in severe BPH (Kaplan
        // et al., J Urol 1995). These radii give 0.28–0.44 on the default phantom (v3's gave
        // 0.20–0.33, a young man's gland).
        gland.central = 0.6 + 0.2 * ((volume_cc - 20.0) / 50.0).clamp(0.0, 1.0) + rng.random_range(-0.05..0.05);
        let count =
            ((volume_cc - 25.0) / 12.0).clamp(0.0, 5.0) as usize + usize::from(rng.random_range(0.0..1.0) < 0.3);
        for _ in 0..count {
            let t = rng.random_range(-0.3..0.7);
            let (rho, phi) = (rng.random_range(0.0..0.8) * gland.central, rng.random_range(0.0..2.0 * PI));
            let p = profile(t);
            let centre = [rho * phi.cos() * gland.a * p, (0.2 + rho * phi.sin()) * gland.b * p, t * gland.h];
            gland.nodules.push((centre, rng.random_range(3.0..8.0), rng.random_range(0.0..1.0) < 0.5));
        }
        gland
    }

    /// Volume in mm³ of the shape at its current size, by a 40³ midpoint sum.
    fn volume(&self) -> f32 {
        let n = 40;
        let half = [self.a * 1.4, self.b * 1.4, self.h * 1.05];
        let step = half.map(|v| 2.0 * v / n as f32);
        let mut inside = 0usize;
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    let l = [i, j, k].map(|c| c as f32 + 0.5);
                    let l = [0, 1, 2].map(|d| -half[d] + l[d] * step[d]);
                    inside += usize::from(self.radius(l).0 < 1.0);
                }
            }
        }
        inside as f32 * step[0] * step[1] * step[2]
    }

    pub fn extent(&self) -> GlandExtent {
        let along = self.h * self.tilt.cos() + self.b * self.tilt.sin();
        GlandExtent { inferior: along, superior: along }
    }

    /// The normalised radius in the gland's frame (< 1 inside), with the cross-section's
    /// (u, v) coordinates and its smaller semi-axis in mm.
    fn radius(&self, l: V3) -> (f32, f32, f32, f32) {
        let t = l[2] / self.h;
        let p = profile(t);
        if p <= 0.0 {
            return (f32::INFINITY, 0.0, 0.0, 0.0);
        }
        let (ea, eb) = (self.a * p, self.b * p);
        let v = l[1] / eb;
        // Narrower anteriorly, flat posteriorly (against the rectum): a chestnut.
        let u = l[0] / (ea * (1.0 - 0.2 * v.clamp(-1.0, 1.0)));
        let r = if v < 0.0 { (u.abs().powi(3) + (-v).powi(3)).cbrt() } else { (u * u + v * v).sqrt() };
        let n = [u, v, t];
        let len = norm(n).max(1e-6);
        (r / (1.0 + self.lumps.at(n.map(|c| c / len))), u, v, ea.min(eb))
    }

    pub fn at(&self, q: V3, contents: &Field) -> Option<Structure> {
        let reach = self.a.max(self.b).max(self.h) * 1.3;
        if q.iter().any(|c| c.abs() > reach) {
            return None;
        }
        let l = apply(&self.frame, q);
        let (r, u, v, small) = self.radius(l);
        if r >= 1.0 {
            let outside = (r - 1.0) * small;
            return if outside < 0.9 {
                Some(Structure::Capsule)
            } else if outside < 5.0 && v > -0.3 && contents.at([q[0], q[1], q[2] + 400.0]) > 0.35 {
                Some(Structure::VenousPlexus)
            } else {
                None
            };
        }
        let t = l[2] / self.h;
        // The central gland is absent at the apex and grows towards the base.
        let central = self.central * ((t + 0.75) / 0.65).clamp(0.0, 1.0);
        let in_central = central > 0.0 && (u / central).powi(2) + ((v - 0.2) / central).powi(2) < 1.0;
        if in_central || (t > 0.5 && u.abs() < 0.45 && v < 0.2) {
            for (centre, radius, glandular) in &self.nodules {
                if norm(sub(l, *centre)) < *radius {
                    return Some(if *glandular { Structure::GlandularNodule } else { Structure::StromalNodule });
                }
            }
            return Some(Structure::TransitionZone);
        }
        // The fibromuscular stroma is a midline apron over the front of the gland; lateral to it
        // the peripheral zone's anterior horns reach forward (McNeal's zonal anatomy; the
        // PI-RADS v2.1 sector map puts AS at the midline only).
        Some(if v > 0.45 && u.abs() < 0.4 { Structure::AnteriorStroma } else { Structure::PeripheralZone })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn gland_volumes_follow_a_screening_population() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut volumes: Vec<f32> = (0..300).map(|_| Gland::new(&mut rng).volume() / 1000.0).collect();
        volumes.sort_by(f32::total_cmp);
        let median = volumes[150];
        assert!((33.0..=42.0).contains(&median), "median {median}");
        assert!(volumes[0] >= 14.5 && volumes[299] <= 81.0, "{} … {}", volumes[0], volumes[299]);
        assert!(volumes[10] < 22.0 && volumes[289] > 60.0, "{} … {}", volumes[10], volumes[289]);
    }

    #[test]
    fn the_volume_estimate_matches_a_fine_voxel_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let g = Gland::new(&mut rng);
        // Count 1 mm³ voxels in the gland's frame.
        let mut inside = 0;
        let reach = (g.a.max(g.b).max(g.h) * 1.3) as i32;
        for z in -reach..=reach {
            for y in -reach..=reach {
                for x in -reach..=reach {
                    inside += usize::from(g.radius([x as f32, y as f32, z as f32]).0 < 1.0);
                }
            }
        }
        let (cc, drawn) = (inside as f32 / 1000.0, g.volume() / 1000.0);
        assert!((cc / drawn - 1.0).abs() < 0.03, "{cc} cc against {drawn} drawn");
    }
}
