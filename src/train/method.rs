//! One face for the trainers of every method: the loop, health checks and validation drive a
//! CycleGAN run ([`Trainer`]) and a CUT/FastCUT run ([`CutTrainer`]) through [`MethodTrainer`].

use super::{CutTrainer, Losses, TrainConfig, Trainer};
use crate::checkpoint::Generation;
use crate::model::{Generator, PatchGan};
use anyhow::Result;
use candle_core::{Device, Tensor};
use image::DynamicImage;
use std::path::Path;

pub enum MethodTrainer {
    CycleGan(Box<Trainer>),
    Cut(Box<CutTrainer>),
}

impl MethodTrainer {
    /// The trainer `cfg.method` needs, with fresh weights from the run's seed.
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self> {
        Ok(if cfg.method.one_sided() {
            Self::Cut(Box::new(CutTrainer::new(cfg, device)?))
        } else {
            Self::CycleGan(Box::new(Trainer::new(cfg, device)?))
        })
    }

    pub fn cfg(&self) -> &TrainConfig {
        match self {
            Self::CycleGan(t) => &t.cfg,
            Self::Cut(t) => &t.cfg,
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Self::CycleGan(t) => &t.device,
            Self::Cut(t) => &t.device,
        }
    }

    /// Completed optimisation steps.
    pub fn step(&self) -> u64 {
        match self {
            Self::CycleGan(t) => t.step,
            Self::Cut(t) => t.step,
        }
    }

    pub fn lr(&self) -> f64 {
        match self {
            Self::CycleGan(t) => t.lr(),
            Self::Cut(t) => t.lr(),
        }
    }

    /// One optimisation step, its convolutions in the run's precision.
    pub fn train_step(&mut self, real_a: &Tensor, real_b: &Tensor) -> Result<Losses> {
        let precision = self.cfg().precision;
        crate::ops::in_pool(|| {
            crate::ops::with_precision(precision, || match self {
                Self::CycleGan(t) => t.train_step(real_a, real_b),
                Self::Cut(t) => t.train_step(real_a, real_b),
            })
        })
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        match self {
            Self::CycleGan(t) => t.save(run_dir),
            Self::Cut(t) => t.save(run_dir),
        }
    }

    pub fn restore(&mut self, run_dir: &Path) -> Result<Generation> {
        match self {
            Self::CycleGan(t) => t.restore(run_dir),
            Self::Cut(t) => t.restore(run_dir),
        }
    }

    /// The generators' files as a checkpoint holds them (for `best/`).
    pub fn generator_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        match self {
            Self::CycleGan(t) => t.generator_files(),
            Self::Cut(t) => t.generator_files(),
        }
    }

    /// The A→B generator and, for CycleGAN, the B→A one.
    pub fn generators(&self) -> (&Generator, Option<&Generator>) {
        match self {
            Self::CycleGan(t) => (&t.g_ab, Some(&t.g_ba)),
            Self::Cut(t) => (&t.g, None),
        }
    }

    /// The judge of domain B and, for CycleGAN, the judge of domain A.
    pub fn discriminators(&self) -> (&PatchGan, Option<&PatchGan>) {
        match self {
            Self::CycleGan(t) => (&t.d_b, Some(&t.d_a)),
            Self::Cut(t) => (&t.d, None),
        }
    }

    /// The sample grid of the preview images: real A | fake B | reconstructed A over real B |
    /// fake A | reconstructed B for CycleGAN; real A | G(A) over real B | G(B) (the identity
    /// PatchNCE asks of it) for CUT.
    pub fn preview(&self, real_a: &Tensor, real_b: &Tensor) -> Result<DynamicImage> {
        match self {
            Self::CycleGan(t) => {
                let [fake_b, rec_a, fake_a, rec_b] = t.translate_pair(real_a, real_b)?;
                super::grid(&[vec![real_a, &fake_b, &rec_a], vec![real_b, &fake_a, &rec_b]])
            }
            Self::Cut(t) => {
                let (fake_b, idt_b) = (t.translate(real_a)?, t.translate(real_b)?);
                super::grid(&[vec![real_a, &fake_b], vec![real_b, &idt_b]])
            }
        }
    }
}
