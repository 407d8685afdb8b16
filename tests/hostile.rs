//! The hostile-input corpus: `tests/hostile/corpus.py` makes every kind of hostile file, name
//! and session file we know of, each with the command it targets; here each is run through that
//! command, which must refuse it with the named error, change nothing, and run nothing.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use suggestive::phantom::PhantomLayout;
use suggestive::session::Session;

#[derive(serde::Deserialize)]
struct Entry {
    id: String,
    args: Vec<String>,
    code: i32,
    phrase: String,
}

/// Every file under `dir` with its bytes; other kinds of file (a named pipe) by kind only, so
/// that nothing blocks on them.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
                out.push((path, "dir".into(), Vec::new()));
            } else if meta.is_file() {
                // A sparse file of 1 GiB is compared by its length and first bytes.
                let bytes = if meta.len() > 1 << 26 {
                    let mut head = vec![0; 4096];
                    use std::io::Read;
                    std::fs::File::open(&path)
                        .unwrap()
                        .read_exact(&mut head)
                        .unwrap();
                    head
                } else {
                    std::fs::read(&path).unwrap()
                };
                out.push((path, format!("file {}", meta.len()), bytes));
            } else {
                out.push((path, format!("{:?}", meta.file_type()), Vec::new()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_case_of_the_hostile_corpus_is_refused_by_name_and_changes_nothing() {
    let env = PhantomEnv::with(&[("CBICA", 5), ("TCIA", 5)], PhantomLayout::Brats2019, 4);
    let sessions = env.root.join("sessions");
    let people = sessions.join("people");
    Session::create(
        &people,
        tiny_session_config(
            &env.data,
            &[
                "experiment.arms=[\"proposed\"]",
                "experiment.labels=\"human\"",
            ],
        ),
    )
    .unwrap();
    let out = env.cmd(&["run", "people"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "waits for round 0: {out:?}");
    let finished = sessions.join("finished");
    Session::create(&finished, tiny_session_config(&env.data, &[])).unwrap();
    assert_ok(&env.cmd(&["run", "finished"]).output().unwrap());

    let corpus = env.root.join("corpus");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/corpus.py");
    let made = std::process::Command::new("python3")
        .arg(&script)
        .arg(&corpus)
        .arg("--data")
        .arg(&env.data)
        .arg("--people")
        .arg(&people)
        .arg("--finished")
        .arg(&finished)
        .output()
        .unwrap();
    assert_ok(&made);
    let entries: Vec<Entry> =
        serde_json::from_slice(&std::fs::read(corpus.join("manifest.json")).unwrap()).unwrap();
    assert!(entries.len() >= 20, "{} cases", entries.len());

    let watched = [&corpus, &people, &finished, &env.data];
    let before: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
    let mut failures = Vec::new();
    for e in &entries {
        let args: Vec<String> = e
            .args
            .iter()
            .map(|a| a.replace("{out}", corpus.to_str().unwrap()))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // In the corpus folder: an injected `touch MARKER` would leave its file there.
        let run = env.cmd(&args).current_dir(&corpus).output().unwrap();
        let text = String::from_utf8_lossy(&run.stdout).into_owned()
            + &String::from_utf8_lossy(&run.stderr);
        let mut wrong = Vec::new();
        if run.status.code() != Some(e.code) {
            wrong.push(format!("exit {:?}, not {}", run.status.code(), e.code));
        }
        if !text.contains(&e.phrase) {
            wrong.push(format!("no \"{}\"", e.phrase));
        }
        if text.contains("panicked") || text.contains(['\u{1b}', '\r']) {
            wrong.push("a panic, or a raw control character in the output".into());
        }
        let after: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
        if after != before {
            let changed: Vec<String> = after
                .iter()
                .flatten()
                .filter(|f| !before.iter().flatten().any(|g| g == *f))
                .chain(
                    before
                        .iter()
                        .flatten()
                        .filter(|f| !after.iter().flatten().any(|g| g == *f)),
                )
                .map(|(path, kind, _)| format!("{} ({kind})", path.display()))
                .collect();
            wrong.push(format!("files changed: {}", changed.join(", ")));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n{text}", e.id, wrong.join("; ")));
        }
    }
    assert!(!corpus.join("MARKER").exists(), "an injected command ran");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
