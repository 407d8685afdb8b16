//! The session browser: every session in the sessions folder with its state and latest Dice per
//! arm; open, create from a preset, delete (after a confirmation).

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::theme::Theme;
use super::ui::centred;
use crate::session::{self, Session, SessionFiles, Status};

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dir: PathBuf,
    pub dataset: String,
    pub setting: String,
    pub progress: String,
    pub last_dice: String,
    /// Where the session stands; `None`: it cannot be read (the reason is in `last_dice`).
    pub state: Option<Status>,
}

/// Reads the sessions folder (sorted by name). A session that cannot be read is listed as broken.
pub fn scan(dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        // Hidden folders are sessions being created (Session::create's temporary folder).
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter(|p| SessionFiles::is_session(p))
        .collect();
    dirs.sort();
    for d in dirs {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match Session::open(&d) {
            Ok(s) => {
                let total = session::plan::plan(&s.config).len();
                let (state, _) = s.status();
                let mut last = Vec::new();
                for arm in &s.config.experiment.arms {
                    if let Some(r) = s.state.results.iter().rev().find(|r| r.arm == *arm) {
                        last.push(format!("{} {:.2}", &arm.name()[..1], r.dice_mean));
                    }
                }
                let ds = s
                    .config
                    .dataset
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| s.config.dataset.path.display().to_string());
                out.push(Entry {
                    name,
                    dir: d.clone(),
                    dataset: ds,
                    setting: format!(
                        "{}/{}",
                        s.config.experiment.scenario, s.config.experiment.granularity
                    ),
                    progress: format!("{}/{}", s.state.done, total),
                    last_dice: last.join(" "),
                    state: Some(state),
                });
            }
            Err(e) => out.push(Entry {
                name,
                dir: d.clone(),
                dataset: String::new(),
                setting: String::new(),
                progress: String::new(),
                // The reason relative to the session folder: "state.json: damaged …".
                last_dice: format!("{e:#}").replace(&format!("{}/", d.display()), ""),
                state: None,
            }),
        }
    }
    out
}

