//! The data layer end to end on tiny phantoms and hand-written volumes: round trip, orientation,
//! sites and grades, cache hits and invalidation, and every kind of bad input.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use suggestive::data::{CacheStatus, Dataset, Modality, Preprocessing};
use suggestive::phantom::PhantomLayout;

const P1: &str = "BraTS19_CBICA_P001_1";
const P2: &str = "BraTS19_CBICA_P002_1";
const P3: &str = "BraTS19_TCIA01_P003_1";

fn three_patients(tmp: &Path) -> std::path::PathBuf {
    tiny_phantom(
        &tmp.join("data"),
        &[("CBICA", 2), ("TCIA", 1)],
        PhantomLayout::Brats2019,
        1,
    )
}

#[test]
fn phantom_round_trips_through_the_loader() {
    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    let (ds, report) = Dataset::load(&root, &opts(&tmp.path().join("cache"))).unwrap();
    assert_eq!(report.status, CacheStatus::Built);
    assert_eq!(ds.patients().len(), 3);
    // 24 slices, 2 + 3 dropped; 64 is already a multiple of 32.
    assert_eq!(ds.num_slices(), 3 * 19);
    assert_eq!((ds.channels(), ds.size()), (4, 64));
    assert_eq!(ds.images().len(), 3 * 19 * 4 * 64 * 64);
    assert_eq!(ds.masks().len(), 3 * 19 * 64 * 64);

    for p in ds.patients() {
        assert_eq!(p.dims, TINY);
        assert!(p.stats.tumour_voxels > 0, "{} has no tumour", p.id);
        // The cached mask holds exactly the tumour voxels of the kept slices.
        let (seg, _) = read(&patient_file(&root, &p.id, "seg"));
        let plane = 64 * 64;
        let kept: usize = seg[2 * plane..21 * plane]
            .iter()
            .filter(|&&v| v != 0.0)
            .count();
        let cached: usize = p
            .slice_range()
            .map(|s| ds.mask(s).iter().map(|&m| m as usize).sum::<usize>())
            .sum();
        assert_eq!(cached, kept, "{}", p.id);
        // Every channel is z-scored over the brain: mean ≈ 0, sd ≈ 1 over non-zero pixels.
        for c in 0..4 {
            let vals: Vec<f64> = p
                .slice_range()
                .flat_map(|s| ds.image(s)[c * plane..(c + 1) * plane].to_vec())
                .map(|v| v.to_f64())
                .filter(|&v| v != 0.0)
                .collect();
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let sd = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            assert!(
                mean.abs() < 0.2 && (sd - 1.0).abs() < 0.2,
                "{} channel {c}: mean {mean}, sd {sd}",
                p.id
            );
        }
    }
    // Image values are the z-scored NIfTI voxels, pixel for pixel.
    let p = &ds.patients()[0];
    let (flair, _) = read(&patient_file(&root, &p.id, "flair"));
    let brain: Vec<f64> = flair
        .iter()
        .filter(|&&v| v != 0.0)
        .map(|&v| v as f64)
        .collect();
    let mean = brain.iter().sum::<f64>() / brain.len() as f64;
    let sd = (brain.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / brain.len() as f64).sqrt();
    let (x, y, z) = (30, 33, 12);
    let want = (flair[(z * 64 + y) * 64 + x] as f64 - mean) / sd;
    let got = ds.image(p.first_slice + z - 2)[y * 64 + x].to_f64();
    assert!((want - got).abs() < 0.01, "want {want}, got {got}");
}

