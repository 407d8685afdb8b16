//! The TUI without a terminal: the dashboard driven by scripted engine events (no training),
//! rendered on ratatui's TestBackend and compared with insta snapshots at 80×24 and 160×48; the
//! browser; key handling.

mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use suggestive::session::config::Arm;
use suggestive::session::events::{Event, Phase, PickView};
use suggestive::session::run::Outcome;
use suggestive::session::state::SessionState;
use suggestive::tui::app::{Dashboard, RunState, Tab};
use suggestive::tui::browser::Browser;
use suggestive::tui::theme::Theme;
use suggestive::tui::ui::{self, ImageState};
use suggestive::tui::worker::{Command, Message, PreviewReply};

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn view(patient: &str, sample: usize, source: Option<usize>, distance: Option<f64>) -> PickView {
    PickView {
        sample,
        source,
        patient: patient.into(),
        slice: None,
        distance,
        angle_deg: distance.map(|_| 21.0),
        fallback: false,
        dice: None,
    }
}

/// What a session worker sends once it has opened a new session of `config`.
fn loaded(
    config: suggestive::session::config::SessionConfig,
    device: &str,
    steps_total: usize,
) -> Message {
    Message::Loaded {
        config: Box::new(config),
        state: Box::new(SessionState::default()),
        views: Vec::new(),
        device: device.into(),
        steps_total,
    }
}

/// A dashboard part-way through round 1 of the demo preset: the shared start evaluated, every
/// arm's picks made, random and proposed evaluated, oracle training.
fn mid_round() -> Dashboard {
    let mut app = Dashboard::new("demo".into());
    let config = suggestive::session::preset("demo").unwrap();
    app.on_message(loaded(config, "CPU", 32));
    app.run = RunState::Running;
    let events = vec![
        Event::Started {
            session: "demo".into(),
            device: "CPU".into(),
            steps_done: 0,
            steps_total: 32,
            data_load_s: 0.5,
        },
        Event::StepStarted {
            index: 3,
            total: 32,
            phase: Phase::Training,
            arm: None,
            description: "repeat 1, stage 1: initial UNet".into(),
        },
        Event::Evaluated {
            repeat: 0,
            stage: 0,
            arm: Arm::Random,
            round: 0,
            annotated: 4,
            viewed: 172,
            dice_mean: 0.52,
            dice_sd: 0.09,
            collapsed: false,
        },
        Event::Evaluated {
            repeat: 0,
            stage: 0,
            arm: Arm::Proposed,
            round: 0,
            annotated: 4,
            viewed: 172,
            dice_mean: 0.52,
            dice_sd: 0.09,
            collapsed: false,
        },
        Event::Evaluated {
            repeat: 0,
            stage: 0,
            arm: Arm::Oracle,
            round: 0,
            annotated: 4,
            viewed: 172,
            dice_mean: 0.52,
            dice_sd: 0.09,
            collapsed: false,
        },
        Event::PicksMade {
            repeat: 0,
            stage: 0,
            arm: Arm::Random,
            round: 1,
            picks: vec![
                view("BraTS19_CBICA_P006_1", 5, None, None),
                view("BraTS19_TCIA01_P036_1", 20, None, None),
            ],
            fallbacks: 0,
            tumour_picks: Some(2),
        },
        Event::Evaluated {
            repeat: 0,
            stage: 0,
            arm: Arm::Random,
            round: 1,
            annotated: 6,
            viewed: 258,
            dice_mean: 0.60,
            dice_sd: 0.18,
            collapsed: false,
        },
        Event::PicksMade {
            repeat: 0,
            stage: 0,
            arm: Arm::Proposed,
            round: 1,
            picks: vec![
                view("BraTS19_CBICA_P012_1", 9, Some(1), Some(0.42)),
                view("BraTS19_TCIA01_P025_1", 17, Some(3), Some(0.57)),
            ],
            fallbacks: 1,
            tumour_picks: Some(2),
        },
        Event::Evaluated {
            repeat: 0,
            stage: 0,
            arm: Arm::Proposed,
            round: 1,
            annotated: 6,
            viewed: 258,
            dice_mean: 0.65,
            dice_sd: 0.03,
            collapsed: false,
        },
        Event::PicksMade {
            repeat: 0,
            stage: 0,
            arm: Arm::Oracle,
            round: 1,
            picks: vec![view("BraTS19_TCIA01_P032_1", 22, None, None)],
            fallbacks: 0,
            tumour_picks: Some(1),
        },
        Event::StepStarted {
            index: 9,
            total: 32,
            phase: Phase::Training,
            arm: Some(Arm::Oracle),
            description: "repeat 1, stage 1: oracle training, round 1".into(),
        },
        Event::EpochDone {
            index: 9,
            phase: Phase::Training,
            arm: Some(Arm::Oracle),
            epoch: 4,
            epochs: 10,
            loss: 0.6261,
            checkpoint_s: 0.01,
            validation: None,
        },
    ];
    for e in events {
        app.on_message(Message::Event(e));
    }
    // A latent cloud: 30 pool samples on a spiral; the initial set and the picks highlighted.
    let latents: Vec<Vec<f64>> = (0..30)
        .map(|i| {
            let t = i as f64 * 0.4;
            vec![
                t.cos() * (1.0 + t * 0.1),
                t.sin() * (1.0 + t * 0.1),
                0.1 * t,
                0.0,
                0.05 * (i % 3) as f64,
            ]
        })
        .collect();
    app.on_preview(PreviewReply::Latents {
        repeat: 0,
        latents,
        initial: vec![1, 3, 7, 11],
    });
    app.arm_index = 1; // proposed
    app
}