/// Why `e` must not be deleted now: a live process holds its lock (it is being run).
fn running_elsewhere(e: &Entry) -> Option<String> {
    SessionFiles::new(&e.dir).live_holder().map(|pid| {
        format!(
            "{} is being run by process {pid}: stop it first, then delete",
            e.name
        )
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Form {
    pub preset: usize,
    pub dataset: String,
    pub name: String,
    /// 0 preset, 1 dataset, 2 name.
    pub field: usize,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    List,
    Create(Form),
    ConfirmDelete(usize),
}

pub enum Action {
    Open(PathBuf),
    Quit,
}

pub struct Browser {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
    pub selected: usize,
    pub mode: Mode,
    pub message: Option<String>,
}

impl Browser {
    pub fn new(dir: PathBuf) -> Browser {
        let entries = scan(&dir);
        Browser {
            dir,
            entries,
            selected: 0,
            mode: Mode::List,
            message: None,
        }
    }

    pub fn refresh(&mut self) {
        self.entries = scan(&self.dir);
        self.selected = self.selected.min(self.entries.len().saturating_sub(1));
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) {
            // Ctrl-C quits from anywhere; other control chords mean nothing here (and are never
            // typed into the form as their letter).
            return (key.code == KeyCode::Char('c')).then_some(Action::Quit);
        }
        match &mut self.mode {
            Mode::List => match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Some(Action::Quit),
                KeyCode::Down | KeyCode::Char('j') => {
                    self.selected = (self.selected + 1).min(self.entries.len().saturating_sub(1))
                }
                KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
                KeyCode::Enter | KeyCode::Char('o') => {
                    if let Some(e) = self.entries.get(self.selected) {
                        if e.state.is_none() {
                            self.message =
                                Some(format!("{} cannot be opened: {}", e.name, e.last_dice));
                        } else {
                            return Some(Action::Open(e.dir.clone()));
                        }
                    }
                }
                KeyCode::Char('c') => {
                    self.mode = Mode::Create(Form {
                        preset: 0,
                        dataset: "demo".into(),
                        name: String::new(),
                        field: 2,
                        message: None,
                    })
                }
                KeyCode::Char('x') | KeyCode::Delete if !self.entries.is_empty() => {
                    match self.entries.get(self.selected).and_then(running_elsewhere) {
                        Some(refusal) => self.message = Some(refusal),
                        None => self.mode = Mode::ConfirmDelete(self.selected),
                    }
                }
                _ => {}
            },
            Mode::ConfirmDelete(i) => {
                let i = *i;
                if key.code == KeyCode::Char('y') {
                    if let Some(e) = self.entries.get(i) {
                        // Asked again: a run may have started while the question was up.
                        self.message = Some(match running_elsewhere(e) {
                            Some(refusal) => refusal,
                            None => match std::fs::remove_dir_all(&e.dir) {
                                Ok(()) => format!("deleted {}", e.name),
                                Err(err) => format!("cannot delete {}: {err}", e.name),
                            },
                        });
                    }
                    self.refresh();
                } else {
                    self.message = Some("kept".into());
                }
                self.mode = Mode::List;
            }
            Mode::Create(form) => match key.code {
                KeyCode::Esc => self.mode = Mode::List,
                KeyCode::Tab | KeyCode::Down => form.field = (form.field + 1) % 3,
                KeyCode::BackTab | KeyCode::Up => form.field = (form.field + 2) % 3,
                KeyCode::Left if form.field == 0 => {
                    form.preset =
                        (form.preset + session::PRESETS.len() - 1) % session::PRESETS.len()
                }
                KeyCode::Right if form.field == 0 => {
                    form.preset = (form.preset + 1) % session::PRESETS.len()
                }
                KeyCode::Backspace => {
                    match form.field {
                        1 => form.dataset.pop(),
                        2 => form.name.pop(),
                        _ => None,
                    };
                }
                KeyCode::Char(c) => match form.field {
                    1 => form.dataset.push(c),
                    2 => form.name.push(c),
                    _ => {}
                },
                KeyCode::Enter => {
                    let form = form.clone();
                    match self.create(&form) {
                        Ok(dir) => {
                            self.mode = Mode::List;
                            self.refresh();
                            self.selected =
                                self.entries.iter().position(|e| e.dir == dir).unwrap_or(0);
                            self.message = Some(format!("created {}; enter opens it", form.name));
                        }
                        Err(e) => {
                            if let Mode::Create(f) = &mut self.mode {
                                f.message = Some(format!("{e:#}"));
                            }
                        }
                    }
                }
                _ => {}
            },
        }
        None
    }

    fn create(&self, form: &Form) -> anyhow::Result<PathBuf> {
        let name = form.name.trim();
        if name.is_empty() || name.contains('/') {
            anyhow::bail!("give the session a name (no '/')");
        }
        let ds = form.dataset.trim();
        // `demo` is the embedded phantom, as in presets; anything else is a folder.
        let folder = (ds != "demo").then(|| Path::new(ds));
        let dir = self.dir.join(name);
        session::NewSession {
            preset: session::PRESETS[form.preset].0,
            sets: &[],
            dataset: folder,
        }
        .create(&dir)?;
        Ok(dir)
    }

    pub fn draw(&self, f: &mut Frame, t: &Theme) {
        let area = f.area();
        let rows = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Length(1),
                Constraint::Min(0),
                Constraint::Length(1),
            ])
            .split(area);
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled(
                    " suggestive ",
                    Style::default().fg(t.accent).add_modifier(Modifier::BOLD),
                ),
                Span::styled(
                    format!("sessions in {}", self.dir.display()),
                    Style::default().fg(t.dim),
                ),
            ])),
            rows[0],
        );
        let header = Row::new(
            [
                "session",
                "dataset",
                "setting",
                "steps",
                "last Dice",
                "state",
            ]
            .map(|h| {
                Cell::from(Span::styled(
                    h,
                    Style::default().fg(t.dim).add_modifier(Modifier::BOLD),
                ))
            }),
        );
        let body: Vec<Row> = self
            .entries
            .iter()
            .map(|e| {
                let state_style = match e.state {
                    None => Style::default().fg(t.error),
                    Some(Status::Running) => Style::default().fg(t.highlight),
                    Some(_) => Style::default().fg(t.text),
                };
                let state = e.state.map_or("broken".to_string(), |s| s.to_string());
                Row::new(vec![
                    Cell::from(e.name.clone()),
                    Cell::from(e.dataset.clone()),
                    Cell::from(e.setting.clone()),
                    Cell::from(e.progress.clone()),
                    Cell::from(e.last_dice.clone()),
                    Cell::from(Span::styled(state, state_style)),
                ])
                .style(Style::default().fg(t.text))
            })
            .collect();
        let widths = [
            Constraint::Percentage(18),
            Constraint::Percentage(16),
            Constraint::Percentage(18),
            Constraint::Length(7),
            Constraint::Percentage(26),
            Constraint::Length(9),
        ];
        let table = Table::new(body, widths)
            .header(header)
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .border_style(Style::default().fg(t.border))
                    .title(Span::styled(" Sessions ", Style::default().fg(t.accent))),
            )
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(if self.entries.is_empty() {
            None
        } else {
            Some(self.selected)
        });
        f.render_stateful_widget(table, rows[1], &mut state);
        // Inside the table's borders, below its header: only where there is such a row.
        if self.entries.is_empty() && rows[1].height >= 4 {
            let r = Rect {
                x: rows[1].x + 2,
                y: rows[1].y + 2,
                width: rows[1].width.saturating_sub(4),
                height: 1,
            };
            f.render_widget(
                Paragraph::new(Span::styled(
                    "no sessions yet: c creates one (the demo preset needs no data)",
                    Style::default().fg(t.dim),
                )),
                r,
            );
        }
        let foot = self
            .message
            .clone()
            .unwrap_or_else(|| "enter open · c create · x delete · ↑/↓ choose · q quit".into());
        f.render_widget(
            Paragraph::new(Span::styled(format!(" {foot}"), Style::default().fg(t.dim))),
            rows[2],
        );
        match &self.mode {
            Mode::Create(form) => draw_form(f, area, form, t),
            Mode::ConfirmDelete(i) => {
                let name = self
                    .entries
                    .get(*i)
                    .map(|e| e.name.clone())
                    .unwrap_or_default();
                let r = centred(area, 50, 3);
                f.render_widget(Clear, r);
                f.render_widget(
                    Paragraph::new(Span::styled(
                        format!("delete session {name} and all its files? y / n"),
                        Style::default().fg(t.error),
                    ))
                    .block(
                        Block::default()
                            .borders(Borders::ALL)
                            .border_style(Style::default().fg(t.error)),
                    ),
                    r,
                );
            }
            Mode::List => {}
        }
    }
}

