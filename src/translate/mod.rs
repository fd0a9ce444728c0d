//! Using a trained model: translating one image at any size and mode (padding, tiling, alpha),
//! and converting whole folders with a pipelined, resumable batch job.

mod convert;
mod model;
mod tiling;

pub use convert::{convert_folder, ConvertOptions, ConvertSummary};
pub use model::{default_model_dir, Translator};
pub use tiling::{translate_batch, translate_image, TranslateOptions};
