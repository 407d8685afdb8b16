//! The dashboard's top-left panel: the work in progress (step, epoch, loss, the VAE's validation
//! curve, a progress gauge), or where each repeat runs when attached, or the worklist of a round
//! waiting for annotations.

use std::time::Instant;

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Gauge, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{Dashboard, RunState};
use super::theme::Theme;
use super::ui::block;

/// Attached: each repeat, where it runs, and what it is doing.
fn repeats_panel(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    let b = block("Repeats (running elsewhere)", t);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut lines = Vec::new();
    if app.placements.is_empty() {
        lines.push(Line::from(Span::styled(
            "asking where the repeats run…",
            Style::default().fg(t.dim),
        )));
    }
    for p in &app.placements {
        let (word, style) = if p.finished {
            ("finished", Style::default().fg(t.dim))
        } else if p.pid.is_some()
            || p.slurm
                .as_ref()
                .is_some_and(|j| j.state.as_deref() == Some("RUNNING"))
        {
            (
                "running ",
                Style::default()
                    .fg(t.highlight)
                    .add_modifier(Modifier::BOLD),
            )
        } else if p.is_live() {
            ("queued  ", Style::default().fg(t.text))
        } else {
            ("idle    ", Style::default().fg(t.dim))
        };
        let mut head = vec![
            Span::styled(
                format!("{:>2} ", p.repeat + 1),
                Style::default().fg(t.accent),
            ),
            Span::styled(word, style),
        ];
        if !p.finished {
            head.push(Span::styled(
                format!(" {}", p.describe()),
                Style::default().fg(t.text),
            ));
        }
        lines.push(Line::from(head));
        let activity = app.activity.get(p.repeat);
        if !p.finished {
            if let Some(a) = activity {
                let ago = a
                    .last_event
                    .map(|at| format!("{}s ago · ", (now - at).max(0.0).round() as u64))
                    .unwrap_or_default();
                // The line is under its repeat's number: the step need not say it again.
                let what = a.describe();
                let what = what
                    .strip_prefix(&format!("repeat {}", p.repeat + 1))
                    .map_or(what.as_str(), |w| w.trim_start_matches([':', ',', ' ']));
                lines.push(Line::from(Span::styled(
                    format!("   {ago}{what}"),
                    Style::default().fg(t.dim),
                )));
            }
        }
    }
    f.render_widget(Paragraph::new(lines), inner);
}

