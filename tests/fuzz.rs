//! Property-based fuzzing of the readers of files other people give us: the NIfTI reader on
//! damaged headers and bodies, and the session readers (`state.json`, `events.jsonl`, and what
//! `status`, `report`, `export` and the dashboard's follower build from them) on damaged state.
//! Every input must come back as a value or an error, never a panic. The suite runs a few dozen
//! cases per reader; `bench/fuzz.sh` runs thousands (PROPTEST_CASES).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use proptest::prelude::*;
use suggestive::data::{
    read_affine, read_dims, read_file_bytes, read_seg, read_volume, Expect, LayoutKind,
};
use suggestive::session::events::LoggedEvent;
use suggestive::session::follow::{Activity, Follower};
use suggestive::session::report::Report;
use suggestive::session::Session;
use suggestive::tui::app::Dashboard;
use suggestive::tui::watch::Followed;

const DIMS: [usize; 3] = [6, 5, 4];

/// A valid little volume, as `.nii` bytes (header, extension flag, voxels).
fn valid_nii() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.nii");
    let voxels: Vec<f32> = (0..DIMS.iter().product::<usize>())
        .map(|i| (i % 5) as f32)
        .collect();
    write_volume(&path, &DIMS, voxels);
    std::fs::read(path).unwrap()
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

/// Every NIfTI reader on `bytes` written as `name`: each may refuse, none may panic.
fn read_every_way(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let _ = read_dims("fuzz", &path);
    let _ = read_affine("fuzz", &path);
    let _ = read_file_bytes("fuzz", &path, Expect::ANY);
    let _ = read_file_bytes("fuzz", &path, Expect::dims(DIMS));
    let _ = read_volume("fuzz", &path, Expect::ANY);
    let _ = read_volume("fuzz", &path, Expect::dims(DIMS));
    let _ = read_seg("fuzz", &path, LayoutKind::Brats, Expect::dims(DIMS));
}

/// Byte edits: mostly in the 348-byte header (and the extension flag after it), some anywhere.
fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    let at = prop_oneof![4 => 0usize..352, 1 => 0usize..1024];
    prop::collection::vec((at, any::<u8>()), 1..12)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES (bench/fuzz.sh) overrides the suite's count.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn the_nifti_reader_refuses_damaged_files_without_panicking(
        edits in edits(),
        cut in prop::option::of(0usize..1024),
        compressed in any::<bool>(),
    ) {
        let mut raw = valid_nii();
        for (at, byte) in edits {
            if at < raw.len() {
                raw[at] = byte;
            }
        }
        if let Some(cut) = cut {
            raw.truncate(cut);
        }
        let dir = tempfile::tempdir().unwrap();
        if compressed {
            read_every_way(dir.path(), "v.nii.gz", &gzip(&raw));
        } else {
            read_every_way(dir.path(), "v.nii", &raw);
        }
    }

    #[test]
    fn the_nifti_reader_takes_any_header_field_value_without_panicking(
        // A header field (its offset and width) set to an extreme or arbitrary value.
        field in prop::sample::select(vec![
            (0usize, 4usize), (40, 2), (42, 2), (44, 2), (46, 2), (48, 2), (50, 2), (52, 2),
            (54, 2), (70, 2), (72, 2), (76, 4), (80, 4), (84, 4), (88, 4), (108, 4), (112, 4),
            (116, 4), (252, 2), (254, 2), (280, 4), (284, 4), (288, 4), (292, 4), (296, 4),
            (344, 4), (348, 4),
        ]),
        value in prop_oneof![
            Just(u32::MAX), Just(0u32), Just(0x7fff_ffff), Just(0x8000_0000),
            Just(f32::NAN.to_bits()), Just(f32::INFINITY.to_bits()), Just((-1.0f32).to_bits()),
            Just(1e30f32.to_bits()), any::<u32>(),
        ],
        compressed in any::<bool>(),
    ) {
        let mut raw = valid_nii();
        let (at, width) = field;
        raw[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        let dir = tempfile::tempdir().unwrap();
        if compressed {
            read_every_way(dir.path(), "v.nii.gz", &gzip(&raw));
        } else {
            read_every_way(dir.path(), "v.nii", &raw);
        }
    }
}

/// A finished tiny session (made once per test binary) and its data set's cache.
fn finished_session() -> &'static (tempfile::TempDir, PathBuf) {
    static SESSION: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    SESSION.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let session = run_to_end(tmp.path(), &["experiment.arms=[\"random\", \"proposed\"]"]);
        let dir = session.dir.clone();
        (tmp, dir)
    })
}

/// A replacement for one value of a JSON document.
#[derive(Debug, Clone)]
enum Edit {
    Number(f64),
    Integer(i64),
    Huge,
    Text(String),
    Null,
    EmptyList,
    Remove,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<i64>().prop_map(Edit::Integer),
        (0i64..40).prop_map(Edit::Integer),
        prop_oneof![
            Just(-1.0),
            Just(1e308),
            Just(-0.5),
            Just(0.5),
            Just(2.0),
            any::<f64>().prop_filter("JSON has no NaN", |x| x.is_finite())
        ]
        .prop_map(Edit::Number),
        Just(Edit::Huge),
        "[a-z0-9 ]{0,6}".prop_map(Edit::Text),
        Just(Edit::Null),
        Just(Edit::EmptyList),
        Just(Edit::Remove),
    ]
}