/// Each of `want` is somewhere on `screen`.
fn assert_shows(screen: &str, want: &[&str]) {
    for w in want {
        assert!(screen.contains(w), "{w}:\n{screen}");
    }
}

fn render(app: &Dashboard, w: u16, h: u16) -> String {
    let theme = Theme::default_theme(false);
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    let mut img = ImageState::default();
    term.draw(|f| ui::draw(f, app, &theme, &mut img)).unwrap();
    // The ETA depends on the clock; everything else is deterministic.
    let text = format!("{}", term.backend());
    regex_lite_eta(&text)
}

fn regex_lite_eta(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("eta ") {
        out.push_str(&rest[..i + 4]);
        let tail = &rest[i + 4..];
        let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
        out.push('N');
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn dashboard_mid_round_wide() {
    let text = render(&mid_round(), 160, 48);
    assert!(
        text.contains("oracle training, round 1") && text.contains("epoch 4/10"),
        "{text}"
    );
    assert!(
        text.contains("BraTS19_CBICA_P012_1"),
        "the selected proposed pick is shown"
    );
    insta::assert_snapshot!("dashboard_160x48", text);
}

#[test]
fn dashboard_mid_round_small_uses_tabs() {
    let mut app = mid_round();
    let text = render(&app, 80, 24);
    assert!(
        text.contains("1 overview") && text.contains("Work in progress"),
        "{text}"
    );
    insta::assert_snapshot!("dashboard_80x24_overview", text);
    app.on_key(key(KeyCode::Char('2')));
    assert_eq!(app.tab, Tab::Latent);
    insta::assert_snapshot!("dashboard_80x24_latent", render(&app, 80, 24));
    app.on_key(key(KeyCode::Char('3')));
    let text = render(&app, 80, 24);
    assert!(text.contains("proposed pick 1/2"), "{text}");
    insta::assert_snapshot!("dashboard_80x24_preview", text);
}

#[test]
fn help_overlay_lists_every_key() {
    let mut app = mid_round();
    app.on_key(key(KeyCode::Char('?')));
    assert!(app.help);
    let text = render(&app, 160, 48);
    for (k, _) in ui::KEYS {
        assert!(text.contains(k), "help lacks {k}");
    }
    insta::assert_snapshot!("help_160x48", text);
    insta::assert_snapshot!("help_80x24", render(&app, 80, 24));
    app.on_key(key(KeyCode::Char('x')));
    assert!(!app.help, "any key closes the help");
}

/// Two more repeats' round 1 for random and proposed, the full-data reference of all three,
/// and the VAE's latent space of the first.
fn three_repeats() -> Dashboard {
    let mut app = mid_round();
    let evaluated = |repeat, arm, round, annotated, dice_mean| Event::Evaluated {
        repeat,
        stage: 0,
        arm,
        round,
        annotated,
        viewed: annotated * 43,
        dice_mean,
        dice_sd: 0.05,
        collapsed: false,
    };
    let mut events = Vec::new();
    for (repeat, random, proposed) in [(1, 0.62, 0.70), (2, 0.57, 0.58)] {
        for arm in [Arm::Random, Arm::Proposed, Arm::Oracle] {
            events.push(evaluated(repeat, arm, 0, 4, 0.5));
        }
        events.push(evaluated(repeat, Arm::Random, 1, 6, random));
        events.push(evaluated(repeat, Arm::Proposed, 1, 6, proposed));
    }
    for (repeat, dice) in [(0, 0.80), (1, 0.82), (2, 0.78)] {
        events.push(evaluated(repeat, Arm::Full, 0, 30, dice));
    }
    events.push(Event::Manifold {
        repeat: 0,
        stats: suggestive::engine::manifold::ManifoldStats {
            slices: 2580,
            recon_mse: 0.21,
            mean_image_mse: 0.55,
            variance_explained: 1.0 - 0.21 / 0.55,
            kl_per_dim: vec![0.9, 0.4, 0.01, 0.0, 0.0],
            mean_variance: vec![0.8, 0.3, 0.005, 0.0, 0.0],
            active_dims: 2,
        },
        warning: None,
    });
    for e in events {
        app.on_message(Message::Event(e));
    }
    app
}

/// `c` shows the selected arm against random, paired by repeat, as results come; the header
/// gives the latest budget's line.
#[test]
fn comparison_view_shows_the_paired_table() {
    let mut app = three_repeats();
    // Differences proposed − random at 6: 0.05, 0.08, 0.01: mean 0.0467, all three wins, so the
    // exact signed-rank p is 2 / 2³ = 0.25.
    let text = render(&app, 80, 24);
    assert!(
        text.contains("proposed − random at 6: +0.047 [") && text.contains("p = 0.250 (n = 3)"),
        "{text}"
    );
    app.on_key(key(KeyCode::Char('c')));
    assert!(app.comparison);
    let wide = render(&app, 160, 48);
    assert_shows(
        &wide,
        &[
            "proposed − random, paired by repeat",
            "3/0/0",
            "AUBC",
            "full data 0.800 ± 0.020 (n = 3)",
            "repeat 1: VAE MSE 0.2100, mean image 0.5500: 62 % of the variance explained",
            "KL per dimension 0.90 0.40 0.01 0.00 0.00 nats; 2 of 5 active",
        ],
    );
    insta::assert_snapshot!("comparison_160x48", wide);
    insta::assert_snapshot!("comparison_80x24", render(&app, 80, 24));
    // Tab moves to the oracle, which has no round in any repeat yet; c closes the view.
    app.on_key(key(KeyCode::Tab));
    assert!(render(&app, 160, 48).contains("oracle − random, paired by repeat"));
    app.on_key(key(KeyCode::Char('c')));
    assert!(!app.comparison);
}

/// A latent space below vae.min_variance_explained: the legend marks the arms that pick in it,
/// the log and the comparison view carry the warning.
#[test]
fn a_weak_latent_space_is_flagged_next_to_the_arms_that_use_it() {
    let mut app = three_repeats();
    let stats = suggestive::engine::manifold::ManifoldStats {
        slices: 2580,
        recon_mse: 0.50,
        mean_image_mse: 0.55,
        variance_explained: 1.0 - 0.50 / 0.55,
        kl_per_dim: vec![0.01; 5],
        mean_variance: vec![0.001; 5],
        active_dims: 0,
    };
    let warning = app.config.as_ref().unwrap().weak_manifold(&stats);
    assert!(warning.is_some(), "9 % is below the default bar");
    app.on_message(Message::Event(Event::Manifold {
        repeat: 1,
        stats,
        warning,
    }));
    let text = render(&app, 160, 48);
    assert_shows(
        &text,
        &[
            "proposed (weak latent space)",
            "repeat 2: warning: the latent space reproduces 9 % of the pool's variance (below 25 %): proposed picks carry",
        ],
    );
    assert!(!text.contains("random (weak"), "{text}");
    app.on_key(key(KeyCode::Char('c')));
    assert!(render(&app, 160, 48)
        .contains("repeat 2: warning: the latent space reproduces 9 % of the pool's variance"));
}

/// While the VAE trains, the progress panel draws its validation curve, the latest share and
/// the best epoch; a VAE resumed after a stop draws the epochs its state recorded before.
#[test]
fn the_vae_learning_curve_is_drawn_while_it_trains_and_after_a_resume() {
    use suggestive::engine::manifold::VaeEpoch;
    let epoch = |epoch, variance_explained| VaeEpoch {
        epoch,
        loss: 0.1,
        validation_mse: 1.0 - variance_explained,
        variance_explained,
    };
    let mut state = SessionState::default();
    state.repeats.push(suggestive::session::state::RepeatData {
        vae_epochs: vec![epoch(1, 0.10), epoch(2, 0.30)],
        ..Default::default()
    });
    let mut app = Dashboard::new("demo".into());
    app.on_message(Message::Loaded {
        config: Box::new(suggestive::session::preset("demo").unwrap()),
        state: Box::new(state),
        views: Vec::new(),
        device: "CPU".into(),
        steps_total: 32,
    });
    app.run = RunState::Running;
    app.on_message(Message::Event(Event::StepStarted {
        index: 1,
        total: 32,
        phase: Phase::Vae,
        arm: None,
        description: "repeat 1: VAE".into(),
    }));
    for (n, ve) in [(3, 0.45), (4, 0.40)] {
        app.on_message(Message::Event(Event::EpochDone {
            index: 1,
            phase: Phase::Vae,
            arm: None,
            epoch: n,
            epochs: 30,
            loss: 0.08,
            checkpoint_s: 0.0,
            validation: Some(epoch(n, ve)),
        }));
    }
    // 10 %, 30 %, 45 %, 40 % on a 0–100 % scale of eight blocks: ▂ ▃ ▄ ▄.
    assert_shows(
        &render(&app, 160, 48),
        &["epoch 4/30", "valid ▂▃▄▄ 40 % · best epoch 3"],
    );
}

#[test]
fn worker_errors_are_shown_not_crashed_on() {
    let mut app = mid_round();
    app.on_message(Message::Failed(
        "cannot load checkpoint r0-s0-init.safetensors".into(),
    ));
    assert!(matches!(app.run, RunState::Failed(_)));
    let text = render(&app, 160, 48);
    assert!(
        text.contains("error") && text.contains("cannot load checkpoint"),
        "{text}"
    );
    insta::assert_snapshot!("error_160x48", text);
    insta::assert_snapshot!("error_80x24", render(&app, 80, 24));
    // After an error the user may try again.
    assert_eq!(app.on_key(key(KeyCode::Char('n'))), Some(Command::Step));
}

#[test]
fn keys_drive_the_session_and_the_selection() {
    let mut app = mid_round();
    app.run = RunState::Paused;
    assert_eq!(app.on_key(key(KeyCode::Char('n'))), Some(Command::Step));
    assert_eq!(app.run, RunState::Running);
    assert_eq!(
        app.on_key(key(KeyCode::Char('n'))),
        None,
        "no second start while running"
    );
    assert_eq!(app.on_key(key(KeyCode::Char('p'))), Some(Command::Pause));
    assert_eq!(app.run, RunState::Stopping);
    app.on_message(Message::Idle(Outcome::Stopped));
    assert_eq!(app.run, RunState::Paused);
    assert_eq!(app.on_key(key(KeyCode::Char('r'))), Some(Command::RunAll));

    // Picks: proposed has two; → cycles, tab moves to the oracle.
    assert_eq!(app.pick_index, 0);
    app.on_key(key(KeyCode::Right));
    assert_eq!(app.pick_index, 1);
    app.on_key(key(KeyCode::Char('l')));
    assert_eq!(app.pick_index, 0);
    app.on_key(key(KeyCode::Tab));
    assert_eq!(app.selected_arm(), Some(Arm::Oracle));
    let req = app.preview_request().unwrap();
    assert_eq!((req.arm, req.sample, req.round), (Arm::Oracle, 22, 1));
    app.on_key(key(KeyCode::Char('m')));
    assert_eq!(app.preview_request().unwrap().channel, 1);

    // Latent axes: PCA → z1×z2 → z1×z3 …
    app.on_key(key(KeyCode::Char('d')));
    assert!(render(&app, 160, 48).contains("z1 × z2"));
    app.on_key(key(KeyCode::Char('+')));
    assert!(app.zoom > 1.0);

    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Some(Command::Quit));
    assert!(app.quit);
}

#[test]
fn browser_lists_sessions_with_their_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sessions");
    let cfg = suggestive::session::preset("demo").unwrap();
    suggestive::session::Session::create(&dir.join("alpha"), cfg.clone()).unwrap();
    suggestive::session::Session::create(&dir.join("beta"), cfg).unwrap();
    std::fs::write(dir.join("beta/state.json"), "garbage").unwrap();
    // A session being created (Session::create's hidden temporary folder) is not listed.
    let cfg = suggestive::session::preset("demo").unwrap();
    suggestive::session::Session::create(&dir.join("half"), cfg).unwrap();
    std::fs::rename(dir.join("half"), dir.join(".half.creating-1")).unwrap();
    let mut b = Browser::new(dir.clone());
    assert_eq!(b.entries.len(), 2);
    assert_eq!(b.entries[0].state, Some(suggestive::session::Status::New));
    assert_eq!(b.entries[1].state, None);
    let theme = Theme::default_theme(false);
    let shot = |b: &Browser, w: u16, h: u16| {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| b.draw(f, &theme)).unwrap();
        format!("{}", term.backend())
    };
    let text = shot(&b, 160, 48);
    assert!(text.contains("alpha") && text.contains("broken"), "{text}");
    let dir_text = dir.display().to_string();
    insta::with_settings!({ filters => vec![(regex_escape(&dir_text).as_str(), "[SESSIONS]")] }, {
        insta::assert_snapshot!("browser_160x48", text);
        insta::assert_snapshot!("browser_80x24", shot(&b, 80, 24));
        b.on_key(key(KeyCode::Char('c')));
        insta::assert_snapshot!("browser_create_form_80x24", shot(&b, 80, 24));
        b.on_key(key(KeyCode::Esc));
    });
    // Delete asks first; 'n' keeps, 'y' deletes.
    b.on_key(key(KeyCode::Char('x')));
    b.on_key(key(KeyCode::Char('n')));
    assert_eq!(b.entries.len(), 2);
    b.on_key(key(KeyCode::Down));
    b.on_key(key(KeyCode::Char('x')));
    b.on_key(key(KeyCode::Char('y')));
    assert_eq!(b.entries.len(), 1);
    assert!(!dir.join("beta").exists());
    // Create from the form: a name is required.
    b.on_key(key(KeyCode::Char('c')));
    b.on_key(key(KeyCode::Enter));
    assert!(matches!(&b.mode, suggestive::tui::browser::Mode::Create(f) if f.message.is_some()));
    for c in "gamma".chars() {
        b.on_key(key(KeyCode::Char(c)));
    }
    b.on_key(key(KeyCode::Enter));
    assert!(dir.join("gamma/session.toml").exists());
    assert_eq!(b.entries.len(), 2);
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A panic on the session thread is reported like any failure, and the thread ends (its channel
/// disconnects) instead of leaving the interface waiting.
#[test]
fn a_session_worker_panic_becomes_a_failure_message() {
    use suggestive::tui::worker::SessionWorker;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut worker = SessionWorker::spawn(tx, |_, _, _| {
        let v = [1, 2, 3];
        let _ = v[std::hint::black_box(9999usize)];
        Ok(())
    });
    let m = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a message from the worker");
    let Message::Failed(e) = m else {
        panic!("expected Failed, got {m:?}")
    };
    assert!(e.contains("panicked") && e.contains("9999"), "{e}");
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(10)).is_err(),
        "the thread ends after its failure"
    );
    worker.shutdown();
    let mut app = mid_round();
    app.on_message(Message::Failed(e));
    let text = render(&app, 160, 48);
    assert!(text.contains("the session worker panicked"), "{text}");
}

