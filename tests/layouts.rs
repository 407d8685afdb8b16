//! Data sets as researchers download them: one phantom written in every layout (BraTS 2019,
//! 2020, 2023, the Decathlon's Task01) loads to the same cases, sites come from a sites file,
//! unusual segmentation names are taken, bad input in the new layouts is refused by name, and
//! `export` points annotators at the right file and slice.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use suggestive::data::{
    parse_modalities, read_labels, CacheStatus, Dataset, LayoutKind, LoadOptions, Preprocessing,
    Segmentations, Summary,
};
use suggestive::phantom::{self, PhantomConfig, PhantomLayout};
use suggestive::session::Session;

const SITES: [(&str, usize); 2] = [("CBICA", 3), ("TCIA", 2)];

/// The same five cases (and, for the Decathlon, two unlabelled ones) in `layout`.
fn phantom_in(dir: &Path, layout: PhantomLayout, unlabelled: usize) -> PathBuf {
    let cfg = PhantomConfig {
        sites: SITES.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        shape: TINY,
        seed: 11,
        layout,
        unlabelled,
        ..Default::default()
    };
    phantom::generate(&cfg, dir, &|| {}).unwrap();
    dir.to_path_buf()
}

fn load(root: &Path, cache: &Path, sites: Option<&Path>) -> Result<Dataset, String> {
    let mut o = opts(cache);
    o.sites = sites.map(Path::to_path_buf);
    Dataset::load(root, &o)
        .map(|(ds, _)| ds)
        .map_err(|e| e.to_string())
}

fn site_counts(ds: &Dataset) -> Vec<(String, usize)> {
    let mut m = std::collections::BTreeMap::new();
    for p in ds.patients() {
        *m.entry(p.site.clone()).or_insert(0) += 1;
    }
    m.into_iter().collect()
}

#[test]
fn every_layout_loads_the_same_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let reference_root = phantom_in(&tmp.path().join("b19"), PhantomLayout::Brats2019, 0);
    let reference = load(&reference_root, &cache, None).unwrap();
    assert_eq!(reference.layout().kind, LayoutKind::Brats);
    let expected_sites = vec![("CBICA".to_string(), 3), ("TCIA".to_string(), 2)];
    assert_eq!(site_counts(&reference), expected_sites);

    for (layout, kind, unlabelled) in [
        (PhantomLayout::Brats2020, LayoutKind::Brats, 0),
        (PhantomLayout::Brats2023, LayoutKind::Brats2023, 0),
        (PhantomLayout::Msd, LayoutKind::Msd, 2),
    ] {
        let root = phantom_in(&tmp.path().join(format!("{layout:?}")), layout, unlabelled);
        let sites_file = root.join(phantom::SITES_FILE);
        let sites = sites_file.exists().then_some(sites_file.as_path());
        let ds = load(&root, &cache, sites).unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        let at = format!("{layout:?}");
        assert_eq!(ds.layout().kind, kind, "{at}");
        assert_eq!(ds.patients().len(), 5, "{at}");
        assert_eq!(ds.layout().unlabelled.len(), unlabelled, "{at}");
        assert_eq!(site_counts(&ds), expected_sites, "{at}");
        // The same tumours, label by label: 2023's enhancing 3 and the Decathlon's swapped
        // edema and core read as the BraTS 2019 values.
        for (p, q) in ds.patients().iter().zip(reference.patients()) {
            assert_eq!(p.stats.label_voxels, q.stats.label_voxels, "{at} {}", p.id);
            assert_eq!(p.tumour_ml(), q.tumour_ml(), "{at} {}", p.id);
        }
        // And the same preprocessed slices, bit for bit (channel order included).
        assert!(ds.images() == reference.images(), "{at}: images differ");
        assert!(ds.masks() == reference.masks(), "{at}: masks differ");
    }
}

#[test]
fn the_decathlon_layout_as_its_archive_has_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = phantom_in(
        &tmp.path().join("Task01_BrainTumour"),
        PhantomLayout::Msd,
        2,
    );
    // What the real archive carries besides the images.
    assert!(root.join("imagesTr/._BRATS_001.nii.gz").exists());
    assert!(root.join("dataset.json").exists() && root.join("imagesTs").is_dir());
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["dataset", root.to_str().unwrap(), "--json", "--sites"])
        .arg(root.join("sites.csv"))
        .env("SUGGESTIVE_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["layout"], "msd");
    assert_eq!(v["patients"], 5);
    assert_eq!(v["unlabelled"], 2);
    assert_eq!(v["sites"]["TCIA"], 2);
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["dataset", root.to_str().unwrap()])
        .env("SUGGESTIVE_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("MSD Task01_BrainTumour") && text.contains("unlabelled: 2"),
        "{text}"
    );
    // Without a sites file the Decathlon's IDs carry none.
    assert!(text.contains("sites     unknown 5"), "{text}");
}

