//! The organs around the gland that need more than an ellipsoid: the body outline, the rectum
//! (with an endorectal coil's balloon), the levator ani's funnel and the bones with their
//! cortex.

use std::f32::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::anatomy::Structure;
use super::shapes::{Blob, Field, Tube, V3, norm, sub};

/// The body outline: a superellipse (exponent 2.5) in every axial plane.
pub struct Body {
    pub centre: [f32; 2],
    pub half: [f32; 2],
}

impl Body {
    /// |d|^2.5 without `powf`, which would dominate the cost of every sample.
    fn power(d: f32) -> f32 {
        let d = d.abs();
        d * d * d.sqrt()
    }

    /// Approximate depth below the skin in mm (negative outside): first order in the
    /// superellipse's level, exact on the surface.
    pub fn depth(&self, q: V3) -> f32 {
        let level =
            Self::power((q[0] - self.centre[0]) / self.half[0]) + Self::power((q[1] - self.centre[1]) / self.half[1]);
        (1.0 - level) / 2.5 * self.half[1]
    }

    pub fn front_back(&self, q: V3) -> (f32, f32) {
        let rest = (1.0 - Self::power(((q[0] - self.centre[0]) / self.half[0]).min(1.0))).max(0.0);
        let reach = self.half[1] * rest.powf(0.4);
        let front = self.centre[1] + reach - q[1];
        let back = q[1] - (self.centre[1] - reach);
        (front.max(0.0), back.max(0.0))
    }
}

/// The rectum: a tube along z behind the gland, curving back above it, collapsed into the
/// anal canal below the apex; optionally an endorectal coil's balloon at the gland's level.
pub struct Rectum {
    x: f32,
    y: f32,
    radius: f32,
    base: f32,
    apex: f32,
    /// z range of the balloon.
    balloon: Option<(f32, f32)>,
    /// Supine: gas rises anteriorly above this level (relative −1…1 front to back), fluid
    /// settles posteriorly below `fluid`.
    gas: f32,
    fluid: f32,
    /// Phase of the folds along z.
    fold: f32,
}

impl Rectum {
    const WALL: f32 = 3.0;

    fn centre_y(&self, z: f32) -> f32 {
        self.y - 0.35 * (z - self.base).max(0.0)
    }

    fn radius_at(&self, z: f32) -> f32 {
        if let Some((lo, hi)) = self.balloon.filter(|(lo, hi)| (*lo..=*hi).contains(&z)) {
            // An inflated balloon: round at both ends.
            let t = (2.0 * z - lo - hi) / (hi - lo);
            return self.radius * (1.0 - t.powi(4)).sqrt().max(0.65);
        }
        // Collapsing into the anal canal below the apex.
        let canal = ((self.apex - 5.0 - z) / 15.0).clamp(0.0, 1.0);
        let lumen = if self.balloon.is_some() { self.radius * 0.65 } else { self.radius };
        // Folds and uneven filling along its length.
        lumen * (1.0 - 0.6 * canal) * (1.0 + 0.15 * (z / 11.0 + self.fold).sin())
    }

    pub fn at(&self, q: V3, contents: &Field) -> Option<Structure> {
        let radius = self.radius_at(q[2]);
        let (dx, dy) = (q[0] - self.x, q[1] - self.centre_y(q[2]));
        if dx.abs() > radius || dy.abs() > radius {
            return None;
        }
        let front = dy / (0.72 * radius);
        let rho = ((dx / radius).powi(2) + front.powi(2)).sqrt();
        if rho >= 1.0 {
            return None;
        }
        let depth = (1.0 - rho) * 0.72 * radius;
        let balloon = self.balloon.is_some_and(|(lo, hi)| (lo..=hi).contains(&q[2]));
        if depth < if balloon { 2.0 } else { Self::WALL } {
            return Some(Structure::RectalWall);
        }
        if balloon {
            return Some(Structure::EndorectalBalloon);
        }
        if q[2] < self.apex - 12.0 {
            // The anal canal: closed, all wall.
            return Some(Structure::RectalWall);
        }
        Some(if front > self.gas {
            Structure::RectalGas
        } else if front < self.fluid {
            Structure::RectalFluid
        } else if contents.at(q) > 1.1 {
            Structure::RectalGas
        } else {
            Structure::RectalContent
        })
    }

