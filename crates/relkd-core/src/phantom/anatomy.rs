//! The male pelvis around the prostate, defined once in 3D at true scale and sampled at any
//! point: the acquisition (`render.rs`) never draws slice by slice, it asks [`Anatomy::at`].
//!
//! Coordinates are the patient's, in millimetres, with the gland's centre at the origin:
//! x towards the patient's right, y anterior, z superior (RAS, as NIfTI's world). Typical
//! adult dimensions (rounded from anatomy atlases and prostate MRI series):
//! - body outline 300–380 mm wide and 200–260 mm antero-posterior at the level of the gland;
//! - gland 15–80 cc, median near 38 cc (men of screening age), about 1.25 : 0.85 : 1.1 for
//!   width : antero-posterior : length, its long axis tilted 10–25° (apex anterior-inferior);
//! - pubic symphysis 14–20 mm anterior to the gland, centred at its lower half;
//! - femoral heads 22–26 mm in radius, 85–98 mm lateral, at the level of the gland's base;
//! - rectum directly posterior, bladder above the base, seminal vesicles posterior-superior.
//!
//! Every case draws its own sizes, positions, small rotations, bladder filling and rectal
//! content; organ surfaces are ellipsoids and tubes pushed in and out by smooth random bumps.

use std::f32::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::shapes::{Blob, Field, Lumps, M3, Tube, V3, apply, norm, rotation, sub};

/// What a point of the phantom is made of. The codes are those of the `--tissues` volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Structure {
    Air = 0,
    Skin,
    SubcutaneousFat,
    PelvicFat,
    Gluteus,
    ThighMuscle,
    Iliopsoas,
    RectusAbdominis,
    ObturatorInternus,
    LevatorAni,
    CorticalBone,
    PubicBone,
    PelvicBone,
    FemoralHead,
    Coccyx,
    Cartilage,
    Bladder,
    BladderWall,
    RectalWall,
    RectalContent,
    RectalGas,
    RectalFluid,
    EndorectalBalloon,
    SeminalVesicle,
    PeripheralZone,
    TransitionZone,
    GlandularNodule,
    StromalNodule,
    AnteriorStroma,
    Capsule,
    VenousPlexus,
}

impl Structure {
    pub const ALL: [Structure; 31] = [
        Self::Air,
        Self::Skin,
        Self::SubcutaneousFat,
        Self::PelvicFat,
        Self::Gluteus,
        Self::ThighMuscle,
        Self::Iliopsoas,
        Self::RectusAbdominis,
        Self::ObturatorInternus,
        Self::LevatorAni,
        Self::CorticalBone,
        Self::PubicBone,
        Self::PelvicBone,
        Self::FemoralHead,
        Self::Coccyx,
        Self::Cartilage,
        Self::Bladder,
        Self::BladderWall,
        Self::RectalWall,
        Self::RectalContent,
        Self::RectalGas,
        Self::RectalFluid,
        Self::EndorectalBalloon,
        Self::SeminalVesicle,
        Self::PeripheralZone,
        Self::TransitionZone,
        Self::GlandularNodule,
        Self::StromalNodule,
        Self::AnteriorStroma,
        Self::Capsule,
        Self::VenousPlexus,
    ];

    /// The structure with this `--tissues` code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }

    /// Part of the prostate mask (the whole gland: peripheral zone ∪ central gland).
    pub fn is_gland(self) -> bool {
        matches!(
            self,
            Self::PeripheralZone
                | Self::TransitionZone
                | Self::GlandularNodule
                | Self::StromalNodule
                | Self::AnteriorStroma
        )
    }

    /// Skeletal muscle, whatever its name.
    pub fn is_muscle(self) -> bool {
        matches!(
            self,
            Self::Gluteus
                | Self::ThighMuscle
                | Self::Iliopsoas
                | Self::RectusAbdominis
                | Self::ObturatorInternus
                | Self::LevatorAni
        )
    }

    pub fn is_fat(self) -> bool {
        matches!(self, Self::SubcutaneousFat | Self::PelvicFat)
    }
}

