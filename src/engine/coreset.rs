//! The diversity baseline: k-center greedy (the core-set approach of Sener and Savarese, 2018)
//! in the VAE's latent space. Each pick is the candidate farthest from everything labelled or
//! picked so far, so the labelled set covers the latent space as evenly as it can.

use super::select::Pick;

/// `k` picks among `candidates` (pool index, latent), starting from the `labelled` latents.
/// Each pick keeps its distance to the nearest centre when it was taken. Ties go to the lower
/// index.
pub fn pick_coreset(
    labelled: &[Vec<f64>],
    candidates: &[(usize, Vec<f64>)],
    k: usize,
    near: super::select::Near,
) -> Vec<Pick> {
    let position: std::collections::HashMap<usize, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (*s, i))
        .collect();
    let squared =
        |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum() };
    // Each candidate's squared distance to its nearest centre (infinite with no centre yet).
    let mut nearest: Vec<f64> = candidates
        .iter()
        .map(|(_, z)| {
            labelled
                .iter()
                .map(|c| squared(z, c))
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let mut taken = vec![false; candidates.len()];
    // Samples the spacing rule avoids while others are left (select::Spacing).
    let mut avoided = vec![false; candidates.len()];
    if let Some(rule) = near {
        for s in &rule.seen {
            if let Some(&i) = position.get(s) {
                avoided[i] = true;
            }
        }
    }
    let mut picks = Vec::with_capacity(k);
    while picks.len() < k {
        let farthest = |open: &dyn Fn(usize) -> bool| {
            (0..candidates.len()).filter(|&i| open(i)).max_by(|&a, &b| {
                nearest[a]
                    .total_cmp(&nearest[b])
                    .then(candidates[b].0.cmp(&candidates[a].0))
            })
        };
        let best = farthest(&|i| !taken[i] && !avoided[i]).or_else(|| farthest(&|i| !taken[i]));
        let Some(best) = best else { break };
        taken[best] = true;
        let (sample, centre) = &candidates[best];
        picks.push(Pick {
            sample: *sample,
            source: None,
            distance: nearest[best].is_finite().then(|| nearest[best].sqrt()),
            angle_deg: None,
            fallback: false,
            score: None,
        });
        // A pick's neighbours are avoided after it (they are its context).
        for n in near.map_or_else(Vec::new, |rule| (rule.near)(*sample)) {
            if let Some(&i) = position.get(&n) {
                avoided[i] = true;
            }
        }
        for (i, (_, z)) in candidates.iter().enumerate() {
            if !taken[i] {
                nearest[i] = nearest[i].min(squared(z, centre));
            }
        }
    }
    picks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pick_is_the_farthest_from_the_centres_so_far() {
        // On a line: labelled at 0; candidates at 1, 2, 10, 6, 9.
        let cands: Vec<(usize, Vec<f64>)> = [1.0, 2.0, 10.0, 6.0, 9.0]
            .iter()
            .enumerate()
            .map(|(i, &x)| (i, vec![x]))
            .collect();
        let p = pick_coreset(&[vec![0.0]], &cands, 3, None);
        let got: Vec<(usize, f64)> = p.iter().map(|p| (p.sample, p.distance.unwrap())).collect();
        // 10 first (10 from 0), then 6 (4 from 10), then 2 (2 from 0; 1 and 9 are 1 from a
        // centre).
        assert_eq!(got, [(2, 10.0), (3, 4.0), (1, 2.0)]);
        // Ties go to the lower index; more picks than candidates stop at the candidates.
        let twins = vec![(5, vec![1.0]), (4, vec![-1.0])];
        let p = pick_coreset(&[vec![0.0]], &twins, 9, None);
        let got: Vec<usize> = p.iter().map(|p| p.sample).collect();
        assert_eq!(got, [4, 5]);
    }
}
