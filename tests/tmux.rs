//! The real binary in a real terminal (tmux): open a session in the TUI with the default image
//! setting, step through the shared start and one round, read the screen (Dice values and picks
//! appear), quit, and find the terminal restored and the session unlocked.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// tmux on a server of the tests' own (not the user's).
fn tmux(args: &[&str]) -> String {
    let socket = format!("suggestive-tests-{}", std::process::id());
    let out = Command::new("tmux")
        .args(["-L", &socket, "-f", "/dev/null"])
        .args(args)
        .output()
        .expect("tmux is needed for this test (apt-get install tmux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screen(name: &str) -> String {
    tmux(&["capture-pane", "-t", name, "-p"])
}

fn wait_for(name: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let s = screen(name);
        if ok(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "timed out waiting for {what}; screen:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Kill(String);
impl Drop for Kill {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.0]);
    }
}

#[test]
fn tui_steps_a_round_in_a_real_terminal_and_restores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = tiny_live_session(root);
    // The default image setting (no --images): the interface asks the terminal what it can
    // draw, as a user's first `suggestive demo` does, in the TERM a user's shell has.
    let (name, _kill) = start_tui_with(root, &["TERM=xterm-256color"], "tui live", true);

    let s = wait_for(&name, "the dashboard", |s| {
        s.contains("paused") && s.contains("Work in progress")
    });
    assert!(
        s.contains("suggestive live") && s.contains("step 0/"),
        "{s}"
    );

    // n: the split, the VAE, the latents and the shared initial UNet, then a pause.
    tmux(&["send-keys", "-t", &name, "n"]);
    let s = wait_for(&name, "the shared start", |s| {
        s.contains("paused after") && s.contains("oracle round 0")
    });
    assert!(s.contains("test Dice 0."), "{s}");

    // n again: round 1 of every arm: picks and Dice appear.
    tmux(&["send-keys", "-t", &name, "n"]);
    // (The last evaluation reaches the screen a moment before the run's end: wait for both.)
    let s = wait_for(&name, "round 1 and the end", |s| {
        s.contains("oracle round 1: 3 annotated") && s.contains("finished")
    });
    let picks = s
        .lines()
        .filter(|l| l.contains("round 1: 1 pick, ") && l.contains("BraTS19_"))
        .count();
    assert!(picks >= 1, "no picks on screen:\n{s}");
    assert!(
        s.lines()
            .any(|l| l.contains("oracle round 1: 3 annotated, test Dice 0.")),
        "{s}"
    );
    assert!(
        s.contains("pick 1/1"),
        "the preview panel shows the selected pick:\n{s}"
    );

    // ? shows the key map; any key closes it.
    tmux(&["send-keys", "-t", &name, "?"]);
    wait_for(&name, "the help", |s| {
        s.contains("run the next round, then pause")
    });
    tmux(&["send-keys", "-t", &name, "x"]);
    wait_for(&name, "the help to close", |s| {
        !s.contains("run the next round, then pause")
    });

    // q: the TUI ends, the alternate screen is gone, the shell line is back.
    tmux(&["send-keys", "-t", &name, "q"]);
    let s = wait_for(&name, "exit", |s| s.contains("TTY:"));
    assert!(s.contains("EXIT:0"), "{s}");
    assert!(
        !s.contains("Work in progress"),
        "the dashboard is still on screen after quitting:\n{s}"
    );
    assert!(
        s.contains("TTY: icanon echo"),
        "the terminal is not back in its cooked mode:\n{s}"
    );
    assert!(no_lock_left(&dir), "the session is still locked");
    let st = suggestive::session::Session::open(&dir).unwrap().state;
    assert_eq!(st.results.len(), 6);
}

#[test]
fn tui_clears_what_the_pane_held() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_live_session(root);
    let (name, _kill) = start_tui_with(root, &[], "tui live", false);
    let s = wait_for(&name, "the dashboard", |s| {
        s.contains("paused") && s.contains("Work in progress")
    });
    assert!(
        !s.contains("BEFORE-THE-INTERFACE"),
        "the pane's earlier text shows through the interface:\n{s}"
    );
    tmux(&["send-keys", "-t", &name, "q"]);
    let s = wait_for(&name, "exit", |s| s.contains("TTY:"));
    assert!(
        s.contains("EXIT:0") && s.contains("TTY: icanon echo"),
        "{s}"
    );
}

