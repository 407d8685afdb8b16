//! Drawing the dashboard: one function per panel (trippy's style), from the `Dashboard` state.

use ratatui::layout::{Alignment, Constraint, Direction, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::canvas::{Canvas, Line as CLine, Points};
use ratatui::widgets::{
    Axis, Block, Borders, Chart, Clear, Dataset, GraphType, List, ListItem, Paragraph, Tabs, Wrap,
};
use ratatui::Frame;
use ratatui_image::protocol::StatefulProtocol;
use ratatui_image::{Resize, StatefulImage};

use super::app::{Dashboard, RunState, Tab};
use super::theme::Theme;
use crate::session::config::{Arm, Granularity};
use crate::session::report::{budget_range, Curve, FullLine};

/// The rendered preview, kept between frames (encoding an image is the costly part).
#[derive(Default)]
pub struct ImageState {
    pub protocol: Option<StatefulProtocol>,
}

/// A chart line: its arm, its points, and whether it is the mean (else a ± sd line).
type Series = (Arm, Vec<(f64, f64)>, bool);
/// A pick (pool sample) and the labelled sample it came from, if any.
type PickAndSource = (usize, Option<usize>);

pub(super) fn block<'a>(title: &'a str, t: &Theme) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(Style::default().fg(t.border))
        .title(Span::styled(
            format!(" {title} "),
            Style::default().fg(t.accent).add_modifier(Modifier::BOLD),
        ))
}

/// Wide terminals get every panel at once; small ones (80×24) a tab per panel.
pub fn is_wide(area: Rect) -> bool {
    area.width >= 110 && area.height >= 32
}

pub fn draw(f: &mut Frame, app: &Dashboard, t: &Theme, img: &mut ImageState) {
    let area = f.area();
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(2),
            Constraint::Min(0),
            Constraint::Length(1),
        ])
        .split(area);
    header(f, rows[0], app, t);
    footer(f, rows[2], app, t);
    if is_wide(area) {
        let body = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Percentage(40),
                Constraint::Percentage(45),
                Constraint::Percentage(15),
            ])
            .split(rows[1]);
        let top = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(35), Constraint::Percentage(65)])
            .split(body[0]);
        let mid = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(45), Constraint::Percentage(55)])
            .split(body[1]);
        super::progress::progress(f, top[0], app, t);
        dice_chart(f, top[1], app, t);
        scatter(f, mid[0], app, t);
        preview(f, mid[1], app, t, img);
        log(f, body[2], app, t);
    } else {
        let parts = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Length(1), Constraint::Min(0)])
            .split(rows[1]);
        let titles = ["1 overview", "2 latent", "3 preview", "4 log"];
        let sel = match app.tab {
            Tab::Overview => 0,
            Tab::Latent => 1,
            Tab::Preview => 2,
            Tab::Log => 3,
        };
        f.render_widget(
            Tabs::new(titles)
                .select(sel)
                .style(Style::default().fg(t.dim))
                .highlight_style(
                    Style::default()
                        .fg(t.highlight)
                        .add_modifier(Modifier::BOLD),
                ),
            parts[0],
        );
        match app.tab {
            Tab::Overview => {
                // Attached: two lines per unfinished repeat, one per finished one.
                let rows = if app.watching {
                    let lines: usize = app.placements.iter().map(|p| 2 - p.finished as usize).sum();
                    (lines as u16 + 2).clamp(4, 12)
                } else if let (RunState::AwaitingLabels, Some((_, _, list))) =
                    (&app.run, &app.worklist)
                {
                    // A line per case, two more under a refused one, and the inbox's.
                    let rejected = list
                        .iter()
                        .filter(|r| {
                            matches!(r.state, crate::session::annotations::CaseState::Rejected(_))
                        })
                        .count();
                    ((list.len() + 2 * rejected) as u16 + 4).clamp(4, 14)
                } else {
                    7
                };
                let o = Layout::default()
                    .direction(Direction::Vertical)
                    .constraints([Constraint::Length(rows), Constraint::Min(0)])
                    .split(parts[1]);
                super::progress::progress(f, o[0], app, t);
                dice_chart(f, o[1], app, t);
            }
            Tab::Latent => scatter(f, parts[1], app, t),
            Tab::Preview => preview(f, parts[1], app, t, img),
            Tab::Log => log(f, parts[1], app, t),
        }
    }
    if app.comparison {
        super::compare::view(f, area, app, t);
    }
    if app.help {
        help(f, area, t);
    }
}

