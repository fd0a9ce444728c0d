//! A run's settings as data (`config.toml` beside the checkpoint): method, networks, losses,
//! schedule, intervals; the networks' configurations derived from them.

use crate::data::DomainSpec;
use crate::model::{DiscriminatorConfig, GeneratorConfig, GeneratorKind, OutputMode};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GanLoss {
    /// Least squares (MSE against 1 for real, 0 for fake): the reference's CycleGAN default.
    Lsgan,
    /// Binary cross-entropy with logits.
    Vanilla,
}

/// The supervised term of paired mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PairedLoss {
    /// Mean absolute error (pix2pix): pulls towards the median of plausible answers.
    #[default]
    L1,
    /// Mean squared error: pulls towards their mean, which is what PSNR rewards.
    L2,
    /// With --keep-luma: G_AB predicts a distribution over quantised colours, trained with a
    /// rebalanced cross-entropy to soft-encoded true colours (Zhang et al. 2016); vivid colour
    /// read out at a temperature (`--temperature` when translating). G_BA keeps L1.
    Classify,
}

/// The training method: which networks a run has and which losses train them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Two generators and two discriminators, cycle-consistency and identity losses (Zhu et al. 2017).
    #[default]
    Cyclegan,
    /// Contrastive unpaired translation (Park et al. 2020): one generator A→B, one discriminator,
    /// PatchNCE between input and output patches, identity NCE on B images.
    Cut,
    /// CUT's faster variant: PatchNCE ×10 without identity NCE, with flip-equivariance.
    Fastcut,
}

impl Method {
    /// Whether the run trains only A→B (no G_BA, no D_A).
    pub fn one_sided(self) -> bool {
        self != Self::Cyclegan
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cyclegan => "cyclegan",
            Self::Cut => "cut",
            Self::Fastcut => "fastcut",
        })
    }
}

/// PatchNCE settings of a CUT/FastCUT run, the reference's (`models/cut_model.py`) by default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NceConfig {
    /// λ_NCE: 1 for CUT, 10 for FastCUT.
    pub lambda_nce: f64,
    /// Identity NCE on B images (G(b) against b): CUT yes, FastCUT no.
    pub nce_idt: bool,
    /// Layers of the generator's encoder whose features are compared, numbered as the
    /// reference's `nn.Sequential` (0 = the padded input, 4 and 8 = the down-sampling
    /// convolutions, 12.. = residual blocks).
    pub nce_layers: Vec<usize>,
    /// Patches sampled per layer and image.
    pub num_patches: usize,
    /// Width of the MLP heads (`netF_nc`).
    pub netf_nc: usize,
    /// Temperature τ of the contrastive softmax.
    pub nce_t: f64,
    /// Flip the batch at random and ask the features to flip with it (FastCUT).
    pub flip_equivariance: bool,
}

impl NceConfig {
    /// The highest encoder layer of a ResNet generator with `blocks` residual blocks (its last
    /// block, in the reference's numbering).
    pub fn last_layer(blocks: usize) -> usize {
        11 + blocks
    }

    /// The reference's settings for `method` (None for CycleGAN).
    pub fn for_method(method: Method) -> Option<Self> {
        let cut = Self { lambda_nce: 1.0, nce_idt: true, nce_layers: vec![0, 4, 8, 12, 16], num_patches: 256, netf_nc: 256, nce_t: 0.07, flip_equivariance: false };
        match method {
            Method::Cyclegan => None,
            Method::Cut => Some(cut),
            Method::Fastcut => Some(Self { lambda_nce: 10.0, nce_idt: false, flip_equivariance: true, ..cut }),
        }
    }
}

/// How long to train: a constant learning rate for the first part, then a linear decay to zero.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "unit", rename_all = "lowercase")]
pub enum Schedule {
    Iters { iters: u64, decay_iters: u64 },
    /// Epochs as the reference counts them (max(|A|,|B|) samples); `steps_per_epoch` is fixed
    /// when the run starts.
    Epochs { epochs: u64, decay_epochs: u64, steps_per_epoch: u64 },
}

