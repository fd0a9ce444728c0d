//! The studio's screens rendered into ratatui's TestBackend: real datasets, runs and models made
//! in a temporary folder, driven through `App` with the same events the terminal would send.

mod common;

use common::{tiny_dataset, train_tiny, write_pngs};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use cyclestudio::health::{HealthMetrics, HealthReport};
use cyclestudio::train::{Losses, RunControl, RunOutcome, StepReport, TrainEvent};
use cyclestudio::tui::app::{App, Screen};
use cyclestudio::tui::datasets::{CreateStatus, ImageView};
use cyclestudio::tui::event::{AppEvent, JobResult};
use cyclestudio::tui::preview::ImagePanes;
use cyclestudio::tui::training::{RunMonitor, TrainingView};
use cyclestudio::tui::translate::ModelState;
use cyclestudio::tui::{ui, TuiOptions};
use ratatui::{backend::TestBackend, Terminal};
use ratatui_image::picker::Picker;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// An app over `root/datasets` and `root/checkpoints`, with its event receiver.
fn studio(root: &Path) -> (App, Receiver<AppEvent>) {
    let (tx, rx) = channel();
    let options = TuiOptions { checkpoints: root.join("checkpoints"), datasets: vec![root.join("datasets")], graphics: None };
    (App::new(options, tx), rx)
}

use common::{press, settle};

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        press(app, KeyCode::Char(c));
    }
}

/// The screen as text, one line per row (half-block images included as characters).
fn render(app: &App, width: u16, height: u16) -> String {
    // Half blocks: the terminal is never queried in tests.
    let mut images = ImagePanes::new(Picker::halfblocks());
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| ui::draw(frame, app, &mut images)).unwrap();
    let buffer = terminal.backend().buffer();
    let cells: Vec<&str> = buffer.content().iter().map(|c| c.symbol()).collect();
    cells.chunks(width as usize).map(|row| row.concat()).collect::<Vec<_>>().join("\n")
}

#[track_caller]
fn assert_shows(screen: &str, texts: &[&str]) {
    for text in texts {
        assert!(screen.contains(text), "the screen does not show {text:?}:\n{screen}");
    }
}

#[test]
fn dataset_list_shows_domains_counts_sizes_and_unreadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(&tmp.path().join("datasets"));
    std::fs::write(ds.join("trainB/broken.png"), b"not a png").unwrap();
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);

    let screen = render(&app, 140, 40);
    assert_shows(&screen, &["1 Datasets", "tiny", "gray (1ch)", "color (3ch)", "3 / 3", "2 / 2", "40×36", "unreadable"]);
    let row = screen.lines().find(|l| l.contains("tiny")).unwrap();
    assert!(row.trim_end_matches(['│', ' ']).ends_with('1'), "one unreadable file in: {row}");
    assert_shows(&screen, &["n new dataset", "q quit", "? help"]);

    // Enter browses the images, with an inline preview of the selected one.
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the preview image", |a| matches!(a.datasets.image, Some(ImageView::Ready { .. })));
    let screen = render(&app, 140, 40);
    assert_shows(&screen, &["tiny · trainA (gray) · 3 images", "testB", "trainA/img0.png  40×36", "img0.png · 40×36", "←→ folder"]);
    assert!(screen.contains('▀') || screen.contains('▄'), "the preview is drawn with half blocks:\n{screen}");

    // → goes to the next folder.
    press(&mut app, KeyCode::Right);
    settle(
        &mut app,
        &rx,
        "the testA preview",
        |a| matches!(&a.datasets.image, Some(ImageView::Ready { path, .. }) if path.starts_with(ds.join("testA"))),
    );
}

