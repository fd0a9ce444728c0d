//! Draws the Datasets screen from its state: the table of datasets, a folder's image list, the image preview and the
//! "new dataset" form.

use super::widgets::{panel, render_message, selected_style, with_cursor};
use crate::data::{Dataset, ScanReport};
use crate::tui::dataset_scan::DatasetEntry;
use crate::tui::datasets::{CreateField, CreateForm, CreateStatus, DatasetsScreen, Folder, ImageView};
use crate::tui::preview::{ImagePanes, Pane};
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, List, ListItem, ListState, Paragraph, Row, Table, TableState, Wrap},
    Frame,
};
use std::path::PathBuf;

pub fn render(frame: &mut Frame, area: Rect, screen: &DatasetsScreen, roots: &[PathBuf], images: &mut ImagePanes) {
    let table_height = (screen.entries.len() as u16 + 3).clamp(5, (area.height / 2).max(5));
    let [top, bottom] = Layout::vertical([Constraint::Length(table_height), Constraint::Min(0)]).areas(area);
    render_dataset_table(frame, top, screen, roots);
    let [left, right] = Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(bottom);
    if screen.browsing {
        render_image_list(frame, left, screen);
    } else {
        render_dataset_summary(frame, left, screen);
    }
    render_image_preview(frame, right, screen, images);
    if let Some(form) = &screen.create {
        render_create_form(frame, area, form);
    }
}

fn roots_label(roots: &[PathBuf]) -> String {
    roots.iter().map(|r| format!("{}/", r.display())).collect::<Vec<_>>().join(", ")
}