/// A panic on the preview thread gives a failed reply, and the next request is served by a fresh
/// handler.
#[test]
fn a_preview_worker_panic_becomes_a_failed_reply_and_it_goes_on() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use suggestive::tui::worker::{spawn_preview_worker, PreviewJob};
    let (job_tx, jobs) = crossbeam_channel::unbounded();
    let (tx, replies) = crossbeam_channel::unbounded();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let _h = spawn_preview_worker(jobs, tx, move || {
        m.fetch_add(1, Ordering::SeqCst);
        |_: Option<_>, latents: Option<usize>| {
            if latents == Some(7) {
                panic!("no such repeat: 7");
            }
            Ok(vec![PreviewReply::Latents {
                repeat: latents.unwrap_or(0),
                latents: Vec::new(),
                initial: Vec::new(),
            }])
        }
    });
    let wait = || {
        replies
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a reply")
    };
    job_tx.send(PreviewJob::Latents(7)).unwrap();
    match wait() {
        PreviewReply::Failed(e) => {
            assert!(e.contains("panicked") && e.contains("repeat: 7"), "{e}")
        }
        r => panic!("expected Failed, got {r:?}"),
    }
    job_tx.send(PreviewJob::Latents(1)).unwrap();
    assert!(matches!(wait(), PreviewReply::Latents { repeat: 1, .. }));
    assert_eq!(
        made.load(Ordering::SeqCst),
        2,
        "a fresh handler after the panic"
    );
}