fn header(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    let setting = app
        .config
        .as_ref()
        .map(|c| format!("{} · {}", c.experiment.scenario, c.experiment.granularity))
        .unwrap_or_default();
    let state_style = match app.run {
        RunState::Failed(_) => Style::default().fg(t.error).add_modifier(Modifier::BOLD),
        RunState::Running | RunState::Watching => Style::default()
            .fg(t.highlight)
            .add_modifier(Modifier::BOLD),
        _ => Style::default().fg(t.text),
    };
    let line = Line::from(vec![
        Span::styled(
            " suggestive ",
            Style::default().fg(t.accent).add_modifier(Modifier::BOLD),
        ),
        Span::styled(
            format!("{} ", app.session),
            Style::default().fg(t.text).add_modifier(Modifier::BOLD),
        ),
        Span::styled(
            format!(
                "· {setting} · {} · {} · ",
                app.round_label(),
                if app.device.is_empty() {
                    "…"
                } else {
                    &app.device
                }
            ),
            Style::default().fg(t.dim),
        ),
        Span::styled(app.run.label().to_string(), state_style),
        Span::styled(
            format!(
                " · step {}/{}",
                app.steps_done.min(app.steps_total),
                app.steps_total
            ),
            Style::default().fg(t.dim),
        ),
    ]);
    let stat = super::compare::header_line(app, t);
    f.render_widget(Paragraph::new(vec![line, stat]), area);
}

fn footer(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    // Only the keys that do something in this state.
    let keys = match app.run {
        RunState::Running => "p pause · ←/→ picks · tab arm · m modality · c compare · ? help",
        RunState::Stopping => "←/→ picks · tab arm · m modality · c compare · ? help",
        RunState::Loading => "? help",
        RunState::Finished => "←/→ picks · tab arm · m modality · d axes · c compare · ? help",
        RunState::Watching if !app.runs_elsewhere() && !app.watch_only => {
            "n/r run it here · ←/→ picks · tab arm · c compare · ? help"
        }
        RunState::Watching => "←/→ picks · tab arm · m modality · c compare · ? help",
        RunState::AwaitingLabels => "n look now · p stop waiting · ←/→ picks · c compare · ? help",
        RunState::Paused | RunState::Failed(_) => {
            "n next round · r run all · ←/→ picks · tab arm · c compare · ? help"
        }
    };
    // q closes the dashboard: back to the browser when it was opened from there.
    let q = if app.from_browser { "q back" } else { "q quit" };
    f.render_widget(
        Paragraph::new(Span::styled(
            format!(" {keys} · {q}"),
            Style::default().fg(t.dim),
        )),
        area,
    );
}

/// The curves of the report (mean over repeats with its 95 % interval once two repeats have a
/// point) and the full-data reference, from the results so far.
pub fn curves(app: &Dashboard) -> (Vec<Curve>, Option<FullLine>) {
    match &app.config {
        Some(cfg) => (app.report.series(cfg), app.report.full_line()),
        None => (Vec::new(), None),
    }
}

