//! The thin [`App`]: which screen is shown, the status line, the help overlay and quitting. It
//! owns the screens and what they share (options, runs, the event channel), routes keys and
//! events to the screens, and applies the [`Action`]s they return. It declares the keys that work
//! everywhere. Nothing here draws or reads the terminal, so tests drive an [`App`] with
//! [`AppEvent`]s and render it with ratatui's `TestBackend`.

use super::action::{Action, Ctx};
use super::datasets::{self, DatasetsScreen};
use super::event::{AppEvent, JobResult};
use super::keys::{self, Hint, KeyBinding};
use super::options::TuiOptions;
use super::runs::{scan_runs, RunEntry};
use super::sweeps::{self, SweepsScreen};
use super::training::{self, TrainingScreen, TrainingView};
use super::translate::{self, TranslateScreen};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::sync::mpsc::Sender;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Datasets,
    Training,
    Translate,
    Sweeps,
}

impl Screen {
    pub const ALL: [Screen; 4] = [Screen::Datasets, Screen::Training, Screen::Translate, Screen::Sweeps];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Datasets => "Datasets",
            Screen::Training => "Training",
            Screen::Translate => "Translate",
            Screen::Sweeps => "Sweeps",
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

/// Which of the keys that work everywhere are active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A text field has the keys: only Ctrl-C is not typed.
    Text,
    Commands,
    /// Commands, and a run is active (its dashboard, where `p` and `x` are the Training screen's
    /// own keys, is not shown).
    RunActive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Passed to the screen (and the conventions every screen follows, listed in the help).
    ScreenKey,
    NextScreen,
    PreviousScreen,
    Show(Screen),
    Help,
    Quit,
    PauseRun,
    StopRun,
}

/// The keys that work on every screen (outside text fields), and the conventions the screens
/// share.
pub const KEYS: &[KeyBinding<Command, Mode>] = {
    use Command::*;
    use KeyCode::{BackTab, Char, Tab};
    use Mode::*;
    use Screen::{Datasets, Sweeps, Training, Translate};
    const ANY: &[Mode] = &[Commands, RunActive];
    &[
        // Ctrl-C is checked before any other key (see `App::key`).
        KeyBinding { keys: "Ctrl-C", codes: &[], help: "", hint: Some(("Ctrl-C", "quit")), modes: &[Text], command: Quit },
        KeyBinding { keys: "p", codes: &[Char('p')], help: "", hint: Some(("p", "pause run")), modes: &[RunActive], command: PauseRun },
        KeyBinding { keys: "x", codes: &[Char('x')], help: "", hint: Some(("x", "stop run")), modes: &[RunActive], command: StopRun },
        KeyBinding {
            keys: "Tab / Shift-Tab, 1 2 3 4",
            codes: &[Tab],
            help: "switch screen (Datasets, Training, Translate, Sweeps)",
            hint: Some(("Tab/1-4", "screens")),
            modes: ANY,
            command: NextScreen,
        },
        KeyBinding { keys: "Shift-Tab", codes: &[BackTab], help: "", hint: None, modes: ANY, command: PreviousScreen },
        KeyBinding { keys: "1", codes: &[Char('1')], help: "", hint: None, modes: ANY, command: Show(Datasets) },
        KeyBinding { keys: "2", codes: &[Char('2')], help: "", hint: None, modes: ANY, command: Show(Training) },
        KeyBinding { keys: "3", codes: &[Char('3')], help: "", hint: None, modes: ANY, command: Show(Translate) },
        KeyBinding { keys: "4", codes: &[Char('4')], help: "", hint: None, modes: ANY, command: Show(Sweeps) },
        KeyBinding { keys: "↑ ↓ or j k, PgUp PgDn, Home End", codes: &[], help: "move in lists", hint: None, modes: &[], command: ScreenKey },
        KeyBinding { keys: "Enter", codes: &[], help: "select / edit / confirm", hint: None, modes: &[], command: ScreenKey },
        KeyBinding { keys: "Esc", codes: &[], help: "back, cancel, close", hint: None, modes: &[], command: ScreenKey },
        KeyBinding { keys: "?", codes: &[Char('?')], help: "this help", hint: Some(("?", "help")), modes: ANY, command: Help },
        KeyBinding {
            keys: "q, Ctrl-C",
            codes: &[Char('q')],
            help: "quit (a running training is stopped and saved first; Ctrl-C twice quits at once)",
            hint: Some(("q", "quit")),
            modes: ANY,
            command: Quit,
        },
    ]
};

