//! The engine on tiny phantoms (CPU): every strategy × granularity × scenario end to end, the
//! gradient step, the direction's numerics, and the oracle's choice.

mod common;

use std::collections::HashSet;

use common::*;
use suggestive::data::Dataset;
use suggestive::engine::batch::{self, Feed};
use suggestive::engine::eval;
use suggestive::engine::manifold::{best_epoch, plateaued};
use suggestive::engine::nets::{dice_loss, UNet, UNetConfig, Vae, VaeConfig};
use suggestive::engine::select::{
    gradient_direction, gradient_directions, DirectionNets, StepSettings,
};
use suggestive::phantom::{PhantomConfig, PhantomLayout};
use suggestive::session::config::{Arm, DirectionMethod, Granularity, Scenario};
use suggestive::session::run::Runner;
use suggestive::session::Session;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Checks a finished session's records: every arm evaluated after every round, picks distinct
/// and new, Dice in range, a HD95 per test case; the full-data reference once, on the whole
/// pool; the manifold's statistics.
fn check_records(s: &Session, per_round: usize) {
    let cfg = &s.config;
    let arms = &cfg.experiment.strategies();
    let rounds = cfg.experiment.rounds;
    let full = usize::from(cfg.experiment.has_full());
    assert_eq!(s.state.results.len(), arms.len() * (rounds + 1) + full);
    let rd = &s.state.repeats[0];
    for r in &s.state.results {
        assert!(
            (0.0..=1.0).contains(&r.dice_mean) && (0.0..=1.0).contains(&r.slice_dice_mean),
            "{r:?}"
        );
        assert_eq!(r.hd95.len(), rd.test.len());
        assert_eq!(rd.test_cases.len(), rd.test.len());
        for (h, d) in r.hd95.iter().zip(&r.dice) {
            // A perfect overlap is 0 mm apart; any HD95 is finite and non-negative.
            assert!(h.is_none_or(|h| h.is_finite() && h >= 0.0 && (*d < 1.0 || h == 0.0)));
        }
        if r.arm == Arm::Full {
            assert_eq!(r.round, 0);
            assert_eq!(r.annotated, rd.order.len(), "full trains on the whole pool");
        } else {
            assert_eq!(r.annotated, cfg.experiment.initial + r.round * per_round);
        }
        assert!(r.viewed >= r.annotated);
    }
    let m = rd.manifold.as_ref().expect("manifold statistics");
    assert_eq!(m.kl_per_dim.len(), cfg.vae.latent as usize);
    assert!(m.active_dims <= m.kl_per_dim.len());
    assert!(m.recon_mse >= 0.0 && m.mean_image_mse > 0.0 && m.variance_explained <= 1.0);
    let order = &s.state.repeats[0].order;
    let initial: HashSet<usize> = order[..cfg.experiment.initial].iter().copied().collect();
    for &arm in arms {
        let mut seen = initial.clone();
        for k in 1..=rounds {
            let rec = s
                .state
                .picks
                .iter()
                .find(|p| p.arm == arm && p.round == k)
                .expect("picks recorded");
            assert_eq!(rec.picks.len(), per_round);
            // Image-wise (selection.avoid_context in the preset) a pick next to a slice labelled
            // before it or picked in its round is counted, and avoided while others are left.
            // A patient's slices are consecutive pool samples, so a neighbour is one sample
            // away.
            let image = cfg.experiment.granularity == Granularity::Image;
            let mut next_to = 0;
            for p in &rec.picks {
                if seen.contains(&(p.sample + 1)) || seen.contains(&p.sample.wrapping_sub(1)) {
                    next_to += 1;
                }
                assert!(
                    seen.insert(p.sample),
                    "{arm} picked sample {} twice (or from the labelled set)",
                    p.sample
                );
            }
            if image {
                assert_eq!(rec.context_picks, Some(next_to), "{arm} round {k}");
                // Random, entropy and coreset choose from the whole pool; the oracle ranks only
                // slices with tumour, and proposed takes an avoided slice in its cone before a
                // fallback outside it.
                if ![Arm::Oracle, Arm::Proposed].contains(&arm) {
                    assert_eq!(
                        next_to, 0,
                        "{arm} round {k} picked next to a labelled slice"
                    );
                }
            } else {
                assert_eq!(rec.context_picks, None);
            }
            if arm == Arm::Proposed {
                let d = rec.directions.as_ref().expect("direction summary");
                // One direction per labelled sample that shows brain (image-wise, a slice
                // outside the brain is no source).
                let labelled = cfg.experiment.initial + (k - 1) * per_round;
                let directions = d.methods.values().sum::<usize>();
                match cfg.experiment.granularity {
                    Granularity::Patient => assert_eq!(directions, labelled),
                    Granularity::Image => assert!(0 < directions && directions <= labelled),
                }
                assert!(rec
                    .picks
                    .iter()
                    .all(|p| p.source.is_some() && p.distance.is_some()));
            }
        }
    }
}

