//! One synthetic patient: anatomy, lesions and distractors, drawn as tissue classes and BraTS
//! labels, then turned into four modalities by a site's acquisition.
//!
//! Geometry lives in "brain units": the brain is roughly the unit ball after scaling each axis by
//! its radius, so the same case description renders at 240×240×155 and at 64×64×24.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::noise::{FastNormal, SmoothNoise};
use super::site::Acquisition;

/// Normal tissue classes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Tissue {
    Background = 0,
    Csf = 1,
    Grey = 2,
    White = 3,
    DeepGrey = 4,
    Vessel = 5,
}

/// Intensity of each class in (flair, t1, t1ce, t2), before the site's acquisition.
fn tissue_intensity(t: Tissue) -> [f32; 4] {
    match t {
        Tissue::Background => [0.0; 4],
        Tissue::Csf => [0.10, 0.25, 0.25, 1.00],
        Tissue::Grey => [0.62, 0.60, 0.62, 0.62],
        Tissue::White => [0.48, 0.82, 0.82, 0.42],
        Tissue::DeepGrey => [0.57, 0.68, 0.70, 0.55],
        // Vessels enhance like tumour rims and are bright on FLAIR: the classic mimic.
        Tissue::Vessel => [0.80, 0.55, 1.25, 0.50],
    }
}

/// Intensity of BraTS labels: 1 necrotic (HGG) or non-enhancing core (LGG), 2 edema,
/// 4 enhancing tumour.
fn label_intensity(label: u8, high_grade: bool) -> [f32; 4] {
    match (label, high_grade) {
        (1, true) => [0.55, 0.28, 0.30, 0.92],
        (1, false) => [0.85, 0.45, 0.47, 0.85],
        (2, _) => [0.95, 0.55, 0.57, 0.85],
        _ => [0.78, 0.60, 1.20, 0.72],
    }
}

/// Why a case is hard, for the minority that are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hardness {
    Normal,
    Small,
    LowContrast,
    Multifocal,
    NearVentricles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lesion {
    pub center: [f32; 3],
    /// Core radius in brain units, per axis.
    pub radius: [f32; 3],
    /// Edema extent as a multiple of the core radius.
    pub edema: f32,
    /// Fraction of the core radius that is enhancing rim (high grade only).
    pub rim: f32,
}

/// Everything drawn at random for one case, before rasterisation (also written to phantom.json).
#[derive(Debug, Clone, Serialize)]
pub struct CaseSpec {
    pub id: String,
    pub site: String,
    pub grade: &'static str,
    pub hardness: Hardness,
    /// Tumour contrast against normal tissue (1 = full).
    pub contrast: f32,
    pub brain_radius: [f32; 3],
    pub ventricle_scale: f32,
    pub lesions: Vec<Lesion>,
    pub vessels: usize,
    #[serde(skip)]
    seed: u64,
}

const LATERAL_VENTRICLE_X: f32 = 0.10;

