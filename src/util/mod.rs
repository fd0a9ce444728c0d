//! Small shared pieces: a seedable random generator whose streams are stable across versions,
//! and crash-safe file writing.

mod fsio;
mod rng;

pub use fsio::{atomic_write, fsync_dir};
pub use rng::Rng;
