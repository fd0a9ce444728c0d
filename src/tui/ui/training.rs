//! Draws the Training screen from its state: the settings form with the runs on disk, and the live dashboard (progress
//! gauge, loss chart, preview grid, health and event log).

use super::widgets::{panel, render_message, run_item, selected_style, state_color, with_cursor};
use crate::tui::action::Ctx;
use crate::tui::preview::{ImagePanes, Pane};
use crate::tui::training::{device_choices, Level, RunMonitor, RunState, Setting, TrainingScreen, TrainingView, LOSS_CURVES};
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Style, Stylize},
    symbols::Marker,
    text::{Line, Span},
    widgets::{Axis, Block, Chart, Dataset as Curve, Gauge, GraphType, List, ListItem, ListState, Paragraph, Wrap},
    Frame,
};
use std::time::Duration;

pub fn render(frame: &mut Frame, area: Rect, screen: &TrainingScreen, ctx: &Ctx, images: &mut ImagePanes) {
    match (&screen.view, &screen.run) {
        (TrainingView::Dashboard, Some(run)) => render_dashboard(frame, area, run, images),
        _ => render_settings_view(frame, area, screen, ctx),
    }
}

fn render_settings_view(frame: &mut Frame, area: Rect, screen: &TrainingScreen, ctx: &Ctx) {
    let [settings_area, runs_area] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    render_settings(frame, settings_area, screen, ctx);
    render_runs(frame, runs_area, screen, ctx);
}

fn render_settings(frame: &mut Frame, area: Rect, screen: &TrainingScreen, ctx: &Ctx) {
    let form = &screen.form;
    let block = panel(" Settings ".into(), true);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let error_lines = form.error.as_ref().map_or(0, |_| 3);
    let [list_area, error_area] = Layout::vertical([Constraint::Min(0), Constraint::Length(error_lines)]).areas(inner);
    let items = Setting::ALL.iter().enumerate().map(|(i, &setting)| {
        let selected = i == form.cursor;
        let value = match (&form.editing, selected) {
            (Some(input), true) => with_cursor(&input.value),
            _ if selected && setting.is_choice() => format!("‹ {} ›", screen.setting_value(setting, ctx)),
            _ if setting == Setting::Device => format!("{}  ({})", screen.setting_value(setting, ctx), device_choices().note()),
            _ => screen.setting_value(setting, ctx),
        };
        let style = if screen.setting_editable(setting, ctx.runs) { Style::new() } else { Style::new().dim() };
        ListItem::new(format!("{:<18} {value}", setting.label())).style(style)
    });
    let highlight = if form.editing.is_some() { Style::new().fg(Color::Cyan) } else { selected_style() };
    let list = List::new(items).highlight_style(highlight).highlight_symbol("› ");
    let mut state = ListState::default().with_selected(Some(form.cursor));
    frame.render_stateful_widget(list, list_area, &mut state);
    if let Some(error) = &form.error {
        render_message(frame, error_area, error.clone(), Style::new().fg(Color::Red));
    }
}

fn render_runs(frame: &mut Frame, area: Rect, screen: &TrainingScreen, ctx: &Ctx) {
    let block = panel(format!(" Runs in {}/ ", ctx.options.checkpoints.display()), false);
    if ctx.runs.is_empty() {
        let text = "No runs yet. Choose a dataset and a preset, adjust the settings, and press s.\n\n\
                    \"quick CPU preview\" trains small networks on 64×64 crops in minutes; the reference presets \
                    reproduce the CycleGAN paper's settings (hours to days, best on a GPU).";
        frame.render_widget(Paragraph::new(text).block(block).wrap(Wrap { trim: false }), area);
        return;
    }
    let items: Vec<ListItem> = ctx.runs.iter().map(run_item).collect();
    // The run chosen for resuming is highlighted.
    let resumed = screen.form.resume.as_ref().and_then(|name| ctx.runs.iter().position(|r| &r.name == name));
    let list = List::new(items).block(block).highlight_style(selected_style());
    let mut state = ListState::default().with_selected(resumed);
    frame.render_stateful_widget(list, area, &mut state);
}

