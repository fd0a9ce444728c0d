//! The Translate screen's logic: choosing a trained run and an image, translating on a worker
//! thread, and saving the result beside the input without ever overwriting a file.

use crate::train::request::DEFAULT_DEVICE;
use super::app::{move_cursor, App};
use super::event::{spawn_job, JobResult};
use super::form::{complete_path, expand_home, PathKind, TextInput};
use super::preview::ShownImage;
use crate::data::dataset::Check;
use crate::data::{decode_image, Dataset};
use crate::translate::{ModelSource, Translator};
use anyhow::{bail, Context, Result};
use crossterm::event::{KeyCode, KeyEvent};
use image::DynamicImage;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The name the models list gives the grey→colour model built into cyclestudio.
pub const BUILTIN_NAME: &str = "built-in grey→colour";

/// A test image of the model's dataset and the direction it is translated in.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub path: PathBuf,
    pub from: String,
    pub to: String,
}

/// A run's generators, loaded, with the test images of its dataset.
pub struct LoadedModel {
    pub run_name: String,
    pub translator: Arc<Translator>,
    pub images: Vec<TestImage>,
    /// Why there are no test images to choose from, if there are none.
    pub images_note: Option<String>,
    /// Where translations of dataset images are saved (`<folder>/translations/`): the run's
    /// folder, or `<checkpoints>/built-in` for the built-in model.
    pub save_dir: PathBuf,
}

/// One finished translation.
pub struct Translation {
    pub source: PathBuf,
    pub target: String,
    /// Where `s` saves it (see [`output_path`]), decided off the UI thread.
    pub save_to: PathBuf,
    pub input: DynamicImage,
    pub output: DynamicImage,
    pub seconds: f64,
}

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
}

/// The test images of `dataset` that `translator` can translate: those of a domain whose
/// name is one of the model's source domains, going to the model's other domain.
fn test_images(translator: &Translator, dataset: &Dataset) -> Vec<TestImage> {
    let [a, b] = translator.domains();
    let targets = translator.targets();
    let mut images = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        let Some(domain) = [&dataset.a, &dataset.b].into_iter().find(|d| d.spec.name == from) else { continue };
        if targets.contains(&to) {
            images.extend(domain.test.images.iter().map(|(path, _)| TestImage { path: path.clone(), from: from.to_string(), to: to.to_string() }));
        }
    }
    images
}

/// Loads a model (on its training device, or the CPU when that is unavailable) and lists the
/// test images of its dataset; when that dataset is not here, those of the studio's datasets
/// (`others`) with the model's domains.
fn load_model(name: String, source: ModelSource, device: String, others: Vec<PathBuf>, save_dir: PathBuf) -> Result<LoadedModel> {
    let translator = match Translator::open(&source, &device) {
        Err(_) if device != DEFAULT_DEVICE => Translator::open(&source, DEFAULT_DEVICE)?,
        loaded => loaded?,
    };
    // Imported models have no dataset: the studio's datasets with their domains serve then.
    let own = &translator.dataset.clone().unwrap_or_default();
    let (images, images_note) = match Dataset::open(own, Check::Header) {
        Ok(dataset) => {
            let images = test_images(&translator, &dataset);
            let note = images.is_empty().then(|| format!("{} has no test images: press o to open any image", dataset.root.display()));
            (images, note)
        }
        Err(_) => {
            let mut images = Vec::new();
            let mut used = Vec::new();
            for dir in others.iter().filter(|d| *d != own) {
                if let Ok(dataset) = Dataset::open(dir, Check::Header) {
                    let found = test_images(&translator, &dataset);
                    if !found.is_empty() {
                        used.push(dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()));
                        images.extend(found);
                    }
                }
            }
            let note = if images.is_empty() {
                format!("the model's dataset {} is not here and no other dataset has its domains: press o to open any image", own.display())
            } else {
                format!("from {}; {} is not here", used.join(", "), own.display())
            };
            (images, Some(note))
        }
    };
    Ok(LoadedModel { run_name: name, translator: Arc::new(translator), images, images_note, save_dir })
}

