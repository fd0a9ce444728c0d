//! The CycleGAN networks: ResNet and U-Net generators, the PatchGAN discriminator, their
//! configuration (serialised into checkpoints) and the layers they are built from.

pub mod antialias;
mod chroma;
pub mod colour_classes;
mod config;
mod discriminator;
mod layers;
pub mod norm_stats;
mod resnet;
mod spec;
mod unet;

pub use chroma::{compose_chroma_over_luma, lowpass_chroma};
pub use config::{DiscriminatorConfig, GeneratorConfig, GeneratorKind, OutputMode};
pub use discriminator::PatchGan;
pub use layers::{Conv2d, ConvTranspose2d};
pub use resnet::{Feature, ResnetGenerator};
pub use spec::{ModelSpec, MODEL_FILE};
pub use unet::UnetGenerator;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// The colour gain of a chroma-over-luma generator when neither `--chroma-gain` nor the model's
/// config (`translate_chroma_gain`) sets one: the colours as trained.
pub const DEFAULT_CHROMA_GAIN: f64 = 1.0;

/// A generator of any supported architecture and output mode.
pub struct Generator {
    network: GeneratorNetwork,
    output: OutputMode,
    /// Factor on the predicted chroma of a chroma-over-luma generator (1 as trained).
    chroma_gain: f64,
    /// Whether a chroma-over-luma generator low-passes its chroma ([`lowpass_chroma`]); off in
    /// training, on by default when translating.
    chroma_lowpass: bool,
    /// Read-out temperature of a colour-classes generator (1, the mean, in training).
    temperature: f64,
}

enum GeneratorNetwork {
    Resnet(ResnetGenerator),
    Unet(UnetGenerator),
}

impl Generator {
    pub fn new(cfg: &GeneratorConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.output != OutputMode::Direct && (cfg.out_channels != 3 || !matches!(cfg.in_channels, 1 | 3)) {
            candle_core::bail!(
                "a chroma-over-luma generator turns 1- or 3-channel images into 3-channel ones, not {} into {}",
                cfg.in_channels,
                cfg.out_channels
            );
        }
        let network = match cfg.kind {
            GeneratorKind::Resnet { .. } => GeneratorNetwork::Resnet(ResnetGenerator::new(cfg, vb)?),
            GeneratorKind::Unet { .. } if cfg.antialias => candle_core::bail!("the anti-aliased (CUT) generator is a ResNet, not {}", cfg.kind),
            GeneratorKind::Unet { .. } => GeneratorNetwork::Unet(UnetGenerator::new(cfg, vb)?),
        };
        Ok(Self { network, output: cfg.output, chroma_gain: DEFAULT_CHROMA_GAIN, chroma_lowpass: false, temperature: 1.0 })
    }

    /// Encoder features at the reference's `nn.Sequential` indices (see
    /// [`ResnetGenerator::encode`]), for PatchNCE. Only the anti-aliased ResNet (CUT) has them.
    pub fn encode(&self, xs: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        self.encode_features(xs, layers)?.iter().map(Feature::full).collect()
    }

    /// [`Self::encode`] with convolution outputs' biases kept apart (see [`Feature`]).
    pub fn encode_features(&self, xs: &Tensor, layers: &[usize]) -> Result<Vec<Feature>> {
        match &self.network {
            GeneratorNetwork::Resnet(g) => g.encode_features(xs, layers),
            GeneratorNetwork::Unet(_) => candle_core::bail!("encode needs a ResNet generator"),
        }
    }

    /// The output and the encoder features at `layers` from one pass (see
    /// [`ResnetGenerator::forward_with_features`]).
    pub fn forward_with_features(&self, xs: &Tensor, layers: &[usize]) -> Result<(Tensor, Vec<Feature>)> {
        let GeneratorNetwork::Resnet(g) = &self.network else { candle_core::bail!("encode needs a ResNet generator") };
        let (raw, feats) = g.forward_with_features(xs, layers)?;
        Ok((self.output_from(xs, raw)?.0, feats))
    }

