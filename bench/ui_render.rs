//! Frame render time of the dashboard under load: 40,000 latent points, 3 arms × 10 repeats ×
//! 5 budgets of curves, a full event log; rendered through crossterm into a buffer (the diff
//! and the escape codes included, the terminal's own drawing excluded). Prints one JSON line:
//! median and p99 over the timed frames, after warm-up.

use std::time::Instant;

use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};
use suggestive::session::config::Arm;
use suggestive::session::events::{Event, Phase, PickView};
use suggestive::session::state::SessionState;
use suggestive::tui::app::{Dashboard, RunState};
use suggestive::tui::theme::Theme;
use suggestive::tui::ui::{self, ImageState};
use suggestive::tui::worker::{Message, PreviewReply};

fn loaded_dashboard(points: usize) -> Dashboard {
    let mut app = Dashboard::new("bench".into());
    let mut cfg = suggestive::session::preset("demo").unwrap();
    cfg.experiment.repeats = 10;
    app.on_message(Message::Loaded {
        config: Box::new(cfg),
        state: Box::new(SessionState::default()),
        views: Vec::new(),
        device: "CPU".into(),
        steps_total: 400,
    });
    for repeat in 0..10 {
        for (i, arm) in [Arm::Random, Arm::Proposed, Arm::Oracle]
            .into_iter()
            .enumerate()
        {
            for round in 0..5 {
                let picks = (0..10)
                    .map(|k| PickView {
                        sample: (repeat * 997 + round * 131 + k * 17 + i) % points,
                        source: Some(k),
                        patient: format!("BraTS19_CBICA_{k:03}_1"),
                        slice: Some(k),
                        distance: Some(0.5),
                        angle_deg: Some(20.0),
                        fallback: false,
                        dice: None,
                    })
                    .collect();
                if round > 0 {
                    app.on_event(Event::PicksMade {
                        repeat,
                        stage: 0,
                        arm,
                        round,
                        picks,
                        fallbacks: 1,
                        tumour_picks: Some(9),
                    });
                }
                let d = 0.5 + 0.07 * round as f64 + 0.01 * i as f64 + 0.003 * repeat as f64;
                app.on_event(Event::Evaluated {
                    repeat,
                    stage: 0,
                    arm,
                    round,
                    annotated: 10 * (round + 1),
                    viewed: 30 * (round + 1),
                    dice_mean: d,
                    dice_sd: 0.05,
                    collapsed: false,
                });
            }
        }
    }
    let latents: Vec<Vec<f64>> = (0..points)
        .map(|i| {
            let t = i as f64 * 0.001;
            vec![
                (t * 7.0).sin() * t,
                (t * 5.0).cos() * t,
                (i % 97) as f64 * 0.01,
                (i % 13) as f64 * 0.1,
                0.0,
            ]
        })
        .collect();
    app.on_preview(PreviewReply::Latents {
        repeat: 9,
        latents,
        initial: (0..500).collect(),
    });
    app.arm_index = 1;
    app.run = RunState::Running;
    app.on_event(Event::StepStarted {
        index: 200,
        total: 400,
        phase: Phase::Training,
        arm: Some(Arm::Oracle),
        description: "repeat 10: oracle training, round 4".into(),
    });
    app
}

/// Where the escape codes go: counted, then dropped.
struct Counter(usize);
impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {
    let points = 40_000;
    let (w, h) = (160, 48);
    let mut app = loaded_dashboard(points);
    let theme = Theme::default_theme(true);
    let backend = CrosstermBackend::new(Counter(0));
    let mut term = Terminal::with_options(
        backend,
        TerminalOptions {
            viewport: Viewport::Fixed(Rect::new(0, 0, w, h)),
        },
    )
    .unwrap();
    let mut img = ImageState::default();
    let mut times = Vec::new();
    for frame in 0..330 {
        // Something changes every frame, as during training: the epoch and the loss.
        app.on_event(Event::EpochDone {
            index: 200,
            phase: Phase::Training,
            arm: Some(Arm::Oracle),
            epoch: frame % 30 + 1,
            epochs: 30,
            loss: 1.0 / (frame + 1) as f64,
            checkpoint_s: 0.0,
            validation: None,
        });
        let t = Instant::now();
        term.draw(|f| ui::draw(f, &app, &theme, &mut img)).unwrap();
        let dt = t.elapsed().as_secs_f64() * 1e3;
        if frame >= 30 {
            times.push(dt);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p99 = times[(times.len() as f64 * 0.99) as usize - 1];
    println!("{{\"frames\": {}, \"points\": {points}, \"curves\": \"3 arms x 10 repeats x 5 budgets\", \"size\": \"{w}x{h}\", \"median_ms\": {median:.3}, \"p99_ms\": {p99:.3}}}", times.len());
}
