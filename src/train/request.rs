//! The run request: what a front end (the CLI or the studio) asks for when it starts or resumes a
//! training run. It owns every training default, the values derived from them and the resume rules.

use super::{GanLoss, Method, NceConfig, PairedLoss, Schedule, TrainConfig, ValidationConfig};
use crate::data::dataset::{Check, Dataset};
use crate::model::GeneratorKind;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The device a run uses unless told otherwise.
pub const DEFAULT_DEVICE: &str = "cpu";

/// The reference resizes images to 286 before cropping 256; runs keep that ratio at any size.
pub fn default_load_size(size: usize) -> usize {
    size * 286 / 256
}

/// Steps in one epoch as the reference counts it: one pass over the larger domain (over the
/// pairs in paired mode), in batches of `batch`.
pub fn steps_per_epoch(dataset: &Dataset, paired: bool, batch: usize) -> u64 {
    let (a, b) = (dataset.a.train.images.len(), dataset.b.train.images.len());
    let n = if paired { a } else { a.max(b) };
    (n as u64).div_ceil(batch.max(1) as u64).max(1)
}

/// The reference's epoch schedule for `method`: (epochs at the full rate, epochs of decay):
/// CycleGAN's 100 + 100; the CUT reference's 200 + 200 for CUT and 150 + 50 for FastCUT.
pub fn reference_epochs(method: Method) -> (u64, u64) {
    match method {
        Method::Cyclegan => (100, 100),
        Method::Cut => (200, 200),
        Method::Fastcut => (150, 50),
    }
}

/// How long a new run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Length {
    /// The reference's epochs for the method ([`reference_epochs`]).
    #[default]
    ReferenceEpochs,
    Epochs { epochs: Option<u64>, decay_epochs: Option<u64> },
    Iters { iters: u64, decay_iters: u64 },
}

/// How often a run logs, previews, saves and checks its health (None: the default).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Intervals {
    pub sample_every: Option<u64>,
    pub save_every: Option<u64>,
    pub log_every: Option<u64>,
    pub health_every: Option<u64>,
}

/// A training run as a user asks for it. Every `None` is the reference's value (for the chosen
/// method); [`RunRequest::new_run`] turns it into a [`TrainConfig`], [`RunRequest::resume`]
/// applies what may change to a saved one.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    pub name: String,
    /// Needed for a new run; a resumed run keeps its own.
    pub dataset: Option<PathBuf>,
    /// None: CycleGAN for a new run, the saved method when resuming.
    pub method: Option<Method>,
    pub generator: Option<GeneratorKind>,
    pub ngf: Option<usize>,
    pub ndf: Option<usize>,
    pub n_layers_d: Option<usize>,
    pub size: Option<usize>,
    pub load_size: Option<usize>,
    pub batch: Option<usize>,
    pub length: Length,
    pub lr: Option<f64>,
    pub beta1: Option<f64>,
    pub lambda_cycle: Option<f64>,
    pub lambda_identity: Option<f64>,
    pub lambda_gan: Option<f64>,
    /// The paired term's weight when `paired` (default [`super::DEFAULT_LAMBDA_PAIRED`]).
    pub lambda_paired: Option<f64>,
    pub paired_loss: Option<PairedLoss>,
    pub gan_loss: Option<GanLoss>,
    pub pool: Option<usize>,
    pub paired: bool,
    pub keep_luma: bool,
    pub seed: Option<u64>,
    pub no_flip: bool,
    pub device: Option<String>,
    /// None: fp32 for a new run, the saved precision when resuming.
    pub precision: Option<crate::ops::Precision>,
    pub intervals: Intervals,
    /// Some: (re)set held-out validation; None: none for a new run, unchanged on resume.
    pub validation: Option<ValidationConfig>,
}

