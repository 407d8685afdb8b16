//! The command line as a user meets it: help, JSON output, exit codes and one-line errors,
//! inline preview.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use suggestive::phantom::PhantomLayout;

fn run(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(args)
        .env("SUGGESTIVE_CACHE_DIR", cache)
        .env("SUGGESTIVE_DATA_DIR", cache.join("data"))
        .output()
        .expect("run suggestive")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failed command: exit code 1, one `error:` line on stderr, no panic.
fn assert_one_line_error(out: &Output, phrases: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for p in phrases {
        assert!(err.contains(p), "'{p}' missing from: {err}");
    }
}

#[test]
fn help_describes_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["--help"], tmp.path());
    assert!(out.status.success());
    let help = text(&out.stdout);
    for cmd in ["dataset", "phantom", "preview", "info", "demo"] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
    let expect: &[(&str, &[&str])] = &[
        (
            "dataset",
            &[
                "--modalities",
                "--downsample",
                "--pad-to",
                "--skip-bad",
                "--json",
                "--cache-dir",
                "--verify",
            ],
        ),
        (
            "phantom",
            &[
                "--out",
                "--patients",
                "--sites",
                "--shape",
                "--seed",
                "--layout",
            ],
        ),
        (
            "preview",
            &["--slice", "--modality", "--overlay", "--protocol", "--save"],
        ),
        ("info", &["--json"]),
        ("demo", &["--headless", "--sessions-dir"]),
    ];
    for (cmd, flags) in expect {
        let out = run(&[cmd, "--help"], tmp.path());
        assert!(out.status.success(), "{cmd} --help failed");
        let h = text(&out.stdout);
        for f in *flags {
            assert!(h.contains(f), "{cmd} --help lacks {f}");
        }
    }
}