    pub fn balloon_distance(&self, q: V3) -> Option<f32> {
        let (lo, hi) = self.balloon?;
        let dz = (lo - q[2]).max(q[2] - hi).max(0.0);
        let dx = q[0] - self.x;
        let dy = (q[1] - self.centre_y(q[2].clamp(lo, hi))) / 0.72;
        let radial = ((dx * dx + dy * dy).sqrt() - self.radius).max(0.0);
        Some((radial * radial + dz * dz).sqrt())
    }
}

/// The levator ani: a funnel-shaped muscular sling around the gland's lower half and the
/// rectum, open anteriorly, narrowing inferiorly.
pub struct Levator {
    pub y: f32,
    pub rx: f32,
    pub ry: f32,
    pub low: f32,
    pub high: f32,
}

impl Levator {
    const THICKNESS: f32 = 5.0;

    pub fn contains(&self, q: V3) -> bool {
        if q[2] < self.low || q[2] > self.high {
            return false;
        }
        let s = 1.0 + 0.012 * q[2];
        let (rx, ry) = (self.rx * s, self.ry * s);
        let fy = (q[1] - self.y) / ry;
        if fy > 0.45 {
            return false;
        }
        let rho = ((q[0] / rx).powi(2) + fy * fy).sqrt();
        rho < 1.0 && rho > 1.0 - Self::THICKNESS / rx.min(ry)
    }
}

/// A bone: cortex 2 mm thick around marrow.
pub enum Bone {
    Body(Blob),
    Tube(Tube),
    /// The cup of the hip joint: a shell around the femoral head on its medial, upper side.
    Acetabulum {
        centre: V3,
        radius: f32,
        side: f32,
    },
}

impl Bone {
    const CORTEX: f32 = 2.0;

    pub fn at(&self, q: V3, marrow: Structure) -> Option<Structure> {
        let depth = match self {
            Bone::Body(b) => b.depth(q)?,
            Bone::Tube(t) => t.depth(q)?,
            Bone::Acetabulum { centre, radius, side } => {
                let d = sub(q, *centre);
                if side * d[0] > 6.0 || d[2] < -12.0 {
                    return None;
                }
                let r = norm(d);
                if r < radius + 1.5 {
                    return (r > *radius).then_some(Structure::Cartilage);
                }
                // A shell 8.5 mm thick, cortex on both faces.
                let depth = (r - radius - 1.5).min(radius + 10.0 - r);
                if depth <= 0.0 {
                    return None;
                }
                depth * 2.0
            }
        };
        if depth <= 0.0 {
            None
        } else if marrow == Structure::Cartilage || depth >= Self::CORTEX {
            Some(marrow)
        } else {
            Some(Structure::CorticalBone)
        }
    }
}

impl Rectum {
    /// Behind the gland (half depth `b`), its front wall 1 mm (balloon) to 6 mm behind the
    /// gland's posterior surface.
    pub fn new(rng: &mut ChaCha8Rng, endorectal_coil: bool, b: f32, base: f32, apex: f32) -> Self {
        let radius = if endorectal_coil { rng.random_range(20.0..26.0) } else { rng.random_range(12.0..20.0) };
        Self {
            x: rng.random_range(-4.0..4.0),
            y: -b - if endorectal_coil { 1.0 } else { rng.random_range(3.0..6.0) } - 0.72 * radius,
            radius,
            base,
            apex,
            balloon: endorectal_coil.then_some((apex - 12.0, base + 12.0)),
            gas: rng.random_range(0.1..1.2),
            fluid: rng.random_range(-1.3..-0.5),
            fold: rng.random_range(0.0..2.0 * PI),
        }
    }
}