impl Schedule {
    pub fn total_steps(&self) -> u64 {
        match *self {
            Self::Iters { iters, decay_iters } => iters + decay_iters,
            Self::Epochs { epochs, decay_epochs, steps_per_epoch } => (epochs + decay_epochs) * steps_per_epoch,
        }
    }

    /// Learning-rate factor for the step with 0-based index `step`, as the reference's 'linear'
    /// policy: 1 for the first part, then 1 - k/(decay+1) in the k-th unit of the decay.
    pub fn lr_factor(&self, step: u64) -> f64 {
        let (unit, constant, decay) = match *self {
            Self::Iters { iters, decay_iters } => (step + 1, iters, decay_iters),
            Self::Epochs { epochs, decay_epochs, steps_per_epoch } => {
                (step / steps_per_epoch.max(1) + 1, epochs, decay_epochs)
            }
        };
        1.0 - unit.saturating_sub(constant) as f64 / (decay + 1) as f64
    }
}

/// λ of the supervised term to the true pair when `--paired` is on and no weight is given
/// (the CLI's `--lambda-paired` default; runs the studio starts in paired mode use it too).
pub const DEFAULT_LAMBDA_PAIRED: f64 = 10.0;

/// Adam's learning rate in the reference (the studio's form starts from it).
pub const DEFAULT_LR: f64 = 2e-4;

/// Every setting of a training run. Saved as `config.toml` next to the checkpoint so that
/// `translate` and `--resume` never need architecture flags again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub name: String,
    /// CycleGAN (absent in older configs), CUT or FastCUT.
    #[serde(default)]
    pub method: Method,
    /// PatchNCE settings; present exactly for CUT and FastCUT runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nce: Option<NceConfig>,
    pub dataset: PathBuf,
    pub domain_a: DomainSpec,
    pub domain_b: DomainSpec,
    pub generator: GeneratorKind,
    pub ngf: usize,
    pub ndf: usize,
    pub n_layers_d: usize,
    pub size: usize,
    pub load_size: usize,
    pub batch: usize,
    pub schedule: Schedule,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub lambda_cycle: f64,
    pub lambda_identity: f64,
    /// Supervised L1 between a translation and its true pair (paired datasets only), 0 = off.
    pub lambda_paired: f64,
    /// Weight of the generators' adversarial terms (the reference: 1). Absent in older configs.
    #[serde(default = "one")]
    pub lambda_gan: f64,
    /// L1 or L2 for the paired term. Absent in older configs (L1).
    #[serde(default)]
    pub paired_loss: PairedLoss,
    pub paired: bool,
    /// Grey→colour: G_AB predicts only chroma and keeps its input's luma exactly
    /// ([`OutputMode::ChromaOverLuma`]); needs a 3-channel domain B. Absent in older configs.
    #[serde(default)]
    pub keep_luma: bool,
    pub gan_loss: GanLoss,
    pub pool: usize,
    pub seed: u64,
    pub flip: bool,
    pub sample_every: u64,
    pub save_every: u64,
    pub log_every: u64,
    /// Health metrics (diversity, discriminator balance) every this many steps, 0 = off.
    #[serde(default)]
    pub health_every: u64,
    /// Device the run last used ("cpu", "cuda:0").
    pub device: String,
    /// What the convolutions multiply in (fp32, or bf16 with fp32 sums and fp32 master weights).
    /// Absent in older configs (fp32).
    #[serde(default)]
    pub precision: crate::ops::Precision,
    /// The colour gain translations of a `--keep-luma` model apply unless `--chroma-gain` is
    /// given (absent: 1, the colours as trained). Training ignores it; the shipped default model
    /// sets it (README, "The default model").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translate_chroma_gain: Option<f64>,
    /// Validation on held-out images with KID/FID (`--eval-every`); absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<super::ValidationConfig>,
}

fn one() -> f64 {
    1.0
}