#[test]
fn tui_refuses_a_non_terminal_and_points_to_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_suggestive"))
        .args(["tui"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs a terminal") && err.contains("suggestive run"),
        "{err}"
    );
}

/// Starts `suggestive ARGS` at 160×48 in a tmux session, with the test's folders and `env`
/// (`K=V` words), images drawn with half-blocks; the shell prints EXIT:code afterwards.
fn start_tui(root: &Path, env: &[&str], args: &str) -> (String, Kill) {
    start_tui_with(root, env, &format!("{args} --images halfblocks"), true)
}

/// As `start_tui`, with ARGS as given (no `--images`: the default, which asks the terminal).
/// A line is printed on the pane first, which the interface must clear; after the exit line
/// the shell prints the terminal's `icanon` and `echo` settings (TTY: …). Without
/// `alternate_screen` the pane has tmux's `alternate-screen off`, as some users set it, so
/// the interface draws over what the pane held.
fn start_tui_with(root: &Path, env: &[&str], args: &str, alternate_screen: bool) -> (String, Kill) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "suggestive-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let var = |k: &str, v: &Path| format!("{k}={}", v.display());
    let cmd = format!(
        "sleep 0.3; printf '%150s\\n' BEFORE-THE-INTERFACE; env {} {} {} {} {} {args}; echo EXIT:$?; \
         echo TTY: $(stty -a | tr ' ;' '\\n\\n' | grep -E '^-?(icanon|echo)$'); sleep 60",
        var("SUGGESTIVE_SESSIONS_DIR", &root.join("sessions")),
        var("SUGGESTIVE_CACHE_DIR", &root.join("cache")),
        var("SUGGESTIVE_DATA_DIR", &root.join("share")),
        env.join(" "),
        env!("CARGO_BIN_EXE_suggestive"),
    );
    let mut tmux_args = vec![
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "160",
        "-y",
        "48",
        &cmd,
    ];
    // Set before the command's first output (it sleeps a moment first).
    if !alternate_screen {
        tmux_args.extend([
            ";",
            "set-window-option",
            "-t",
            &name,
            "alternate-screen",
            "off",
        ]);
    }
    tmux(&tmux_args);
    (name.clone(), Kill(name))
}

/// (Debug builds only: SUGGESTIVE_TEST_PANIC, which provokes the panic, is compiled out of
/// release builds.)
#[test]
#[cfg(debug_assertions)]
fn tui_survives_a_worker_panic_and_quits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = tiny_live_session(root);
    let (name, _kill) = start_tui(root, &["SUGGESTIVE_TEST_PANIC=session"], "tui live");
    wait_for(&name, "the dashboard", |s| {
        s.contains("paused") && s.contains("Work in progress")
    });
    // n: the session thread panics; the interface says so and keeps the screen (raw mode on).
    tmux(&["send-keys", "-t", &name, "n"]);
    let s = wait_for(&name, "the failure", |s| s.contains("worker panicked"));
    assert!(
        s.contains("SUGGESTIVE_TEST_PANIC=session") && s.contains("Work in progress"),
        "{s}"
    );
    assert!(!s.contains("EXIT:"), "{s}");
    // q still works: keys arrive, the process ends, the terminal is back.
    tmux(&["send-keys", "-t", &name, "q"]);
    let s = wait_for(&name, "exit", |s| s.contains("EXIT:"));
    assert!(s.contains("EXIT:0"), "{s}");
    assert!(!s.contains("Work in progress"), "{s}");
    assert!(no_lock_left(&dir), "the session is still locked");
    let log = std::fs::read_to_string(root.join("sessions/tui-stderr.log")).unwrap();
    assert!(
        log.contains("thread 'session'") && log.contains("SUGGESTIVE_TEST_PANIC=session"),
        "{log}"
    );
}
/// CPU seconds the TUI process (the pane's shell's child) used over `over`.
fn cpu_seconds(name: &str, over: Duration) -> f64 {
    let shell = tmux(&["display-message", "-p", "-t", name, "#{pane_pid}"]);
    let shell = shell.trim();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
    let pid = children.split_whitespace().next().expect("the TUI process");
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command name.
        f[11] + f[12]
    };
    let t0 = ticks();
    std::thread::sleep(over);
    (ticks() - t0) as f64 / 100.0
}

