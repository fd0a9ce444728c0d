//! The ResNet generator (Johnson et al.), plain as the CycleGAN reference's or anti-aliased as
//! CUT's, and the encoder features PatchNCE compares.

use super::antialias::blur_down;
use super::norm_stats::{norm_act, norm_act_blur_down};
use super::{layers::ConvTranspose2d, Conv2d, GeneratorConfig, GeneratorKind};
use crate::ops::{reflect_pad2d, to_activation, Act};
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
        // In training on the CPU the whole block is one op (`ops::residual`), which normalises
        // inside itself: not while tiled translation records or replays statistics.
        if super::norm_stats::idle() {
            if let Some(out) = crate::ops::residual::residual_block(xs, &self.conv1.weight, &self.conv2.weight)? {
                return Ok(out);
            }
        }
        let h = self.conv1.forward_reflect_norm_act(xs, 1, Act::Relu)?;
        self.conv2.forward_reflect_norm_residual(&h, 1, xs)
    }
}

/// One up-sampling layer: CycleGAN's transposed convolution, or CUT's blur up-sampling
/// followed by a stride-1 convolution (both then instance norm and ReLU).
enum Up {
    Transposed(ConvTranspose2d),
    Blur(Conv2d),
}

/// The reference `ResnetGenerator` (Johnson et al.): c7s1-ngf, d2ngf, d4ngf, N residual blocks,
/// u2ngf, ungf, c7s1-out with tanh. Checkpoint keys: `stem`, `down.{0,1}`, `blocks.{i}.conv{1,2}`,
/// `up.{0,1}`, `head`, each with `.weight` and `.bias`. The anti-aliased variant (CUT) has the
/// same keys and shapes: its down convolutions have stride 1 and are followed by [`blur_down`],
/// its up layers are [`blur_up`](super::antialias::blur_up) then a 3×3 convolution.
pub struct ResnetGenerator {
    stem: Conv2d,
    down: Vec<Conv2d>,
    blocks: Vec<ResnetBlock>,
    up: Vec<Up>,
    head: Conv2d,
    antialias: bool,
}

/// An encoder feature map `map + bias` `[B,C,H,W]`, with the bias of the convolution that made it
/// kept apart (`None`: no bias): PatchNCE reads a few hundred positions of a map, so the bias is
/// added to those ([`Feature::full`] adds it everywhere).
#[derive(Clone, Debug)]
pub struct Feature {
    pub map: Tensor,
    /// `[C]`
    pub bias: Option<Tensor>,
}

impl From<Tensor> for Feature {
    fn from(map: Tensor) -> Self {
        Self { map, bias: None }
    }
}

impl Feature {
    /// The whole feature map, bias included.
    pub fn full(&self) -> Result<Tensor> {
        match &self.bias {
            Some(b) => super::layers::add_bias(&self.map, b),
            None => Ok(self.map.clone()),
        }
    }

    /// Cut off from autograd.
    pub fn detach(&self) -> Self {
        Self { map: self.map.detach(), bias: self.bias.as_ref().map(Tensor::detach) }
    }

    /// The same feature with `f` applied to the map (a spatial rearrangement, such as a flip,
    /// which the per-channel bias does not notice).
    pub fn map_spatial(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self { map: f(&self.map)?, bias: self.bias.clone() })
    }
}

/// Index in the reference's `nn.Sequential` of the first residual block of the anti-aliased
/// generator (pad, conv, norm, relu, then 2 × (conv, norm, relu, Downsample)).
const FIRST_BLOCK: usize = 12;