/// Half-extent of the stack the anatomy must be covered by, below and above the gland centre.
#[derive(Debug, Clone, Copy)]
pub struct GlandExtent {
    pub inferior: f32,
    pub superior: f32,
}

/// One man's pelvis.
pub struct Anatomy {
    /// Patient positioning: a small rotation of everything about the gland's centre.
    pose: M3,
    gland: Gland,
    body: Body,
    bladder: Blob,
    bladder_wall: f32,
    vesicles: [Tube; 2],
    rectum: Rectum,
    levator: Levator,
    bones: Vec<(Bone, Structure)>,
    muscles: Vec<(Blob, Structure)>,
    /// Lumpy contents (rectal gas bubbles, venous plexus) come from this field.
    contents: Field,
}

impl Anatomy {
    /// A new pelvis; `endorectal_coil` puts an inflated balloon in the rectum at the gland.
    /// `box_mm` bounds (around the gland's centre) where the anatomy will be sampled.
    pub fn new(rng: &mut ChaCha8Rng, endorectal_coil: bool, box_mm: (V3, V3)) -> Self {
        let pose = rotation(rng.random_range(-5.0f32..5.0).to_radians(), rng.random_range(-4.0f32..4.0).to_radians());
        let gland = Gland::new(rng);
        let (a, b) = (gland.a, gland.b);
        let ext = gland.extent();
        let (base, apex) = (ext.superior, -ext.inferior);

        let body = Body {
            centre: [rng.random_range(-5.0..5.0), -rng.random_range(25.0..45.0)],
            half: [rng.random_range(150.0..190.0), rng.random_range(100.0..130.0)],
        };

        let filling = rng.random_range(0.2..1.0);
        let axes = [30.0 + 25.0 * filling, 25.0 + 20.0 * filling, 18.0 + 22.0 * filling];
        let bladder_centre = [
            rng.random_range(-4.0..4.0),
            rng.random_range(0.0..10.0),
            base - 3.0 + rng.random_range(-2.0..3.0) + axes[2],
        ];
        let bladder =
            Blob::new(bladder_centre, axes, rotation(rng.random_range(-0.1..0.1), 0.0), Lumps::random(rng, 3, 0.04));
        let bladder_wall = 5.0 - 2.5 * filling;

        let vesicle = |side: f32, rng: &mut ChaCha8Rng| {
            let start = [side * 5.0, -0.55 * b, base - 6.0];
            let end = [
                side * rng.random_range(22.0..32.0),
                -0.55 * b - rng.random_range(4.0..10.0),
                base + rng.random_range(8.0..16.0),
            ];
            Tube::new(start, end, 5.0, rng.random_range(6.0..9.0))
        };
        let vesicles = [vesicle(-1.0, rng), vesicle(1.0, rng)];

        let radius = if endorectal_coil { rng.random_range(20.0..26.0) } else { rng.random_range(12.0..20.0) };
        let rectum = Rectum {
            x: rng.random_range(-4.0..4.0),
            // Its front wall 1 mm (balloon) to 5 mm behind the gland's posterior surface.
            y: -b - if endorectal_coil { 1.0 } else { rng.random_range(3.0..6.0) } - 0.72 * radius,
            radius,
            base,
            apex,
            balloon: endorectal_coil.then_some((apex - 12.0, base + 12.0)),
            gas: rng.random_range(0.1..1.2),
            fluid: rng.random_range(-1.3..-0.5),
            fold: rng.random_range(0.0..2.0 * PI),
        };
        let levator = Levator {
            y: -b - 10.0,
            rx: a + rng.random_range(12.0..16.0),
            ry: b + rng.random_range(20.0..28.0),
            low: apex - 25.0,
            high: 0.3 * ext.superior,
        };

        let xf = rng.random_range(85.0..98.0);
        let (yf, zf, rf) =
            (rng.random_range(5.0..15.0), base + rng.random_range(-8.0..8.0), rng.random_range(22.0..26.0));
        let gap = rng.random_range(14.0..20.0);
        let (yp, zp) = (b + gap + 11.0, rng.random_range(-12.0..0.0));
        let mut bones = vec![(Bone::Body(Blob::ellipsoid([0.0, yp, zp], [11.5, 10.0, 18.0])), Structure::Cartilage)];
        let mut muscles = Vec::new();
        for side in [-1.0f32, 1.0] {
            let s = |x: f32| side * x;
            bones.push((Bone::Body(Blob::ellipsoid([s(xf), yf, zf], [rf; 3])), Structure::FemoralHead));
            bones.push((
                Bone::Tube(Tube::new([s(xf), yf, zf], [s(xf + 38.0), yf - 5.0, zf - 28.0], 15.0, 17.0)),
                Structure::FemoralHead,
            ));
            bones.push((Bone::Acetabulum { centre: [s(xf), yf, zf], radius: rf, side }, Structure::PelvicBone));
            bones.push((Bone::Body(Blob::ellipsoid([s(9.5), yp, zp], [8.0, 11.0, 20.0])), Structure::PubicBone));
            let superior_ramus = Tube::new([s(12.0), yp, zp + 14.0], [s(xf - 12.0), yf + 8.0, zf + 4.0], 9.0, 11.0);
            bones.push((Bone::Tube(superior_ramus), Structure::PelvicBone));
            let inferior_ramus = Tube::new([s(9.0), yp - 6.0, zp - 14.0], [s(xf - 30.0), -25.0, zf - 48.0], 7.0, 9.0);
            bones.push((Bone::Tube(inferior_ramus), Structure::PelvicBone));
            let ischium = Tube::new([s(xf - 22.0), -8.0, zf - 10.0], [s(xf - 30.0), -28.0, zf - 60.0], 14.0, 12.0);
            bones.push((Bone::Tube(ischium), Structure::PelvicBone));

            let lumpy = |rng: &mut ChaCha8Rng| Lumps::random(rng, 3, 0.06);
            let muscle = |centre: V3, axes: V3, yaw: f32, rng: &mut ChaCha8Rng| {
                Blob::new(centre, axes, rotation(yaw, 0.0), lumpy(rng))
            };
            let y_back = body.centre[1] - 0.55 * body.half[1];
            muscles.push((muscle([s(72.0), y_back, 0.0], [55.0, 50.0, 140.0], side * 0.5, rng), Structure::Gluteus));
            muscles
                .push((muscle([s(xf + 5.0), 30.0, zf - 75.0], [60.0, 55.0, 70.0], 0.0, rng), Structure::ThighMuscle));
            muscles.push((muscle([s(xf - 25.0), 35.0, zf + 35.0], [22.0, 25.0, 60.0], 0.0, rng), Structure::Iliopsoas));
            let front = body.centre[1] + body.half[1] - 18.0;
            muscles
                .push((muscle([s(35.0), front, zf + 70.0], [30.0, 9.0, 70.0], 0.0, rng), Structure::RectusAbdominis));
            let x_obturator = a + rng.random_range(30.0..38.0);
            muscles.push((
                muscle([s(x_obturator), -5.0, -5.0], [9.0, 45.0, 40.0], 0.0, rng),
                Structure::ObturatorInternus,
            ));
        }
        bones.push((
            Bone::Tube(Tube::new([0.0, -b - 48.0, base - 15.0], [0.0, -b - 80.0, base + 55.0], 8.0, 16.0)),
            Structure::Coccyx,
        ));

        let contents = Field::new(rng, box_mm.0, box_mm.1, 5.0);
        Self { pose, gland, body, bladder, bladder_wall, vesicles, rectum, levator, bones, muscles, contents }
    }