fn dice_chart(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    if app.evaluation_off {
        let text = Paragraph::new(vec![
            Line::raw(""),
            Line::styled("Evaluation off", Style::default().fg(t.accent)),
            Line::styled(
                "no labelled test case to measure Dice against",
                Style::default().fg(t.dim),
            ),
        ])
        .alignment(Alignment::Center)
        .wrap(Wrap { trim: true })
        .block(block("Test Dice vs annotation budget", t));
        f.render_widget(text, area);
        return;
    }
    let (curves, full) = curves(app);
    let unit = match app.config.as_ref().map(|c| c.experiment.granularity) {
        Some(Granularity::Image) => "slices",
        _ => "patients",
    };
    let (x0, x1) = budget_range(&curves);
    // Owned point lists: the mean line, and the 95 % interval as dotted lines.
    let mut series: Vec<Series> = Vec::new();
    if let Some(full) = full {
        series.push((Arm::Full, vec![(x0, full.mean), (x1, full.mean)], true));
    }
    for (arm, pts) in &curves {
        series.push((*arm, pts.iter().map(|p| (p.budget, p.mean)).collect(), true));
        if pts.iter().all(|p| p.band.is_some()) {
            for side in [0, 1] {
                let line = pts
                    .iter()
                    .map(|p| (p.budget, p.band.map_or(p.mean, |b| b[side]).clamp(0.0, 1.0)))
                    .collect();
                series.push((*arm, line, false));
            }
        }
    }
    // An arm that picks in a latent space too weak for it says so in the legend.
    let weak = !app.weak_manifolds().is_empty();
    let names: Vec<String> = series
        .iter()
        .map(|(arm, _, _)| match weak && arm.uses_latent_space() {
            true => format!("{} (weak latent space)", arm.name()),
            false => arm.name().to_string(),
        })
        .collect();
    let datasets: Vec<Dataset> = series
        .iter()
        .zip(&names)
        .map(|((arm, pts, main), name)| {
            let d = Dataset::default()
                .data(pts)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(t.arm(*arm)));
            if *main {
                d.name(name.as_str()).marker(Marker::Braille)
            } else {
                d.marker(Marker::Dot)
            }
        })
        .collect();
    let chart = Chart::new(datasets)
        .block(block("Test Dice vs annotation budget", t))
        .x_axis(
            Axis::default()
                .title(Span::styled(
                    format!("annotated {unit}"),
                    Style::default().fg(t.dim),
                ))
                .bounds([x0, x1])
                .labels(vec![
                    Span::raw(format!("{x0:.0}")),
                    Span::raw(format!("{x1:.0}")),
                ])
                .style(Style::default().fg(t.dim)),
        )
        .y_axis(
            Axis::default()
                .title(Span::styled("Dice", Style::default().fg(t.dim)))
                .bounds([0.0, 1.0])
                .labels(vec![Span::raw("0"), Span::raw("0.5"), Span::raw("1")])
                .style(Style::default().fg(t.dim)),
        )
        .legend_position(Some(ratatui::widgets::LegendPosition::BottomRight))
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)));
    f.render_widget(chart, area);
}