/// A load for a session labelled by people opens no segmentation: the Decathlon's imagesTs/
/// cases load beside the others with empty masks, and a damaged label file changes nothing.
/// A case's segmentation read afterwards (a test case's) is exactly what the cache of a load
/// that reads them holds.
#[test]
fn a_load_without_segmentations_opens_none() {
    let tmp = tempfile::tempdir().unwrap();
    let root = phantom_in(&tmp.path().join("Task01"), PhantomLayout::Msd, 2);
    let cache = tmp.path().join("cache");
    let (read, _) = Dataset::load(&root, &opts(&cache)).unwrap();
    // A label file damaged before the first load that ignores them: it builds all the same.
    let damaged = read.patients()[0].id.clone();
    let label = root.join("labelsTr").join(format!("{damaged}.nii.gz"));
    fs::write(&label, b"not a NIfTI").unwrap();
    let mut ignore_opts = opts(&cache);
    ignore_opts.segmentations = Segmentations::Ignore;
    let (ignored, report) = Dataset::load(&root, &ignore_opts).unwrap();
    assert_eq!(report.status, CacheStatus::Built);
    assert_eq!(ignored.segmentations(), Segmentations::Ignore);
    assert_eq!(read.patients().len(), 5);
    assert_eq!(ignored.patients().len(), 7, "imagesTs/ cases load too");
    assert!(ignored.masks().iter().all(|&m| m == 0), "no mask was read");
    assert!(read.masks().iter().any(|&m| m != 0));
    let plane = read.size() * read.size();
    let per = plane * read.channels();
    for info in read.patients() {
        let p = ignored
            .patients()
            .iter()
            .position(|x| x.id == info.id)
            .unwrap();
        assert!(ignored.has_segmentation(p), "{}", info.id);
        if info.id == damaged {
            // Read when asked for (a test case's), and named when it is bad.
            let err = ignored.dataset_masks(p).unwrap_err().to_string();
            assert!(err.contains(&label.display().to_string()), "{err}");
            continue;
        }
        let slices = info.slice_range();
        assert_eq!(
            ignored.dataset_masks(p).unwrap(),
            &read.masks()[slices.start * plane..slices.end * plane],
            "{}",
            info.id
        );
        let other = ignored.patients()[p].slice_range();
        assert!(
            ignored.images()[other.start * per..other.end * per]
                == read.images()[slices.start * per..slices.end * per],
            "{}: the same images",
            info.id
        );
    }
    let unlabelled: Vec<usize> = (0..7).filter(|&p| !ignored.has_segmentation(p)).collect();
    assert_eq!(unlabelled.len(), 2);
    let err = ignored
        .dataset_masks(unlabelled[0])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("labelsTr") && err.contains("missing label file"),
        "{err}"
    );

    // A load that reads them names the damaged file; one that does not hits its cache.
    let err = match Dataset::load(&root, &opts(&cache)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a damaged label file was loaded"),
    };
    assert!(err.contains(&label.display().to_string()), "{err}");
    let (_, report) = Dataset::load(&root, &ignore_opts).unwrap();
    assert_eq!(report.status, CacheStatus::Hit);
}