#[test]
fn patient_wise_from_scratch_runs_and_the_oracle_picks_the_worst() {
    let tmp = tempfile::tempdir().unwrap();
    let s = run_to_end(tmp.path(), &[ALL_ARMS]);
    assert_eq!(s.config.experiment.granularity, Granularity::Patient);
    check_records(&s, 1);
    // Arms share the initial model: identical round-0 results.
    let r0: Vec<_> = s
        .state
        .results
        .iter()
        .filter(|r| r.round == 0 && r.arm != Arm::Full)
        .map(|r| (r.dice_mean, r.dice.clone()))
        .collect();
    assert!(r0.windows(2).all(|w| w[0] == w[1]));

    // The oracle's first pick is the unlabelled training patient on which the initial model
    // scores the lowest Dice.
    let (ds, _) = Dataset::load(&tmp.path().join("data"), &{
        let mut o = opts(&tmp.path().join("cache"));
        o.preprocessing = s.config.dataset.preprocessing();
        o
    })
    .unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let net = UNet::new(&vs.root(), ds.channels() as i64, &s.config.unet.net());
    let init = suggestive::session::plan::Step::Init {
        repeat: 0,
        stage: 0,
    };
    vs.load(s.files().checkpoint(&init)).unwrap();
    let rd = &s.state.repeats[0];
    let labelled: HashSet<usize> = rd.order[..2].iter().copied().collect();
    let candidates: Vec<usize> = (0..rd.train.len())
        .filter(|i| !labelled.contains(i))
        .collect();
    let patients: Vec<usize> = candidates.iter().map(|&i| rd.train[i]).collect();
    let dice = eval::patient_dice(&net, &ds, &patients, &Feed::host(Device::Cpu), 16);
    // All patients go through one batched pass; each patient's slices are its own (the mask
    // counts say whose slices they are; the Dice agrees with the patient scored alone).
    let host = Feed::host(Device::Cpu);
    let together = eval::patient_slice_overlaps(&net, &ds, &patients, &host, 16);
    for ((p, d), ov) in patients.iter().zip(&dice).zip(&together) {
        let alone = eval::patient_slice_overlaps(&net, &ds, &[*p], &host, 16).remove(0);
        let truth = |v: &[eval::Overlap]| v.iter().map(|o| o.truth).collect::<Vec<_>>();
        assert_eq!(truth(ov), truth(&alone), "patient {p}: slices mixed up");
        assert!(
            truth(&alone).iter().any(|&t| t > 0),
            "patient {p} has tumour"
        );
        let d_alone = eval::Overlap::total(&alone).dice();
        assert!(
            (d_alone - d).abs() < 1e-9,
            "patient {p}: {d_alone} alone, {d} with the others"
        );
    }
    let worst = candidates
        .iter()
        .zip(&dice)
        .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)))
        .unwrap();
    let oracle = s
        .state
        .picks
        .iter()
        .find(|p| p.arm == Arm::Oracle && p.round == 1)
        .unwrap();
    assert_eq!(
        oracle.picks[0].sample, *worst.0,
        "oracle did not pick the worst patient: dice {dice:?}"
    );
    assert!((oracle.picks[0].score.unwrap() - worst.1).abs() < 1e-9);

    // The entropy arm's first pick is the patient whose prediction is the least certain: the
    // highest mean binary entropy over the brain, its slices pooled.
    let entropy: Vec<f64> = patients
        .iter()
        .map(|&p| {
            let slices: Vec<usize> = ds.patients()[p].slice_range().collect();
            let (h, n) = eval::slice_entropies(&net, &ds, &slices, &host, 16)
                .iter()
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
            h / n
        })
        .collect();
    assert!(entropy
        .iter()
        .all(|&h| h > 0.0 && h <= std::f64::consts::LN_2));
    let most = candidates
        .iter()
        .zip(&entropy)
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)))
        .unwrap();
    let picked = s
        .state
        .picks
        .iter()
        .find(|p| p.arm == Arm::Entropy && p.round == 1)
        .unwrap();
    assert_eq!(picked.picks[0].sample, *most.0, "entropy {entropy:?}");
    // (The run scores with batch norm folded into the convolutions: the last digits differ.)
    assert!((picked.picks[0].score.unwrap() - most.1).abs() < 1e-5 * most.1);

    // The coreset arm's first pick is the unlabelled patient farthest (in the VAE's latent
    // space, its slices' mean) from every labelled one.
    let pool = suggestive::session::pool::Pool::new(&ds, rd, Granularity::Patient);
    let z = pool.sample_latents(&s.files().latents(0)).unwrap();
    let gap = |c: usize| {
        labelled
            .iter()
            .map(|&l| {
                z[c].iter()
                    .zip(&z[l])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let farthest = candidates
        .iter()
        .copied()
        .max_by(|&a, &b| gap(a).total_cmp(&gap(b)).then(b.cmp(&a)))
        .unwrap();
    let coreset = s
        .state
        .picks
        .iter()
        .find(|p| p.arm == Arm::Coreset && p.round == 1)
        .unwrap();
    assert_eq!(coreset.picks[0].sample, farthest);

    // The manifold's mean-image error, recomputed from the cached pool slices.
    let slices = pool.slices();
    let n = ds.image(slices[0]).len();
    let mut mean = vec![0.0f64; n];
    for &i in slices {
        for (m, v) in mean.iter_mut().zip(ds.image(i)) {
            *m += v.to_f64() / slices.len() as f64;
        }
    }
    let spread: f64 = slices
        .iter()
        .map(|&i| {
            ds.image(i)
                .iter()
                .zip(&mean)
                .map(|(v, m)| (v.to_f64() - m).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / (slices.len() * n) as f64;
    let m = rd.manifold.as_ref().unwrap();
    assert!(
        (m.mean_image_mse - spread).abs() < 1e-6 * spread,
        "{} vs {spread}",
        m.mean_image_mse
    );
}

/// Every arm, so that each runs under every granularity, scenario and protocol below.
const ALL_ARMS: &str =
    "experiment.arms=[\"random\", \"proposed\", \"oracle\", \"entropy\", \"coreset\", \"full\"]";

#[test]
fn image_wise_from_scratch_counts_views_and_tumour_picks() {
    let tmp = tempfile::tempdir().unwrap();
    let s = run_to_end(
        tmp.path(),
        &[
            "experiment.granularity=\"image\"",
            "experiment.initial=12",
            "experiment.per_round=6",
            ALL_ARMS,
        ],
    );
    assert_eq!(s.config.experiment.granularity, Granularity::Image);
    check_records(&s, 6);
    // Context slices: annotators see more slices than they annotate.
    assert!(s.state.results.iter().any(|r| r.viewed > r.annotated));
    // The image-wise oracle only ranks slices that contain tumour.
    for rec in s.state.picks.iter().filter(|p| p.arm == Arm::Oracle) {
        assert_eq!(rec.tumour_picks, Some(rec.picks.len()), "{rec:?}");
    }
}

#[test]
fn transfer_pretrains_on_the_source_and_tests_on_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    for g in ["patient", "image"] {
        let extra = [
            "experiment.scenario=\"transfer\"".to_string(),
            format!("experiment.granularity=\"{g}\""),
            format!("experiment.initial={}", if g == "image" { 8 } else { 1 }),
            format!("experiment.per_round={}", if g == "image" { 4 } else { 1 }),
            ALL_ARMS.to_string(),
        ];
        let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        let s = run_to_end(tmp.path(), &extra);
        assert_eq!(s.config.experiment.scenario, Scenario::Transfer);
        check_records(&s, if g == "image" { 4 } else { 1 });
        let rd = &s.state.repeats[0];
        // Phantom IDs: P001..P005 are CBICA (indices 0..5), P006..P010 TCIA (5..10).
        assert!(rd.source.iter().all(|&p| p < 5) && rd.source.len() == 5);
        assert!(rd.train.iter().chain(&rd.test).all(|&p| p >= 5));
        let pretrain = suggestive::session::plan::Step::Pretrain { repeat: 0 };
        assert!(s.files().checkpoint(&pretrain).exists());
    }
}

#[test]
fn budgets_protocol_runs_one_stage_per_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let s = run_to_end(
        tmp.path(),
        &[
            "experiment.protocol=\"budgets\"",
            "experiment.budgets=[2, 4]",
            ALL_ARMS,
        ],
    );
    let finals: Vec<(usize, usize)> = s
        .state
        .results
        .iter()
        .filter(|r| r.round == 1)
        .map(|r| (r.stage, r.annotated))
        .collect();
    assert_eq!(finals, [[(0, 2); 5], [(1, 4); 5]].concat());
    // The full-data reference: once, after the last stage, on the whole pool.
    let full: Vec<_> = s
        .state
        .results
        .iter()
        .filter(|r| r.arm == Arm::Full)
        .collect();
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].annotated, s.state.repeats[0].order.len());
}

fn tiny_dataset(tmp: &std::path::Path) -> Dataset {
    let data = tiny_phantom(&tmp.join("d"), &[("CBICA", 2)], PhantomLayout::Brats2019, 8);
    let mut o = opts(&tmp.join("cache"));
    o.preprocessing.downsample = 2;
    Dataset::load(&data, &o).unwrap().0
}

/// A tiny UNet (depth 2, base 4) for 4-channel slices, in `vs`.
fn tiny_unet(vs: &VarStore) -> UNet {
    let cfg = UNetConfig {
        depth: 2,
        base: 4,
        ..Default::default()
    };
    UNet::new(&vs.root(), 4, &cfg)
}

/// Slices of the first patient that contain tumour.
fn tumour_slices(ds: &Dataset) -> Vec<usize> {
    ds.patients()[0]
        .slice_range()
        .filter(|&s| ds.mask(s).iter().any(|&m| m != 0))
        .collect()
}

#[test]
fn the_gradient_step_raises_the_dice_loss_and_leaves_weights_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(tmp.path());
    tch::manual_seed(1);
    let mut vs = VarStore::new(Device::Cpu);
    let net = tiny_unet(&vs);
    vs.double();
    let slices = tumour_slices(&ds);
    let x = batch::images(&ds, &slices, Device::Cpu)
        .to_kind(Kind::Double)
        .set_requires_grad(true);
    let y = batch::masks(&ds, &slices, Device::Cpu).to_kind(Kind::Double);
    let loss = dice_loss(&net.forward_t(&x, false), &y);
    let g = Tensor::run_backward(&[&loss], &[&x], false, false).remove(0);
    assert!(
        vs.trainable_variables().iter().all(|v| !v.grad().defined()),
        "weights got gradients"
    );
    let alpha = 1e-4;
    let _ng = tch::no_grad_guard();
    let moved = dice_loss(&net.forward_t(&(x.detach() + &g * alpha), false), &y).double_value(&[]);
    let before = loss.double_value(&[]);
    assert!(
        moved > before,
        "loss {before} → {moved}: the step did not raise it"
    );
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// A tiny UNet and VAE (with the float64 copy of the VAE) from `seed`, on the CPU.
fn tiny_nets(seed: i64) -> (Vec<VarStore>, UNet, Vae, Vae) {
    tch::manual_seed(seed);
    let vs_u = VarStore::new(Device::Cpu);
    let unet = tiny_unet(&vs_u);
    let vs = VarStore::new(Device::Cpu);
    let cfg = VaeConfig {
        latent: 5,
        base: 4,
        levels: 2,
    };
    let vae = Vae::new(&vs.root(), 4, 32, &cfg);
    let mut vs64 = VarStore::new(Device::Cpu);
    let vae64 = Vae::new(&vs64.root(), 4, 32, &cfg);
    vs64.copy(&vs).unwrap();
    vs64.double();
    (vec![vs_u, vs, vs64], unet, vae, vae64)
}

#[test]
fn the_latent_direction_is_resolved_and_stable_when_the_step_is_halved() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(tmp.path());
    let (_stores, unet, vae, vae64) = tiny_nets(2);
    let slices = tumour_slices(&ds);
    let cpu = Feed::host(Device::Cpu);
    let nets = DirectionNets {
        unet: &unet,
        vae: &vae,
        vae64: &vae64,
    };
    let dir = |alpha: f64, method: DirectionMethod| {
        let step = StepSettings {
            alpha,
            dice_smoothing: 1.0,
            method,
        };
        gradient_direction(&nets, &ds, &cpu, &slices, step).unwrap()
    };

    // α = 1e-4 on z-scored images is below float32 resolution: auto takes float64 and says so.
    let auto = dir(1e-4, DirectionMethod::Auto);
    assert!(
        auto.rel_dx > 0.0 && auto.rel_dx < 1e-6,
        "rel_dx {}",
        auto.rel_dx
    );
    assert_eq!(auto.method, DirectionMethod::Float64);
    assert!(auto.dz_norm > 0.0);
    // Halving the step halves z' − z and keeps its direction.
    let half = dir(5e-5, DirectionMethod::Float64);
    assert!(
        cosine(&auto.direction, &half.direction) > 0.999,
        "{:?} vs {:?}",
        auto.direction,
        half.direction
    );
    assert!((half.dz_norm / auto.dz_norm - 0.5).abs() < 0.01);
    // The central difference agrees with float64.
    let cd = dir(1e-4, DirectionMethod::CentralDifference);
    assert!(
        cosine(&auto.direction, &cd.direction) > 0.95,
        "central difference disagrees: {}",
        cosine(&auto.direction, &cd.direction)
    );
    // Plain float32 at this step is rounding noise (docs/method.md, "Numerical care"): it either
    // vanishes or points elsewhere.
    let f32dir = dir(1e-4, DirectionMethod::Float32);
    assert!(
        f32dir.dz_norm == 0.0 || cosine(&auto.direction, &f32dir.direction) < 0.9,
        "float32 unexpectedly resolved the step"
    );
}