#[test]
fn new_dataset_form_completes_folders_and_creates_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    write_pngs(&tmp.path().join("my_photos"), 6, 24, 24);
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    assert_shows(&render(&app, 120, 30), &["No datasets in"]);

    press(&mut app, KeyCode::Char('n'));
    type_text(&mut app, "faces");
    press(&mut app, KeyCode::Down);
    type_text(&mut app, &format!("{}/my_ph", tmp.path().display()));
    press(&mut app, KeyCode::Tab);
    let screen = render(&app, 120, 30);
    assert_shows(&screen, &["New dataset in", "grey ↔ colour", "Dataset name", "faces", &format!("{}/my_photos/", tmp.path().display())]);
    // Typing in the form is not taken for commands: `q` is a letter here.
    assert!(app.captures_text());

    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the dataset creation", |a| a.datasets.create.as_ref().is_some_and(|f| f.status != CreateStatus::Creating));
    settle(&mut app, &rx, "the rescan", |a| !a.datasets.scanning);
    let screen = render(&app, 120, 30);
    assert_shows(&screen, &["created", "faces", "gray (1ch)", "color (3ch)"]);
    assert!(tmp.path().join("datasets/faces/dataset.toml").is_file());
}

fn losses(step: u64) -> Losses {
    let s = step as f32;
    Losses {
        g_ab_adv: 0.9 - 0.05 * s,
        g_ba_adv: 0.8 - 0.04 * s,
        cycle_a: 4.0 - 0.3 * s,
        cycle_b: 3.5 - 0.2 * s,
        idt_ab: 1.0,
        idt_ba: 0.8,
        paired: 0.0,
        g_total: 10.0 - s,
        d_a: 0.3,
        d_b: 0.25,
        ..Default::default()
    }
}

#[test]
fn training_dashboard_shows_chart_gauge_rates_health_and_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    press(&mut app, KeyCode::Char('2'));
    assert_eq!(app.screen, Screen::Training);
    assert_shows(&render(&app, 120, 40), &["Settings", "quick CPU preview", "resnet_6blocks", "Preview every", "s start"]);

    // A run as the training thread reports it.
    let control = RunControl::default();
    app.training.run = Some(RunMonitor::new("demo_quick".into(), control.clone()));
    app.training.view = TrainingView::Dashboard;
    let events = [TrainEvent::Started { step: 0, total_steps: 10, device: "cpu".into(), note: None }]
        .into_iter()
        .chain((1..=3).map(|step| {
            TrainEvent::Step(StepReport {
                step,
                total_steps: 10,
                epoch: 1,
                lr: 2e-4,
                losses: losses(step),
                images_per_sec: 1.5,
                eta: Duration::from_secs(65),
            })
        }))
        .chain([
            TrainEvent::Preview { step: 2, grid: image::DynamicImage::new_rgb8(96, 64) },
            TrainEvent::Warning("outputs of G_AB have become near-identical".into()),
            TrainEvent::Health(HealthReport {
                step: 3,
                metrics: HealthMetrics {
                    diversity_ab: 0.05,
                    diversity_ba: 0.8,
                    d_b_real: 0.9,
                    d_b_fake: 0.1,
                    d_a_real: 0.6,
                    d_a_fake: 0.4,
                },
                cycle_ema: 3.1,
                warnings: vec!["outputs of G_AB have become near-identical".into()],
                ..Default::default()
            }),
            TrainEvent::Warning("skipping trainA/x.png: truncated".into()),
            TrainEvent::Saved { step: 3, dir: tmp.path().join("checkpoints/demo_quick") },
        ]);
    for event in events {
        app.handle(AppEvent::Train(event));
    }
    let screen = render(&app, 120, 40);
    assert_shows(
        &screen,
        &[
            "Run demo_quick",
            "training",
            "3/10",
            "epoch 1",
            "lr 2.00e-4",
            "1.50 images/s",
            "ETA 1m 05s",
            "device cpu",
            "Losses",
            "G_AB adv",
            "G_BA adv",
            "cycle A",
            "cycle B",
            "identity",
            "D_A",
            "D_B",
            "Preview · step 2",
            "Health",
            "diversity  A→B 0.05",
            "near-identical",
            "skipping trainA/x.png",
            "checkpoint saved at step 3",
            "p pause/resume",
            "x stop + save",
        ],
    );
    // The health warning is shown once, in the health panel, not again in the event log.
    assert_eq!(screen.matches("near-identical").count(), 1, "{screen}");
    // Unused terms (no paired loss in unpaired training) are not plotted.
    assert!(!screen.contains("paired"), "{screen}");

    press(&mut app, KeyCode::Char('p'));
    assert!(control.pause.load(Ordering::SeqCst));
    assert_shows(&render(&app, 120, 40), &["paused"]);
    press(&mut app, KeyCode::Char('p'));
    assert!(!control.pause.load(Ordering::SeqCst));

    // q stops the run and waits for its checkpoint before quitting.
    press(&mut app, KeyCode::Char('q'));
    assert!(control.stop.load(Ordering::SeqCst));
    assert!(!app.should_quit());
    assert_shows(&render(&app, 120, 40), &["stopping: saving a checkpoint", "quitting"]);
    app.handle(AppEvent::TrainingEnded(Ok(RunOutcome::Stopped { step: 3 })));
    assert!(app.should_quit());
    assert_shows(&render(&app, 120, 40), &["stopped, checkpoint saved", "e settings / resume"]);
}