#[test]
fn phantom_then_dataset_json_summary_then_cache_hit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ph");
    let out = run(
        &[
            "phantom",
            "--out",
            data.to_str().unwrap(),
            "--sites",
            "CBICA=2,TCIA=1",
            "--shape",
            "64,64,24",
            "--seed",
            "3",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("wrote 3 patients"));

    let out = run(&["dataset", data.to_str().unwrap(), "--json"], tmp.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["patients"], 3);
    assert_eq!(v["sites"]["CBICA"], 2);
    assert_eq!(v["sites"]["TCIA"], 1);
    assert_eq!(v["slices"], 3 * 19);
    assert_eq!(v["slice_shape"], serde_json::json!([4, 64, 64]));
    assert_eq!(v["cache"]["status"]["state"], "built");

    let out = run(
        &["dataset", data.to_str().unwrap(), "--json", "--verify"],
        tmp.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cache"]["status"]["state"], "hit");
    assert!(v["verify_seconds"].is_number());
    // Another spelling of the same folder is the same data set: still a hit.
    let spelled = format!("{}/./", data.display());
    let out = run(&["dataset", &spelled, "--json"], tmp.path());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["cache"]["status"]["state"],
        "hit",
        "{}",
        text(&out.stderr)
    );

    let out = run(
        &[
            "dataset",
            data.to_str().unwrap(),
            "--modalities",
            "flair,t2",
            "--downsample",
            "2",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains("3 patients, 57 slices")
            && t.contains("2 × 32 × 32")
            && t.contains("CBICA 2 · TCIA 1"),
        "{t}"
    );
}

#[test]
fn bad_input_fails_with_one_line_naming_patient_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny_phantom(
        &tmp.path().join("ph"),
        &[("CBICA", 2), ("TCIA", 1)],
        PhantomLayout::Brats2019,
        1,
    );
    let bad = patient_file(&root, "BraTS19_CBICA_P002_1", "flair");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();

    let out = run(&["dataset", root.to_str().unwrap()], tmp.path());
    assert_one_line_error(&out, &["BraTS19_CBICA_P002_1", "flair.nii.gz", "truncated"]);
    assert!(out.stdout.is_empty());

    let out = run(
        &["dataset", root.to_str().unwrap(), "--skip-bad"],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains("2 patients")
            && t.contains("skipped   1 patients")
            && t.contains("BraTS19_CBICA_P002_1"),
        "{t}"
    );

    assert_one_line_error(
        &run(&["dataset", "/no/such/folder"], tmp.path()),
        &["/no/such/folder", "no such folder"],
    );
    assert_one_line_error(
        &run(
            &[
                "dataset",
                root.to_str().unwrap(),
                "--modalities",
                "flair,dwi",
            ],
            tmp.path(),
        ),
        &["dwi"],
    );
    assert_one_line_error(
        &run(
            &["dataset", root.to_str().unwrap(), "--downsample", "3"],
            tmp.path(),
        ),
        &["3"],
    );
    assert_one_line_error(
        &run(
            &["phantom", "--out", "x", "--sites", "CBICA=many"],
            tmp.path(),
        ),
        &["many"],
    );
    assert_one_line_error(
        &run(&["phantom", "--out", "x", "--shape", "64,64"], tmp.path()),
        &["64,64"],
    );
    assert_one_line_error(
        &run(
            &[
                "phantom",
                "--out",
                "x",
                "--patients",
                "5",
                "--sites",
                "CBICA=2",
            ],
            tmp.path(),
        ),
        &["--patients 5"],
    );
    // A folder with other things in it is not overwritten by a phantom.
    let out = run(
        &[
            "phantom",
            "--out",
            tmp.path().join("ph/HGG").to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_one_line_error(&out, &["not empty"]);
}

#[test]
fn preview_prints_inline_and_saves_the_outlined_slice() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tiny_phantom(
        &tmp.path().join("ph"),
        &[("CBICA", 1)],
        PhantomLayout::Brats2019,
        1,
    );
    let patient = patient_file(&root, "BraTS19_CBICA_P001_1", "seg")
        .parent()
        .unwrap()
        .to_path_buf();
    let png = tmp.path().join("slice.png");
    let out = run(
        &[
            "preview",
            patient.to_str().unwrap(),
            "--protocol",
            "blocks",
            "--width",
            "32",
            "--save",
            png.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("flair.nii.gz  slice") && stdout.contains("tumour voxels"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\u{1b}[") && (stdout.contains('▄') || stdout.contains('▀')),
        "no half-block image in the output"
    );
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    let red = img
        .pixels()
        .filter(|p| **p == suggestive::preview::OUTLINE)
        .count();
    assert!(red > 0, "no tumour outline drawn");

    // `.` inside the patient's folder names that folder.
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["preview", ".", "--protocol", "blocks", "--width", "32"])
        .current_dir(&patient)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A volume file works too, and --no-overlay leaves the outline out.
    let t2 = patient_file(&root, "BraTS19_CBICA_P001_1", "t2");
    let out = run(
        &[
            "preview",
            t2.to_str().unwrap(),
            "--protocol",
            "blocks",
            "--slice",
            "3",
            "--no-overlay",
            "--save",
            png.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("slice 3 of 24"));
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(
        img.pixels()
            .filter(|p| **p == suggestive::preview::OUTLINE)
            .count(),
        0
    );

    assert_one_line_error(
        &run(
            &["preview", patient.to_str().unwrap(), "--slice", "99"],
            tmp.path(),
        ),
        &["--slice 99", "24 slices"],
    );
    std::fs::remove_file(patient_file(&root, "BraTS19_CBICA_P001_1", "seg")).unwrap();
    assert_one_line_error(
        &run(&["preview", t2.to_str().unwrap(), "--overlay"], tmp.path()),
        &["no segmentation"],
    );
    assert_one_line_error(
        &run(&["preview", "/no/file.nii.gz"], tmp.path()),
        &["/no/file.nii.gz"],
    );
}

#[test]
fn info_reports_a_working_libtorch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["info", "--json"], tmp.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["smoke_test"], true);
    assert!(v["cuda_available"].is_boolean());
    assert!(v["libtorch_lib"].as_str().unwrap().ends_with("lib"));
    // main sets the allocator first (engine::host_memory); a user's GLIBC_TUNABLES would win.
    if cfg!(all(target_os = "linux", target_env = "gnu"))
        && std::env::var_os("GLIBC_TUNABLES").is_none()
    {
        assert!(
            v["host_allocator"]
                .as_str()
                .unwrap()
                .contains("freed blocks kept"),
            "{}",
            v["host_allocator"]
        );
    }
    assert_eq!(v["dataset_cache"], tmp.path().to_str().unwrap());
}

/// Session names and case IDs become file names, script words and terminal text: a control
/// character or a path separator in one is refused where it enters, by value, escaped.
#[test]
fn names_from_other_people_are_checked_where_they_enter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["new", "study\nrm -rf ~", "--preset", "demo"])
        .env("SUGGESTIVE_CACHE_DIR", tmp.path())
        .env("SUGGESTIVE_SESSIONS_DIR", tmp.path().join("sessions"))
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &["session name \"study\\nrm -rf ~\" holds a control character"],
    );
    let sessions = tmp.path().join("sessions");
    assert!(!sessions.exists() || std::fs::read_dir(&sessions).unwrap().next().is_none());

    // A case whose folder and files carry a terminal escape sequence in its ID.
    let root = tiny_phantom(
        &tmp.path().join("ph"),
        &[("CBICA", 2), ("TCIA", 1)],
        PhantomLayout::Brats2019,
        1,
    );
    let id = "BraTS19_CBICA_P002_1";
    let hostile = format!("{id}\u{1b}[2J");
    let dir = patient_file(&root, id, "flair")
        .parent()
        .unwrap()
        .to_path_buf();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        std::fs::rename(dir.join(&name), dir.join(name.replace(id, &hostile))).unwrap();
    }
    std::fs::rename(&dir, dir.with_file_name(&hostile)).unwrap();
    let out = run(&["dataset", root.to_str().unwrap()], tmp.path());
    assert_one_line_error(
        &out,
        &["case ID \"BraTS19_CBICA_P002_1\\u{1b}[2J\" holds a control character"],
    );
    assert!(!text(&out.stderr).contains('\u{1b}'));
}
