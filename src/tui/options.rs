//! Where the studio looks for things: the options `cyclestudio studio` passes in.

use super::preview::Graphics;
use std::path::PathBuf;

/// Where the studio looks for things.
#[derive(Clone, Debug)]
pub struct TuiOptions {
    pub checkpoints: PathBuf,
    /// Folders holding datasets (default: `datasets`).
    pub datasets: Vec<PathBuf>,
    /// Force a graphics protocol for previews: kitty, sixel, iterm2 or halfblocks.
    pub graphics: Option<Graphics>,
}
