//! The CycleGAN networks: ResNet and U-Net generators, the PatchGAN discriminator, their
//! configuration (serialised into checkpoints) and the layers they are built from.

mod config;
mod discriminator;
mod layers;
mod resnet;
mod unet;

pub use config::{DiscriminatorConfig, GeneratorConfig, GeneratorKind};
pub use discriminator::PatchGan;
pub use layers::{Conv2d, ConvTranspose2d};
pub use resnet::ResnetGenerator;
pub use unet::UnetGenerator;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// A generator of any supported architecture.
pub enum Generator {
    Resnet(ResnetGenerator),
    Unet(UnetGenerator),
}

impl Generator {
    pub fn new(cfg: &GeneratorConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match cfg.kind {
            GeneratorKind::Resnet { .. } => Self::Resnet(ResnetGenerator::new(cfg, vb)?),
            GeneratorKind::Unet { .. } => Self::Unet(UnetGenerator::new(cfg, vb)?),
        })
    }

    /// `xs` [B,Cin,H,W] in [-1,1] → [B,Cout,H,W] in [-1,1]. H and W must be multiples of
    /// `cfg.kind.size_multiple()`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Resnet(g) => g.forward(xs),
            Self::Unet(g) => g.forward(xs),
        }
    }
}

/// Number of scalar parameters in a list of tensors.
pub fn count_params(tensors: &[Tensor]) -> usize {
    tensors.iter().map(|t| t.elem_count()).sum()
}
