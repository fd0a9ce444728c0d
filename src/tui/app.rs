//! The studio's state and how each event changes it. Nothing here draws or reads the terminal, so
//! tests drive an [`App`] with [`AppEvent`]s and render it with ratatui's `TestBackend`.

use super::datasets::DatasetsScreen;
use super::event::{AppEvent, JobResult};
use super::runs::{scan_runs, RunEntry};
use super::training::TrainingScreen;
use super::translate::TranslateScreen;
use super::TuiOptions;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::sync::mpsc::Sender;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Datasets,
    Training,
    Translate,
}

impl Screen {
    pub const ALL: [Screen; 3] = [Screen::Datasets, Screen::Training, Screen::Translate];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Datasets => "Datasets",
            Screen::Training => "Training",
            Screen::Translate => "Translate",
        }
    }

    pub fn index(self) -> usize {
        Screen::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// The message line under every screen.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusLine {
    pub text: String,
    pub is_error: bool,
}

/// How far quitting has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quit {
    No,
    /// Waiting for the running training to save its checkpoint and for dataset creations to
    /// finish writing.
    WhenIdle,
    Now,
}

pub struct App {
    pub screen: Screen,
    pub show_help: bool,
    pub status: Option<StatusLine>,
    pub datasets: DatasetsScreen,
    pub training: TrainingScreen,
    pub translate: TranslateScreen,
    /// The runs in the checkpoints folder (for resuming and translating).
    pub runs: Vec<RunEntry>,
    pub options: TuiOptions,
    /// Where worker threads send their results.
    pub(super) events: Sender<AppEvent>,
    quit: Quit,
    input_error: Option<String>,
}

impl App {
    /// A studio showing the Datasets screen; the datasets are scanned in the background.
    pub fn new(options: TuiOptions, events: Sender<AppEvent>) -> Self {
        let mut app = Self {
            screen: Screen::Datasets,
            show_help: false,
            status: None,
            datasets: DatasetsScreen::default(),
            training: TrainingScreen::default(),
            translate: TranslateScreen::default(),
            runs: scan_runs(&options.checkpoints),
            options,
            events,
            quit: Quit::No,
            input_error: None,
        };
        app.rescan_datasets();
        app
    }

    pub fn should_quit(&self) -> bool {
        self.quit == Quit::Now
    }

    /// Why reading the terminal failed, if it did (the studio then quits).
    pub fn input_error(&self) -> Option<&str> {
        self.input_error.as_deref()
    }

    pub fn set_info(&mut self, text: String) {
        self.status = Some(StatusLine { text, is_error: false });
    }

    pub fn set_error(&mut self, text: String) {
        self.status = Some(StatusLine { text, is_error: true });
    }

    pub fn refresh_runs(&mut self) {
        self.runs = scan_runs(&self.options.checkpoints);
        self.translate.run_index = self.translate.run_index.min(self.runs.len().saturating_sub(1));
    }

    /// Whether keys go into a text field (so `q`, digits and Tab are typed, not commands).
    pub fn captures_text(&self) -> bool {
        match self.screen {
            Screen::Datasets => self.datasets_capture_text(),
            Screen::Training => self.training_capture_text(),
            Screen::Translate => self.translate_capture_text(),
        }
    }

    pub fn handle(&mut self, event: AppEvent) {
        match event {
            AppEvent::Key(key) => self.key(key),
            AppEvent::Tick => {}
            AppEvent::InputFailed(why) => {
                self.input_error = Some(why);
                self.request_quit(false);
            }
            AppEvent::Train(e) => self.training_event(e),
            AppEvent::TrainingEnded(outcome) => {
                self.training_ended(outcome);
                self.quit_if_idle();
            }
            AppEvent::Job(job) => match job {
                JobResult::DatasetsScanned(result) => self.datasets_scanned(result),
                JobResult::ImageLoaded { request, result } => self.dataset_image_loaded(request, result),
                JobResult::DatasetCreated(result) => {
                    self.dataset_created(result);
                    self.quit_if_idle();
                }
                JobResult::ModelLoaded { request, result } => self.model_loaded(request, result),
                JobResult::Translated { request, result } => self.translated(request, result),
                JobResult::TranslationSaved(result) => self.translation_saved(result),
            },
        }
    }

    fn key(&mut self, key: KeyEvent) {
        // Raw mode delivers Ctrl-C as a key: it means quit, everywhere.
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return self.request_quit(true);
        }
        if self.show_help {
            self.show_help = false;
            return;
        }
        if self.captures_text() {
            return self.screen_key(key);
        }
        match key.code {
            KeyCode::Char('q') => self.request_quit(false),
            KeyCode::Char('?') => self.show_help = true,
            KeyCode::Tab => self.switch_to(Screen::ALL[(self.screen.index() + 1) % Screen::ALL.len()]),
            KeyCode::BackTab => self.switch_to(Screen::ALL[(self.screen.index() + Screen::ALL.len() - 1) % Screen::ALL.len()]),
            KeyCode::Char(c @ '1'..='3') => self.switch_to(Screen::ALL[c as usize - '1' as usize]),
            KeyCode::Char('p' | 'x') if self.run_control_key(key.code) => {}
            _ => self.screen_key(key),
        }
    }

    fn screen_key(&mut self, key: KeyEvent) {
        match self.screen {
            Screen::Datasets => self.datasets_key(key),
            Screen::Training => self.training_key(key),
            Screen::Translate => self.translate_key(key),
        }
    }

    pub fn switch_to(&mut self, screen: Screen) {
        self.screen = screen;
        if screen != Screen::Datasets {
            // Runs appear from the CLI too; the folder is small, so look again.
            self.refresh_runs();
        }
    }

    /// Quits, stopping a running training first and waiting for its checkpoint and for dataset
    /// creations in progress. A second Ctrl-C while waiting quits at once (the previous
    /// checkpoint stays intact).
    fn request_quit(&mut self, ctrl_c: bool) {
        if self.quit == Quit::WhenIdle && ctrl_c {
            self.quit = Quit::Now;
            return;
        }
        let training = self.stop_training() || self.training.is_running();
        let creating = self.datasets.creating > 0;
        if !(training || creating) {
            self.quit = Quit::Now;
            return;
        }
        self.quit = Quit::WhenIdle;
        let waiting = match (training, creating) {
            (true, true) => "the training saves a checkpoint and the dataset is being written",
            (true, false) => "the training saves a checkpoint first",
            _ => "the dataset is being written",
        };
        self.set_info(format!("quitting: {waiting} (Ctrl-C again quits at once)"));
    }

    fn quit_if_idle(&mut self) {
        if self.quit == Quit::WhenIdle && !self.training.is_running() && self.datasets.creating == 0 {
            self.quit = Quit::Now;
        }
    }
}

/// Moves a list cursor for ↑↓/jk, PageUp/PageDown and Home/End; says whether the key was one.
pub fn move_cursor(cursor: &mut usize, count: usize, code: KeyCode) -> bool {
    let last = count.saturating_sub(1);
    *cursor = match code {
        KeyCode::Up | KeyCode::Char('k') => cursor.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => (*cursor + 1).min(last),
        KeyCode::PageUp => cursor.saturating_sub(10),
        KeyCode::PageDown => (*cursor + 10).min(last),
        KeyCode::Home => 0,
        KeyCode::End => last,
        _ => return false,
    };
    true
}
