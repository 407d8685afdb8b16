//! Surface distance between a predicted and a true segmentation: the 95th-percentile Hausdorff
//! distance (HD95) in millimetres, the second of the BraTS evaluation's two metrics. It follows
//! MedPy's `hd95`, which the BraTS tools use: the surface of a mask is its voxels with a face
//! neighbour outside it (the volume's edge counts as outside); the distances from each surface
//! to the other, both ways, are pooled and their 95th percentile (linear interpolation, as
//! numpy's) is taken. Distances come from an exact Euclidean distance transform with the voxel
//! spacing (Felzenszwalb and Huttenlocher's separable algorithm), so they are exact in mm.

/// A binary volume `[z][row][col]` and its voxel spacing in mm (z, row, col).
#[derive(Debug, Clone, Copy)]
pub struct Volume<'a> {
    pub mask: &'a [u8],
    pub dims: [usize; 3],
    pub spacing_mm: [f64; 3],
}

/// HD95 between `a` and `b` (same dims and spacing), mm. Both empty: 0. One empty: `None` (the
/// distance is undefined; BraTS's own tools then report a fixed penalty).
pub fn hd95(a: Volume, b: Volume) -> Option<f64> {
    debug_assert_eq!(a.dims, b.dims);
    let surface_a = surface(a);
    let surface_b = surface(b);
    let (na, nb) = (
        surface_a.iter().filter(|&&s| s).count(),
        surface_b.iter().filter(|&&s| s).count(),
    );
    match (na, nb) {
        (0, 0) => return Some(0.0),
        (0, _) | (_, 0) => return None,
        _ => {}
    }
    // Every distance wanted runs between two points of A ∪ B, so within its bounding box:
    // the transforms run on that box only (a tumour is a small part of the head).
    let (lo, hi) = bounding_box(&surface_a, &surface_b, a.dims);
    let crop = |m: &[bool]| -> Vec<bool> {
        let [_, ny, nx] = a.dims;
        let mut out = Vec::new();
        for z in lo[0]..hi[0] {
            for y in lo[1]..hi[1] {
                let row = (z * ny + y) * nx;
                out.extend_from_slice(&m[row + lo[2]..row + hi[2]]);
            }
        }
        out
    };
    let (sa, sb) = (crop(&surface_a), crop(&surface_b));
    let dims = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let to_b = distance_to(&sb, dims, a.spacing_mm);
    let to_a = distance_to(&sa, dims, a.spacing_mm);
    let mut d: Vec<f64> = Vec::with_capacity(na + nb);
    d.extend((0..sa.len()).filter(|&i| sa[i]).map(|i| to_b[i]));
    d.extend((0..sb.len()).filter(|&i| sb[i]).map(|i| to_a[i]));
    Some(percentile(&mut d, 95.0))
}

/// The `q`-th percentile with numpy's default (linear) interpolation.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// The smallest box (`lo..hi` per axis) that holds every marked voxel of `a` and `b`.
fn bounding_box(a: &[bool], b: &[bool], dims: [usize; 3]) -> ([usize; 3], [usize; 3]) {
    let [_, ny, nx] = dims;
    let (mut lo, mut hi) = (dims, [0; 3]);
    for i in (0..a.len()).filter(|&i| a[i] || b[i]) {
        let c = [i / (ny * nx), (i / nx) % ny, i % nx];
        for k in 0..3 {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k] + 1);
        }
    }
    (lo, hi)
}

/// Voxels of the mask with a face neighbour outside it (or on the volume's edge).
fn surface(v: Volume) -> Vec<bool> {
    let [nz, ny, nx] = v.dims;
    let at = |z: usize, y: usize, x: usize| v.mask[(z * ny + y) * nx + x] != 0;
    let mut out = vec![false; v.mask.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if !at(z, y, x) {
                    continue;
                }
                let inside = z > 0
                    && z + 1 < nz
                    && y > 0
                    && y + 1 < ny
                    && x > 0
                    && x + 1 < nx
                    && at(z - 1, y, x)
                    && at(z + 1, y, x)
                    && at(z, y - 1, x)
                    && at(z, y + 1, x)
                    && at(z, y, x - 1)
                    && at(z, y, x + 1);
                out[(z * ny + y) * nx + x] = !inside;
            }
        }
    }
    out
}

