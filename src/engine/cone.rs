//! The paper's gradient-guided cone search in latent space: each labelled sample's direction
//! `z' − z` points into a cone, and the unlabelled sample nearest to `z'` inside it is picked.
//! When a cone holds no candidate, a policy (`ConeFallback`) says what is taken instead.

#[cfg(test)]
use std::collections::HashSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::select::Pick;

/// What `proposed` takes when the cone around a direction holds no candidate (or the
/// direction is zero). Each such pick counts as a fallback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConeFallback {
    /// The nearest candidate to z' (in effect often a near-copy of the labelled sample).
    #[default]
    Nearest,
    /// The cone opened by `WIDEN_STEP_DEGREES` at a time until it holds a candidate; the one
    /// nearest to z' in the first cone that does.
    Widen,
    /// A uniformly random candidate (seeded).
    Random,
}

crate::display_as_serde!(ConeFallback);

/// How far `widen` opens the cone per step, degrees.
pub const WIDEN_STEP_DEGREES: f64 = 5.0;

/// Result of one cone search.
#[derive(Debug, Clone, PartialEq)]
pub struct ConePick {
    pub sample: usize,
    pub distance: f64,
    /// None when the angle is undefined (zero direction or a candidate at z itself).
    pub angle_deg: Option<f64>,
    pub fallback: bool,
}

/// One search (the `nearest` policy): among `candidates` not in `taken`, the one nearest to
/// `z' = z + d` inside the cone of half-angle θ around `d` (cos∠(z_j − z, d) ≥ cos θ); when the cone is empty (or `d` is 0),
/// the nearest candidate to z' (a counted fallback). Ties go to the lower sample index.
#[cfg(test)]
fn cone_search(
    z: &[f64],
    d: &[f64],
    candidates: &[(usize, Vec<f64>)],
    degrees: f64,
    taken: &HashSet<usize>,
) -> Option<ConePick> {
    let flat = Candidates::new(candidates);
    let taken: Vec<bool> = flat.ids.iter().map(|i| taken.contains(i)).collect();
    let cone = Cone::new(degrees);
    let avoided = vec![false; taken.len()];
    let marks = Marks {
        taken: &taken,
        avoided: &avoided,
    };
    flat.search(z, d, &cone, marks, &mut Fallback::Nearest)
        .map(|(c, _)| c)
}

/// A cone's half-angle, as the cosine the search compares with.
struct Cone {
    degrees: f64,
    cos: f64,
}

impl Cone {
    fn new(degrees: f64) -> Cone {
        Cone {
            degrees,
            cos: degrees.to_radians().cos(),
        }
    }

    /// The widening step whose cone first holds a direction at `cos` to `d` (0: this cone).
    fn widening(&self, cos: f64) -> u32 {
        let angle = cos.clamp(-1.0, 1.0).acos().to_degrees();
        ((angle - self.degrees) / WIDEN_STEP_DEGREES)
            .ceil()
            .max(0.0) as u32
    }
}

/// A fallback policy with what it needs (the random draw's generator).
enum Fallback<'a> {
    Nearest,
    Widen,
    Random(&'a mut ChaCha8Rng),
}

/// Per candidate position: picked already, or avoided by the spacing rule (select::Spacing).
#[derive(Clone, Copy)]
struct Marks<'a> {
    taken: &'a [bool],
    avoided: &'a [bool],
}

/// Candidate latents in one flat row-major array: the search over tens of thousands of them
/// runs without allocating and reads memory in order.
struct Candidates {
    ids: Vec<usize>,
    z: Vec<f64>,
    dim: usize,
}

impl Candidates {
    fn new(candidates: &[(usize, Vec<f64>)]) -> Candidates {
        let dim = candidates.first().map_or(0, |c| c.1.len());
        Candidates {
            ids: candidates.iter().map(|c| c.0).collect(),
            z: candidates
                .iter()
                .flat_map(|c| c.1.iter().copied())
                .collect(),
            dim,
        }
    }