    /// How far below the gland centre the apex reaches and how far above it the base does.
    pub fn gland_extent(&self) -> GlandExtent {
        self.gland.extent()
    }

    /// The structure at `p` (patient millimetres around the gland's centre, before the pose).
    pub fn at(&self, p: V3) -> Structure {
        let q = apply(&self.pose, p);
        let skin_depth = self.body.depth(q);
        if skin_depth < 0.0 {
            return Structure::Air;
        }
        if skin_depth < 2.0 {
            return Structure::Skin;
        }
        if let Some(s) = self.gland.at(q, &self.contents) {
            return s;
        }
        if self.vesicles.iter().any(|v| v.depth(q).is_some_and(|d| d > 0.0)) {
            return Structure::SeminalVesicle;
        }
        if let Some(d) = self.bladder.depth(q).filter(|&d| d > 0.0) {
            return if d < self.bladder_wall { Structure::BladderWall } else { Structure::Bladder };
        }
        if let Some(s) = self.rectum.at(q, &self.contents) {
            return s;
        }
        for (bone, marrow) in &self.bones {
            if let Some(s) = bone.at(q, *marrow) {
                return s;
            }
        }
        if self.levator.contains(q) {
            return Structure::LevatorAni;
        }
        for (muscle, name) in &self.muscles {
            if muscle.depth(q).is_some_and(|d| d > 0.0) {
                return *name;
            }
        }
        if skin_depth < 25.0 { Structure::SubcutaneousFat } else { Structure::PelvicFat }
    }