impl CaseSpec {
    pub fn draw(
        id: String,
        site: String,
        rng: &mut ChaCha8Rng,
        hard_fraction: f64,
        hgg_fraction: f64,
    ) -> CaseSpec {
        let high_grade = rng.random_bool(hgg_fraction);
        let hardness = if rng.random_bool(hard_fraction) {
            [
                Hardness::Small,
                Hardness::LowContrast,
                Hardness::Multifocal,
                Hardness::NearVentricles,
            ][rng.random_range(0..4)]
        } else {
            Hardness::Normal
        };
        let ventricle_scale = rng.random_range(0.8..1.5);
        let lesion = |rng: &mut ChaCha8Rng, size: f32| {
            let aniso = [
                rng.random_range(0.75..1.25),
                rng.random_range(0.75..1.25),
                rng.random_range(0.75..1.25),
            ];
            // Anywhere in the hemispheres' white matter, off the midline.
            let side = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let center = [
                side * rng.random_range(0.2..0.6),
                rng.random_range(-0.6..0.6),
                rng.random_range(-0.35..0.5),
            ];
            Lesion {
                center,
                radius: aniso.map(|a| a * size),
                edema: if high_grade {
                    rng.random_range(1.3..2.1)
                } else {
                    rng.random_range(1.15..1.6)
                },
                rim: if high_grade {
                    rng.random_range(0.3..0.55)
                } else {
                    0.0
                },
            }
        };
        // Sizes from small to large: log-uniform core radius.
        let size =
            |rng: &mut ChaCha8Rng, lo: f32, hi: f32| (rng.random_range(lo.ln()..hi.ln())).exp();
        let mut lesions = Vec::new();
        match hardness {
            Hardness::Small => {
                let s = size(rng, 0.03, 0.055);
                lesions.push(lesion(rng, s));
            }
            Hardness::Multifocal => {
                for _ in 0..rng.random_range(2..=3) {
                    let s = size(rng, 0.04, 0.12);
                    lesions.push(lesion(rng, s));
                }
            }
            Hardness::NearVentricles => {
                let s = size(rng, 0.06, 0.16);
                let mut l = lesion(rng, s);
                let side = l.center[0].signum();
                // Just lateral to a lateral ventricle, touching it.
                l.center = [
                    side * (LATERAL_VENTRICLE_X + 0.06 * ventricle_scale + 0.8 * s),
                    rng.random_range(-0.2..0.2),
                    0.08,
                ];
                lesions.push(l);
            }
            _ => {
                let s = size(rng, 0.06, 0.28);
                lesions.push(lesion(rng, s));
            }
        }
        CaseSpec {
            id,
            site,
            grade: if high_grade { "HGG" } else { "LGG" },
            contrast: if hardness == Hardness::LowContrast {
                rng.random_range(0.3..0.45)
            } else {
                rng.random_range(0.85..1.0)
            },
            hardness,
            brain_radius: [0.30, 0.37, 0.42].map(|r| r * rng.random_range(0.92..1.06)),
            ventricle_scale,
            lesions,
            vessels: rng.random_range(3..=7),
            seed: rng.random(),
        }
    }

    pub fn high_grade(&self) -> bool {
        self.grade == "HGG"
    }
}

/// A rendered case: four modalities as int16 and the BraTS labels, `[z][y][x]`.
pub struct Rendered {
    /// flair, t1, t1ce, t2.
    pub images: [Vec<i16>; 4],
    pub seg: Vec<u8>,
}

struct Geometry {
    dims: [usize; 3],
    radius: [f32; 3],
}

impl Geometry {
    /// Voxel → brain units.
    fn brain(&self, x: usize, y: usize, z: usize) -> [f32; 3] {
        let p = [x, y, z];
        std::array::from_fn(|a| ((p[a] as f32 + 0.5) / self.dims[a] as f32 - 0.5) / self.radius[a])
    }
    /// Voxel → unit cube (for noise lookups).
    fn unit(&self, x: usize, y: usize, z: usize) -> [f32; 3] {
        let p = [x, y, z];
        std::array::from_fn(|a| (p[a] as f32 + 0.5) / self.dims[a] as f32)
    }
    /// Brain units → voxel (fractional).
    fn voxel(&self, u: [f32; 3]) -> [f32; 3] {
        std::array::from_fn(|a| (u[a] * self.radius[a] + 0.5) * self.dims[a] as f32 - 0.5)
    }
}

fn norm(v: [f32; 3]) -> f32 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