#[test]
fn training_errors_are_shown_not_raised() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    press(&mut app, KeyCode::Char('2'));
    // No dataset yet: starting explains what to do.
    press(&mut app, KeyCode::Char('s'));
    assert_shows(&render(&app, 120, 40), &["no dataset yet: create one on the Datasets screen"]);

    app.training.run = Some(RunMonitor::new("broken".into(), RunControl::default()));
    app.training.view = TrainingView::Dashboard;
    app.handle(AppEvent::TrainingEnded(Err("saving the checkpoint of step 4 failed: disk full".into())));
    let screen = render(&app, 120, 40);
    assert_shows(&screen, &["failed", "training failed: saving the checkpoint of step 4 failed: disk full"]);
    assert!(!app.should_quit());
}

#[test]
fn translate_screen_lists_checkpoints_and_translates_a_test_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = tiny_dataset(&tmp.path().join("datasets"));
    train_tiny(&tmp.path().join("checkpoints/tiny"), &dataset, 2, false);
    // A run whose config exists but which never saved a checkpoint.
    let mut unfinished = common::tiny_config(&dataset, 5);
    unfinished.name = "unfinished".into();
    unfinished.save(&tmp.path().join("checkpoints/unfinished")).unwrap();

    let (mut app, rx) = studio(tmp.path());
    press(&mut app, KeyCode::Char('3'));
    let screen = render(&app, 140, 40);
    assert_shows(&screen, &["Models in", "tiny  step 2/2", "gray→color · resnet_2blocks ngf 4 · 32px", "unfinished  no checkpoint yet"]);

    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Enter);
    assert_shows(&render(&app, 140, 40), &["run unfinished has no checkpoint yet"]);

    press(&mut app, KeyCode::Up);
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the model", |a| !matches!(a.translate.model, ModelState::Loading(_)));
    let screen = render(&app, 140, 40);
    assert_shows(&screen, &["Test images of tiny", "img0.png  gray→color", "img0.png  color→gray"]);

    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the translation", |a| a.translate.busy.is_none());
    let screen = render(&app, 140, 40);
    assert_shows(&screen, &["Input 40×36", "Translation → color", "img0.color.png"]);

    press(&mut app, KeyCode::Char('s'));
    settle(&mut app, &rx, "the save", |a| a.status.as_ref().is_some_and(|s| s.text.contains("saved")));
    // A dataset image's translation goes to the model's folder, not into the dataset.
    assert!(tmp.path().join("checkpoints/tiny/translations/img0.color.png").is_file());
    assert!(!dataset.join("testA/img0.color.png").exists());
    press(&mut app, KeyCode::Char('s'));
    settle(&mut app, &rx, "the refused save", |a| a.status.as_ref().is_some_and(|s| s.is_error && s.text.contains("already exists")));
    assert_shows(&render(&app, 140, 40), &["not saved:", "already exists"]);
}

