//! Images and datasets: decoding any image safely into tensors, the two-domain dataset layout,
//! scanning with problem reports, dataset creation, and the background batch loader.

pub mod create;
pub mod dataset;
pub mod image_io;
pub mod loader;

pub use dataset::{Dataset, DatasetSpec, Domain, DomainSpec, ScanReport};
pub use image_io::{centre_square, decode_image, short_side_dims, tensor_to_image, Pixels};
pub use loader::{Batch, BatchLoader, LoaderOptions};

/// The folder datasets are created in and the studio looks in, unless told otherwise.
pub const DEFAULT_DATASETS_DIR: &str = "datasets";
