//! Images and datasets: decoding any image safely into tensors, the two-domain dataset layout,
//! scanning with problem reports, dataset creation, and the background batch loader.

pub mod create;
pub mod dataset;
pub mod image_io;
pub mod loader;

pub use dataset::{Dataset, DatasetSpec, Domain, DomainSpec, ScanReport};
pub use image_io::{decode_image, image_to_tensor, tensor_to_image, Pixels};
pub use loader::{Batch, BatchLoader, LoaderOptions};
