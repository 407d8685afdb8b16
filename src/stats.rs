//! Paired statistics for comparing strategies over repeats: within a repeat every arm shares the
//! split, the initial set, the VAE and the initial UNet, so arms are compared by their paired
//! differences. The mean difference with its 95 % t interval, the Wilcoxon signed-rank p-value
//! (exact for up to 25 pairs, the normal approximation above), wins, ties and losses, the
//! minimum difference the repeats could detect; and the area under a budget curve.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Up to this many non-zero differences the signed-rank p-value is exact.
const EXACT_UP_TO: usize = 25;

/// `a − b` over paired repeats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    pub n: usize,
    pub mean_diff: f64,
    /// 95 % confidence interval of the mean difference (paired t); `None` under two pairs.
    pub ci95: Option<[f64; 2]>,
    /// Two-sided Wilcoxon signed-rank p-value; `None` when every difference is zero or there
    /// are none.
    pub p_wilcoxon: Option<f64>,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// Standard deviation of the differences; `None` under two pairs.
    pub sd_diff: Option<f64>,
    /// The smallest true mean difference a paired t-test at 5 % (two-sided) detects with 80 %
    /// power, given these repeats' spread; `None` under two pairs.
    pub mdd80: Option<f64>,
}

/// Compares `a` with `b`, pair by pair (equal lengths: one value per repeat).
pub fn paired(a: &[f64], b: &[f64]) -> Paired {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    Paired {
        n: d.len(),
        mean_diff: mean(&d),
        ci95: t_interval(&d, 0.95),
        p_wilcoxon: wilcoxon_signed_rank(&d),
        wins: d.iter().filter(|&&x| x > 0.0).count(),
        ties: d.iter().filter(|&&x| x == 0.0).count(),
        losses: d.iter().filter(|&&x| x < 0.0).count(),
        sd_diff: (d.len() > 1).then(|| sd(&d)),
        mdd80: minimum_detectable(sd(&d), d.len()),
    }
}

/// The minimum detectable mean difference of a paired t-test (two-sided, 5 %) at 80 % power
/// with `n` pairs whose differences have standard deviation `sd`:
/// `(t₀.₉₇₅ + t₀.₈₀) · sd / √n`, both quantiles with n − 1 degrees of freedom.
pub fn minimum_detectable(sd: f64, n: usize) -> Option<f64> {
    if n < 2 || !sd.is_finite() {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, n as f64 - 1.0).ok()?;
    Some((t.inverse_cdf(0.975) + t.inverse_cdf(0.8)) * sd / (n as f64).sqrt())
}

