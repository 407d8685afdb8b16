//! Helpers shared by the integration tests: tiny phantoms, hand-written NIfTI volumes and tiny
//! sessions.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array, IxDyn, ShapeBuilder};
use nifti::writer::WriterOptions;
use suggestive::data::{read_volume, LoadOptions};
use suggestive::phantom::{self, PhantomConfig, PhantomLayout};
use suggestive::session::run::{Control, Outcome, Runner};
use suggestive::session::Session;

pub const TINY: [usize; 3] = [64, 64, 24];

/// A tiny phantom: `sites` like [("CBICA", 2), ("TCIA", 1)], 64×64×24.
pub fn tiny_phantom(
    dir: &Path,
    sites: &[(&str, usize)],
    layout: PhantomLayout,
    seed: u64,
) -> PathBuf {
    let cfg = PhantomConfig {
        sites: sites.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        shape: TINY,
        seed,
        layout,
        ..Default::default()
    };
    phantom::generate(&cfg, dir, &|| {}).expect("phantom");
    dir.to_path_buf()
}

pub fn opts(cache: &Path) -> LoadOptions {
    LoadOptions::new(cache)
}

/// Writes a volume given in `[z][y][x]` order (x fastest), with any number of dimensions.
pub fn write_volume<T: nifti::DataElement + bytemuck::Pod>(
    path: &Path,
    dims: &[usize],
    data: Vec<T>,
) {
    let a = Array::from_shape_vec(IxDyn(dims).f(), data).expect("shape");
    WriterOptions::new(path)
        .write_nifti(&a)
        .expect("write nifti");
}

/// The file of `patient` (an ID) with `suffix` under `root`, wherever the layout put it.
pub fn patient_file(root: &Path, patient: &str, suffix: &str) -> PathBuf {
    for dir in [
        root.join(patient),
        root.join("HGG").join(patient),
        root.join("LGG").join(patient),
    ] {
        let f = dir.join(format!("{patient}_{suffix}.nii.gz"));
        if f.exists() {
            return f;
        }
    }
    panic!("no {suffix} file for {patient} under {}", root.display());
}

/// Reads a volume back as f32 `[z][y][x]`.
pub fn read(path: &Path) -> (Vec<f32>, [usize; 3]) {
    let v = read_volume("test", path, suggestive::data::Expect::ANY).expect("read");
    (v.data, v.dims)
}

/// Files and folders under `dir`, recursively (empty when it does not exist).
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.path().is_dir() {
                out.extend(tree(&e.path()));
            }
        }
    }
    out.sort();
    out
}

/// A tiny session configuration on `data`: 32×32 slices, 2-level networks, 1–2 epochs, CPU.
pub fn tiny_session_config(
    data: &Path,
    extra: &[&str],
) -> suggestive::session::config::SessionConfig {
    let mut cfg = suggestive::session::preset("demo").expect("demo preset");
    cfg.dataset.path = data.to_path_buf();
    let mut sets: Vec<String> = [
        "experiment.device=\"cpu\"",
        "experiment.repeats=1",
        "experiment.initial=2",
        "experiment.rounds=2",
        "experiment.per_round=1",
        "dataset.downsample=2",
        "unet.depth=2",
        "unet.base=4",
        "unet.epochs_initial=2",
        "unet.epochs_per_round=1",
        "unet.epochs_pretrain=1",
        "unet.batch_size=8",
        "vae.levels=2",
        "vae.base=4",
        "vae.epochs=1",
        "vae.batch_size=16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    cfg.apply_overrides(&sets).expect("overrides");
    cfg
}

/// Creates a session on a tiny phantom in `tmp` (made once) with `extra` overrides and runs it
/// to the end on the CPU; the session as it was left.
pub fn run_to_end(tmp: &std::path::Path, extra: &[&str]) -> Session {
    let data = tmp.join("data");
    if !data.exists() {
        tiny_phantom(
            &data,
            &[("CBICA", 5), ("TCIA", 5)],
            PhantomLayout::Brats2019,
            3,
        );
    }
    let cfg = tiny_session_config(&data, extra);
    let dir = tmp.join(format!("s{}", extra.join("_").replace(['"', '=', '.'], "")));
    Session::create(&dir, cfg).unwrap();
    let mut runner =
        Runner::open(Session::open(&dir).unwrap(), None, &tmp.join("cache"), None).unwrap();
    let outcome = runner.run(&Control::default(), &mut |_| {}).unwrap();
    assert_eq!(outcome, Outcome::Finished);
    drop(runner);
    assert!(!dir.join("lock").exists(), "the lock outlives the runner");
    Session::open(&dir).unwrap()
}

/// Same structure, same integers and strings, floats within `rel` of each other (relative).
pub fn assert_close(a: &serde_json::Value, b: &serde_json::Value, rel: f64, at: &str) {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= rel * x.abs().max(y.abs()),
                "{at}: {x} vs {y}"
            );
        }
        (Array(x), Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_close(p, q, rel, &format!("{at}[{i}]"));
            }
        }
        (Object(x), Object(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: fields");
            for (k, p) in x {
                assert_close(p, &y[k], rel, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// A tiny session `live` under `root/sessions` (phantom data, one round).
pub fn tiny_live_session(root: &Path) -> std::path::PathBuf {
    tiny_session_in(root, "live", &[])
}

/// A tiny session `name` of one round under `root/sessions`, with `extra` settings, on the
/// phantom in `root/data` (made here).
pub fn tiny_session_in(root: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let data = tiny_phantom(
        &root.join("data"),
        &[("CBICA", 4), ("TCIA", 4)],
        PhantomLayout::Brats2019,
        6,
    );
    let mut sets = vec!["experiment.rounds=1"];
    sets.extend(extra);
    let cfg = tiny_session_config(&data, &sets);
    let dir = root.join("sessions").join(name);
    Session::create(&dir, cfg).unwrap();
    dir
}

/// A repeat's folder in a session folder (repeats count from 1).
pub fn repeat_dir(session: &Path, repeat: usize) -> PathBuf {
    session.join("repeats").join(format!("{repeat:02}"))
}

/// No lock file is left anywhere in a session folder (its own, or any repeat's).
pub fn no_lock_left(session: &Path) -> bool {
    !tree(session)
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == "lock"))
}

/// The `suggestive` binary of this build.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_suggestive"))
}

/// Fails the test with the command's stderr unless it succeeded.
pub fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary folder holding a tiny phantom in `data/`, and the program run with its caches,
/// data and sessions inside it. Each test file adds its own helpers.
pub struct PhantomEnv {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub data: PathBuf,
}

impl PhantomEnv {
    pub fn with(sites: &[(&str, usize)], layout: PhantomLayout, seed: u64) -> PhantomEnv {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let data = tiny_phantom(&root.join("data"), sites, layout, seed);
        PhantomEnv {
            _tmp: tmp,
            root,
            data,
        }
    }

    /// The program with `args`, its folders inside this one.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = bin();
        c.args(args)
            .env("SUGGESTIVE_CACHE_DIR", self.root.join("cache"))
            .env("SUGGESTIVE_DATA_DIR", self.root.join("share"))
            .env("SUGGESTIVE_SESSIONS_DIR", self.root.join("sessions"));
        c
    }
}
