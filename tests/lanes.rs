//! `run --devices`: the arms of a round in concurrent lanes give the session one device gives.
//!
//! A test binary of its own: network initialisation draws from libtorch's global generator
//! (the runner holds a lock while it seeds and builds, `nets::seeded`), and tests in the same
//! process that draw from it without that lock would change those draws.

mod common;

use common::*;
use suggestive::session::run::{Control, Outcome, Runner};
use suggestive::session::Session;
use tch::Device;

/// Runs the session in `dir` with the arms of each round on `devices` (lanes), stopping once
/// after `stop_after` epoch events of the arms when given.
fn run_in_lanes(dir: &std::path::Path, cache: &std::path::Path, stop_after: Option<usize>) {
    let open = || {
        let mut r = Runner::open(Session::open(dir).unwrap(), None, cache, None).unwrap();
        r.set_lanes(vec![Device::Cpu, Device::Cpu]).unwrap();
        r
    };
    if let Some(n) = stop_after {
        let control = Control::default();
        let stop = control.stop.clone();
        let mut epochs = 0;
        let outcome = open()
            .run(&control, &mut |e| {
                if matches!(
                    e,
                    suggestive::session::events::Event::EpochDone { arm: Some(_), .. }
                ) {
                    epochs += 1;
                    if epochs == n {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
            .unwrap();
        assert_eq!(outcome, Outcome::Stopped);
    }
    let outcome = open().run(&Control::default(), &mut |_| {}).unwrap();
    assert_eq!(outcome, Outcome::Finished);
}

#[test]
fn arms_on_several_devices_give_the_same_session_as_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    // Three arms on two lanes: lane 0 runs random and oracle, lane 1 proposed.
    let one = run_to_end(tmp.path(), &[]);
    let cfg = tiny_session_config(&tmp.path().join("data"), &[]);
    let cache = tmp.path().join("cache");
    for (name, stop) in [("lanes", None), ("lanes-stopped", Some(2))] {
        let dir = tmp.path().join(name);
        Session::create(&dir, cfg.clone()).unwrap();
        run_in_lanes(&dir, &cache, stop);
        let s = Session::open(&dir).unwrap();
        assert_eq!(s.state.done, one.state.done, "{name}");
        // Equal up to the last bits of floats: two CPU lanes share the cores, and libtorch's
        // reductions may then split differently (separate GPUs do not share anything).
        let json = |s: &Session| serde_json::to_value((&s.state.picks, &s.state.results)).unwrap();
        assert_close(&json(&s), &json(&one), 1e-9, name);
        assert_eq!(s.state.partial_epochs, 0);
        assert!(
            s.state
                .device
                .as_deref()
                .unwrap_or("")
                .contains("arms in parallel"),
            "{:?}",
            s.state.device
        );
        // Rounds leave no partial checkpoints behind.
        let partial = tree(&dir)
            .iter()
            .filter(|p| p.to_string_lossy().contains(".partial"))
            .count();
        assert_eq!(partial, 0, "{name}");
    }
}