#[test]
fn tui_whose_session_cannot_open_idles_and_n_reopens_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = tiny_live_session(root);
    // This build has no CUDA (and the tests run on CPU): opening on cuda:0 fails.
    let (name, _kill) = start_tui(root, &[], "tui live --device cuda:0");
    let s = wait_for(&name, "the failure", |s| s.contains("n or r reopens it"));
    assert!(s.contains("· error ·"), "{s}");
    let cpu = cpu_seconds(&name, Duration::from_secs(2));
    assert!(cpu < 0.5, "the idle interface used {cpu} s of CPU in 2 s");
    // n reopens the session (and fails again), it does not claim to run.
    tmux(&["send-keys", "-t", &name, "n"]);
    let s = wait_for(&name, "the second failure", |s| {
        s.contains("reopening the session")
            && s.matches("n or r reopens it").count() == 2
            && s.contains("· error ·")
    });
    assert!(!s.contains("· running ·"), "{s}");
    tmux(&["send-keys", "-t", &name, "q"]);
    let s = wait_for(&name, "exit", |s| s.contains("EXIT:"));
    assert!(s.contains("EXIT:0"), "{s}");
    assert!(no_lock_left(&dir), "the session is still locked");
}

#[test]
fn tui_q_in_a_dashboard_opened_from_the_browser_goes_back_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = tiny_live_session(root);
    let (name, _kill) = start_tui(root, &[], "tui");
    wait_for(&name, "the browser", |s| {
        s.contains("Sessions") && s.contains("live")
    });
    tmux(&["send-keys", "-t", &name, "Enter"]);
    wait_for(&name, "the dashboard", |s| {
        s.contains("paused") && s.contains("Work in progress")
    });
    // q: back to the browser (the session closed, its lock released), not out of the program.
    tmux(&["send-keys", "-t", &name, "q"]);
    let s = wait_for(&name, "the browser again", |s| {
        s.contains("enter open · c create") || s.contains("EXIT:")
    });
    assert!(!s.contains("EXIT:") && s.contains("Sessions"), "{s}");
    assert!(no_lock_left(&dir), "the session is still locked");
    // q in the browser quits.
    tmux(&["send-keys", "-t", &name, "q"]);
    let s = wait_for(&name, "exit", |s| s.contains("EXIT:"));
    assert!(s.contains("EXIT:0"), "{s}");
}

/// A session whose repeat another process runs is attached to, not run: the dashboard follows
/// its files, says where the repeat runs and what it does, refuses to run it too, and once
/// that process is gone runs what is left here.
#[test]
fn tui_attaches_to_a_session_another_process_runs_and_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Enough VAE epochs that the run is still in them when it is stopped below, and enough
    // epochs per round that it is still in round 1 when it is killed.
    let dir = tiny_session_in(root, "live", &["vae.epochs=60", "unet.epochs_per_round=30"]);
    let events = repeat_dir(&dir, 1).join("events.jsonl");
    let mut run = bin()
        .args(["run", "live"])
        .env("SUGGESTIVE_SESSIONS_DIR", root.join("sessions"))
        .env("SUGGESTIVE_CACHE_DIR", root.join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = run.id() as i32;
    // Stopped (SIGSTOP) once it is in the VAE's epochs: it holds its lock, and writes nothing.
    let start = Instant::now();
    while !std::fs::read_to_string(&events).is_ok_and(|t| t.contains("\"epoch_done\"")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(pid, libc::SIGSTOP) };

    let (name, _kill) = start_tui(root, &[], "tui live");
    let s = wait_for(&name, "the attached dashboard", |s| {
        s.contains("attached") && s.contains(&format!("pid {pid} on "))
    });
    assert!(
        s.contains("Repeats (running elsewhere)") && s.contains("s ago · VAE · epoch "),
        "{s}"
    );
    // n does not start a second run of it.
    tmux(&["send-keys", "-t", &name, "n"]);
    let s = wait_for(&name, "the refusal", |s| {
        s.contains("this dashboard watches; the session runs elsewhere")
    });
    assert!(!s.contains("· running ·"), "{s}");

    // The run goes on: the dashboard follows its epochs, then its steps and their results.
    // The epoch and loss, without the time since the last event (which moves by itself).
    let epoch_line = |s: &str| {
        s.lines()
            .find_map(|l| l.find("VAE · epoch ").map(|at| l[at..].to_string()))
    };
    let before = epoch_line(&s);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_for(&name, "the epochs to move", |s| {
        epoch_line(s).is_some_and(|l| Some(&l) != before.as_ref())
    });
    wait_for(&name, "the first results", |s| s.contains("test Dice 0."));
    // Killed in round 1: nothing runs it now, and the dashboard offers to run the rest here.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = run.wait();
    let session = suggestive::session::Session::open(&dir).unwrap();
    let total = suggestive::session::plan::plan(&session.config).len();
    assert!(
        session.state.done < total,
        "the run ended before it was killed"
    );
    wait_for(&name, "nothing running it", |s| {
        s.contains("n/r run it here")
    });
    tmux(&["send-keys", "-t", &name, "r"]);
    wait_for(&name, "the run here", |s| s.contains("· finished ·"));
    tmux(&["send-keys", "-t", &name, "q"]);
    let s = wait_for(&name, "exit", |s| s.contains("EXIT:"));
    assert!(s.contains("EXIT:0"), "{s}");
    assert!(no_lock_left(&dir), "the session is still locked");
    let st = suggestive::session::Session::open(&dir).unwrap().state;
    assert_eq!(st.done, total);
    assert_eq!(st.results.len(), 6);
}