    /// [`cone_search`] over the candidates not `taken`, with `fallback` for an empty cone;
    /// also returns the pick's position. A candidate marked `avoided` is taken only where no
    /// other one would be: in the cone, in the fallback, and in the random draw alike.
    fn search(
        &self,
        z: &[f64],
        d: &[f64],
        cone: &Cone,
        marks: Marks,
        fallback: &mut Fallback,
    ) -> Option<(ConePick, usize)> {
        let Marks { taken, avoided } = marks;
        let dn = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        // (avoided, squared distance to z', sample id, position) of the best in the cone and
        // overall; for `widen`, the best of the narrowest widened cone that holds one.
        type Best = Option<(bool, f64, usize, usize)>;
        let mut best_in: Best = None;
        let mut best_any: Best = None;
        let mut best_widened: Option<(bool, u32, f64, usize, usize)> = None;
        let better = |b: &Best, av: bool, dd: f64, id: usize| {
            b.is_none_or(|(bav, bd, bid, _)| {
                (!av && bav) || (av == bav && (dd < bd || (dd == bd && id < bid)))
            })
        };
        let widen = matches!(fallback, Fallback::Widen);
        let (mut free, mut open) = (0, 0);
        for (pos, zj) in self.z.chunks_exact(self.dim.max(1)).enumerate() {
            if taken[pos] {
                continue;
            }
            free += 1;
            let av = avoided[pos];
            open += usize::from(!av);
            let (mut vv, mut vd, mut dd) = (0.0, 0.0, 0.0);
            for k in 0..self.dim {
                let v = zj[k] - z[k];
                let e = v - d[k]; // z_j − z'
                vv += v * v;
                vd += v * d[k];
                dd += e * e;
            }
            let id = self.ids[pos];
            let defined = dn > 0.0 && vv > 0.0;
            let cos = if defined { vd / (vv.sqrt() * dn) } else { -1.0 };
            if defined && cos >= cone.cos && better(&best_in, av, dd, id) {
                best_in = Some((av, dd, id, pos));
            }
            if better(&best_any, av, dd, id) {
                best_any = Some((av, dd, id, pos));
            }
            if widen && best_in.is_none() && defined {
                let w = cone.widening(cos);
                if best_widened
                    .is_none_or(|(bav, bw, bd, bid, _)| (av, w, dd, id) < (bav, bw, bd, bid))
                {
                    best_widened = Some((av, w, dd, id, pos));
                }
            }
        }
        let plain = |b: Best| b.map(|(_, dd, id, pos)| (dd, id, pos));
        let chosen = match (plain(best_in), &mut *fallback) {
            (Some(b), _) => Some((false, b)),
            (None, Fallback::Nearest) => plain(best_any).map(|b| (true, b)),
            (None, Fallback::Widen) => best_widened
                .map(|(_, _, dd, id, pos)| (dd, id, pos))
                .or(plain(best_any))
                .map(|b| (true, b)),
            (None, Fallback::Random(rng)) if free > 0 => {
                // Among the candidates not avoided while there are any.
                let pool = if open > 0 { open } else { free };
                let nth = rng.random_range(0..pool);
                let pos = (0..taken.len())
                    .filter(|&p| !taken[p] && (open == 0 || !avoided[p]))
                    .nth(nth)?;
                let zj = &self.z[pos * self.dim..(pos + 1) * self.dim];
                let dd = zj
                    .iter()
                    .zip(z.iter().zip(d))
                    .map(|(a, (b, c))| (a - b - c).powi(2))
                    .sum();
                Some((true, (dd, self.ids[pos], pos)))
            }
            (None, Fallback::Random(_)) => None,
        };
        let (fallback, (dd, sample, pos)) = chosen?;
        let zj = &self.z[pos * self.dim..(pos + 1) * self.dim];
        let v: Vec<f64> = zj.iter().zip(z).map(|(a, b)| a - b).collect();
        let vn = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let angle_deg = (dn > 0.0 && vn > 0.0).then(|| {
            let cos = v.iter().zip(d).map(|(a, b)| a * b).sum::<f64>() / (vn * dn);
            cos.clamp(-1.0, 1.0).acos().to_degrees()
        });
        let pick = ConePick {
            sample,
            distance: dd.sqrt(),
            angle_deg,
            fallback,
        };
        Some((pick, pos))
    }
}

/// A labelled sample's latent position and gradient direction.
#[derive(Debug, Clone)]
pub struct Source {
    pub sample: usize,
    pub z: Vec<f64>,
    pub direction: Vec<f64>,
}