/// A test image beyond the size translated whole goes in tiles, which take minutes on a large
/// photo: the Translate screen shows a gauge of the statistics passes and tiles as they go.
#[test]
fn a_large_image_shows_its_tiles_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = tiny_dataset(&tmp.path().join("datasets"));
    train_tiny(&tmp.path().join("checkpoints/tiny"), &dataset, 2, false);
    // 1600×1500 is over the 1536² translated whole; listed first ("big" < "img0").
    image::GrayImage::from_fn(1600, 1500, |x, y| image::Luma([((x * 7 + y * 13) % 251) as u8])).save(dataset.join("testA/big.png")).unwrap();
    let (mut app, rx) = studio(tmp.path());
    press(&mut app, KeyCode::Char('3'));
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the model", |a| !matches!(a.translate.model, ModelState::Loading(_)));
    assert_shows(&render(&app, 140, 40), &["big.png  gray→color"]);
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the first progress report", |a| a.translate.progress.is_some() || a.translate.busy.is_none());
    let (stage, done, total) = app.translate.progress.expect("a tiled translation reports its progress");
    assert!(stage == "statistics" && done < total, "{stage} {done}/{total}");
    assert_shows(&render(&app, 140, 40), &["translating", "big.png", &format!("statistics {done}/{total}")]);
    settle(&mut app, &rx, "the tiles", |a| a.translate.progress.is_some_and(|p| p.0 == "tiles") || a.translate.busy.is_none());
    assert!(app.translate.progress.is_some(), "no tiles progress before the translation ended");
    settle(&mut app, &rx, "the translation", |a| a.translate.busy.is_none());
    assert!(app.translate.progress.is_none());
    assert_shows(&render(&app, 140, 40), &["Input 1600×1500", "Translation → color"]);
}

#[test]
fn fresh_studio_offers_the_built_in_model_with_test_images_that_exist() {
    // No runs, and the built-in model's own dataset (datasets/landscapes) is not here: the studio
    // lists the built-in model and offers the test images of a dataset with its domains.
    let tmp = tempfile::tempdir().unwrap();
    tiny_dataset(&tmp.path().join("datasets"));
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.entries.is_empty());
    press(&mut app, KeyCode::Char('3'));
    assert_shows(&render(&app, 140, 40), &["built-in grey→colour", "gray→color · shipped with cyclestudio"]);
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the model", |a| !matches!(a.translate.model, ModelState::Loading(_)));
    let screen = render(&app, 140, 40);
    assert_shows(&screen, &["img0.png  gray→color", "from tiny; datasets/landscapes is not here"]);
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the translation", |a| a.translate.busy.is_none());
    assert_shows(&render(&app, 140, 40), &["Input 40×36", "Translation → color"]);
    // A dataset image's translation is saved under the checkpoints folder, not in the dataset.
    press(&mut app, KeyCode::Char('s'));
    settle(&mut app, &rx, "the save", |a| a.status.as_ref().is_some_and(|s| s.text.contains("saved")));
    assert!(tmp.path().join("checkpoints/built-in/translations/img0.color.png").is_file());
}

#[test]
fn help_lists_keys_and_any_key_closes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut app, _rx) = studio(tmp.path());
    press(&mut app, KeyCode::Char('?'));
    assert_shows(&render(&app, 130, 50), &["Keys", "switch screen", "pause / resume", "beside the input"]);
    press(&mut app, KeyCode::Char('x'));
    assert!(!app.show_help);
    // Ctrl-C quits at once when nothing is training.
    app.handle(AppEvent::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    assert!(app.should_quit());
}

#[test]
fn pause_and_stop_work_from_other_screens() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    let control = RunControl::default();
    app.training.run = Some(RunMonitor::new("demo".into(), control.clone()));
    app.handle(AppEvent::Train(TrainEvent::Started { step: 0, total_steps: 10, device: "cpu".into(), note: None }));
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(app.screen, Screen::Datasets);
    assert_shows(&render(&app, 120, 40), &["p pause run", "x stop run"]);
    press(&mut app, KeyCode::Char('p'));
    assert!(control.pause.load(Ordering::SeqCst));
    press(&mut app, KeyCode::Char('p'));
    assert!(!control.pause.load(Ordering::SeqCst));
    press(&mut app, KeyCode::Char('x'));
    assert!(control.stop.load(Ordering::SeqCst));
    assert_shows(&render(&app, 120, 40), &["saving a checkpoint"]);
}