/// Labelled by people: the dashboard shows the worklist while the round waits, a file dropped
/// into the inbox changes it (a bad one shows as rejected, with why), and once the round is
/// complete the run goes on by itself.
#[test]
fn tui_shows_the_worklist_and_goes_on_when_the_inbox_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dir = tiny_session_in(
        root,
        "lab",
        &[
            "experiment.arms=[\"random\"]",
            "experiment.labels=\"human\"",
        ],
    );
    let data = root.join("data");
    let (name, _kill) = start_tui(root, &[], "tui lab");
    wait_for(&name, "the dashboard", |s| s.contains("paused"));
    // n: the split, the VAE and the latents, then the initial set waits for its annotations.
    tmux(&["send-keys", "-t", &name, "n"]);
    let s = wait_for(&name, "the worklist", |s| {
        s.contains("Round 0: 0 of 2 annotations in") && s.contains("waiting for annotations")
    });
    let package = dir.join("annotate/round-00");
    let items = suggestive::session::annotations::worklist(
        &suggestive::session::Session::open(&dir).unwrap().files(),
        0,
    )
    .unwrap()
    .unwrap();
    for item in &items {
        assert!(s.contains(&format!("waiting  {}", item.case)), "{s}");
    }
    let truth = |case: &str| patient_file(&data, case, "seg");
    // One right file: received.
    std::fs::copy(
        truth(&items[0].case),
        package.join("inbox").join(&items[0].segmentation),
    )
    .unwrap();
    wait_for(&name, "the first case received", |s| {
        s.contains("Round 0: 1 of 2 annotations in")
            && s.contains(&format!("received {}", items[0].case))
    });
    // The other case's file, cut in half: rejected, with why.
    let whole = std::fs::read(truth(&items[1].case)).unwrap();
    std::fs::write(
        package.join("inbox").join(&items[1].segmentation),
        &whole[..whole.len() / 2],
    )
    .unwrap();
    wait_for(&name, "the rejection", |s| {
        s.contains(&format!("rejected {}", items[1].case)) && s.contains("truncated")
    });
    // The right file: the round is complete and the run goes on by itself.
    std::fs::copy(
        truth(&items[1].case),
        package.join("inbox").join(&items[1].segmentation),
    )
    .unwrap();
    wait_for(&name, "the run to go on", |s| {
        s.contains("random round 0: 2 annotated, test Dice")
    });
    tmux(&["send-keys", "-t", &name, "q"]);
    let s = wait_for(&name, "exit", |s| s.contains("EXIT:"));
    assert!(s.contains("EXIT:0"), "{s}");
    assert!(no_lock_left(&dir), "the session is still locked");
}