pub fn render(spec: &CaseSpec, dims: [usize; 3], acq: &Acquisition) -> Rendered {
    use rand::SeedableRng;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let g = Geometry {
        dims,
        radius: spec.brain_radius,
    };
    let [nx, ny, nz] = dims;
    let n = nx * ny * nz;
    let surface = SmoothNoise::new(&mut rng, [6, 6, 6]);
    let gyri = SmoothNoise::new(&mut rng, [14, 14, 10]);
    let sulci = SmoothNoise::new(&mut rng, [16, 16, 12]);
    let texture = SmoothNoise::new(&mut rng, [28, 28, 20]);
    let lobes: Vec<SmoothNoise> = spec
        .lesions
        .iter()
        .map(|_| SmoothNoise::new(&mut rng, [9, 9, 9]))
        .collect();
    let edema_shape = SmoothNoise::new(&mut rng, [7, 7, 7]);
    let vs = spec.ventricle_scale;

    // 1. Normal anatomy.
    let mut tissue = vec![Tissue::Background; n];
    let mut seg = vec![0u8; n];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let u = g.brain(x, y, z);
                let q = g.unit(x, y, z);
                let outer = 1.0 + 0.06 * surface.at(q);
                let depth = outer - norm(u);
                if depth <= 0.0 {
                    continue;
                }
                // Outer CSF, the interhemispheric fissure (front and back, and above the
                // ventricles), grey-matter cortex of varying thickness with sulci (the
                // zero-crossings of a noise field are thin winding lines), white matter inside.
                let fissure = u[0].abs() < 0.012 && (u[1].abs() > 0.5 || u[2] > 0.45);
                let cortex = 0.09 + 0.05 * gyri.at(q);
                let mut t = if depth < 0.015 || fissure {
                    Tissue::Csf
                } else if depth < cortex {
                    if sulci.at(q).abs() < 0.07 {
                        Tissue::Csf
                    } else {
                        Tissue::Grey
                    }
                } else if depth < cortex + 0.06 && sulci.at(q).abs() < 0.035 {
                    Tissue::Grey // the fundus of a sulcus reaches into white matter
                } else {
                    Tissue::White
                };
                for side in [-1.0f32, 1.0] {
                    // Lateral ventricles: curved ellipsoids either side of the midline.
                    let cz = 0.10 - 0.35 * u[1] * u[1];
                    let d = [
                        (u[0] - side * LATERAL_VENTRICLE_X) / (0.06 * vs),
                        (u[1] - 0.02) / 0.34,
                        (u[2] - cz) / (0.12 * vs),
                    ];
                    if norm(d) < 1.0 {
                        t = Tissue::Csf;
                    }
                    let d = [
                        (u[0] - side * 0.19) / 0.10,
                        (u[1] - 0.05) / 0.14,
                        (u[2] + 0.02) / 0.12,
                    ];
                    if t == Tissue::White && norm(d) < 1.0 {
                        t = Tissue::DeepGrey;
                    }
                }
                tissue[(z * ny + y) * nx + x] = t;
            }
        }
    }

    // 2. Lesions: core (1 / 4), edema (2). Edema spreads in white matter, less in grey, never
    // into CSF.
    let high = spec.high_grade();
    for (lesion, lobe) in spec.lesions.iter().zip(&lobes) {
        let reach = lesion.edema * 1.4;
        let lo = g.voxel(std::array::from_fn(|a| {
            lesion.center[a] - lesion.radius[a] * reach
        }));
        let hi = g.voxel(std::array::from_fn(|a| {
            lesion.center[a] + lesion.radius[a] * reach
        }));
        let range = |a: usize| {
            (lo[a].floor().max(0.0) as usize)..((hi[a].ceil() + 1.0).min(dims[a] as f32) as usize)
        };
        for z in range(2) {
            for y in range(1) {
                for x in range(0) {
                    let i = (z * ny + y) * nx + x;
                    let t = tissue[i];
                    if t == Tissue::Background || t == Tissue::Csf {
                        continue;
                    }
                    let u = g.brain(x, y, z);
                    let qn = g.unit(x, y, z);
                    let rel: [f32; 3] =
                        std::array::from_fn(|a| (u[a] - lesion.center[a]) / lesion.radius[a]);
                    let d = norm(rel) * (1.0 + 0.3 * lobe.at(qn));
                    let label = if d < 1.0 {
                        if !high || d < 1.0 - lesion.rim {
                            1
                        } else {
                            4
                        }
                    } else {
                        let extent = lesion.edema * (1.0 + 0.25 * edema_shape.at(qn));
                        let extent = if t == Tissue::Grey {
                            1.0 + (extent - 1.0) * 0.5
                        } else {
                            extent
                        };
                        if d < extent {
                            2
                        } else {
                            0
                        }
                    };
                    // Cores win over edema where lesions overlap.
                    if label != 0 && (seg[i] == 0 || seg[i] == 2) {
                        seg[i] = label;
                    }
                }
            }
        }
        // A lesion smaller than a voxel still marks its centre.
        let c = g.voxel(lesion.center).map(|v| v.round().max(0.0) as usize);
        let i = (c[2].min(nz - 1) * ny + c[1].min(ny - 1)) * nx + c[0].min(nx - 1);
        if seg[i] == 0 && tissue[i] != Tissue::Background {
            seg[i] = 1;
        }
    }

    // 3. Distractors: vessel-like tubes that enhance, and a few enhancing blobs.
    let vessel_radius = 0.016;
    for k in 0..spec.vessels + 2 {
        let blob = k >= spec.vessels;
        let mut p = [
            rng.random_range(-0.55..0.55),
            rng.random_range(-0.6..0.6),
            rng.random_range(-0.4..0.5),
        ];
        let mut dir = [
            rng.random_range(-1.0f32..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        ];
        let steps = if blob { 1 } else { rng.random_range(30..80) };
        let r = if blob {
            rng.random_range(0.025..0.045)
        } else {
            vessel_radius * rng.random_range(0.7..1.4)
        };
        for _ in 0..steps {
            paint_sphere(&g, &mut tissue, &seg, p, r);
            let dn = norm(dir).max(1e-6);
            for a in 0..3 {
                dir[a] = dir[a] / dn + rng.random_range(-0.25..0.25);
                p[a] += 0.012 * dir[a] / dn;
            }
        }
    }

    // 4. Acquisition: tissue → intensities → bias, contrast curve, noise → int16.
    let bias_field = SmoothNoise::new(&mut rng, [3, 3, 3]);
    let scale = acq.scale * rng.random_range(0.9..1.1);
    let mut images: [Vec<i16>; 4] = std::array::from_fn(|_| vec![0i16; n]);
    let mut float = vec![0f32; n];
    for (m, image) in images.iter_mut().enumerate() {
        let mut normal = FastNormal::new(rng.random());
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let i = (z * ny + y) * nx + x;
                    let t = tissue[i];
                    if t == Tissue::Background {
                        float[i] = 0.0;
                        continue;
                    }
                    let q = g.unit(x, y, z);
                    let base = tissue_intensity(t)[m];
                    let mut v = if seg[i] != 0 {
                        let tumour = label_intensity(seg[i], high)[m];
                        base + spec.contrast * acq.lesion_contrast * (tumour - base)
                    } else {
                        base
                    };
                    v *= 1.0 + 0.05 * texture.at(q);
                    v = v.max(0.0).powf(acq.gamma[m]);
                    v *= 1.0 + acq.bias * bias_field.at(q);
                    // Rician noise: magnitude of a complex signal with Gaussian noise.
                    let (a, b) = (v + acq.noise * normal.next(), acq.noise * normal.next());
                    float[i] = (a * a + b * b).sqrt();
                }
            }
        }
        if acq.blur {
            blur_in_plane(&mut float, &tissue, dims);
        }
        for (o, (&v, &t)) in image.iter_mut().zip(float.iter().zip(&tissue)) {
            // Brain voxels are never 0: 0 means background to BraTS tools (and to our z-score).
            *o = if t == Tissue::Background {
                0
            } else {
                (v * scale).round().clamp(1.0, 32767.0) as i16
            };
        }
    }
    Rendered { images, seg }
}