/// When the session worker has ended (it could not open the session, or failed), n does not
/// pretend to run: it asks for a new worker, and the run starts once the session has loaded.
#[test]
fn n_after_the_worker_ended_reopens_the_session() {
    let mut app = Dashboard::new("demo".into());
    app.on_message(Message::Failed(
        "session demo is being written by another process (pid 42)".into(),
    ));
    app.on_worker_gone();
    assert!(!app.worker_alive);
    assert!(matches!(&app.run, RunState::Failed(e) if e.contains("pid 42")));
    assert_eq!(app.on_key(key(KeyCode::Char('p'))), None);
    assert_eq!(
        app.on_key(key(KeyCode::Char('n'))),
        None,
        "no command to a dead worker"
    );
    assert_eq!(app.restart, Some(Command::Step));
    assert_eq!(app.run, RunState::Loading);
    let text = render(&app, 160, 48);
    assert!(
        text.contains("loading") && !text.contains("running"),
        "{text}"
    );
    // The loop starts a worker; once it has loaded the session, the step runs.
    app.restart = None;
    app.worker_alive = true;
    app.on_message(loaded(
        suggestive::session::preset("demo").unwrap(),
        "CPU",
        32,
    ));
    assert_eq!(app.run, RunState::Running);
    // A worker that ends without a word is an error too, not a run.
    app.on_worker_gone();
    assert!(matches!(app.run, RunState::Failed(_)));
    assert_eq!(app.on_key(key(KeyCode::Char('r'))), None);
    assert_eq!(app.restart, Some(Command::RunAll));
}

