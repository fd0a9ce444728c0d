//! The Training screen: its state, its keys and what they do: presets and editable settings,
//! starting or resuming a run on its own thread, pause and stop through [`RunControl`], and the
//! live numbers the dashboard draws.

use super::action::{Action, Ctx};
use super::dataset_scan::DatasetEntry;
use super::event::{catch_panics, AppEvent};
use super::form::TextInput;
use super::keys::{self, move_cursor, Hint, KeyBinding, LIST_MOVES};
use super::preview::ShownImage;
use super::runs::RunEntry;
use crate::data::Dataset;
use crate::health::HealthReport;
use crate::model::GeneratorKind;
use crate::ops::Precision;
use crate::train::request::{self, Intervals, Length, RunRequest};
use crate::train::{read_loss_log, run_training, Losses, Method, DEFAULT_LAMBDA_PAIRED, DEFAULT_LR, LOG_FILE, RunControl, RunOptions, RunOutcome, Schedule, TrainConfig, TrainEvent};
use crossterm::event::{KeyCode, KeyEvent};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// A starting point for the settings.
pub struct Preset {
    pub name: &'static str,
    /// Used in default run names.
    pub short: &'static str,
    pub generator: &'static str,
    pub ngf: usize,
    pub size: usize,
    pub length: PresetLength,
    pub sample_every: u64,
    pub save_every: u64,
    pub health_every: u64,
    pub log_every: u64,
}

/// How many steps a preset trains.
pub enum PresetLength {
    Iters {
        iters: u64,
        decay_iters: u64,
    },
    /// The reference's 100 epochs at the full learning rate and 100 of decay, converted to
    /// iterations for the chosen dataset (one epoch = one pass over its larger domain).
    ReferenceEpochs,
}

pub const PRESETS: [Preset; 3] = [
    Preset {
        name: "quick CPU preview",
        short: "quick",
        generator: "resnet_6blocks",
        ngf: 16,
        size: 64,
        length: PresetLength::Iters { iters: 200, decay_iters: 200 },
        sample_every: 10,
        save_every: 100,
        health_every: 50,
        log_every: 10,
    },
    Preset {
        name: "reference 128",
        short: "ref128",
        generator: "resnet_6blocks",
        ngf: 64,
        size: 128,
        length: PresetLength::ReferenceEpochs,
        sample_every: 500,
        save_every: 5000,
        health_every: 500,
        log_every: 50,
    },
    Preset {
        name: "reference 256",
        short: "ref256",
        generator: "resnet_9blocks",
        ngf: 64,
        size: 256,
        length: PresetLength::ReferenceEpochs,
        sample_every: 500,
        save_every: 5000,
        health_every: 500,
        log_every: 50,
    },
];

/// Steps per epoch assumed while no dataset is chosen.
const FALLBACK_STEPS_PER_EPOCH: u64 = 1000;
/// Generators offered by ←/→ (any `resnet_<N>blocks` or `unet_<size>` may be typed).
const GENERATORS: [&str; 5] = ["resnet_9blocks", "resnet_6blocks", "resnet_2blocks", "unet_128", "unet_256"];

/// The devices ←/→ offers for training.
pub struct DeviceChoices {
    /// ("cpu", "CPU"), then ("cuda:N", model name) for every CUDA device the driver reports.
    pub devices: Vec<(String, String)>,
    /// Why there is no CUDA device (a build without CUDA, no driver, no device).
    pub no_cuda: Option<String>,
}

impl DeviceChoices {
    /// What the device row says besides its value: the CUDA devices, or why there are none
    /// (short: the row has little room; ←/→ gives the whole reason).
    pub fn note(&self) -> String {
        match &self.no_cuda {
            Some(_) if !cfg!(feature = "cuda") => "no CUDA in this build".into(),
            Some(why) => why.clone(),
            None => self.devices.iter().skip(1).map(|(n, model)| format!("{n} {model}")).collect::<Vec<_>>().join(", "),
        }
    }
}

/// The device choices, looked up once (counting devices opens none).
pub fn device_choices() -> &'static DeviceChoices {
    static CHOICES: std::sync::OnceLock<DeviceChoices> = std::sync::OnceLock::new();
    CHOICES.get_or_init(|| {
        let cpu = (request::DEFAULT_DEVICE.to_string(), "CPU".to_string());
        match crate::train::cuda_devices() {
            Ok(cuda) => DeviceChoices { devices: std::iter::once(cpu).chain(cuda).collect(), no_cuda: None },
            Err(why) => DeviceChoices { devices: vec![cpu], no_cuda: Some(why) },
        }
    })
}

/// The rows of the settings panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Run,
    Dataset,
    Preset,
    Name,
    Method,
    Generator,
    Ngf,
    Size,
    Iters,
    DecayIters,
    Lr,
    Paired,
    KeepLuma,
    LambdaGan,
    SampleEvery,
    Device,
    Precision,
}

impl Setting {
    pub const ALL: [Setting; 17] = [
        Setting::Run,
        Setting::Dataset,
        Setting::Preset,
        Setting::Name,
        Setting::Method,
        Setting::Generator,
        Setting::Ngf,
        Setting::Size,
        Setting::Iters,
        Setting::DecayIters,
        Setting::Lr,
        Setting::Paired,
        Setting::KeepLuma,
        Setting::LambdaGan,
        Setting::SampleEvery,
        Setting::Device,
        Setting::Precision,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Setting::Run => "Run",
            Setting::Dataset => "Dataset",
            Setting::Preset => "Preset",
            Setting::Name => "Run name",
            Setting::Method => "Model",
            Setting::Generator => "Generator",
            Setting::Ngf => "ngf (= ndf)",
            Setting::Size => "Image size",
            Setting::Iters => "Iterations",
            Setting::DecayIters => "Decay iterations",
            Setting::Lr => "Learning rate",
            Setting::Paired => "Paired mode",
            Setting::KeepLuma => "Keep brightness",
            Setting::LambdaGan => "GAN weight",
            Setting::SampleEvery => "Preview every",
            Setting::Device => "Device",
            Setting::Precision => "Precision",
        }
    }

    /// Settings changed with ←/→ (Enter steps through them too); the others are typed.
    pub fn is_choice(self) -> bool {
        matches!(self, Setting::Run | Setting::Dataset | Setting::Preset | Setting::Method | Setting::Paired | Setting::KeepLuma | Setting::Precision)
    }
}

