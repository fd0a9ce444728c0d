//! A model ready to translate: `Translator` (a run folder's generators, or the built-in model)
//! and where a model comes from when none is named.

use crate::checkpoint::{load_generation, Network};
use crate::model::{Generator, GeneratorConfig, ModelSpec};
use super::TranslateOptions;
use crate::train::{open_device, TrainConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};

/// The generators of a checkpoint, ready to translate (weights are plain tensors: no autograd).
pub struct Translator {
    pub run_dir: PathBuf,
    /// The model's domains and generators.
    pub spec: ModelSpec,
    /// The dataset the model was trained on, when it was trained here (the studio offers its
    /// test images).
    pub dataset: Option<PathBuf>,
    pub device: Device,
    g_ab: Option<Generator>,
    g_ba: Option<Generator>,
    /// The generators' transformed convolution filters, kept from one translation to the next.
    filters: crate::ops::FilterCache,
    /// How images are laid out for the network (margin, tiles).
    pub options: TranslateOptions,
}

/// The grey→colour generator shipped with cyclestudio (`checkpoints/default`), inside the
/// binary so that `translate --to color` works from any folder and after `cargo install`.
const BUILTIN_CONFIG: &str = include_str!("../../checkpoints/default/config.toml");
const BUILTIN_G_AB: &[u8] = include_bytes!("../../checkpoints/default/latest/G_AB.safetensors");

/// Where a model comes from: a run folder, or the one built into the binary.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    Dir(PathBuf),
    BuiltIn,
}

impl ModelSource {
    /// The model used when none is named: `<checkpoints>/default` if present, else the most
    /// recently saved run there, else the built-in grey→colour model.
    pub fn default_in(checkpoints: &Path) -> Self {
        default_model_dir(checkpoints).map(Self::Dir).unwrap_or(Self::BuiltIn)
    }

    /// The model used when none is named, for translating to domain `to`: the first of
    /// `<checkpoints>/default`, the runs there from the most recently saved, and the built-in
    /// grey→colour model that can translate to `to` (so an unrelated run in `checkpoints/` does not
    /// hide the built-in model). Where none can, [`ModelSource::default_in`]'s choice, whose
    /// error then names the domains it knows.
    pub fn default_for(checkpoints: &Path, to: &str) -> Self {
        let mut dirs = saved_runs(checkpoints).unwrap_or_default();
        // `default` ahead of every run (a stable sort: the runs stay newest first).
        dirs.sort_by_key(|d| d.file_name() != Some("default".as_ref()));
        let found = dirs.into_iter().map(Self::Dir).chain([Self::BuiltIn]).find(|m| m.targets().iter().any(|t| t == to));
        found.unwrap_or_else(|| Self::default_in(checkpoints))
    }

    /// The domains this model translates to, read from its description without loading weights
    /// (none where it cannot be read).
    fn targets(&self) -> Vec<String> {
        let spec = match self {
            Self::BuiltIn => toml::from_str::<TrainConfig>(BUILTIN_CONFIG).ok().map(|c| c.model_spec()),
            Self::Dir(d) => TrainConfig::model_spec_with(d, TrainConfig::load(d).ok().as_ref()).ok(),
        };
        let Some(spec) = spec else { return Vec::new() };
        let mut t = vec![spec.domain_b.name.clone()];
        if spec.g_ba.is_some() {
            t.push(spec.domain_a.name.clone());
        }
        t
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::BuiltIn => write!(f, "the built-in grey→colour model"),
        }
    }
}

/// Builds a generator for translation from its tensors (weights plain: no autograd).
fn translation_generator(tensors: std::collections::HashMap<String, candle_core::Tensor>, cfg: &GeneratorConfig, device: &Device, file: &Path) -> Result<Generator> {
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let mut g = Generator::new(cfg, vb).with_context(|| format!("{} does not fit the architecture in config.toml", file.display()))?;
    // Translations of --keep-luma models get their colour without checkerboard.
    g.set_chroma_lowpass(true);
    if g.predicts_colour_classes() {
        g.set_temperature(crate::model::colour_classes::DEFAULT_TEMPERATURE)?;
    }
    Ok(g)
}

impl Translator {
    /// Loads a model from `source` onto `device`.
    pub fn open(source: &ModelSource, device: &str) -> Result<Self> {
        match source {
            ModelSource::Dir(d) => Self::load(d, device),
            ModelSource::BuiltIn => Self::builtin(device),
        }
    }

    /// Loads `run_dir/config.toml` and the generators of its newest verified checkpoint. While
    /// the run is being trained, a save may swap the checkpoint folders under the reader: it then
    /// tries again (for up to a few seconds) instead of failing.
    pub fn load(run_dir: &Path, device: &str) -> Result<Self> {
        Self::load_generation(run_dir, device, crate::checkpoint::LATEST)
    }