#[test]
fn a_marker_voxel_lands_at_the_right_slice_and_pixel() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data/BraTS19_CBICA_M01_1");
    fs::create_dir_all(&dir).unwrap();
    // Unequal X and Y catch a swapped axis; the marker is off-centre in x, y and z.
    let dims = [40usize, 36, 12];
    let (mx, my, mz) = (5usize, 30usize, 7usize);
    let n = dims.iter().product();
    let at = |x: usize, y: usize, z: usize| (z * dims[1] + y) * dims[0] + x;
    let brain: Vec<i16> = (0..n).map(|i| 100 + (i % 7) as i16).collect();
    for m in ["flair", "t1", "t1ce", "t2"] {
        let mut v = brain.clone();
        if m == "flair" {
            v[at(mx, my, mz)] = 2000;
        }
        write_volume(
            &dir.join(format!("BraTS19_CBICA_M01_1_{m}.nii.gz")),
            &dims,
            v,
        );
    }
    let mut seg = vec![0u8; n];
    seg[at(mx, my, mz)] = 4;
    write_volume(&dir.join("BraTS19_CBICA_M01_1_seg.nii.gz"), &dims, seg);

    let (ds, _) =
        Dataset::load(&tmp.path().join("data"), &opts(&tmp.path().join("cache"))).unwrap();
    assert_eq!(ds.size(), 64);
    assert_eq!(ds.num_slices(), 12 - 5);
    // Padding centres the volume: x offset (64-40)/2 = 12, y offset (64-36)/2 = 14.
    let (row, col, slice) = (my + 14, mx + 12, mz - 2);
    for s in 0..ds.num_slices() {
        let on: Vec<usize> = ds
            .mask(s)
            .iter()
            .enumerate()
            .filter(|(_, &m)| m == 1)
            .map(|(i, _)| i)
            .collect();
        if s == slice {
            assert_eq!(on, vec![row * 64 + col], "mask of slice {s}");
        } else {
            assert!(on.is_empty(), "slice {s} should have no tumour");
        }
    }
    let flair = &ds.image(slice)[..64 * 64];
    let argmax = (0..flair.len())
        .max_by(|&a, &b| flair[a].to_f32().total_cmp(&flair[b].to_f32()))
        .unwrap();
    assert_eq!(argmax, row * 64 + col, "the flair marker moved");
    assert_eq!(ds.patients()[0].stats.label_voxels, [0, 0, 1]);
}

#[test]
fn sites_and_grades_come_from_ids_folders_and_name_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let r2019 = tiny_phantom(
        &tmp.path().join("b19"),
        &[("CBICA", 2), ("TCIA", 2)],
        PhantomLayout::Brats2019,
        4,
    );
    let (ds, _) = Dataset::load(&r2019, &opts(&cache)).unwrap();
    for p in ds.patients() {
        let want = if p.id.contains("TCIA01") {
            "TCIA"
        } else {
            "CBICA"
        };
        assert_eq!(p.site, want, "{}", p.id);
        let dir = patient_file(&r2019, &p.id, "seg");
        let grade = dir
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(p.grade.as_deref(), Some(grade.as_str()), "{}", p.id);
    }

    // BraTS 2020: IDs carry no site; name_mapping.csv links them to the 2019 IDs.
    let r2020 = tiny_phantom(
        &tmp.path().join("b20"),
        &[("CBICA", 2), ("TCIA", 2)],
        PhantomLayout::Brats2020,
        4,
    );
    let (ds20, _) = Dataset::load(&r2020, &opts(&cache)).unwrap();
    let ids: Vec<&str> = ds20.patients().iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "BraTS20_Training_001",
            "BraTS20_Training_002",
            "BraTS20_Training_003",
            "BraTS20_Training_004"
        ]
    );
    let sites: Vec<&str> = ds20.patients().iter().map(|p| p.site.as_str()).collect();
    assert_eq!(sites, ["CBICA", "CBICA", "TCIA", "TCIA"]);
    // Same seed, same cases: the grades agree with the 2019 layout's folders.
    let g19: Vec<_> = ds.patients().iter().map(|p| p.grade.clone()).collect();
    let g20: Vec<_> = ds20.patients().iter().map(|p| p.grade.clone()).collect();
    assert_eq!(g19, g20);

    fs::remove_file(r2020.join("name_mapping.csv")).unwrap();
    let (ds20, _) = Dataset::load(&r2020, &opts(&cache)).unwrap();
    assert!(ds20
        .patients()
        .iter()
        .all(|p| p.site == "unknown" && p.grade.is_none()));
}

