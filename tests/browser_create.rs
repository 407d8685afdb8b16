//! A session created in the browser with a relative data folder runs from another folder.
//! (Its own test binary: it changes the process's working folder.)

mod common;

use std::process::Command;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use suggestive::phantom::PhantomLayout;
use suggestive::session::Session;
use suggestive::tui::browser::{Browser, Form, Mode};

#[test]
fn a_relative_data_folder_typed_in_the_browser_is_kept_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    tiny_phantom(
        &root.join("data"),
        &[("CBICA", 4), ("TCIA", 4)],
        PhantomLayout::Brats2019,
        6,
    );
    std::env::set_current_dir(&root).unwrap();
    let sessions = root.join("sessions");
    let mut b = Browser::new(sessions.clone());
    b.mode = Mode::Create(Form {
        preset: 0, // demo
        dataset: "data".into(),
        name: "rel".into(),
        field: 2,
        message: None,
    });
    b.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!(b.mode, Mode::List, "the form stayed open: {:?}", b.mode);
    let dir = sessions.join("rel");
    let s = Session::open(&dir).unwrap();
    assert_eq!(s.config.dataset.path, root.join("data"));

    // Tiny settings (a session's settings may change until its first run), then a run from
    // another folder.
    let mut cfg = tiny_session_config(&s.config.dataset.path, &["experiment.rounds=1"]);
    cfg.dataset.path = s.config.dataset.path.clone();
    std::fs::write(dir.join("session.toml"), cfg.to_toml()).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["run", dir.to_str().unwrap()])
        .env("SUGGESTIVE_CACHE_DIR", root.join("cache"))
        .env("SUGGESTIVE_DATA_DIR", root.join("share"))
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        Session::open(&dir).unwrap().status().0,
        suggestive::session::Status::Finished
    );
}
