//! Draws the Translate screen from its state: trained runs, the chosen model's test images, and the input beside its
//! translation.

use super::widgets::{panel, run_item, selected_style, with_cursor};
use crate::tui::action::Ctx;
use crate::tui::models::BUILTIN_NAME;
use crate::tui::preview::{ImagePanes, Pane};
use crate::tui::translate::{Focus, ModelState, TranslateScreen};
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Stylize},
    text::Line,
    widgets::{LineGauge, List, ListItem, ListState, Paragraph, Wrap},
    Frame,
};

pub fn render(frame: &mut Frame, area: Rect, screen: &TranslateScreen, ctx: &Ctx, images: &mut ImagePanes) {
    let [left, right] = Layout::horizontal([Constraint::Percentage(35), Constraint::Percentage(65)]).areas(area);
    let [runs_area, images_area] = Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(left);
    render_runs(frame, runs_area, screen, ctx);
    render_test_images(frame, images_area, screen);
    render_result(frame, right, screen, images);
}

fn render_runs(frame: &mut Frame, area: Rect, screen: &TranslateScreen, ctx: &Ctx) {
    let block = panel(format!(" Models in {}/ ", ctx.options.checkpoints.display()), screen.focus == Focus::Runs);
    // The built-in model is always there, after the runs.
    let builtin = ListItem::new(vec![
        Line::from(BUILTIN_NAME).bold(),
        Line::from("  gray→color · shipped with cyclestudio").dim(),
    ]);
    let items = ctx.runs.iter().map(run_item).chain(std::iter::once(builtin));
    let list = List::new(items).block(block).highlight_style(selected_style()).highlight_symbol("› ");
    let mut state = ListState::default().with_selected(Some(screen.run_index));
    frame.render_stateful_widget(list, area, &mut state);
}

fn render_test_images(frame: &mut Frame, area: Rect, screen: &TranslateScreen) {
    let focused = screen.focus == Focus::Images;
    let (title, model) = match &screen.model {
        ModelState::Ready(model) => (format!(" Test images of {} ", model.run_name), model),
        ModelState::None => return render_placeholder(frame, area, " Images ", "Enter on a model loads it.", focused),
        ModelState::Loading(name) => return render_placeholder(frame, area, " Images ", &format!("loading {name}…"), focused),
        ModelState::Failed(e) => {
            let block = panel(" Images ".into(), focused);
            frame.render_widget(Paragraph::new(format!("cannot load the model: {e}")).red().block(block).wrap(Wrap { trim: false }), area);
            return;
        }
    };
    if model.images.is_empty() {
        let note = model.images_note.clone().unwrap_or_default();
        return render_placeholder(frame, area, &title, &note, focused);
    }
    let items = model.images.iter().map(|image| {
        let name = image.path.file_name().map_or_else(|| image.path.display().to_string(), |n| n.to_string_lossy().into_owned());
        ListItem::new(format!("{name}  {}→{}", image.from, image.to))
    });
    // Where the images come from when they are not the model's own dataset's.
    let block = match &model.images_note {
        Some(note) => panel(title, focused).title_bottom(Line::from(format!(" {note} ")).dim()),
        None => panel(title, focused),
    };
    let list = List::new(items).block(block).highlight_style(selected_style()).highlight_symbol("› ");
    let mut state = ListState::default().with_selected(Some(screen.image_index));
    frame.render_stateful_widget(list, area, &mut state);
}

fn render_placeholder(frame: &mut Frame, area: Rect, title: &str, text: &str, focused: bool) {
    let block = panel(title.to_string(), focused);
    frame.render_widget(Paragraph::new(text.to_string()).dim().block(block).wrap(Wrap { trim: false }), area);
}

fn render_result(frame: &mut Frame, area: Rect, screen: &TranslateScreen, images: &mut ImagePanes) {
    let input_height = if screen.path_input.is_some() { 4 } else { 0 };
    let [input_area, info_area, panes_area] =
        Layout::vertical([Constraint::Length(input_height), Constraint::Length(2), Constraint::Min(0)]).areas(area);
    if let Some(input) = &screen.path_input {
        let target = screen.typed_target().unwrap_or_default();
        let mut lines = vec![Line::from(with_cursor(&input.value)).fg(Color::Cyan)];
        if !screen.completions.is_empty() {
            lines.push(Line::from(format!("matches: {}", screen.completions.join("  "))).fg(Color::Yellow));
        }
        let block = panel(format!(" Open an image, translated to {target} "), true);
        frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), input_area);
    }
    let info = match (&screen.busy, &screen.result) {
        (Some(busy), _) => Line::from(busy.clone()).fg(Color::Yellow),
        (None, Some(result)) => Line::from(format!(
            "{} → {} in {:.1}s · s saves {}",
            result.source.display(),
            result.target,
            result.seconds,
            result.save_to.display()
        )),
        (None, None) => Line::from("Choose a test image and press Enter, or press o to open any image.").dim(),
    };
    match (&screen.busy, screen.progress) {
        // A large image in tiles: the busy line, then a gauge of its statistics passes or tiles.
        (Some(_), Some((stage, done, total))) => {
            let [line, gauge] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(info_area);
            frame.render_widget(Paragraph::new(info), line);
            let ratio = if total == 0 { 0.0 } else { (done as f64 / total as f64).clamp(0.0, 1.0) };
            let label = format!("{stage} {done}/{total}");
            frame.render_widget(LineGauge::default().filled_style(Color::Yellow).ratio(ratio).label(label), gauge);
        }
        _ => frame.render_widget(Paragraph::new(info).wrap(Wrap { trim: false }), info_area),
    }
    let [input_pane, output_pane] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(panes_area);
    let Some(result) = &screen.result else {
        frame.render_widget(panel(" Input ".into(), false), input_pane);
        frame.render_widget(panel(" Translation ".into(), false), output_pane);
        return;
    };
    for (pane_area, pane, title, shown) in [
        (input_pane, Pane::TranslateInput, format!(" Input {}×{} ", result.input.width(), result.input.height()), &result.input),
        (output_pane, Pane::TranslateOutput, format!(" Translation → {} ", result.target), &result.output),
    ] {
        let block = panel(title, false);
        let inner = block.inner(pane_area);
        frame.render_widget(block, pane_area);
        images.render(frame, inner, pane, shown);
    }
}