#[test]
fn second_load_hits_the_cache_and_a_changed_file_invalidates_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    let o = opts(&tmp.path().join("cache"));
    let (first, r1) = Dataset::load(&root, &o).unwrap();
    assert_eq!(r1.status, CacheStatus::Built);
    let before = first.images().to_vec();
    drop(first);

    let (second, r2) = Dataset::load(&root, &o).unwrap();
    assert_eq!(r2.status, CacheStatus::Hit);
    assert_eq!(r2.cache_dir, r1.cache_dir);
    assert!(second.images() == &before[..]);
    second.verify().unwrap();
    drop(second);

    // Rewrite one input with different intensities: the cache is rebuilt and differs.
    let f = patient_file(&root, P2, "t1");
    let (data, dims) = read(&f);
    write_volume(
        &f,
        &dims,
        data.iter()
            .map(|&v| (v * 0.5 + (v > 0.0) as u8 as f32 * 300.0) as i16)
            .collect::<Vec<_>>(),
    );
    let (third, r3) = Dataset::load(&root, &o).unwrap();
    assert_eq!(
        r3.status,
        CacheStatus::Rebuilt("input files changed".into())
    );
    assert!(third.images() != &before[..]);

    // Other preprocessing, another cache; the first stays valid.
    let mut o2 = o.clone();
    o2.preprocessing = Preprocessing {
        downsample: 2,
        modalities: vec![Modality::Flair, Modality::T2],
        ..Default::default()
    };
    let (small, r4) = Dataset::load(&root, &o2).unwrap();
    assert_eq!(r4.status, CacheStatus::Built);
    assert_ne!(r4.cache_dir, r3.cache_dir);
    assert_eq!((small.channels(), small.size()), (2, 32));
    assert_eq!(Dataset::load(&root, &o).unwrap().1.status, CacheStatus::Hit);
}

#[test]
fn a_damaged_cache_is_rebuilt_and_verify_catches_flipped_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    let o = opts(&tmp.path().join("cache"));
    let (ds, r) = Dataset::load(&root, &o).unwrap();
    let good = ds.images().to_vec();
    drop(ds);

    // Same length, one byte changed: only a checksum can tell.
    let images = r.cache_dir.join("images.f16");
    let mut bytes = fs::read(&images).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    fs::write(&images, &bytes).unwrap();
    let (ds, _) = Dataset::load(&root, &o).unwrap();
    let err = ds.verify().unwrap_err().to_string();
    assert!(
        err.contains("checksum") && err.contains("BraTS19_"),
        "{err}"
    );
    drop(ds);

    // Truncated: detected on load and rebuilt from the NIfTI files.
    fs::write(&images, &bytes[..i]).unwrap();
    let (ds, r) = Dataset::load(&root, &o).unwrap();
    assert!(
        matches!(&r.status, CacheStatus::Rebuilt(why) if why.contains("images.f16")),
        "{:?}",
        r.status
    );
    assert!(ds.images() == &good[..]);
    ds.verify().unwrap();

    // A garbled index is also rebuilt.
    drop(ds);
    let index = r.cache_dir.join("index.json");
    fs::write(&index, "{ not json").unwrap();
    let (ds, r) = Dataset::load(&root, &o).unwrap();
    assert!(
        matches!(&r.status, CacheStatus::Rebuilt(why) if why.contains("damaged index")),
        "{:?}",
        r.status
    );
    assert!(ds.patients().iter().any(|p| !p.blank_slices.is_empty()));

    // An index of format 1 (before blank slices were recorded) is rebuilt as an older format,
    // not as a damaged one, and the rebuilt cache records them.
    drop(ds);
    let mut old: serde_json::Value = serde_json::from_slice(&fs::read(&index).unwrap()).unwrap();
    old["format_version"] = 1.into();
    for p in old["patients"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("blank_slices");
    }
    fs::write(&index, old.to_string()).unwrap();
    let (ds, r) = Dataset::load(&root, &o).unwrap();
    assert_eq!(
        r.status,
        CacheStatus::Rebuilt("cache format 1 (this version writes 2)".into())
    );
    assert!(ds.patients().iter().any(|p| !p.blank_slices.is_empty()));
}