/// How `pick_proposed` searches: the cone's half-angle and what an empty cone gives.
pub struct ConeSettings<'a> {
    pub degrees: f64,
    pub fallback: ConeFallback,
    /// Draws the `random` fallback's picks.
    pub rng: &'a mut ChaCha8Rng,
    /// What a pick rules out for the rest of the round (its context slices).
    pub near: super::select::Near<'a>,
}

/// `k` distinct picks: the sources take turns (in the given order, cycling when k exceeds
/// their number), each taking the best unpicked candidate of its cone.
pub fn pick_proposed(
    sources: &[Source],
    candidates: &[(usize, Vec<f64>)],
    k: usize,
    settings: ConeSettings,
) -> Vec<Pick> {
    let cone = Cone::new(settings.degrees);
    let mut fallback = match settings.fallback {
        ConeFallback::Nearest => Fallback::Nearest,
        ConeFallback::Widen => Fallback::Widen,
        ConeFallback::Random => Fallback::Random(settings.rng),
    };
    let flat = Candidates::new(candidates);
    let mut taken = vec![false; flat.ids.len()];
    let position: std::collections::HashMap<usize, usize> =
        flat.ids.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    // Avoided by the spacing rule while other candidates are left (select::Spacing).
    let mut avoided = vec![false; flat.ids.len()];
    if let Some(rule) = settings.near {
        for s in &rule.seen {
            if let Some(&i) = position.get(s) {
                avoided[i] = true;
            }
        }
    }
    let mut picks = Vec::new();
    if sources.is_empty() {
        return picks;
    }
    for s in sources.iter().cycle() {
        if picks.len() >= k {
            break;
        }
        let marks = Marks {
            taken: &taken,
            avoided: &avoided,
        };
        let found = flat.search(&s.z, &s.direction, &cone, marks, &mut fallback);
        let Some((c, pos)) = found else {
            break; // no candidates left
        };
        taken[pos] = true;
        for n in settings
            .near
            .map_or_else(Vec::new, |rule| (rule.near)(c.sample))
        {
            if let Some(&i) = position.get(&n) {
                avoided[i] = true;
            }
        }
        picks.push(Pick {
            sample: c.sample,
            source: Some(s.sample),
            distance: Some(c.distance),
            angle_deg: c.angle_deg,
            fallback: c.fallback,
            score: None,
        });
    }
    picks
}

#[cfg(test)]
mod tests {
    use super::super::select;
    use super::*;

    fn cands(v: &[(usize, [f64; 2])]) -> Vec<(usize, Vec<f64>)> {
        v.iter().map(|(i, z)| (*i, z.to_vec())).collect()
    }

    #[test]
    fn cone_search_prefers_the_cone_over_nearer_samples_outside_it() {
        let c = cands(&[(1, [-0.1, 0.0]), (2, [1.0, 0.2]), (3, [0.0, 1.0])]);
        let r = cone_search(&[0.0, 0.0], &[0.01, 0.0], &c, 45.0, &HashSet::new()).unwrap();
        assert_eq!(r.sample, 2);
        assert!(!r.fallback);
        assert!(r.angle_deg.unwrap() < 12.0);
    }

    #[test]
    fn empty_cone_falls_back_to_the_nearest_and_says_so() {
        let c = cands(&[(1, [-0.1, 0.0]), (3, [0.0, 1.0])]);
        let r = cone_search(&[0.0, 0.0], &[0.01, 0.0], &c, 45.0, &HashSet::new()).unwrap();
        assert_eq!((r.sample, r.fallback), (1, true));
        // A zero direction has no cone at all.
        let r = cone_search(&[0.0, 0.0], &[0.0, 0.0], &c, 60.0, &HashSet::new()).unwrap();
        assert_eq!((r.sample, r.fallback, r.angle_deg), (1, true, None));
    }