/// The settings of the next run. Typed text is parsed when it is confirmed (a value that does not
/// parse stays in the editor with the reason), so every field holds a value of its own type.
pub struct TrainForm {
    pub cursor: usize,
    /// The value being typed, while editing the setting under the cursor.
    pub editing: Option<TextInput>,
    /// The run to continue, or None for a new run.
    pub resume: Option<String>,
    /// The chosen dataset folder (None: the first usable one).
    pub dataset: Option<PathBuf>,
    pub preset: usize,
    /// A name the user typed; without one the name is derived from dataset and preset.
    pub custom_name: Option<String>,
    /// CycleGAN, CUT or FastCUT.
    pub method: Method,
    pub generator: GeneratorKind,
    pub ngf: usize,
    pub size: usize,
    pub iters: u64,
    pub decay_iters: u64,
    pub lr: f64,
    /// Add the supervised term to the true pair (`--paired`; the dataset must be aligned).
    pub paired: bool,
    /// Predict only colour over the input's brightness (`--keep-luma`; B must have 3 channels).
    pub keep_luma: bool,
    pub lambda_gan: f64,
    pub sample_every: u64,
    /// "cpu" or "cuda:N".
    pub device: String,
    /// What the convolutions multiply in (`--precision`).
    pub precision: Precision,
    /// Why the last start was refused.
    pub error: Option<String>,
}

impl Default for TrainForm {
    fn default() -> Self {
        let mut form = Self {
            cursor: 0,
            editing: None,
            resume: None,
            dataset: None,
            preset: 0,
            custom_name: None,
            method: Method::Cyclegan,
            generator: GeneratorKind::Resnet { blocks: 9 },
            ngf: 0,
            size: 0,
            iters: 0,
            decay_iters: 0,
            lr: DEFAULT_LR,
            paired: false,
            keep_luma: false,
            lambda_gan: 1.0,
            sample_every: 0,
            device: request::DEFAULT_DEVICE.into(),
            precision: Precision::Fp32,
            error: None,
        };
        form.apply_preset(None);
        form
    }
}

impl TrainForm {
    pub fn setting(&self) -> Setting {
        Setting::ALL[self.cursor.min(Setting::ALL.len() - 1)]
    }

    /// Fills the architecture and length settings from the current preset.
    fn apply_preset(&mut self, dataset: Option<&Dataset>) {
        let preset = &PRESETS[self.preset];
        self.generator = preset.generator.parse().expect("a preset names a known generator");
        self.ngf = preset.ngf;
        self.size = preset.size;
        let (iters, decay_iters) = match preset.length {
            PresetLength::Iters { iters, decay_iters } => (iters, decay_iters),
            PresetLength::ReferenceEpochs => {
                let (epochs, decay_epochs) = request::reference_epochs(self.method);
                let steps = dataset.map_or(FALLBACK_STEPS_PER_EPOCH, |d| request::steps_per_epoch(d, self.paired, 1));
                (epochs * steps, decay_epochs * steps)
            }
        };
        (self.iters, self.decay_iters) = (iters, decay_iters);
        self.lr = DEFAULT_LR;
        self.sample_every = preset.sample_every;
    }

    /// Shows a saved run's settings, ready to resume it.
    fn load_run(&mut self, run: &RunEntry) {
        self.resume = Some(run.name.clone());
        if let Ok(cfg) = &run.config {
            self.method = cfg.method;
            self.generator = cfg.generator;
            self.ngf = cfg.ngf;
            self.size = cfg.size;
            (self.iters, self.decay_iters) = match cfg.schedule {
                Schedule::Iters { iters, decay_iters } => (iters, decay_iters),
                Schedule::Epochs { epochs, decay_epochs, steps_per_epoch } => (epochs * steps_per_epoch, decay_epochs * steps_per_epoch),
            };
            self.lr = cfg.lr;
            self.paired = cfg.paired;
            self.keep_luma = cfg.keep_luma;
            self.lambda_gan = cfg.lambda_gan;
            self.sample_every = cfg.sample_every;
            self.device = cfg.device.clone();
            self.precision = cfg.precision;
        }
    }

    /// Sets a typed setting from confirmed text; Err says why the text is not a value.
    fn set_text(&mut self, setting: Setting, text: &str) -> Result<(), String> {
        match setting {
            Setting::Generator => self.generator = text.parse()?,
            Setting::Ngf => self.ngf = parse_number(text, "ngf")?,
            Setting::Size => self.size = parse_number(text, "Image size")?,
            Setting::Iters => self.iters = parse_number(text, "Iterations")?,
            Setting::DecayIters => self.decay_iters = parse_number(text, "Decay iterations")?,
            Setting::Lr => self.lr = parse_number(text, "Learning rate")?,
            Setting::LambdaGan => self.lambda_gan = parse_number(text, "GAN weight")?,
            Setting::SampleEvery => self.sample_every = parse_number(text, "Preview every")?,
            Setting::Device => self.device = text.to_string(),
            _ => {}
        }
        Ok(())
    }
}

/// One line of the run's event log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub step: u64,
    pub text: String,
    pub level: Level,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// Opening the dataset and building the networks.
    Starting,
    Training,
    Paused,
    /// Stop requested: finishing the step and saving.
    Stopping,
    Finished,
    Stopped,
    Failed(String),
}

impl RunState {
    pub fn is_active(&self) -> bool {
        matches!(self, RunState::Starting | RunState::Training | RunState::Paused | RunState::Stopping)
    }