fn translate_file(translator: &Translator, save_dir: &Path, source: PathBuf, target: String) -> Result<Translation> {
    let input = decode_image(&source)?;
    let started = Instant::now();
    let output = translator.translate(&target, &input)?;
    let save_to = output_path(&source, &target, save_dir);
    Ok(Translation { source, target, save_to, input, output, seconds: started.elapsed().as_secs_f64() })
}

/// Where a translation of `source` into `target` is saved: `<stem>.<target>.png` beside it, or in
/// the model's `translations/` folder when the source is a dataset image (saved beside it, the
/// result would be scanned as one more image of that domain).
pub fn output_path(source: &Path, target: &str, model_dir: &Path) -> PathBuf {
    let beside = crate::translate::default_output_path(source, target);
    if crate::translate::inside_dataset(source) {
        model_dir.join("translations").join(beside.file_name().unwrap_or_default())
    } else {
        beside
    }
}

/// Writes `image` as a new PNG at `path`; an existing file is an error, never replaced.
fn save_new_png(image: &DynamicImage, path: PathBuf) -> Result<PathBuf> {
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).context("cannot encode the translation as PNG")?;
    // create_new makes "does it exist?" and "create it" one step, so nothing is ever overwritten.
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!("{} already exists; it was left as it is", path.display()),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    if let Err(e) = file.write_all(png.get_ref()).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(&path);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(path)
}

impl App {
    pub(super) fn translate_capture_text(&self) -> bool {
        self.translate.path_input.is_some()
    }

    pub(super) fn translate_key(&mut self, key: KeyEvent) {
        if self.translate.path_input.is_some() {
            return self.path_input_key(key);
        }
        let screen = &mut self.translate;
        let moved = match screen.focus {
            // The built-in model follows the runs.
            Focus::Runs => move_cursor(&mut screen.run_index, self.runs.len() + 1, key.code),
            Focus::Images => {
                let count = if let ModelState::Ready(m) = &screen.model { m.images.len() } else { 0 };
                move_cursor(&mut screen.image_index, count, key.code)
            }
        };
        if moved {
            return;
        }
        match key.code {
            KeyCode::Left | KeyCode::Char('h') => screen.focus = Focus::Runs,
            KeyCode::Right | KeyCode::Char('l') => screen.focus = Focus::Images,
            KeyCode::Enter if screen.focus == Focus::Runs => self.load_selected_model(),
            KeyCode::Enter => {
                let chosen = match &screen.model {
                    ModelState::Ready(m) => m.images.get(screen.image_index).cloned(),
                    _ => None,
                };
                if let Some(image) = chosen {
                    self.start_translation(image.path, image.to);
                }
            }
            KeyCode::Char('o') => match screen.model {
                ModelState::Ready(_) => screen.path_input = Some(TextInput::default()),
                _ => self.set_error("choose a model first (Enter on a run)".into()),
            },
            KeyCode::Char('t') => {
                if let ModelState::Ready(model) = &screen.model {
                    let targets: Vec<String> = model.translator.targets().iter().map(|t| t.to_string()).collect();
                    let current = screen.typed_target().and_then(|t| targets.iter().position(|x| *x == t)).unwrap_or(0);
                    screen.typed_target = targets.get((current + 1) % targets.len().max(1)).cloned();
                }
            }
            KeyCode::Char('s') => self.save_translation(),
            KeyCode::Char('r') => self.refresh_runs(),
            _ => {}
        }
    }

    fn path_input_key(&mut self, key: KeyEvent) {
        let screen = &mut self.translate;
        let Some(input) = &mut screen.path_input else { return };
        match key.code {
            KeyCode::Esc => {
                screen.path_input = None;
                screen.completions.clear();
            }
            KeyCode::Tab => {
                let completion = complete_path(&input.value, PathKind::FoldersAndFiles);
                input.value = completion.value;
                screen.completions = completion.candidates;
            }
            KeyCode::Enter => {
                let path = expand_home(input.value.trim());
                screen.path_input = None;
                screen.completions.clear();
                match screen.typed_target() {
                    Some(target) => self.start_translation(path, target),
                    None => self.set_error("choose a model first (Enter on a run)".into()),
                }
            }
            _ => {
                if input.edit(&key, |_| true) {
                    screen.completions.clear();
                }
            }
        }
    }