    /// [`Translator::load`] from a named generation: `latest`, or `best` (kept by validation).
    pub fn load_generation(run_dir: &Path, device: &str, which: &str) -> Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::load_once(run_dir, device, which) {
                Err(_) if attempt < 50 && crate::train::is_being_trained(run_dir) => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                loaded => return loaded,
            }
        }
    }

    fn load_once(run_dir: &Path, device: &str, which: &str) -> Result<Self> {
        let config = TrainConfig::load(run_dir).ok();
        let spec = TrainConfig::model_spec_with(run_dir, config.as_ref())?;
        let dataset = config.map(|c| c.dataset).filter(|d| !d.as_os_str().is_empty());
        let device = open_device(device)?;
        let generation = if which == crate::checkpoint::LATEST { load_generation(run_dir)? } else { crate::checkpoint::load_generation_named(run_dir, which)? };
        let load = |file: &str, cfg: GeneratorConfig| -> Result<Option<Generator>> {
            if !generation.has(file) {
                return Ok(None);
            }
            let tensors = generation.load_tensors(file, &device)?;
            translation_generator(tensors, &cfg, &device, &generation.dir.join(file)).map(Some)
        };
        let g_ab = load(Network::GAb.file(), spec.g_ab.clone())?;
        let g_ba = match &spec.g_ba {
            Some(cfg) => load(Network::GBa.file(), cfg.clone())?,
            None => None,
        };
        if g_ab.is_none() && g_ba.is_none() {
            bail!("{} holds no generator", generation.dir.display());
        }
        Self { run_dir: run_dir.to_path_buf(), spec, dataset, device, g_ab, g_ba, filters: Default::default(), options: TranslateOptions::default() }.with_model_gain()
    }

    /// The grey→colour model built into the binary (its A→B generator only).
    pub fn builtin(device: &str) -> Result<Self> {
        let config: TrainConfig = toml::from_str(BUILTIN_CONFIG).context("the built-in model's config does not parse")?;
        let device = open_device(device)?;
        let tensors = candle_core::safetensors::load_buffer(BUILTIN_G_AB, &device)?;
        let spec = config.model_spec();
        let g_ab = translation_generator(tensors, &spec.g_ab, &device, Path::new("built-in G_AB"))?;
        let dataset = Some(config.dataset).filter(|d| !d.as_os_str().is_empty());
        Self { run_dir: PathBuf::from("(built-in)"), spec, dataset, device, g_ab: Some(g_ab), g_ba: None, filters: Default::default(), options: TranslateOptions::default() }.with_model_gain()
    }

    /// Applies the colour gain the model's config asks translations to use, if any.
    fn with_model_gain(mut self) -> Result<Self> {
        if let Some(gain) = self.spec.translate_chroma_gain {
            self.set_chroma_gain(gain).context("the model's translate_chroma_gain")?;
        }
        Ok(self)
    }

    /// Scales the predicted colour of the model's chroma-over-luma generators (see
    /// [`Generator::set_chroma_gain`]); an error if it has none.
    pub fn set_chroma_gain(&mut self, gain: f64) -> Result<()> {
        self.each_chroma_generator("--chroma-gain", |g| Ok(g.set_chroma_gain(gain)?))
    }

    /// The read-out temperature of a colour-classes model (`--paired-loss classify`; see
    /// [`Generator::set_temperature`]); an error for other models.
    pub fn set_temperature(&mut self, t: f64) -> Result<()> {
        self.each_generator_that(Generator::predicts_colour_classes, "--temperature needs a model trained with --paired-loss classify", |g| {
            Ok(g.set_temperature(t)?)
        })
    }

    /// Turns the low-pass of predicted chroma ([`crate::model::lowpass_chroma`], on by default
    /// when translating) off, for the network's colour as it is; an error if the model has no
    /// chroma-over-luma generator.
    pub fn use_raw_chroma(&mut self) -> Result<()> {
        self.each_chroma_generator("--raw-chroma", |g| {
            g.set_chroma_lowpass(false);
            Ok(())
        })
    }

    /// Applies `f` to each chroma-over-luma generator; an error naming `option` if there is none.
    fn each_chroma_generator(&mut self, option: &str, f: impl FnMut(&mut Generator) -> Result<()>) -> Result<()> {
        self.each_generator_that(Generator::predicts_chroma, &format!("{option} needs a model trained with --keep-luma"), f)
    }

    /// Applies `f` to each generator for which `which` holds; if there is none, an error that
    /// says `needs` and names the model.
    fn each_generator_that(&mut self, which: fn(&Generator) -> bool, needs: &str, f: impl FnMut(&mut Generator) -> Result<()>) -> Result<()> {
        let mut chosen = [&mut self.g_ab, &mut self.g_ba].into_iter().flatten().filter(|g| which(g)).peekable();
        if chosen.peek().is_none() {
            bail!("{needs}, which {} is not", self.run_dir.display());
        }
        chosen.try_for_each(f)
    }

    /// Domain names (A, B).
    pub fn domains(&self) -> [&str; 2] {
        [&self.spec.domain_a.name, &self.spec.domain_b.name]
    }

    /// The target domains this model can translate to.
    pub fn targets(&self) -> Vec<&str> {
        let mut t = Vec::new();
        if self.g_ab.is_some() {
            t.push(self.spec.domain_b.name.as_str());
        }
        if self.g_ba.is_some() {
            t.push(self.spec.domain_a.name.as_str());
        }
        t
    }

    /// The generator that produces domain `to`, with its (input, output) channel counts.
    pub fn generator_to(&self, to: &str) -> Result<(&Generator, usize, usize)> {
        let (a, b) = (&self.spec.domain_a, &self.spec.domain_b);
        let found = if to == b.name {
            // A CUT generator may take more channels than domain A has (see `TrainConfig::g_ab`).
            self.g_ab.as_ref().map(|g| (g, self.spec.g_ab.in_channels, b.channels))
        } else if to == a.name {
            self.g_ba.as_ref().map(|g| (g, b.channels, a.channels))
        } else {
            None
        };
        found.with_context(|| {
            if self.spec.g_ba.is_none() && to == a.name {
                format!(
                    "model {} is one-sided ({}): it translates only {}→{}, with no way back to '{to}'; it knows: {}",
                    self.run_dir.display(),
                    self.spec.made_by,
                    a.name,
                    b.name,
                    self.targets().join(", ")
                )
            } else {
                format!("model {} cannot translate to '{to}'; it knows: {}", self.run_dir.display(), self.targets().join(", "))
            }
        })
    }

    /// Translates `img` to domain `to` at its own size, laid out as `self.options` says.
    pub fn translate(&self, to: &str, img: &image::DynamicImage) -> Result<image::DynamicImage> {
        let (g, cin, _) = self.generator_to(to)?;
        self.keeping_filters(|| super::translate_image(g, cin, self.size_multiple(), &self.device, img, &self.options))
    }

    /// [`Translator::translate`], telling `progress` how a tiled translation advances (for a
    /// translator shared between jobs, where `options.progress` cannot be set per job).
    pub fn translate_with_progress(&self, to: &str, img: &image::DynamicImage, progress: super::TileProgress) -> Result<image::DynamicImage> {
        let (g, cin, _) = self.generator_to(to)?;
        let options = super::TranslateOptions { progress: Some(progress), ..self.options.clone() };
        self.keeping_filters(|| super::translate_image(g, cin, self.size_multiple(), &self.device, img, &options))
    }

    /// Runs `f`, translations with this translator's generators on this thread, keeping their
    /// transformed filters for the next translation (see [`crate::ops::FilterCache`]): 8 % of
    /// a 256² translation after the first.
    pub fn keeping_filters<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.filters.scope(f)
    }

    /// The size multiple the generators need.
    pub fn size_multiple(&self) -> usize {
        self.spec.size_multiple()
    }
}

/// The model `translate` uses without `--model`: `<checkpoints>/default` if present, else the
/// most recently saved run.
pub fn default_model_dir(checkpoints: &Path) -> Result<PathBuf> {
    let default = checkpoints.join("default");
    if default.join(crate::train::CONFIG_FILE).exists() || default.join(crate::model::MODEL_FILE).exists() {
        return Ok(default);
    }
    let runs = saved_runs(checkpoints).with_context(|| format!("no models: {} does not exist", checkpoints.display()))?;
    runs.into_iter().next().with_context(|| format!("no trained model in {}; train one or pass --model", checkpoints.display()))
}

/// The folders in `checkpoints` that hold a saved checkpoint, the most recently saved first
/// (equal times in the folder's listing order).
fn saved_runs(checkpoints: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(checkpoints)? {
        let dir = entry?.path();
        let latest = dir.join(crate::checkpoint::LATEST).join(crate::checkpoint::MANIFEST);
        if let Ok(t) = std::fs::metadata(&latest).and_then(|m| m.modified()) {
            runs.push((t, dir));
        }
    }
    runs.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    Ok(runs.into_iter().map(|(_, d)| d).collect())
}
