//! The studio's screens as docs/studio.md shows them: each screen is rendered into ratatui's
//! TestBackend from a studio opened on the repository's demo dataset and the built-in model, driven
//! with the keys a user would press, and compared with the text capture under the page's
//! `<!-- studio-screen: NAME -->` marker. A screen that changed fails the test;
//! `CS_UPDATE_DOCS=1 cargo test --release --test studio_screens` writes the new captures into the
//! page instead.
//!
//! One test in this file: it sets the process's working directory (the studio then shows the
//! relative folders `datasets` and `checkpoints`, as a user who starts it in a project folder sees).

mod common;

use common::{press, settle};
use crossterm::event::KeyCode;
use cyclestudio::health::{HealthMetrics, HealthReport};
use cyclestudio::train::{Losses, RunControl, StepReport, TrainEvent};
use cyclestudio::tui::app::App;
use cyclestudio::tui::datasets::ImageView;
use cyclestudio::tui::event::AppEvent;
use cyclestudio::tui::preview::ImagePanes;
use cyclestudio::tui::training::{RunMonitor, TrainingView};
use cyclestudio::tui::translate::ModelState;
use cyclestudio::tui::{ui, TuiOptions};
use ratatui::{backend::TestBackend, Terminal};
use ratatui_image::picker::Picker;
use std::path::{Path, PathBuf};
use std::sync::mpsc::channel;
use std::time::Duration;

const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;
/// The help lists every key: taller than the other screens.
const HELP_HEIGHT: u16 = 52;
const MARKER: &str = "<!-- studio-screen:";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}


/// The screen as text, trailing spaces removed (half-block images as their characters).
fn render(app: &App) -> String {
    render_at(app, HEIGHT)
}

fn render_at(app: &App, height: u16) -> String {
    let mut images = ImagePanes::new(Picker::halfblocks());
    let mut terminal = Terminal::new(TestBackend::new(WIDTH, height)).unwrap();
    terminal.draw(|frame| ui::draw(frame, app, &mut images)).unwrap();
    let cells: Vec<&str> = terminal.backend().buffer().content().iter().map(|c| c.symbol()).collect();
    cells.chunks(WIDTH as usize).map(|row| row.concat().trim_end().to_string()).collect::<Vec<_>>().join("\n")
}

/// Losses of a plausible run at `step`: falling, with the wobble of a GAN.
fn losses(step: u64) -> Losses {
    let s = step as f32;
    let wobble = |k: f32| (s * k).sin() * 0.5 + (s * k * 2.3).cos() * 0.25;
    Losses {
        g_ab_adv: 0.45 + 0.15 * wobble(0.31),
        g_ba_adv: 0.40 + 0.15 * wobble(0.27),
        cycle_a: 1.2 + 2.5 / (1.0 + s / 20.0) + 0.3 * wobble(0.53),
        cycle_b: 1.5 + 3.0 / (1.0 + s / 25.0) + 0.4 * wobble(0.41),
        idt_ab: 0.6 + 1.2 / (1.0 + s / 30.0) + 0.1 * wobble(0.37),
        idt_ba: 0.7 + 1.2 / (1.0 + s / 30.0) + 0.1 * wobble(0.23),
        g_total: 6.0 + 8.0 / (1.0 + s / 20.0) + wobble(0.19),
        d_a: 0.22 + 0.05 * wobble(0.29),
        d_b: 0.25 + 0.05 * wobble(0.33),
        ..Default::default()
    }
}

/// Every screen, by name, as the page shows them.
fn screens(root: &Path) -> Vec<(&'static str, String)> {
    let (tx, rx) = channel();
    let options = TuiOptions { checkpoints: PathBuf::from("checkpoints"), datasets: vec![PathBuf::from("datasets")], graphics: None };
    let mut app = App::new(options, tx);
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    let mut out = Vec::new();
    out.push(("datasets", render(&app)));

    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the preview", |a| matches!(a.datasets.image, Some(ImageView::Ready { .. })));
    out.push(("dataset-images", render(&app)));
    press(&mut app, KeyCode::Esc);

    press(&mut app, KeyCode::Char('n'));
    for c in "my_photos".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    out.push(("new-dataset", render(&app)));
    press(&mut app, KeyCode::Esc);

    press(&mut app, KeyCode::Char('2'));
    out.push(("training-settings", render(&app)));

    // A run as the training thread reports it (its numbers are made up, the screen is not).
    app.training.run = Some(RunMonitor::new("demo_quick".into(), RunControl::default()));
    app.training.view = TrainingView::Dashboard;
    let total = 400;
    app.handle(AppEvent::Train(TrainEvent::Started { step: 0, total_steps: total, device: "cpu".into(), note: None }));
    for step in 1..=142 {
        let eta = Duration::from_secs((total - step) * 81 / 258);
        let report = StepReport { step, total_steps: total, epoch: step / 4 + 1, lr: 2e-4, losses: losses(step), images_per_sec: 3.2, eta };
        app.handle(AppEvent::Train(TrainEvent::Step(report)));
        if step == 100 {
            app.handle(AppEvent::Train(TrainEvent::Saved { step, dir: root.join("checkpoints/demo_quick") }));
            app.handle(AppEvent::Train(TrainEvent::Health(HealthReport {
                step,
                metrics: HealthMetrics { diversity_ab: 0.61, diversity_ba: 0.72, d_b_real: 0.77, d_b_fake: 0.43, d_a_real: 0.78, d_a_fake: 0.60 },
                cycle_ema: 5.326,
                cycle_trend: -0.4,
                ..Default::default()
            })));
        }
        if step == 140 {
            let grid = image::open(repo().join("bench/default_model_examples.jpg")).unwrap();
            app.handle(AppEvent::Train(TrainEvent::Preview { step, grid }));
        }
    }
    out.push(("training-dashboard", render(&app)));
    app.training.run = None;
    app.training.view = TrainingView::Settings;

    press(&mut app, KeyCode::Char('3'));
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the built-in model", |a| !matches!(a.translate.model, ModelState::Loading(_)));
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the translation", |a| a.translate.busy.is_none());
    // The time it took is the machine's.
    if let Some(r) = app.translate.result.as_mut() {
        r.seconds = 0.41;
    }
    out.push(("translate", render(&app)));

    // A sweep as `cyclestudio sweep --halving` leaves it (its scores are made up, the screen is not).
    write_sweep(&root.join("checkpoints/lr_ngf"));
    press(&mut app, KeyCode::Char('4'));
    press(&mut app, KeyCode::Char('l'));
    out.push(("sweeps", render(&app)));

    press(&mut app, KeyCode::Char('?'));
    out.push(("help", render_at(&app, HELP_HEIGHT)));
    out
}