/// A Decathlon task with imagesTs/ only is for annotating: a load that reads segmentations
/// says so, a session labelled by people loads it.
#[test]
fn a_task_without_labelled_cases_loads_for_annotation_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = phantom_in(&tmp.path().join("Task01"), PhantomLayout::Msd, 2);
    for dir in ["imagesTr", "labelsTr"] {
        fs::remove_dir_all(root.join(dir)).unwrap();
    }
    let cache = tmp.path().join("cache");
    let err = match Dataset::load(&root, &opts(&cache)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded without labelled cases"),
    };
    assert!(
        err.contains("no labelled cases, only 2 without segmentation")
            && err.contains("experiment.labels = \"human\""),
        "{err}"
    );
    let mut o = opts(&cache);
    o.segmentations = Segmentations::Ignore;
    let (ds, _) = Dataset::load(&root, &o).unwrap();
    assert_eq!(ds.patients().len(), 2);

    // `dataset --images-only` summarises it as such a session loads it.
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["dataset", root.to_str().unwrap(), "--images-only", "--json"])
        .env("SUGGESTIVE_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["patients"], 2);
    assert_eq!(v["with_segmentation"], 0);
    assert!(v["tumour"].is_null(), "{v}");
    assert_eq!(
        v["cache"]["status"]["state"], "hit",
        "the cache built above"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["dataset", root.to_str().unwrap(), "--images-only"])
        .env("SUGGESTIVE_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tumour    not read (--images-only); 0 of 2 cases have a segmentation file"),
        "{text}"
    );
}

#[test]
fn a_sites_file_changes_sites_not_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = phantom_in(&tmp.path().join("b23"), PhantomLayout::Brats2023, 0);
    let cache = tmp.path().join("cache");
    let sites = root.join(phantom::SITES_FILE);
    let load_with = |sites: Option<&Path>| {
        let mut o = opts(&cache);
        o.sites = sites.map(Path::to_path_buf);
        Dataset::load(&root, &o).unwrap()
    };
    let (without, _) = load_with(None);
    assert_eq!(site_counts(&without), vec![("unknown".to_string(), 5)]);
    let (with, report) = load_with(Some(&sites));
    assert_eq!(report.status, suggestive::data::CacheStatus::Hit);
    assert_eq!(site_counts(&with).len(), 2);
    assert_eq!(with.fingerprint(), without.fingerprint());
}

#[test]
fn modalities_take_both_spellings() {
    let tmp = tempfile::tempdir().unwrap();
    let root = phantom_in(&tmp.path().join("b23"), PhantomLayout::Brats2023, 0);
    let cache = tmp.path().join("cache");
    let with = |list: &str| {
        let mut o = LoadOptions::new(&cache);
        o.preprocessing = Preprocessing {
            modalities: parse_modalities(list).unwrap(),
            ..Default::default()
        };
        Dataset::load(&root, &o).unwrap().0
    };
    let new_names = with("t2f,t1c");
    let old_names = with("flair,t1ce");
    assert_eq!(new_names.channels(), 2);
    assert!(new_names.images() == old_names.images());
}

#[test]
fn a_segmentation_under_an_unusual_name_is_taken_and_named() {
    // BraTS 2020's case 355 ships its segmentation as W39_1998.09.19_Segm.nii.
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let root = phantom_in(&tmp.path().join("b20"), PhantomLayout::Brats2020, 0);
    let before = load(&root, &cache, None).unwrap();
    let case = root.join("BraTS20_Training_003");
    let seg = case.join("BraTS20_Training_003_seg.nii.gz");
    let (labels, dims) = read(&seg);
    fs::remove_file(&seg).unwrap();
    // (Written under a plain name first: the nifti writer rewrites dotted names' extensions.)
    let plain = tmp.path().join("seg.nii");
    write_volume(&plain, &dims, labels.iter().map(|&l| l as u8).collect());
    fs::rename(&plain, case.join("W39_1998.09.19_Segm.nii")).unwrap();
    let (ds, report) = Dataset::load(&root, &opts(&cache)).unwrap();
    assert!(ds.masks() == before.masks(), "the same labels");
    let summary = Summary::new(&ds, &report, None);
    assert_eq!(
        summary.odd_names,
        vec!["BraTS20_Training_003: W39_1998.09.19_Segm.nii".to_string()]
    );
    assert!(summary.to_text().contains("W39_1998.09.19_Segm.nii"));
    // A file named after the case is no segmentation, whatever else the folder holds.
    let mask = case.join("BraTS20_Training_003_brainmask.nii.gz");
    let odd = case.join("W39_1998.09.19_Segm.nii");
    fs::rename(&odd, &mask).unwrap();
    let err = load(&root, &cache, None).err().expect("the load must fail");
    assert!(err.contains("missing seg file"), "{err}");
    fs::rename(&mask, &odd).unwrap();
    // Two candidates: no guess, the segmentation is missing.
    fs::write(case.join("notes.nii"), b"").unwrap();
    let err = load(&root, &cache, None).err().expect("the load must fail");
    assert!(
        err.contains("BraTS20_Training_003") && err.contains("missing seg file"),
        "{err}"
    );
}

