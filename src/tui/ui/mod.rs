//! Rendering: one function per panel, each reading the [`App`] and drawing into the frame. Nothing
//! here does I/O; pictures are encoded by [`ImagePanes`] when their image or area changes.

mod datasets;
mod training;
mod translate;

use super::app::{App, Screen};
use super::datasets::CreateStatus;
use super::preview::ImagePanes;
use super::runs::RunEntry;
use super::training::TrainingView;
use super::translate::ModelState;
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Clear, ListItem, Paragraph, Tabs, Wrap},
    Frame,
};

/// Every key, by screen: the help overlay shows this table.
pub const KEYS: [(&str, &[(&str, &str)]); 4] = [
    (
        "Everywhere",
        &[
            ("Tab / Shift-Tab, 1 2 3", "switch screen (Datasets, Training, Translate)"),
            ("↑ ↓ or j k, PgUp PgDn, Home End", "move in lists"),
            ("Enter", "select / edit / confirm"),
            ("Esc", "back, cancel, close"),
            ("?", "this help"),
            ("q, Ctrl-C", "quit (a running training is stopped and saved first; Ctrl-C twice quits at once)"),
        ],
    ),
    (
        "Datasets",
        &[
            ("Enter", "browse the selected dataset's images"),
            ("← → or h l", "previous / next folder (trainA, testA, trainB, testB)"),
            ("n", "new dataset: grey↔colour from a photo folder, or two folders"),
            ("Tab (in a folder field)", "complete the folder name"),
            ("← → / Space (in the form)", "change a choice"),
            ("r", "rescan the datasets folders"),
        ],
    ),
    (
        "Training",
        &[
            ("← → or h l", "change run, dataset, preset, model (CycleGAN, CUT, FastCUT), generator, device; paired mode or keep brightness on/off"),
            ("Enter", "edit a setting (Ctrl-U clears, Enter confirms)"),
            ("s", "start the run (or resume the chosen one)"),
            ("p", "pause / resume"),
            ("x", "stop: finish the step and save a checkpoint"),
            ("e", "back to the settings after a run (offers to resume it)"),
        ],
    ),
    (
        "Translate",
        &[
            ("← → or h l", "move between models and images"),
            ("Enter", "load the model / translate the image"),
            ("o", "open any image by path (Tab completes)"),
            ("t", "target domain for opened images"),
            ("s", "save the result as <name>.<domain>.png beside the input"),
            ("r", "rescan the checkpoints folder"),
        ],
    ),
];

/// Draws the whole studio.
pub fn draw(frame: &mut Frame, app: &App, images: &mut ImagePanes) {
    let [header, body, status, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1), Constraint::Length(1)]).areas(frame.area());
    render_header(frame, header, app);
    match app.screen {
        Screen::Datasets => datasets::render(frame, body, app, images),
        Screen::Training => training::render(frame, body, app, images),
        Screen::Translate => translate::render(frame, body, app, images),
    }
    render_status(frame, status, app);
    render_key_hints(frame, footer, app);
    if app.show_help {
        render_help(frame, body);
    }
}

fn render_header(frame: &mut Frame, area: Rect, app: &App) {
    let badge = run_badge(app);
    let [tabs_area, badge_area] = Layout::horizontal([Constraint::Min(0), Constraint::Length(badge.width() as u16)]).areas(area);
    let titles = Screen::ALL.iter().enumerate().map(|(i, s)| format!(" {} {} ", i + 1, s.title()));
    let tabs = Tabs::new(titles)
        .select(app.screen.index())
        .style(Style::new().fg(Color::Gray))
        .highlight_style(Style::new().fg(Color::Black).bg(Color::Cyan).add_modifier(Modifier::BOLD))
        .divider("");
    frame.render_widget(tabs, tabs_area);
    frame.render_widget(badge, badge_area);
}

/// The state of the current run, visible from every screen.
fn run_badge(app: &App) -> Line<'static> {
    let Some(run) = &app.training.run else { return Line::from("cyclestudio ").dim() };
    let color = state_color(&run.state);
    Line::from(vec![
        Span::styled("● ", Style::new().fg(color)),
        Span::raw(format!("{} {} {}/{} ", run.name, run.state.label(), run.step, run.total_steps)),
    ])
}

fn state_color(state: &super::training::RunState) -> Color {
    use super::training::RunState;
    match state {
        RunState::Starting | RunState::Stopping => Color::Yellow,
        RunState::Training => Color::Green,
        RunState::Paused => Color::Cyan,
        RunState::Finished | RunState::Stopped => Color::Blue,
        RunState::Failed(_) => Color::Red,
    }
}

fn render_status(frame: &mut Frame, area: Rect, app: &App) {
    let Some(status) = &app.status else { return };
    let style = if status.is_error { Style::new().fg(Color::Red) } else { Style::new().fg(Color::Cyan) };
    frame.render_widget(Paragraph::new(Span::styled(status.text.clone(), style)), area);
}

