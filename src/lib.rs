//! cyclestudio: image-to-image translation (CycleGAN, CUT and FastCUT) with a CLI and a terminal
//! studio. The `cyclestudio` binary is a thin front end over this library; the user's guide is in
//! the repository's `docs/` folder.
//!
//! Translating an image from Rust: open a model, translate, save. [`translate::Translator`] loads a
//! run folder (`Translator::load("checkpoints/my_run".as_ref(), "cpu")`) or, as here, the grey→colour
//! model built into the library; the image keeps its size and any alpha channel.
//!
//! ```
//! use cyclestudio::translate::{ModelSource, Translator};
//!
//! # fn main() -> anyhow::Result<()> {
//! let model = Translator::open(&ModelSource::BuiltIn, "cpu")?;
//! assert_eq!(model.targets(), ["color"]);
//! // Any png, jpeg, webp, … at any size (this one is in the repository's demo dataset).
//! let grey = cyclestudio::data::decode_image("datasets/demo/testA/canyon0.png".as_ref())?;
//! let colour = model.translate("color", &grey)?;
//! assert_eq!((colour.width(), colour.height()), (grey.width(), grey.height()));
//! colour.save(std::env::temp_dir().join("canyon0.color.png"))?;
//! # Ok(())
//! # }
//! ```
//!
//! Where things are: [`train`] (the run request, the training loop, CycleGAN and CUT),
//! [`translate`] (one image at any size, whole folders), [`model`] (the networks), [`data`]
//! (decoding, datasets), [`eval`] (PSNR/SSIM, FID/KID, anomaly scores), [`interop`] (PyTorch and
//! ONNX), [`checkpoint`], [`tui`] (the studio) and [`cli`] (the command line).

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod eval;
pub mod health;
pub mod interop;
pub mod model;
pub mod ops;
pub mod sweep;
pub mod tensorboard;
pub mod train;
pub mod translate;
pub mod tui;
pub mod util;
