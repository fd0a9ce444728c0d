//! Validation during training (`train --eval-every N --fid-weights FILE`): every N steps the
//! held-out images of each domain (by default the dataset's testA / testB) are translated by the
//! current generators and scored with KID and FID against the other domain's held-out images
//! (and, on paired data, PSNR/SSIM against their pairs). The scores go to `log.jsonl` and the
//! studio; the generators of the step with the lowest KID so far are kept in `best/`.

use super::{MethodTrainer, TrainConfig};
use crate::eval::fid::{fid, kid, Features, KidOptions};
use crate::eval::fid_features::features_of_images;
use crate::eval::inception::{load_fid_inception, LoadedInception};
use crate::eval::{psnr, ssim};
use crate::translate::{translate_image, TranslateOptions};
use anyhow::{bail, Context, Result};
use image::DynamicImage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The scores of the best generation, stored in `best/` beside its generators.
pub const BEST_SCORES_FILE: &str = "validation.json";

/// Validation settings, saved in `config.toml` so `--resume` keeps validating.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationConfig {
    /// Validate every this many steps (and at the last step).
    pub every: u64,
    /// The FID Inception weights (`pt_inception-2015-12-05-6726825d.pth`).
    pub fid_weights: PathBuf,
    /// Accept weights that are not the standard file.
    #[serde(default)]
    pub weights_unchecked: bool,
    /// Held-out images of domain A and B (default: the dataset's testA / testB).
    #[serde(default)]
    pub held_out_a: Option<PathBuf>,
    #[serde(default)]
    pub held_out_b: Option<PathBuf>,
}

/// One validation's scores. `kid` (the mean of both directions' KID) decides the best step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationScores {
    pub step: u64,
    /// Held-out images per domain.
    pub n_a: usize,
    pub n_b: usize,
    pub kid: f64,
    pub kid_ab: f64,
    pub kid_ab_std: f64,
    pub fid_ab: f64,
    pub kid_ba: f64,
    pub kid_ba_std: f64,
    pub fid_ba: f64,
    /// Paired data: translations against their true pairs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub psnr_ab: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ssim_ab: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub psnr_ba: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ssim_ba: Option<f64>,
    /// Mean colourfulness (Hasler & Süsstrunk) of the A→B translations, when B is colour.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub colourfulness_ab: Option<f64>,
    /// This step became the best so far (its generators are in `best/`).
    #[serde(default)]
    pub best: bool,
    /// A CUT/FastCUT run: A→B only (the B→A fields stay 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_sided: bool,
}

impl ValidationScores {
    /// One line for progress displays.
    pub fn summary(&self) -> String {
        let mut s = if self.one_sided {
            format!("KID A→B {:.4} · FID {:.1}", self.kid_ab, self.fid_ab)
        } else {
            format!("KID A→B {:.4} B→A {:.4} · FID {:.1} / {:.1}", self.kid_ab, self.kid_ba, self.fid_ab, self.fid_ba)
        };
        if let (Some(p), Some(q)) = (self.psnr_ab, self.ssim_ab) {
            s.push_str(&format!(" · A→B PSNR {p:.2} SSIM {q:.3}"));
        }
        if let Some(c) = self.colourfulness_ab {
            s.push_str(&format!(" · colourfulness {c:.1}"));
        }
        if self.best {
            s.push_str(" · best so far");
        }
        s
    }
}

struct HeldOut {
    /// (file stem, image resized so its short side is the training size)
    images: Vec<(String, DynamicImage)>,
    features: Features,
}

/// Scores a run's generators on held-out images; holds the FID Inception and the held-out sets'
/// features, computed once.
pub struct Validator {
    model: LoadedInception,
    a: HeldOut,
    b: HeldOut,
    paired: bool,
    /// Lowest KID so far (read back from `best/` on resume).
    best: Option<f64>,
}

fn held_out(dir: &Path, short: u32, model: &LoadedInception) -> Result<HeldOut> {
    let mut images = Vec::new();
    for path in crate::eval::images_under(dir)? {
        // Unreadable files were reported when the dataset was opened.
        if let Ok(img) = crate::data::decode_image(&path) {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            images.push((stem, crate::eval::resize_short(&img, short)));
        }
    }
    if images.len() < 2 {
        bail!("validation needs at least 2 readable held-out images in {} (found {})", dir.display(), images.len());
    }
    let imgs: Vec<DynamicImage> = images.iter().map(|(_, i)| i.clone()).collect();
    let features = features_of_images(model, &imgs)?;
    Ok(HeldOut { images, features })
}

