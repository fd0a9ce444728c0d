//! Runs and models on disk: the subfolders of the checkpoints folder that hold a `config.toml`
//! (trained here) or only a `model.toml` (imported), and the trials inside sweep folders.

use crate::checkpoint::{Manifest, LATEST, MANIFEST};
use crate::model::{ModelSpec, MODEL_FILE};
use crate::train::{Schedule, TrainConfig, CONFIG_FILE};
use std::path::{Path, PathBuf};

/// One run folder, readable or not.
#[derive(Clone, Debug)]
pub struct RunEntry {
    pub name: String,
    pub dir: PathBuf,
    /// The saved training configuration, or why there is none (an imported model has none).
    pub config: Result<TrainConfig, String>,
    /// What the model is (domains, generators), when it can be read.
    pub spec: Option<ModelSpec>,
    /// The step of the newest checkpoint, None before the first save.
    pub checkpoint_step: Option<u64>,
}

impl RunEntry {
    /// Domains, architecture and crop size, for lists.
    pub fn description(&self) -> String {
        match (&self.config, &self.spec) {
            (Ok(c), _) => format!("{}→{} · {} ngf {} · {}px", c.domain_a.name, c.domain_b.name, c.generator, c.ngf, c.size),
            (Err(_), Some(m)) => format!("{}→{} · {} ngf {} · {}", m.domain_a.name, m.domain_b.name, m.g_ab.kind, m.g_ab.ngf, m.made_by),
            (Err(e), None) => format!("unreadable: {e}"),
        }
    }

    /// `step 200/400`, or that nothing was saved yet.
    pub fn progress(&self) -> String {
        match (self.checkpoint_step, &self.config) {
            (Some(step), Ok(c)) => format!("step {step}/{}", c.schedule.total_steps()),
            (Some(step), Err(_)) => format!("step {step}"),
            (None, _) => "no checkpoint yet".into(),
        }
    }

    /// Whether this run's steps are counted in iterations (so its length may be changed when resuming).
    pub fn has_iteration_schedule(&self) -> bool {
        matches!(self.config, Ok(TrainConfig { schedule: Schedule::Iters { .. }, .. }))
    }
}

fn is_run(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file() || dir.join(MODEL_FILE).is_file()
}

pub(super) fn subfolders(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

/// The run in `dir`, listed as `name`.
fn run_entry(dir: PathBuf, name: String) -> RunEntry {
    let config = if dir.join(CONFIG_FILE).is_file() {
        TrainConfig::load(&dir).map_err(|e| format!("{e:#}"))
    } else {
        Err("an imported model: no training configuration to resume".into())
    };
    RunEntry { name, spec: TrainConfig::model_spec_with(&dir, config.as_ref().ok()).ok(), config, checkpoint_step: checkpoint_step(&dir), dir }
}

/// The runs under `checkpoints`, sorted by name; a sweep's trials are named `SWEEP/TRIAL`. A
/// missing folder simply has no runs.
pub fn scan_runs(checkpoints: &Path) -> Vec<RunEntry> {
    let name_of = |d: &Path| d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut runs = Vec::new();
    for dir in subfolders(checkpoints) {
        if is_run(&dir) {
            runs.push(run_entry(dir.clone(), name_of(&dir)));
        } else if dir.join(crate::sweep::SWEEP_FILE).is_file() {
            for trial in subfolders(&dir).into_iter().filter(|t| is_run(t)) {
                runs.push(run_entry(trial.clone(), format!("{}/{}", name_of(&dir), name_of(&trial))));
            }
        }
    }
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    runs
}

/// The step recorded in the newest checkpoint's manifest (not verified: this is for display).
fn checkpoint_step(run_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(run_dir.join(LATEST).join(MANIFEST)).ok()?;
    toml::from_str::<Manifest>(&text).ok().map(|m| m.step)
}
