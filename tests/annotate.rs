//! A session labelled by people, played through by a scripted annotator: each round's work
//! package, the run that waits for it (exit status 3), segmentations dropped into the inbox or
//! imported, the checks that refuse bad ones without changing anything, and a result equal to
//! the simulated session's.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use suggestive::phantom::PhantomLayout;
use suggestive::session::annotations::{self, WorkItem};
use suggestive::session::Session;

use common::PhantomEnv as Env;

impl Env {
    fn new() -> Env {
        Env::in_layout(PhantomLayout::Brats2019)
    }

    /// Ten tiny phantom cases in `layout`.
    fn in_layout(layout: PhantomLayout) -> Env {
        Env::with(&[("CBICA", 5), ("TCIA", 5)], layout, 4)
    }

    /// A session `name` of the tiny setting with one arm, labelled as `labels` says.
    fn session(&self, name: &str, labels: &str) -> PathBuf {
        self.session_with(name, labels, &[])
    }

    /// As `session`, with more `key=value` settings.
    fn session_with(&self, name: &str, labels: &str, sets: &[&str]) -> PathBuf {
        let labels = format!("experiment.labels=\"{labels}\"");
        let mut all = vec!["experiment.arms=[\"proposed\"]", labels.as_str()];
        all.extend(sets);
        let cfg = tiny_session_config(&self.data, &all);
        let dir = self.root.join("sessions").join(name);
        Session::create(&dir, cfg).unwrap();
        dir
    }

    /// `run NAME`: its exit status and output.
    fn run(&self, name: &str) -> (Option<i32>, String) {
        let out = self.cmd(&["run", name]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// The phantom's own segmentation of `case`.
    fn truth(&self, case: &str) -> PathBuf {
        patient_file(&self.data, case, "seg")
    }
}

fn worklist(dir: &Path, round: usize) -> Vec<WorkItem> {
    annotations::worklist(&Session::open(dir).unwrap().files(), round)
        .unwrap()
        .expect("a work package")
}

fn state(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repeat_dir(dir, 1).join("state.json")).unwrap()).unwrap()
}

/// Looks at a round before its segmentations are given: the round, its worklist, the output
/// of the run that stopped for it, its package folder.
type Inspect<'a> = dyn FnMut(usize, &[WorkItem], &str, &Path) + 'a;

/// Plays session `name` to its end as a scripted annotator: each run that stops with status 3
/// and names what it waits for is given its round's segmentations (`truth_of(case)`) in the
/// inbox, after `inspect(round, worklist, the run's output, package folder)`. The rounds
/// played and the last run's output.
fn play(
    env: &Env,
    name: &str,
    truth_of: &dyn Fn(&str) -> PathBuf,
    inspect: &mut Inspect<'_>,
) -> (usize, String) {
    let dir = env.root.join("sessions").join(name);
    let mut rounds = 0;
    loop {
        let (code, out) = env.run(name);
        if code == Some(0) {
            return (rounds, out);
        }
        assert_eq!(code, Some(3), "{out}");
        let round = annotations::latest_round(&Session::open(&dir).unwrap().files()).unwrap();
        assert_eq!(round, rounds, "the rounds come in order");
        let items = worklist(&dir, round);
        assert!(
            out.contains(&format!(
                "round {round}: 0 of {} annotations in",
                items.len()
            )),
            "{out}"
        );
        let package = dir.join("annotate").join(format!("round-{round:02}"));
        inspect(round, &items, &out, &package);
        for item in &items {
            std::fs::copy(
                truth_of(&item.case),
                package.join("inbox").join(&item.segmentation),
            )
            .unwrap();
        }
        rounds += 1;
        assert!(rounds <= 3, "more rounds than the plan has");
    }
}