fn render_dashboard(frame: &mut Frame, area: Rect, run: &RunMonitor, images: &mut ImagePanes) {
    let [progress, stats, middle, bottom] =
        Layout::vertical([Constraint::Length(3), Constraint::Length(1), Constraint::Min(8), Constraint::Length(10)]).areas(area);
    render_progress(frame, progress, run);
    render_stats(frame, stats, run);
    let [chart_area, preview_area] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(middle);
    render_loss_chart(frame, chart_area, run);
    render_preview(frame, preview_area, run, images);
    let [health_area, log_area] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    render_health(frame, health_area, run);
    render_log(frame, log_area, run);
}

fn render_progress(frame: &mut Frame, area: Rect, run: &RunMonitor) {
    let title = Line::from(vec![
        Span::raw(format!(" Run {} · ", run.name)),
        Span::styled(run.state.label(), Style::new().fg(state_color(&run.state)).bold()),
        Span::raw(" "),
    ]);
    let ratio = if run.total_steps == 0 { 0.0 } else { (run.step as f64 / run.total_steps as f64).clamp(0.0, 1.0) };
    let label = format!("step {}/{} · {:.0}% · epoch {}", run.step, run.total_steps, ratio * 100.0, run.epoch);
    let gauge = Gauge::default()
        .block(Block::bordered().title(title))
        .gauge_style(Style::new().fg(Color::Green).bg(Color::DarkGray))
        .ratio(ratio)
        .label(label);
    frame.render_widget(gauge, area);
}

fn render_stats(frame: &mut Frame, area: Rect, run: &RunMonitor) {
    let mut parts = vec![
        format!("lr {:.2e}", run.lr),
        format!("{:.2} images/s", run.images_per_sec),
        format!("ETA {}", format_duration(run.eta)),
        format!("device {}", if run.device.is_empty() { "…" } else { &run.device }),
    ];
    if let Some(step) = run.saved_step {
        parts.push(format!("last checkpoint: step {step}"));
    }
    if let Some((v, best)) = &run.validation {
        let mut s = format!("held-out KID {:.4} (step {})", v.kid, v.step);
        if let Some((step, kid)) = best {
            s.push_str(&format!(", best {kid:.4} at {step}"));
        }
        parts.push(s);
    }
    frame.render_widget(Paragraph::new(format!(" {}", parts.join("  │  "))), area);
}

/// `1h 02m`, `3m 05s`, `42s`.
fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m {sec:02}s"),
        (h, min, _) => format!("{h}h {min:02}m"),
    }
}

/// The chart's legend, with the latest value of each curve (which ratatui's own legend cannot
/// show), packed into as few lines as fit `width` without splitting an entry.
fn legend_lines(curves: &[(&str, &[(f64, f64)])], width: u16) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let mut line = Line::default();
    for (name, points) in curves {
        let text = format!("{name} {:.3}   ", points.last().map_or(0.0, |p| p.1));
        let entry_width = 2 + text.chars().count();
        if line.width() > 0 && line.width() + entry_width > width as usize {
            lines.push(std::mem::take(&mut line));
        }
        line.push_span(Span::styled("■ ", Style::new().fg(curve_color(name))));
        line.push_span(Span::raw(text));
    }
    lines.push(line);
    lines
}

fn curve_color(name: &str) -> Color {
    LOSS_CURVES.iter().find(|c| c.name == name).map_or(Color::Gray, |c| c.colour)
}

fn render_loss_chart(frame: &mut Frame, area: Rect, run: &RunMonitor) {
    let per_point = run.history.steps_per_point();
    let title = if per_point > 1 { format!(" Losses (each point: mean of {per_point} steps) ") } else { " Losses ".to_string() };
    let block = panel(title, false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let curves: Vec<(&str, &[(f64, f64)])> = run.history.curves().collect();
    if curves.is_empty() {
        render_message(frame, inner, "The loss curves appear after the first step.".into(), Style::new().dim());
        return;
    }
    let legend = legend_lines(&curves, inner.width);
    let [legend_area, chart_area] = Layout::vertical([Constraint::Length(legend.len() as u16), Constraint::Min(0)]).areas(inner);
    frame.render_widget(Paragraph::new(legend), legend_area);

    let all_points = || curves.iter().flat_map(|(_, p)| p.iter());
    let x_min = all_points().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all_points().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max).max(x_min + 1.0);
    let y_max = all_points().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.05;
    let datasets = curves
        .iter()
        .map(|(name, points)| {
            Curve::default()
                .name(name.to_string())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(curve_color(name)))
                .data(points)
        })
        .collect();
    let x_labels = [x_min, (x_min + x_max) / 2.0, x_max].map(|x| format!("{x:.0}"));
    let y_labels = [0.0, y_max / 2.0, y_max].map(|y| format!("{y:.2}"));
    let chart = Chart::new(datasets)
        .x_axis(Axis::default().title("step").bounds([x_min, x_max]).labels(x_labels).style(Style::new().dim()))
        .y_axis(Axis::default().bounds([0.0, y_max]).labels(y_labels).style(Style::new().dim()))
        .legend_position(None);
    frame.render_widget(chart, chart_area);
}