fn paint_sphere(g: &Geometry, tissue: &mut [Tissue], seg: &[u8], center: [f32; 3], r: f32) {
    let [nx, ny, nz] = g.dims;
    let lo = g.voxel(std::array::from_fn(|a| center[a] - r));
    let hi = g.voxel(std::array::from_fn(|a| center[a] + r));
    let range = |a: usize, n: usize| {
        (lo[a].floor().max(0.0) as usize)..((hi[a].ceil() + 1.0).clamp(0.0, n as f32) as usize)
    };
    for z in range(2, nz) {
        for y in range(1, ny) {
            for x in range(0, nx) {
                let u = g.brain(x, y, z);
                let d: [f32; 3] =
                    std::array::from_fn(|a| (u[a] - center[a]) * g.radius[a] / g.radius[1]);
                let i = (z * ny + y) * nx + x;
                if norm(d) <= r && tissue[i] != Tissue::Background && seg[i] == 0 {
                    tissue[i] = Tissue::Vessel;
                }
            }
        }
    }
}

/// [1 2 1]/4 in x then y, inside the brain only (the background stays exactly 0).
fn blur_in_plane(v: &mut [f32], tissue: &[Tissue], dims: [usize; 3]) {
    let [nx, ny, nz] = dims;
    let mut tmp = v.to_vec();
    let inside = |i: usize| tissue[i] != Tissue::Background;
    for z in 0..nz {
        for y in 0..ny {
            for x in 1..nx.saturating_sub(1) {
                let i = (z * ny + y) * nx + x;
                if inside(i) && inside(i - 1) && inside(i + 1) {
                    tmp[i] = 0.25 * v[i - 1] + 0.5 * v[i] + 0.25 * v[i + 1];
                }
            }
        }
        for y in 1..ny.saturating_sub(1) {
            for x in 0..nx {
                let i = (z * ny + y) * nx + x;
                if inside(i) && inside(i - nx) && inside(i + nx) {
                    v[i] = 0.25 * tmp[i - nx] + 0.5 * tmp[i] + 0.25 * tmp[i + nx];
                } else {
                    v[i] = tmp[i];
                }
            }
        }
    }
}
