//! cyclestudio: unpaired image-to-image translation (CycleGAN) with a CLI and a terminal studio.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod eval;
pub mod health;
pub mod interop;
pub mod model;
pub mod ops;
pub mod train;
pub mod translate;
pub mod tui;
pub mod util;