    pub fn label(&self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Training => "training",
            RunState::Paused => "paused",
            RunState::Stopping => "stopping: saving a checkpoint",
            RunState::Finished => "finished",
            RunState::Stopped => "stopped, checkpoint saved",
            RunState::Failed(_) => "failed",
        }
    }
}

/// One plotted loss curve: its name in the legend, its value in a step's losses, its colour.
pub struct LossCurve {
    pub name: &'static str,
    pub value: fn(&Losses) -> f32,
    pub colour: ratatui::style::Color,
}

/// The plotted curves: adversarial losses of both generators, both cycle losses, the identity
/// terms together, the paired term, CUT's two PatchNCE terms, and both discriminators. Terms a
/// method does not have stay 0 and are not drawn.
pub const LOSS_CURVES: [LossCurve; 10] = {
    use ratatui::style::Color;
    [
        LossCurve { name: "G_AB adv", value: |l| l.g_ab_adv, colour: Color::Red },
        LossCurve { name: "G_BA adv", value: |l| l.g_ba_adv, colour: Color::Magenta },
        LossCurve { name: "cycle A", value: |l| l.cycle_a, colour: Color::Blue },
        LossCurve { name: "cycle B", value: |l| l.cycle_b, colour: Color::Cyan },
        LossCurve { name: "identity", value: |l| l.idt_ab + l.idt_ba, colour: Color::Green },
        LossCurve { name: "paired", value: |l| l.paired, colour: Color::White },
        LossCurve { name: "NCE", value: |l| l.nce, colour: Color::LightBlue },
        LossCurve { name: "NCE idt", value: |l| l.nce_idt, colour: Color::LightGreen },
        LossCurve { name: "D_A", value: |l| l.d_a, colour: Color::Yellow },
        LossCurve { name: "D_B", value: |l| l.d_b, colour: Color::LightYellow },
    ]
};

/// Loss curves over steps in bounded memory: each point is the mean of `steps_per_point`
/// consecutive steps, and when the curves reach [`LossHistory::MAX_POINTS`] neighbouring points
/// are merged and the bucket doubles. Long runs thus keep their whole shape, smoothed.
#[derive(Clone, Debug)]
pub struct LossHistory {
    curves: [Vec<(f64, f64)>; 10],
    steps_per_point: u64,
    partial_sum: [f64; 10],
    partial_count: u64,
}

impl Default for LossHistory {
    fn default() -> Self {
        Self { curves: Default::default(), steps_per_point: 1, partial_sum: [0.0; 10], partial_count: 0 }
    }
}

impl LossHistory {
    pub const MAX_POINTS: usize = 1000;

    pub fn push(&mut self, step: u64, losses: &Losses) {
        let values = LOSS_CURVES.map(|c| f64::from((c.value)(losses)));
        // A non-finite loss ends the run with an error of its own; it would only wreck the axes.
        if values.iter().any(|v| !v.is_finite()) {
            return;
        }
        for (sum, v) in self.partial_sum.iter_mut().zip(values) {
            *sum += v;
        }
        self.partial_count += 1;
        if self.partial_count < self.steps_per_point {
            return;
        }
        for (curve, sum) in self.curves.iter_mut().zip(&mut self.partial_sum) {
            curve.push((step as f64, *sum / self.partial_count as f64));
            *sum = 0.0;
        }
        self.partial_count = 0;
        if self.curves[0].len() >= Self::MAX_POINTS {
            for curve in &mut self.curves {
                *curve = curve
                    .chunks(2)
                    .map(|pair| (pair[pair.len() - 1].0, pair.iter().map(|p| p.1).sum::<f64>() / pair.len() as f64))
                    .collect();
            }
            self.steps_per_point *= 2;
        }
    }

    /// True before the first step is recorded.
    pub fn is_empty(&self) -> bool {
        self.curves[0].is_empty() && self.partial_count == 0
    }

    /// How many steps each point averages.
    pub fn steps_per_point(&self) -> u64 {
        self.steps_per_point
    }

    /// The curves worth drawing (a term that stayed 0, such as `paired` in unpaired training,
    /// is left out), with their names.
    pub fn curves(&self) -> impl Iterator<Item = (&'static str, &[(f64, f64)])> {
        LOSS_CURVES.iter().zip(&self.curves).filter(|(_, c)| c.iter().any(|p| p.1 != 0.0)).map(|(lc, c)| (lc.name, c.as_slice()))
    }
}

/// The live state of a run (or the last one), as its events report it.
pub struct RunMonitor {
    pub name: String,
    pub state: RunState,
    control: RunControl,
    pub device: String,
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub lr: f64,
    pub images_per_sec: f64,
    pub eta: Duration,
    pub latest: Option<Losses>,
    pub history: LossHistory,
    pub health: Option<HealthReport>,
    /// The latest preview grid and its step.
    pub preview: Option<(u64, ShownImage)>,
    pub log: Vec<LogLine>,
    pub saved_step: Option<u64>,
    /// The latest held-out scores (`--eval-every`) and the best mean KID so far with its step.
    pub validation: Option<(crate::train::ValidationScores, Option<(u64, f64)>)>,
    /// The run's folder, whose log fills the charts of a resumed run.
    pub run_dir: Option<PathBuf>,
}

/// Log lines kept per run.
const MAX_LOG_LINES: usize = 500;

impl RunMonitor {
    pub fn new(name: String, control: RunControl) -> Self {
        Self {
            name,
            state: RunState::Starting,
            control,
            device: String::new(),
            step: 0,
            total_steps: 0,
            epoch: 0,
            lr: 0.0,
            images_per_sec: 0.0,
            eta: Duration::ZERO,
            latest: None,
            history: LossHistory::default(),
            health: None,
            preview: None,
            log: Vec::new(),
            saved_step: None,
            validation: None,
            run_dir: None,
        }
    }