fn scatter(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    let title = format!(
        "Latent space · {}",
        app.projection
            .as_ref()
            .map(|p| p.label())
            .unwrap_or_else(|| "PCA".into())
    );
    let b = block(&title, t);
    let (Some((repeat, latents)), Some(proj)) = (&app.latents, &app.projection) else {
        f.render_widget(
            Paragraph::new(Span::styled(
                "latents appear once the VAE is trained",
                Style::default().fg(t.dim),
            ))
            .block(b),
            area,
        );
        return;
    };
    let pts: Vec<(f64, f64)> = latents.iter().map(|z| proj.project(z)).collect();
    let (mut xmin, mut xmax, mut ymin, mut ymax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN, f64::MAX, f64::MIN), |a, p| {
            (a.0.min(p.0), a.1.max(p.0), a.2.min(p.1), a.3.max(p.1))
        });
    if pts.is_empty() {
        (xmin, xmax, ymin, ymax) = (-1.0, 1.0, -1.0, 1.0);
    }
    let (cx, cy) = (
        (xmin + xmax) / 2.0 + app.pan.0 * (xmax - xmin),
        (ymin + ymax) / 2.0 + app.pan.1 * (ymax - ymin),
    );
    let (hw, hh) = (
        ((xmax - xmin) / 2.0).max(1e-9) * 1.05 / app.zoom,
        ((ymax - ymin) / 2.0).max(1e-9) * 1.05 / app.zoom,
    );
    let labelled = &app.initial;
    let picks: Vec<(Arm, Vec<PickAndSource>)> = app
        .arms()
        .into_iter()
        .map(|a| {
            (
                a,
                app.picks
                    .iter()
                    .filter(|(r, _)| r.arm == a && r.repeat == *repeat)
                    .flat_map(|(_, v)| v.iter().map(|p| (p.sample, p.source)))
                    .collect(),
            )
        })
        .collect();
    let selected = app
        .current_picks()
        .and_then(|(r, v)| v.get(app.pick_index).map(|p| (r.arm, p.clone())));
    let cone = app
        .config
        .as_ref()
        .map(|c| c.selection.cone_degrees)
        .unwrap_or(45.0)
        .to_radians();
    let canvas = Canvas::default()
        .block(b)
        .marker(Marker::Braille)
        .x_bounds([cx - hw, cx + hw])
        .y_bounds([cy - hh, cy + hh])
        .paint(|ctx| {
            ctx.draw(&Points {
                coords: &pts,
                color: t.pool,
            });
            ctx.layer();
            let lab: Vec<(f64, f64)> = labelled
                .iter()
                .filter_map(|&i| pts.get(i).copied())
                .collect();
            ctx.draw(&Points {
                coords: &lab,
                color: t.labelled,
            });
            for (arm, ps) in &picks {
                let c: Vec<(f64, f64)> = ps
                    .iter()
                    .filter_map(|(i, _)| pts.get(*i).copied())
                    .collect();
                ctx.draw(&Points {
                    coords: &c,
                    color: t.arm(*arm),
                });
            }
            if let Some((arm, p)) = &selected {
                if let (Some(&to), Some(from)) = (
                    pts.get(p.sample),
                    p.source.and_then(|s| pts.get(s).copied()),
                ) {
                    // The gradient direction itself is tiny (α = 1e-4): draw the line from the
                    // source to the pick and the search cone's edges around it.
                    ctx.draw(&CLine {
                        x1: from.0,
                        y1: from.1,
                        x2: to.0,
                        y2: to.1,
                        color: t.arm(*arm),
                    });
                    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
                    for s in [-1.0, 1.0] {
                        let (sn, cs) = (s * cone).sin_cos();
                        ctx.draw(&CLine {
                            x1: from.0,
                            y1: from.1,
                            x2: from.0 + (dx * cs - dy * sn) * 1.5,
                            y2: from.1 + (dx * sn + dy * cs) * 1.5,
                            color: t.dim,
                        });
                    }
                }
                if let Some(&to) = pts.get(p.sample) {
                    ctx.print(
                        to.0,
                        to.1,
                        Span::styled("◆", Style::default().fg(t.highlight)),
                    );
                }
            }
        });
    f.render_widget(canvas, area);
}