/// Ctrl-C quits from the browser's list and from its form; it is neither `c` (create) nor typed.
#[test]
fn ctrl_c_quits_the_browser() {
    use suggestive::tui::browser::{Action, Mode};
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Browser::new(tmp.path().to_path_buf());
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert!(matches!(b.on_key(ctrl_c), Some(Action::Quit)));
    assert_eq!(b.mode, Mode::List, "ctrl-c opened the form");
    b.on_key(key(KeyCode::Char('c')));
    assert!(matches!(b.mode, Mode::Create(_)));
    assert!(b
        .on_key(KeyEvent::new(KeyCode::Char('x'), KeyModifiers::CONTROL))
        .is_none());
    assert!(matches!(b.on_key(ctrl_c), Some(Action::Quit)));
    let Mode::Create(form) = &b.mode else {
        panic!("the form closed")
    };
    assert_eq!(form.name, "", "a control chord was typed");
}

/// The preview's prediction follows the arm's model: asked for again when the selected arm has
/// been evaluated (its new checkpoint exists then), and every reply counts as a new image even
/// for the same request.
#[test]
fn preview_is_asked_again_after_the_selected_arm_is_evaluated() {
    let mut app = mid_round();
    app.run = RunState::Paused;
    assert_eq!(app.selected_arm(), Some(Arm::Proposed));
    let evaluated = |arm| {
        Message::Event(Event::Evaluated {
            repeat: 0,
            stage: 0,
            arm,
            round: 1,
            annotated: 6,
            viewed: 258,
            dice_mean: 0.6,
            dice_sd: 0.1,
            collapsed: false,
        })
    };
    app.want_preview = false;
    app.on_message(evaluated(Arm::Oracle));
    assert!(
        !app.want_preview,
        "another arm's evaluation changes nothing here"
    );
    app.on_message(evaluated(Arm::Proposed));
    assert!(
        app.want_preview,
        "no new preview asked for after the evaluation"
    );
    let request = app.preview_request().unwrap();
    let reply = || PreviewReply::Image {
        request: request.clone(),
        image: image::RgbImage::new(4, 4),
        caption: "c".into(),
    };
    app.on_preview(reply());
    let first = app.preview_generation;
    app.on_preview(reply());
    assert_ne!(
        app.preview_generation, first,
        "a second reply to the same request is a new image"
    );
}

