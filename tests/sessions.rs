//! Sessions through the real binary: SIGKILL and resume equals an uninterrupted run, the writer
//! lock, and damaged or foreign session files refused without damage.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use suggestive::phantom::PhantomLayout;
use suggestive::session::Session;

use common::PhantomEnv as Env;

impl Env {
    fn new() -> Env {
        Env::with(&[("CBICA", 4), ("TCIA", 4)], PhantomLayout::Brats2019, 6)
    }

    /// Runs the session to its end (or to where it already is); fails the test otherwise.
    fn run_ok(&self, dir: &Path) {
        let out = self.cmd(&["run", dir.to_str().unwrap()]).output().unwrap();
        assert_ok(&out);
    }

    /// A session with enough epochs per step that a kill lands mid-training.
    fn session(&self, name: &str) -> PathBuf {
        self.session_with(name, &[])
    }

    /// `session` with more settings.
    fn session_with(&self, name: &str, extra: &[&str]) -> PathBuf {
        let mut sets = vec![
            "unet.epochs_initial=6",
            "unet.epochs_per_round=4",
            "vae.epochs=4",
        ];
        sets.extend(extra);
        let cfg = tiny_session_config(&self.data, &sets);
        let dir = self.root.join("sessions").join(name);
        Session::create(&dir, cfg).unwrap();
        dir
    }
}