/// Applies `edit` to the `n`-th value of `doc` (depth first, containers included, modulo
/// their count).
fn apply(doc: &mut serde_json::Value, n: usize, edit: &Edit) {
    fn count(v: &serde_json::Value) -> usize {
        1 + match v {
            serde_json::Value::Array(a) => a.iter().map(count).sum(),
            serde_json::Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    /// Finds the value at depth-first position `n` (the root is 0) within `v`'s children.
    fn visit(v: &mut serde_json::Value, n: &mut usize, edit: &Edit) -> bool {
        let keys: Vec<serde_json::Value> = match v {
            serde_json::Value::Array(a) => (0..a.len()).map(|i| i.into()).collect(),
            serde_json::Value::Object(o) => o.keys().map(|k| k.clone().into()).collect(),
            _ => return false,
        };
        for key in keys {
            let child = match (&mut *v, &key) {
                (serde_json::Value::Array(a), serde_json::Value::Number(i)) => {
                    &mut a[i.as_u64().unwrap() as usize]
                }
                (serde_json::Value::Object(o), serde_json::Value::String(k)) => {
                    o.get_mut(k).unwrap()
                }
                _ => unreachable!(),
            };
            if *n == 0 {
                let new = match edit {
                    Edit::Number(x) => serde_json::json!(x),
                    Edit::Integer(i) => serde_json::json!(i),
                    Edit::Huge => serde_json::json!(u64::MAX),
                    Edit::Text(t) => serde_json::json!(t),
                    Edit::Null => serde_json::Value::Null,
                    Edit::EmptyList => serde_json::json!([]),
                    Edit::Remove => {
                        match (v, &key) {
                            (serde_json::Value::Array(a), serde_json::Value::Number(i)) => {
                                a.remove(i.as_u64().unwrap() as usize);
                            }
                            (serde_json::Value::Object(o), serde_json::Value::String(k)) => {
                                o.remove(k);
                            }
                            _ => unreachable!(),
                        }
                        return true;
                    }
                };
                *child = new;
                return true;
            }
            *n -= 1;
            if visit(child, n, edit) {
                return true;
            }
        }
        false
    }
    let total = count(doc) - 1;
    if total > 0 {
        let mut n = n % total;
        visit(doc, &mut n, edit);
    }
}

/// Everything that reads a session, on the session in `dir`: each may refuse, none may panic.
fn read_session_every_way(session_dir: &Path, cache: &Path) {
    let _ = LoggedEvent::read_all(&session_dir.join("repeats/01/events.jsonl"));
    // As the dashboard takes them when it follows a run elsewhere (a run of its own gives it
    // events from memory, not from the file).
    if let Ok((mut follower, _)) = Follower::open(session_dir) {
        if let Ok(changes) = follower.poll() {
            let mut activity = Activity::default();
            for (_, e) in &changes.events {
                activity.apply(e);
            }
            let _ = activity.describe();
            let mut dashboard = Dashboard::new("fuzz".into());
            dashboard.on_followed(Followed {
                state: None,
                events: changes.events,
                placements: None,
            });
        }
    }
    let Ok(session) = Session::open(session_dir) else {
        return;
    };
    let _ = session.status();
    let _ = session.next_step();
    let report =
        Report::new(&session.config, &session.state).with_timings(&session.files().event_logs());
    let _ = report.markdown();
    let _ = report.selection_text();
    let _ = report.timings_text();
    if let Ok(ds) = session.load_cases(None, cache) {
        let _ = suggestive::session::export::rows(&session, &ds, None, None);
    }
}

/// A copy of the finished session with `edits` made to its repeat's state.json and events.
fn damaged_copy(
    state_edits: &[(usize, Edit)],
    event_edits: &[(usize, usize, Edit)],
) -> (tempfile::TempDir, PathBuf) {
    let (_, original) = finished_session();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    copy_dir(original, &dir);
    let state_path = dir.join("repeats/01/state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    for (n, e) in state_edits {
        apply(&mut state, *n, e);
    }
    std::fs::write(&state_path, state.to_string()).unwrap();
    let log = dir.join("repeats/01/events.jsonl");
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (line, n, e) in event_edits {
        let at = line % lines.len();
        apply(&mut lines[at], *n, e);
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, text).unwrap();
    (tmp, dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "lock" {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn session_readers_refuse_damaged_state_and_events_without_panicking(
        state_edits in prop::collection::vec((any::<usize>(), edit()), 0..4),
        event_edits in prop::collection::vec((any::<usize>(), any::<usize>(), edit()), 0..4),
    ) {
        let (tmp, _) = finished_session();
        let (_copy, dir) = damaged_copy(&state_edits, &event_edits);
        read_session_every_way(&dir, &tmp.path().join("cache"));
    }
}