/// The chart's dotted lines are the 95 % interval over repeats: none while each point has one
/// repeat (the evaluation's sd over test patients is not that), drawn once a second repeat is
/// in.
#[test]
fn dice_chart_bands_only_over_several_repeats() {
    let mut app = mid_round();
    let spread = |app: &Dashboard| {
        ui::curves(app)
            .0
            .iter()
            .flat_map(|(_, p)| p.iter().filter_map(|q| q.band.map(|[lo, hi]| hi - lo)))
            .fold(0.0f64, f64::max)
    };
    assert_eq!(spread(&app), 0.0, "one repeat, yet a spread is drawn");
    for (arm, dice) in [(Arm::Random, 0.4), (Arm::Proposed, 0.5), (Arm::Oracle, 0.6)] {
        app.on_message(Message::Event(Event::Evaluated {
            repeat: 1,
            stage: 0,
            arm,
            round: 0,
            annotated: 4,
            viewed: 172,
            dice_mean: dice,
            dice_sd: 0.09,
            collapsed: false,
        }));
    }
    assert!(spread(&app) > 0.0, "two repeats and no spread");
}

/// q and esc close the dashboard (the loop goes back to the browser when it came from there);
/// ctrl-c quits the program.
#[test]
fn q_closes_the_dashboard_and_ctrl_c_quits() {
    for (k, exit) in [
        (key(KeyCode::Char('q')), false),
        (key(KeyCode::Esc), false),
        (
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
            true,
        ),
    ] {
        let mut app = mid_round();
        assert_eq!(app.on_key(k), Some(Command::Quit));
        assert!(app.quit);
        assert_eq!(app.exit, exit, "{k:?}");
    }
}

/// Small terminals and idle states: nothing drawn over the footer or the table's border, no
/// stale ETA once paused, and the footer offers only the keys that do something.
#[test]
fn small_terminals_and_idle_states_draw_cleanly() {
    // 20×4 on the preview tab: the preview's block has no inside; the footer stays the footer.
    let mut app = mid_round();
    app.on_key(key(KeyCode::Char('3')));
    let text = render(&app, 20, 4);
    let last = text.lines().last().unwrap();
    assert!(
        last.contains(" p pause"),
        "the footer was overwritten:\n{text}"
    );
    // The browser at 20×5 without sessions: its hint does not land on the table's border.
    let tmp = tempfile::tempdir().unwrap();
    let b = Browser::new(tmp.path().to_path_buf());
    let theme = Theme::default_theme(false);
    let mut term = Terminal::new(TestBackend::new(20, 5)).unwrap();
    term.draw(|f| b.draw(f, &theme)).unwrap();
    let text = format!("{}", term.backend());
    let border = text.lines().nth(3).unwrap();
    assert!(
        border.starts_with("\"└") && !border.contains("no"),
        "the table's border was overwritten:\n{text}"
    );
    // Paused mid-step: no "eta" of a step that no longer runs.
    let mut app = mid_round();
    assert!(render(&app, 160, 48).contains("eta"));
    app.on_message(Message::Idle(Outcome::Stopped));
    let text = render(&app, 160, 48);
    assert!(!text.contains("eta"), "{text}");
    assert!(text.contains("n next round"), "{text}");
    // Loading and finished: n and r do nothing, and the footer does not offer them.
    let loading = Dashboard::new("demo".into());
    let text = render(&loading, 160, 48);
    assert!(
        !text.contains("n next round") && !text.contains("r run all"),
        "{text}"
    );
    app.on_message(Message::Idle(Outcome::Finished));
    let text = render(&app, 160, 48);
    assert!(
        !text.contains("n next round") && !text.contains("r run all"),
        "{text}"
    );
    // q closes the dashboard: "quit" on its own, "back" when the browser opened it.
    assert!(
        text.contains("q quit") && !text.contains("q back"),
        "{text}"
    );
    app.from_browser = true;
    let text = render(&app, 160, 48);
    assert!(
        text.contains("q back") && !text.contains("q quit"),
        "{text}"
    );
}