impl ResnetGenerator {
    pub fn new(cfg: &GeneratorConfig, vb: VarBuilder) -> Result<Self> {
        let GeneratorKind::Resnet { blocks: n_blocks } = cfg.kind else {
            candle_core::bail!("ResnetGenerator built with {}", cfg.kind)
        };
        let ngf = cfg.ngf;
        let stem = Conv2d::new(cfg.in_channels, ngf, 7, 1, 0, vb.pp("stem"))?;
        let stride = if cfg.antialias { 1 } else { 2 };
        let down = (0..2)
            .map(|i| Conv2d::new(ngf << i, ngf << (i + 1), 3, stride, 1, vb.pp("down").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let blocks = (0..n_blocks)
            .map(|i| ResnetBlock::new(ngf * 4, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let up = (0..2)
            .map(|i| {
                let (cin, cout, vb) = (ngf << (2 - i), ngf << (1 - i), vb.pp("up").pp(i));
                Ok(if cfg.antialias {
                    Up::Blur(Conv2d::new(cin, cout, 3, 1, 1, vb)?)
                } else {
                    Up::Transposed(ConvTranspose2d::new(cin, cout, 3, 2, 1, 1, vb)?)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = Conv2d::new(ngf, cfg.network_out_channels(), 7, 1, 0, vb.pp("head"))?;
        Ok(Self { stem, down, blocks, up, head, antialias: cfg.antialias })
    }

    /// The reference's `forward(x, layers, encode_only=True)` for the anti-aliased generator:
    /// the outputs of the `nn.Sequential` layers numbered in `layers` (0 the reflection-padded
    /// input; 1, 2, 3 the stem's conv, norm, relu; 4–7 and 8–11 the down-sampling conv, norm,
    /// relu, blur-pool; 12.. the residual blocks), in increasing layer order as the reference
    /// returns them. Stops after the last requested layer. A requested convolution output
    /// includes its bias (the reference's features do; the norm after it cancels it).
    pub fn encode(&self, xs: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        self.encode_features(xs, layers)?.iter().map(Feature::full).collect()
    }

    /// [`Self::encode`] with convolution outputs' biases kept apart (see [`Feature`]).
    pub fn encode_features(&self, xs: &Tensor, layers: &[usize]) -> Result<Vec<Feature>> {
        let Some(&last) = layers.iter().max() else { return Ok(Vec::new()) };
        Ok(self.encode_through(xs, layers, last)?.1)
    }

    /// The output and the encoder features at `layers` from one pass: what [`Self::forward`]
    /// and [`Self::encode`] give, without running the encoder twice (CUT's PatchNCE keys are the
    /// features of the very images the generator translates).
    pub fn forward_with_features(&self, xs: &Tensor, layers: &[usize]) -> Result<(Tensor, Vec<Feature>)> {
        let top = FIRST_BLOCK + self.blocks.len() - 1;
        let (h, feats) = self.encode_through(xs, layers, top)?;
        Ok((self.decode(h)?.to_dtype(xs.dtype())?, feats))
    }

    /// The encoder up to layer `last` (its output) and the features at `layers` on the way.
    fn encode_through(&self, xs: &Tensor, layers: &[usize], last: usize) -> Result<(Tensor, Vec<Feature>)> {
        if !self.antialias {
            candle_core::bail!("encode needs the anti-aliased (CUT) ResNet generator");
        }
        let top = FIRST_BLOCK + self.blocks.len() - 1;
        if last > top || layers.iter().any(|&l| l > top) {
            candle_core::bail!("encoder layer {} requested; this generator's encoder ends at layer {top}", last.max(layers.iter().copied().max().unwrap_or(0)));
        }
        let want = |i: usize| layers.contains(&i);
        let mut feats = Vec::new();
        // Features are in the activations' dtype (bf16 under `--precision bf16` on the CPU).
        let mut h = reflect_pad2d(&to_activation(xs)?, 3)?; // 0: [B,Cin,H+6,W+6]
        if want(0) {
            feats.push(Feature::from(h.clone()));
        }
        // conv (base), norm (base+1), relu (base+2); then a blur-pool (base+3) for the downs.
        let stages = std::iter::once((&self.stem, 1, false)).chain(self.down.iter().zip([4, 8]).map(|(c, b)| (c, b, true)));
        for (conv, base, pool) in stages {
            if last < base {
                return Ok((h, feats));
            }
            // The conv output is normalised without its bias (the norm cancels it); a requested
            // conv output keeps the bias apart, to be added where PatchNCE samples it.
            let y = conv.forward_unbiased(&h)?;
            if want(base) {
                feats.push(Feature { map: y.clone(), bias: Some(conv.bias.clone()) });
            }
            if pool && last >= base + 3 && !want(base + 1) && !want(base + 2) {
                h = norm_act_blur_down(&y, Act::Relu)?; // [B,2C,H/2,W/2], fused
                if want(base + 3) {
                    feats.push(Feature::from(h.clone()));
                }
                continue;
            }
            h = if want(base + 1) {
                let n = norm_act(&y, Act::Identity)?;
                feats.push(Feature::from(n.clone()));
                n.relu()?
            } else {
                norm_act(&y, Act::Relu)?
            };
            if want(base + 2) {
                feats.push(Feature::from(h.clone()));
            }
            if pool && last >= base + 3 {
                h = blur_down(&h)?; // [B,2C,H/2,W/2]
                if want(base + 3) {
                    feats.push(Feature::from(h.clone()));
                }
            }
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if last < FIRST_BLOCK + i {
                break;
            }
            h = b.forward(&h)?; // [B,4ngf,H/4,W/4]
            if want(FIRST_BLOCK + i) {
                feats.push(Feature::from(h.clone()));
            }
        }
        Ok((h, feats))
    }

    /// `[B,Cin,H,W]` → `[B,Cout,H,W]` (Cout = `cfg.network_out_channels()`); H and W multiples of 4.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // Activations in bf16 where the convolutions run in bf16 (autocast's storage); the
        // output in the input's dtype.
        let mut h = self.stem.forward_reflect_norm_act(&to_activation(xs)?, 3, Act::Relu)?; // [B,ngf,H,W]
        for d in &self.down {
            // [B,2ngf,H/2,W/2] then [B,4ngf,H/4,W/4]; anti-aliased, the convolution keeps the
            // size and the blur-pool halves it.
            h = if self.antialias { d.forward_norm_act_blur_down(&h, Act::Relu)? } else { d.forward_norm_act(&h, Act::Relu)? };
        }
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        self.decode(h)?.to_dtype(xs.dtype())
    }

    /// The up-sampling layers and the head: [B,4ngf,H/4,W/4] → [B,Cout,H,W]. Takes `h` so that,
    /// without autograd, it is freed once the first up-sampling layer has read it.
    fn decode(&self, mut h: Tensor) -> Result<Tensor> {
        for u in &self.up {
            h = match u {
                Up::Transposed(t) => t.forward_norm_act(&h, Act::Relu)?,
                Up::Blur(c) => c.forward_blur_up_norm_act(&h, Act::Relu)?,
            }; // [B,2ngf,H/2,W/2] then [B,ngf,H,W]
        }
        self.head.forward_reflect(&h, 3)?.tanh() // [B,Cout,H,W]
    }
}