fn draw_form(f: &mut Frame, area: Rect, form: &Form, t: &Theme) {
    let r = centred(area, 64, 8);
    f.render_widget(Clear, r);
    let field = |i: usize, label: &str, value: String| {
        let style = if form.field == i {
            Style::default()
                .fg(t.highlight)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().fg(t.text)
        };
        Line::from(vec![
            Span::styled(format!("{label:>9}: "), Style::default().fg(t.dim)),
            Span::styled(value, style),
        ])
    };
    let mut lines = vec![
        field(
            0,
            "preset",
            format!("◀ {} ▶", session::PRESETS[form.preset].0),
        ),
        field(
            1,
            "dataset",
            format!("{}{}", form.dataset, if form.field == 1 { "▏" } else { "" }),
        ),
        field(
            2,
            "name",
            format!("{}{}", form.name, if form.field == 2 { "▏" } else { "" }),
        ),
        Line::from(Span::styled(
            "tab next field · ←/→ preset · enter create · esc cancel",
            Style::default().fg(t.dim),
        )),
    ];
    if let Some(m) = &form.message {
        lines.push(Line::from(Span::styled(
            m.clone(),
            Style::default().fg(t.error),
        )));
    }
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(Style::default().fg(t.border))
                .title(" New session "),
        ),
        r,
    );
}