/// Breaks P002 with `breakage`, then checks: the load fails naming P002 (and `file` when given)
/// with `phrase`; no cache (or temporary folder) is left behind; `skip_bad` loads P001 and P003
/// and lists P002 with the same reason.
fn assert_bad_patient(breakage: impl Fn(&Path), file: Option<&str>, phrase: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    breakage(&root);
    let cache = tmp.path().join("cache");
    let o = opts(&cache);
    let err = match Dataset::load(&root, &o) {
        Ok(_) => panic!("loading a data set with a broken patient succeeded ({phrase})"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(P2), "error does not name the patient: {err}");
    assert!(err.contains(phrase), "error lacks '{phrase}': {err}");
    if let Some(f) = file {
        assert!(err.contains(f), "error does not name {f}: {err}");
    }
    assert!(!err.contains('\n'), "error is not one line: {err}");
    let left: Vec<_> = tree(&cache).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "a failed load left files behind: {left:?}");

    let mut o = o;
    o.skip_bad = true;
    let (ds, _) = Dataset::load(&root, &o).unwrap();
    let ids: Vec<&str> = ds.patients().iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, [P1, P3]);
    assert_eq!(ds.skipped().len(), 1);
    assert_eq!(ds.skipped()[0].id, P2);
    assert!(
        ds.skipped()[0].reason.contains(phrase),
        "{:?}",
        ds.skipped()
    );
    assert_eq!(ds.num_slices(), 2 * 19);
    ds.verify().unwrap();
    drop(ds);
    // The cache remembers the bad patient: without skip_bad a cached load still refuses.
    o.skip_bad = false;
    let err = Dataset::load(&root, &o)
        .err()
        .expect("still refused")
        .to_string();
    assert!(err.contains(P2) && err.contains(phrase), "{err}");
}

fn rewrite(root: &Path, suffix: &str, f: impl Fn(Vec<f32>, [usize; 3]) -> (Vec<usize>, Vec<f32>)) {
    let path = patient_file(root, P2, suffix);
    let (data, dims) = read(&path);
    let (dims, data) = f(data, dims);
    write_volume(&path, &dims, data);
}

#[test]
fn missing_modality_is_named_and_other_modalities_still_load() {
    let remove = |root: &Path| fs::remove_file(patient_file(root, P2, "t1ce")).unwrap();
    assert_bad_patient(remove, Some("t1ce"), "missing t1ce");

    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    remove(&root);
    let mut o = opts(&tmp.path().join("cache"));
    o.preprocessing.modalities = vec![Modality::Flair, Modality::T1, Modality::T2];
    let (ds, _) = Dataset::load(&root, &o).unwrap();
    assert_eq!((ds.patients().len(), ds.channels()), (3, 3));
}

#[test]
fn truncated_gzip_is_reported() {
    assert_bad_patient(
        |root| {
            let f = patient_file(root, P2, "flair");
            let bytes = fs::read(&f).unwrap();
            fs::write(&f, &bytes[..bytes.len() * 6 / 10]).unwrap();
        },
        Some("flair.nii.gz"),
        "truncated",
    );
}

#[test]
fn corrupt_gzip_is_reported() {
    assert_bad_patient(
        |root| {
            let f = patient_file(root, P2, "t2");
            let mut bytes = fs::read(&f).unwrap();
            let n = bytes.len();
            bytes[n / 3..n / 3 + 64].fill(0xff);
            fs::write(&f, &bytes).unwrap();
        },
        Some("t2.nii.gz"),
        "corrupt",
    );
    assert_bad_patient(
        |root| {
            fs::write(
                patient_file(root, P2, "t1"),
                b"this is not a nifti file at all",
            )
            .unwrap()
        },
        Some("t1.nii.gz"),
        "corrupt",
    );
}

/// Rewrites a gzipped NIfTI file's raw bytes (header and voxels, decompressed) with `f`.
fn edit_nifti_bytes(path: &Path, f: impl Fn(&mut Vec<u8>)) {
    use std::io::{Read, Write};
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&fs::read(path).unwrap()[..])
        .read_to_end(&mut raw)
        .unwrap();
    f(&mut raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    fs::write(path, gz.finish().unwrap()).unwrap();
}