fn render_preview(frame: &mut Frame, area: Rect, run: &RunMonitor, images: &mut ImagePanes) {
    let title = match &run.preview {
        Some((step, _)) => format!(" Preview · step {step} "),
        None => " Preview ".into(),
    };
    let block = panel(title, false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [image_area, caption_area] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inner);
    match &run.preview {
        Some((_, grid)) => {
            images.render(frame, image_area, Pane::TrainingPreview, grid);
            let caption = "rows A→B→A / B→A→B: real | translated | cycled";
            frame.render_widget(Paragraph::new(caption).dim(), caption_area);
        }
        None => render_message(frame, inner, "Translations of a test image appear here every few steps.".into(), Style::new().dim()),
    }
}

fn render_health(frame: &mut Frame, area: Rect, run: &RunMonitor) {
    let block = panel(" Health ".into(), false);
    let Some(report) = &run.health else {
        let text = "Health checks (collapse, discriminator balance) start after the first check interval.";
        frame.render_widget(Paragraph::new(text).dim().block(block).wrap(Wrap { trim: false }), area);
        return;
    };
    let m = &report.metrics;
    let trend = |t: f64| {
        if t < 0.0 {
            "improving"
        } else if t > 0.0 {
            "rising"
        } else {
            "flat"
        }
    };
    let mut lines = vec![
        Line::from(format!("check at step {}", report.step)).dim(),
        // A one-sided (CUT) run has no B→A side: its metrics are NaN.
        if m.diversity_ba.is_nan() {
            Line::from(format!("diversity  A→B {:.2}  (0: outputs all alike)", m.diversity_ab))
        } else {
            Line::from(format!("diversity  A→B {:.2}  B→A {:.2}  (0: outputs all alike)", m.diversity_ab, m.diversity_ba))
        },
        if m.d_a_real.is_nan() {
            Line::from(format!("D_B real {:.2} fake {:.2}", m.d_b_real, m.d_b_fake))
        } else {
            Line::from(format!("D_B real {:.2} fake {:.2}   D_A real {:.2} fake {:.2}", m.d_b_real, m.d_b_fake, m.d_a_real, m.d_a_fake))
        },
        Line::from(format!("cycle loss (avg) {:.3}, {}", report.cycle_ema, trend(report.cycle_trend))),
    ];
    if report.warnings.is_empty() {
        lines.push(Line::from("no warnings").fg(Color::Green));
    }
    lines.extend(report.warnings.iter().map(|w| Line::from(format!("⚠ {w}")).fg(Color::Yellow)));
    frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), area);
}

fn render_log(frame: &mut Frame, area: Rect, run: &RunMonitor) {
    let block = panel(" Events ".into(), false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if let RunState::Failed(error) = &run.state {
        render_message(frame, inner, format!("training failed: {error}"), Style::new().fg(Color::Red));
        return;
    }
    // Show the newest lines that fit, estimating how many rows each takes once wrapped.
    let width = inner.width.max(1) as usize;
    let mut rows = 0;
    let mut shown = Vec::new();
    for line in run.log.iter().rev() {
        let text = format!("[{}] {}", line.step, line.text);
        rows += text.chars().count().div_ceil(width).max(1);
        if rows > inner.height as usize && !shown.is_empty() {
            break;
        }
        let style = match line.level {
            Level::Info => Style::new(),
            Level::Warning => Style::new().fg(Color::Yellow),
            Level::Error => Style::new().fg(Color::Red),
        };
        shown.push(Line::styled(text, style));
    }
    shown.reverse();
    frame.render_widget(Paragraph::new(shown).wrap(Wrap { trim: false }), inner);
}
