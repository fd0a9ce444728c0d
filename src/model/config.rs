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

/// Everything needed to rebuild a generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    pub kind: GeneratorKind,
    pub in_channels: usize,
    pub out_channels: usize,
    pub ngf: usize,
}

/// Everything needed to rebuild a PatchGAN discriminator (70×70 receptive field for 3 layers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscriminatorConfig {
    pub in_channels: usize,
    pub ndf: usize,
    pub n_layers: usize,
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
}
