//! The PatchGAN discriminator (70×70 for 3 layers), plain or anti-aliased (CUT).

use super::{Conv2d, DiscriminatorConfig};
use crate::ops::Act;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// The reference `NLayerDiscriminator` (PatchGAN): 4×4 convolutions, LeakyReLU 0.2, instance norm
/// on all but the first and last layers. With 3 layers each output judges a 70×70 patch.
/// Checkpoint keys: `layers.{0..=n_layers+1}`. The anti-aliased variant (CUT) has the same keys
/// and shapes: each stride-2 convolution becomes a stride-1 one followed (after its norm and
/// activation) by a [`blur_down`](super::antialias::blur_down).
#[derive(Clone)]
pub struct PatchGan {
    layers: Vec<Conv2d>,
    /// Layers followed by a blur-pool (the first `n_layers` when anti-aliased).
    pooled: usize,
}

impl PatchGan {
    pub fn new(cfg: &DiscriminatorConfig, vb: VarBuilder) -> Result<Self> {
        let n = cfg.n_layers;
        let width = |i: usize| cfg.ndf * (1usize << i.min(3));
        let down = if cfg.antialias { 1 } else { 2 };
        let mut layers = vec![Conv2d::new(cfg.in_channels, cfg.ndf, 4, down, 1, vb.pp("layers").pp(0))?];
        for i in 1..=n {
            let stride = if i < n { down } else { 1 };
            layers.push(Conv2d::new(width(i - 1), width(i), 4, stride, 1, vb.pp("layers").pp(i))?);
        }
        layers.push(Conv2d::new(width(n), 1, 4, 1, 1, vb.pp("layers").pp(n + 1))?);
        Ok(Self { layers, pooled: if cfg.antialias { n } else { 0 } })
    }

    /// `[B,C,H,W]` → `[B,1,H',W']` patch scores (logits for the vanilla loss).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut h = crate::ops::to_activation(xs)?; // bf16 where the convolutions run in bf16
        let act = Act::LeakyRelu(0.2);
        for (i, layer) in self.layers.iter().enumerate() {
            let pooled = i < self.pooled;
            h = if i == last {
                layer.forward(&h)?
            } else if i == 0 && pooled {
                layer.forward_act_blur_down(&h, act)?
            } else if i == 0 {
                layer.forward_act(&h, act)?
            } else if pooled {
                layer.forward_norm_act_blur_down(&h, act)?
            } else {
                layer.forward_norm_act(&h, act)?
            };
        }
        h.to_dtype(xs.dtype())
    }

    /// A copy whose weights are cut off from autograd, used while the generators are updated so
    /// that backward does not compute discriminator weight gradients it would throw away.
    pub fn frozen(&self) -> Self {
        Self { layers: self.layers.iter().map(Conv2d::detached).collect(), pooled: self.pooled }
    }
}
