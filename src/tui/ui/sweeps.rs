//! Draws the Sweeps screen from its state: the sweeps, and the selected one's leaderboard.

use super::widgets::{panel, render_message, selected_style};
use crate::tui::sweeps::{Focus, SweepsScreen};
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize},
    text::Line,
    widgets::{List, ListItem, ListState, Row, Table, TableState},
    Frame,
};

pub fn render(frame: &mut Frame, area: Rect, screen: &SweepsScreen, checkpoints: &std::path::Path) {
    let [left, right] = Layout::horizontal([Constraint::Percentage(28), Constraint::Percentage(72)]).areas(area);
    let block = panel(format!(" Sweeps in {}/ ", checkpoints.display()), screen.focus == Focus::Sweeps);
    if screen.sweeps.is_empty() {
        let inner = block.inner(left);
        frame.render_widget(block, left);
        render_message(frame, inner, "No sweeps yet. Start one with\n  cyclestudio sweep --dataset DIR --name NAME --vary lr=0.0001,0.0002".into(), Style::new().dim());
        return;
    }
    let items = screen.sweeps.iter().map(|s| {
        let by = s.spec.as_ref().map_or_else(|e| format!("unreadable: {e}"), |spec| format!("by {}", spec.metric.as_str()));
        ListItem::new(vec![Line::from(s.name.clone()).bold(), Line::from(format!("  {}/{} trials scored · {by}", s.trials.len(), s.planned())).dim()])
    });
    let list = List::new(items).block(block).highlight_style(selected_style()).highlight_symbol("› ");
    frame.render_stateful_widget(list, left, &mut ListState::default().with_selected(Some(screen.sweep_index)));
    render_leaderboard(frame, right, screen);
}

fn render_leaderboard(frame: &mut Frame, area: Rect, screen: &SweepsScreen) {
    let Some(sweep) = screen.selected() else { return };
    let block = panel(format!(" Leaderboard of {} (best first) ", sweep.name), screen.focus == Focus::Trials);
    let flags: Vec<String> = sweep.spec.as_ref().map(|s| s.vary.iter().map(|v| v.flag.clone()).collect()).unwrap_or_default();
    let mut header = vec!["#".to_string(), "trial".into()];
    header.extend(flags.iter().cloned());
    header.extend(["step", "status", "PSNR", "SSIM", "colour", "time"].map(String::from));
    let rows = sweep.trials.iter().enumerate().map(|(i, t)| {
        let mut cells = vec![(i + 1).to_string(), t.trial.clone()];
        cells.extend(flags.iter().map(|f| t.settings.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone()).unwrap_or_default()));
        let score = |k: &str, digits: usize| t.scores.get(k).map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "–".into());
        cells.extend([t.step.to_string(), t.status_text(), score("psnr", 2), score("ssim", 3), score("colourfulness", 1), format!("{:.0}s", t.seconds)]);
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Length(3), Constraint::Length(5)];
    widths.extend(flags.iter().map(|f| Constraint::Length(f.len().max(8) as u16)));
    widths.extend([Constraint::Length(6), Constraint::Length(17), Constraint::Length(6), Constraint::Length(6), Constraint::Length(6), Constraint::Length(6)]);
    let table = Table::new(rows, widths).header(Row::new(header).bold()).block(block).row_highlight_style(selected_style());
    let selected = (screen.focus == Focus::Trials).then_some(screen.trial_index);
    frame.render_stateful_widget(table, area, &mut TableState::default().with_selected(selected));
}
