//! One trainer per run: an exclusive advisory lock on the run folder, held by the OS for the life
//! of a training (released when the process ends, even by `kill -9`, so it is never stale).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// The lock file in a run folder; it holds the trainer's process id, for the message others get.
pub const LOCK_FILE: &str = "train.lock";

/// Held while a run is being trained; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `run_dir` (creating it) for training, or fails at once naming the process that holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the run lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder).ok();
                let pid = match holder.trim() {
                    "" => "unknown".to_string(),
                    p => p.to_string(),
                };
                bail!(
                    "run {} is being trained by another process (PID {pid}); wait for it to finish or stop it \
                     (Ctrl-C, or `x` in the studio) before training it again — translating from it works meanwhile",
                    run_dir.display()
                );
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}

/// Whether a trainer holds the lock of `run_dir` now (readers then expect checkpoints to be
/// swapped under them, and retry).
pub fn is_being_trained(run_dir: &Path) -> bool {
    let Ok(file) = File::open(run_dir.join(LOCK_FILE)) else { return false };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_run_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run).unwrap();
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(err.contains(&format!("PID {}", std::process::id())), "{err}");
        assert!(is_being_trained(&run));
        drop(first);
        assert!(!is_being_trained(&run));
        RunLock::acquire(&run).unwrap();
    }
}