/// A halving sweep of 2 learning rates × 3 widths: two trials finished, one stopped at the
/// second rung, three at the first.
fn write_sweep(dir: &Path) {
    use cyclestudio::sweep::{Metric, SweepSpec, TrialRecord, TrialStatus};
    let spec = SweepSpec {
        vary: vec!["lr=0.0002,0.0005".parse().unwrap(), "ngf=8,12,16".parse().unwrap()],
        metric: Metric::Psnr,
        train_args: ["--size", "128", "--iters", "2000", "--decay-iters", "2000"].map(String::from).to_vec(),
        rungs: vec![0.25, 0.5],
        dinov2_weights: None,
        fid_weights: None,
        fid_weights_unchecked: false,
        short_side: None,
    };
    spec.save(dir).unwrap();
    let results = [(24.61, 0.902, 4000, TrialStatus::Finished), (24.18, 0.897, 4000, TrialStatus::Finished), (23.02, 0.861, 2000, TrialStatus::Halved)];
    let early = (22.4, 0.84, 1000, TrialStatus::Halved);
    for (i, settings) in spec.grid().into_iter().enumerate() {
        let (psnr, ssim, step, status) = [results[0], results[2], early, results[1], early, early][i];
        let name = format!("t{:02}", i + 1);
        let rung_scores = match status {
            TrialStatus::Finished => vec![psnr - 1.5, psnr - 0.7],
            _ if step == 2000 => vec![psnr - 1.0, psnr],
            _ => vec![psnr - i as f64 * 0.1],
        };
        let scores = [("psnr", psnr - i as f64 * 0.01), ("ssim", ssim), ("colourfulness", 21.5 + i as f64)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let record = TrialRecord { run: dir.join(&name), trial: name, settings, step, seconds: 300.0 * step as f64 / 1000.0, scores, images: 18, status, rung_scores, note: String::new() };
        std::fs::create_dir_all(&record.run).unwrap();
        std::fs::write(record.run.join(cyclestudio::sweep::TRIAL_FILE), serde_json::to_string(&record).unwrap()).unwrap();
    }
}

/// The page with each marked capture replaced by `screens`' (and the names it has).
fn with_captures(page: &str, screens: &[(&str, String)]) -> (String, Vec<String>) {
    let lines: Vec<&str> = page.lines().collect();
    let (mut out, mut names, mut i) = (Vec::new(), Vec::new(), 0);
    while i < lines.len() {
        out.push(lines[i].to_string());
        let Some(name) = lines[i].trim().strip_prefix(MARKER).map(|r| r.trim_end_matches("-->").trim().to_string()) else {
            i += 1;
            continue;
        };
        assert!(lines.get(i + 1).is_some_and(|l| l.starts_with("```")), "docs/studio.md:{}: a capture block must follow the marker", i + 1);
        let end = (i + 2..lines.len()).find(|&j| lines[j].starts_with("```")).expect("closed block");
        let capture = &screens.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("docs/studio.md: no screen named {name}")).1;
        out.push("```text".into());
        out.push(capture.clone());
        out.push("```".into());
        names.push(name);
        i = end + 1;
    }
    (out.join("\n") + "\n", names)
}

#[test]
fn the_studio_page_shows_every_screen_as_it_is() {
    if cfg!(feature = "cuda") {
        println!("skipped: a CUDA build lists its devices on the training screen");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let demo = repo().join("datasets/demo");
    let copy = root.join("datasets/demo");
    std::fs::create_dir_all(&copy).unwrap();
    for e in walk(&demo) {
        let target = copy.join(e.strip_prefix(&demo).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&e, target).unwrap();
    }
    std::fs::create_dir_all(root.join("checkpoints")).unwrap();
    std::env::set_current_dir(root).unwrap();
    let screens = screens(root);

    let path = repo().join("docs/studio.md");
    let page = std::fs::read_to_string(&path).unwrap();
    let (updated, names) = with_captures(&page, &screens);
    for (name, _) in &screens {
        assert!(names.iter().any(|n| n == name), "docs/studio.md has no capture of the {name} screen (`{MARKER} {name} -->`)");
    }
    if updated == page {
        return;
    }
    if std::env::var_os("CS_UPDATE_DOCS").is_some() {
        std::fs::write(&path, updated).unwrap();
        println!("docs/studio.md: captures updated");
        return;
    }
    let changed: Vec<&str> = screens.iter().filter(|(_, s)| !page.contains(s.as_str())).map(|(n, _)| *n).collect();
    panic!(
        "the studio's screens changed ({}): run `CS_UPDATE_DOCS=1 cargo test --release --test studio_screens` and review docs/studio.md",
        changed.join(", ")
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