    /// Distance in mm from `p` to the endorectal coil's balloon (none: `None`).
    pub fn coil_distance(&self, p: V3) -> Option<f32> {
        self.rectum.balloon_distance(apply(&self.pose, p))
    }

    /// Distances in mm from `p` to the anterior and the posterior skin, along y.
    pub fn skin_distances(&self, p: V3) -> (f32, f32) {
        self.body.front_back(apply(&self.pose, p))
    }
}

/// The body outline: a superellipse (exponent 2.5) in every axial plane.
struct Body {
    centre: [f32; 2],
    half: [f32; 2],
}

impl Body {
    /// |d|^2.5 without `powf`, which would dominate the cost of every sample.
    fn power(d: f32) -> f32 {
        let d = d.abs();
        d * d * d.sqrt()
    }

    /// Approximate depth below the skin in mm (negative outside): first order in the
    /// superellipse's level, exact on the surface.
    fn depth(&self, q: V3) -> f32 {
        let level =
            Self::power((q[0] - self.centre[0]) / self.half[0]) + Self::power((q[1] - self.centre[1]) / self.half[1]);
        (1.0 - level) / 2.5 * self.half[1]
    }

    fn front_back(&self, q: V3) -> (f32, f32) {
        let rest = (1.0 - Self::power(((q[0] - self.centre[0]) / self.half[0]).min(1.0))).max(0.0);
        let reach = self.half[1] * rest.powf(0.4);
        let front = self.centre[1] + reach - q[1];
        let back = q[1] - (self.centre[1] - reach);
        (front.max(0.0), back.max(0.0))
    }
}

/// The prostate with its zones, capsule and venous plexus.
struct Gland {
    /// Semi-axes at mid-gland: half width, half antero-posterior depth, half length (mm).
    a: f32,
    b: f32,
    h: f32,
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
    fn new(rng: &mut ChaCha8Rng) -> Self {
        // Log-normal volume around 38 cc, clipped to the range seen in screening cohorts.
        let volume_cc = (38.0 * (0.38 * super::shapes::gaussian(rng)).exp()).clamp(15.0, 80.0);
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
        gland.central = 0.45 + 0.25 * ((volume_cc - 20.0) / 50.0).clamp(0.0, 1.0) + rng.random_range(-0.05..0.05);
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

    fn extent(&self) -> GlandExtent {
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

    fn at(&self, q: V3, contents: &Field) -> Option<Structure> {
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
        Some(if v > 0.45 { Structure::AnteriorStroma } else { Structure::PeripheralZone })
    }
}

/// The rectum: a tube along z behind the gland, curving back above it, collapsed into the
/// anal canal below the apex; optionally an endorectal coil's balloon at the gland's level.
struct Rectum {
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

    fn at(&self, q: V3, contents: &Field) -> Option<Structure> {
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

    fn balloon_distance(&self, q: V3) -> Option<f32> {
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
struct Levator {
    y: f32,
    rx: f32,
    ry: f32,
    low: f32,
    high: f32,
}

impl Levator {
    const THICKNESS: f32 = 5.0;

    fn contains(&self, q: V3) -> bool {
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
enum Bone {
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

    fn at(&self, q: V3, marrow: Structure) -> Option<Structure> {
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
