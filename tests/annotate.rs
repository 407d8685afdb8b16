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

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let data = tiny_phantom(
            &root.join("data"),
            &[("CBICA", 5), ("TCIA", 5)],
            PhantomLayout::Brats2019,
            4,
        );
        Env {
            _tmp: tmp,
            root,
            data,
        }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = bin();
        c.args(args)
            .env("SUGGESTIVE_CACHE_DIR", self.root.join("cache"))
            .env("SUGGESTIVE_SESSIONS_DIR", self.root.join("sessions"));
        c
    }

    /// A session `name` of the tiny setting with one arm, labelled as `labels` says.
    fn session(&self, name: &str, labels: &str) -> PathBuf {
        let cfg = tiny_session_config(
            &self.data,
            &[
                "experiment.arms=[\"proposed\"]",
                &format!("experiment.labels=\"{labels}\""),
            ],
        );
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

    let mut rounds = 0;
    loop {
        let (code, out) = env.run("people");
        if code == Some(0) {
            break;
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
        let script = std::fs::read_to_string(package.join("open.sh")).unwrap();
        for item in &items {
            assert!(script.contains(&format!("itksnap -g '{}'", item.image_paths()[0].display())));
            if round > 0 {
                // The prediction to correct: a NIfTI of the image's geometry, labels 0/1.
                let pred = package.join(&item.prediction);
                let (labels, dims) = read(&pred);
                assert_eq!(dims, read(&env.truth(&item.case)).1);
                assert!(labels.iter().all(|&l| l == 0.0 || l == 1.0));
                assert!(script.contains(&format!("-s '{}'", pred.display())));
            }
            std::fs::copy(
                env.truth(&item.case),
                package.join("inbox").join(&item.segmentation),
            )
            .unwrap();
        }
        rounds += 1;
        assert!(rounds <= 3, "more rounds than the plan has");
    }
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
}