/// The command succeeded; its stderr otherwise.
/// The events of every log of the session.
fn events(dir: &Path) -> Vec<serde_json::Value> {
    suggestive::session::SessionFiles::new(dir)
        .event_logs()
        .iter()
        .flat_map(|log| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Starts `run`, waits until `ready` holds for the event log, then SIGKILLs it.
fn kill_when(env: &Env, dir: &Path, ready: impl Fn(&[serde_json::Value]) -> bool) {
    let mut child = env
        .cmd(&["run", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if ready(&events(dir)) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before the kill point");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "kill point never reached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn epochs_of(ev: &[serde_json::Value], phase: &str) -> usize {
    ev.iter()
        .filter(|e| e["event"] == "epoch_done" && e["phase"] == phase)
        .count()
}

/// The session's state, gathered from its repeats.
fn state(dir: &Path) -> serde_json::Value {
    serde_json::to_value(Session::open(dir).unwrap().state).unwrap()
}

#[test]
fn sigkill_mid_training_then_resume_equals_an_uninterrupted_run() {
    let env = Env::new();
    // Every arm: each resumes exactly.
    let arms =
        "experiment.arms=[\"random\", \"proposed\", \"oracle\", \"entropy\", \"coreset\", \"full\"]";
    let whole = env.session_with("whole", &[arms]);
    env.run_ok(&whole);

    let broken = env.session_with("broken", &[arms]);
    // Kill during the VAE, then during the shared initial UNet, then during an arm's round.
    kill_when(&env, &broken, |e| epochs_of(e, "vae") >= 2);
    // A kill can also fall after an epoch's checkpoint files are written and before state.json
    // records the epoch: files of the next epoch lie beside the recorded one's. The resume
    // must read the recorded epoch's (these stand-ins would fail to load).
    let recorded = state(&broken)["partial_epochs"].as_u64().unwrap();
    assert!(
        recorded > 0,
        "the kill did not land inside the VAE's training"
    );
    let ckpts = repeat_dir(&broken, 1).join("checkpoints");
    let mut planted = 0;
    for e in std::fs::read_dir(&ckpts).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let tag = format!("-e{recorded}.safetensors");
        let partial = name.contains(".partial-") || name.contains(".adam-");
        if partial && name.ends_with(&tag) {
            let next = name.replace(&tag, &format!("-e{}.safetensors", recorded + 1));
            std::fs::write(
                ckpts.join(next),
                b"written by a process killed before state.json",
            )
            .unwrap();
            planted += 1;
        }
    }
    assert_eq!(
        planted, 2,
        "weights and optimiser files of the recorded epoch"
    );
    kill_when(&env, &broken, |e| epochs_of(e, "training") >= 3);
    kill_when(&env, &broken, |e| {
        e.iter().filter(|x| x["event"] == "evaluated").count() >= 4
            && epochs_of(e, "training") >= 6 + 4 + 2
    });
    let st = state(&broken);
    assert!(
        st["done"].as_u64().unwrap() < 16,
        "the kills came too late to test anything"
    );
    let out = env
        .cmd(&["run", broken.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(no_lock_left(&broken));

    let (a, b) = (state(&whole), state(&broken));
    assert_eq!(a["done"], b["done"]);
    // The VAE's validation curve (the demo preset holds a tenth of the pool out) resumed too.
    assert_eq!(
        a["repeats"][0]["vae_epochs"].as_array().map(Vec::len),
        Some(4),
        "{}",
        a["repeats"][0]
    );
    assert_eq!(a["repeats"], b["repeats"], "splits differ");
    // Floats to 1e-12: the float64 step's last bits are not reproducible from one process to
    // the next (libtorch's float64 convolutions), everything else is exact.
    assert_close(&a["picks"], &b["picks"], 1e-12, "picks after resume");
    assert_close(&a["results"], &b["results"], 1e-12, "metrics after resume");
    assert_eq!(b["partial_epochs"], 0);
    let partial: Vec<_> = std::fs::read_dir(repeat_dir(&broken, 1).join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.contains("partial") || n.contains("adam") || n.contains("best") || n.starts_with('.')
        })
        .collect();
    assert!(
        partial.is_empty(),
        "leftover partial checkpoints: {partial:?}"
    );
}

#[test]
fn a_second_writer_is_refused_and_a_stale_lock_is_taken_over() {
    use std::io::Write;
    let env = Env::new();
    let dir = env.session("locked");
    // A live process holds the lock: this test, through the same advisory lock runs take.
    let me = std::process::id();
    let lock = repeat_dir(&dir, 1).join("lock");
    std::fs::create_dir_all(repeat_dir(&dir, 1)).unwrap();
    let held = std::fs::File::create(&lock).unwrap();
    held.try_lock().unwrap();
    writeln!(&held, "{me}").unwrap();
    assert_eq!(
        suggestive::session::SessionFiles::new(&dir).live_holder(),
        Some(me)
    );
    let out = env.cmd(&["run", "locked"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("pid {me}")) && err.contains("another process"),
        "{err}"
    );
    assert_eq!(state(&dir)["done"], 0);
    drop(held);
    // A run of a version from before the advisory lock wrote its pid and took no lock: a live
    // suggestive process named by the file still counts as the writer.
    let mut older = env
        .cmd(&["run", env.session("other").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(&lock, format!("{}\n", older.id())).unwrap();
    assert_eq!(
        suggestive::session::SessionFiles::new(&dir).live_holder(),
        Some(older.id())
    );
    let out = env.cmd(&["run", "locked"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = older.kill();
    let _ = older.wait();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("pid {}", older.id())), "{err}");
    // The file names a live pid that is not a suggestive run (this test: what a reused pid
    // looks like), and nobody holds the lock, as after a killed run. The run proceeds.
    std::fs::write(&lock, format!("{me}\n")).unwrap();
    assert_eq!(
        suggestive::session::SessionFiles::new(&dir).live_holder(),
        None
    );
    let out = env.cmd(&["run", "locked"]).output().unwrap();
    assert_ok(&out);
    assert_eq!(state(&dir)["done"], 16);
    assert!(no_lock_left(&dir), "the lock outlives the run");
}

#[test]
fn of_two_runs_started_together_one_writes_and_the_other_is_refused() {
    let env = Env::new();
    let dir = env.root.join("sessions").join("raced");
    Session::create(&dir, tiny_session_config(&env.data, &[])).unwrap();
    let start = || {
        env.cmd(&["run", "raced"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok = outs.iter().filter(|o| o.status.success()).count();
    let refused = outs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("being written by another process"))
        .count();
    assert_eq!((ok, refused), (1, 1), "{outs:?}");
    assert_eq!(state(&dir)["done"], 16);
}

#[test]
fn a_run_whose_output_pipe_closes_goes_on_to_the_end() {
    // `suggestive run S | head -1`: the reader goes away; the training must not.
    let env = Env::new();
    let dir = env.root.join("sessions").join("piped");
    Session::create(&dir, tiny_session_config(&env.data, &[])).unwrap();
    for jsonl in [false, true] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut args = vec!["run", "piped"];
        if jsonl {
            args.push("--jsonl");
        }
        let out = env.cmd(&args).stdout(writer).output().unwrap();
        assert_ok(&out);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    assert_eq!(state(&dir)["done"], 16);
}

/// Every file of a session folder, for before/after comparisons.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

fn assert_refused(env: &Env, dir: &Path, phrase: &str) {
    let d = dir.to_str().unwrap();
    assert_refused_by(env, dir, &[vec!["run", d], vec!["status", d]], phrase);
}

/// Each command refuses the session with `phrase`, exit code 1, no panic, nothing written.
fn assert_refused_by(env: &Env, dir: &Path, commands: &[Vec<&str>], phrase: &str) {
    let before = snapshot(dir);
    for args in commands {
        let out = env.cmd(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(phrase),
            "{args:?}: '{phrase}' missing from: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(snapshot(dir) == before, "a refused session was modified");
}

#[test]
fn damaged_foreign_and_moved_sessions_are_refused_without_damage() {
    let env = Env::new();

    let dir = env.session("garbled");
    std::fs::write(
        dir.join("state.json"),
        "{ \"format_version\": 1, \"done\": ",
    )
    .unwrap();
    assert_refused(&env, &dir, "damaged");

    let dir = env.session("future");
    let text = std::fs::read_to_string(dir.join("state.json"))
        .unwrap()
        .replace("\"format_version\": 2", "\"format_version\": 99");
    std::fs::write(dir.join("state.json"), text).unwrap();
    assert_refused(&env, &dir, "version 99 is not supported");

    let dir = env.session("future-config");
    let text = std::fs::read_to_string(dir.join("session.toml"))
        .unwrap()
        .replace("format_version = 1", "format_version = 7");
    std::fs::write(dir.join("session.toml"), text).unwrap();
    assert_refused(&env, &dir, "version 7");

    let dir = env.session("typo");
    let text = std::fs::read_to_string(dir.join("session.toml"))
        .unwrap()
        .replace("repeats = 1", "repeets = 1");
    std::fs::write(dir.join("session.toml"), text).unwrap();
    assert_refused(&env, &dir, "repeets");

    assert_refused(&env, &env.root.join("data"), "not a session");

    // The data set changes under a started session: refused, nothing written.
    let dir = env.session("moved");
    let mut c = env.cmd(&["run", dir.to_str().unwrap()]);
    let out = c.output().unwrap();
    assert!(out.status.success());
    let f = patient_file(&env.data, "BraTS19_CBICA_P001_1", "t2");
    let (d, dims) = read(&f);
    write_volume(
        &f,
        &dims,
        d.iter().map(|&v| (v * 1.1) as i16).collect::<Vec<_>>(),
    );
    let before = snapshot(&dir);
    let out = env.cmd(&["run", dir.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("data set changed"), "{err}");
    assert!(
        snapshot(&dir) == before,
        "session modified after a data-set change"
    );
}

/// `run` and `export` refuse the session with `phrase` (see `assert_refused_by`).
fn assert_run_and_export_refused(env: &Env, dir: &Path, phrase: &str) {
    let (d, csv) = (dir.to_str().unwrap(), env.root.join("picks.csv"));
    let export = vec!["export", d, "--out", csv.to_str().unwrap()];
    assert_refused_by(env, dir, &[vec!["run", d], export], phrase);
}

/// `run`, `export`, `status` and `report` refuse the session with `phrase`: what needs no
/// data set is checked by every command that reads a session.
fn assert_every_reader_refused(env: &Env, dir: &Path, phrase: &str) {
    let (d, csv) = (dir.to_str().unwrap(), env.root.join("picks.csv"));
    let export = vec!["export", d, "--out", csv.to_str().unwrap()];
    let commands = [
        vec!["run", d],
        export,
        vec!["status", d],
        vec!["status", d, "--json"],
        vec!["report", d],
    ];
    assert_refused_by(env, dir, &commands, phrase);
}

#[test]
fn a_started_session_refuses_edited_settings_and_a_state_that_does_not_fit() {
    let env = Env::new();
    let dir = env.root.join("sessions").join("edited");
    Session::create(&dir, tiny_session_config(&env.data, &[])).unwrap();
    env.run_ok(&dir);
    let toml_path = dir.join("session.toml");
    let original = std::fs::read_to_string(&toml_path).unwrap();
    let edited = |sets: &[(&str, &str, toml::Value)]| {
        let mut doc: toml::Table = toml::from_str(&original).unwrap();
        for (section, key, value) in sets {
            doc[*section].as_table_mut().unwrap()[*key] = value.clone();
        }
        std::fs::write(&toml_path, toml::to_string(&doc).unwrap()).unwrap();
    };

    // Settings: dropping an arm after the run would silently skip it (resuming indexes the
    // plan by the steps done); both edits are named.
    edited(&[
        (
            "experiment",
            "arms",
            toml::Value::Array(vec!["random".into()]),
        ),
        ("unet", "epochs_per_round", 3.into()),
    ]);
    assert_every_reader_refused(
        &env,
        &dir,
        "changed since the session started (experiment.arms, unet.epochs_per_round)",
    );
    // The report's header would name another seed than the results were made with.
    edited(&[("experiment", "seed", 99.into())]);
    assert_every_reader_refused(&env, &dir, "(experiment.seed)");
    // The device may change between runs.
    edited(&[("experiment", "device", "auto".into())]);
    env.run_ok(&dir);
    std::fs::write(&toml_path, &original).unwrap();

    // A repeat's state.json with indices that point nowhere: refused by name, nothing panics.
    let repeat_state = repeat_dir(&dir, 1).join("state.json");
    let good = std::fs::read_to_string(&repeat_state).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    state["picks"][0]["picks"][0]["sample"] = 9999.into();
    std::fs::write(&repeat_state, state.to_string()).unwrap();
    assert_run_and_export_refused(&env, &dir, "pick 9999");
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    state["done"] = 999.into();
    std::fs::write(&repeat_state, state.to_string()).unwrap();
    assert_every_reader_refused(&env, &dir, "999 steps done");
    // Results no metric can give, or given twice, are refused rather than averaged in.
    for (field, value, phrase) in [
        ("dice_mean", 5.0, "Dice 5 in the result of repeat 1"),
        ("dice_mean", -3.0, "Dice -3 in the result"),
        ("dice_mean", 1e308, "Dice 100000000"),
        ("dice_sd", -1.0, "Dice SD -1"),
    ] {
        let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
        state["results"][1][field] = value.into();
        std::fs::write(&repeat_state, state.to_string()).unwrap();
        assert_every_reader_refused(&env, &dir, phrase);
    }
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    state["results"][0]["dice"][0] = 1.5.into();
    std::fs::write(&repeat_state, state.to_string()).unwrap();
    assert_every_reader_refused(&env, &dir, "Dice 1.5 in the result");
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    let row = state["results"][1].clone();
    state["results"].as_array_mut().unwrap().push(row);
    std::fs::write(&repeat_state, state.to_string()).unwrap();
    assert_every_reader_refused(&env, &dir, "twice");
    // A record filed under another repeat than its file's.
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    state["results"][1]["repeat"] = 1.into();
    std::fs::write(&repeat_state, state.to_string()).unwrap();
    assert_every_reader_refused(&env, &dir, "a record of repeat 2 in the file of repeat 1");
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    state["data"]["test"][0] = 77.into();
    std::fs::write(&repeat_state, state.to_string()).unwrap();
    assert_run_and_export_refused(&env, &dir, "patient 77, of a data set of 8");
    // In the pool: its slices are listed before the other indices are checked.
    let mut state: serde_json::Value = serde_json::from_str(&good).unwrap();
    state["data"]["train"][0] = 77.into();
    std::fs::write(&repeat_state, state.to_string()).unwrap();
    assert_run_and_export_refused(&env, &dir, "patient 77, of a data set of 8");
    std::fs::write(&repeat_state, &good).unwrap();

    // A latents file of the wrong shape is an error that names it, not an index panic.
    let session = Session::open(&dir).unwrap();
    let ds = session.load_dataset(None, &env.root.join("cache")).unwrap();
    let pool = suggestive::session::pool::Pool::new(
        &ds,
        &session.state.repeats[0],
        session.config.experiment.granularity,
    );
    let latents = session.files().latents(0);
    assert_eq!(pool.sample_latents(&latents).unwrap().len(), 6);
    for bad in [
        tch::Tensor::zeros([7], tch::kind::FLOAT_CPU),
        tch::Tensor::zeros([5, 3], tch::kind::FLOAT_CPU),
    ] {
        tch::Tensor::write_safetensors(&[("z", &bad)], &latents).unwrap();
        let e = pool.sample_latents(&latents).unwrap_err();
        assert!(
            format!("{e:#}").contains("latents.safetensors: latents of"),
            "{e:#}"
        );
    }
}

#[test]
fn new_takes_the_data_folder_from_either_option_and_names_go_to_the_sessions_folder() {
    let env = Env::new();
    let new = |name: &str, extra: &[&str]| {
        let mut args = vec!["new", name, "--preset", "brats-patient"];
        args.extend(extra);
        let out = env.cmd(&args).current_dir(&env.root).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let data_path = |name: &str| {
        let text =
            std::fs::read_to_string(env.root.join("sessions").join(name).join("session.toml"))
                .unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        PathBuf::from(doc["dataset"]["path"].as_str().unwrap())
    };
    let data = env.data.canonicalize().unwrap();
    // A relative --set dataset.path is kept absolute: a run from elsewhere finds the same data.
    let (ok, err) = new("viaset", &["--set", "dataset.path=\"data\""]);
    assert!(ok, "{err}");
    assert_eq!(data_path("viaset"), data);
    // --dataset wins over an empty dataset.path.
    let d = env.data.to_str().unwrap();
    let (ok, err) = new("viaflag", &["--dataset", d, "--set", "dataset.path=\"\""]);
    assert!(ok, "{err}");
    assert_eq!(data_path("viaflag"), data);
    // --dataset demo is a folder called demo, not the embedded phantom's keyword.
    std::os::unix::fs::symlink(&env.data, env.root.join("demo")).unwrap();
    let (ok, err) = new("folder", &["--dataset", "demo"]);
    assert!(ok, "{err}");
    assert_eq!(data_path("folder"), data);
    let (ok, err) = new("missing", &["--set", "dataset.path=\"/no/such/folder\""]);
    assert!(
        !ok && err.contains("dataset.path /no/such/folder: no such folder"),
        "{err}"
    );
    // A folder of the same name where the command runs is not a session: the new session goes
    // to the sessions folder, and commands find it there.
    std::fs::create_dir(env.root.join("plain")).unwrap();
    let (ok, err) = new("plain", &["--dataset", d]);
    assert!(ok, "{err}");
    assert!(env.root.join("sessions/plain/session.toml").is_file());
    assert!(!env.root.join("plain/session.toml").exists());
    let out = env
        .cmd(&["status", "plain"])
        .current_dir(&env.root)
        .output()
        .unwrap();
    assert_ok(&out);
}

#[test]
fn new_run_status_through_the_command_line() {
    let env = Env::new();
    let out = env
        .cmd(&["new", "cli", "--preset", "brats-patient"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --dataset"));
    let out = env
        .cmd(&["new", "cli", "--preset", "nope"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset 'nope'"));
    let out = env
        .cmd(&[
            "new",
            "cli",
            "--preset",
            "demo",
            "--set",
            "experiment.repeets=2",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key"));
    let tiny = [
        "--set",
        "experiment.device=\"cpu\"",
        "--set",
        "experiment.repeats=1",
        "--set",
        "experiment.initial=2",
        "--set",
        "experiment.rounds=1",
        "--set",
        "experiment.per_round=1",
        "--set",
        "unet.depth=2",
        "--set",
        "unet.base=4",
        "--set",
        "unet.epochs_initial=1",
        "--set",
        "unet.epochs_per_round=1",
        "--set",
        "vae.levels=2",
        "--set",
        "vae.base=4",
        "--set",
        "vae.epochs=1",
    ];
    let mut args = vec![
        "new",
        "cli",
        "--preset",
        "brats-patient",
        "--dataset",
        env.data.to_str().unwrap(),
        "--set",
        "dataset.downsample=2",
        "--set",
        "experiment.protocol=\"rounds\"",
    ];
    args.extend(tiny);
    let out = env.cmd(&args).output().unwrap();
    assert_ok(&out);
    let out = env.cmd(&args).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let out = env.cmd(&["status", "cli", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "new");
    let out = env.cmd(&["run", "cli", "--jsonl"]).output().unwrap();
    assert_ok(&out);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON per line"))
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for k in [
        "started",
        "step_started",
        "epoch_done",
        "picks_made",
        "evaluated",
        "finished",
    ] {
        assert!(kinds.contains(&k), "no {k} event in {kinds:?}");
    }
    let out = env.cmd(&["status", "cli"]).output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("(finished)") && t.contains("proposed") && t.contains("oracle"),
        "{t}"
    );
}

#[test]
fn report_and_export_write_what_they_promise() {
    let env = Env::new();
    let cfg = tiny_session_config(
        &env.data,
        &[
            "experiment.repeats=2",
            "experiment.granularity=\"image\"",
            "experiment.initial=6",
            "experiment.per_round=3",
            "experiment.arms=[\"random\", \"proposed\", \"oracle\", \"full\"]",
        ],
    );
    let dir = env.root.join("sessions").join("rep");
    Session::create(&dir, cfg).unwrap();
    let out = env.cmd(&["report", "rep"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no results yet"));
    let out = env.cmd(&["run", "rep"]).output().unwrap();
    assert_ok(&out);

    let rep = env.root.join("rep-report");
    let out = env
        .cmd(&["report", "rep", "--out", rep.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    // One epoch of a tiny VAE holds little of the pool: the guard marks the arm that picks in
    // its latent space, and says why under the table.
    assert!(
        table.contains("| annotated slices | random | proposed (weak latent space) | oracle |")
            && table.contains("**Warning**, repeat 1: the latent space reproduces")
            && table.contains("proposed picks carry little information"),
        "{table}"
    );
    assert!(
        table.contains("| 6 (initial) |") && table.contains("| 12 |"),
        "{table}"
    );
    let csv = std::fs::read_to_string(rep.join("results.csv")).unwrap();
    // 2 repeats × 3 arms × (initial + 2 rounds) rows, the full-data reference of each repeat,
    // plus the header.
    assert_eq!(csv.lines().count(), 1 + 2 * 3 * 3 + 2, "{csv}");
    assert!(csv.starts_with("arm,repeat,stage,round,annotated,viewed,dice_mean,dice_sd"));
    // Every row has as many fields as the header names.
    let width = |l: &str| l.split(',').count();
    let header = csv.lines().next().unwrap();
    assert!(csv.lines().all(|l| width(l) == width(header)), "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["summary"].as_array().unwrap().len(), 3 * 3);
    assert_eq!(json["paired"].as_array().unwrap().len(), 2);
    assert_eq!(json["paired"][0]["repeats"], 2);
    // Paired statistics: proposed and oracle against random at both rounds, and the areas.
    let comparisons = json["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 2 * 2, "{comparisons:?}");
    for c in comparisons {
        assert_eq!(c["versus"], "random");
        assert_eq!(c["n"], 2);
        let ci = c["ci95"].as_array().unwrap();
        let (lo, hi, m) = (
            ci[0].as_f64().unwrap(),
            ci[1].as_f64().unwrap(),
            c["mean_diff"].as_f64().unwrap(),
        );
        assert!(lo <= m && m <= hi, "{c}");
        assert_eq!(
            c["wins"].as_u64().unwrap()
                + c["ties"].as_u64().unwrap()
                + c["losses"].as_u64().unwrap(),
            2
        );
    }
    assert_eq!(json["aubc"].as_array().unwrap().len(), 3);
    // The full-data reference: every pool slice, in both repeats; the headline per strategy.
    let full = &json["full_data"];
    assert_eq!(full["repeats"], 2);
    let pool = full["annotated"].as_u64().unwrap();
    let s = Session::open(&dir).unwrap();
    assert_eq!(pool as usize, s.state.repeats[0].order.len(), "{full}");
    let budgets = json["budget_to_full"].as_object().unwrap();
    assert_eq!(budgets.len(), 3, "{budgets:?}");
    for b in budgets.values().filter(|b| !b.is_null()) {
        let n = b["budget"].as_u64().unwrap();
        assert!([6, 9, 12].contains(&n), "{b}");
        assert!((b["fraction"].as_f64().unwrap() - n as f64 / pool as f64).abs() < 1e-12);
    }
    // proposed's fallbacks per round, over both repeats' three picks.
    let rates = json["fallback_rates"].as_array().unwrap();
    assert_eq!(rates.len(), 2, "{rates:?}");
    assert!(rates
        .iter()
        .all(|r| r["picks"] == 6 && r["arm"] == "proposed"));
    let manifold = json["manifold"].as_array().unwrap();
    assert_eq!(manifold.len(), 2);
    assert_eq!(manifold[0]["kl_per_dim"].as_array().unwrap().len(), 5);
    // The tidy table: one row per result and test case, named by case ID and site.
    let mut long = csv::Reader::from_path(rep.join("results_long.csv")).unwrap();
    assert_eq!(
        long.headers().unwrap(),
        vec!["repeat", "arm", "stage", "round", "budget", "case", "site", "dice", "hd95_mm"]
    );
    let rows: Vec<csv::StringRecord> = long.records().map(|r| r.unwrap()).collect();
    let cases: usize = s.state.results.iter().map(|r| r.dice.len()).sum();
    assert_eq!(rows.len(), cases);
    assert!(rows
        .iter()
        .all(|r| r[5].starts_with("BraTS19_") && !r[6].is_empty()));
    assert!(rows
        .iter()
        .any(|r| r[1] == *"full" && r[4] == *pool.to_string()));
    assert!(
        rows.iter().any(|r| r[8].parse::<f64>().is_ok()),
        "no HD95 at all"
    );
    assert!(
        table.contains("proposed − random") && table.contains("AUBC"),
        "{table}"
    );
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(
        md.starts_with("# suggestive report: session rep, on CPU")
            && md.contains("scratch / image / rounds")
            && md.contains("| annotated slices | random | proposed (weak latent space) | oracle |")
            && md.contains("where the time went")
            && md.contains("full-data reference (all")
            && md.contains("smallest budget within 0.01 of full data")
            && md.contains("picks whose cone was empty (fallbacks), all repeats\n\n| stage |")
            && md.contains("\n| arm | smallest budget within")
            && md.contains("\n| repeat | recon MSE |")
            && md.contains("\n| repeat | epochs | stopped | kept epoch | validation MSE |")
            && md.contains("the VAE's latent space over the pool")
            && md.contains("MDD")
            && md.contains("repeats for an MDD of 0.03 (80 % power, 5 %), from the spread so far: proposed − random at 12: "),
        "{md}"
    );
    // --delta: within 1 of full data, every arm is there at its first budget; a negative
    // δ is refused by value.
    let out = env
        .cmd(&[
            "report",
            "rep",
            "--out",
            rep.to_str().unwrap(),
            "--delta",
            "1",
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    let wide: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("results.json")).unwrap()).unwrap();
    for b in wide["budget_to_full"].as_object().unwrap().values() {
        assert_eq!(b["budget"], 6, "{b}");
        assert_eq!(b["ci95"], serde_json::json!([6, 6]));
    }
    let out = env.cmd(&["report", "rep", "--delta=-1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--delta -1"));
    // --versus adds every arm against another.
    let out = env
        .cmd(&[
            "report",
            "rep",
            "--out",
            rep.to_str().unwrap(),
            "--versus",
            "oracle",
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("proposed − oracle"));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("results.json")).unwrap()).unwrap();
    let versus_oracle = again["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["versus"] == "oracle")
        .count();
    assert_eq!(versus_oracle, 2 * 2, "random and proposed at two rounds");
    for k in [
        "vae",
        "latents",
        "training: shared initial UNet",
        "evaluation: shared initial UNet",
        "selection: proposed",
        "training: oracle",
        "evaluation: oracle",
        "I/O: epoch checkpoints",
        "I/O: data set open (+ pool upload)",
    ] {
        assert!(
            json["timings"][k].as_f64().is_some_and(|t| t > 0.0),
            "no time for {k}: {}",
            json["timings"]
        );
    }
    // How the picks came about: each arm's picks counted; the proposed arm's directions too.
    let selection = json["selection"].as_array().unwrap();
    assert_eq!(selection.len(), 3, "{selection:?}");
    for a in selection {
        let picks = a["picks"].as_u64().unwrap();
        assert!(
            picks > 0 && a["fallbacks"].as_u64().unwrap() <= picks,
            "{a}"
        );
    }
    let proposed = selection.iter().find(|a| a["arm"] == "proposed").unwrap();
    let directions: u64 = proposed["direction_methods"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(
        directions > 0 && proposed["median_rel_dx"].as_f64().unwrap() > 0.0,
        "{proposed}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("how the picks came about"),
        "the report's text lacks the selection lines"
    );
    let png = image::open(rep.join("dice_vs_budget.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(png.dimensions(), (900, 560));
    // The proposed arm's colour (Okabe–Ito blue) is on the plot.
    assert!(png.pixels().any(|p| p.0 == [0, 114, 178]));
    let svg = std::fs::read_to_string(rep.join("dice_vs_budget.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("proposed") && svg.contains("annotated slices"));
    let names: Vec<String> = std::fs::read_dir(&rep)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "temporary files left: {names:?}"
    );

    // Output into a closed pipe (`status | head -1`): ended by SIGPIPE, as other tools are,
    // not a panic.
    {
        use std::os::unix::process::ExitStatusExt;
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = env
            .cmd(&["status", "rep"])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{:?}: {err}",
            out.status
        );
        assert!(!err.contains("panicked"), "{err}");
    }

    let file = env.root.join("picks.csv");
    let out = env
        .cmd(&[
            "export",
            "rep",
            "--arm",
            "proposed",
            "--round",
            "2",
            "--out",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    let mut reader = csv::Reader::from_path(&file).unwrap();
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2 * 3); // 2 repeats × 3 picks
    for r in rows {
        assert_eq!(&r[col("arm")], "proposed");
        assert!(r[col("patient")].starts_with("BraTS19_"), "{r:?}");
        assert!(
            !r[col("slice")].is_empty() && !r[col("context")].is_empty(),
            "slice and context expected: {r:?}"
        );
        // The original volume's z: the kept index after the 2 slices the preset drops.
        let slice: usize = r[col("slice")].parse().unwrap();
        assert_eq!(r[col("z")].parse::<usize>().unwrap(), slice + 2, "{r:?}");
        // Four modality files and the segmentation, all there.
        let images: Vec<&str> = r[col("images")].split(';').collect();
        assert_eq!(images.len(), 4, "{r:?}");
        assert!(images.iter().all(|p| Path::new(p).is_file()), "{r:?}");
        assert!(r[col("label")].ends_with("_seg.nii.gz"), "{r:?}");
        assert!(
            r[col("distance")].parse::<f64>().is_ok(),
            "distance expected: {r:?}"
        );
    }
    let json = env.root.join("picks.json");
    let out = env
        .cmd(&["export", "rep", "--out", json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2 * 3 * 2 * 3); // repeats × arms × rounds × picks
    let out = env
        .cmd(&["export", "rep", "--out", "picks.txt"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(".csv or .json"));
}

#[test]
fn run_spreads_arms_over_devices_and_refuses_a_missing_one() {
    let env = Env::new();
    let dir = env.session("lanes");
    // A device that does not exist is named before anything is written.
    let out = env
        .cmd(&["run", "lanes", "--devices", "cpu,cuda:7"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cuda:7"), "{err}");
    assert_eq!(state(&dir)["done"], 0);
    let out = env
        .cmd(&["run", "lanes", "--devices", "cpu,cpu", "--jsonl"])
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(state(&dir)["done"], 16);
    assert_eq!(state(&dir)["device"], "CPU, CPU (arms in parallel)");
}

#[test]
fn mixed_precision_is_refused_on_the_cpu_with_the_setting_named() {
    let env = Env::new();
    let dir = env.session("fp16");
    let cfg = dir.join("session.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("precision = \"fp32\""), "{text}");
    let text = text.replace("precision = \"fp32\"", "precision = \"fp16\"");
    std::fs::write(&cfg, text).unwrap();
    let before = snapshot(&dir);
    let out = env.cmd(&["run", "fp16"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unet.precision") && err.contains("CUDA") && err.contains("fp32"),
        "{err}"
    );
    assert_eq!(state(&dir)["done"], 0);
    // Nothing written but the (released) lock's absence.
    assert_eq!(snapshot(&dir), before);
}

/// A tiny session of two repeats.
fn two_repeats(env: &Env, name: &str) -> PathBuf {
    let cfg = tiny_session_config(&env.data, &["experiment.repeats=2"]);
    let dir = env.root.join("sessions").join(name);
    Session::create(&dir, cfg).unwrap();
    dir
}

fn assert_same_results(a: &Path, b: &Path) {
    let (a, b) = (state(a), state(b));
    assert_eq!(a["done"], b["done"]);
    assert_eq!(a["repeats"], b["repeats"], "splits differ");
    assert_close(&a["picks"], &b["picks"], 1e-12, "picks");
    assert_close(&a["results"], &b["results"], 1e-12, "metrics");
}

#[test]
fn two_processes_run_two_repeats_side_by_side_as_one_runs_both() {
    let env = Env::new();
    let whole = two_repeats(&env, "whole");
    env.run_ok(&whole);

    let split = two_repeats(&env, "split");
    let start = |repeats: &str| {
        env.cmd(&["run", split.to_str().unwrap(), "--repeats", repeats])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start("1"), start("2"));
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert_ok(&out);
    }
    assert_same_results(&whole, &split);
    // Each wrote its own repeat's files only, and let go of its lock.
    for r in [1, 2] {
        assert!(repeat_dir(&split, r).join("state.json").is_file());
        assert!(repeat_dir(&split, r).join("events.jsonl").is_file());
    }
    assert!(no_lock_left(&split));
    let out = env.cmd(&["status", "split"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("(finished)") && text.contains("repeat 2"),
        "{text}"
    );
    // A repeat that is running is refused to a second process, by name.
    let busy = two_repeats(&env, "busy");
    std::fs::create_dir_all(repeat_dir(&busy, 2)).unwrap();
    let held = std::fs::File::create(repeat_dir(&busy, 2).join("lock")).unwrap();
    held.try_lock().unwrap();
    let out = env
        .cmd(&["run", busy.to_str().unwrap(), "--repeats", "1-2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("repeat 2") && err.contains("another process"),
        "{err}"
    );
    let out = env
        .cmd(&["run", busy.to_str().unwrap(), "--repeats", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no repeat 3"), "{err}");
}

/// Rewrites a session whose progress is all in repeat 1 as the earlier format kept it: one
/// state.json (its `done` counted over the whole plan), events.jsonl, checkpoints/ and
/// latents/ in the session folder.
fn to_format_1(dir: &Path) {
    let mut state = state(dir);
    state["format_version"] = 1.into();
    let unit = repeat_dir(dir, 1);
    std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
    std::fs::create_dir_all(dir.join("latents")).unwrap();
    for e in std::fs::read_dir(unit.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        std::fs::rename(e.path(), dir.join("checkpoints").join(e.file_name())).unwrap();
    }
    let latents = unit.join("latents.safetensors");
    if latents.exists() {
        std::fs::rename(&latents, dir.join("latents/r0.safetensors")).unwrap();
    }
    std::fs::rename(unit.join("events.jsonl"), dir.join("events.jsonl")).unwrap();
    std::fs::remove_dir_all(dir.join("repeats")).unwrap();
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
}

#[test]
fn a_session_of_the_earlier_format_is_read_then_converted_and_resumes_exactly() {
    let env = Env::new();
    let whole = two_repeats(&env, "whole");
    env.run_ok(&whole);

    let old = two_repeats(&env, "old");
    // Killed inside repeat 1's training, so a step is half done (partial epochs) too.
    kill_when(&env, &old, |e| epochs_of(e, "training") >= 3);
    let before = state(&old);
    assert!(before["partial_epochs"].as_u64().unwrap() > 0, "{before}");
    to_format_1(&old);

    // Read as it is: status and the session's state.
    let s = Session::open(&old).unwrap();
    assert_eq!(s.layout, suggestive::session::Layout::Flat);
    assert_eq!(s.state.done, before["done"].as_u64().unwrap() as usize);
    let out = env.cmd(&["status", "old"]).output().unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(epoch "));

    // A run converts it and goes on to the end, as if nothing had happened.
    env.run_ok(&old);
    let top: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(old.join("state.json")).unwrap()).unwrap();
    assert_eq!(top["format_version"], 2);
    assert!(!old.join("checkpoints").exists() && !old.join("latents").exists());
    assert!(repeat_dir(&old, 2).join("state.json").is_file());
    assert_same_results(&whole, &old);
    // The earlier log is kept and still counts in the report's time breakdown.
    assert!(old.join("events.jsonl").is_file());
    let out = env.cmd(&["report", "old"]).output().unwrap();
    assert_ok(&out);
}

/// A follower reads a session that another process runs, without a lock (the run goes on
/// undisturbed): it sees the run's events as they are logged (each once, in order) and the
/// state each time it is saved.
#[test]
fn a_follower_reads_a_run_of_another_process_as_it_goes() {
    use suggestive::session::follow::Follower;
    let env = Env::new();
    let dir = env.session("watched");
    let (mut follower, session) = Follower::open(&dir).unwrap();
    assert_eq!(session.state.done, 0);
    let first = follower.poll().unwrap();
    assert!(first.session.is_none() && first.events.is_empty());
    let mut run = env
        .cmd(&["run", "watched"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut events, mut last_done, mut reloads) = (Vec::new(), 0, 0);
    loop {
        let finished = run.try_wait().unwrap();
        if let Some(status) = finished {
            assert!(status.success(), "the followed run failed: {status}");
        }
        let finished = finished.is_some();
        let changes = follower.poll().unwrap();
        if let Some(s) = changes.session {
            assert!(s.state.done >= last_done, "the state went back");
            last_done = s.state.done;
            reloads += 1;
        }
        events.extend(changes.events);
        if finished {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A last look after the run's end finds nothing more.
    let after = follower.poll().unwrap();
    assert!(after.session.is_none() && after.events.is_empty());
    assert!(reloads > 1, "the state was read once only");
    assert_eq!(last_done, 16);
    // Exactly the lines of the log, in order, each with its repeat.
    let logged: Vec<String> = std::fs::read_to_string(repeat_dir(&dir, 1).join("events.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(events.len(), logged.len());
    for ((repeat, e), line) in events.iter().zip(&logged) {
        assert_eq!(*repeat, 0);
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_value(e).unwrap(), line);
    }
    assert!(no_lock_left(&dir));
}