/// The keys that do something right now.
fn key_hints(app: &App) -> Vec<(&'static str, &'static str)> {
    let mut hints = match app.screen {
        Screen::Datasets => match &app.datasets.create {
            Some(form) if form.status == CreateStatus::Creating => vec![("Esc", "close (creation goes on)")],
            Some(_) => vec![("↑↓", "field"), ("Tab", "complete folder"), ("←→", "choose"), ("Enter", "create"), ("Esc", "close")],
            None if app.datasets.browsing => {
                vec![("↑↓", "image"), ("←→", "folder"), ("Esc", "back"), ("n", "new dataset"), ("r", "rescan")]
            }
            None => vec![("↑↓", "select"), ("Enter", "browse images"), ("n", "new dataset"), ("r", "rescan")],
        },
        Screen::Training => match app.training.view {
            TrainingView::Settings if app.training.form.editing.is_some() => {
                vec![("Enter", "confirm"), ("Esc", "cancel"), ("Ctrl-U", "clear")]
            }
            TrainingView::Settings => {
                let mut h = vec![("↑↓", "setting"), ("←→", "choose"), ("Enter", "edit"), ("s", "start")];
                if app.training.run.is_some() {
                    h.push(("e", "dashboard"));
                }
                h
            }
            TrainingView::Dashboard if app.training.is_running() => vec![("p", "pause/resume"), ("x", "stop + save")],
            TrainingView::Dashboard => vec![("e", "settings / resume")],
        },
        Screen::Translate => match (&app.translate.path_input, &app.translate.model) {
            (Some(_), _) => vec![("Tab", "complete"), ("Enter", "translate"), ("Esc", "cancel")],
            (None, ModelState::Ready(_)) => {
                vec![
                    ("↑↓", "select"),
                    ("←→", "models/images"),
                    ("Enter", "load/translate"),
                    ("o", "open path"),
                    ("t", "target"),
                    ("s", "save result"),
                ]
            }
            (None, _) => vec![("↑↓", "select"), ("Enter", "load model"), ("r", "rescan runs")],
        },
    };
    if app.captures_text() {
        hints.push(("Ctrl-C", "quit"));
    } else {
        // Pause and stop work from every screen while a run is active.
        if app.training.is_running() && !(app.screen == Screen::Training && app.training.view == TrainingView::Dashboard) {
            hints.extend([("p", "pause run"), ("x", "stop run")]);
        }
        hints.extend([("Tab/1-3", "screens"), ("?", "help"), ("q", "quit")]);
    }
    hints
}

fn render_key_hints(frame: &mut Frame, area: Rect, app: &App) {
    let spans: Vec<Span> = key_hints(app)
        .into_iter()
        .flat_map(|(key, what)| [Span::styled(key, Style::new().fg(Color::Black).bg(Color::Gray)), Span::raw(format!(" {what}  "))])
        .collect();
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_help(frame: &mut Frame, area: Rect) {
    let mut lines = Vec::new();
    for (section, keys) in KEYS {
        lines.push(Line::from(section).bold().fg(Color::Cyan));
        for (key, what) in keys {
            lines.push(Line::from(vec![Span::styled(format!("  {key:<32}"), Style::new().bold()), Span::raw(*what)]));
        }
        lines.push(Line::default());
    }
    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = area.centered(Constraint::Percentage(90), Constraint::Length(height));
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(" Keys ").title_bottom(" any key closes ");
    frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), popup);
}

/// A bordered panel, highlighted when it has the focus.
fn panel(title: String, focused: bool) -> Block<'static> {
    let block = Block::bordered().title(title);
    if focused {
        block.border_style(Style::new().fg(Color::Cyan))
    } else {
        block
    }
}

/// Two lines for a run in a list: its name and progress, then what it translates with what.
fn run_item(run: &RunEntry) -> ListItem<'static> {
    ListItem::new(vec![
        Line::from(vec![
            Span::styled(run.name.clone(), Style::new().bold()),
            Span::styled(format!("  {}", run.progress()), Style::new().dim()),
        ]),
        Line::from(format!("  {}", run.description())).dim(),
    ])
}

/// A text field's value with a cursor at its end.
fn with_cursor(value: &str) -> String {
    format!("{value}▏")
}

/// Style of the selected row of a list.
fn selected_style() -> Style {
    Style::new().fg(Color::Black).bg(Color::Cyan)
}

/// A wrapped message inside a panel (placeholders, errors).
fn render_message(frame: &mut Frame, area: Rect, text: String, style: Style) {
    frame.render_widget(Paragraph::new(text).style(style).wrap(Wrap { trim: false }), area);
}