    fn log(&mut self, level: Level, text: String) {
        if self.log.len() >= MAX_LOG_LINES {
            self.log.remove(0);
        }
        self.log.push(LogLine { step: self.step, text, level });
    }

    pub fn apply(&mut self, event: TrainEvent) {
        match event {
            TrainEvent::Started { step, total_steps, device, note } => {
                if self.state == RunState::Starting {
                    self.state = RunState::Training;
                }
                (self.step, self.total_steps) = (step, total_steps);
                self.log(Level::Info, format!("started at step {step} of {total_steps} on {device}"));
                self.device = device;
                if let Some(note) = note {
                    self.log(Level::Info, note);
                }
            }
            TrainEvent::Step(report) => {
                self.history.push(report.step, &report.losses);
                self.step = report.step;
                self.total_steps = report.total_steps;
                self.epoch = report.epoch;
                self.lr = report.lr;
                self.images_per_sec = report.images_per_sec;
                self.eta = report.eta;
                self.latest = Some(report.losses);
            }
            TrainEvent::Preview { step, grid } => self.preview = Some((step, ShownImage::new(grid))),
            TrainEvent::Saved { step, .. } => {
                self.saved_step = Some(step);
                self.log(Level::Info, format!("checkpoint saved at step {step}"));
            }
            TrainEvent::Health(report) => {
                // Training sends each health warning as a Warning event just before the report.
                // The health panel shows the report's warnings, so drop those copies from the log.
                while self.log.last().is_some_and(|l| l.level == Level::Warning && report.warnings.contains(&l.text)) {
                    self.log.pop();
                }
                self.health = Some(report);
            }
            TrainEvent::Validation(scores) => {
                self.log(Level::Info, format!("held-out {}", scores.summary()));
                let best = if scores.best { Some((scores.step, scores.kid)) } else { self.validation.as_ref().and_then(|(_, b)| *b) };
                self.validation = Some((scores, best));
            }
            TrainEvent::Warning(text) => self.log(Level::Warning, text),
        }
    }

    fn ended(&mut self, outcome: Result<RunOutcome, String>) {
        match outcome {
            Ok(RunOutcome::Finished { step }) => {
                self.state = RunState::Finished;
                self.log(Level::Info, format!("finished at step {step}"));
            }
            Ok(RunOutcome::Stopped { step }) => {
                self.state = RunState::Stopped;
                self.log(Level::Info, format!("stopped at step {step}; resume it from the settings (e)"));
            }
            Err(e) => {
                self.log(Level::Error, e.clone());
                self.state = RunState::Failed(e);
            }
        }
    }

    fn toggle_pause(&mut self) {
        let paused = match self.state {
            RunState::Starting | RunState::Training => true,
            RunState::Paused => false,
            _ => return,
        };
        self.control.pause.store(paused, Ordering::SeqCst);
        self.state = if paused { RunState::Paused } else { RunState::Training };
    }

    /// Asks the run to finish its step, save and return. Says whether a run was active.
    fn stop(&mut self) -> bool {
        if !self.state.is_active() {
            return false;
        }
        self.control.stop.store(true, Ordering::SeqCst);
        self.state = RunState::Stopping;
        true
    }
}

/// Which half of the Training screen is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrainingView {
    #[default]
    Settings,
    Dashboard,
}

/// What the Training screen is showing, which decides what its keys do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The settings, no run yet.
    Settings,
    /// The settings, with a run (active or ended) whose dashboard `e` shows.
    SettingsWithRun,
    /// A setting's value is being typed.
    Editing,
    /// The dashboard of an active run.
    DashboardRunning,
    /// The dashboard of a run that ended (or of none).
    DashboardIdle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Move,
    PreviousChoice,
    NextChoice,
    Edit,
    Start,
    Dashboard,
    Pause,
    Stop,
    /// Back to the settings, offering to resume the run that ended.
    BackToSettings,
    Confirm,
    Cancel,
    /// Typed into the setting being edited (unbound keys; Ctrl-U clears).
    Type,
}

/// The Training screen's keys.
pub const KEYS: &[KeyBinding<Command, Mode>] = {
    use Command::*;
    use KeyCode::{Char, Enter, Esc, Left, Right};
    use Mode::*;
    const SETTINGS: &[Mode] = &[Mode::Settings, SettingsWithRun];
    &[
        KeyBinding { keys: "Enter", codes: &[Enter], help: "", hint: Some(("Enter", "confirm")), modes: &[Editing], command: Confirm },
        KeyBinding { keys: "Esc", codes: &[Esc], help: "", hint: Some(("Esc", "cancel")), modes: &[Editing], command: Cancel },
        // The text field clears itself on Ctrl-U.
        KeyBinding { keys: "Ctrl-U", codes: &[], help: "", hint: Some(("Ctrl-U", "clear")), modes: &[Editing], command: Type },
        KeyBinding { keys: "↑ ↓", codes: LIST_MOVES, help: "", hint: Some(("↑↓", "setting")), modes: SETTINGS, command: Move },
        KeyBinding {
            keys: "← → or h l",
            codes: &[Left, Char('h')],
            help: "change run, dataset, preset, model (CycleGAN, CUT, FastCUT), generator, device; paired mode or keep brightness on/off",
            hint: Some(("←→", "choose")),
            modes: SETTINGS,
            command: PreviousChoice,
        },
        KeyBinding { keys: "→ or l", codes: &[Right, Char('l')], help: "", hint: None, modes: SETTINGS, command: NextChoice },
        KeyBinding {
            keys: "Enter",
            codes: &[Enter],
            help: "edit a setting (Ctrl-U clears, Enter confirms)",
            hint: Some(("Enter", "edit")),
            modes: SETTINGS,
            command: Edit,
        },
        KeyBinding {
            keys: "s",
            codes: &[Char('s')],
            help: "start the run (or resume the chosen one)",
            hint: Some(("s", "start")),
            modes: SETTINGS,
            command: Start,
        },
        KeyBinding { keys: "e", codes: &[Char('e')], help: "", hint: Some(("e", "dashboard")), modes: &[SettingsWithRun], command: Dashboard },
        KeyBinding {
            keys: "p",
            codes: &[Char('p')],
            help: "pause / resume",
            hint: Some(("p", "pause/resume")),
            modes: &[DashboardRunning],
            command: Pause,
        },
        KeyBinding {
            keys: "x",
            codes: &[Char('x')],
            help: "stop: finish the step and save a checkpoint",
            hint: Some(("x", "stop + save")),
            modes: &[DashboardRunning],
            command: Stop,
        },
        KeyBinding {
            keys: "e",
            codes: &[Char('e')],
            help: "back to the settings after a run (offers to resume it)",
            hint: Some(("e", "settings / resume")),
            modes: &[DashboardIdle],
            command: BackToSettings,
        },
        // Refused with the reason while the run is active.
        KeyBinding { keys: "e", codes: &[Char('e')], help: "", hint: None, modes: &[DashboardRunning], command: BackToSettings },
    ]
};