    /// The spacing rule prefers a candidate it does not avoid, in the cone first; an avoided
    /// one in the cone still beats a fallback outside it (no fallback is counted), and a
    /// pick's neighbours are avoided for the picks after it.
    #[test]
    fn avoided_candidates_come_after_the_others_but_before_a_fallback() {
        let src = |s| Source {
            sample: s,
            z: vec![0.0, 0.0],
            direction: vec![1.0, 0.0],
        };
        // 1 and 2 in the cone (1 nearer to z'), 3 outside it.
        let c = cands(&[(1, [1.0, 0.1]), (2, [2.0, 0.2]), (3, [0.0, -1.0])]);
        let near = |s: usize| vec![s + 1];
        let pick = |seen: &[usize], k| {
            let rule = select::Spacing {
                near: &near,
                seen: seen.iter().copied().collect(),
            };
            let mut s = settings(30.0, ConeFallback::Nearest);
            s.near = Some(&rule);
            pick_proposed(&[src(100)], &c, k, s)
                .iter()
                .map(|p| (p.sample, p.fallback))
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(&[], 1), [(1, false)]);
        assert_eq!(
            pick(&[1], 1),
            [(2, false)],
            "1 was seen: 2, also in the cone"
        );
        assert_eq!(
            pick(&[1, 2], 1),
            [(1, false)],
            "only avoided ones in the cone"
        );
        // After 1, its neighbour 2 is avoided: the cone holds no other, so 2 comes next but is
        // still no fallback; then 3, outside the cone, is one.
        assert_eq!(pick(&[], 3), [(1, false), (2, false), (3, true)]);
    }

    #[test]
    fn ties_go_to_the_lower_index_and_nothing_is_picked_twice() {
        let c = cands(&[(7, [1.0, 1.0]), (4, [1.0, -1.0]), (9, [2.0, 0.0])]);
        let src = |s| Source {
            sample: s,
            z: vec![0.0, 0.0],
            direction: vec![1.0, 0.0],
        };
        let picks = pick_proposed(
            &[src(100), src(101)],
            &c,
            3,
            settings(60.0, ConeFallback::Nearest),
        );
        let got: Vec<usize> = picks.iter().map(|p| p.sample).collect();
        assert_eq!(got, [4, 7, 9]);
        assert_eq!(picks[0].source, Some(100));
        assert_eq!(picks[1].source, Some(101));
        assert!(picks.iter().all(|p| !p.fallback));
        // More picks than candidates: stops when the pool is exhausted.
        let all = pick_proposed(&[src(100)], &c, 10, settings(60.0, ConeFallback::Nearest));
        assert_eq!(all.len(), 3);
    }

    fn settings(degrees: f64, fallback: ConeFallback) -> ConeSettings<'static> {
        use rand::SeedableRng;
        let rng = Box::leak(Box::new(ChaCha8Rng::seed_from_u64(7)));
        ConeSettings {
            degrees,
            fallback,
            rng,
            near: None,
        }
    }

    /// From z = 0 along +x with a 10° cone, which is empty: 1 is nearest to z' (at −45°), 2
    /// lies at 26.6° (inside the cone widened four times, to 30°), 3 at 45°.
    #[test]
    fn an_empty_cone_gives_what_the_policy_says() {
        let c = cands(&[(1, [0.9, -0.9]), (2, [2.0, 1.0]), (3, [1.0, 1.0])]);
        let src = Source {
            sample: 100,
            z: vec![0.0, 0.0],
            direction: vec![1.0, 0.0],
        };
        let one = |fallback| {
            pick_proposed(std::slice::from_ref(&src), &c, 1, settings(10.0, fallback))[0].clone()
        };
        let nearest = one(ConeFallback::Nearest);
        assert_eq!((nearest.sample, nearest.fallback), (1, true));
        let widened = one(ConeFallback::Widen);
        assert_eq!((widened.sample, widened.fallback), (2, true));
        assert!((widened.angle_deg.unwrap() - 26.565).abs() < 1e-3);
        // Random: every candidate turns up over draws, each marked as a fallback.
        let mut rng = {
            use rand::SeedableRng;
            ChaCha8Rng::seed_from_u64(1)
        };
        let mut seen = HashSet::new();
        for _ in 0..40 {
            let s = ConeSettings {
                degrees: 10.0,
                fallback: ConeFallback::Random,
                rng: &mut rng,
                near: None,
            };
            let p = pick_proposed(std::slice::from_ref(&src), &c, 1, s)[0].clone();
            assert!(p.fallback);
            seen.insert(p.sample);
        }
        assert_eq!(seen.len(), 3);
        // A cone that holds a candidate is no fallback, whatever the policy.
        for fallback in [
            ConeFallback::Nearest,
            ConeFallback::Widen,
            ConeFallback::Random,
        ] {
            let p = pick_proposed(std::slice::from_ref(&src), &c, 1, settings(30.0, fallback))[0]
                .clone();
            assert_eq!((p.sample, p.fallback), (2, false), "{fallback}");
        }
    }
}
