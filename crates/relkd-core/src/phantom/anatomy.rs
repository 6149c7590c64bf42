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

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::gland::Gland;
use super::organs::{Body, Bone, Levator, Rectum};
use super::shapes::{Blob, Field, Lumps, M3, Tube, V3, apply, rotation};

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

/// A shape and what it is made of.
type Labelled<T> = (T, Structure);

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
    bones: Vec<Labelled<Bone>>,
    muscles: Vec<Labelled<Blob>>,
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

        let (bladder, bladder_wall) = bladder(rng, base);
        let vesicles = [vesicle(-1.0, b, base, rng), vesicle(1.0, b, base, rng)];
        let rectum = Rectum::new(rng, endorectal_coil, b, base, apex);
        let levator = Levator {
            y: -b - 10.0,
            rx: a + rng.random_range(12.0..16.0),
            ry: b + rng.random_range(20.0..28.0),
            low: apex - 25.0,
            high: 0.3 * ext.superior,
        };
        let (bones, muscles) = skeleton_and_muscles(rng, &body, a, b, base);

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

/// The bladder above the base (filled 20–100 %) and its wall thickness in mm.
fn bladder(rng: &mut ChaCha8Rng, base: f32) -> (Blob, f32) {
    let filling = rng.random_range(0.2..1.0);
    let axes = [30.0 + 25.0 * filling, 25.0 + 20.0 * filling, 18.0 + 22.0 * filling];
    let centre =
        [rng.random_range(-4.0..4.0), rng.random_range(0.0..10.0), base - 3.0 + rng.random_range(-2.0..3.0) + axes[2]];
    let blob = Blob::new(centre, axes, rotation(rng.random_range(-0.1..0.1), 0.0), Lumps::random(rng, 3, 0.04));
    (blob, 5.0 - 2.5 * filling)
}

/// A seminal vesicle on `side` (−1 left, 1 right): from the base backwards, up and out.
fn vesicle(side: f32, b: f32, base: f32, rng: &mut ChaCha8Rng) -> Tube {
    let start = [side * 5.0, -0.55 * b, base - 6.0];
    let end = [
        side * rng.random_range(22.0..32.0),
        -0.55 * b - rng.random_range(4.0..10.0),
        base + rng.random_range(8.0..16.0),
    ];
    Tube::new(start, end, 5.0, rng.random_range(6.0..9.0))
}

/// The bones (pubic symphysis, femoral heads and necks, acetabula, rami, ischia, coccyx) and
/// the muscles around them, for a gland of half width `a` and half depth `b`.
fn skeleton_and_muscles(
    rng: &mut ChaCha8Rng,
    body: &Body,
    a: f32,
    b: f32,
    base: f32,
) -> (Vec<Labelled<Bone>>, Vec<Labelled<Blob>>) {
    let xf = rng.random_range(85.0..98.0);
    let (yf, zf, rf) = (rng.random_range(5.0..15.0), base + rng.random_range(-8.0..8.0), rng.random_range(22.0..26.0));
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
        muscles.push((muscle([s(xf + 5.0), 30.0, zf - 75.0], [60.0, 55.0, 70.0], 0.0, rng), Structure::ThighMuscle));
        muscles.push((muscle([s(xf - 25.0), 35.0, zf + 35.0], [22.0, 25.0, 60.0], 0.0, rng), Structure::Iliopsoas));
        let front = body.centre[1] + body.half[1] - 18.0;
        muscles.push((muscle([s(35.0), front, zf + 70.0], [30.0, 9.0, 70.0], 0.0, rng), Structure::RectusAbdominis));
        let x_obturator = a + rng.random_range(30.0..38.0);
        muscles.push((muscle([s(x_obturator), -5.0, -5.0], [9.0, 45.0, 40.0], 0.0, rng), Structure::ObturatorInternus));
    }
    bones.push((
        Bone::Tube(Tube::new([0.0, -b - 48.0, base - 15.0], [0.0, -b - 80.0, base + 55.0], 8.0, 16.0)),
        Structure::Coccyx,
    ));

    (bones, muscles)
}