    fn load_selected_model(&mut self) {
        let (name, source, device) = match self.runs.get(self.translate.run_index) {
            Some(run) => match (&run.config, &run.spec, run.checkpoint_step) {
                (Err(e), None, _) => return self.set_error(format!("run {}: {e}", run.name)),
                (_, _, None) => return self.set_error(format!("run {} has no checkpoint yet", run.name)),
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
            ModelSource::BuiltIn => self.options.checkpoints.join("built-in"),
        };
        let others: Vec<PathBuf> = self.datasets.entries.iter().map(|d| d.dir.clone()).collect();
        let screen = &mut self.translate;
        screen.model_request += 1;
        let request = screen.model_request;
        screen.model = ModelState::Loading(name.clone());
        screen.image_index = 0;
        screen.focus = Focus::Images;
        spawn_job(&self.events, move || load_model(name, source, device, others, save_dir), move |result| JobResult::ModelLoaded { request, result });
    }

    pub(super) fn model_loaded(&mut self, request: u64, result: Result<LoadedModel, String>) {
        let screen = &mut self.translate;
        if request != screen.model_request {
            return;
        }
        screen.model = match result {
            Ok(model) => ModelState::Ready(model),
            Err(e) => ModelState::Failed(e),
        };
    }

    fn start_translation(&mut self, source: PathBuf, target: String) {
        let screen = &mut self.translate;
        let ModelState::Ready(model) = &screen.model else { return };
        let translator = model.translator.clone();
        let save_dir = model.save_dir.clone();
        screen.translate_request += 1;
        let request = screen.translate_request;
        screen.busy = Some(format!("translating {} to {target}…", source.display()));
        spawn_job(
            &self.events,
            move || translate_file(&translator, &save_dir, source, target),
            move |result| JobResult::Translated { request, result },
        );
    }

    pub(super) fn translated(&mut self, request: u64, result: Result<Translation, String>) {
        if request != self.translate.translate_request {
            return;
        }
        self.translate.busy = None;
        match result {
            Ok(t) => {
                self.translate.result = Some(TranslationView {
                    source: t.source,
                    target: t.target,
                    save_to: t.save_to,
                    input: ShownImage::new(t.input),
                    output: ShownImage::new(t.output),
                    seconds: t.seconds,
                })
            }
            Err(e) => self.set_error(format!("translation failed: {e}")),
        }
    }

    fn save_translation(&mut self) {
        let Some(result) = &self.translate.result else {
            return self.set_error("nothing to save yet: translate an image first".into());
        };
        let path = result.save_to.clone();
        let image = result.output.image.clone();
        spawn_job(
            &self.events,
            move || {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                save_new_png(&image, path)
            },
            JobResult::TranslationSaved,
        );
    }

    pub(super) fn translation_saved(&mut self, result: Result<PathBuf, String>) {
        match result {
            Ok(path) => self.set_info(format!("saved {}", path.display())),
            Err(e) => self.set_error(format!("not saved: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_goes_beside_the_input_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("horse.jpg");
        let out = output_path(&source, "zebra", &tmp.path().join("model"));
        assert_eq!(out, tmp.path().join("horse.zebra.png"));
        // A dataset image: the translation goes to the model's folder, not into the dataset.
        std::fs::create_dir_all(tmp.path().join("ds/trainA")).unwrap();
        std::fs::create_dir_all(tmp.path().join("ds/trainB")).unwrap();
        let in_ds = tmp.path().join("ds/testA/x.png");
        assert_eq!(output_path(&in_ds, "zebra", &tmp.path().join("model")), tmp.path().join("model/translations/x.zebra.png"));
        let image = DynamicImage::new_rgb8(4, 4);
        assert_eq!(save_new_png(&image, out.clone()).unwrap(), out);
        let err = save_new_png(&image, out.clone()).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
    }
}