/// Every round: the run stops with status 3 and says what it waits for; the annotator copies
/// the ground truth into the inbox; the run goes on. The picks and test Dice equal those of
/// the same session simulated.
#[test]
fn a_scripted_annotator_gives_the_simulated_result() {
    let env = Env::new();
    let dir = env.session("people", "human");
    env.session("simulated", "simulated");
    let (code, out) = env.run("simulated");
    assert_eq!(code, Some(0), "{out}");

    let inspect = &mut |round: usize, items: &[WorkItem], _: &str, package: &Path| {
        let script = std::fs::read_to_string(package.join("open.sh")).unwrap();
        for item in items {
            assert!(script.contains(&format!("itksnap -g '{}'", item.image_paths()[0].display())));
            if round > 0 {
                // The prediction to correct: a NIfTI of the image's geometry, labels 0/1.
                let pred = package.join(&item.prediction);
                let (labels, dims) = read(&pred);
                assert_eq!(dims, read(&env.truth(&item.case)).1);
                assert!(labels.iter().all(|&l| l == 0.0 || l == 1.0));
                assert!(script.contains(&format!("-s '{}'", pred.display())));
            }
        }
    };
    let (rounds, _) = play(&env, "people", &|case| env.truth(case), inspect);
    assert_eq!(rounds, 3, "the initial set and two rounds");
    let (mut people, mut simulated) = (state(&dir), state(&env.root.join("sessions/simulated")));
    assert_close(&people["results"], &simulated["results"], 1e-9, "results");
    // How many picks have tumour is unknown until they are annotated: only the simulation,
    // which reads the data set's segmentations, counts it.
    for s in [&mut people, &mut simulated] {
        for rec in s["picks"].as_array_mut().unwrap() {
            rec.as_object_mut().unwrap().remove("tumour_picks");
        }
    }
    assert_close(&people["picks"], &simulated["picks"], 1e-9, "picks");
    let counted = people["data"]["annotations"].as_array().unwrap();
    assert_eq!(counted.len(), 2 + 1 + 1, "every case of every round");
    // Ground truth as the annotation: whatever the prediction was, the effort is recorded.
    assert!(counted
        .iter()
        .filter(|a| a["round"] != 0)
        .all(|a| a["effort"]["voxels"].as_u64() > Some(0)));
    // The inbox is empty again; the copies are in labels/.
    for r in 0..3 {
        let inbox = dir
            .join("annotate")
            .join(format!("round-{r:02}"))
            .join("inbox");
        assert_eq!(std::fs::read_dir(inbox).unwrap().count(), 0);
    }
    assert_eq!(std::fs::read_dir(dir.join("labels")).unwrap().count(), 4);

    // The report gives the annotators' corrections per round (not for round 0: no prediction).
    let out = env.cmd(&["report", "people"]).output().unwrap();
    assert_ok(&out);
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report/results.json")).unwrap()).unwrap();
    let effort = results["annotation_effort"].as_array().unwrap();
    assert_eq!(effort.len(), 2, "{effort:?}");
    for (e, round) in effort.iter().zip(1..) {
        assert_eq!(e["round"], round);
        assert_eq!(e["cases"], 1);
        let d = e["mean_dice"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&d));
    }
    let md = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
    assert!(md.contains("annotation effort"), "{md}");
    // A Markdown table: its rows start their lines.
    assert!(md.lines().any(|l| l == "|---|---|---|---|---|"), "{md}");
    assert!(md.lines().any(|l| l.starts_with("| 1 | 1 | ")), "{md}");

    // export --labels: the annotated cases in the data set's own layout, naming and labels.
    let out_dir = env.root.join("annotated");
    let out = env
        .cmd(&["export", "people", "--labels", out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out);
    let mut exported = 0;
    for a in counted {
        let case = a["case"].as_str().unwrap();
        let truth = env.truth(case);
        let relative = truth.strip_prefix(&env.data).unwrap();
        let (got, dims) = read(&out_dir.join(relative));
        let (want, want_dims) = read(&truth);
        assert_eq!((got, dims), (want, want_dims), "{case}");
        exported += 1;
    }
    assert_eq!(exported, 4);
}

/// Every file of a session folder, for before/after comparisons.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

/// The phantom's segmentation of `case` with `edit` applied to its labels and header, written
/// to `to`.
fn edited_truth(
    env: &Env,
    case: &str,
    to: &Path,
    edit: impl FnOnce(&mut nifti::NiftiHeader, &mut Vec<u8>, &mut [usize; 3]),
) {
    use nifti::{IntoNdArray, NiftiObject};
    let obj = nifti::ReaderOptions::new()
        .read_file(env.truth(case))
        .unwrap();
    let mut header = obj.header().clone();
    let volume = obj.into_volume().into_ndarray::<f32>().unwrap();
    let mut dims = [volume.shape()[0], volume.shape()[1], volume.shape()[2]];
    let mut labels: Vec<u8> = volume.t().iter().map(|&v| v as u8).collect();
    edit(&mut header, &mut labels, &mut dims);
    use ndarray::ShapeBuilder;
    let a = ndarray::Array::from_shape_vec(ndarray::IxDyn(&dims).f(), labels).unwrap();
    nifti::writer::WriterOptions::new(to)
        .reference_header(&header)
        .write_nifti(&a)
        .unwrap();
}