fn render_dataset_table(frame: &mut Frame, area: Rect, screen: &DatasetsScreen, roots: &[PathBuf]) {
    let scanning = if screen.scanning { " · scanning…" } else { "" };
    let block = panel(format!(" Datasets in {}{scanning} ", roots_label(roots)), !screen.browsing);
    if screen.entries.is_empty() {
        let text = if screen.scanning {
            "Looking for datasets…".to_string()
        } else {
            format!("No datasets in {} yet. Press n to create one from a folder of photos or from two folders.", roots_label(roots))
        };
        frame.render_widget(Paragraph::new(text).block(block).wrap(Wrap { trim: false }), area);
        return;
    }
    let header = Row::new(["Dataset", "Domain A", "Domain B", "train A/B", "test A/B", "typical size", "unreadable"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = screen.entries.iter().map(dataset_row);
    let widths = [
        Constraint::Fill(2),
        Constraint::Fill(2),
        Constraint::Fill(2),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(13),
        Constraint::Length(10),
    ];
    let table = Table::new(rows, widths).header(header).block(block).row_highlight_style(selected_style()).highlight_symbol("› ");
    let mut state = TableState::default().with_selected(Some(screen.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

fn dataset_row(entry: &DatasetEntry) -> Row<'static> {
    let ds = match &entry.dataset {
        Ok(ds) => ds,
        Err(e) => return Row::new([Cell::from(entry.name.clone()), Cell::from(format!("cannot open: {e}")).red()]),
    };
    let domain = |d: &crate::data::Domain| format!("{} ({}ch)", d.spec.name, d.spec.channels);
    let unreadable = ds.problems().len();
    let unreadable = Cell::from(unreadable.to_string()).style(if unreadable > 0 { Style::new().fg(Color::Yellow) } else { Style::new() });
    Row::new([
        Cell::from(entry.name.clone()),
        Cell::from(domain(&ds.a)),
        Cell::from(domain(&ds.b)),
        Cell::from(format!("{} / {}", ds.a.train.images.len(), ds.b.train.images.len())),
        Cell::from(format!("{} / {}", ds.a.test.images.len(), ds.b.test.images.len())),
        Cell::from(typical_size(ds)),
        unreadable,
    ])
}

/// The typical training image size, once if both domains agree.
fn typical_size(ds: &Dataset) -> String {
    let show = |r: &ScanReport| r.typical_size().map_or("-".to_string(), |(w, h)| format!("{w}×{h}"));
    let (a, b) = (show(&ds.a.train), show(&ds.b.train));
    if a == b {
        a
    } else {
        format!("{a} / {b}")
    }
}

fn render_dataset_summary(frame: &mut Frame, area: Rect, screen: &DatasetsScreen) {
    let block = panel(" Details ".into(), false);
    let text = match screen.selected_entry().map(|e| &e.dataset) {
        Some(Ok(ds)) => format!("{}\nEnter browses its images.", ds.summary()),
        Some(Err(e)) => format!("This folder cannot be used as a dataset:\n{e}"),
        None => String::new(),
    };
    frame.render_widget(Paragraph::new(text).block(block).wrap(Wrap { trim: false }), area);
}

fn render_image_list(frame: &mut Frame, area: Rect, screen: &DatasetsScreen) {
    let Some(Ok(ds)) = screen.selected_entry().map(|e| &e.dataset) else { return };
    let folder_tabs: Vec<Span> = Folder::ALL
        .iter()
        .flat_map(|f| {
            let label = format!(" {} ", f.dir());
            let style = if *f == screen.folder { selected_style() } else { Style::new().fg(Color::Gray) };
            [Span::styled(label, style), Span::raw(" ")]
        })
        .collect();
    let report = screen.folder.report(ds);
    let dataset_name = screen.selected_entry().map_or("", |e| e.name.as_str());
    let title = format!(" {dataset_name} · {} · {} images ", screen.folder.label(&ds.spec), report.images.len());
    let block = panel(title, true);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [tabs_area, list_area] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
    frame.render_widget(Paragraph::new(Line::from(folder_tabs)), tabs_area);
    if report.images.is_empty() {
        render_message(frame, list_area, "This folder has no readable images.".into(), Style::new().dim());
        return;
    }
    let items = report.images.iter().map(|(path, (w, h))| {
        let name = path.strip_prefix(&ds.root).unwrap_or(path).display().to_string();
        ListItem::new(format!("{name}  {w}×{h}"))
    });
    let list = List::new(items).highlight_style(selected_style()).highlight_symbol("› ");
    let mut state = ListState::default().with_selected(Some(screen.image_index));
    frame.render_stateful_widget(list, list_area, &mut state);
}

fn render_image_preview(frame: &mut Frame, area: Rect, screen: &DatasetsScreen, images: &mut ImagePanes) {
    let title = match &screen.image {
        Some(ImageView::Ready { path, image }) => format!(" {} · {}×{} ", file_name(path), image.width(), image.height()),
        Some(ImageView::Loading(path) | ImageView::Failed { path, .. }) => format!(" {} ", file_name(path)),
        None => " Preview ".into(),
    };
    let block = panel(title, false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    match &screen.image {
        Some(ImageView::Ready { image, .. }) => images.render(frame, inner, Pane::DatasetImage, image),
        Some(ImageView::Loading(_)) => render_message(frame, inner, "loading…".into(), Style::new().dim()),
        Some(ImageView::Failed { error, .. }) => {
            render_message(frame, inner, format!("cannot show this image: {error}"), Style::new().fg(Color::Red))
        }
        None => render_message(frame, inner, "Enter on a dataset, then ↑↓ through its images.".into(), Style::new().dim()),
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn render_create_form(frame: &mut Frame, area: Rect, form: &CreateForm) {
    let mut lines: Vec<Line> = form
        .fields()
        .iter()
        .map(|&field| {
            let focused = form.focused() == field;
            let value = form.value(field);
            let value = match (focused, field.is_choice()) {
                (true, true) => format!("‹ {value} ›"),
                (true, false) => with_cursor(&value),
                (false, _) => value,
            };
            let marker = if focused { "› " } else { "  " };
            let label = Span::styled(format!("{marker}{:<20}", field.label()), Style::new().bold());
            let value = if focused { Span::styled(value, Style::new().fg(Color::Cyan)) } else { Span::raw(value) };
            Line::from(vec![label, value])
        })
        .collect();
    lines.push(Line::default());
    if form.focused().is_path() && form.completions.is_empty() {
        lines.push(Line::from("Tab completes folder names; ~ is your home folder.").dim());
    }
    if !form.completions.is_empty() {
        lines.push(Line::from(format!("matches: {}", form.completions.join("  "))).fg(Color::Yellow));
    }
    if form.focused() == CreateField::Kind {
        lines.push(Line::from("←→ switches between the two kinds of dataset.").dim());
    }
    let (message, style) = match &form.status {
        CreateStatus::Editing => ("Enter creates the dataset.", Style::new().dim()),
        CreateStatus::Creating => ("creating… (images are being converted)", Style::new().fg(Color::Yellow)),
        CreateStatus::Done(summary) => (summary.as_str(), Style::new().fg(Color::Green)),
        CreateStatus::Failed(e) => (e.as_str(), Style::new().fg(Color::Red)),
    };
    lines.extend(message.lines().map(|l| Line::styled(l.to_string(), style)));
    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = area.centered(Constraint::Percentage(80), Constraint::Length(height));
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(format!(" New dataset in {}/ ", form.root.display())).border_style(Style::new().fg(Color::Cyan));
    frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), popup);
}