/// The paper's unsmoothed Dice loss gives a tumour-free slice no gradient (its sample falls back,
/// counted as a zero gradient); the +1 of the training loss gives it one. On a slice with tumour
/// the two losses point the same way.
#[test]
fn the_unsmoothed_dice_loss_has_no_gradient_without_tumour() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(tmp.path());
    let (_stores, unet, vae, vae64) = tiny_nets(4);
    let cpu = Feed::host(Device::Cpu);
    let nets = DirectionNets {
        unet: &unet,
        vae: &vae,
        vae64: &vae64,
    };
    let p = &ds.patients()[0];
    let brain_without_tumour = p
        .slice_range()
        .find(|&s| {
            ds.mask(s).iter().all(|&m| m == 0) && ds.image(s).iter().any(|v| v.to_f32() != 0.0)
        })
        .expect("a brain slice without tumour");
    let with_tumour = tumour_slices(&ds)[0];
    let step = |s: usize, dice_smoothing: f64| {
        let settings = StepSettings {
            alpha: 1e-4,
            dice_smoothing,
            method: DirectionMethod::Auto,
        };
        gradient_direction(&nets, &ds, &cpu, &[s], settings).unwrap()
    };
    let (paper, smoothed) = (
        step(brain_without_tumour, 0.0),
        step(brain_without_tumour, 1.0),
    );
    assert_eq!((paper.rel_dx, paper.dz_norm), (0.0, 0.0), "{paper:?}");
    assert!((paper.loss - 1.0).abs() < 1e-9, "loss {}", paper.loss);
    assert!(
        smoothed.rel_dx > 0.0 && smoothed.dz_norm > 0.0,
        "{smoothed:?}"
    );
    let (paper, smoothed) = (step(with_tumour, 0.0), step(with_tumour, 1.0));
    assert!(paper.dz_norm > 0.0);
    let c = cosine(&paper.direction, &smoothed.direction);
    assert!(c > 0.9, "with tumour the losses disagree: cosine {c}");
}

