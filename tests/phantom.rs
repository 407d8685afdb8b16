//! The phantom generator: reproducible bytes, BraTS labels and grades, hard cases, distractors,
//! and a real acquisition shift between sites.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::*;
use suggestive::data::{Dataset, Modality, Preprocessing};
use suggestive::phantom::{draw_cases, Hardness, PhantomConfig, PhantomLayout};

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tiny_phantom(
        &tmp.path().join("a"),
        &[("CBICA", 2), ("TCIA", 1)],
        PhantomLayout::Brats2019,
        9,
    );
    let b = tiny_phantom(
        &tmp.path().join("b"),
        &[("CBICA", 2), ("TCIA", 1)],
        PhantomLayout::Brats2019,
        9,
    );
    let c = tiny_phantom(
        &tmp.path().join("c"),
        &[("CBICA", 2), ("TCIA", 1)],
        PhantomLayout::Brats2019,
        10,
    );
    let files: Vec<_> = tree(&a).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(files.len(), 3 * 5 + 2, "{files:?}"); // + name_mapping.csv + phantom.json
    for f in &files {
        let rel = f.strip_prefix(&a).unwrap();
        assert_eq!(
            fs::read(f).unwrap(),
            fs::read(b.join(rel)).unwrap(),
            "{} differs between runs",
            rel.display()
        );
    }
    // Another seed: every volume differs (grades may differ too, so find files by ID).
    for id in [
        "BraTS19_CBICA_P001_1",
        "BraTS19_CBICA_P002_1",
        "BraTS19_TCIA01_P003_1",
    ] {
        for m in ["flair", "t1", "t1ce", "t2", "seg"] {
            let (x, y) = (patient_file(&a, id, m), patient_file(&c, id, m));
            assert_ne!(
                fs::read(x).unwrap(),
                fs::read(y).unwrap(),
                "{id} {m} unchanged by the seed"
            );
        }
    }
}

#[test]
fn labels_grades_and_hard_cases_are_as_in_brats() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny_phantom(
        &tmp.path().join("d"),
        &[("CBICA", 6), ("TCIA", 6)],
        PhantomLayout::Brats2019,
        5,
    );
    let (ds, _) = Dataset::load(&root, &opts(&tmp.path().join("cache"))).unwrap();
    let mut saw_enhancing = false;
    for p in ds.patients() {
        let [core, edema, enhancing] = p.stats.label_voxels;
        assert!(core + enhancing > 0, "{}: no tumour core", p.id);
        assert!(edema > 0, "{}: no edema", p.id);
        match p.grade.as_deref() {
            Some("LGG") => assert_eq!(enhancing, 0, "{}: low grade with enhancement", p.id),
            Some("HGG") => saw_enhancing |= enhancing > 0,
            g => panic!("{}: grade {g:?}", p.id),
        }
    }
    assert!(saw_enhancing, "no high-grade case has an enhancing rim");

    // A quarter of cases are hard, of all four kinds; sizes span small to large.
    let cfg = PhantomConfig {
        sites: vec![("CBICA".into(), 100), ("TCIA".into(), 100)],
        ..Default::default()
    };
    let cases = draw_cases(&cfg);
    let hard: Vec<_> = cases
        .iter()
        .filter(|c| c.hardness != Hardness::Normal)
        .collect();
    assert!(
        (30..=70).contains(&hard.len()),
        "{} hard cases of 200",
        hard.len()
    );
    let kinds: BTreeSet<String> = hard.iter().map(|c| format!("{:?}", c.hardness)).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(hard
        .iter()
        .filter(|c| c.hardness == Hardness::Multifocal)
        .all(|c| c.lesions.len() >= 2));
    let radii: Vec<f32> = cases
        .iter()
        .flat_map(|c| c.lesions.iter().map(|l| l.radius[1]))
        .collect();
    let (lo, hi) = radii
        .iter()
        .fold((f32::MAX, 0f32), |(a, b), &r| (a.min(r), b.max(r)));
    assert!(lo < 0.05 && hi > 0.2, "core radii only span {lo}..{hi}");
    assert!(cases.iter().all(|c| c.vessels >= 3));
    let lgg = cases.iter().filter(|c| c.grade == "LGG").count();
    assert!((25..=80).contains(&lgg), "{lgg} low-grade cases of 200");
}

#[test]
fn vessel_distractors_enhance_like_tumour() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny_phantom(
        &tmp.path().join("d"),
        &[("CBICA", 3)],
        PhantomLayout::Brats2019,
        2,
    );
    for id in [
        "BraTS19_CBICA_P001_1",
        "BraTS19_CBICA_P002_1",
        "BraTS19_CBICA_P003_1",
    ] {
        let (t1ce, _) = read(&patient_file(&root, id, "t1ce"));
        let (seg, _) = read(&patient_file(&root, id, "seg"));
        let (t1, _) = read(&patient_file(&root, id, "t1"));
        // Normal white matter is the brightest normal tissue on T1; a voxel outside the tumour
        // that is much brighter on T1ce than anything on T1 is an enhancing mimic.
        let t1_max = t1.iter().cloned().fold(0.0, f32::max);
        let mimics = t1ce
            .iter()
            .zip(&seg)
            .filter(|(&v, &s)| s == 0.0 && v > 1.2 * t1_max)
            .count();
        assert!(
            mimics > 0,
            "{id}: no enhancing distractor outside the tumour"
        );
    }
}

