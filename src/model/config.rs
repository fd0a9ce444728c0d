//! What a network is made of: generator kind and output mode, generator and discriminator
//! configurations as saved in `config.toml`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Generator architecture, written as the reference names it: `resnet_9blocks`, `resnet_6blocks`,
/// `unet_128`, `unet_256` (any `resnet_<N>blocks` and `unet_<2^downs>` are accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratorKind {
    Resnet { blocks: usize },
    Unet { downs: usize },
}

impl GeneratorKind {
    /// Image sides must be multiples of this for the network to return its input size.
    pub fn size_multiple(&self) -> usize {
        match self {
            Self::Resnet { .. } => 4,
            Self::Unet { downs } => 1 << downs,
        }
    }
}

impl fmt::Display for GeneratorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resnet { blocks } => write!(f, "resnet_{blocks}blocks"),
            Self::Unet { downs } => write!(f, "unet_{}", 1usize << downs),
        }
    }
}

impl FromStr for GeneratorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown generator '{s}': expected resnet_9blocks, resnet_6blocks, resnet_<N>blocks, unet_128 or unet_256");
        if let Some(n) = s.strip_prefix("resnet_").and_then(|r| r.strip_suffix("blocks")) {
            let blocks: usize = n.parse().map_err(|_| bad())?;
            if blocks == 0 || blocks > 64 {
                return Err(bad());
            }
            return Ok(Self::Resnet { blocks });
        }
        if let Some(n) = s.strip_prefix("unet_") {
            let size: usize = n.parse().map_err(|_| bad())?;
            if !size.is_power_of_two() || !(32..=1024).contains(&size) {
                return Err(bad());
            }
            return Ok(Self::Unet { downs: size.trailing_zeros() as usize });
        }
        Err(bad())
    }
}

impl Serialize for GeneratorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for GeneratorKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a generator turns its network's tanh output into the image it returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// The tanh output is the image (the reference's generators).
    #[default]
    Direct,
    /// Grey→colour: the network predicts only chroma (Cb, Cr) and the RGB image is composed with
    /// the input's luma, so its brightness is the input's exactly (see [`crate::model::compose_chroma_over_luma`]).
    ChromaOverLuma,
    /// Grey→colour like `ChromaOverLuma`, but the network predicts a distribution over quantised
    /// colours ([`crate::model::colour_classes`]), read out as its annealed mean.
    ChromaClasses,
}

/// Everything needed to rebuild a generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    pub kind: GeneratorKind,
    pub in_channels: usize,
    /// Channels of the image the generator returns; the network itself may produce fewer
    /// (see [`GeneratorConfig::network_out_channels`]).
    pub out_channels: usize,
    pub ngf: usize,
    /// Absent in configs written before output modes existed, which were all direct.
    #[serde(default)]
    pub output: OutputMode,
    /// CUT's anti-aliased ResNet: stride-1 convolutions followed by a fixed blur-pool to go
    /// down, a blur up-sampling followed by a convolution to go up (the reference's default
    /// for CUT, `no_antialias`/`no_antialias_up` off). Absent in older configs: off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub antialias: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl GeneratorConfig {
    /// Channels of the network's last layer: `out_channels`, or 2 (Cb, Cr) for chroma over luma.
    pub fn network_out_channels(&self) -> usize {
        match self.output {
            OutputMode::Direct => self.out_channels,
            OutputMode::ChromaOverLuma => 2,
            OutputMode::ChromaClasses => super::colour_classes::bins().len(),
        }
    }
}

/// Everything needed to rebuild a PatchGAN discriminator (70×70 receptive field for 3 layers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscriminatorConfig {
    pub in_channels: usize,
    pub ndf: usize,
    pub n_layers: usize,
    /// CUT's anti-aliased PatchGAN: stride-1 convolutions followed by blur-pools.
    #[serde(default, skip_serializing_if = "is_false")]
    pub antialias: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn kinds_round_trip() {
        for s in ["resnet_9blocks", "resnet_6blocks", "resnet_2blocks", "unet_128", "unet_256", "unet_32"] {
            assert_eq!(s.parse::<GeneratorKind>().unwrap().to_string(), s);
        }
        assert!("unet_100".parse::<GeneratorKind>().is_err());
        assert!("vgg".parse::<GeneratorKind>().is_err());
    }

    #[test]
    fn output_mode_is_snake_case_and_defaults_to_direct() {
        let old = "kind = \"resnet_6blocks\"\nin_channels = 1\nout_channels = 3\nngf = 16\n";
        let cfg: GeneratorConfig = toml::from_str(old).unwrap();
        assert_eq!(cfg.output, OutputMode::Direct);
        assert_eq!(cfg.network_out_channels(), 3);
        let luma = GeneratorConfig { output: OutputMode::ChromaOverLuma, ..cfg };
        let text = toml::to_string(&luma).unwrap();
        assert!(text.contains("output = \"chroma_over_luma\""), "{text}");
        assert_eq!(toml::from_str::<GeneratorConfig>(&text).unwrap(), luma);
        assert_eq!(luma.network_out_channels(), 2);
    }
}