fn preview(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme, img: &mut ImageState) {
    let modality = app
        .config
        .as_ref()
        .and_then(|c| c.dataset.modalities.get(app.channel))
        .map(|m| m.to_string())
        .unwrap_or_default();
    let title = match (app.selected_arm(), app.current_picks()) {
        (Some(arm), Some((rec, v))) if !v.is_empty() => format!(
            "{arm} pick {}/{} · round {} · {modality}",
            app.pick_index + 1,
            v.len(),
            rec.round
        ),
        (Some(arm), _) => format!("{arm}: no picks yet · {modality}"),
        _ => "Preview".into(),
    };
    let b = block(&title, t);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let Some((_, v)) = app.current_picks() else {
        return;
    };
    let Some(p) = v.get(app.pick_index) else {
        return;
    };
    let mut info = vec![Span::styled(
        p.patient.clone(),
        Style::default().fg(t.text).add_modifier(Modifier::BOLD),
    )];
    if let Some(s) = p.slice {
        info.push(Span::styled(
            format!(" slice {s}"),
            Style::default().fg(t.text),
        ));
    }
    if let Some(d) = p.distance {
        info.push(Span::styled(
            format!(" · dist {d:.3}"),
            Style::default().fg(t.dim),
        ));
    }
    if let Some(a) = p.angle_deg {
        info.push(Span::styled(
            format!(" · {a:.0}°"),
            Style::default().fg(t.dim),
        ));
    }
    if p.fallback {
        info.push(Span::styled(
            " · fallback",
            Style::default().fg(t.highlight),
        ));
    }
    if let Some(d) = p.dice {
        info.push(Span::styled(
            format!(" · Dice {d:.3}"),
            Style::default().fg(t.dim),
        ));
    }
    if inner.height > 0 {
        f.render_widget(
            Paragraph::new(Line::from(info)),
            Rect { height: 1, ..inner },
        );
    }
    let caption = app
        .preview
        .as_ref()
        .map(|(_, _, c)| c.clone())
        .unwrap_or_default();
    // Labelled by people, the red outline is the annotator's segmentation (once received).
    let human = app
        .config
        .as_ref()
        .is_some_and(|c| c.experiment.labels == crate::session::config::Labels::Human);
    let truth = if human {
        " annotation · "
    } else {
        " truth · "
    };
    let legend = Line::from(vec![
        Span::styled("red", Style::default().fg(t.error)),
        Span::styled(truth, Style::default().fg(t.dim)),
        Span::styled("cyan", Style::default().fg(t.accent)),
        Span::styled(
            format!(" prediction  {caption}"),
            Style::default().fg(t.dim),
        ),
    ]);
    if inner.height >= 2 {
        f.render_widget(
            Paragraph::new(legend),
            Rect {
                y: inner.y + inner.height - 1,
                height: 1,
                ..inner
            },
        );
    }
    if inner.height > 3 {
        let area = Rect {
            y: inner.y + 1,
            height: inner.height - 2,
            ..inner
        };
        if let Some(proto) = img.protocol.as_mut() {
            // Scale: slices are small (48–256 px); fill the panel, nearest-neighbour keeps pixels crisp.
            f.render_stateful_widget(
                StatefulImage::default().resize(Resize::Scale(None)),
                area,
                proto,
            );
        } else {
            f.render_widget(
                Paragraph::new(Span::styled("rendering…", Style::default().fg(t.dim))),
                area,
            );
        }
    }
}

fn log(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    let h = area.height.saturating_sub(2) as usize;
    let items: Vec<ListItem> = app
        .log
        .iter()
        .rev()
        .take(h)
        .rev()
        .map(|(err, l)| {
            ListItem::new(Span::styled(
                l.clone(),
                Style::default().fg(if *err { t.error } else { t.text }),
            ))
        })
        .collect();
    f.render_widget(List::new(items).block(block("Events", t)), area);
}

pub const KEYS: [(&str, &str); 17] = [
    ("n, space", "run the next round, then pause"),
    ("r", "run to the end"),
    (
        "p",
        "pause at the next safe point (the end of the current batch)",
    ),
    ("←/→, h/l", "previous / next pick"),
    ("tab, a / shift-tab", "next / previous arm"),
    ("m", "next modality in the preview"),
    ("d", "latent axes: PCA, then pairs of dimensions"),
    (
        "c",
        "comparison: the selected arm against random, by budget",
    ),
    ("+ / -", "zoom the latent view in / out"),
    ("H J K L", "pan the latent view"),
    ("0", "reset zoom and pan"),
    (
        "1 2 3 4",
        "overview / latent / preview / log (small terminals)",
    ),
    ("?", "this help (any key closes it)"),
    ("q, esc", "close: back to the browser, or quit"),
    ("browser: ↑/↓, j/k", "choose a session"),
    (
        "browser: enter / c / x",
        "open / create / delete (asks first)",
    ),
    ("ctrl-c", "quit (training stops at the next safe point)"),
];

/// A `w` × `h` box in the middle of `area` (shrunk to fit).
pub(super) fn centred(area: Rect, w: u16, h: u16) -> Rect {
    let (w, h) = (w.min(area.width), h.min(area.height));
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn help(f: &mut Frame, area: Rect, t: &Theme) {
    let r = centred(area, 72, KEYS.len() as u16 + 2);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:>22}  "), Style::default().fg(t.highlight)),
                Span::styled(*v, Style::default().fg(t.text)),
            ])
        })
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).block(block("Keys", t)), r);
}