/// Loads `root` (with its sites file) and returns the error, which must name `file` and say
/// `phrase`.
fn assert_refused(root: &Path, cache: &Path, file: &str, phrase: &str) {
    let sites = root.join(phantom::SITES_FILE);
    let err = load(root, cache, Some(&sites))
        .err()
        .expect("the load must fail");
    assert!(
        err.contains(file) && err.contains(phrase),
        "expected an error naming {file} with '{phrase}', got: {err}"
    );
}

#[test]
fn bad_input_in_the_new_layouts_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let fresh = |name: &str, layout| phantom_in(&tmp.path().join(name), layout, 0);

    // A 4D image of 3 channels where dataset.json lists 4.
    let root = fresh("channels", PhantomLayout::Msd);
    let image = root.join("imagesTr/BRATS_002.nii.gz");
    let v = suggestive::data::read_channels("t", &image, suggestive::data::Expect::ANY).unwrap();
    let data: Vec<f32> = v[..3].iter().flat_map(|c| c.data.clone()).collect();
    write_volume(&image, &[64, 64, 24, 3], data);
    assert_refused(
        &root,
        &cache,
        "BRATS_002.nii.gz",
        "3 channels, but dataset.json lists 4",
    );

    // A label file whose shape differs from its image.
    let root = fresh("shape", PhantomLayout::Msd);
    let label = root.join("labelsTr/BRATS_004.nii.gz");
    write_volume(&label, &[64, 64, 20], vec![0u8; 64 * 64 * 20]);
    assert_refused(
        &root,
        &cache,
        "labelsTr/BRATS_004.nii.gz",
        "shape [64, 64, 20]",
    );

    // A label the layout does not have (BraTS 2019's enhancing 4 in a Decathlon file).
    let root = fresh("label4", PhantomLayout::Msd);
    let label = root.join("labelsTr/BRATS_001.nii.gz");
    let (l, dims) = read(&label);
    let mut l: Vec<u8> = l.iter().map(|&v| v as u8).collect();
    l[1000] = 4;
    write_volume(&label, &dims, l);
    assert_refused(&root, &cache, "BRATS_001.nii.gz", "labels are 0, 1, 2, 3");

    // A missing label file.
    let root = fresh("nolabel", PhantomLayout::Msd);
    fs::remove_file(root.join("labelsTr/BRATS_005.nii.gz")).unwrap();
    assert_refused(&root, &cache, "labelsTr/BRATS_005.nii.gz", "missing label");

    // A sites file without the case.
    let root = fresh("sites", PhantomLayout::Brats2023);
    let sites = root.join(phantom::SITES_FILE);
    let text = fs::read_to_string(&sites).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("BraTS-GLI-00003-000"))
        .collect();
    fs::write(&sites, kept.join("\n")).unwrap();
    assert_refused(
        &root,
        &cache,
        "sites.csv",
        "no site for case BraTS-GLI-00003-000",
    );

    // Another Decathlon task's description.
    let root = fresh("task", PhantomLayout::Msd);
    fs::write(
        root.join("dataset.json"),
        r#"{"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior"}}"#,
    )
    .unwrap();
    assert_refused(&root, &cache, "dataset.json", "is this Task01_BrainTumour?");

    // BraTS 2019 and 2023 names in one folder: their labels differ.
    let root = fresh("mixed", PhantomLayout::Brats2023);
    let old = tempfile::tempdir().unwrap();
    let b19 = phantom_in(&old.path().join("b19"), PhantomLayout::Brats2019, 0);
    fs::rename(b19.join("HGG"), root.join("HGG")).unwrap();
    assert_refused(&root, &cache, "", "mixes BraTS 2019-2021 file names");
}