/// Labelled by people: the round's worklist, each case with its state.
fn worklist_panel(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    use crate::session::annotations::CaseState;
    let Some((round, inbox, rows)) = &app.worklist else {
        return;
    };
    let received = rows
        .iter()
        .filter(|r| r.state == CaseState::Received)
        .count();
    let title = format!("Round {round}: {received} of {} annotations in", rows.len());
    let b = block(&title, t);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let mut lines = vec![Line::from(Span::styled(
        format!("save into {}", inbox.display()),
        Style::default().fg(t.dim),
    ))];
    for r in rows {
        let (word, style) = match &r.state {
            CaseState::Received => ("received", Style::default().fg(t.highlight)),
            CaseState::Waiting => ("waiting ", Style::default().fg(t.text)),
            CaseState::Rejected(_) => ("rejected", Style::default().fg(t.error)),
        };
        let mut spans = vec![
            Span::styled(
                format!("{:>2} ", r.item.order),
                Style::default().fg(t.accent),
            ),
            Span::styled(word, style.add_modifier(Modifier::BOLD)),
            Span::styled(format!(" {}", r.item.case), Style::default().fg(t.text)),
        ];
        if !r.item.slices.is_empty() {
            spans.push(Span::styled(
                format!(" z {}", r.item.slices),
                Style::default().fg(t.dim),
            ));
        }
        lines.push(Line::from(spans));
        if let CaseState::Rejected(why) = &r.state {
            lines.push(Line::from(Span::styled(
                format!("   {why}"),
                Style::default().fg(t.error),
            )));
        }
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

/// The VAE's learning curve so far: the share of its validation slices' variance explained per
/// epoch as a bar of block characters (the last 24 epochs, scaled 0 to 100 %), the latest
/// share and the best epoch: `▁▃▅▆▇ 45 % · best epoch 5`.
pub fn validation_line(curve: &[crate::engine::manifold::VaeEpoch]) -> Option<String> {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let last = curve.last()?;
    let bars: String = curve[curve.len().saturating_sub(24)..]
        .iter()
        .map(|e| {
            let v = e.variance_explained;
            let level = if v.is_finite() {
                v.clamp(0.0, 1.0) * 7.0
            } else {
                0.0
            };
            BARS[level.round() as usize]
        })
        .collect();
    let best = crate::engine::manifold::best_epoch(curve)
        .map_or(String::new(), |b| format!(" · best epoch {b}"));
    Some(format!(
        "{bars} {:.0} %{best}",
        100.0 * last.variance_explained
    ))
}

pub(super) fn progress(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    if app.watching {
        return repeats_panel(f, area, app, t);
    }
    if app.run == RunState::AwaitingLabels && app.worklist.is_some() {
        return worklist_panel(f, area, app, t);
    }
    let b = block("Work in progress", t);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let mut lines = Vec::new();
    let ratio = match &app.step {
        Some(s) if app.run == RunState::Running || app.run == RunState::Stopping => {
            let arm = s
                .arm
                .map(|a| a.name().to_string())
                .unwrap_or_else(|| "shared".into());
            lines.push(Line::from(vec![
                Span::styled("arm   ", Style::default().fg(t.dim)),
                Span::styled(
                    arm,
                    Style::default().fg(s.arm.map(|a| t.arm(a)).unwrap_or(t.text)),
                ),
            ]));
            lines.push(Line::from(vec![
                Span::styled("phase ", Style::default().fg(t.dim)),
                Span::styled(s.phase.to_string(), Style::default().fg(t.text)),
            ]));
            let loss = s
                .loss
                .map(|l| format!("{l:.4}"))
                .unwrap_or_else(|| "–".into());
            lines.push(Line::from(vec![
                Span::styled("epoch ", Style::default().fg(t.dim)),
                Span::styled(
                    format!("{}/{}  loss {loss}", s.epoch, s.epochs),
                    Style::default().fg(t.text),
                ),
            ]));
            if let Some(line) = validation_line(&s.validation) {
                lines.push(Line::from(vec![
                    Span::styled("valid ", Style::default().fg(t.dim)),
                    Span::styled(line, Style::default().fg(t.text)),
                ]));
            }
            lines.push(Line::from(Span::styled(
                s.description.clone(),
                Style::default().fg(t.dim),
            )));
            if s.epochs > 0 {
                s.epoch as f64 / s.epochs as f64
            } else {
                0.0
            }
        }
        _ => {
            let msg = match &app.run {
                RunState::Loading => "loading the session and its data…".to_string(),
                RunState::Finished => "all steps done. r: nothing left to run; q: quit".to_string(),
                RunState::Failed(e) => format!("the worker stopped: {e}"),
                _ => "paused. n: run the next round · r: run to the end".to_string(),
            };
            let style = if matches!(app.run, RunState::Failed(_)) {
                Style::default().fg(t.error)
            } else {
                Style::default().fg(t.text)
            };
            lines.push(Line::from(Span::styled(msg, style)));
            if app.steps_total > 0 {
                app.steps_done as f64 / app.steps_total as f64
            } else {
                0.0
            }
        }
    };
    let h = inner.height.saturating_sub(1);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }),
        Rect { height: h, ..inner },
    );
    if inner.height > 0 {
        let eta = app
            .step
            .as_ref()
            .and_then(|s| s.eta(Instant::now()))
            .map(|d| format!(" · eta {}s", d.as_secs()))
            .unwrap_or_default();
        let label = format!("{:.0}%{eta}", ratio * 100.0);
        let g = Gauge::default()
            .gauge_style(Style::default().fg(t.gauge))
            .ratio(ratio.clamp(0.0, 1.0))
            .label(label);
        f.render_widget(
            g,
            Rect {
                y: inner.y + inner.height - 1,
                height: 1,
                ..inner
            },
        );
    }
}
