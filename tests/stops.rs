//! Stops in the middle of an epoch (a pause, Ctrl-C, a scheduler's SIGTERM): training stops at
//! the next batch boundary with a checkpoint of that point, and the resumed run continues from
//! that batch to exactly what an uninterrupted run reaches.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use suggestive::phantom::PhantomLayout;
use suggestive::session::events::{Event, Phase};
use suggestive::session::run::{Control, Outcome, Runner};
use suggestive::session::state::RepeatState;
use suggestive::session::Session;

/// Small batches, so every epoch has several.
const SETTINGS: [&str; 6] = [
    "unet.batch_size=2",
    "vae.batch_size=4",
    "unet.epochs_initial=2",
    "experiment.rounds=1",
    "experiment.per_round=1",
    "experiment.arms=[\"random\", \"proposed\", \"full\"]",
];

fn repeat_state(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("repeats/01/state.json")).unwrap();
    let state: RepeatState = serde_json::from_str(&text).unwrap();
    serde_json::to_value(state).unwrap()
}

#[test]
fn a_stop_mid_epoch_resumes_from_that_batch_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_phantom(
        &tmp.path().join("data"),
        &[("CBICA", 5), ("TCIA", 5)],
        PhantomLayout::Brats2019,
        3,
    );
    let cache = tmp.path().join("cache");
    let cfg = tiny_session_config(&data, &SETTINGS);
    let whole = tmp.path().join("whole");
    let stopped = tmp.path().join("stopped");
    Session::create(&whole, cfg.clone()).unwrap();
    Session::create(&stopped, cfg).unwrap();
    let mut runner = Runner::open(Session::open(&whole).unwrap(), None, &cache, None).unwrap();
    assert_eq!(
        runner.run(&Control::default(), &mut |_| {}).unwrap(),
        Outcome::Finished
    );
    drop(runner);

    // Every training step (the VAE, the initial UNet, each arm's round, the full-data
    // reference) is stopped as it starts, so after its first batch, then again after the
    // batch its resumed run does next; each run is a new runner, as a new process would be.
    let mut stops: HashMap<usize, usize> = HashMap::new();
    let mut mid_epoch_stops = 0;
    for run in 0.. {
        assert!(run < 100, "no end in sight");
        let mut runner =
            Runner::open(Session::open(&stopped).unwrap(), None, &cache, None).unwrap();
        let control = Control::default();
        let stop = control.stop.clone();
        let outcome = runner
            .run(&control, &mut |ev| {
                if let Event::StepStarted { index, phase, .. } = ev {
                    if matches!(phase, Phase::Vae | Phase::Training | Phase::Pretraining) {
                        let n = stops.entry(*index).or_insert(0);
                        if *n < 2 {
                            *n += 1;
                            stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
            .unwrap();
        drop(runner);
        if outcome == Outcome::Finished {
            break;
        }
        let s = Session::open(&stopped).unwrap();
        let p = s.state.progress_of(0);
        assert!(p.in_step(), "stopped before any batch: {p:?}");
        if let Some(m) = p.mid_epoch {
            mid_epoch_stops += 1;
            assert!(m.batches >= 1 && m.loss_sum > 0.0, "{m:?}");
            // The point's files are there, and no other point's.
            let step = s.next_step().unwrap().0;
            let (w, a) = s.files().partial_at(&step, p.partial_epochs, m.batches);
            assert!(w.exists() && a.exists(), "{}", w.display());
        }
    }
    // Each of the 6 training steps stopped mid-epoch at least once (after its first batch).
    assert!(mid_epoch_stops >= 6, "{mid_epoch_stops} mid-epoch stops");
    assert_eq!(
        repeat_state(&stopped),
        repeat_state(&whole),
        "the stopped and resumed run differs from the uninterrupted one"
    );
    let leftovers: Vec<_> = std::fs::read_dir(stopped.join("repeats/01/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial") || n.contains(".adam"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// SIGTERM (as Slurm sends at a time limit) and SIGUSR1 (`--signal=USR1@120`) stop a run
/// within seconds, mid-epoch, with the status that says it stopped, not failed.
#[test]
fn sigterm_and_sigusr1_stop_a_run_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_phantom(
        &tmp.path().join("data"),
        &[("CBICA", 5), ("TCIA", 5)],
        PhantomLayout::Brats2019,
        3,
    );
    for (i, signal) in [libc::SIGTERM, libc::SIGUSR1].into_iter().enumerate() {
        let mut sets = SETTINGS.to_vec();
        sets.push("vae.epochs=400");
        let cfg = tiny_session_config(&data, &sets);
        let dir = tmp.path().join(format!("s{i}"));
        Session::create(&dir, cfg).unwrap();
        let mut child = bin()
            .args(["run", dir.to_str().unwrap(), "--jsonl"])
            .env("SUGGESTIVE_CACHE_DIR", tmp.path().join("cache"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Into the VAE's long training: wait for its second epoch.
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("\"epoch_done\"") && line.contains("\"epoch\":2,") {
                break;
            }
        }
        let sent = Instant::now();
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert_eq!(status.code(), Some(130), "{status:?}");
        let s = Session::open(&dir).unwrap();
        let p = s.state.progress_of(0);
        assert!(p.partial_epochs >= 2, "{p:?}");
    }
}
