//! TensorBoard event files for runs: scalars from the same lines as `log.jsonl`, sample grids,
//! the settings as text and HParams, written while training and exported for older runs.

pub mod events;
mod export;
pub mod proto;

pub use events::EventWriter;
pub use export::export_run;

use crate::train::TrainConfig;
use anyhow::Result;
use proto::SummaryValue;

/// The text summary holding a run's settings; written again (superseding) each time it starts.
pub const CONFIG_TAG: &str = "config";
/// The image summary of the preview grids (`samples/step_N.png`).
pub const SAMPLES_TAG: &str = "samples";

/// The scalars of one `log.jsonl` line, as (tag, value): a loss line's terms as `loss/NAME` and
/// its `lr`, `epoch`, `images_per_sec` as `train/NAME`; a health or validation line's numbers as
/// `health/…` and `validation/…` (nested fields joined with `/`). Steps, switches and texts are not
/// scalars.
pub fn scalars_of_log_line(line: &serde_json::Value) -> Vec<(String, f64)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f64)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "step") {
                    walk(&format!("{prefix}/{k}"), v, out);
                }
            }
            serde_json::Value::Number(n) => out.extend(n.as_f64().map(|x| (prefix.to_string(), x))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let Some(fields) = line.as_object() else { return out };
    for (key, value) in fields.iter().filter(|(k, _)| k.as_str() != "step") {
        let prefix = match key.as_str() {
            _ if value.is_object() => key.clone(),
            "lr" | "epoch" | "images_per_sec" => format!("train/{key}"),
            _ => format!("loss/{key}"),
        };
        walk(&prefix, value, &mut out);
    }
    out
}

/// Scalar summaries of a log line (see [`scalars_of_log_line`]).
pub fn log_line_values(line: &serde_json::Value) -> Vec<SummaryValue> {
    scalars_of_log_line(line).iter().map(|(tag, v)| events::scalar(tag, *v)).collect()
}

/// The settings summary: the run's `config.toml` as a code block (the text dashboard renders
/// Markdown).
pub fn config_text(cfg: &TrainConfig) -> Result<SummaryValue> {
    let toml = toml::to_string(cfg)?;
    let indented: String = toml.lines().map(|l| format!("    {l}\n")).collect();
    Ok(events::text(CONFIG_TAG, &indented))
}

/// The run's settings for the HParams dashboard.
pub fn config_hparams(cfg: &TrainConfig) -> Result<SummaryValue> {
    Ok(events::session_start(&serde_json::to_value(cfg)?))
}

/// A training's event file with the policy training needs: writing never stops training; the
/// first failure is reported (as the warning the methods return) and later writes are skipped.
pub struct RunEvents {
    writer: Option<EventWriter>,
}

impl RunEvents {
    /// No events (`--no-tensorboard`).
    pub fn off() -> Self {
        Self { writer: None }
    }

    /// The event file of a run that starts (or resumes) at `step` (see [`EventWriter::open`]:
    /// what a run that stopped before wrote after `step` is dropped; a run started from scratch
    /// again starts its events again), or none and a warning saying why.
    pub fn open(dir: &std::path::Path, step: u64) -> (Self, Option<String>) {
        match EventWriter::open(dir, Some(step), &[CONFIG_TAG, events::SESSION_START_TAG]) {
            Ok(w) => (Self { writer: Some(w) }, None),
            Err(e) => (Self::off(), Some(format!("TensorBoard events are off for this run: {e:#}"))),
        }
    }

    fn attempt(&mut self, f: impl FnOnce(&mut EventWriter) -> Result<()>) -> Option<String> {
        let w = self.writer.as_mut()?;
        let e = f(w).err()?;
        self.writer = None;
        Some(format!("TensorBoard events stop here (training goes on): {e:#}"))
    }

    /// Writes `values` at `step`; values that could not be built (`Err`) are a failure too.
    pub fn write(&mut self, step: u64, values: Result<Vec<SummaryValue>>) -> Option<String> {
        self.attempt(|w| w.write(step, values?))
    }

    pub fn flush(&mut self) -> Option<String> {
        self.attempt(|w| w.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_lines_become_tagged_scalars() {
        let loss = json!({"step": 10, "epoch": 1, "lr": 0.0002, "images_per_sec": 3.5, "cycle_a": 0.5, "d_b": 0.25});
        let mut s = scalars_of_log_line(&loss);
        s.sort_by(|a, b| a.0.cmp(&b.0));
        let tags: Vec<&str> = s.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["loss/cycle_a", "loss/d_b", "train/epoch", "train/images_per_sec", "train/lr"]);
        let health = json!({"step": 10, "health": {"step": 10, "metrics": {"diversity_ab": 0.3}, "cycle_ema": 0.1, "warnings": ["x"]}});
        let mut s = scalars_of_log_line(&health);
        s.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(s, [("health/cycle_ema".to_string(), 0.1), ("health/metrics/diversity_ab".to_string(), 0.3)]);
        let val = json!({"step": 10, "validation": {"step": 10, "kid": 0.01, "best": true, "psnr_ab": 21.5}});
        let tags: Vec<String> = scalars_of_log_line(&val).into_iter().map(|(t, _)| t).collect();
        assert_eq!(tags, ["validation/kid", "validation/psnr_ab"]);
    }

    #[test]
    fn a_failed_write_is_reported_once_and_then_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ev, warn) = RunEvents::open(dir.path(), 0);
        assert!(warn.is_none());
        assert!(ev.write(1, Ok(vec![events::scalar("a", 1.0)])).is_none());
        let w = ev.write(2, Err(anyhow::anyhow!("disk full")));
        assert!(w.is_some_and(|w| w.contains("disk full")));
        assert!(ev.write(3, Err(anyhow::anyhow!("again"))).is_none());
        assert!(ev.flush().is_none());
        let (_, warn) = RunEvents::open(&dir.path().join("missing"), 0);
        assert!(warn.is_some());
    }
}
