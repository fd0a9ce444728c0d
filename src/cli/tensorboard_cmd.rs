//! The CLI's `tensorboard-export`: events for runs that have none, from their saved files.

use super::TensorboardExportArgs;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The run folders `arg` names: a run (it has a config), a run name under `checkpoints`, or a
/// folder whose sub-folders are runs.
fn runs_named(checkpoints: &Path, arg: &Path) -> Result<Vec<PathBuf>> {
    let is_run = |p: &Path| p.join(crate::train::CONFIG_FILE).is_file();
    let dir = if arg.exists() { arg.to_path_buf() } else { checkpoints.join(arg) };
    if is_run(&dir) {
        return Ok(vec![dir]);
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| is_run(p)).collect();
    runs.sort();
    if runs.is_empty() {
        bail!("{}: not a run folder (no {}) and holds no runs", arg.display(), crate::train::CONFIG_FILE);
    }
    Ok(runs)
}

pub fn export(checkpoints: &Path, args: TensorboardExportArgs) -> Result<()> {
    let mut runs = Vec::new();
    for arg in &args.runs {
        runs.extend(runs_named(checkpoints, arg)?);
    }
    let mut failed = 0;
    for run in &runs {
        let mut warnings = Vec::new();
        match crate::tensorboard::export_run(run, &mut warnings) {
            Ok(done) => outln!("{}: {} logged steps, {} sample grids → {}", run.display(), done.scalar_steps, done.images, done.file.display()),
            Err(e) => {
                eprintln!("{}: {e:#}", run.display());
                failed += 1;
            }
        }
        for w in warnings {
            eprintln!("warning: {w}");
        }
    }
    if failed > 0 {
        bail!("{failed} of {} run(s) could not be exported", runs.len());
    }
    outln!("View them with: tensorboard --logdir {}", common_parent(&runs).display());
    Ok(())
}

/// The folder to point `--logdir` at: the runs' common parent (or the run itself when one).
fn common_parent(runs: &[PathBuf]) -> PathBuf {
    match runs {
        [one] => one.clone(),
        _ => {
            let first = runs.first().and_then(|r| r.parent()).unwrap_or(Path::new("."));
            first.ancestors().find(|a| runs.iter().all(|r| r.starts_with(a))).unwrap_or(Path::new(".")).to_path_buf()
        }
    }
}