/// The fewest pairs whose minimum detectable difference is at most `target`, for differences
/// with standard deviation `sd` (up to 10,000; `None` beyond).
pub fn repeats_for(sd: f64, target: f64) -> Option<usize> {
    (2..=10_000).find(|&n| minimum_detectable(sd, n).is_some_and(|m| m <= target))
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n − 1).
pub fn sd(v: &[f64]) -> f64 {
    let m = mean(v);
    let n = v.len() as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// The t interval of the mean at `level` (0.95: 95 %); `None` under two values.
pub fn t_interval(v: &[f64], level: f64) -> Option<[f64; 2]> {
    if v.len() < 2 {
        return None;
    }
    let n = v.len() as f64;
    let t = StudentsT::new(0.0, 1.0, n - 1.0)
        .ok()?
        .inverse_cdf(0.5 + level / 2.0);
    let half = t * sd(v) / n.sqrt();
    let m = mean(v);
    Some([m - half, m + half])
}

/// Ranks of `v` from 1, ties given their mean rank, doubled (so that they are whole numbers).
fn doubled_ranks(v: &[f64]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut ranks = vec![0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean, (i + j + 2) / 2; doubled: i + j + 2.
        for &k in &order[i..=j] {
            ranks[k] = (i + j + 2) as u64;
        }
        i = j + 1;
    }
    ranks
}

/// Two-sided p-value of the Wilcoxon signed-rank test of `d` (differences; zeros are dropped,
/// as scipy's default does). Exact, by counting every assignment of signs to the ranks, for up
/// to 25 non-zero differences; above, the normal approximation with the variance corrected
/// for ties and no continuity correction (scipy's `method="approx"`).
pub fn wilcoxon_signed_rank(d: &[f64]) -> Option<f64> {
    let nz: Vec<f64> = d.iter().copied().filter(|&x| x != 0.0).collect();
    let n = nz.len();
    if n == 0 {
        return None;
    }
    let abs: Vec<f64> = nz.iter().map(|x| x.abs()).collect();
    let ranks = doubled_ranks(&abs);
    let r_plus: u64 = nz
        .iter()
        .zip(&ranks)
        .filter(|(x, _)| **x > 0.0)
        .map(|(_, r)| r)
        .sum();
    let total: u64 = ranks.iter().sum();
    if n <= EXACT_UP_TO {
        // Number of sign assignments giving each (doubled) positive rank sum.
        let mut counts = vec![0f64; total as usize + 1];
        counts[0] = 1.0;
        for &r in &ranks {
            for s in (r as usize..=total as usize).rev() {
                counts[s] += counts[s - r as usize];
            }
        }
        let all = 2f64.powi(n as i32);
        let low = r_plus.min(total - r_plus) as usize;
        let tail: f64 = counts[..=low].iter().sum::<f64>() / all;
        return Some((2.0 * tail).min(1.0));
    }
    let n = n as f64;
    let r_plus = r_plus as f64 / 2.0;
    let mean = n * (n + 1.0) / 4.0;
    let mut var = n * (n + 1.0) * (2.0 * n + 1.0) / 24.0;
    // Tie correction: Σ (t³ − t) / 48 over groups of tied ranks.
    let mut sorted = ranks.clone();
    sorted.sort_unstable();
    let mut i = 0;
    while i < sorted.len() {
        let j = sorted[i..].iter().take_while(|&&r| r == sorted[i]).count();
        let t = j as f64;
        var -= (t * t * t - t) / 48.0;
        i += j;
    }
    let z = (r_plus - mean) / var.sqrt();
    let normal = Normal::new(0.0, 1.0).ok()?;
    Some((2.0 * normal.cdf(-z.abs())).min(1.0))
}

/// The area under a budget curve, normalised to [0, 1] over its budget range: the trapezoid
/// rule over `(budget, value)` points (in any order) divided by the range of budgets. A curve
/// of one point is that point's value.
pub fn aubc(points: &[(f64, f64)]) -> f64 {
    let mut p = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    match p.len() {
        0 => f64::NAN,
        1 => p[0].1,
        _ => {
            let range = p[p.len() - 1].0 - p[0].0;
            if range <= 0.0 {
                return mean(&p.iter().map(|q| q.1).collect::<Vec<_>>());
            }
            let area: f64 = p
                .windows(2)
                .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
                .sum();
            area / range
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from scipy 1.17.1 (numpy 2), computed once with:
    //   scipy.stats.wilcoxon(d, method="exact").pvalue        (tie-free d)
    //   scipy.stats.wilcoxon(x, method="approx").pvalue       (n = 30, one tie)
    //   d.mean() ± scipy.stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / sqrt(n)
    const D8: [f64; 8] = [0.021, 0.043, 0.062, -0.017, 0.075, 0.058, 0.009, 0.071];
    const D12: [f64; 12] = [
        0.051, -0.022, 0.033, 0.084, 0.012, -0.041, 0.063, 0.027, 0.075, 0.092, -0.015, 0.046,
    ];
    // numpy.random.default_rng(3).normal(0.02, 0.05, 30), rounded to 4 decimals.
    const X30: [f64; 30] = [
        0.122, -0.1078, 0.0409, -0.0084, -0.0026, 0.0092, -0.081, 0.0084, -0.0233, 0.1861, 0.0313,
        0.0024, 0.0059, -0.0134, -0.0328, 0.0005, 0.0441, 0.0081, 0.0679, 0.01, 0.0212, 0.0973,
        0.0473, -0.0053, 0.0109, 0.047, 0.1168, 0.0065, 0.0078, 0.0701,
    ];

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn signed_rank_p_values_match_scipy() {
        close(wilcoxon_signed_rank(&D8).unwrap(), 0.0234375, 1e-12);
        close(wilcoxon_signed_rank(&D12).unwrap(), 0.02685546875, 1e-12);
        close(
            wilcoxon_signed_rank(&[0.1, 0.2, 0.3, 0.4, 0.5]).unwrap(),
            0.0625,
            1e-12,
        );
        close(
            wilcoxon_signed_rank(&X30).unwrap(),
            0.017033193186459204,
            1e-9,
        );
        // Zeros are dropped; nothing but zeros has no p-value.
        let with_zero: Vec<f64> = D8.iter().copied().chain([0.0]).collect();
        close(wilcoxon_signed_rank(&with_zero).unwrap(), 0.0234375, 1e-12);
        assert_eq!(wilcoxon_signed_rank(&[0.0, 0.0]), None);
    }

    #[test]
    fn paired_t_intervals_match_scipy() {
        let [lo, hi] = t_interval(&D8, 0.95).unwrap();
        close(lo, 0.012751029142237427, 1e-9);
        close(hi, 0.06774897085776257, 1e-9);
        let [lo, hi] = t_interval(&X30, 0.95).unwrap();
        close(lo, 0.0013547891218488525, 1e-9);
        close(hi, 0.04445187754481782, 1e-9);
        assert_eq!(t_interval(&[0.3], 0.95), None);
    }

    // (scipy.stats.t.ppf(0.975, n - 1) + scipy.stats.t.ppf(0.8, n - 1)) * d.std(ddof=1) / sqrt(n);
    // and the first n from 2 up where that is at most 0.03 for sd = 0.05.
    #[test]
    fn minimum_detectable_differences_match_scipy() {
        close(
            minimum_detectable(sd(&D8), 8).unwrap(),
            0.03791918584967025,
            1e-9,
        );
        close(
            minimum_detectable(sd(&X30), 30).unwrap(),
            0.030548312938519492,
            1e-9,
        );
        assert_eq!(repeats_for(0.05, 0.03), Some(24));
        assert_eq!(minimum_detectable(0.05, 1), None);
        let p = paired(&D8, &[0.0; 8]);
        close(p.mdd80.unwrap(), 0.03791918584967025, 1e-9);
    }

    #[test]
    fn paired_counts_wins_ties_and_losses() {
        let p = paired(&[0.7, 0.6, 0.5, 0.9], &[0.6, 0.6, 0.7, 0.8]);
        assert_eq!((p.n, p.wins, p.ties, p.losses), (4, 2, 1, 1));
        close(p.mean_diff, 0.0, 1e-12);
    }

    #[test]
    fn the_area_under_a_budget_curve_is_normalised() {
        // A flat curve's area is its value; a line from 0 to 1 has half.
        close(aubc(&[(10.0, 0.8), (30.0, 0.8), (50.0, 0.8)]), 0.8, 1e-12);
        close(aubc(&[(50.0, 1.0), (10.0, 0.0)]), 0.5, 1e-12);
        // Unequal steps weigh by their width.
        close(
            aubc(&[(0.0, 0.0), (10.0, 1.0), (40.0, 1.0)]),
            35.0 / 40.0,
            1e-12,
        );
        close(aubc(&[(5.0, 0.6)]), 0.6, 1e-12);
    }
}