    /// Whether this generator predicts only chroma over its input's luma (`--keep-luma`).
    pub fn predicts_chroma(&self) -> bool {
        self.output != OutputMode::Direct
    }

    /// Whether this generator predicts a distribution over colour classes (`--paired-loss classify`).
    pub fn predicts_colour_classes(&self) -> bool {
        self.output == OutputMode::ChromaClasses
    }

    /// The read-out temperature of a colour-classes generator: 1 gives the mean colour of its
    /// predicted distribution (cautious), lower values move towards the most likely colour
    /// (vivid); [`colour_classes::DEFAULT_TEMPERATURE`] when translating.
    pub fn set_temperature(&mut self, t: f64) -> Result<()> {
        if self.output != OutputMode::ChromaClasses {
            candle_core::bail!("a temperature needs a generator trained with --paired-loss classify");
        }
        if !(t.is_finite() && (0.01..=10.0).contains(&t)) {
            candle_core::bail!("temperature {t} is outside 0.01..=10");
        }
        self.temperature = t;
        Ok(())
    }

    /// Scales the colour a chroma-over-luma (`--keep-luma`) generator predicts before it is
    /// composed with the input's luma: 0 returns the grey input, 1 the colours as trained.
    pub fn set_chroma_gain(&mut self, gain: f64) -> Result<()> {
        if self.output == OutputMode::Direct {
            candle_core::bail!("a chroma gain needs a generator that predicts chroma over the input's luma (--keep-luma)");
        }
        if !(gain.is_finite() && (0.0..=4.0).contains(&gain)) {
            candle_core::bail!("chroma gain {gain} is outside 0..=4");
        }
        self.chroma_gain = gain;
        Ok(())
    }

    /// The factor on the predicted colour ([`Generator::set_chroma_gain`]).
    pub fn chroma_gain(&self) -> f64 {
        self.chroma_gain
    }

    /// Whether a chroma-over-luma generator low-passes its predicted chroma before composing it
    /// ([`lowpass_chroma`]: no checkerboard in the colour). No effect on other generators.
    pub fn set_chroma_lowpass(&mut self, on: bool) {
        self.chroma_lowpass = on;
    }

    /// `xs` `[B,Cin,H,W]` in `[-1,1]` → `[B,Cout,H,W]` in `[-1,1]`. H and W must be multiples of
    /// `cfg.kind.size_multiple()`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.forward_parts(xs)?.0)
    }

    /// The output and the network's own output before it is turned into an image: for a
    /// colour-classes generator the logits `[B,Q,H,W]` its training loss needs.
    pub fn forward_parts(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let raw = match &self.network {
            GeneratorNetwork::Resnet(g) => g.forward(xs)?,
            GeneratorNetwork::Unet(g) => g.forward(xs)?,
        }; // [B,network_out_channels,H,W]
        self.output_from(xs, raw)
    }

    /// The image this generator returns for input `xs` from its network's output `raw`, and `raw`.
    fn output_from(&self, xs: &Tensor, raw: Tensor) -> Result<(Tensor, Tensor)> {
        let chroma = match self.output {
            OutputMode::Direct => return Ok((raw.clone(), raw)),
            OutputMode::ChromaOverLuma => raw.clone(),
            OutputMode::ChromaClasses => colour_classes::annealed_mean(&raw, self.temperature)?,
        }; // [B,2,H,W]
        // Training (gain 1, no low-pass) composes the raw output without extra passes.
        let chroma = if self.chroma_gain != 1.0 { (chroma * self.chroma_gain)? } else { chroma };
        let chroma = if self.chroma_lowpass { lowpass_chroma(&chroma)? } else { chroma };
        Ok((compose_chroma_over_luma(xs, &chroma)?, raw))
    }
}

/// Number of scalar parameters in a list of tensors.
pub fn count_params(tensors: &[Tensor]) -> usize {
    tensors.iter().map(|t| t.elem_count()).sum()
}