impl TrainConfig {
    /// The reference's CycleGAN recipe for two domains: resnet_9blocks, ngf/ndf 64, 70×70
    /// PatchGAN, 256 crops of 286 resizes, LSGAN, λ_cycle 10, λ_identity 0.5, Adam 2e-4
    /// β (0.5, 0.999), pool 50, flips, 100 + 100 epochs of `steps_per_epoch`, CPU. Callers change
    /// what differs with struct update syntax.
    pub fn reference(name: &str, dataset: PathBuf, domain_a: DomainSpec, domain_b: DomainSpec, steps_per_epoch: u64) -> Self {
        Self {
            name: name.to_string(),
            method: Method::Cyclegan,
            nce: None,
            dataset,
            domain_a,
            domain_b,
            generator: GeneratorKind::Resnet { blocks: 9 },
            ngf: 64,
            ndf: 64,
            n_layers_d: 3,
            size: 256,
            load_size: super::request::default_load_size(256),
            batch: 1,
            schedule: {
                let (epochs, decay_epochs) = super::request::reference_epochs(Method::Cyclegan);
                Schedule::Epochs { epochs, decay_epochs, steps_per_epoch }
            },
            lr: DEFAULT_LR,
            beta1: 0.5,
            beta2: 0.999,
            lambda_cycle: 10.0,
            lambda_identity: 0.5,
            lambda_paired: 0.0,
            lambda_gan: 1.0,
            paired_loss: PairedLoss::L1,
            paired: false,
            keep_luma: false,
            gan_loss: GanLoss::Lsgan,
            pool: 50,
            seed: 0,
            flip: true,
            sample_every: 100,
            save_every: 500,
            log_every: 10,
            health_every: 100,
            device: super::request::DEFAULT_DEVICE.into(),
            precision: crate::ops::Precision::Fp32,
            translate_chroma_gain: None,
            validation: None,
        }
    }

    pub fn g_ab(&self) -> GeneratorConfig {
        let output = match (self.keep_luma, self.paired_loss) {
            (true, PairedLoss::Classify) => OutputMode::ChromaClasses,
            (true, _) => OutputMode::ChromaOverLuma,
            (false, _) => OutputMode::Direct,
        };
        // CUT's generator also encodes its own outputs and B images for PatchNCE, so it takes as
        // many channels as either domain has (the reference loads every image as RGB); A images
        // enter it converted (grey repeated), as they would there.
        let in_channels = if self.method.one_sided() { self.domain_a.channels.max(self.domain_b.channels) } else { self.domain_a.channels };
        GeneratorConfig {
            kind: self.generator,
            in_channels,
            out_channels: self.domain_b.channels,
            ngf: self.ngf,
            output,
            antialias: self.method.one_sided(),
        }
    }
    pub fn g_ba(&self) -> GeneratorConfig {
        GeneratorConfig {
            kind: self.generator,
            in_channels: self.domain_b.channels,
            out_channels: self.domain_a.channels,
            ngf: self.ngf,
            output: OutputMode::Direct,
            antialias: false,
        }
    }
    pub fn d_a(&self) -> DiscriminatorConfig {
        DiscriminatorConfig { in_channels: self.domain_a.channels, ndf: self.ndf, n_layers: self.n_layers_d, antialias: false }
    }
    pub fn d_b(&self) -> DiscriminatorConfig {
        DiscriminatorConfig { in_channels: self.domain_b.channels, ndf: self.ndf, n_layers: self.n_layers_d, antialias: self.method.one_sided() }
    }

    /// What the model this run trains is, apart from the training (saved as `model.toml`).
    pub fn model_spec(&self) -> crate::model::ModelSpec {
        crate::model::ModelSpec {
            domain_a: self.domain_a.clone(),
            domain_b: self.domain_b.clone(),
            g_ab: self.g_ab(),
            g_ba: (!self.method.one_sided()).then(|| self.g_ba()),
            translate_chroma_gain: self.translate_chroma_gain,
            made_by: self.method.to_string(),
        }
    }

