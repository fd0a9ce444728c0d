//! Datasets on disk: the folders under the datasets roots that hold `trainA/` and `trainB/`,
//! opened (or why they cannot be).

use crate::data::dataset::Check;
use crate::data::Dataset;
use std::path::{Path, PathBuf};

/// A folder that looks like a dataset (it has `trainA/` and `trainB/`), opened or not.
#[derive(Clone, Debug)]
pub struct DatasetEntry {
    pub name: String,
    pub dir: PathBuf,
    /// The scanned dataset, or why it could not be opened (e.g. a broken `dataset.toml`).
    pub dataset: Result<Dataset, String>,
}

/// The datasets under each root, in root order and by name within a root. A root that is itself
/// a dataset is listed too. Roots that do not exist are skipped: the default `datasets` folder
/// appears with the first created dataset.
pub fn discover(roots: &[PathBuf]) -> Vec<DatasetEntry> {
    let is_dataset = |dir: &Path| dir.join("trainA").is_dir() && dir.join("trainB").is_dir();
    let mut found = Vec::new();
    for root in roots {
        let mut dirs: Vec<PathBuf> = match std::fs::read_dir(root) {
            Ok(entries) => entries.flatten().map(|e| e.path()).filter(|d| is_dataset(d)).collect(),
            Err(_) => continue,
        };
        dirs.sort();
        if is_dataset(root) {
            dirs.insert(0, root.clone());
        }
        found.extend(dirs.into_iter().map(|dir| DatasetEntry {
            name: dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()),
            dataset: Dataset::open(&dir, Check::Header).map_err(|e| format!("{e:#}")),
            dir,
        }));
    }
    found
}