/// The help overlay's sections: the keys that work everywhere, then each screen's.
pub fn help_sections() -> [(&'static str, Vec<Hint>); 5] {
    [
        ("Everywhere", keys::help(KEYS)),
        (Screen::Datasets.title(), keys::help(datasets::KEYS)),
        (Screen::Training.title(), keys::help(training::KEYS)),
        (Screen::Translate.title(), keys::help(translate::KEYS)),
        (Screen::Sweeps.title(), keys::help(sweeps::KEYS)),
    ]
}

pub struct App {
    pub screen: Screen,
    pub show_help: bool,
    pub status: Option<StatusLine>,
    pub datasets: DatasetsScreen,
    pub training: TrainingScreen,
    pub translate: TranslateScreen,
    pub sweeps: SweepsScreen,
    /// The runs in the checkpoints folder (for resuming and translating).
    pub runs: Vec<RunEntry>,
    pub options: TuiOptions,
    /// Where worker threads send their results.
    events: Sender<AppEvent>,
    quit: Quit,
    input_error: Option<String>,
    /// The terminal failed (closed under the studio): a SIGHUP that comes with that is the same
    /// event, not a second interrupt that should quit at once.
    terminal_lost: bool,
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
            sweeps: SweepsScreen::default(),
            runs: scan_runs(&options.checkpoints),
            options,
            events,
            quit: Quit::No,
            input_error: None,
            terminal_lost: false,
        };
        app.datasets.rescan(&app.options.datasets, &app.events);
        app
    }

    /// What the screens may read while drawing or handling a key.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx { options: &self.options, runs: &self.runs, datasets: &self.datasets.entries, events: &self.events }
    }

    pub fn should_quit(&self) -> bool {
        self.quit == Quit::Now
    }

    /// Whether the studio is quitting, waiting for a training to save or a dataset to be written.
    pub fn is_quitting(&self) -> bool {
        self.quit != Quit::No
    }

    /// Why reading the terminal failed, if it did (the studio then quits).
    pub fn input_error(&self) -> Option<&str> {
        self.input_error.as_deref()
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Info(text) => self.status = Some(StatusLine { text, is_error: false }),
                Action::Error(text) => self.status = Some(StatusLine { text, is_error: true }),
                Action::RefreshRuns => self.refresh_runs(),
                Action::OpenRun(name) => {
                    self.switch_to(Screen::Translate);
                    let ctx = Ctx { options: &self.options, runs: &self.runs, datasets: &self.datasets.entries, events: &self.events };
                    let more = self.translate.open_run(&name, &ctx);
                    self.apply(more);
                }
            }
        }
    }

    fn refresh_runs(&mut self) {
        self.runs = scan_runs(&self.options.checkpoints);
        self.translate.runs_refreshed(self.runs.len());
        self.training.runs_refreshed(&self.runs);
    }

    /// Whether keys go into a text field (so `q`, digits and Tab are typed, not commands).
    pub fn captures_text(&self) -> bool {
        match self.screen {
            Screen::Datasets => self.datasets.captures_text(),
            Screen::Training => self.training.captures_text(),
            Screen::Translate => self.translate.captures_text(),
            Screen::Sweeps => false,
        }
    }

    fn mode(&self) -> Mode {
        let on_dashboard = self.screen == Screen::Training && self.training.view == TrainingView::Dashboard;
        if self.captures_text() {
            Mode::Text
        } else if self.training.is_running() && !on_dashboard {
            Mode::RunActive
        } else {
            Mode::Commands
        }
    }

    /// The footer: the keys that do something right now, the screen's first.
    pub fn key_hints(&self) -> Vec<Hint> {
        let mut hints = match self.screen {
            Screen::Datasets => self.datasets.hints(),
            Screen::Training => self.training.hints(),
            Screen::Translate => self.translate.hints(),
            Screen::Sweeps => self.sweeps.hints(),
        };
        hints.extend(keys::hints(KEYS, self.mode()));
        hints
    }

    pub fn handle(&mut self, event: AppEvent) {
        let actions = match event {
            AppEvent::Key(key) => return self.key(key),
            AppEvent::Tick => {
                if self.screen == Screen::Sweeps {
                    self.sweeps.tick(&self.options.checkpoints);
                }
                return;
            }
            AppEvent::InputFailed(why) => {
                // After SIGHUP the terminal is gone: reading it fails as expected, not an error.
                if !self.is_quitting() {
                    self.input_error = Some(why);
                }
                self.terminal_lost = true;
                return self.request_quit(false);
            }
            AppEvent::Interrupted => return self.request_quit(!self.terminal_lost),
            AppEvent::Train(e) => self.training.event(e),
            AppEvent::TrainingEnded(outcome) => self.training.ended(outcome),
            AppEvent::Job(job) => match job {
                JobResult::DatasetsScanned(result) => self.datasets.scanned(result),
                JobResult::ImageLoaded { request, result } => {
                    self.datasets.image_loaded(request, result);
                    vec![]
                }
                JobResult::DatasetCreated(result) => self.datasets.created(result, &self.options.datasets, &self.events),
                JobResult::ModelLoaded { request, result } => {
                    self.translate.model_loaded(request, result);
                    vec![]
                }
                JobResult::Translated { request, result } => self.translate.translated(request, result),
                JobResult::TranslationProgress { request, stage, done, total } => {
                    self.translate.progressed(request, stage, done, total);
                    vec![]
                }
                JobResult::TranslationSaved(result) => self.translate.saved(result),
            },
        };
        self.apply(actions);
        // A training or a dataset creation may have been what quitting waited for.
        self.quit_if_idle();
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
        let command = match self.mode() {
            Mode::Text => Command::ScreenKey,
            mode => keys::command(KEYS, mode, key.code).unwrap_or(Command::ScreenKey),
        };
        let n = Screen::ALL.len();
        match command {
            Command::Quit => self.request_quit(false),
            Command::Help => self.show_help = true,
            Command::NextScreen => self.switch_to(Screen::ALL[(self.screen.index() + 1) % n]),
            Command::PreviousScreen => self.switch_to(Screen::ALL[(self.screen.index() + n - 1) % n]),
            Command::Show(screen) => self.switch_to(screen),
            Command::PauseRun => {
                let actions = self.training.run_control(training::Command::Pause);
                self.apply(actions);
            }
            Command::StopRun => {
                let actions = self.training.run_control(training::Command::Stop);
                self.apply(actions);
            }
            Command::ScreenKey => self.screen_key(key),
        }
    }

    fn screen_key(&mut self, key: KeyEvent) {
        // Field by field (not `self.ctx()`): the screen itself is borrowed mutably below.
        let ctx = Ctx { options: &self.options, runs: &self.runs, datasets: &self.datasets.entries, events: &self.events };
        let actions = match self.screen {
            Screen::Datasets => self.datasets.key(key, &self.options.datasets, &self.events),
            Screen::Training => self.training.key(key, &ctx),
            Screen::Translate => self.translate.key(key, &ctx),
            Screen::Sweeps => self.sweeps.key(key, &ctx),
        };
        self.apply(actions);
    }

    pub fn switch_to(&mut self, screen: Screen) {
        self.screen = screen;
        if screen == Screen::Sweeps {
            self.sweeps.rescan(&self.options.checkpoints);
        }
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
        let training = self.training.stop() || self.training.is_running();
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
        self.apply(vec![Action::Info(format!("quitting: {waiting} (Ctrl-C again quits at once)"))]);
    }

    fn quit_if_idle(&mut self) {
        if self.quit == Quit::WhenIdle && !self.training.is_running() && self.datasets.creating == 0 {
            self.quit = Quit::Now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two bindings active in the same mode never claim the same key.
    fn assert_unambiguous<C, M: PartialEq + std::fmt::Debug>(bindings: &[KeyBinding<C, M>]) {
        for (i, a) in bindings.iter().enumerate() {
            for b in &bindings[i + 1..] {
                let mode = a.modes.iter().find(|m| b.modes.contains(m));
                let code = a.codes.iter().find(|c| b.codes.contains(c));
                assert!(mode.is_none() || code.is_none(), "'{}' and '{}' both take {code:?} in {mode:?}", a.keys, b.keys);
            }
        }
    }

    #[test]
    fn every_key_means_one_thing_in_each_mode() {
        assert_unambiguous(KEYS);
        assert_unambiguous(datasets::KEYS);
        assert_unambiguous(training::KEYS);
        assert_unambiguous(translate::KEYS);
        assert_unambiguous(sweeps::KEYS);
    }
}
