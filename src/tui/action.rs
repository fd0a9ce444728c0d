//! What a screen asks of the App ([`Action`]), and what the App lends a screen while it handles
//! a key or an event or is drawn ([`Ctx`]). Screens own their state and never see the App itself.

use super::dataset_scan::DatasetEntry;
use super::event::AppEvent;
use super::options::TuiOptions;
use super::runs::RunEntry;
use std::sync::mpsc::Sender;

/// A request from a screen, applied by the App in order once the screen has returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Show a message in the status line.
    Info(String),
    /// Show an error in the status line.
    Error(String),
    /// Scan the checkpoints folder again (a run started, ended, or the user asked).
    RefreshRuns,
    /// Show the Translate screen with this run (by its name in the runs list) loaded.
    OpenRun(String),
}

/// The studio's shared things a screen may read, and the channel its background work reports to.
pub struct Ctx<'a> {
    pub options: &'a TuiOptions,
    /// The runs in the checkpoints folder, as last scanned.
    pub runs: &'a [RunEntry],
    /// The datasets the Datasets screen found.
    pub datasets: &'a [DatasetEntry],
    pub events: &'a Sender<AppEvent>,
}
