//! Using a trained model: translating one image at any size and mode (padding, tiling, alpha),
//! and converting whole folders with a pipelined, resumable batch job.

mod convert;
mod model;
mod tiling;

pub use convert::{convert_folder, ConvertOptions, ConvertSummary, Shard};
pub use model::{default_model_dir, ModelSource, Translator};
pub use tiling::{translate_batch, translate_image, TileProgress, TranslateOptions, DEFAULT_MARGIN};

use std::path::{Path, PathBuf};

/// Where a translation of `input` to `domain` goes by default: `INPUT_STEM.DOMAIN.png` beside it.
pub fn default_output_path(input: &Path, domain: &str) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    input.with_file_name(format!("{stem}.{domain}.png"))
}

/// True if `path` lies inside a dataset folder (one with `dataset.toml`, or `trainA/` and
/// `trainB/`), where a saved translation would be scanned as one more image of a domain.
pub fn inside_dataset(path: &Path) -> bool {
    path.ancestors().skip(1).any(|d| d.join(crate::data::dataset::SPEC_FILE).is_file() || (d.join("trainA").is_dir() && d.join("trainB").is_dir()))
}