/// A session whose lock a live process holds is not deleted; the browser names the process.
#[test]
fn browser_refuses_to_delete_a_session_another_process_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sessions");
    let cfg = suggestive::session::preset("demo").unwrap();
    suggestive::session::Session::create(&dir.join("busy"), cfg).unwrap();
    // The lock held as a run holds it (an advisory lock on the file, which names the pid):
    // here by this test process.
    let me = std::process::id();
    let holder = std::fs::File::create(dir.join("busy/lock")).unwrap();
    holder.try_lock().unwrap();
    std::fs::write(dir.join("busy/lock"), format!("{me}\n")).unwrap();
    let mut b = Browser::new(dir.clone());
    b.on_key(key(KeyCode::Char('x')));
    let refused = b.message.clone().unwrap_or_default();
    let asked = b.mode != suggestive::tui::browser::Mode::List;
    // Had it asked, answer yes: the session must survive anyway.
    b.on_key(key(KeyCode::Char('y')));
    let survived = dir.join("busy/session.toml").exists();
    drop(holder);
    assert!(survived, "a running session was deleted");
    assert!(!asked, "it asked to delete a running session");
    assert!(refused.contains(&me.to_string()), "{refused}");
    // Once the holder is gone, delete works.
    b.on_key(key(KeyCode::Char('x')));
    b.on_key(key(KeyCode::Char('y')));
    assert!(!dir.join("busy").exists());
}

/// A dashboard attached to a session of three repeats that run elsewhere: the first finished,
/// the second running in Slurm on node07 (its VAE at epoch 4 of 10), the third queued. Its
/// results come from the state files.
fn attached() -> Dashboard {
    use suggestive::cluster::{Placement, RepeatJob};
    use suggestive::session::events::LoggedEvent;
    use suggestive::tui::watch::Followed;
    let results = three_repeats().results;
    let mut app = Dashboard::new("grid".into());
    app.watching = true;
    let mut config = suggestive::session::preset("demo").unwrap();
    config.experiment.repeats = 3;
    app.on_message(loaded(config, "CUDA 0", 96));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let logged = |event, ago: f64| LoggedEvent {
        format_version: 1,
        time: now - ago,
        event,
    };
    let job = |task, state: &str, node: Option<&str>| RepeatJob {
        job: "1000".into(),
        task,
        state: Some(state.into()),
        asked: true,
        node: node.map(str::to_string),
        log: format!("slurm/logs/repeat-{task}.out").into(),
    };
    let place = |repeat, finished, slurm| Placement {
        repeat,
        finished,
        pid: None,
        host: None,
        slurm: Some(slurm),
    };
    app.on_message(Message::Followed(Box::new(Followed {
        state: Some((
            SessionState {
                done: 40,
                results,
                ..Default::default()
            },
            Vec::new(),
        )),
        events: vec![
            (
                1,
                logged(
                    Event::StepStarted {
                        index: 33,
                        total: 96,
                        phase: Phase::Vae,
                        arm: None,
                        description: "repeat 2: VAE".into(),
                    },
                    30.0,
                ),
            ),
            (
                1,
                logged(
                    Event::EpochDone {
                        index: 33,
                        phase: Phase::Vae,
                        arm: None,
                        epoch: 4,
                        epochs: 10,
                        loss: 0.25,
                        checkpoint_s: 0.0,
                        validation: None,
                    },
                    4.0,
                ),
            ),
        ],
        placements: Some(vec![
            place(0, true, job(1, "COMPLETED", Some("node03"))),
            place(1, false, job(2, "RUNNING", Some("node07"))),
            place(2, false, job(3, "PENDING", None)),
        ]),
    })));
    app
}

#[test]
fn an_attached_dashboard_says_where_each_repeat_runs_and_runs_nothing_itself() {
    let mut app = attached();
    assert_eq!(app.run, RunState::Watching);
    let wide = render(&app, 160, 48);
    assert_shows(
        &wide,
        &[
            "· attached ·",
            "Repeats (running elsewhere)",
            " 1 finished",
            " 2 running  slurm 1000_2 RUNNING on node07",
            "s ago · VAE · epoch 4/10 · loss 0.2500",
            " 3 queued   slurm 1000_3 PENDING",
            "proposed − random at 6: +0.047",
        ],
    );
    // The time since the last event moves with the clock.
    insta::with_settings!({filters => vec![(r"\d+s ago", "Ns ago")]}, {
        insta::assert_snapshot!("attached_160x48", wide);
        let small = render(&app, 80, 24);
        assert!(small.contains("2 running") && small.contains("3 queued"), "{small}");
        insta::assert_snapshot!("attached_80x24", small);
    });

    // n while the repeats run elsewhere: refused, with where they run.
    assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
    assert!(app.restart.is_none() && app.watching);
    let last = &app.log.back().unwrap().1;
    assert!(
        last.contains("this dashboard watches; the session runs elsewhere (repeat 2: slurm 1000_2 RUNNING on node07; repeat 3: slurm 1000_3 PENDING)"),
        "{last}"
    );
    // Once nothing runs it (the tasks failed), n runs the rest here.
    let mut gone = app.placements.clone();
    for p in &mut gone[1..] {
        p.slurm.as_mut().unwrap().state = Some("FAILED".into());
    }
    app.on_message(Message::Followed(Box::new(
        suggestive::tui::watch::Followed {
            state: None,
            events: Vec::new(),
            placements: Some(gone),
        },
    )));
    assert!(render(&app, 160, 48).contains("n/r run it here"));
    assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
    assert_eq!(app.restart, Some(Command::Step));
    assert!(!app.watching);
    assert_eq!(app.run, RunState::Loading);
}