#[derive(Default)]
pub struct TrainingScreen {
    pub form: TrainForm,
    pub run: Option<RunMonitor>,
    pub view: TrainingView,
    /// The run whose settings to load once the runs are scanned again (`e` after a run).
    resume_after_refresh: Option<String>,
}

impl TrainingScreen {
    pub fn is_running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.state.is_active())
    }

    pub fn mode(&self) -> Mode {
        match self.view {
            TrainingView::Settings if self.form.editing.is_some() => Mode::Editing,
            TrainingView::Settings if self.run.is_some() => Mode::SettingsWithRun,
            TrainingView::Settings => Mode::Settings,
            TrainingView::Dashboard if self.is_running() => Mode::DashboardRunning,
            TrainingView::Dashboard => Mode::DashboardIdle,
        }
    }

    /// Whether the screen wants every key typed into a field.
    pub fn captures_text(&self) -> bool {
        self.mode() == Mode::Editing
    }

    /// The footer hints for the keys active now.
    pub fn hints(&self) -> Vec<Hint> {
        keys::hints(KEYS, self.mode()).collect()
    }

    /// The dataset a new run would use.
    pub fn dataset<'a>(&self, datasets: &'a [DatasetEntry]) -> Option<&'a DatasetEntry> {
        let usable = || datasets.iter().filter(|e| e.dataset.is_ok());
        let chosen = self.form.dataset.as_ref().and_then(|dir| usable().find(|e| &e.dir == dir));
        chosen.or_else(|| usable().next())
    }

    /// The name the run will get: the typed one, or `<dataset>_<preset>` made unique among the
    /// runs in the checkpoints folder (as last scanned: this is called while drawing).
    pub fn run_name(&self, ctx: &Ctx) -> String {
        let form = &self.form;
        if let Some(name) = form.resume.as_ref().or(form.custom_name.as_ref()) {
            return name.clone();
        }
        let base = format!("{}_{}", self.dataset(ctx.datasets).map_or("run", |d| d.name.as_str()), PRESETS[form.preset].short);
        let taken = |n: &str| ctx.runs.iter().any(|r| r.name == n);
        let mut name = base.clone();
        let mut counter = 2;
        while taken(&name) {
            name = format!("{base}_{counter}");
            counter += 1;
        }
        name
    }

    fn resumed_run<'a>(&self, runs: &'a [RunEntry]) -> Option<&'a RunEntry> {
        let name = self.form.resume.as_ref()?;
        runs.iter().find(|r| &r.name == name)
    }

    /// The text of a setting as the panel shows it.
    pub fn setting_value(&self, setting: Setting, ctx: &Ctx) -> String {
        let form = &self.form;
        match setting {
            Setting::Run => match &form.resume {
                Some(name) => format!("resume {name}"),
                None => "new run".into(),
            },
            Setting::Dataset => match self.resumed_run(ctx.runs) {
                Some(run) => run.config.as_ref().map(|c| c.dataset.display().to_string()).unwrap_or_default(),
                None => self.dataset(ctx.datasets).map_or_else(|| "none: create one on the Datasets screen".into(), |d| d.name.clone()),
            },
            Setting::Preset => match form.resume {
                Some(_) => "saved settings".into(),
                None => PRESETS[form.preset].name.into(),
            },
            Setting::Name => self.run_name(ctx),
            Setting::Method => match form.method {
                Method::Cyclegan => "cyclegan: two generators, cycle + identity losses".into(),
                Method::Cut => "cut: one generator A→B, PatchNCE (+ identity NCE)".into(),
                Method::Fastcut => "fastcut: one generator A→B, PatchNCE ×10, flip-equivariance".into(),
            },
            Setting::Generator => form.generator.to_string(),
            Setting::Ngf => form.ngf.to_string(),
            Setting::Size => form.size.to_string(),
            Setting::Iters | Setting::DecayIters => {
                let first = setting == Setting::Iters;
                let steps = if first { form.iters } else { form.decay_iters };
                // A resumed run counted in epochs shows them too.
                match self.resumed_run(ctx.runs).and_then(|r| r.config.as_ref().ok()).map(|c| c.schedule) {
                    Some(Schedule::Epochs { epochs, decay_epochs, .. }) => format!("{steps} ({} epochs)", if first { epochs } else { decay_epochs }),
                    _ => steps.to_string(),
                }
            }
            Setting::Lr => form.lr.to_string(),
            Setting::Paired if form.paired => format!("on: L1 to the true pair (λ {DEFAULT_LAMBDA_PAIRED}), aligned datasets"),
            Setting::Paired => "off".into(),
            Setting::KeepLuma => if form.keep_luma { "on: predict only colour over the input's brightness" } else { "off" }.into(),
            Setting::LambdaGan => form.lambda_gan.to_string(),
            Setting::SampleEvery => form.sample_every.to_string(),
            Setting::Device => form.device.clone(),
            Setting::Precision => match form.precision {
                Precision::Fp32 => "fp32".into(),
                Precision::Bf16 => "bf16: bf16 products, fp32 sums and weights (CPUs with AVX512-BF16, GPUs)".into(),
            },
        }
    }

    /// Whether a setting may be changed now. A resumed run keeps its architecture and data; its
    /// length (when counted in iterations), preview interval and device may change.
    pub fn setting_editable(&self, setting: Setting, runs: &[RunEntry]) -> bool {
        match self.resumed_run(runs) {
            None => true,
            Some(run) => match setting {
                Setting::Run | Setting::SampleEvery | Setting::Device | Setting::Precision => true,
                Setting::Iters | Setting::DecayIters => run.has_iteration_schedule(),
                _ => false,
            },
        }
    }

    pub fn key(&mut self, key: KeyEvent, ctx: &Ctx) -> Vec<Action> {
        let mode = self.mode();
        let command = keys::command(KEYS, mode, key.code);
        match mode {
            Mode::DashboardRunning | Mode::DashboardIdle => self.dashboard_key(command),
            Mode::Editing => self.editing_key(command.unwrap_or(Command::Type), key),
            Mode::Settings | Mode::SettingsWithRun => self.settings_key(command, key.code, ctx),
        }
    }

    fn dashboard_key(&mut self, command: Option<Command>) -> Vec<Action> {
        let Some(run) = &self.run else {
            self.view = TrainingView::Settings;
            return vec![];
        };
        match command {
            Some(Command::BackToSettings) if run.state.is_active() => vec![Action::Error("a run is in progress: stop it with x first".into())],
            Some(Command::BackToSettings) => {
                // Offer to continue the run that just ended (see `runs_refreshed`).
                self.resume_after_refresh = Some(run.name.clone());
                self.view = TrainingView::Settings;
                vec![Action::RefreshRuns]
            }
            Some(command @ (Command::Pause | Command::Stop)) => self.run_control(command),
            _ => vec![],
        }
    }

    fn editing_key(&mut self, command: Command, key: KeyEvent) -> Vec<Action> {
        let setting = self.form.setting();
        let Some(input) = &mut self.form.editing else { return vec![] };
        match command {
            Command::Confirm => {
                let value = input.value.trim().to_string();
                let set = match setting {
                    Setting::Name => {
                        self.form.custom_name = (!value.is_empty()).then_some(value);
                        Ok(())
                    }
                    other => self.form.set_text(other, &value),
                };
                match set {
                    Ok(()) => self.form.editing = None,
                    // The text stays in the editor to be corrected.
                    Err(e) => return vec![Action::Error(e)],
                }
            }
            Command::Cancel => self.form.editing = None,
            _ => {
                input.edit(&key, |_| true);
            }
        }
        vec![]
    }

    fn settings_key(&mut self, command: Option<Command>, code: KeyCode, ctx: &Ctx) -> Vec<Action> {
        let setting = self.form.setting();
        match command {
            Some(Command::Move) => {
                move_cursor(&mut self.form.cursor, Setting::ALL.len(), code);
            }
            Some(Command::PreviousChoice) => return self.cycle_setting(setting, false, ctx),
            Some(Command::NextChoice) => return self.cycle_setting(setting, true, ctx),
            Some(Command::Edit) if setting.is_choice() => return self.cycle_setting(setting, true, ctx),
            Some(Command::Edit) if self.setting_editable(setting, ctx.runs) => {
                self.form.editing = Some(TextInput::new(self.setting_value(setting, ctx)));
            }
            Some(Command::Edit) => return vec![Action::Error(format!("{} is fixed by the saved run", setting.label()))],
            Some(Command::Start) => return self.start(ctx),
            Some(Command::Dashboard) => self.view = TrainingView::Dashboard,
            _ => {}
        }
        vec![]
    }

    /// ←/→ on a setting: steps through runs, datasets, presets, generators or devices.
    fn cycle_setting(&mut self, setting: Setting, forward: bool, ctx: &Ctx) -> Vec<Action> {
        if !self.setting_editable(setting, ctx.runs) {
            return vec![Action::Error(format!("{} is fixed by the saved run", setting.label()))];
        }
        let step = |i: usize, n: usize| if forward { (i + 1) % n } else { (i + n - 1) % n };
        match setting {
            Setting::Run => {
                // Choices: a new run, then every run with a checkpoint.
                let resumable: Vec<&RunEntry> = ctx.runs.iter().filter(|r| r.checkpoint_step.is_some() && r.config.is_ok()).collect();
                let current = self.form.resume.as_ref().and_then(|n| resumable.iter().position(|r| &r.name == n)).map_or(0, |i| i + 1);
                match step(current, resumable.len() + 1) {
                    0 => {
                        self.form.resume = None;
                        self.apply_preset(ctx.datasets);
                    }
                    i => self.form.load_run(resumable[i - 1]),
                }
            }
            Setting::Dataset => {
                let usable: Vec<&PathBuf> = ctx.datasets.iter().filter(|e| e.dataset.is_ok()).map(|e| &e.dir).collect();
                if usable.is_empty() {
                    return vec![Action::Error("no dataset yet: create one on the Datasets screen (1, then n)".into())];
                }
                let current = self.dataset(ctx.datasets).and_then(|d| usable.iter().position(|u| **u == d.dir)).unwrap_or(0);
                self.form.dataset = Some(usable[step(current, usable.len())].clone());
                self.apply_preset(ctx.datasets);
            }
            Setting::Preset => {
                self.form.preset = step(self.form.preset, PRESETS.len());
                self.apply_preset(ctx.datasets);
            }
            Setting::Generator => {
                let mut text = self.form.generator.to_string();
                cycle_text(&mut text, &GENERATORS, forward);
                self.form.generator = text.parse().expect("GENERATORS are known generators");
            }
            Setting::Device => {
                let choices = device_choices();
                if let (Some(why), 1) = (&choices.no_cuda, choices.devices.len()) {
                    return vec![Action::Error(format!("only the CPU: {why}"))];
                }
                let names: Vec<&str> = choices.devices.iter().map(|(n, _)| n.as_str()).collect();
                cycle_text(&mut self.form.device, &names, forward)
            }
            Setting::Method => {
                use clap::ValueEnum;
                let all = Method::value_variants();
                let i = all.iter().position(|m| *m == self.form.method).unwrap_or(0);
                self.form.method = all[step(i, all.len())];
                // The reference's epochs depend on the method (CUT 200 + 200, FastCUT 150 + 50).
                if matches!(PRESETS[self.form.preset].length, PresetLength::ReferenceEpochs) {
                    self.apply_preset(ctx.datasets);
                }
            }
            Setting::Paired => self.form.paired = !self.form.paired,
            Setting::KeepLuma => self.form.keep_luma = !self.form.keep_luma,
            Setting::Precision => {
                self.form.precision = match self.form.precision {
                    Precision::Fp32 => Precision::Bf16,
                    Precision::Bf16 => Precision::Fp32,
                }
            }
            _ => {}
        }
        vec![]
    }

    fn apply_preset(&mut self, datasets: &[DatasetEntry]) {
        let dataset = self.dataset(datasets).and_then(|d| d.dataset.as_ref().ok());
        self.form.apply_preset(dataset);
    }

    /// Checks the settings and turns them into a configuration, with messages a user can act on.
    fn plan(&self, ctx: &Ctx) -> Result<RunPlan, String> {
        let name = self.run_name(ctx);
        check_run_name(&name)?;
        let checkpoints = &ctx.options.checkpoints;
        let run_dir = checkpoints.join(&name);
        let resume = self.form.resume.is_some();
        let request = self.run_request(name.clone(), ctx);
        let config = if let Some(run) = self.resumed_run(ctx.runs) {
            if run.checkpoint_step.is_none() {
                return Err(format!("run '{name}' has no checkpoint to resume"));
            }
            request.resume(&run_dir).map_err(|e| format!("{e:#}"))?
        } else {
            if resume {
                return Err(format!("run '{name}' is no longer in {}", checkpoints.display()));
            }
            if ctx.runs.iter().any(|r| r.name == name && r.checkpoint_step.is_some()) {
                return Err(format!("run '{name}' already has a checkpoint: choose it under Run to resume it, or change the name"));
            }
            let entry = self.dataset(ctx.datasets).ok_or("no dataset yet: create one on the Datasets screen (1, then n)")?;
            entry.dataset.as_ref().map_err(Clone::clone)?;
            request.new_run().map_err(|e| format!("{e:#}"))?
        };
        Ok(RunPlan { config, options: RunOptions { run_dir, resume, tensorboard: true } })
    }

    /// The form as a run request. For a resumed run only the length (of an iteration
    /// schedule), the preview interval, the device and the precision apply.
    fn run_request(&self, name: String, ctx: &Ctx) -> RunRequest {
        let form = &self.form;
        let preset = &PRESETS[form.preset];
        let resumed = self.resumed_run(ctx.runs);
        let resuming = resumed.is_some();
        let length = if resumed.is_some_and(|r| r.config.as_ref().is_ok_and(|c| !matches!(c.schedule, Schedule::Iters { .. }))) {
            Length::ReferenceEpochs // an epoch schedule keeps its length
        } else {
            Length::Iters { iters: form.iters, decay_iters: form.decay_iters }
        };
        RunRequest {
            name,
            dataset: self.dataset(ctx.datasets).map(|d| d.dir.clone()),
            method: Some(form.method),
            generator: Some(form.generator),
            ngf: Some(form.ngf),
            ndf: Some(form.ngf),
            size: Some(form.size),
            length,
            lr: Some(form.lr),
            paired: form.paired,
            keep_luma: form.keep_luma,
            lambda_gan: Some(form.lambda_gan),
            device: Some(form.device.trim().to_string()),
            precision: Some(form.precision),
            intervals: Intervals {
                sample_every: Some(form.sample_every),
                // A resumed run keeps its own; the preset's are for new runs.
                save_every: (!resuming).then_some(preset.save_every),
                log_every: (!resuming).then_some(preset.log_every),
                health_every: (!resuming).then_some(preset.health_every),
            },
            ..Default::default()
        }
    }

    /// Starts (or resumes) the run the settings describe on a thread of its own.
    fn start(&mut self, ctx: &Ctx) -> Vec<Action> {
        if self.is_running() {
            return vec![Action::Error("a run is in progress: stop it with x first".into())];
        }
        let plan = match self.plan(ctx) {
            Ok(plan) => plan,
            Err(e) => {
                self.form.error = Some(e.clone());
                return vec![Action::Error(e)];
            }
        };
        let name = plan.config.name.clone();
        let run_dir = plan.options.run_dir.clone();
        // A failed save (full disk) becomes a warning in the event log and is retried at the next
        // save, so a long run is not lost while the user frees space; the last save still must work.
        let control = RunControl { keep_going_on_save_error: true, ..Default::default() };
        match spawn_training(plan, control.clone(), ctx.events) {
            Ok(()) => {
                self.form.error = None;
                let mut monitor = RunMonitor::new(name.clone(), control);
                monitor.run_dir = Some(run_dir);
                self.run = Some(monitor);
                self.view = TrainingView::Dashboard;
                vec![Action::Info(format!("training {name}…"))]
            }
            Err(e) => vec![Action::Error(format!("cannot start the training thread: {e}"))],
        }
    }

    /// An event of the run started here.
    pub fn event(&mut self, event: TrainEvent) -> Vec<Action> {
        let mut actions = vec![];
        if let TrainEvent::Started { step, .. } = event {
            // The run folder and its config exist from now on.
            actions.push(Action::RefreshRuns);
            // A resumed run's charts start with its earlier steps (the log holds them; training
            // has already dropped lines past the checkpoint it resumed from).
            if let Some(run) = self.run.as_mut().filter(|r| step > 0 && r.history.is_empty()) {
                if let Some(dir) = &run.run_dir {
                    for (s, losses) in read_loss_log(&dir.join(LOG_FILE), step) {
                        run.history.push(s, &losses);
                    }
                }
            }
        }
        // Events come only from the run started here; the monitor exists since its start.
        if let Some(run) = &mut self.run {
            run.apply(event);
        }
        actions
    }

    /// The training thread returned.
    pub fn ended(&mut self, outcome: Result<RunOutcome, String>) -> Vec<Action> {
        let message = match &outcome {
            Ok(RunOutcome::Finished { step }) => Action::Info(format!("training finished at step {step}")),
            Ok(RunOutcome::Stopped { step }) => Action::Info(format!("training stopped at step {step}; checkpoint saved")),
            Err(e) => Action::Error(format!("training failed: {e}")),
        };
        if let Some(run) = &mut self.run {
            run.ended(outcome);
        }
        vec![message, Action::RefreshRuns]
    }

    /// The runs were scanned again: loads the settings of the run `e` asked to resume.
    pub fn runs_refreshed(&mut self, runs: &[RunEntry]) {
        let Some(name) = self.resume_after_refresh.take() else { return };
        if let Some(entry) = runs.iter().find(|r| r.name == name && r.checkpoint_step.is_some()) {
            self.form.load_run(entry);
        }
    }

    /// Asks a running training to stop and save; says whether one was running.
    pub fn stop(&mut self) -> bool {
        self.run.as_mut().is_some_and(RunMonitor::stop)
    }

    /// Pauses, resumes or stops the active run: `p` and `x` on the dashboard, and from every
    /// other screen through the App's keys.
    pub fn run_control(&mut self, command: Command) -> Vec<Action> {
        let Some(run) = self.run.as_mut().filter(|r| r.state.is_active()) else { return vec![] };
        match command {
            Command::Pause => run.toggle_pause(),
            Command::Stop => {
                run.stop();
                return vec![Action::Info("stopping: finishing this step and saving a checkpoint…".into())];
            }
            _ => {}
        }
        vec![]
    }
}

