//! Rendering: [`draw`] lays out the header, the current screen, the status line and the footer,
//! and the help overlay; each screen's panels are drawn by its own module from the screen's
//! state. The help and the footer are drawn from the key declarations. Nothing here does I/O;
//! pictures are encoded by [`ImagePanes`] when their image or area changes.

mod datasets;
mod sweeps;
mod training;
mod translate;
mod widgets;

use super::app::{help_sections, App, Screen};
use super::preview::ImagePanes;
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph, Tabs, Wrap},
    Frame,
};
use widgets::state_color;

/// Draws the whole studio.
pub fn draw(frame: &mut Frame, app: &App, images: &mut ImagePanes) {
    let [header, body, status, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1), Constraint::Length(1)]).areas(frame.area());
    render_header(frame, header, app);
    match app.screen {
        Screen::Datasets => datasets::render(frame, body, &app.datasets, &app.options.datasets, images),
        Screen::Training => training::render(frame, body, &app.training, &app.ctx(), images),
        Screen::Translate => translate::render(frame, body, &app.translate, &app.ctx(), images),
        Screen::Sweeps => sweeps::render(frame, body, &app.sweeps, &app.options.checkpoints),
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

fn render_status(frame: &mut Frame, area: Rect, app: &App) {
    let Some(status) = &app.status else { return };
    let style = if status.is_error { Style::new().fg(Color::Red) } else { Style::new().fg(Color::Cyan) };
    frame.render_widget(Paragraph::new(Span::styled(status.text.clone(), style)), area);
}

fn render_key_hints(frame: &mut Frame, area: Rect, app: &App) {
    let spans: Vec<Span> = app
        .key_hints()
        .into_iter()
        .flat_map(|(key, what)| [Span::styled(key, Style::new().fg(Color::Black).bg(Color::Gray)), Span::raw(format!(" {what}  "))])
        .collect();
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_help(frame: &mut Frame, area: Rect) {
    let mut lines = Vec::new();
    for (section, keys) in help_sections() {
        lines.push(Line::from(section).bold().fg(Color::Cyan));
        for (key, what) in keys {
            lines.push(Line::from(vec![Span::styled(format!("  {key:<32}"), Style::new().bold()), Span::raw(what)]));
        }
        lines.push(Line::default());
    }
    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = area.centered(Constraint::Percentage(90), Constraint::Length(height));
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(" Keys ").title_bottom(" any key closes ");
    frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), popup);
}