#[test]
fn quitting_waits_for_a_dataset_being_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    // As if a creation job had been started from the form.
    app.datasets.creating = 1;
    press(&mut app, KeyCode::Char('q'));
    assert!(!app.should_quit());
    assert_shows(&render(&app, 120, 40), &["quitting: the dataset is being written"]);
    app.handle(AppEvent::Job(JobResult::DatasetCreated(Ok("created".into()))));
    assert!(app.should_quit());
}

#[test]
fn a_resumed_run_charts_its_earlier_steps_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    let run_dir = tmp.path().join("checkpoints/old");
    std::fs::create_dir_all(&run_dir).unwrap();
    let lines: Vec<String> = (1..=6)
        .map(|s| format!(r#"{{"step":{s},"epoch":0,"lr":0.0002,"images_per_sec":1.0,"cycle_a":{},"d_a":0.3}}"#, 4.0 - s as f32 * 0.1))
        .collect();
    std::fs::write(run_dir.join("log.jsonl"), lines.join("\n")).unwrap();
    let mut monitor = RunMonitor::new("old".into(), RunControl::default());
    monitor.run_dir = Some(run_dir);
    app.training.run = Some(monitor);
    // Resumed from the checkpoint at step 4: the log's steps 5 and 6 were never saved.
    app.handle(AppEvent::Train(TrainEvent::Started { step: 4, total_steps: 10, device: "cpu".into(), note: None }));
    let history = &app.training.run.as_ref().unwrap().history;
    let cycle: Vec<_> = history.curves().find(|(name, _)| *name == "cycle A").unwrap().1.to_vec();
    assert_eq!(cycle.iter().map(|p| p.0).collect::<Vec<_>>(), [1.0, 2.0, 3.0, 4.0]);
}

/// Moves the training settings' cursor to `setting`.
fn go_to(app: &mut App, setting: cyclestudio::tui::training::Setting) {
    use cyclestudio::tui::training::Setting;
    press(app, KeyCode::Home);
    for _ in 0..Setting::ALL.iter().position(|&s| s == setting).unwrap() {
        press(app, KeyCode::Down);
    }
}

/// Types `text` into the training setting `setting` and confirms it.
fn set_setting(app: &mut App, setting: cyclestudio::tui::training::Setting, text: &str) {
    go_to(app, setting);
    press(app, KeyCode::Enter);
    for _ in 0..32 {
        press(app, KeyCode::Backspace);
    }
    type_text(app, text);
    press(app, KeyCode::Enter);
}

/// Paired mode, keep-brightness and the GAN weight are set in the studio and reach the run's
/// saved configuration; a GAN weight of 0 without paired mode is refused with the reason.
#[test]
fn studio_starts_a_paired_keep_luma_regression() {
    use cyclestudio::tui::training::{RunState, Setting};
    let tmp = tempfile::tempdir().unwrap();
    tiny_dataset(&tmp.path().join("datasets"));
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    press(&mut app, KeyCode::Char('2'));
    assert_shows(&render(&app, 120, 40), &["Paired mode", "Keep brightness", "GAN weight"]);
    for (setting, value) in [(Setting::Generator, "resnet_2blocks"), (Setting::Ngf, "4"), (Setting::Size, "32"), (Setting::Iters, "2"), (Setting::DecayIters, "0"), (Setting::LambdaGan, "0")] {
        set_setting(&mut app, setting, value);
    }
    press(&mut app, KeyCode::Char('s'));
    assert_shows(&render(&app, 120, 40), &["needs --paired"]);
    assert!(app.training.run.is_none());

    for setting in [Setting::Paired, Setting::KeepLuma] {
        go_to(&mut app, setting);
        press(&mut app, KeyCode::Right);
    }
    assert_shows(&render(&app, 120, 40), &["on: L1 to the true pair", "on: predict only colour"]);
    press(&mut app, KeyCode::Char('s'));
    settle(&mut app, &rx, "the run", |a| a.training.run.as_ref().is_some_and(|r| !r.state.is_active()));
    assert_eq!(app.training.run.as_ref().unwrap().state, RunState::Finished);
    let name = &app.training.run.as_ref().unwrap().name;
    let config = std::fs::read_to_string(tmp.path().join("checkpoints").join(name).join("config.toml")).unwrap();
    for line in ["paired = true", "keep_luma = true", "lambda_gan = 0.0", "lambda_paired = 10.0"] {
        assert!(config.contains(line), "{line} not in\n{config}");
    }
}

/// Typed settings are values: text that is not one stays in the editor with the reason, and the
/// form keeps its last good value.
#[test]
fn a_setting_that_is_not_a_number_stays_in_the_editor() {
    use cyclestudio::tui::training::Setting;
    let tmp = tempfile::tempdir().unwrap();
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    press(&mut app, KeyCode::Char('2'));
    let before = app.training.form.ngf;
    set_setting(&mut app, Setting::Ngf, "many");
    assert_shows(&render(&app, 120, 40), &["ngf must be a number, not 'many'"]);
    assert!(app.training.form.editing.is_some());
    assert_eq!(app.training.form.ngf, before);
    press(&mut app, KeyCode::Esc);
    set_setting(&mut app, Setting::Ngf, "12");
    assert!(app.training.form.editing.is_none());
    assert_eq!(app.training.form.ngf, 12);
    set_setting(&mut app, Setting::Generator, "vgg");
    assert_shows(&render(&app, 120, 40), &["unknown generator 'vgg'"]);
}

/// The model setting starts a CUT run: its config says so and the dashboard draws its own loss
/// curves (NCE terms, D_B; no cycle or D_A curves).
#[test]
fn studio_trains_a_cut_model_with_its_own_loss_curves() {
    use cyclestudio::tui::training::{RunState, Setting};
    let tmp = tempfile::tempdir().unwrap();
    tiny_dataset(&tmp.path().join("datasets"));
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    press(&mut app, KeyCode::Char('2'));
    for (setting, value) in [(Setting::Generator, "resnet_2blocks"), (Setting::Ngf, "4"), (Setting::Size, "32"), (Setting::Iters, "2"), (Setting::DecayIters, "0")] {
        set_setting(&mut app, setting, value);
    }
    go_to(&mut app, Setting::Method);
    press(&mut app, KeyCode::Right);
    assert_shows(&render(&app, 120, 40), &["cut: one generator A→B, PatchNCE"]);
    press(&mut app, KeyCode::Char('s'));
    settle(&mut app, &rx, "the run", |a| a.training.run.as_ref().is_some_and(|r| !r.state.is_active()));
    let run = app.training.run.as_ref().unwrap();
    assert_eq!(run.state, RunState::Finished);
    let config = std::fs::read_to_string(tmp.path().join("checkpoints").join(&run.name).join("config.toml")).unwrap();
    assert!(config.contains("method = \"cut\""), "{config}");
    let curves: Vec<&str> = run.history.curves().map(|(n, _)| n).collect();
    for name in ["G_AB adv", "NCE", "NCE idt", "D_B"] {
        assert!(curves.contains(&name), "{name} not in {curves:?}");
    }
    for name in ["cycle A", "D_A", "G_BA adv"] {
        assert!(!curves.contains(&name), "{name} in {curves:?}");
    }
}

/// The device setting lists the CUDA devices the studio can use, or says why there are none; in
/// a build without CUDA, ←/→ explains instead of offering a device that cannot open.
#[test]
fn device_setting_lists_cuda_devices_or_says_there_are_none() {
    use cyclestudio::tui::training::{device_choices, Setting};
    let tmp = tempfile::tempdir().unwrap();
    let (mut app, rx) = studio(tmp.path());
    settle(&mut app, &rx, "the dataset scan", |a| !a.datasets.scanning);
    press(&mut app, KeyCode::Char('2'));
    let note = device_choices().note();
    // The row may cut a long reason off.
    assert_shows(&render(&app, 160, 40), &[&format!("cpu  ({}", note.chars().take(20).collect::<String>())]);
    go_to(&mut app, Setting::Device);
    press(&mut app, KeyCode::Right);
    if cfg!(feature = "cuda") {
        return; // what follows depends on the machine's devices
    }
    assert_eq!(app.training.form.device, "cpu");
    assert_shows(&render(&app, 160, 40), &["only the CPU: this build has no CUDA"]);
}

/// An imported model (a folder with `model.toml` and no training config) is listed on the
/// Translate screen with what it is, and loads there; the Training screen does not offer to
/// resume it.
#[test]
fn an_imported_model_is_listed_and_loads_on_the_translate_screen() {
    use cyclestudio::interop::{import, ImportRequest};
    let tmp = tempfile::tempdir().unwrap();
    let req = ImportRequest {
        run_dir: tmp.path().join("checkpoints/horse2zebra"),
        g_ab: common::fixture_path("resnet_import.pth"),
        g_ba: None,
        domains: ["horse".into(), "zebra".into()],
        generator: None,
    };
    import(&req).unwrap();
    let (mut app, rx) = studio(tmp.path());
    press(&mut app, KeyCode::Char('3'));
    assert_shows(&render(&app, 140, 40), &["horse2zebra", "horse→zebra · resnet_2blocks ngf 8 · import"]);
    press(&mut app, KeyCode::Enter);
    settle(&mut app, &rx, "the model", |a| !matches!(a.translate.model, ModelState::Loading(_)));
    assert!(matches!(app.translate.model, ModelState::Ready(_)), "the imported model did not load");
    assert!(app.runs.iter().all(|r| r.name != "horse2zebra" || r.config.is_err()));
}

#[test]
fn the_sweeps_screen_fills_as_trials_finish_and_opens_the_best_on_translate() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/demo");
    let sweep = |shard: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cyclestudio"))
            .current_dir(tmp.path())
            .args(["sweep", "--dataset", demo.to_str().unwrap(), "--name", "widths", "--vary", "ngf=4,8", "--shard", shard, "--"])
            .args(["--generator", "resnet_6blocks", "--ndf", "4", "--size", "32", "--iters", "2", "--decay-iters", "0"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // The first trial only, as a sweep under way leaves it.
    sweep("1/2");
    let (mut app, rx) = studio(tmp.path());
    press(&mut app, KeyCode::Char('4'));
    let screen = render(&app, 140, 30);
    assert_shows(&screen, &["Sweeps in", "widths", "1/2 trials scored · by psnr", "Leaderboard of widths", "t01", "finished"]);
    assert!(!screen.contains("t02"), "{screen}");

    // The second finishes: a rescan (every 2 s on a tick, or r) shows it, ranked.
    sweep("2/2");
    press(&mut app, KeyCode::Char('r'));
    let screen = render(&app, 140, 30);
    assert_shows(&screen, &["2/2 trials scored", "t02"]);
    let best = app.sweeps.selected().unwrap().trials[0].trial.clone();

    // b: the best trial on the Translate screen, loaded, with the demo's test images.
    press(&mut app, KeyCode::Char('b'));
    assert_eq!(app.screen, Screen::Translate);
    settle(&mut app, &rx, "the trial's model", |a| !matches!(a.translate.model, ModelState::Loading(_)));
    let ModelState::Ready(model) = &app.translate.model else { panic!("not loaded: {}", render(&app, 140, 30)) };
    assert_eq!(model.run_name, format!("widths/{best}"));
    assert_shows(&render(&app, 140, 30), &[&format!("widths/{best}"), "Test images of widths/"]);
}