/// Each voxel's Euclidean distance (mm) to the nearest marked voxel.
fn distance_to(marked: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut f: Vec<f64> = marked
        .iter()
        .map(|&m| if m { 0.0 } else { f64::INFINITY })
        .collect();
    let [nz, ny, nx] = dims;
    let strides = [ny * nx, nx, 1];
    let longest = nz.max(ny).max(nx);
    let mut line = vec![0.0; longest];
    let mut scratch = Scratch::new(longest);
    for axis in 0..3 {
        let n = dims[axis];
        // Every line along `axis`: its first voxel runs over the other two axes.
        let others: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
        for i in 0..dims[others[0]] {
            for j in 0..dims[others[1]] {
                let start = i * strides[others[0]] + j * strides[others[1]];
                for k in 0..n {
                    line[k] = f[start + k * strides[axis]];
                }
                scratch.transform(&mut line[..n], spacing[axis]);
                for k in 0..n {
                    f[start + k * strides[axis]] = line[k];
                }
            }
        }
    }
    f.into_iter().map(f64::sqrt).collect()
}

/// Buffers of the 1D transform (the lower envelope of parabolas).
struct Scratch {
    vertex: Vec<usize>,
    boundary: Vec<f64>,
    out: Vec<f64>,
}

impl Scratch {
    fn new(n: usize) -> Scratch {
        Scratch {
            vertex: vec![0; n],
            boundary: vec![0.0; n + 1],
            out: vec![0.0; n],
        }
    }

