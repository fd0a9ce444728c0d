//! The Sweeps screen: its state, its keys and what they do: the sweeps in the checkpoints folder,
//! each one's leaderboard re-read as its trials finish, and opening a trial (the best with `b`)
//! on the Translate screen.

use super::action::{Action, Ctx};
use super::keys::{self, move_cursor, Hint, KeyBinding, LIST_MOVES};
use crate::sweep::{self, SweepSpec, TrialRecord};
use crossterm::event::{KeyCode, KeyEvent};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the shown leaderboard is read again while the screen is open.
pub const REFRESH: Duration = Duration::from_secs(2);

/// One sweep folder as last read.
#[derive(Clone, Debug)]
pub struct SweepEntry {
    pub name: String,
    pub dir: PathBuf,
    /// Its definition, or why it cannot be read.
    pub spec: Result<SweepSpec, String>,
    /// Its scored trials, best first.
    pub trials: Vec<TrialRecord>,
}

impl SweepEntry {
    /// Trials in the grid (0 when the definition is unreadable).
    pub fn planned(&self) -> usize {
        self.spec.as_ref().map_or(0, |s| s.grid().len())
    }
}

/// The sweeps under `checkpoints` (folders with a sweep definition), by name.
pub fn scan_sweeps(checkpoints: &Path) -> Vec<SweepEntry> {
    let mut out: Vec<SweepEntry> = super::runs::subfolders(checkpoints)
        .into_iter()
        .filter(|d| d.join(sweep::SWEEP_FILE).is_file())
        .map(|dir| {
            let spec = SweepSpec::load(&dir).map_err(|e| format!("{e:#}"));
            let trials = match &spec {
                Ok(s) => sweep::ranked(sweep::read_trials(&dir), s.metric),
                Err(_) => sweep::read_trials(&dir),
            };
            SweepEntry { name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), dir, spec, trials }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Focus {
    #[default]
    Sweeps,
    Trials,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Empty,
    Lists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Move,
    FocusSweeps,
    FocusTrials,
    Open,
    OpenBest,
    Rescan,
}

pub const KEYS: &[KeyBinding<Command, Mode>] = {
    use Command::*;
    use KeyCode::{Char, Enter, Left, Right};
    use Mode::*;
    &[
        KeyBinding { keys: "↑ ↓", codes: LIST_MOVES, help: "", hint: Some(("↑↓", "select")), modes: &[Lists], command: Move },
        KeyBinding { keys: "← → or h l", codes: &[Left, Char('h')], help: "move between sweeps and trials", hint: Some(("←→", "sweeps/trials")), modes: &[Lists], command: FocusSweeps },
        KeyBinding { keys: "→ or l", codes: &[Right, Char('l')], help: "", hint: None, modes: &[Lists], command: FocusTrials },
        KeyBinding { keys: "Enter", codes: &[Enter], help: "translate with the selected trial", hint: Some(("Enter", "translate with it")), modes: &[Lists], command: Open },
        KeyBinding { keys: "b", codes: &[Char('b')], help: "translate with the sweep's best trial", hint: Some(("b", "best")), modes: &[Lists], command: OpenBest },
        KeyBinding { keys: "r", codes: &[Char('r')], help: "read the sweeps again (also every 2 s)", hint: Some(("r", "rescan")), modes: &[Empty, Lists], command: Rescan },
    ]
};

#[derive(Default)]
pub struct SweepsScreen {
    pub sweeps: Vec<SweepEntry>,
    pub focus: Focus,
    pub sweep_index: usize,
    pub trial_index: usize,
    scanned: Option<Instant>,
}

impl SweepsScreen {
    pub fn mode(&self) -> Mode {
        if self.sweeps.is_empty() {
            Mode::Empty
        } else {
            Mode::Lists
        }
    }

    pub fn hints(&self) -> Vec<Hint> {
        keys::hints(KEYS, self.mode()).collect()
    }

    pub fn selected(&self) -> Option<&SweepEntry> {
        self.sweeps.get(self.sweep_index)
    }

    /// Reads the sweeps again, keeping the selection on the same sweep and trial by name.
    pub fn rescan(&mut self, checkpoints: &Path) {
        let sweep = self.selected().map(|s| s.name.clone());
        let trial = self.selected().and_then(|s| s.trials.get(self.trial_index)).map(|t| t.trial.clone());
        self.sweeps = scan_sweeps(checkpoints);
        self.sweep_index = sweep.and_then(|n| self.sweeps.iter().position(|s| s.name == n)).unwrap_or(0);
        let trials = self.selected().map(|s| s.trials.as_slice()).unwrap_or_default();
        self.trial_index = trial.and_then(|n| trials.iter().position(|t| t.trial == n)).unwrap_or(0).min(trials.len().saturating_sub(1));
        self.scanned = Some(Instant::now());
    }

    /// Called on every tick while the screen is shown: the leaderboard fills as trials finish.
    pub fn tick(&mut self, checkpoints: &Path) {
        if self.scanned.is_none_or(|t| t.elapsed() >= REFRESH) {
            self.rescan(checkpoints);
        }
    }

    pub fn key(&mut self, key: KeyEvent, ctx: &Ctx) -> Vec<Action> {
        let Some(command) = keys::command(KEYS, self.mode(), key.code) else { return vec![] };
        match command {
            Command::Move => match self.focus {
                Focus::Sweeps => {
                    move_cursor(&mut self.sweep_index, self.sweeps.len(), key.code);
                    self.trial_index = 0;
                }
                Focus::Trials => {
                    let n = self.selected().map_or(0, |s| s.trials.len());
                    move_cursor(&mut self.trial_index, n, key.code);
                }
            },
            Command::FocusSweeps => self.focus = Focus::Sweeps,
            Command::FocusTrials => self.focus = Focus::Trials,
            Command::Open | Command::OpenBest => {
                let Some(sweep) = self.selected() else { return vec![] };
                let index = if command == Command::OpenBest { 0 } else { self.trial_index };
                return match sweep.trials.get(index) {
                    Some(t) => vec![Action::OpenRun(format!("{}/{}", sweep.name, t.trial))],
                    None => vec![Action::Error(format!("sweep {} has no scored trial yet", sweep.name))],
                };
            }
            Command::Rescan => {
                self.rescan(&ctx.options.checkpoints);
                return vec![Action::RefreshRuns];
            }
        }
        vec![]
    }
}
