//! Smooth random fields (value noise on a coarse grid, trilinear in between): brain outline,
//! gyri, lobulated tumours, bias fields and texture all come from these.

use rand::Rng;

pub struct SmoothNoise {
    grid: [usize; 3],
    values: Vec<f32>,
}

impl SmoothNoise {
    /// A field with `grid` nodes per axis over the unit cube, values in [-1, 1].
    pub fn new(rng: &mut impl Rng, grid: [usize; 3]) -> Self {
        let n = grid.iter().product();
        SmoothNoise {
            grid,
            values: (0..n).map(|_| rng.random_range(-1.0..1.0)).collect(),
        }
    }

    /// The field at `p` in [0, 1]³ (clamped outside).
    pub fn at(&self, p: [f32; 3]) -> f32 {
        let [gx, gy, gz] = self.grid;
        let coord = |v: f32, g: usize| {
            let t = v.clamp(0.0, 1.0) * (g - 1) as f32;
            let i = (t as usize).min(g - 2);
            (i, t - i as f32)
        };
        let (ix, fx) = coord(p[0], gx);
        let (iy, fy) = coord(p[1], gy);
        let (iz, fz) = coord(p[2], gz);
        let v = |x: usize, y: usize, z: usize| self.values[(z * gy + y) * gx + x];
        let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
        let c00 = lerp(v(ix, iy, iz), v(ix + 1, iy, iz), fx);
        let c10 = lerp(v(ix, iy + 1, iz), v(ix + 1, iy + 1, iz), fx);
        let c01 = lerp(v(ix, iy, iz + 1), v(ix + 1, iy, iz + 1), fx);
        let c11 = lerp(v(ix, iy + 1, iz + 1), v(ix + 1, iy + 1, iz + 1), fx);
        lerp(lerp(c00, c10, fy), lerp(c01, c11, fy), fz)
    }
}

/// A small, fast generator for the millions of noise samples per volume (xorshift64* +
/// Box–Muller). Seeded from the patient's ChaCha stream, so output stays reproducible.
pub struct FastNormal {
    state: u64,
    spare: Option<f32>,
}

impl FastNormal {
    pub fn new(seed: u64) -> Self {
        FastNormal {
            state: seed | 1,
            spare: None,
        }
    }

    fn uniform(&mut self) -> f32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((r >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    pub fn next(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn smooth_noise_is_continuous_and_bounded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let n = SmoothNoise::new(&mut rng, [5, 5, 5]);
        let a = n.at([0.3, 0.3, 0.3]);
        let b = n.at([0.301, 0.3, 0.3]);
        assert!((a - b).abs() < 0.05);
        for i in 0..100 {
            let t = i as f32 / 99.0;
            assert!(n.at([t, 1.0 - t, t]).abs() <= 1.0);
        }
    }

    #[test]
    fn fast_normal_has_unit_moments() {
        let mut g = FastNormal::new(7);
        let xs: Vec<f32> = (0..200_000).map(|_| g.next()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }
}