    /// In place: `f[p] ← min_q ((p − q)·h)² + f[q]`, voxels `h` mm apart.
    fn transform(&mut self, f: &mut [f64], h: f64) {
        let n = f.len();
        let pos = |i: usize| i as f64 * h;
        let Some(first) = (0..n).find(|&q| f[q].is_finite()) else {
            return; // nothing marked on this line: all stay infinite
        };
        let (v, z) = (&mut self.vertex, &mut self.boundary);
        let mut k = 0;
        v[0] = first;
        z[0] = f64::NEG_INFINITY;
        z[1] = f64::INFINITY;
        for q in first + 1..n {
            if !f[q].is_finite() {
                continue;
            }
            let intersect = |p: usize| {
                ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)))
            };
            // z[0] is −∞, so this stops at the first parabola at the latest.
            let mut s = intersect(v[k]);
            while s <= z[k] {
                k -= 1;
                s = intersect(v[k]);
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
        }
        let mut k = 0;
        for (p, out) in self.out[..n].iter_mut().enumerate() {
            while z[k + 1] < pos(p) {
                k += 1;
            }
            let d = pos(p) - pos(v[k]);
            *out = d * d + f[v[k]];
        }
        f.copy_from_slice(&self.out[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(mask: &[u8], dims: [usize; 3], spacing_mm: [f64; 3]) -> Volume<'_> {
        Volume {
            mask,
            dims,
            spacing_mm,
        }
    }

    /// Two full sheets three slices apart, slices 2.5 mm apart: every surface voxel of each is
    /// exactly 7.5 mm from the other, so HD95 is 7.5 mm.
    #[test]
    fn parallel_sheets_are_their_distance_apart() {
        let dims = [8, 5, 6];
        let sheet = |z: usize| {
            let mut m = vec![0u8; 8 * 5 * 6];
            m[z * 30..(z + 1) * 30].fill(1);
            m
        };
        let (a, b) = (sheet(2), sheet(5));
        let s = [2.5, 1.0, 1.0];
        let d = hd95(vol(&a, dims, s), vol(&b, dims, s)).unwrap();
        assert!((d - 7.5).abs() < 1e-12, "{d}");
        // Identical masks: 0; one empty: undefined; both empty: 0.
        assert_eq!(hd95(vol(&a, dims, s), vol(&a, dims, s)), Some(0.0));
        let empty = vec![0u8; a.len()];
        assert_eq!(hd95(vol(&a, dims, s), vol(&empty, dims, s)), None);
        assert_eq!(hd95(vol(&empty, dims, s), vol(&empty, dims, s)), Some(0.0));
    }

    /// Single voxels at (0,0,0) and (z 1, row 2, col 3) with spacing (2, 1.5, 0.5) mm:
    /// √(2² + 3² + 1.5²) mm both ways.
    #[test]
    fn single_voxels_are_apart_by_the_spaced_diagonal() {
        let dims = [3, 4, 5];
        let mut a = vec![0u8; 60];
        let mut b = vec![0u8; 60];
        a[0] = 1;
        b[(4 + 2) * 5 + 3] = 1;
        let s = [2.0, 1.5, 0.5];
        let d = hd95(vol(&a, dims, s), vol(&b, dims, s)).unwrap();
        let want = (4.0f64 + 9.0 + 2.25).sqrt();
        assert!((d - want).abs() < 1e-12, "{d} vs {want}");
    }

    /// The distance transform against brute force on seeded random volumes, anisotropic.
    #[test]
    fn the_transform_matches_brute_force() {
        let dims = [5, 7, 6];
        let s = [2.0, 0.7, 1.3];
        let mut state = 12345u64;
        for _ in 0..20 {
            let marked: Vec<bool> = (0..5 * 7 * 6)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 33).is_multiple_of(13)
                })
                .collect();
            let fast = distance_to(&marked, dims, s);
            let coords = |i: usize| [i / 42, (i / 6) % 7, i % 6];
            for (i, &got) in fast.iter().enumerate() {
                let c = coords(i);
                let slow = (0..marked.len())
                    .filter(|&j| marked[j])
                    .map(|j| {
                        let d = coords(j);
                        (0..3)
                            .map(|k| ((c[k] as f64 - d[k] as f64) * s[k]).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (got - slow).abs() < 1e-9 || (got.is_infinite() && slow.is_infinite()),
                    "voxel {c:?}: {got} vs {slow}"
                );
            }
        }
    }

    /// Two seeded random masks, against MedPy's algorithm in scipy 1.17.1:
    /// `border = m ^ binary_erosion(m, generate_binary_structure(3, 1))`, distances from
    /// `distance_transform_edt(~border, sampling=(2.5, 0.9, 1.1))`, both ways pooled,
    /// `numpy.percentile(d, 95)`, for the masks this generator gives (a: every value ≡ 0 mod 3,
    /// b: ≡ 0 mod 4, drawn alternately, z-major).
    #[test]
    fn random_masks_match_scipy() {
        let dims = [6, 9, 8];
        let mut state = 99u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            state >> 33
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..6 * 9 * 8 {
            a.push(next().is_multiple_of(3) as u8);
            b.push(next().is_multiple_of(4) as u8);
        }
        let s = [2.5, 0.9, 1.1];
        let d = hd95(vol(&a, dims, s), vol(&b, dims, s)).unwrap();
        assert!((d - 2.1095023109728985).abs() < 1e-12, "{d}");
    }

    #[test]
    fn percentiles_interpolate_as_numpy_does() {
        // numpy.percentile([1, 2, 3, 4, 10], 95) = 8.8
        assert!((percentile(&mut [10.0, 1.0, 3.0, 2.0, 4.0], 95.0) - 8.8).abs() < 1e-12);
        assert_eq!(percentile(&mut [3.0], 95.0), 3.0);
    }
}