impl RunRequest {
    /// The configuration of a new run: reads the dataset's domains and size (for the epoch
    /// length), fills every unset value with the reference's and checks the result.
    pub fn new_run(&self) -> Result<TrainConfig> {
        let dataset = self.dataset.clone().context("a new run needs a dataset (or resume an existing run)")?;
        // Counting the images (for epochs) reads every file's header; a length in iterations
        // needs only the domains (the studio asks on a key press).
        let ds = match self.length {
            Length::Iters { .. } => None,
            _ => Some(Dataset::open(&dataset, Check::Header)?),
        };
        let spec = match &ds {
            Some(ds) => ds.spec.clone(),
            None => Dataset::read_spec(&dataset)?,
        };
        let method = self.method.unwrap_or_default();
        let base = TrainConfig::reference(&self.name, dataset, spec.a, spec.b, 1);
        let batch = self.batch.unwrap_or(base.batch);
        let schedule = match self.length {
            Length::Iters { iters, decay_iters } => Schedule::Iters { iters, decay_iters },
            Length::ReferenceEpochs | Length::Epochs { .. } => {
                let (e, d) = reference_epochs(method);
                let (epochs, decay_epochs) = match self.length {
                    Length::Epochs { epochs, decay_epochs } => (epochs.unwrap_or(e), decay_epochs.unwrap_or(d)),
                    _ => (e, d),
                };
                let ds = ds.as_ref().expect("opened for an epoch schedule");
                Schedule::Epochs { epochs, decay_epochs, steps_per_epoch: steps_per_epoch(ds, self.paired, batch) }
            }
        };
        let size = self.size.unwrap_or(base.size);
        let generator = self.generator.unwrap_or(base.generator);
        let mut nce = NceConfig::for_method(method);
        if let (Some(nce), GeneratorKind::Resnet { blocks }) = (&mut nce, generator) {
            // A generator with fewer residual blocks than the reference's layers reach compares
            // the layers it has (resnet_2blocks: 0, 4, 8, 12).
            nce.nce_layers.retain(|&l| l <= NceConfig::last_layer(blocks));
        }
        let i = &self.intervals;
        let cfg = TrainConfig {
            method,
            nce,
            generator,
            ngf: self.ngf.unwrap_or(base.ngf),
            ndf: self.ndf.unwrap_or(base.ndf),
            n_layers_d: self.n_layers_d.unwrap_or(base.n_layers_d),
            size,
            load_size: self.load_size.unwrap_or(default_load_size(size)),
            batch,
            schedule,
            lr: self.lr.unwrap_or(base.lr),
            beta1: self.beta1.unwrap_or(base.beta1),
            lambda_cycle: self.lambda_cycle.unwrap_or(base.lambda_cycle),
            lambda_identity: self.lambda_identity.unwrap_or(base.lambda_identity),
            lambda_gan: self.lambda_gan.unwrap_or(base.lambda_gan),
            lambda_paired: if self.paired { self.lambda_paired.unwrap_or(super::DEFAULT_LAMBDA_PAIRED) } else { 0.0 },
            paired_loss: self.paired_loss.unwrap_or(base.paired_loss),
            paired: self.paired,
            keep_luma: self.keep_luma,
            gan_loss: self.gan_loss.unwrap_or(base.gan_loss),
            // CUT keeps no pool of earlier fakes (the reference sets pool_size 0).
            pool: self.pool.unwrap_or(if method.one_sided() { 0 } else { base.pool }),
            seed: self.seed.unwrap_or(base.seed),
            flip: !self.no_flip,
            sample_every: i.sample_every.unwrap_or(base.sample_every),
            save_every: i.save_every.unwrap_or(base.save_every),
            log_every: i.log_every.unwrap_or(base.log_every),
            health_every: i.health_every.unwrap_or(base.health_every),
            device: self.device.clone().unwrap_or(base.device.clone()),
            precision: self.precision.unwrap_or(base.precision),
            validation: self.validation.clone(),
            ..base
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The saved configuration of the run in `run_dir` with what a resume may change: the
    /// length of an iteration schedule, the device, the precision, the intervals and validation. Everything
    /// else is the saved run's (the networks cannot change mid-run); asking for another method
    /// or for --keep-luma on a run without it is an error.
    pub fn resume(&self, run_dir: &Path) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::load(run_dir)?;
        if self.method.is_some_and(|m| m != cfg.method) {
            bail!("run '{}' is a {} run; it cannot be resumed as {}", cfg.name, cfg.method, self.method.unwrap_or_default());
        }
        // The generator's architecture depends on it, so it cannot be switched on mid-run.
        if self.keep_luma && !cfg.keep_luma {
            bail!("run '{}' was started without --keep-luma, which cannot be added on --resume", cfg.name);
        }
        if let (Schedule::Iters { iters, decay_iters }, Length::Iters { iters: i, decay_iters: d }) = (&mut cfg.schedule, self.length) {
            (*iters, *decay_iters) = (i, d);
        }
        if let Some(d) = &self.device {
            cfg.device = d.clone();
        }
        // Like the device, the arithmetic may change on resume (another machine); the weights,
        // optimiser state and pools are fp32 either way.
        if let Some(p) = self.precision {
            cfg.precision = p;
        }
        let i = &self.intervals;
        cfg.sample_every = i.sample_every.unwrap_or(cfg.sample_every);
        cfg.save_every = i.save_every.unwrap_or(cfg.save_every);
        cfg.log_every = i.log_every.unwrap_or(cfg.log_every);
        cfg.health_every = i.health_every.unwrap_or(cfg.health_every);
        if self.validation.is_some() {
            cfg.validation = self.validation.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

impl RunRequest {
    /// The settings this request gives that differ from the saved run's `saved`, each as
    /// "--flag given (the run has saved)": what `--resume-or-start` refuses. Settings a resume may
    /// change (length, device, precision, intervals, validation) and settings not given are not
    /// conflicts.
    pub fn conflicts_with(&self, saved: &TrainConfig) -> Vec<String> {
        fn differ<T: PartialEq + std::fmt::Display>(out: &mut Vec<String>, flag: &str, given: Option<T>, saved: T) {
            if let Some(g) = given.filter(|g| *g != saved) {
                out.push(format!("{flag} {g} (the run has {saved})"));
            }
        }
        let mut out = Vec::new();
        if let Some(d) = &self.dataset {
            let same = d == &saved.dataset || matches!((d.canonicalize(), saved.dataset.canonicalize()), (Ok(a), Ok(b)) if a == b);
            if !same {
                out.push(format!("--dataset {} (the run has {})", d.display(), saved.dataset.display()));
            }
        }
        differ(&mut out, "--model", self.method, saved.method);
        differ(&mut out, "--generator", self.generator, saved.generator);
        differ(&mut out, "--ngf", self.ngf, saved.ngf);
        differ(&mut out, "--ndf", self.ndf, saved.ndf);
        differ(&mut out, "--n-layers-d", self.n_layers_d, saved.n_layers_d);
        differ(&mut out, "--size", self.size, saved.size);
        differ(&mut out, "--load-size", self.load_size, saved.load_size);
        differ(&mut out, "--batch", self.batch, saved.batch);
        differ(&mut out, "--lr", self.lr, saved.lr);
        differ(&mut out, "--beta1", self.beta1, saved.beta1);
        differ(&mut out, "--lambda-cycle", self.lambda_cycle, saved.lambda_cycle);
        differ(&mut out, "--lambda-identity", self.lambda_identity, saved.lambda_identity);
        differ(&mut out, "--lambda-gan", self.lambda_gan, saved.lambda_gan);
        differ(&mut out, "--pool", self.pool, saved.pool);
        differ(&mut out, "--seed", self.seed, saved.seed);
        differ(&mut out, "--gan-loss", self.gan_loss.map(|g| format!("{g:?}").to_lowercase()), format!("{:?}", saved.gan_loss).to_lowercase());
        differ(&mut out, "--paired-loss", self.paired_loss.map(|p| format!("{p:?}").to_lowercase()), format!("{:?}", saved.paired_loss).to_lowercase());
        if self.paired {
            differ(&mut out, "--paired", Some(true), saved.paired);
            differ(&mut out, "--lambda-paired", self.lambda_paired, saved.lambda_paired);
        }
        differ(&mut out, "--keep-luma", self.keep_luma.then_some(true), saved.keep_luma);
        differ(&mut out, "--no-flip", self.no_flip.then_some(true), !saved.flip);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/demo")
    }

    #[test]
    fn defaults_are_the_references_for_each_method() {
        let req = RunRequest { name: "r".into(), dataset: Some(demo()), ..Default::default() };
        let ds = Dataset::open(&demo(), Check::Header).unwrap();
        let cyc = req.new_run().unwrap();
        let reference = TrainConfig::reference("r", demo(), ds.spec.a.clone(), ds.spec.b.clone(), steps_per_epoch(&ds, false, 1));
        assert_eq!(cyc, reference);
        let cut = RunRequest { method: Some(Method::Cut), ..req.clone() }.new_run().unwrap();
        assert_eq!((cut.pool, cut.nce, cut.schedule.total_steps()), (0, NceConfig::for_method(Method::Cut), 400 * steps_per_epoch(&ds, false, 1)));
        let fast = RunRequest { method: Some(Method::Fastcut), ..req.clone() }.new_run().unwrap();
        assert_eq!(fast.schedule.total_steps(), 200 * steps_per_epoch(&ds, false, 1));
        let small = RunRequest { size: Some(128), length: Length::Iters { iters: 5, decay_iters: 5 }, ..req }.new_run().unwrap();
        assert_eq!((small.load_size, small.schedule.total_steps()), (143, 10));
    }

    /// `--resume-or-start` with the command line that started the run finds nothing to refuse;
    /// a changed architecture or loss setting is named, what a resume may change is not.
    #[test]
    fn conflicts_name_the_settings_that_differ_from_the_saved_run() {
        let req = RunRequest { name: "r".into(), dataset: Some(demo()), ngf: Some(8), lr: Some(1e-4), length: Length::Iters { iters: 5, decay_iters: 5 }, ..Default::default() };
        let saved = req.new_run().unwrap();
        assert!(req.conflicts_with(&saved).is_empty());
        let longer = RunRequest { length: Length::Iters { iters: 50, decay_iters: 5 }, device: Some("cpu".into()), precision: Some(crate::ops::Precision::Bf16), ..req.clone() };
        assert!(longer.conflicts_with(&saved).is_empty());
        let other = RunRequest { ngf: Some(16), keep_luma: true, seed: Some(saved.seed), ..req };
        let c = other.conflicts_with(&saved);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].starts_with("--ngf 16 (the run has 8)") && c[1].starts_with("--keep-luma"), "{c:?}");
    }

    #[test]
    fn resume_keeps_the_networks_and_changes_only_what_may_change() {
        let dir = tempfile::tempdir().unwrap();
        let req = RunRequest { name: "r".into(), dataset: Some(demo()), length: Length::Iters { iters: 5, decay_iters: 5 }, ..Default::default() };
        let cfg = req.new_run().unwrap();
        cfg.save(dir.path()).unwrap();
        let more = RunRequest {
            length: Length::Iters { iters: 8, decay_iters: 2 },
            ngf: Some(8),
            intervals: Intervals { save_every: Some(3), ..Default::default() },
            ..Default::default()
        };
        let resumed = more.resume(dir.path()).unwrap();
        assert_eq!((resumed.schedule.total_steps(), resumed.save_every, resumed.ngf), (10, 3, cfg.ngf));
        let err = RunRequest { method: Some(Method::Cut), ..Default::default() }.resume(dir.path()).unwrap_err();
        assert!(err.to_string().contains("cyclegan run"), "{err}");
    }
}