/// NIfTI-1 header offsets: dim[8] (i16) at 40, bitpix (i16) at 72.
fn put_i16(raw: &mut [u8], at: usize, v: i16) {
    raw[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn a_header_whose_bitpix_disagrees_with_its_voxel_type_is_refused() {
    // The voxels are int16: bitpix 8 would read half of them, -16 an absurd size.
    for bitpix in [8, -16, 0] {
        assert_bad_patient(
            |root| {
                edit_nifti_bytes(&patient_file(root, P2, "flair"), |raw| {
                    put_i16(raw, 72, bitpix)
                })
            },
            Some("flair.nii.gz"),
            &format!("bitpix {bitpix} disagrees"),
        );
    }
}

#[test]
fn a_header_that_declares_more_voxels_than_the_file_holds_is_refused() {
    // 3000³ int16 voxels would be 54 GB: refused from the header, before any allocation.
    // Every file of the patient says so (else the shapes would differ, caught earlier).
    assert_bad_patient(
        |root| {
            for m in ["flair", "t1", "t1ce", "t2", "seg"] {
                edit_nifti_bytes(&patient_file(root, P2, m), |raw| {
                    (1..=3).for_each(|d| put_i16(raw, 40 + 2 * d, 3000))
                })
            }
        },
        Some(".nii.gz"),
        "damaged header: dimensions [3000, 3000, 3000]",
    );
}

#[test]
fn a_gzip_file_of_several_members_loads_like_one() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    let path = patient_file(&root, P2, "flair");
    let before = read(&path);
    // What `cat a.gz b.gz` gives: a valid gzip file (gzip -d reads both members).
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&fs::read(&path).unwrap()[..])
        .read_to_end(&mut raw)
        .unwrap();
    let mut joined = Vec::new();
    for part in [&raw[..1000], &raw[1000..]] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(part).unwrap();
        joined.extend(gz.finish().unwrap());
    }
    fs::write(&path, joined).unwrap();
    assert_eq!(read(&path), before);
    let (ds, _) = Dataset::load(&root, &opts(&tmp.path().join("cache"))).unwrap();
    assert_eq!(ds.patients().len(), 3);
}

#[test]
fn modalities_of_different_shapes_are_refused() {
    assert_bad_patient(
        |root| {
            rewrite(root, "t2", |d, dims| {
                (
                    vec![dims[0], dims[1], dims[2] - 4],
                    d[..dims[0] * dims[1] * (dims[2] - 4)].to_vec(),
                )
            })
        },
        Some("t2.nii.gz"),
        "shape",
    );
}

#[test]
fn a_4d_volume_is_refused() {
    assert_bad_patient(
        |root| {
            rewrite(root, "flair", |d, dims| {
                (vec![dims[0], dims[1], dims[2], 2], [d.clone(), d].concat())
            })
        },
        Some("flair.nii.gz"),
        "expected a 3D volume",
    );
}

#[test]
fn unknown_segmentation_labels_are_refused() {
    assert_bad_patient(
        |root| {
            let path = patient_file(root, P2, "seg");
            let (d, dims) = read(&path);
            let mut seg: Vec<u8> = d.iter().map(|&v| v as u8).collect();
            seg[(12 * 64 + 30) * 64 + 30] = 3;
            write_volume(&path, &dims, seg);
        },
        Some("seg.nii.gz"),
        "label 3",
    );
}

#[test]
fn nan_voxels_are_refused() {
    assert_bad_patient(
        |root| {
            rewrite(root, "t1ce", |mut d, dims| {
                d[(10 * 64 + 32) * 64 + 32] = f32::NAN;
                (dims.to_vec(), d)
            })
        },
        Some("t1ce.nii.gz"),
        "non-finite voxel",
    );
}

#[test]
fn an_empty_brain_is_refused() {
    assert_bad_patient(
        |root| rewrite(root, "flair", |d, dims| (dims.to_vec(), vec![0.0; d.len()])),
        None,
        "empty brain",
    );
}

#[test]
fn empty_and_non_brats_folders_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = Dataset::load(&empty, &opts(&cache))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("empty") && err.contains("BraTS"), "{err}");

    let other = tmp.path().join("photos");
    fs::create_dir_all(other.join("holiday")).unwrap();
    fs::write(other.join("holiday/beach.jpg"), b"jpeg").unwrap();
    fs::write(other.join("notes.txt"), b"hello").unwrap();
    let err = Dataset::load(&other, &opts(&cache))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("photos") && err.contains("no BraTS case folders"),
        "{err}"
    );

    let err = Dataset::load(&tmp.path().join("nope"), &opts(&cache))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("no such folder"),
        "{err}"
    );
    assert!(tree(&cache).is_empty());
}

#[test]
fn raw_intensities_beyond_half_precision_are_refused_without_z_scoring() {
    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    rewrite(&root, "flair", |d, dims| {
        (dims.to_vec(), d.iter().map(|&v| v * 1000.0).collect())
    });
    // z-scored (the default), large raw values are no problem.
    let o = opts(&tmp.path().join("cache"));
    assert_eq!(Dataset::load(&root, &o).unwrap().0.patients().len(), 3);
    let mut raw = o.clone();
    raw.preprocessing.zscore = false;
    let err = Dataset::load(&root, &raw)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(P2) && err.contains("beyond half precision's range"),
        "{err}"
    );
}

