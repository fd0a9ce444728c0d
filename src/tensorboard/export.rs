//! `tensorboard-export`: the events of a run from what it saved (`log.jsonl`, `samples/`,
//! `config.toml`), for runs trained before events existed or with `--no-tensorboard`.

use super::events::{self, event, event_files};
use super::proto::Event;
use crate::train::{TrainConfig, LOG_FILE};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub file: PathBuf,
    pub scalar_steps: usize,
    pub images: usize,
}

/// The preview grids a run saved, as (step, path), by step.
fn sample_files(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir.join(crate::train::SAMPLES_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((crate::train::sample_step(&e.file_name().to_string_lossy())?, e.path())))
        .collect();
    out.sort();
    out
}

/// Writes the events of the run in `run_dir` into a new event file that replaces the run's
/// earlier ones (everything in them comes from the same saved files). Refuses a run that is
/// being trained. A sample that cannot be read is skipped and named in `warnings`.
pub fn export_run(run_dir: &Path, warnings: &mut Vec<String>) -> Result<Exported> {
    let cfg = TrainConfig::load(run_dir)?;
    if crate::train::is_being_trained(run_dir) {
        bail!("{} is being trained; its events are being written already", run_dir.display());
    }
    let log_path = run_dir.join(LOG_FILE);
    let log = std::fs::read_to_string(&log_path).with_context(|| format!("cannot read {}", log_path.display()))?;
    let mut timeline: Vec<Event> = vec![event(0, vec![super::config_hparams(&cfg)?, super::config_text(&cfg)?])];
    let mut scalar_steps = 0;
    let mut last_loss_step = 0;
    for (n, line) in log.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            warnings.push(format!("{}:{}: not a log line, skipped", log_path.display(), n + 1));
            continue;
        };
        let Some(step) = value.get("step").and_then(|s| s.as_u64()) else { continue };
        if value.get("lr").is_some() {
            last_loss_step = last_loss_step.max(step);
        }
        let values = super::log_line_values(&value);
        if !values.is_empty() {
            scalar_steps += 1;
            timeline.push(event(step, values));
        }
    }
    let mut images = 0;
    for (step, path) in sample_files(run_dir) {
        match crate::data::decode_image(&path) {
            Ok(img) => {
                timeline.push(event(step, vec![events::image(super::SAMPLES_TAG, &img)?]));
                images += 1;
            }
            Err(e) => warnings.push(format!("{}: {e:#}, skipped", path.display())),
        }
    }
    // Stable: a step's scalars stay before its image, as training writes them.
    timeline.sort_by_key(|e| e.step);
    if last_loss_step > 0 && last_loss_step >= cfg.schedule.total_steps() {
        timeline.push(event(last_loss_step, vec![events::session_end_success()]));
    }

    let old = event_files(run_dir);
    let file = run_dir.join(events::new_file_name());
    crate::util::atomic_write(&file, &events::file_bytes(&timeline))?;
    for f in old.iter().filter(|f| **f != file) {
        std::fs::remove_file(f).with_context(|| format!("cannot remove the earlier event file {}", f.display()))?;
    }
    Ok(Exported { file, scalar_steps, images })
}
