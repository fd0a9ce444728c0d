use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// Reference initialisation (init_type 'normal'): weights N(0, 0.02), biases 0. Training re-draws
/// them from the run's seed afterwards, so this only matters for tensors created lazily.
const WEIGHT_INIT: Init = Init::Randn { mean: 0.0, stdev: 0.02 };

/// A 2-D convolution with bias and zero padding. Weights [Cout,Cin,K,K] under `weight`, bias [Cout]
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

    /// [B,Cin,H,W] → [B,Cout,H',W'].
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = if std::env::var_os("CS_NATIVE_CONV").is_some() { xs.conv2d(&self.weight, self.padding, self.stride, 1, 1)? } else { crate::ops::conv::conv2d(xs, &self.weight, self.stride, self.padding)? };
        ys.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }

    /// The same layer with weights cut off from autograd (a frozen network).
    pub fn detached(&self) -> Self {
        Self { weight: self.weight.detach(), bias: self.bias.detach(), ..self.clone() }
    }
}

/// A 2-D transposed convolution with bias. Weights [Cin,Cout,K,K] as in PyTorch.
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

    /// [B,Cin,H,W] → [B,Cout,(H-1)s-2p+K+op, …].
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = if std::env::var_os("CS_NATIVE_CONV").is_some() { xs.conv_transpose2d(&self.weight, self.padding, self.output_padding, self.stride, 1)? } else { crate::ops::conv::conv_transpose2d(xs, &self.weight, self.stride, self.padding, self.output_padding)? };
        ys.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}
