//! The Translate screen: its state, its keys and what they do: choosing a trained run (or the
//! built-in model) and an image, translating on a worker thread (see [`super::models`]), and
//! saving the result beside the input without ever overwriting a file.

use super::action::{Action, Ctx};
use super::event::{spawn_job, AppEvent, JobResult};
use super::form::{complete_path, expand_home, PathKind, TextInput};
use super::keys::{self, move_cursor, Hint, KeyBinding, LIST_MOVES};
use super::models::{load_model, save_new_png, translate_file, LoadedModel, Translation, BUILTIN_NAME};
use super::preview::ShownImage;
use crate::train::request::DEFAULT_DEVICE;
use crate::translate::ModelSource;
use anyhow::Context;
use crossterm::event::{KeyCode, KeyEvent};
use std::path::PathBuf;

/// What the Translate screen is doing, which decides what its keys do (and which are hinted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No model loaded (none chosen yet, loading, or failed).
    NoModel,
    /// A model is ready to translate.
    Ready,
    /// A path is being typed (o).
    Path,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Move,
    FocusModels,
    FocusImages,
    /// Loads the selected model, or translates the selected image.
    Enter,
    OpenPath,
    Target,
    Save,
    Rescan,
    Complete,
    /// Translates the typed path.
    Translate,
    Cancel,
    /// Typed into the path (unbound keys).
    Type,
}

/// The Translate screen's keys. Some work in both list modes but are hinted only when a model is
/// ready (or only when none is), so they are declared once per mode.
pub const KEYS: &[KeyBinding<Command, Mode>] = {
    use Command::*;
    use KeyCode::{Char, Enter as EnterKey, Esc, Left, Right, Tab};
    use Mode::*;
    const LISTS: &[Mode] = &[NoModel, Ready];
    &[
        KeyBinding { keys: "Tab", codes: &[Tab], help: "", hint: Some(("Tab", "complete")), modes: &[Path], command: Complete },
        KeyBinding { keys: "Enter", codes: &[EnterKey], help: "", hint: Some(("Enter", "translate")), modes: &[Path], command: Translate },
        KeyBinding { keys: "Esc", codes: &[Esc], help: "", hint: Some(("Esc", "cancel")), modes: &[Path], command: Cancel },
        KeyBinding { keys: "↑ ↓", codes: LIST_MOVES, help: "", hint: Some(("↑↓", "select")), modes: LISTS, command: Move },
        KeyBinding {
            keys: "← → or h l",
            codes: &[Left, Char('h')],
            help: "move between models and images",
            hint: Some(("←→", "models/images")),
            modes: &[Ready],
            command: FocusModels,
        },
        KeyBinding { keys: "← or h", codes: &[Left, Char('h')], help: "", hint: None, modes: &[NoModel], command: FocusModels },
        KeyBinding { keys: "→ or l", codes: &[Right, Char('l')], help: "", hint: None, modes: LISTS, command: FocusImages },
        KeyBinding {
            keys: "Enter",
            codes: &[EnterKey],
            help: "load the model / translate the image",
            hint: Some(("Enter", "load/translate")),
            modes: &[Ready],
            command: Enter,
        },
        KeyBinding { keys: "Enter", codes: &[EnterKey], help: "", hint: Some(("Enter", "load model")), modes: &[NoModel], command: Enter },
        KeyBinding {
            keys: "o",
            codes: &[Char('o')],
            help: "open any image by path (Tab completes)",
            hint: Some(("o", "open path")),
            modes: &[Ready],
            command: OpenPath,
        },
        // Without a model: says to choose one first.
        KeyBinding { keys: "o", codes: &[Char('o')], help: "", hint: None, modes: &[NoModel], command: OpenPath },
        KeyBinding {
            keys: "t",
            codes: &[Char('t')],
            help: "target domain for opened images",
            hint: Some(("t", "target")),
            modes: &[Ready],
            command: Target,
        },
        KeyBinding {
            keys: "s",
            codes: &[Char('s')],
            help: "save the result as <name>.<domain>.png beside the input",
            hint: Some(("s", "save result")),
            modes: &[Ready],
            command: Save,
        },
        KeyBinding { keys: "s", codes: &[Char('s')], help: "", hint: None, modes: &[NoModel], command: Save },
        KeyBinding {
            keys: "r",
            codes: &[Char('r')],
            help: "rescan the checkpoints folder",
            hint: Some(("r", "rescan runs")),
            modes: &[NoModel],
            command: Rescan,
        },
        KeyBinding { keys: "r", codes: &[Char('r')], help: "", hint: None, modes: &[Ready], command: Rescan },
    ]
};

/// A translation as the screen shows it.
pub struct TranslationView {
    pub source: PathBuf,
    pub target: String,
    pub save_to: PathBuf,
    pub input: ShownImage,
    pub output: ShownImage,
    pub seconds: f64,
}