#[test]
fn a_pad_size_far_beyond_the_volumes_is_refused() {
    let with = |pad| Preprocessing {
        pad_to: Some(pad),
        ..Default::default()
    };
    assert_eq!(with(512).geometry(240).unwrap().size(), 512);
    let err = with(200_000).geometry(240).unwrap_err().to_string();
    assert!(
        err.contains("--pad-to 200000 is more than 4 times"),
        "{err}"
    );
}

#[test]
fn files_whose_names_are_not_utf8_are_read() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    // Latin-1 é (0xE9) in every file name of P002: not UTF-8.
    for m in ["flair", "t1", "t1ce", "t2", "seg"] {
        let f = patient_file(&root, P2, m);
        let mut name = P2.as_bytes().to_vec();
        name.push(0xE9);
        name.extend(format!("_{m}.nii.gz").bytes());
        fs::rename(&f, f.with_file_name(std::ffi::OsStr::from_bytes(&name))).unwrap();
    }
    let (ds, _) = Dataset::load(&root, &opts(&tmp.path().join("cache"))).unwrap();
    assert_eq!(ds.patients().len(), 3);
}

#[test]
fn data_after_the_volume_is_refused_without_inflating_it() {
    // 256 MiB of zeros inside the gzip, after a valid volume (a few hundred kB compressed):
    // refused at the first byte past the voxels.
    assert_bad_patient(
        |root| {
            edit_nifti_bytes(&patient_file(root, P2, "flair"), |raw| {
                raw.resize(raw.len() + (256 << 20), 0)
            })
        },
        Some("flair.nii.gz"),
        "data after the",
    );
    // An uncompressed file longer than its header says (here a sparse 1 GiB), from its size.
    assert_bad_patient(
        |root| {
            let gz = patient_file(root, P2, "t1");
            let mut raw = Vec::new();
            use std::io::Read;
            flate2::read::GzDecoder::new(&fs::read(&gz).unwrap()[..])
                .read_to_end(&mut raw)
                .unwrap();
            let nii = gz.with_extension(""); // .nii.gz → .nii
            fs::write(&nii, &raw).unwrap();
            fs::remove_file(&gz).unwrap();
            fs::File::options()
                .write(true)
                .open(&nii)
                .unwrap()
                .set_len(1 << 30)
                .unwrap();
        },
        Some("t1.nii"),
        "data after the volume is refused",
    );
}

#[test]
fn a_named_pipe_in_place_of_a_file_is_refused_by_type() {
    assert_bad_patient(
        |root| {
            let f = patient_file(root, P2, "t2");
            fs::remove_file(&f).unwrap();
            let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: mkfifo reads a NUL-terminated path we own.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        },
        Some("t2.nii.gz"),
        "a named pipe (FIFO), not a NIfTI file: refused",
    );
}

#[test]
fn a_transform_that_is_not_finite_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = three_patients(tmp.path());
    let f = patient_file(&root, P2, "seg");
    suggestive::data::read_affine(P2, &f).unwrap();
    // sform_code (i16) at 254, srow_x (4 × f32) at 280.
    edit_nifti_bytes(&f, |raw| {
        put_i16(raw, 254, 1);
        raw[280..284].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = suggestive::data::read_affine(P2, &f)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(P2) && e.contains("seg.nii.gz") && e.contains("not finite"),
        "{e}"
    );
}

#[test]
fn files_of_one_case_in_different_spaces_are_refused() {
    // sform_code (i16) at 254, srow_x (4 × f32) at 280: t1 shifted by 5 mm in x.
    assert_bad_patient(
        |root| {
            let f = patient_file(root, P2, "flair");
            let affine = suggestive::data::read_affine(P2, &f).unwrap();
            edit_nifti_bytes(&patient_file(root, P2, "t1"), |raw| {
                put_i16(raw, 254, 1);
                for (row, at) in affine.iter().zip([280, 296, 312]) {
                    for (k, v) in row.iter().enumerate() {
                        let v = *v as f32 + if at == 280 && k == 3 { 5.0 } else { 0.0 };
                        raw[at + 4 * k..at + 4 * k + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            })
        },
        Some("t1.nii.gz"),
        "the case's files are not in one space",
    );
}