/// Each bad file is refused with a message that names it and says why, and leaves every file
/// of the session as it was; a second file for a case needs --replace; a bad file dropped
/// into the inbox moves to rejected/ with a note.
#[test]
fn bad_segmentations_are_refused_and_change_nothing() {
    let env = Env::new();
    let dir = env.session("people", "human");
    assert_eq!(env.run("people").0, Some(3));
    let items = worklist(&dir, 0);
    let (a, b) = (&items[0].case, &items[1].case);
    let bad = env.root.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let import = |files: &[&Path], extra: &[&str]| {
        let mut args = vec!["import", "people"];
        args.extend(files.iter().map(|f| f.to_str().unwrap()));
        args.extend(extra);
        let out = env.cmd(&args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let wrong_shape = bad.join(format!("{a}_seg.nii.gz"));
    edited_truth(&env, a, &wrong_shape, |_, labels, dims| {
        dims[2] -= 1;
        labels.truncate(dims.iter().product());
    });
    let wrong_affine = bad.join(format!("{a}.nii.gz"));
    edited_truth(&env, a, &wrong_affine, |h, _, _| {
        h.sform_code = 1;
        h.srow_x = [1.0, 0.0, 0.0, 5.0];
        h.srow_y = [0.0, 1.0, 0.0, 0.0];
        h.srow_z = [0.0, 0.0, 1.0, 0.0];
    });
    let unknown_label = bad.join(format!("{b}-seg.nii.gz"));
    edited_truth(&env, b, &unknown_label, |_, labels, _| labels[10] = 7);
    let truncated = bad.join("cut").join(format!("{a}_seg.nii.gz"));
    std::fs::create_dir_all(truncated.parent().unwrap()).unwrap();
    let whole = std::fs::read(env.truth(a)).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let stranger = bad.join("NOBODY_seg.nii.gz");
    std::fs::copy(env.truth(a), &stranger).unwrap();
    // Hostile files: a header that claims 1024³ voxels, 64 MiB of zeros after the voxels inside
    // the gzip, a sparse .nii of 1 GiB, and a named pipe.
    let raw_truth = {
        use std::io::Read;
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&whole[..])
            .read_to_end(&mut raw)
            .unwrap();
        raw
    };
    let gzip = |raw: &[u8], path: &Path| {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(raw).unwrap();
        std::fs::write(path, gz.finish().unwrap()).unwrap();
    };
    let claims_a_gigavoxel = bad.join("giga").join(format!("{a}_seg.nii.gz"));
    std::fs::create_dir_all(claims_a_gigavoxel.parent().unwrap()).unwrap();
    let mut raw = raw_truth.clone();
    for d in 1..=3 {
        raw[40 + 2 * d..42 + 2 * d].copy_from_slice(&1024i16.to_le_bytes());
    }
    gzip(&raw, &claims_a_gigavoxel);
    let data_after = bad.join("after").join(format!("{a}_seg.nii.gz"));
    std::fs::create_dir_all(data_after.parent().unwrap()).unwrap();
    let mut raw = raw_truth.clone();
    raw.resize(raw.len() + (64 << 20), 0);
    gzip(&raw, &data_after);
    let sparse = bad.join("sparse").join(format!("{a}_seg.nii"));
    std::fs::create_dir_all(sparse.parent().unwrap()).unwrap();
    std::fs::write(&sparse, &raw_truth).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let fifo = bad.join("pipe").join(format!("{a}_seg.nii.gz"));
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let before = snapshot(&dir);
    for (file, why) in [
        (&wrong_shape, "shape"),
        (&wrong_affine, "voxel-to-world transform differs"),
        (&unknown_label, "segmentation label 7"),
        (&truncated, "truncated"),
        (&stranger, "not a case of round 0's worklist"),
        (&claims_a_gigavoxel, "ask for more than"),
        (&data_after, "data after the"),
        (&sparse, "more than a NIfTI file of shape"),
        (&fifo, "a named pipe (FIFO), not a NIfTI file: refused"),
    ] {
        let (code, out) = import(&[file], &[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("refused: ") && l.contains(&file.display().to_string())),
            "the message names the file: {out}"
        );
        assert!(out.contains(why), "{why}: {out}");
        assert!(
            snapshot(&dir) == before,
            "refusing {} changed the session",
            file.display()
        );
    }

    // The right file counts; a second, different one for the case needs --replace.
    let (code, out) = import(&[&env.truth(a)], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("counted for {a} (round 0)")), "{out}");
    let other = bad.join(format!("{a}_seg.nii"));
    edited_truth(&env, a, &other, |_, labels, _| {
        let at = labels.iter().position(|&l| l != 0).unwrap();
        labels[at] = 0;
    });
    let counted = snapshot(&dir);
    let (code, out) = import(&[&other], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--replace"), "{out}");
    assert!(
        snapshot(&dir) == counted,
        "a refused second file changed the session"
    );
    let (code, out) = import(&[&other], &["--replace"]);
    assert_eq!(code, Some(0), "{out}");
    let st = state(&dir);
    let list = st["data"]["annotations"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0]["source"].as_str().unwrap().ends_with(".nii"));
    // The replaced copy is gone from labels/.
    assert_eq!(std::fs::read_dir(dir.join("labels")).unwrap().count(), 1);

    // A bad file in the inbox: the run moves it to rejected/ with a note, and waits on.
    let package = dir.join("annotate/round-00");
    std::fs::copy(
        &unknown_label,
        package.join("inbox").join(format!("{b}_seg.nii.gz")),
    )
    .unwrap();
    let (code, out) = env.run("people");
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("refused, moved to rejected/"), "{out}");
    let note = std::fs::read_to_string(
        package
            .join("rejected")
            .join(format!("{b}_seg.nii.gz.why.txt")),
    )
    .unwrap();
    assert!(note.contains("segmentation label 7"), "{note}");
    assert!(out.contains("round 0: 1 of 2 annotations in"), "{out}");
    // A second refused file of the same name is kept beside the first, with its own note.
    std::fs::copy(
        &claims_a_gigavoxel,
        package.join("inbox").join(format!("{b}_seg.nii.gz")),
    )
    .unwrap();
    let (code, out) = env.run("people");
    assert_eq!(code, Some(3), "{out}");
    let rejected = package.join("rejected");
    let second =
        std::fs::read_to_string(rejected.join(format!("{b}_seg.2.nii.gz.why.txt"))).unwrap();
    assert!(second.contains("ask for more than"), "{second}");
    assert_eq!(
        std::fs::read(rejected.join(format!("{b}_seg.nii.gz"))).unwrap(),
        std::fs::read(&unknown_label).unwrap(),
        "the first refused file was replaced"
    );
}

