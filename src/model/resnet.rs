use super::{layers::ConvTranspose2d, Conv2d, GeneratorConfig, GeneratorKind};
use crate::ops::{reflect_pad2d, Act};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// One residual block: pad-conv-norm-relu-pad-conv-norm plus the skip connection.
struct ResnetBlock {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl ResnetBlock {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: Conv2d::new(dim, dim, 3, 1, 0, vb.pp("conv1"))?,
            conv2: Conv2d::new(dim, dim, 3, 1, 0, vb.pp("conv2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward_reflect_norm_act(xs, 1, Act::Relu)?;
        let h = self.conv2.forward_reflect_norm_act(&h, 1, Act::Identity)?;
        xs + h
    }
}

/// The reference `ResnetGenerator` (Johnson et al.): c7s1-ngf, d2ngf, d4ngf, N residual blocks,
/// u2ngf, ungf, c7s1-out with tanh. Checkpoint keys: `stem`, `down.{0,1}`, `blocks.{i}.conv{1,2}`,
/// `up.{0,1}`, `head`, each with `.weight` and `.bias`.
pub struct ResnetGenerator {
    stem: Conv2d,
    down: Vec<Conv2d>,
    blocks: Vec<ResnetBlock>,
    up: Vec<ConvTranspose2d>,
    head: Conv2d,
}

impl ResnetGenerator {
    pub fn new(cfg: &GeneratorConfig, vb: VarBuilder) -> Result<Self> {
        let GeneratorKind::Resnet { blocks: n_blocks } = cfg.kind else {
            candle_core::bail!("ResnetGenerator built with {}", cfg.kind)
        };
        let ngf = cfg.ngf;
        let stem = Conv2d::new(cfg.in_channels, ngf, 7, 1, 0, vb.pp("stem"))?;
        let down = (0..2)
            .map(|i| Conv2d::new(ngf << i, ngf << (i + 1), 3, 2, 1, vb.pp("down").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let blocks = (0..n_blocks)
            .map(|i| ResnetBlock::new(ngf * 4, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let up = (0..2)
            .map(|i| ConvTranspose2d::new(ngf << (2 - i), ngf << (1 - i), 3, 2, 1, 1, vb.pp("up").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let head = Conv2d::new(ngf, cfg.network_out_channels(), 7, 1, 0, vb.pp("head"))?;
        Ok(Self { stem, down, blocks, up, head })
    }

    /// [B,Cin,H,W] → [B,Cout,H,W] (Cout = `cfg.network_out_channels()`); H and W multiples of 4.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = self.stem.forward_norm_act(&reflect_pad2d(xs, 3)?, Act::Relu)?; // [B,ngf,H,W]
        for d in &self.down {
            h = d.forward_norm_act(&h, Act::Relu)?; // [B,2ngf,H/2,W/2] then [B,4ngf,H/4,W/4]
        }
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        for u in &self.up {
            h = u.forward_norm_act(&h, Act::Relu)?;
        }
        self.head.forward(&reflect_pad2d(&h, 3)?)?.tanh() // [B,Cout,H,W]
    }
}