impl Validator {
    /// Loads the weights and the held-out images (features of both sets computed here).
    pub fn new(cfg: &TrainConfig, v: &ValidationConfig, run_dir: &Path) -> Result<Self> {
        if v.every == 0 {
            bail!("--eval-every must be positive");
        }
        let model = load_fid_inception(&v.fid_weights, v.weights_unchecked)?;
        let dir_a = v.held_out_a.clone().unwrap_or_else(|| cfg.dataset.join("testA"));
        let dir_b = v.held_out_b.clone().unwrap_or_else(|| cfg.dataset.join("testB"));
        let short = cfg.size as u32;
        let a = held_out(&dir_a, short, &model).with_context(|| format!("held-out images of {}", cfg.domain_a.name))?;
        let b = held_out(&dir_b, short, &model).with_context(|| format!("held-out images of {}", cfg.domain_b.name))?;
        let best = best_scores(run_dir).map(|s| s.kid);
        Ok(Self { model, a, b, paired: cfg.paired, best })
    }

    /// Translates both held-out sets with the trainer's generators and scores them; `best` is
    /// set when the mean KID is the lowest so far.
    pub fn run(&mut self, trainer: &MethodTrainer) -> Result<ValidationScores> {
        let cfg = trainer.cfg();
        let device = trainer.device();
        let (g_ab, g_ba) = trainer.generators();
        let multiple = cfg.generator.size_multiple();
        let opts = TranslateOptions::default();
        let translate = |g, cin, set: &HeldOut| -> Result<Vec<DynamicImage>> {
            set.images.iter().map(|(_, img)| translate_image(g, cin, multiple, device, img, &opts)).collect()
        };
        let fake_b = translate(g_ab, cfg.g_ab().in_channels, &self.a)?;
        let kid_opts = KidOptions::default();
        let fb = features_of_images(&self.model, &fake_b)?;
        let kab = kid(&fb, &self.b.features, &kid_opts)?;
        let mut s = ValidationScores {
            step: trainer.step(),
            n_a: self.a.images.len(),
            n_b: self.b.images.len(),
            kid: kab.mean,
            kid_ab: kab.mean,
            kid_ab_std: kab.std,
            fid_ab: fid(&fb, &self.b.features)?,
            one_sided: g_ba.is_none(),
            ..Default::default()
        };
        if self.paired {
            (s.psnr_ab, s.ssim_ab) = paired_scores(&fake_b, &self.a, &self.b, cfg.domain_b.channels)?;
        }
        if cfg.domain_b.channels == 3 {
            s.colourfulness_ab = crate::eval::mean_colourfulness(&fake_b)?;
        }
        // A one-sided (CUT) run is judged on A→B alone; CycleGAN on the mean of both directions.
        if let Some(g_ba) = g_ba {
            let fake_a = translate(g_ba, cfg.domain_b.channels, &self.b)?;
            let fa = features_of_images(&self.model, &fake_a)?;
            let kba = kid(&fa, &self.a.features, &kid_opts)?;
            s.kid = 0.5 * (kab.mean + kba.mean);
            (s.kid_ba, s.kid_ba_std, s.fid_ba) = (kba.mean, kba.std, fid(&fa, &self.a.features)?);
            if self.paired {
                (s.psnr_ba, s.ssim_ba) = paired_scores(&fake_a, &self.b, &self.a, cfg.domain_a.channels)?;
            }
        }
        if self.best.is_none_or(|b| s.kid < b) {
            self.best = Some(s.kid);
            s.best = true;
        }
        Ok(s)
    }
}

/// Mean PSNR/SSIM of translations of `from` against the images of `to` with the same stem.
fn paired_scores(fakes: &[DynamicImage], from: &HeldOut, to: &HeldOut, channels: usize) -> Result<(Option<f64>, Option<f64>)> {
    use crate::data::Pixels;
    let (mut p, mut q, mut n) = (0.0, 0.0, 0usize);
    for (fake, (stem, _)) in fakes.iter().zip(&from.images) {
        let Some((_, truth)) = to.images.iter().find(|(s, _)| s == stem) else { continue };
        let truth = truth.resize_exact(fake.width(), fake.height(), image::imageops::FilterType::CatmullRom);
        let (o, t) = (Pixels::from_image(fake, channels)?.0, Pixels::from_image(&truth, channels)?.0);
        p += psnr(&o, &t);
        q += ssim(&o, &t);
        n += 1;
    }
    Ok(if n == 0 { (None, None) } else { (Some(p / n as f64), Some(q / n as f64)) })
}

/// The scores stored with the run's `best/` generation, if there is one.
pub fn best_scores(run_dir: &Path) -> Option<ValidationScores> {
    let g = crate::checkpoint::load_generation_named(run_dir, crate::checkpoint::BEST).ok()?;
    serde_json::from_slice(&g.read_verified(BEST_SCORES_FILE).ok()?).ok()
}