#[test]
fn a_session_on_the_decathlon_layout_exports_files_and_original_slices() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = phantom_in(&root.join("Task01_BrainTumour"), PhantomLayout::Msd, 1);
    let cmd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
            .args(args)
            .env("SUGGESTIVE_CACHE_DIR", root.join("cache"))
            .env("SUGGESTIVE_DATA_DIR", root.join("share"))
            .env("SUGGESTIVE_SESSIONS_DIR", root.join("sessions"))
            .current_dir(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Image-wise, at full resolution, with the sites file given relative to the data folder.
    let cfg = tiny_session_config(&data, &[]);
    let toml = root.join("tiny.toml");
    fs::write(&toml, cfg.to_toml()).unwrap();
    let mut args = vec![
        "new".to_string(),
        "msd".into(),
        "--preset".into(),
        toml.display().to_string(),
        "--dataset".into(),
        data.display().to_string(),
    ];
    for set in [
        "dataset.sites=\"sites.csv\"",
        "dataset.downsample=1",
        "experiment.granularity=\"image\"",
        "experiment.initial=6",
        "experiment.per_round=3",
        "experiment.rounds=1",
    ] {
        args.extend(["--set".into(), set.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd(&args);
    let s = Session::open(&root.join("sessions/msd")).unwrap();
    assert_eq!(
        s.config.dataset.sites.as_deref(),
        Some(data.join("sites.csv").canonicalize().unwrap().as_path()),
        "the sites file is kept absolute"
    );
    cmd(&["run", "msd"]);
    let file = root.join("picks.csv");
    cmd(&["export", "msd", "--out", file.to_str().unwrap()]);

    let ds = s.load_dataset(None, &root.join("cache")).unwrap();
    let drop_first = s.config.dataset.drop_first;
    let mut rows = csv::Reader::from_path(&file).unwrap();
    let header = rows.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut n = 0;
    for row in rows.records() {
        let row = row.unwrap();
        n += 1;
        let case = &row[col("patient")];
        assert!(case.starts_with("BRATS_"), "{row:?}");
        // The case's files: its one 4D image and its label file.
        assert_eq!(
            row[col("images")],
            data.join(format!("imagesTr/{case}.nii.gz"))
                .display()
                .to_string()
        );
        let label = PathBuf::from(&row[col("label")]);
        assert_eq!(label, data.join(format!("labelsTr/{case}.nii.gz")));
        // The slice as the NIfTI file numbers it, and its context.
        let kept: usize = row[col("slice")].parse().unwrap();
        let z: usize = row[col("z")].parse().unwrap();
        assert_eq!(z, kept + drop_first);
        let context_z: Vec<usize> = row[col("context_z")]
            .split(';')
            .map(|c| c.parse().unwrap())
            .collect();
        assert!(context_z.iter().all(|&c| c.abs_diff(z) == 1), "{row:?}");
        // The annotator's slice z of the label file is the slice the session picked.
        let (vol, labels) = read_labels(case, &label, suggestive::data::Expect::ANY).unwrap();
        let plane = vol.dims[0] * vol.dims[1];
        let in_file: Vec<u8> = labels[z * plane..(z + 1) * plane]
            .iter()
            .map(|&l| (l > 0) as u8)
            .collect();
        let info = ds.patients().iter().find(|p| p.id == case).unwrap();
        assert_eq!(
            ds.mask(info.first_slice + kept),
            &in_file[..],
            "{case} z={z}"
        );
    }
    // 3 arms × 1 round × 3 picks.
    assert_eq!(n, 9);
}

#[test]
fn preview_opens_a_case_of_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let b23 = phantom_in(&tmp.path().join("b23"), PhantomLayout::Brats2023, 0);
    let msd = phantom_in(&tmp.path().join("msd"), PhantomLayout::Msd, 1);
    for (target, shown) in [
        (
            b23.join("BraTS-GLI-00001-000"),
            "BraTS-GLI-00001-000-t1c.nii.gz",
        ),
        (
            msd.join("imagesTr/BRATS_001.nii.gz"),
            "BRATS_001.nii.gz (t1ce)",
        ),
    ] {
        let png = tmp.path().join("slice.png");
        let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
            .arg("preview")
            .arg(&target)
            .args([
                "--modality",
                "t1c",
                "--protocol",
                "blocks",
                "--width",
                "32",
                "--save",
            ])
            .arg(&png)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(shown), "{stdout}");
        // The tumour outline is drawn: the label file was found.
        let img = image::open(&png).unwrap().to_rgb8();
        assert!(
            img.pixels().any(|p| *p == suggestive::preview::OUTLINE),
            "{}: no outline",
            target.display()
        );
    }
    // An unlabelled Decathlon case previews without an outline.
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .arg("preview")
        .arg(msd.join("imagesTs/BRATS_006.nii.gz"))
        .args(["--protocol", "blocks", "--width", "32"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
