//! The convolution layers the networks are built from (PyTorch weight layouts, bias left out
//! where instance norm cancels it), dispatched to `ops::conv`.

use super::norm_stats::{norm_act, norm_act_blur_down, norm_residual};
use crate::ops::{conv, Act};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// Reference initialisation (init_type 'normal'): weights N(0, 0.02), biases 0. Training re-draws
/// them from the run's seed afterwards, so this only matters for tensors created lazily.
const WEIGHT_INIT: Init = Init::Randn { mean: 0.0, stdev: 0.02 };

/// `ys` `[B,C,H,W]` plus `bias` `[C]` per channel, in `ys`'s dtype (activations may be bf16,
/// biases are f32 master weights).
pub(crate) fn add_bias(ys: &Tensor, bias: &Tensor) -> Result<Tensor> {
    ys.broadcast_add(&bias.to_dtype(ys.dtype())?.reshape((1, (), 1, 1))?)
}

/// `act(instance_norm(y))` for the output `y` of a convolution of `xs` by `w`: on the CPU one op
/// with the convolution our kernels run for it (`op`; `ops::conv_norm`: in training it keeps
/// the convolution's output for backward, in translations it normalises that output in place), else
/// `composed()` (the convolution alone) then the norm, which records or replays statistics where
/// asked (`norm_stats`).
fn norm_act_of(xs: &Tensor, w: &Tensor, op: impl FnOnce() -> Result<Option<conv::ConvOp>>, act: Act, composed: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    // Without autograd too: the op then writes the norm over the convolution's output.
    if super::norm_stats::idle() {
        if let Some(op) = op()? {
            return crate::ops::conv_norm::conv_norm_act(xs, w, op, act);
        }
    }
    norm_act(&composed()?, act)
}

/// A 2-D convolution with bias and zero padding. Weights `[Cout,Cin,K,K]` under `weight`, bias `[Cout]`
/// under `bias`, as in PyTorch.
#[derive(Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((cout, cin, k, k), "weight", WEIGHT_INIT)?;
        let bias = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, stride, padding })
    }

    /// `[B,Cin,H,W]` → `[B,Cout,H',W']`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        add_bias(&self.forward_unbiased(xs)?, &self.bias)
    }

    /// `conv(reflect_pad(xs, pad)) + bias` for a stride-1 layer without zero padding (the
    /// generator's last one): on the CPU the padded input is not kept for autograd.
    pub fn forward_reflect(&self, xs: &Tensor, pad: usize) -> Result<Tensor> {
        if self.stride != 1 || self.padding != 0 {
            candle_core::bail!("a reflection-padded convolution needs stride 1 and no zero padding");
        }
        add_bias(&crate::ops::conv::conv2d_reflect(xs, &self.weight, pad)?, &self.bias)
    }

    /// `act(conv(xs) + bias)` for Relu or LeakyRelu, the bias and activation in one op.
    pub fn forward_act(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        crate::ops::bias::bias_act(&self.forward_unbiased(xs)?, &self.bias, act)
    }

    /// `blur_down(act(conv(xs) + bias))` for Relu or LeakyRelu: the anti-aliased PatchGAN's first
    /// layer, fused into one op on the CPU.
    pub fn forward_act_blur_down(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        let y = self.forward_unbiased(xs)?;
        if crate::ops::blur::fused_down_applies(&y) {
            return crate::ops::bias::bias_act_blur_down(&y, &self.bias, act);
        }
        super::antialias::blur_down(&crate::ops::bias::bias_act(&y, &self.bias, act)?)
    }

    /// The convolution without its bias: `forward` is this plus `bias` per channel.
    pub fn forward_unbiased(&self, xs: &Tensor) -> Result<Tensor> {
        crate::ops::conv::conv2d(xs, &self.weight, self.stride, self.padding)
    }

    /// `act(instance_norm(conv(xs)))`. The bias is left out: normalisation subtracts every
    /// plane's mean, so it cancels exactly (its true gradient is 0 and it is never updated).
    pub fn forward_norm_act(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        let op = || conv::conv2d_op(xs, &self.weight, self.stride, self.padding);
        norm_act_of(xs, &self.weight, op, act, || self.forward_unbiased(xs))
    }

    /// `blur_down(act(instance_norm(conv(xs))))`: an anti-aliased (CUT) down-sampling layer, its
    /// norm, activation and blur-pool fused (bias left out as in `forward_norm_act`).
    pub fn forward_norm_act_blur_down(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        norm_act_blur_down(&self.forward_unbiased(xs)?, act)
    }

    /// `act(instance_norm(conv(blur_up(xs))))`: an anti-aliased (CUT) up-sampling layer (3×3,
    /// stride 1, padding 1); on the CPU the blur up-sampling happens inside the convolution.
    pub fn forward_blur_up_norm_act(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        if self.stride == 1 && self.padding == 1 {
            if let Some(y) = crate::ops::conv::blur_up_conv3x3(xs, &self.weight)? {
                return norm_act(&y, act);
            }
        }
        self.forward_norm_act(&super::antialias::blur_up(xs)?, act)
    }

    /// `act(instance_norm(conv(reflect_pad(xs, pad))))` for a stride-1 layer without zero
    /// padding (the residual blocks' convolutions), bias left out as in `forward_norm_act`.
    pub fn forward_reflect_norm_act(&self, xs: &Tensor, pad: usize, act: Act) -> Result<Tensor> {
        if self.stride != 1 || self.padding != 0 {
            candle_core::bail!("a reflection-padded convolution needs stride 1 and no zero padding");
        }
        let op = || conv::conv2d_reflect_op(xs, &self.weight, pad);
        norm_act_of(xs, &self.weight, op, act, || conv::conv2d_reflect(xs, &self.weight, pad))
    }

    /// `residual + instance_norm(conv(reflect_pad(xs, pad)))`: a residual block's second
    /// convolution and its skip connection (bias left out as in `forward_norm_act`).
    pub fn forward_reflect_norm_residual(&self, xs: &Tensor, pad: usize, residual: &Tensor) -> Result<Tensor> {
        if self.stride != 1 || self.padding != 0 {
            candle_core::bail!("a reflection-padded convolution needs stride 1 and no zero padding");
        }
        norm_residual(crate::ops::conv::conv2d_reflect(xs, &self.weight, pad)?, residual)
    }

    /// The same layer with weights cut off from autograd (a frozen network).
    pub fn detached(&self) -> Self {
        Self { weight: self.weight.detach(), bias: self.bias.detach(), ..self.clone() }
    }
}

/// A 2-D transposed convolution with bias. Weights `[Cin,Cout,K,K]` as in PyTorch.
#[derive(Clone)]
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
}

impl ConvTranspose2d {
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        output_padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((cin, cout, k, k), "weight", WEIGHT_INIT)?;
        let bias = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, stride, padding, output_padding })
    }

    /// `[B,Cin,H,W]` → `[B,Cout,(H-1)s-2p+K+op, …]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        add_bias(&self.forward_unbiased(xs)?, &self.bias)
    }

    /// `act(instance_norm(conv_transpose(xs)))`, without the bias that normalisation cancels.
    pub fn forward_norm_act(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        let op = || conv::conv_transpose2d_op(xs, &self.weight, self.stride, self.padding, self.output_padding);
        norm_act_of(xs, &self.weight, op, act, || self.forward_unbiased(xs))
    }

    fn forward_unbiased(&self, xs: &Tensor) -> Result<Tensor> {
        crate::ops::conv::conv_transpose2d(xs, &self.weight, self.stride, self.padding, self.output_padding)
    }
}