#[test]
fn batched_gradient_directions_equal_one_sample_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(tmp.path());
    let (_stores, unet, vae, vae64) = tiny_nets(3);
    let cpu = Feed::host(Device::Cpu);
    // Samples of different sizes (image- and patient-like), with and without tumour.
    let t = tumour_slices(&ds);
    let all: Vec<usize> = ds.patients()[1].slice_range().collect();
    assert!(all.len() >= 5 && !t.is_empty());
    let samples: Vec<Vec<usize>> = vec![
        vec![t[0]],
        all[0..3].to_vec(),
        vec![all[3]],
        vec![all[4], t[t.len() - 1]],
    ];
    for (alpha, method, dice_smoothing) in [
        (1e-4, DirectionMethod::Float64, 1.0),
        (1e-4, DirectionMethod::CentralDifference, 1.0),
        (1e5, DirectionMethod::Float32, 1.0), // a step float32 resolves
        (1e-4, DirectionMethod::Auto, 1.0),
        (1e-4, DirectionMethod::Auto, 0.0), // the paper's loss: no gradient without tumour
    ] {
        // Batches of up to 4 slices: [s0, s1(3 slices)], [s2, s3] ...
        let nets = DirectionNets {
            unet: &unet,
            vae: &vae,
            vae64: &vae64,
        };
        let step = StepSettings {
            alpha,
            dice_smoothing,
            method,
        };
        let batched = gradient_directions(&nets, &ds, &cpu, &samples, step, 4).unwrap();
        assert_eq!(batched.len(), samples.len());
        for (s, b) in samples.iter().zip(&batched) {
            let one = gradient_direction(&nets, &ds, &cpu, s, step).unwrap();
            assert_eq!(b.method, one.method, "{method:?}");
            assert!((b.loss - one.loss).abs() < 1e-6, "{method:?} loss");
            assert!(
                (b.rel_dx - one.rel_dx).abs() <= 1e-6 * one.rel_dx.abs(),
                "{method:?} rel_dx {} vs {}",
                b.rel_dx,
                one.rel_dx
            );
            if one.dz_norm == 0.0 {
                assert!(b.dz_norm < 1e-12, "{method:?}: {}", b.dz_norm);
            } else {
                assert!(
                    cosine(&b.direction, &one.direction) > 0.999
                        && (b.dz_norm / one.dz_norm - 1.0).abs() < 1e-3,
                    "{method:?}: {:?} vs {:?}",
                    b.direction,
                    one.direction
                );
            }
        }
    }
}