/// The counted copies in labels/ (hidden files are a killed import's leftovers).
fn label_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("labels"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// The session's counted segmentations: (case, file, checksum).
fn counted(dir: &Path) -> Vec<(String, String, String)> {
    state(dir)["data"]["annotations"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| {
                    let f = |k: &str| a[k].as_str().unwrap().to_string();
                    (f("case"), f("file"), f("checksum"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL between storing a segmentation's copy and counting it (the import paused there by
/// a debug-build hook) leaves it not counted, and a replacement killed there leaves the first
/// counted, whole: an import counts entirely or not at all.
#[test]
#[cfg(debug_assertions)]
fn an_import_killed_before_it_counts_changes_nothing_that_counts() {
    let env = Env::new();
    let dir = env.session("people", "human");
    assert_eq!(env.run("people").0, Some(3));
    let case = worklist(&dir, 0)[0].case.clone();
    let truth = env.truth(&case);
    let killed_at_the_pause = |file: &Path, extra: &[&str], copies: usize| {
        let mut args = vec!["import", "people", file.to_str().unwrap()];
        args.extend(extra);
        let mut child = env
            .cmd(&args)
            .env("SUGGESTIVE_TEST_IMPORT_PAUSE", "10000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while label_files(&dir).len() < copies {
            assert!(
                start.elapsed().as_secs() < 120,
                "the import never stored its copy"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    };
    let check_counted = |want: &[u8]| {
        let list = counted(&dir);
        assert_eq!(list.len(), 1);
        let copy = std::fs::read(dir.join("labels").join(&list[0].1)).unwrap();
        assert_eq!(copy, want, "the counted copy is the file imported");
        assert_eq!(
            list[0].2,
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&copy))
        );
    };

    // Killed with the copy stored: not counted.
    killed_at_the_pause(&truth, &[], 1);
    assert!(counted(&dir).is_empty(), "a killed import counted");
    // Imported whole: counted.
    let out = env
        .cmd(&["import", "people", truth.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out);
    let first = std::fs::read(&truth).unwrap();
    check_counted(&first);

    // A replacement killed with its copy stored: the first stays counted, whole.
    let other = env.root.join(format!("{case}_seg.nii"));
    edited_truth(&env, &case, &other, |_, labels, _| {
        let at = labels.iter().position(|&l| l != 0).unwrap();
        labels[at] = 0;
    });
    killed_at_the_pause(&other, &["--replace"], 2);
    check_counted(&first);
    // The replacement imported whole: it counts, and the first's copy is gone.
    let out = env
        .cmd(&["import", "people", other.to_str().unwrap(), "--replace"])
        .output()
        .unwrap();
    assert_ok(&out);
    check_counted(&std::fs::read(&other).unwrap());
    assert_eq!(label_files(&dir).len(), 1);
}

/// Moves the segmentation files of the data set's first `n` cases (in ID order) out of it,
/// into the annotator's `truth/`: they become scans without labels. Their IDs.
fn unlabel(env: &Env, n: usize) -> Vec<String> {
    let truth = env.root.join("truth");
    std::fs::create_dir_all(&truth).unwrap();
    let layout = suggestive::data::discover(&env.data).unwrap();
    layout.patients[..n]
        .iter()
        .map(|p| {
            let seg = p.seg.as_ref().unwrap();
            std::fs::rename(seg, truth.join(format!("{}.nii.gz", p.id))).unwrap();
            p.id.clone()
        })
        .collect()
}

/// The annotator's segmentation of `case`: from `truth/` when the data set has none.
fn truth_of(env: &Env, case: &str) -> PathBuf {
    let moved = env.root.join("truth").join(format!("{case}.nii.gz"));
    if moved.exists() {
        moved
    } else {
        env.truth(case)
    }
}

/// Cases without a segmentation file are annotated like the others; the test cases are the
/// labelled ones; and the pool's segmentation files are never read: damaged right after the
/// split, the session still runs to its end. A test case's segmentation that changes is
/// noticed.
#[test]
fn cases_without_labels_join_the_pool_whose_files_are_never_read() {
    let env = Env::new();
    let unlabelled = unlabel(&env, 6);
    let dir = env.session("people", "human");
    let layout = suggestive::data::discover(&env.data).unwrap();
    let inspect = &mut |round: usize, _: &[WorkItem], out: &str, _: &Path| {
        if round == 1 {
            // A test case's segmentation changed since the split: the run refuses to go on.
            let test = state(&dir)["data"]["test"][0].as_u64().unwrap() as usize;
            let seg = env.truth(&layout.patients[test].id);
            let kept = std::fs::read(&seg).unwrap();
            std::fs::copy(truth_of(&env, &unlabelled[0]), &seg).unwrap();
            let (code, out) = env.run("people");
            assert_eq!(code, Some(1), "{out}");
            let id = &layout.patients[test].id;
            assert!(
                out.contains(&format!(
                    "{}: the segmentation of test case {id} changed since the split",
                    seg.display()
                )),
                "{out}"
            );
            std::fs::write(&seg, kept).unwrap();
        }
        if round != 0 {
            return;
        }
        let data = &state(&dir)["data"];
        let ids = |key: &str| -> Vec<String> {
            data[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| layout.patients[p.as_u64().unwrap() as usize].id.clone())
                .collect()
        };
        let (test, pool) = (ids("test"), ids("train"));
        assert!(!test.is_empty(), "four labelled cases give test cases");
        assert!(test.iter().all(|c| !unlabelled.contains(c)), "{test:?}");
        assert!(unlabelled.iter().all(|c| pool.contains(c)), "{pool:?}");
        assert!(
            pool.len() > unlabelled.len(),
            "labelled cases in the pool too"
        );
        assert!(
            out.contains(&format!(
                "{} cases in the pool, {} test case",
                pool.len(),
                test.len()
            )),
            "{out}"
        );
        for case in pool.iter().filter(|c| !unlabelled.contains(c)) {
            // The annotator keeps a copy (`truth_of` looks there first).
            let copy = env.root.join("truth").join(format!("{case}.nii.gz"));
            std::fs::copy(env.truth(case), copy).unwrap();
            std::fs::write(env.truth(case), b"damaged").unwrap();
        }
    };
    let (rounds, out) = play(&env, "people", &|case| truth_of(&env, case), inspect);
    assert_eq!(rounds, 3, "{out}");
    let st = state(&dir);
    let results = st["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "test Dice after every round");
    let test = st["data"]["test"].as_array().unwrap().len();
    assert!(results
        .iter()
        .all(|r| r["dice"].as_array().unwrap().len() == test));
    // The data set the session trains on, and the dashboard outlines picks from: a pool case
    // has the annotator's tumour once counted, none before; a test case has its own.
    let session = Session::open(&dir).unwrap();
    let ds = session.load_dataset(None, &env.root.join("cache")).unwrap();
    let data = &session.state.repeats[0];
    let annotated: Vec<&str> = data.annotations.iter().map(|a| a.case.as_str()).collect();
    let plane = ds.size() * ds.size();
    let has_tumour = |p: usize| {
        let r = ds.patients()[p].slice_range();
        ds.masks()[r.start * plane..r.end * plane]
            .iter()
            .any(|&m| m != 0)
    };
    for &p in &data.train {
        let id = ds.patients()[p].id.as_str();
        assert_eq!(has_tumour(p), annotated.contains(&id), "{id}");
    }
    assert!(data.test.iter().all(|&p| has_tumour(p)));
}

/// A data set without any segmentation: the run says evaluation is off, the rounds go on,
/// nothing is measured, and the report still gives the annotation effort. A test fraction of
/// 0 does the same on a labelled data set. A case removed from the folder mid-session is
/// noticed before the session's indices are trusted.
#[test]
fn without_labelled_test_cases_evaluation_is_off() {
    let env = Env::new();
    unlabel(&env, 10);
    // A folder of scans is no data set for a simulation, which says where it is one.
    let out = env
        .cmd(&["dataset", env.data.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("no labelled cases, only 10 without segmentation")
            && err.contains("experiment.labels = \"human\""),
        "{err}"
    );
    let dir = env.session("scans", "human");
    let inspect = &mut |round: usize, items: &[WorkItem], out: &str, _: &Path| {
        if round == 0 {
            assert!(
                out.contains("10 cases in the pool, no labelled test case: evaluation off"),
                "{out}"
            );
        }
        if round == 1 {
            let case = &items[0].case;
            let folder = patient_file(&env.data, case, "flair")
                .parent()
                .unwrap()
                .to_path_buf();
            let away = env.root.join("away");
            std::fs::rename(&folder, &away).unwrap();
            let (code, out) = env.run("scans");
            assert_eq!(code, Some(1), "{out}");
            assert!(
                out.contains("its data set changed since the session started (10 patients"),
                "{out}"
            );
            std::fs::rename(&away, &folder).unwrap();
        }
    };
    let (rounds, out) = play(&env, "scans", &|case| truth_of(&env, case), inspect);
    assert_eq!(rounds, 3, "{out}");
    let st = state(&dir);
    assert!(st["data"]["test"].as_array().unwrap().is_empty());
    assert!(st["results"].as_array().unwrap().is_empty());
    assert_eq!(st["data"]["annotations"].as_array().unwrap().len(), 4);
    let out = env.cmd(&["report", "scans"]).output().unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evaluation off"), "{text}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report/results.json")).unwrap()).unwrap();
    assert_eq!(results["annotation_effort"].as_array().unwrap().len(), 2);
    let md = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
    assert!(md.contains("evaluation off"), "{md}");
    assert!(
        !dir.join("report/dice_vs_budget.png").exists(),
        "no curve to draw"
    );

    let labelled = Env::new();
    labelled.session_with("all", "human", &["experiment.test_fraction=0"]);
    let (code, out) = labelled.run("all");
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("10 cases in the pool, no labelled test case: evaluation off"),
        "{out}"
    );
}

/// The Decathlon's layout: 4D images, `imagesTs/` cases without labels, label values 1-3.
/// The predictions are 3D in the image's space, and the export writes `labelsTr/` with the
/// annotators' label values.
#[test]
fn a_decathlon_task_with_unlabelled_cases_is_annotated() {
    let env = Env::in_layout(PhantomLayout::Msd);
    let data = env.data.clone();
    // Three cases move to imagesTs/; the annotator keeps their segmentations.
    let truth = env.root.join("truth");
    std::fs::create_dir_all(&truth).unwrap();
    std::fs::create_dir_all(data.join("imagesTs")).unwrap();
    let layout = suggestive::data::discover(&data).unwrap();
    for p in &layout.patients[..3] {
        let name = format!("{}.nii.gz", p.id);
        std::fs::rename(
            data.join("imagesTr").join(&name),
            data.join("imagesTs").join(&name),
        )
        .unwrap();
        std::fs::rename(p.seg.as_ref().unwrap(), truth.join(&name)).unwrap();
    }
    let dir = env.session("task", "human");
    let label_of = |case: &str| {
        let moved = truth.join(format!("{case}.nii.gz"));
        if moved.exists() {
            moved
        } else {
            data.join("labelsTr").join(format!("{case}.nii.gz"))
        }
    };
    let inspect = &mut |round: usize, items: &[WorkItem], out: &str, package: &Path| {
        if round == 0 {
            // A quarter of the seven labelled cases test; the imagesTs/ cases are in the pool.
            assert!(out.contains("8 cases in the pool, 2 test cases"), "{out}");
        }
        for item in items {
            assert_eq!(item.segmentation, format!("{}_seg.nii.gz", item.case));
            if round > 0 {
                let (labels, dims) = read(&package.join(&item.prediction));
                assert_eq!(dims, read(&label_of(&item.case)).1, "3D, the image's space");
                assert!(labels.iter().all(|&l| l == 0.0 || l == 1.0));
            }
        }
    };
    let (rounds, out) = play(&env, "task", &label_of, inspect);
    assert_eq!(rounds, 3, "{out}");
    let st = state(&dir);
    let test = st["data"]["test"].as_array().unwrap();
    assert!(!test.is_empty());
    assert_eq!(st["results"].as_array().unwrap().len(), 3);
    // The annotated cases include imagesTs/ ones (the seed decides which; the export of
    // those is what this test is after).
    let from_images_ts = st["data"]["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            truth
                .join(format!("{}.nii.gz", a["case"].as_str().unwrap()))
                .exists()
        })
        .count();
    assert!(from_images_ts > 0, "no imagesTs/ case was picked");
    let out = env
        .cmd(&["export", "task", "--labels"])
        .arg(env.root.join("export"))
        .output()
        .unwrap();
    assert_ok(&out);
    let exported: Vec<PathBuf> = tree(&env.root.join("export"))
        .into_iter()
        .filter(|f| f.is_file())
        .collect();
    assert_eq!(exported.len(), 4, "{exported:?}");
    for f in exported {
        assert!(f.parent().unwrap().ends_with("labelsTr"), "{}", f.display());
        let case = f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".nii.gz", "");
        let (back, _) = read(&f);
        let (given, _) = read(&label_of(&case));
        assert_eq!(
            back, given,
            "{case}: the annotator's labels, values as given"
        );
    }
}

#[test]
fn people_labels_take_one_strategy_and_the_rounds_protocol() {
    let env = Env::new();
    for (sets, why) in [
        (
            vec!["experiment.arms=[\"random\",\"proposed\"]"],
            "takes one strategy",
        ),
        (
            vec!["experiment.arms=[\"oracle\"]"],
            "oracle needs the labels",
        ),
        (
            vec!["experiment.protocol=\"budgets\"", "experiment.budgets=[4]"],
            "needs the rounds protocol",
        ),
        (vec!["experiment.repeats=2"], "experiment.repeats must be 1"),
    ] {
        let mut args = vec![
            "new".to_string(),
            "x".into(),
            "--preset".into(),
            "annotate".into(),
            "--dataset".into(),
            env.data.display().to_string(),
        ];
        for s in sets {
            args.push("--set".into());
            args.push(s.into());
        }
        let out = env
            .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{why}: {err}");
    }
    // People may annotate every case (no test set, evaluation off); a simulation needs one.
    let data = env.data.display().to_string();
    let zero = [
        "--dataset",
        data.as_str(),
        "--set",
        "experiment.test_fraction=0",
    ];
    let out = env
        .cmd(&[&["new", "all", "--preset", "annotate"][..], &zero].concat())
        .output()
        .unwrap();
    assert_ok(&out);
    let out = env
        .cmd(&[&["new", "sim", "--preset", "demo"][..], &zero].concat())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("test_fraction 0 must be between 0 and 1"),
        "{err}"
    );
    // A simulated session refuses imports.
    env.session("simulated", "simulated");
    let out = env
        .cmd(&["import", "simulated", "anything_seg.nii.gz"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not labelled by people"));
}

/// A data set whose folder name holds quotes, `$( )`, backticks and a newline: every line of
/// each round's `open.sh`, the commented 3D Slicer lines uncommented, runs the viewers with the
/// exact paths and runs nothing else. A `;` (the worklist's separator) is refused by name.
#[test]
fn open_sh_passes_hostile_paths_as_words_and_runs_nothing_else() {
    let env = Env::new();
    let hostile = env
        .root
        .join("data 'q' \"d\" '$(touch MARK)' $(touch MARK) `touch MARK`\ntouch MARK");
    std::fs::rename(&env.data, &hostile).unwrap();
    let name = "hostile-paths";
    let labels = "experiment.labels=\"human\"";
    let cfg = tiny_session_config(&hostile, &["experiment.arms=[\"proposed\"]", labels]);
    Session::create(&env.root.join("sessions").join(name), cfg).unwrap();
    // Fake viewers that write their arguments, NUL-separated.
    let bin = env.root.join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for viewer in ["itksnap", "Slicer"] {
        let path = bin.join(viewer);
        let script = format!("#!/bin/sh\nprintf '%s\\0' \"$@\" >> \"$ARGS_DIR/{viewer}\"\n");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let inspect = &mut |round: usize, items: &[WorkItem], _: &str, package: &Path| {
        let script = std::fs::read_to_string(package.join("open.sh")).unwrap();
        let uncommented = script.replace("\n# Slicer ", "\nSlicer ");
        let work = env.root.join(format!("open-{round}"));
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("open.sh"), &uncommented).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let out = std::process::Command::new("sh")
            .arg("open.sh")
            .current_dir(&work)
            .env("PATH", path)
            .env("ARGS_DIR", &work)
            .output()
            .unwrap();
        assert_ok(&out);
        assert!(
            !work.join("MARK").exists(),
            "open.sh ran a command from a path"
        );
        let args = |viewer: &str| -> Vec<String> {
            let bytes = std::fs::read(work.join(viewer)).unwrap();
            let text = String::from_utf8(bytes).unwrap();
            text.split_terminator('\0').map(String::from).collect()
        };
        let (itksnap, slicer) = (args("itksnap"), args("Slicer"));
        let firsts: Vec<String> = items
            .iter()
            .map(|i| i.image_paths()[0].display().to_string())
            .collect();
        let given: Vec<&String> = itksnap
            .iter()
            .zip(itksnap.iter().skip(1))
            .filter(|(flag, _)| *flag == "-g")
            .map(|(_, p)| p)
            .collect();
        assert_eq!(given.len(), items.len());
        for (g, want) in given.iter().zip(&firsts) {
            assert_eq!(*g, want);
            assert!(
                want.contains("$(touch MARK) `touch MARK`\ntouch MARK/"),
                "{want}"
            );
        }
        // Slicer's argument is Python code: run it with a stand-in for slicer.util.
        assert_eq!(slicer.len(), 2 * items.len());
        for (pair, want) in slicer.chunks(2).zip(&firsts) {
            assert_eq!(pair[0], "--python-code");
            let program = format!(
                "import sys, types\nout = []\nslicer = types.SimpleNamespace(util=types.SimpleNamespace(loadVolume=out.append, loadSegmentation=out.append))\n{}\nsys.stdout.write('\\0'.join(out))",
                pair[1]
            );
            let Ok(py) = std::process::Command::new("python3")
                .arg("-c")
                .arg(&program)
                .output()
            else {
                continue; // no python3: the shell side was checked
            };
            assert!(
                py.status.success(),
                "{}",
                String::from_utf8_lossy(&py.stderr)
            );
            let loaded = String::from_utf8(py.stdout).unwrap();
            assert_eq!(loaded.split('\0').next().unwrap(), want);
            assert_eq!(loaded.split('\0').count(), if round > 0 { 2 } else { 1 });
        }
    };
    let truth_of = |case: &str| patient_file(&hostile, case, "seg");
    let (rounds, _) = play(&env, name, &truth_of, inspect);
    assert_eq!(rounds, 3);
    assert!(!env.root.join("MARK").exists());

    let with_separator = env.root.join("data;x");
    std::fs::rename(&hostile, &with_separator).unwrap();
    let cfg = tiny_session_config(&with_separator, &["experiment.arms=[\"proposed\"]", labels]);
    Session::create(&env.root.join("sessions").join("separator"), cfg).unwrap();
    let (code, out) = env.run("separator");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("data;x/") && out.contains("separates a case's image files with ';'"),
        "{out}"
    );
    let package = env.root.join("sessions/separator/annotate/round-00");
    assert!(!package.join("worklist.csv").exists() && !package.join("open.sh").exists());
}

/// `import` while a run holds the session: the file goes into the inbox only when the round
/// still waits for annotations; once it has them all, the run is training for the next round
/// and would never take it, so the import is refused and nothing is written.
#[test]
fn an_import_a_running_round_cannot_take_is_refused() {
    let env = Env::new();
    let dir = env.session("people", "human");
    assert_eq!(env.run("people").0, Some(3));
    let items = worklist(&dir, 0);
    let truth = |i: usize| env.truth(&items[i].case);
    let import = |file: &Path| {
        let out = env
            .cmd(&["import", "people", file.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, out) = import(&truth(0));
    assert_eq!(code, Some(0), "{out}");
    let inbox = dir.join("annotate/round-00/inbox");
    {
        // A run that waits for round 0 holds the session: the file is left for it.
        let session = Session::open(&dir).unwrap();
        let _lock = session.files().lock_repeat(0).unwrap();
        let (code, out) = import(&truth(1));
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("for it to take"), "{out}");
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 1);
    }
    std::fs::remove_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    let (code, out) = import(&truth(1));
    assert_eq!(code, Some(0), "{out}");
    // Round 0 is complete: a run that holds the session now trains for round 1.
    let session = Session::open(&dir).unwrap();
    let _lock = session.files().lock_repeat(0).unwrap();
    let before = snapshot(&dir);
    let (code, out) = import(&truth(1));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("round 0 of session people has all its annotations")
            && out.contains("nothing was imported"),
        "{out}"
    );
    assert!(
        snapshot(&dir) == before,
        "a refused import changed the session"
    );
}

/// Writes `items` as round `round`'s worklist, as an editor would.
fn write_worklist(dir: &Path, round: usize, items: &[WorkItem]) {
    let path = dir.join(format!("annotate/round-{round:02}/worklist.csv"));
    let mut w = csv::Writer::from_path(path).unwrap();
    for item in items {
        w.serialize(item).unwrap();
    }
    w.flush().unwrap();
}

#[test]
fn what_counts_comes_from_the_recorded_picks_not_the_worklist() {
    let env = Env::new();
    let dir = env.session("people", "human");
    assert_eq!(env.run("people").0, Some(3));
    let import = |name: &str, file: &Path| {
        let out = env
            .cmd(&["import", name, file.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    // A test case written into the worklist in place of a picked one: its segmentation would
    // train the model on the data it is tested on.
    let items = worklist(&dir, 0);
    let test_case = state(&dir)["data"]["test_cases"][0][0]
        .as_str()
        .unwrap()
        .to_string();
    let mut edited = items.clone();
    edited[1].case = test_case.clone();
    edited[1].segmentation = format!("{test_case}_seg.nii.gz");
    write_worklist(&dir, 0, &edited);
    let before = snapshot(&dir);
    let (code, out) = import("people", &env.truth(&test_case));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "case {test_case} is in {}",
            dir.join("annotate/round-00/worklist.csv").display()
        )) && out.contains("not among round 0's recorded picks"),
        "{out}"
    );
    assert!(
        snapshot(&dir) == before,
        "a refused import changed the session"
    );
    // The run refuses it from the inbox the same way, into rejected/.
    let inbox = dir.join("annotate/round-00/inbox");
    std::fs::copy(
        env.truth(&test_case),
        inbox.join(format!("{test_case}_seg.nii.gz")),
    )
    .unwrap();
    let (code, out) = env.run("people");
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("not among round 0's recorded picks"), "{out}");
    assert!(
        state(&dir)["data"]["annotations"].is_null(),
        "nothing counted"
    );
    write_worklist(&dir, 0, &items);

    // Image-wise, the slices a segmentation counts on are the picked ones, whatever the
    // worklist says.
    let image = env.session_with("slices", "human", &["experiment.granularity=\"image\""]);
    assert_eq!(env.run("slices").0, Some(3));
    let items = worklist(&image, 0);
    let mut edited = items.clone();
    let picked = edited[0].slice_list();
    let other = (0..).find(|z| !picked.contains(z)).unwrap();
    edited[0].slices = format!("{} {other}", edited[0].slices);
    write_worklist(&image, 0, &edited);
    let before = snapshot(&image);
    let (code, out) = import("slices", &env.truth(&items[0].case));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("asks for slices {}", edited[0].slices))
            && out.contains("the worklist was edited"),
        "{out}"
    );
    assert!(
        snapshot(&image) == before,
        "a refused import changed the session"
    );
    write_worklist(&image, 0, &items);
    let (code, out) = import("slices", &env.truth(&items[0].case));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn an_import_onto_a_full_disk_names_the_file_and_counts_nothing() {
    // A small file system over labels/, already full, in a mount namespace of its own (no
    // privileges needed where user namespaces are allowed).
    let probe = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: this system allows no user namespaces (unshare --user --mount)");
        return;
    }
    let env = Env::new();
    let dir = env.session("people", "human");
    assert_eq!(env.run("people").0, Some(3));
    let case = worklist(&dir, 0)[0].case.clone();
    let labels = dir.join("labels");
    std::fs::create_dir_all(&labels).unwrap();
    let before = snapshot(&dir);
    let import = env.cmd(&["import", "people", env.truth(&case).to_str().unwrap()]);
    let mut full = std::process::Command::new("unshare");
    full.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(
            r#"mount -t tmpfs -o size=8k tmpfs "$1" || exit 90
               dd if=/dev/zero of="$1/filler" bs=1k count=64 2>/dev/null
               shift; exec "$@""#,
        )
        .arg("sh")
        .arg(&labels)
        .arg(import.get_program())
        .args(import.get_args());
    for (k, v) in import.get_envs() {
        if let Some(v) = v {
            full.env(k, v);
        }
    }
    let out = full.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: cannot store its copy in {}; nothing was counted",
            env.truth(&case).display(),
            labels.display()
        )) && err.contains("No space left on device"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        snapshot(&dir) == before,
        "a failed import changed the session"
    );
}