/// Labelled by people, waiting for round 1: the worklist with each case's state replaces the
/// progress panel; the footer's keys say what can be done.
#[test]
fn the_worklist_shows_each_case_waiting_received_or_rejected() {
    use suggestive::session::annotations::{CaseState, WorkItem, WorkRow};
    let mut app = three_repeats();
    let item = |order: usize, case: &str| WorkItem {
        order,
        case: case.into(),
        images: format!("/data/{case}/{case}_flair.nii.gz"),
        slices: String::new(),
        strategy: "proposed".into(),
        source: "BraTS19_CBICA_P001_1".into(),
        distance: "0.1234".into(),
        angle_deg: "21.0000".into(),
        prediction: format!("{case}_prediction.nii.gz"),
        segmentation: format!("{case}_seg.nii.gz"),
    };
    let rows = vec![
        WorkRow {
            item: item(1, "BraTS19_CBICA_P012_1"),
            state: CaseState::Received,
        },
        WorkRow {
            item: item(2, "BraTS19_TCIA01_P003_1"),
            state: CaseState::Rejected(
                "BraTS19_TCIA01_P003_1_seg.nii.gz: shape [240, 240, 150], but the image is [240, 240, 155]"
                    .into(),
            ),
        },
        WorkRow {
            item: item(3, "BraTS19_CBICA_P020_1"),
            state: CaseState::Waiting,
        },
    ];
    app.on_message(Message::Worklist {
        round: 1,
        inbox: "/home/me/sessions/lab/annotate/round-01/inbox".into(),
        rows,
    });
    app.on_message(Message::Idle(Outcome::Waiting {
        round: 1,
        received: 1,
        needed: 3,
    }));
    assert_eq!(app.run, RunState::AwaitingLabels);
    let wide = render(&app, 160, 48);
    assert_shows(
        &wide,
        &[
            "waiting for annotations",
            "Round 1: 1 of 3 annotations in",
            " 1 received BraTS19_CBICA_P012_1",
            " 2 rejected BraTS19_TCIA01_P003_1",
            "   BraTS19_TCIA01_P003_1_seg.nii.gz: shape [240, 240,",
            " 3 waiting  BraTS19_CBICA_P020_1",
            "n look now · p stop waiting",
        ],
    );
    insta::assert_snapshot!("worklist_160x48", wide);
    let small = render(&app, 80, 24);
    assert!(small.contains("3 waiting"), "{small}");
    insta::assert_snapshot!("worklist_80x24", small);
    // n looks at the inbox again now; p stops waiting.
    assert_eq!(app.on_key(key(KeyCode::Char('n'))), Some(Command::Step));
    assert_eq!(app.run, RunState::Running);
    app.on_message(Message::Idle(Outcome::Waiting {
        round: 1,
        received: 1,
        needed: 3,
    }));
    assert_eq!(app.on_key(key(KeyCode::Char('p'))), Some(Command::Pause));
    assert_eq!(app.run, RunState::Paused);
}

/// Labelled by people without a labelled test case: the Dice panel says that evaluation is off
/// instead of drawing empty axes.
#[test]
fn evaluation_off_is_said_where_the_dice_curves_would_be() {
    let mut app = Dashboard::new("scans".into());
    app.on_message(loaded(
        suggestive::session::preset("annotate").unwrap(),
        "CPU",
        24,
    ));
    assert!(!render(&app, 160, 48).contains("Evaluation off"));
    app.on_event(Event::Split {
        repeat: 0,
        pool_cases: 40,
        test_cases: 0,
    });
    let wide = render(&app, 160, 48);
    assert_shows(
        &wide,
        &[
            "Evaluation off",
            "no labelled test case to measure Dice against",
            "repeat 1: 40 cases in the pool, no labelled test case: evaluation off",
        ],
    );
    assert!(render(&app, 80, 24).contains("Evaluation off"));
    app.on_event(Event::Split {
        repeat: 0,
        pool_cases: 31,
        test_cases: 9,
    });
    let wide = render(&app, 160, 48);
    assert!(!wide.contains("Evaluation off"), "{wide}");
    assert!(
        wide.contains("31 cases in the pool, 9 test cases"),
        "{wide}"
    );

    // Opened on a session split without test cases, two rounds picked: the panel says so at
    // once, and the header counts the rounds from the picks.
    let mut state = SessionState::default();
    state.repeats.push(suggestive::session::state::RepeatData {
        train: (0..40).collect(),
        ..Default::default()
    });
    for round in 1..=2 {
        state.picks.push(suggestive::session::state::PickRecord {
            repeat: 0,
            stage: 0,
            arm: Arm::Proposed,
            round,
            picks: Vec::new(),
            fallbacks: 0,
            tumour_picks: None,
            directions: None,
            context_picks: None,
        });
    }
    let mut app = Dashboard::new("scans".into());
    app.on_message(Message::Loaded {
        config: Box::new(suggestive::session::preset("annotate").unwrap()),
        state: Box::new(state),
        views: vec![Vec::new(), Vec::new()],
        device: "CPU".into(),
        steps_total: 24,
    });
    let wide = render(&app, 160, 48);
    assert!(wide.contains("Evaluation off"), "{wide}");
    assert_eq!(app.round_label(), "round 2 of 10");
}