/// Best single FLAIR threshold for whole tumour on z-scored slices: (threshold, Dice).
fn dice_at(ds: &Dataset, t: f32) -> f64 {
    let (mut inter, mut sum) = (0u64, 0u64);
    let plane = ds.size() * ds.size();
    for s in 0..ds.num_slices() {
        let flair = &ds.image(s)[..plane];
        for (v, &m) in flair.iter().zip(ds.mask(s)) {
            let pred = v.to_f32() > t;
            inter += (pred && m == 1) as u64;
            sum += pred as u64 + m as u64;
        }
    }
    2.0 * inter as f64 / sum.max(1) as f64
}

#[test]
fn a_model_tuned_on_one_site_loses_accuracy_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let cbica = tiny_phantom(
        &tmp.path().join("cbica"),
        &[("CBICA", 6)],
        PhantomLayout::Brats2019,
        11,
    );
    let tcia = tiny_phantom(
        &tmp.path().join("tcia"),
        &[("TCIA", 6)],
        PhantomLayout::Brats2019,
        11,
    );
    let mut o = opts(&tmp.path().join("cache"));
    o.preprocessing = Preprocessing {
        modalities: vec![Modality::Flair],
        ..Default::default()
    };
    let (a, _) = Dataset::load(&cbica, &o).unwrap();
    let (b, _) = Dataset::load(&tcia, &o).unwrap();

    // Raw intensities differ in scale between the sites.
    let (fa, _) = read(&patient_file(&cbica, "BraTS19_CBICA_P001_1", "flair"));
    let (fb, _) = read(&patient_file(&tcia, "BraTS19_TCIA01_P001_1", "flair"));
    let mean = |v: &[f32]| {
        v.iter()
            .filter(|&&x| x > 0.0)
            .map(|&x| x as f64)
            .sum::<f64>()
            / v.iter().filter(|&&x| x > 0.0).count() as f64
    };
    assert!(
        mean(&fa) > 1.6 * mean(&fb),
        "site scales too close: {} vs {}",
        mean(&fa),
        mean(&fb)
    );

    // The simplest model, a FLAIR threshold tuned on CBICA, loses accuracy on TCIA even after
    // z-scoring: the sites differ in more than scale (lesion contrast, noise, blur, bias).
    let grid: Vec<f32> = (0..60).map(|i| i as f32 * 0.1).collect();
    let best = |ds: &Dataset| {
        grid.iter()
            .map(|&t| (t, dice_at(ds, t)))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .unwrap()
    };
    let (t_a, dice_a) = best(&a);
    let (_, dice_b_own) = best(&b);
    let dice_b_transfer = dice_at(&b, t_a);
    eprintln!("CBICA threshold {t_a}: Dice {dice_a:.3} on CBICA, {dice_b_transfer:.3} on TCIA (TCIA's own best {dice_b_own:.3})");
    assert!(
        dice_a > 0.5,
        "FLAIR should separate tumour on the source site (Dice {dice_a})"
    );
    assert!(
        dice_b_transfer < dice_a - 0.05,
        "no accuracy loss across sites: {dice_b_transfer} vs {dice_a}"
    );
}

#[test]
fn a_new_phantom_replaces_an_old_one_whole_and_an_interrupted_one_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p");
    tiny_phantom(&out, &[("CBICA", 3)], PhantomLayout::Brats2019, 1);
    tiny_phantom(&out, &[("TCIA", 1)], PhantomLayout::Brats2020, 2);
    // Only the new phantom's patient: none of the old three is left beside it.
    let ids: Vec<String> = Dataset::load(&out, &opts(&tmp.path().join("cache")))
        .unwrap()
        .0
        .patients()
        .iter()
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    // Files that are not the phantom's are not removed with it: refused, nothing changes.
    fs::write(out.join("notes.txt"), "mine").unwrap();
    let before = tree(&out);
    let cfg = PhantomConfig {
        sites: vec![("CBICA".into(), 1)],
        shape: [32, 32, 24],
        ..Default::default()
    };
    let err = suggestive::phantom::generate(&cfg, &out, &|| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("other files (notes.txt)"), "{err}");
    assert_eq!(tree(&out), before);
    // Through a link: the link's target is replaced, the link stays a link.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(tmp.path().join("real"), &link).unwrap();
    fs::create_dir(tmp.path().join("real")).unwrap();
    tiny_phantom(&link, &[("CBICA", 1)], PhantomLayout::Brats2019, 4);
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(tmp.path().join("real/phantom.json").exists());

    // Killed mid-way (Ctrl-C during the demo's first start): the folder is either complete
    // or absent, never a half data set that a later run refuses; a temporary folder of a
    // process that is gone is cleared by the next run.
    let big = tmp.path().join("big");
    let leftovers = || -> Vec<String> {
        fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("big.tmp-") || n.starts_with("big.old-"))
            .collect()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["phantom", "--out", big.to_str().unwrap()])
        .args(["--sites", "CBICA=30", "--shape", "96,96,64"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the generation is under way (its temporary folder exists).
    let started = std::time::Instant::now();
    while leftovers().is_empty() {
        assert!(
            started.elapsed().as_secs() < 60,
            "the generation never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !big.exists() || big.join("phantom.json").exists(),
        "an interrupted generation left a partial folder"
    );
    tiny_phantom(&big, &[("CBICA", 1)], PhantomLayout::Brats2019, 3);
    assert!(big.join("phantom.json").exists());
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}

#[test]
fn site_names_the_loader_would_read_differently_are_refused() {
    use suggestive::phantom::parse_sites;
    assert!(parse_sites("CBICA=2,TCIA=1,SITEX=3").is_ok());
    for (sites, phrase) in [
        (
            "SITE1=1,SITE2=1",
            "'SITE1' must be upper-case and not end in a digit",
        ),
        ("cbica=2", "'cbica' must be upper-case"),
    ] {
        let e = parse_sites(sites).unwrap_err().to_string();
        assert!(e.contains(phrase), "{sites}: {e}");
    }
}
