//! The U-Net generator (pix2pix's `unet_128` / `unet_256`).

use super::{layers::ConvTranspose2d, Conv2d, GeneratorConfig, GeneratorKind};
use crate::ops::{leaky_relu, Act};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// The reference `UnetGenerator`: `downs` levels of 4×4 stride-2 convolutions with skip
/// connections. Level 0 is the outermost. Checkpoint keys: `down.{i}` and `up.{i}`.
pub struct UnetGenerator {
    down: Vec<Conv2d>,
    up: Vec<ConvTranspose2d>,
}

impl UnetGenerator {
    pub fn new(cfg: &GeneratorConfig, vb: VarBuilder) -> Result<Self> {
        let GeneratorKind::Unet { downs } = cfg.kind else {
            candle_core::bail!("UnetGenerator built with {}", cfg.kind)
        };
        if downs < 5 {
            candle_core::bail!("a U-Net needs at least 5 levels, got {downs}");
        }
        let ngf = cfg.ngf;
        // Channel width of the features leaving level i's down convolution.
        let inner = |i: usize| ngf * (1 << i.min(3));
        let mut down = Vec::with_capacity(downs);
        let mut up = Vec::with_capacity(downs);
        for i in 0..downs {
            let input = if i == 0 { cfg.in_channels } else { inner(i - 1) };
            down.push(Conv2d::new(input, inner(i), 4, 2, 1, vb.pp("down").pp(i))?);
            // The innermost level has no skip below it; others receive [skip, sub-output].
            let up_in = if i == downs - 1 { inner(i) } else { 2 * inner(i) };
            let up_out = if i == 0 { cfg.network_out_channels() } else { inner(i - 1) };
            up.push(ConvTranspose2d::new(up_in, up_out, 4, 2, 1, 0, vb.pp("up").pp(i))?);
        }
        Ok(Self { down, up })
    }

    /// `[B,Cin,H,W]` → `[B,Cout,H,W]` (Cout = `cfg.network_out_channels()`); H and W multiples of 2^downs.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.level(0, xs)
    }

    /// The output of level `i`'s inner model for input `xs` (before the reference concatenates
    /// the skip connection).
    fn level(&self, i: usize, xs: &Tensor) -> Result<Tensor> {
        let last = self.down.len() - 1;
        let h = if i < last {
            // The reference's LeakyReLU is in place, so the skip it concatenates is the activated
            // tensor, not the raw one: reproduce that.
            let act = if i == 0 {
                leaky_relu(&self.down[i].forward(xs)?, 0.2)?
            } else {
                self.down[i].forward_norm_act(xs, Act::LeakyRelu(0.2))?
            };
            let sub = self.level(i + 1, &act)?;
            Tensor::cat(&[&act, &sub], 1)?
        } else {
            self.down[i].forward(xs)?
        };
        if i == 0 {
            self.up[i].forward(&h.relu()?)?.tanh()
        } else {
            self.up[i].forward_norm_act(&h.relu()?, Act::Identity)
        }
    }
}
