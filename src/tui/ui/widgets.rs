//! Pieces the screens' renderers share: panels, list rows and styles.

use crate::tui::runs::RunEntry;
use crate::tui::training::RunState;
use ratatui::{
    layout::Rect,
    style::{Color, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, ListItem, Paragraph, Wrap},
    Frame,
};

/// A bordered panel, highlighted when it has the focus.
pub fn panel(title: String, focused: bool) -> Block<'static> {
    let block = Block::bordered().title(title);
    if focused {
        block.border_style(Style::new().fg(Color::Cyan))
    } else {
        block
    }
}

/// Two lines for a run in a list: its name and progress, then what it translates with what.
pub fn run_item(run: &RunEntry) -> ListItem<'static> {
    ListItem::new(vec![
        Line::from(vec![
            Span::styled(run.name.clone(), Style::new().bold()),
            Span::styled(format!("  {}", run.progress()), Style::new().dim()),
        ]),
        Line::from(format!("  {}", run.description())).dim(),
    ])
}

/// A text field's value with a cursor at its end.
pub fn with_cursor(value: &str) -> String {
    format!("{value}▏")
}

/// Style of the selected row of a list.
pub fn selected_style() -> Style {
    Style::new().fg(Color::Black).bg(Color::Cyan)
}

/// A wrapped message inside a panel (placeholders, errors).
pub fn render_message(frame: &mut Frame, area: Rect, text: String, style: Style) {
    frame.render_widget(Paragraph::new(text).style(style).wrap(Wrap { trim: false }), area);
}

/// The colour of a run's state (badge, dashboard title).
pub fn state_color(state: &RunState) -> Color {
    match state {
        RunState::Starting | RunState::Stopping => Color::Yellow,
        RunState::Training => Color::Green,
        RunState::Paused => Color::Cyan,
        RunState::Finished | RunState::Stopped => Color::Blue,
        RunState::Failed(_) => Color::Red,
    }
}