#[test]
fn the_device_resident_pool_gives_the_same_batches_as_the_memory_map() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(tmp.path());
    // Uploading "to the device" works on the CPU too, which checks the gather and the
    // half-precision round trip without a GPU.
    let resident = Feed::resident(&ds, Device::Cpu).unwrap();
    let host = Feed::host(Device::Cpu);
    assert_eq!(resident.describe(), "pool on the device");
    assert_eq!(host.describe(), "host batches");
    let n = ds.num_slices();
    let slices = [n - 1, 0, tumour_slices(&ds)[0], n / 2, n - 1];
    let (a, b) = (resident.images(&ds, &slices), host.images(&ds, &slices));
    assert_eq!(a.size(), b.size());
    assert_eq!(a.kind(), Kind::Float);
    assert!(a.equal(&b), "images differ");
    let (a, b) = (resident.masks(&ds, &slices), host.masks(&ds, &slices));
    assert!(
        a.equal(&b) && b.sum(Kind::Float).double_value(&[]) > 0.0,
        "masks differ"
    );
    // `batch`: the same images and masks, from both feeds (one index for both on the pool).
    for feed in [&resident, &host] {
        let (x, y) = feed.batch(&ds, &slices);
        assert!(x.equal(&host.images(&ds, &slices)), "batch images differ");
        assert!(y.equal(&host.masks(&ds, &slices)), "batch masks differ");
    }
}