pub enum ModelState {
    None,
    Loading(String),
    Ready(LoadedModel),
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Focus {
    #[default]
    Runs,
    Images,
}

pub struct TranslateScreen {
    pub focus: Focus,
    pub run_index: usize,
    pub model: ModelState,
    model_request: u64,
    pub image_index: usize,
    /// A path being typed (o), translated to `typed_target`.
    pub path_input: Option<TextInput>,
    pub completions: Vec<String>,
    /// Target domain for typed paths (None: the model's first target).
    pub typed_target: Option<String>,
    /// What is being worked on, e.g. "translating x.png…".
    pub busy: Option<String>,
    /// The running translation's (stage, done, total), once it reports any (tiled images only).
    pub progress: Option<(&'static str, u64, u64)>,
    pub result: Option<TranslationView>,
    translate_request: u64,
}

impl Default for TranslateScreen {
    fn default() -> Self {
        Self {
            focus: Focus::Runs,
            run_index: 0,
            model: ModelState::None,
            model_request: 0,
            image_index: 0,
            path_input: None,
            completions: Vec::new(),
            typed_target: None,
            busy: None,
            progress: None,
            result: None,
            translate_request: 0,
        }
    }
}

impl TranslateScreen {
    /// The domain a typed path is translated to.
    pub fn typed_target(&self) -> Option<String> {
        let ModelState::Ready(model) = &self.model else { return None };
        let targets = model.translator.targets();
        self.typed_target.clone().filter(|t| targets.contains(&t.as_str())).or_else(|| targets.first().map(|t| t.to_string()))
    }

    pub fn mode(&self) -> Mode {
        match (&self.path_input, &self.model) {
            (Some(_), _) => Mode::Path,
            (None, ModelState::Ready(_)) => Mode::Ready,
            (None, _) => Mode::NoModel,
        }
    }

    /// Whether the screen wants every key typed into a field.
    pub fn captures_text(&self) -> bool {
        self.path_input.is_some()
    }

    /// The footer hints for the keys active now.
    pub fn hints(&self) -> Vec<Hint> {
        keys::hints(KEYS, self.mode()).collect()
    }

    /// The runs were scanned again: the cursor stays within the list.
    pub fn runs_refreshed(&mut self, runs: usize) {
        self.run_index = self.run_index.min(runs.saturating_sub(1));
    }

    pub fn key(&mut self, key: KeyEvent, ctx: &Ctx) -> Vec<Action> {
        let mode = self.mode();
        let command = keys::command(KEYS, mode, key.code);
        if mode == Mode::Path {
            return self.path_input_key(command.unwrap_or(Command::Type), key, ctx);
        }
        match command {
            Some(Command::Move) => {
                match self.focus {
                    // The built-in model follows the runs.
                    Focus::Runs => move_cursor(&mut self.run_index, ctx.runs.len() + 1, key.code),
                    Focus::Images => {
                        let count = if let ModelState::Ready(m) = &self.model { m.images.len() } else { 0 };
                        move_cursor(&mut self.image_index, count, key.code)
                    }
                };
            }
            Some(Command::FocusModels) => self.focus = Focus::Runs,
            Some(Command::FocusImages) => self.focus = Focus::Images,
            Some(Command::Enter) if self.focus == Focus::Runs => return self.load_selected_model(ctx),
            Some(Command::Enter) => {
                let chosen = match &self.model {
                    ModelState::Ready(m) => m.images.get(self.image_index).cloned(),
                    _ => None,
                };
                if let Some(image) = chosen {
                    self.start_translation(image.path, image.to, ctx);
                }
            }
            Some(Command::OpenPath) => match self.model {
                ModelState::Ready(_) => self.path_input = Some(TextInput::default()),
                _ => return vec![Action::Error("choose a model first (Enter on a run)".into())],
            },
            Some(Command::Target) => {
                if let ModelState::Ready(model) = &self.model {
                    let targets: Vec<String> = model.translator.targets().iter().map(|t| t.to_string()).collect();
                    let current = self.typed_target().and_then(|t| targets.iter().position(|x| *x == t)).unwrap_or(0);
                    self.typed_target = targets.get((current + 1) % targets.len().max(1)).cloned();
                }
            }
            Some(Command::Save) => return self.save_translation(ctx),
            Some(Command::Rescan) => return vec![Action::RefreshRuns],
            _ => {}
        }
        vec![]
    }

    fn path_input_key(&mut self, command: Command, key: KeyEvent, ctx: &Ctx) -> Vec<Action> {
        let Some(input) = &mut self.path_input else { return vec![] };
        match command {
            Command::Cancel => {
                self.path_input = None;
                self.completions.clear();
            }
            Command::Complete => {
                let completion = complete_path(&input.value, PathKind::FoldersAndFiles);
                input.value = completion.value;
                self.completions = completion.candidates;
            }
            Command::Translate => {
                let path = expand_home(input.value.trim());
                self.path_input = None;
                self.completions.clear();
                match self.typed_target() {
                    Some(target) => self.start_translation(path, target, ctx),
                    None => return vec![Action::Error("choose a model first (Enter on a run)".into())],
                }
            }
            _ => {
                if input.edit(&key, |_| true) {
                    self.completions.clear();
                }
            }
        }
        vec![]
    }