/// What starting needs: the configuration and where the run lives.
struct RunPlan {
    config: TrainConfig,
    options: RunOptions,
}

/// Runs training on its own thread, forwarding its events into the studio's channel.
fn spawn_training(plan: RunPlan, control: RunControl, events: &Sender<AppEvent>) -> std::io::Result<()> {
    let events = events.clone();
    std::thread::Builder::new().name("training".into()).spawn(move || {
        let forward = events.clone();
        let mut on_event = move |e: TrainEvent| {
            let _ = forward.send(AppEvent::Train(e));
        };
        let outcome = catch_panics(|| run_training(plan.config, &plan.options, &control, &mut on_event));
        crate::ops::release_free_memory();
        let _ = events.send(AppEvent::TrainingEnded(outcome));
    })?;
    Ok(())
}

fn parse_number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("{what} must be a number, not '{}'", text.trim()))
}

fn check_run_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(format!("run name '{name}' must be a plain folder name"));
    }
    Ok(())
}


/// Replaces `text` by the next (or previous) of `choices`; text that is not among them goes
/// to the first.
fn cycle_text(text: &mut String, choices: &[&str], forward: bool) {
    let n = choices.len();
    let next = match choices.iter().position(|c| c == text) {
        Some(i) if forward => (i + 1) % n,
        Some(i) => (i + n - 1) % n,
        None => 0,
    };
    *text = choices[next].to_string();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn losses(value: f32) -> Losses {
        Losses { g_ab_adv: value, cycle_a: 2.0 * value, d_a: 1.0, ..Default::default() }
    }

    #[test]
    fn loss_history_stays_bounded_and_keeps_the_whole_run() {
        let mut history = LossHistory::default();
        for step in 1..=2500 {
            history.push(step, &losses(step as f32));
        }
        let curves: Vec<_> = history.curves().collect();
        // Terms that stayed 0 are left out.
        assert_eq!(curves.iter().map(|(name, _)| *name).collect::<Vec<_>>(), ["G_AB adv", "cycle A", "D_A"]);
        let (_, g_ab) = curves[0];
        assert!(g_ab.len() < LossHistory::MAX_POINTS, "{} points", g_ab.len());
        assert_eq!(history.steps_per_point(), 4);
        // The points still span the run, and each is the mean of its steps.
        assert!(g_ab[0].0 <= 4.0 && g_ab.last().unwrap().0 >= 2490.0);
        assert_eq!(g_ab[0].1, 2.5);
        assert!(curves[2].1.iter().all(|p| p.1 == 1.0));
    }

    #[test]
    fn health_warnings_are_not_repeated_in_the_log() {
        let mut run = RunMonitor::new("r".into(), RunControl::default());
        let warning = "outputs of G_AB have become near-identical".to_string();
        run.apply(TrainEvent::Warning("skipping a.png: truncated".into()));
        run.apply(TrainEvent::Warning(warning.clone()));
        run.apply(TrainEvent::Health(HealthReport { warnings: vec![warning], ..Default::default() }));
        assert_eq!(run.log.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["skipping a.png: truncated"]);
    }

    #[test]
    fn held_out_scores_are_logged_and_the_best_remembered() {
        use crate::train::ValidationScores;
        let mut run = RunMonitor::new("r".into(), RunControl::default());
        run.apply(TrainEvent::Validation(ValidationScores { step: 100, kid: 0.05, best: true, ..Default::default() }));
        run.apply(TrainEvent::Validation(ValidationScores { step: 200, kid: 0.07, best: false, ..Default::default() }));
        let (latest, best) = run.validation.as_ref().unwrap();
        assert_eq!((latest.step, *best), (200, Some((100, 0.05))));
        assert_eq!(run.log.len(), 2);
        assert!(run.log[0].text.starts_with("held-out KID A→B") && run.log[0].text.ends_with("best so far"), "{}", run.log[0].text);
    }
}