#[test]
fn blank_slices_are_scored_with_the_prediction_on_a_zero_image() {
    let tmp = tempfile::tempdir().unwrap();
    // Taller than the tiny phantom, so that slices above and below the head are blank.
    let cfg = PhantomConfig {
        sites: vec![("CBICA".to_string(), 1)],
        shape: [32, 32, 64],
        seed: 5,
        layout: PhantomLayout::Brats2019,
        ..Default::default()
    };
    suggestive::phantom::generate(&cfg, &tmp.path().join("d"), &|| {}).unwrap();
    let (ds, _) = Dataset::load(&tmp.path().join("d"), &opts(&tmp.path().join("cache"))).unwrap();
    let n = ds.num_slices();
    // The cache marks exactly the slices whose image is zero in every channel.
    for s in 0..n {
        let zero = ds.image(s).iter().all(|v| f32::from(*v) == 0.0);
        assert_eq!(ds.is_blank(s), zero, "slice {s}");
    }
    let blank = (0..n).filter(|&s| ds.is_blank(s)).count();
    assert!(blank > 0 && blank < n, "{blank} of {n} slices blank");

    // A UNet whose prediction on a zero image is neither empty nor full. A fresh one gives a
    // zero image a constant output (its convolutions have no bias, batch norm's are 0), so the
    // biases are drawn at random until the output varies over the image (the interior is one
    // value, the zero-padded borders others; a draw whose ReLUs pass nothing stays constant,
    // and the global generator is shared with the tests running beside this one), then the
    // head's bias put halfway between the lowest and the highest logit.
    let vs = VarStore::new(Device::Cpu);
    let net = tiny_unet(&vs);
    let size = ds.size() as i64;
    let zero = Tensor::zeros([1, 4, size, size], (Kind::Float, Device::Cpu));
    let varied = (0..50).any(|_| {
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.ends_with(".bias") {
                    t.copy_(&(t.randn_like() * 0.5));
                }
            }
            let logits = net.forward_t(&zero, false);
            let (lo, hi) = (logits.min(), logits.max());
            if (&hi - &lo).double_value(&[]) < 1e-3 {
                return false;
            }
            let mut bias = vs.variables()["head.bias"].shallow_clone();
            let _ = bias.g_sub_(&((lo + hi) / 2.0));
            true
        })
    });
    assert!(varied, "no draw gave a zero image a varying output");
    // Every slice on its own, the network run on each: what the shortcut must reproduce.
    let one_by_one: Vec<eval::Overlap> = (0..n)
        .map(|s| {
            let _g = tch::no_grad_guard();
            let p = net
                .forward_t(&batch::images(&ds, &[s], Device::Cpu), false)
                .gt(0.0);
            let y = batch::masks(&ds, &[s], Device::Cpu).gt(0.0);
            let count = |t: &Tensor| t.sum(Kind::Int64).int64_value(&[]) as u64;
            eval::Overlap {
                inter: count(&p.logical_and(&y)),
                pred: count(&p),
                truth: count(&y),
            }
        })
        .collect();
    let blank_pred = (0..n).find(|&s| ds.is_blank(s)).map(|s| one_by_one[s].pred);
    assert!(
        blank_pred.is_some_and(|p| p > 0 && p < (size * size) as u64),
        "prediction on a blank slice: {blank_pred:?} pixels"
    );
    // Blank and non-blank slices interleaved, in batches that mix them, in any order.
    let order: Vec<usize> = (0..n).rev().chain(0..n).collect();
    let batched = eval::slice_overlaps(&net, &ds, &order, &Feed::host(Device::Cpu), 5);
    // Blank slices exactly: the zero image goes through the network alone both ways. Others
    // with two pixels of slack in the predicted counts: a convolution may take another
    // algorithm for a batch of 5 than for 1, and a logit within rounding of 0 then flips. The
    // masks' counts are exact, so a slice mixed up with another shows.
    let near = |a: u64, b: u64| a.abs_diff(b) <= 2;
    for (&s, o) in order.iter().zip(&batched) {
        let e = one_by_one[s];
        let same = if ds.is_blank(s) {
            *o == e
        } else {
            o.truth == e.truth && near(o.pred, e.pred) && near(o.inter, e.inter)
        };
        assert!(
            same,
            "slice {s} (blank: {}): {o:?} batched, {e:?} alone",
            ds.is_blank(s)
        );
    }
}

