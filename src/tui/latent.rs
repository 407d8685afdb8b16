//! The latent-space view: sample latents projected to 2D (PCA of the latent dimensions by
//! default, or any two raw dimensions).

/// Principal axes of `points` (rows), largest variance first, by Jacobi rotation of the
/// covariance (the dimension is small: the VAE's latent size).
pub fn pca_axes(points: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let d = points.first().map(|p| p.len()).unwrap_or(0);
    let n = points.len().max(1) as f64;
    let mean: Vec<f64> = (0..d)
        .map(|k| points.iter().map(|p| p[k]).sum::<f64>() / n)
        .collect();
    let mut c = vec![vec![0.0; d]; d];
    for p in points {
        for i in 0..d {
            for j in 0..d {
                c[i][j] += (p[i] - mean[i]) * (p[j] - mean[j]) / n;
            }
        }
    }
    let mut v: Vec<Vec<f64>> = (0..d)
        .map(|i| (0..d).map(|j| (i == j) as u8 as f64).collect())
        .collect();
    for _ in 0..50 {
        for p in 0..d {
            for q in p + 1..d {
                if c[p][q].abs() < 1e-15 {
                    continue;
                }
                let theta = 0.5 * (2.0 * c[p][q]).atan2(c[q][q] - c[p][p]);
                let (s, co) = theta.sin_cos();
                for row in c.iter_mut().take(d) {
                    let (a, b) = (row[p], row[q]);
                    row[p] = co * a - s * b;
                    row[q] = s * a + co * b;
                }
                #[allow(clippy::needless_range_loop)] // rows p and q at once
                for k in 0..d {
                    let (a, b) = (c[p][k], c[q][k]);
                    c[p][k] = co * a - s * b;
                    c[q][k] = s * a + co * b;
                }
                for row in v.iter_mut() {
                    let (a, b) = (row[p], row[q]);
                    row[p] = co * a - s * b;
                    row[q] = s * a + co * b;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| c[b][b].total_cmp(&c[a][a]));
    let axes = order
        .iter()
        .map(|&k| (0..d).map(|i| v[i][k]).collect())
        .collect();
    (mean, axes)
}

/// How points are placed on the plane.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    Pca { mean: Vec<f64>, axes: Vec<Vec<f64>> },
    Dims(usize, usize),
}

impl Projection {
    pub fn project(&self, z: &[f64]) -> (f64, f64) {
        match self {
            Projection::Pca { mean, axes } => {
                let dot = |a: &[f64]| {
                    z.iter()
                        .zip(mean)
                        .zip(a)
                        .map(|((x, m), w)| (x - m) * w)
                        .sum::<f64>()
                };
                (dot(&axes[0]), axes.get(1).map(|a| dot(a)).unwrap_or(0.0))
            }
            Projection::Dims(a, b) => (
                z.get(*a).copied().unwrap_or(0.0),
                z.get(*b).copied().unwrap_or(0.0),
            ),
        }
    }

    /// Projects a direction (no centring).
    pub fn project_dir(&self, d: &[f64]) -> (f64, f64) {
        match self {
            Projection::Pca { axes, .. } => {
                let dot = |a: &[f64]| d.iter().zip(a).map(|(x, w)| x * w).sum::<f64>();
                (dot(&axes[0]), axes.get(1).map(|a| dot(a)).unwrap_or(0.0))
            }
            Projection::Dims(a, b) => (
                d.get(*a).copied().unwrap_or(0.0),
                d.get(*b).copied().unwrap_or(0.0),
            ),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Projection::Pca { .. } => "PCA 1 × PCA 2".into(),
            Projection::Dims(a, b) => format!("z{} × z{}", a + 1, b + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_direction_of_largest_spread() {
        let pts: Vec<Vec<f64>> = (0..200)
            .map(|i| {
                let t = i as f64 / 10.0 - 10.0;
                vec![
                    t,
                    2.0 * t + 0.01 * (i % 3) as f64,
                    0.1 * ((i * 7) % 5) as f64,
                ]
            })
            .collect();
        let (_, axes) = pca_axes(&pts);
        let a = &axes[0];
        let norm = (a.iter().map(|x| x * x).sum::<f64>()).sqrt();
        let cos = (a[0] + 2.0 * a[1]) / (norm * 5f64.sqrt());
        assert!(cos.abs() > 0.999, "{a:?}");
    }
}