    /// The model spec of the run in `run_dir`: its `model.toml`, or for runs from before it
    /// existed, the one its `config.toml` implies.
    pub fn load_model_spec(run_dir: &Path) -> Result<crate::model::ModelSpec> {
        Self::model_spec_with(run_dir, None)
    }

    /// [`TrainConfig::load_model_spec`] for a caller that has already read the run's config
    /// (`config`; None when there is none or it is unreadable), so it is not read again.
    pub fn model_spec_with(run_dir: &Path, config: Option<&TrainConfig>) -> Result<crate::model::ModelSpec> {
        match (crate::model::ModelSpec::load_file(run_dir)?, config) {
            (Some(spec), _) => Ok(spec),
            (None, Some(config)) => Ok(config.model_spec()),
            // Reading it says why there is no model description.
            (None, None) => Ok(Self::load(run_dir)?.model_spec()),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.method.one_sided() != self.nce.is_some() {
            bail!("a {} run {} PatchNCE settings", self.method, if self.nce.is_some() { "has no" } else { "needs" });
        }
        if self.method.one_sided() && self.paired {
            bail!("--model {} is unpaired; --paired needs --model cyclegan", self.method);
        }
        if let Some(nce) = &self.nce {
            let GeneratorKind::Resnet { blocks } = self.generator else {
                bail!("--model {} needs a ResNet generator (resnet_<N>blocks), not {}", self.method, self.generator)
            };
            let top = NceConfig::last_layer(blocks);
            if nce.nce_layers.is_empty() || !nce.nce_layers.windows(2).all(|w| w[0] < w[1]) || nce.nce_layers.iter().any(|&l| l > top) {
                bail!("NCE layers {:?} must be increasing and at most {top} (the last residual block of {})", nce.nce_layers, self.generator);
            }
            if nce.num_patches == 0 || nce.netf_nc == 0 || !nce.nce_t.is_finite() || nce.nce_t <= 0.0 {
                // The reference's num_patches 0 (every position, unsampled) is not supported.
                bail!("PatchNCE needs num_patches, netF_nc and a finite τ above 0");
            }
        }
        let m = self.generator.size_multiple();
        if self.size < 32 || !self.size.is_multiple_of(m) {
            bail!("--size {} must be at least 32 and a multiple of {m} for {}", self.size, self.generator);
        }
        if self.load_size < self.size {
            bail!("--load-size {} must be at least --size {}", self.load_size, self.size);
        }
        if self.batch == 0 || self.ngf == 0 || self.ndf == 0 {
            bail!("--batch, --ngf and --ndf must be positive");
        }
        if self.schedule.total_steps() == 0 {
            bail!("the schedule has no steps: give --iters/--decay-iters or --epochs/--decay-epochs");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be positive");
        }
        if !(self.lambda_gan >= 0.0 && self.lambda_gan.is_finite()) {
            bail!("--lambda-gan must be a finite number ≥ 0, got {}", self.lambda_gan);
        }
        if self.lambda_gan == 0.0 && !(self.paired && self.lambda_paired > 0.0) {
            bail!("--lambda-gan 0 leaves nothing to learn the translation from; it needs --paired");
        }
        if self.paired && self.lambda_paired <= 0.0 {
            bail!("--paired needs a positive --lambda-paired");
        }
        if self.paired_loss == PairedLoss::Classify && !(self.paired && self.keep_luma) {
            bail!("--paired-loss classify predicts colour classes for the grey→colour generator: it needs --paired and --keep-luma");
        }
        if self.keep_luma && self.domain_b.channels != 3 {
            bail!(
                "--keep-luma colours A images into B, so domain B ('{}') must have 3 channels, not {}",
                self.domain_b.name,
                self.domain_b.channels
            );
        }
        Ok(())
    }

    pub fn load(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid cyclestudio config", path.display()))
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let text = format!("# cyclestudio training configuration (written by `cyclestudio train`)\n{}", toml::to_string(self)?);
        crate::util::atomic_write(&run_dir.join(CONFIG_FILE), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn linear_decay_matches_reference() {
        let s = Schedule::Epochs { epochs: 100, decay_epochs: 100, steps_per_epoch: 10 };
        assert_eq!(s.lr_factor(0), 1.0);
        assert_eq!(s.lr_factor(999), 1.0); // epoch 100
        assert!((s.lr_factor(1000) - (1.0 - 1.0 / 101.0)).abs() < 1e-12); // epoch 101
        assert!((s.lr_factor(1999) - 1.0 / 101.0).abs() < 1e-12); // epoch 200
        let s = Schedule::Iters { iters: 10, decay_iters: 9 };
        assert_eq!(s.lr_factor(9), 1.0);
        assert!((s.lr_factor(18) - 0.1).abs() < 1e-12);
        assert_eq!(s.total_steps(), 19);
    }

    fn grey_colour(keep_luma: bool) -> TrainConfig {
        TrainConfig {
            keep_luma,
            ..TrainConfig::reference(
                "run",
                "data".into(),
                DomainSpec { name: "gray".into(), channels: 1 },
                DomainSpec { name: "color".into(), channels: 3 },
                10,
            )
        }
    }

    #[test]
    fn config_written_before_keep_luma_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        // A config.toml as written before output modes existed (no `keep_luma`).
        let old = "name = \"run\"\ndataset = \"data\"\ngenerator = \"resnet_9blocks\"\nngf = 64\nndf = 64\nn_layers_d = 3\n\
            size = 256\nload_size = 286\nbatch = 1\nlr = 0.0002\nbeta1 = 0.5\nbeta2 = 0.999\nlambda_cycle = 10.0\n\
            lambda_identity = 0.5\nlambda_paired = 0.0\npaired = false\ngan_loss = \"lsgan\"\npool = 50\nseed = 0\nflip = true\n\
            sample_every = 100\nsave_every = 500\nlog_every = 10\nhealth_every = 100\ndevice = \"cpu\"\n\
            [domain_a]\nname = \"gray\"\nchannels = 1\n[domain_b]\nname = \"color\"\nchannels = 3\n\
            [schedule]\nunit = \"epochs\"\nepochs = 100\ndecay_epochs = 100\nsteps_per_epoch = 10\n";
        std::fs::write(dir.path().join(CONFIG_FILE), old).unwrap();
        let cfg = TrainConfig::load(dir.path()).unwrap();
        assert_eq!(cfg, grey_colour(false));
        assert_eq!(cfg.g_ab().output, OutputMode::Direct);
        assert_eq!(cfg.lambda_gan, 1.0);
        assert_eq!(cfg.paired_loss, PairedLoss::L1);
    }

    #[test]
    fn keep_luma_round_trips_and_makes_only_g_ab_chroma_over_luma() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = grey_colour(true);
        cfg.save(dir.path()).unwrap();
        let loaded = TrainConfig::load(dir.path()).unwrap();
        assert_eq!(loaded, cfg);
        assert_eq!(loaded.g_ab().output, OutputMode::ChromaOverLuma);
        assert_eq!(loaded.g_ab().out_channels, 3);
        assert_eq!(loaded.g_ba().output, OutputMode::Direct);
        loaded.validate().unwrap();
    }

    #[test]
    fn lambda_gan_zero_needs_paired_training() {
        let unpaired = TrainConfig { lambda_gan: 0.0, ..grey_colour(false) };
        assert!(unpaired.validate().unwrap_err().to_string().contains("--paired"));
        let paired = TrainConfig { lambda_gan: 0.0, paired: true, lambda_paired: 10.0, ..grey_colour(false) };
        paired.validate().unwrap();
        assert!(TrainConfig { lambda_gan: -1.0, ..grey_colour(false) }.validate().is_err());
    }

    #[test]
    fn keep_luma_needs_a_colour_domain_b() {
        let mut cfg = grey_colour(true);
        std::mem::swap(&mut cfg.domain_a, &mut cfg.domain_b);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("--keep-luma") && err.contains("'gray'"), "{err}");
        cfg.keep_luma = false;
        cfg.validate().unwrap();
    }
}