/// The VAE is measured after every epoch on pool patients held out of its training, stops once
/// `patience` epochs bring no lower validation error, and keeps its best epoch: the kept
/// weights give the validation error recorded for that epoch.
#[test]
fn the_vae_stops_on_a_plateau_and_keeps_its_best_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 12;
    let s = run_to_end(
        tmp.path(),
        &[
            "vae.epochs=12",
            "vae.validation=0.2",
            "vae.patience=1",
            "vae.lr=0.05",
        ],
    );
    let curve = &s.state.repeats[0].vae_epochs;
    assert!(!curve.is_empty() && curve.len() < max, "{curve:?}");
    for (i, e) in curve.iter().enumerate() {
        assert_eq!(e.epoch, i + 1);
    }
    assert!(plateaued(curve, 1), "stopped without a plateau: {curve:?}");
    assert!(!plateaued(&curve[..curve.len() - 1], 1), "stopped late");
    let best = best_epoch(curve).expect("a finite validation error");
    let recorded = curve[best - 1].validation_mse;
    let runner = Runner::open(
        Session::open(&s.dir).unwrap(),
        None,
        &tmp.path().join("cache"),
        None,
    )
    .unwrap();
    let kept = runner.measure_vae(0).unwrap();
    assert!(
        (kept.recon_mse - recorded).abs() <= 1e-6 * recorded,
        "kept {} against epoch {best}'s {recorded}",
        kept.recon_mse
    );
}
