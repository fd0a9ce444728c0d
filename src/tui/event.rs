//! The studio's one event channel: key presses and ticks from the input thread, progress from the
//! training thread and results of background jobs all arrive as [`AppEvent`]s, in order. Also the
//! input thread, and [`spawn_job`], which runs a screen's work off the UI thread.

use super::dataset_scan::DatasetEntry;
use super::models::{LoadedModel, Translation};
use crate::train::{RunOutcome, TrainEvent};
use anyhow::{Context, Result};
use crossterm::event::{self, Event, KeyEvent, KeyEventKind};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Everything that can change the studio's state.
pub enum AppEvent {
    Key(KeyEvent),
    /// Time passed (or the terminal was resized): redraw.
    Tick,
    /// Reading the terminal failed: the studio stops any training (saving it) and quits.
    InputFailed(String),
    /// SIGTERM or SIGHUP (a closed terminal or SSH session, `kill`, a cluster's time limit): as
    /// Ctrl-C, the studio stops any training (saving it) and quits; a second one quits at once.
    Interrupted,
    Train(TrainEvent),
    /// The training thread returned (an error message if training failed or panicked).
    TrainingEnded(Result<RunOutcome, String>),
    Job(JobResult),
}

/// Results of work done off the UI thread. Requests that may be superseded (image loads,
/// translations) carry the id they were started with, so stale answers are dropped.
pub enum JobResult {
    DatasetsScanned(Result<Vec<DatasetEntry>, String>),
    ImageLoaded { request: u64, result: Result<image::DynamicImage, String> },
    DatasetCreated(Result<String, String>),
    ModelLoaded { request: u64, result: Result<LoadedModel, String> },
    Translated { request: u64, result: Result<Translation, String> },
    /// How far a translation has got: (stage, done, total), for large images that go in tiles.
    TranslationProgress { request: u64, stage: &'static str, done: u64, total: u64 },
    TranslationSaved(Result<std::path::PathBuf, String>),
}

/// Reads terminal events on a thread of its own, sending a tick whenever `tick` passes quietly.
/// It ends by itself once the receiver is gone.
pub fn spawn_input_thread(tx: Sender<AppEvent>, tick: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || loop {
            let event = match event::poll(tick) {
                Ok(true) => match event::read() {
                    // Windows also reports releases; acting on them would double every key.
                    Ok(Event::Key(key)) if key.kind == KeyEventKind::Press => Some(AppEvent::Key(key)),
                    Ok(Event::Resize(..)) => Some(AppEvent::Tick),
                    Ok(_) => None,
                    Err(e) => Some(AppEvent::InputFailed(e.to_string())),
                },
                Ok(false) => Some(AppEvent::Tick),
                Err(e) => Some(AppEvent::InputFailed(e.to_string())),
            };
            if let Some(event) = event {
                let failed = matches!(event, AppEvent::InputFailed(_));
                if tx.send(event).is_err() || failed {
                    return;
                }
            }
        })
        .context("cannot start the input thread")?;
    Ok(())
}

/// Runs `work` on a new thread and sends its result, wrapped by `wrap`, into the channel. Errors
/// and panics both become messages for the UI, and so does failing to start the thread.
pub fn spawn_job<T, W>(tx: &Sender<AppEvent>, work: impl FnOnce() -> Result<T> + Send + 'static, wrap: W)
where
    T: 'static,
    W: FnOnce(Result<T, String>) -> JobResult + Clone + Send + 'static,
{
    let report_failure = wrap.clone();
    let job_tx = tx.clone();
    let spawned = std::thread::Builder::new().name("studio-job".into()).spawn(move || {
        let result = catch_panics(work);
        crate::ops::release_free_memory();
        let _ = job_tx.send(AppEvent::Job(wrap(result)));
    });
    if let Err(e) = spawned {
        let _ = tx.send(AppEvent::Job(report_failure(Err(format!("cannot start a worker thread: {e}")))));
    }
}

/// Calls `work`, turning its error or panic into a message.
pub fn catch_panics<T>(work: impl FnOnce() -> Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(format!("internal error: {}", panic_message(panic.as_ref()))),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a worker thread panicked".into()
    }
}