    /// Selects the run named `name` and loads it (a trial chosen on the Sweeps screen).
    pub fn open_run(&mut self, name: &str, ctx: &Ctx) -> Vec<Action> {
        match ctx.runs.iter().position(|r| r.name == name) {
            Some(i) => {
                self.run_index = i;
                self.load_selected_model(ctx)
            }
            None => vec![Action::Error(format!("run {name} is not in {}", ctx.options.checkpoints.display()))],
        }
    }

    fn load_selected_model(&mut self, ctx: &Ctx) -> Vec<Action> {
        let (name, source, device) = match ctx.runs.get(self.run_index) {
            Some(run) => match (&run.config, &run.spec, run.checkpoint_step) {
                (Err(e), None, _) => return vec![Action::Error(format!("run {}: {e}", run.name))],
                (_, _, None) => return vec![Action::Error(format!("run {} has no checkpoint yet", run.name))],
                // A model trained here opens on its training device; an imported one on the CPU.
                (config, _, Some(_)) => (
                    run.name.clone(),
                    ModelSource::Dir(run.dir.clone()),
                    config.as_ref().map_or_else(|_| DEFAULT_DEVICE.to_string(), |c| c.device.clone()),
                ),
            },
            None => (BUILTIN_NAME.to_string(), ModelSource::BuiltIn, DEFAULT_DEVICE.to_string()),
        };
        let save_dir = match &source {
            ModelSource::Dir(d) => d.clone(),
            ModelSource::BuiltIn => ctx.options.checkpoints.join("built-in"),
        };
        let others: Vec<PathBuf> = ctx.datasets.iter().map(|d| d.dir.clone()).collect();
        self.model_request += 1;
        let request = self.model_request;
        self.model = ModelState::Loading(name.clone());
        self.image_index = 0;
        self.focus = Focus::Images;
        spawn_job(ctx.events, move || load_model(name, source, device, others, save_dir), move |result| JobResult::ModelLoaded { request, result });
        vec![]
    }

    pub fn model_loaded(&mut self, request: u64, result: Result<LoadedModel, String>) {
        if request != self.model_request {
            return;
        }
        self.model = match result {
            Ok(model) => ModelState::Ready(model),
            Err(e) => ModelState::Failed(e),
        };
    }

    fn start_translation(&mut self, source: PathBuf, target: String, ctx: &Ctx) {
        let ModelState::Ready(model) = &self.model else { return };
        let translator = model.translator.clone();
        let save_dir = model.save_dir.clone();
        self.translate_request += 1;
        let request = self.translate_request;
        self.busy = Some(format!("translating {} to {target}…", source.display()));
        self.progress = None;
        let events = ctx.events.clone();
        let progress = crate::translate::TileProgress(std::sync::Arc::new(move |stage, done, total| {
            let _ = events.send(AppEvent::Job(JobResult::TranslationProgress { request, stage, done, total }));
        }));
        spawn_job(
            ctx.events,
            move || translate_file(&translator, &save_dir, source, target, progress),
            move |result| JobResult::Translated { request, result },
        );
    }

    /// A running translation's progress (large images go in tiles, which can take minutes).
    pub fn progressed(&mut self, request: u64, stage: &'static str, done: u64, total: u64) {
        if request == self.translate_request && self.busy.is_some() {
            self.progress = Some((stage, done, total));
        }
    }

    pub fn translated(&mut self, request: u64, result: Result<Translation, String>) -> Vec<Action> {
        if request != self.translate_request {
            return vec![];
        }
        self.busy = None;
        self.progress = None;
        match result {
            Ok(t) => {
                self.result = Some(TranslationView {
                    source: t.source,
                    target: t.target,
                    save_to: t.save_to,
                    input: ShownImage::new(t.input),
                    output: ShownImage::new(t.output),
                    seconds: t.seconds,
                });
                vec![]
            }
            Err(e) => vec![Action::Error(format!("translation failed: {e}"))],
        }
    }

    fn save_translation(&mut self, ctx: &Ctx) -> Vec<Action> {
        let Some(result) = &self.result else {
            return vec![Action::Error("nothing to save yet: translate an image first".into())];
        };
        let path = result.save_to.clone();
        let image = result.output.image.clone();
        spawn_job(
            ctx.events,
            move || {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                save_new_png(&image, path)
            },
            JobResult::TranslationSaved,
        );
        vec![]
    }

    pub fn saved(&self, result: Result<PathBuf, String>) -> Vec<Action> {
        match result {
            Ok(path) => vec![Action::Info(format!("saved {}", path.display()))],
            Err(e) => vec![Action::Error(format!("not saved: {e}"))],
        }
    }
}
