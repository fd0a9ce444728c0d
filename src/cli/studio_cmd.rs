//! The CLI's way into the studio (`cyclestudio tui`, or no command at all).

use super::TuiArgs;
use crate::tui::TuiOptions;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub fn open(checkpoints: &Path, a: TuiArgs) -> Result<()> {
    let datasets = if a.datasets.is_empty() { vec![PathBuf::from(crate::data::DEFAULT_DATASETS_DIR)] } else { a.datasets };
    crate::tui::run(TuiOptions { checkpoints: checkpoints.to_path_buf(), datasets, graphics: a.graphics })
}
