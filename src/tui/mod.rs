//! The studio: a terminal UI (ratatui) for datasets, training and previews (being written).
use std::path::PathBuf;

/// Where the studio looks for things.
#[derive(Clone, Debug)]
pub struct TuiOptions {
    pub checkpoints: PathBuf,
    /// Folders holding datasets (default: `datasets`).
    pub datasets: Vec<PathBuf>,
    /// Force a graphics protocol for previews: kitty, sixel, iterm2 or halfblocks.
    pub graphics: Option<String>,
}

pub fn run(_opts: TuiOptions) -> anyhow::Result<()> {
    anyhow::bail!("the studio is not built yet")
}
