//! Measuring models: PSNR/SSIM of translations against true images (with the trivial
//! baseline), FID/KID against a reference folder (`fid`, `inception`, `fid_features`), and
//! anomaly scores by cycle-reconstruction error.

pub mod fd_dinov2;
pub mod fid;
pub mod fid_features;
pub mod inception;
mod metrics;
mod pth_legacy;

pub use metrics::{colourfulness, psnr, ssim};

/// Mean colourfulness of `images` as RGB (None for no images).
pub fn mean_colourfulness(images: &[DynamicImage]) -> Result<Option<f64>> {
    if images.is_empty() {
        return Ok(None);
    }
    let mut sum = 0.0;
    for img in images {
        sum += colourfulness(&Pixels::from_image(img, 3)?.0);
    }
    Ok(Some(sum / images.len() as f64))
}

use crate::data::image_io::has_image_extension;
use crate::data::{decode_image, Pixels};
use crate::translate::Translator;
use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, DynamicImage, GenericImageView};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let mut v: Vec<PathBuf> = WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && has_image_extension(e.path()))
        .map(|e| e.into_path())
        .collect();
    v.sort();
    Ok(v)
}

/// Resizes so the short side is `short` (0 keeps the size).
pub fn resize_short(img: &DynamicImage, short: u32) -> DynamicImage {
    let (w, h) = img.dimensions();
    if short == 0 || w.min(h) == short {
        return img.clone();
    }
    let s = short as f64 / w.min(h) as f64;
    img.resize_exact(((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1), FilterType::CatmullRom)
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageScore {
    pub file: PathBuf,
    pub psnr: f64,
    pub ssim: f64,
    pub baseline_psnr: f64,
    pub baseline_ssim: f64,
    /// Colourfulness (Hasler & Süsstrunk) of the translation and of the true image.
    pub colourfulness: f64,
    pub truth_colourfulness: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: PathBuf,
    pub to: String,
    pub images: usize,
    pub psnr: f64,
    pub ssim: f64,
    /// The input itself, in the target's channels, scored against the truth.
    pub baseline_psnr: f64,
    pub baseline_ssim: f64,
    /// Mean colourfulness of the translations and of the true images, and their ratio.
    pub colourfulness: f64,
    pub truth_colourfulness: f64,
    pub colourfulness_ratio: f64,
    pub per_image: Vec<ImageScore>,
    pub skipped: Skipped,
}

impl EvalReport {
    pub fn table(&self) -> String {
        format!(
            "{} images, to '{}' with {}\n\n| | PSNR (dB) | SSIM | colourfulness |\n|---|---|---|---|\n| model | {:.2} | {:.3} | {:.1} ({:.2}× the truth's) |\n| baseline (input as is) | {:.2} | {:.3} | |\n| truth | | | {:.1} |\n",
            self.images,
            self.to,
            self.model.display(),
            self.psnr,
            self.ssim,
            self.colourfulness,
            self.colourfulness_ratio,
            self.baseline_psnr,
            self.baseline_ssim,
            self.truth_colourfulness
        )
    }
}

/// Translates every image of `input` to `to` and scores it against the image with the same
/// file stem in `truth`; both are first resized so the short side is `short`.
pub fn evaluate(tr: &Translator, to: &str, input: &Path, truth: &Path, short: u32) -> Result<EvalReport> {
    evaluate_keeping(tr, to, input, truth, short, false)?.0
}

/// [`evaluate`], and with `keep` also every translation of `input` in path order, those without a
/// true counterpart included, as [`translate_folder`] makes them (each image translated once,
/// for scores that need all of them: KID, FID). The report is Err where no image has a true
/// counterpart; the outer Err is for what stops both (an unknown domain, an unreadable folder).
pub fn evaluate_keeping(tr: &Translator, to: &str, input: &Path, truth: &Path, short: u32, keep: bool) -> Result<(Result<EvalReport>, Vec<DynamicImage>)> {
    let (_, _, cout) = tr.generator_to(to)?;
    let truth_by_stem: HashMap<String, PathBuf> = images_under(truth)?
        .into_iter()
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
        .collect();
    let mut per_image = Vec::new();
    let mut skipped = Vec::new();
    let mut kept = Vec::new();
    for path in images_under(input)? {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let Some(tpath) = truth_by_stem.get(&stem) else {
            if keep {
                if let Ok(out) = decode_image(&path).and_then(|img| tr.translate(to, &resize_short(&img, short))) {
                    kept.push(out);
                }
            }
            skipped.push((path, "no true image with the same name".into()));
            continue;
        };
        let scored = (|| -> Result<ImageScore> {
            let src = resize_short(&decode_image(&path)?, short);
            let out = tr.translate(to, &src)?;
            if keep {
                kept.push(out.clone());
            }
            let truth_img = decode_image(tpath)?.resize_exact(src.width(), src.height(), FilterType::CatmullRom);
            let t = Pixels::from_image(&truth_img, cout)?.0;
            let o = Pixels::from_image(&out, cout)?.0;
            let b = Pixels::from_image(&src, cout)?.0;
            Ok(ImageScore {
                file: path.clone(),
                psnr: psnr(&o, &t),
                ssim: ssim(&o, &t),
                baseline_psnr: psnr(&b, &t),
                baseline_ssim: ssim(&b, &t),
                colourfulness: colourfulness(&o),
                truth_colourfulness: colourfulness(&t),
            })
        })();
        match scored {
            Ok(s) => per_image.push(s),
            Err(e) => skipped.push((path, format!("{e:#}"))),
        }
    }
    if per_image.is_empty() {
        return Ok((Err(anyhow::anyhow!("no image of {} has a true counterpart in {}", input.display(), truth.display())), kept));
    }
    let n = per_image.len() as f64;
    let mean = |f: fn(&ImageScore) -> f64| per_image.iter().map(f).sum::<f64>() / n;
    let report = EvalReport {
        model: tr.run_dir.clone(),
        to: to.to_string(),
        images: per_image.len(),
        psnr: mean(|s| s.psnr),
        ssim: mean(|s| s.ssim),
        baseline_psnr: mean(|s| s.baseline_psnr),
        baseline_ssim: mean(|s| s.baseline_ssim),
        colourfulness: mean(|s| s.colourfulness),
        truth_colourfulness: mean(|s| s.truth_colourfulness),
        colourfulness_ratio: mean(|s| s.colourfulness) / mean(|s| s.truth_colourfulness).max(1e-9),
        per_image,
        skipped,
    };
    Ok((Ok(report), kept))
}

/// Every image of `input` translated to `to` (resized so the short side is `short` first), in
/// path order; images that fail are skipped with the reason.
pub fn translate_folder(tr: &Translator, to: &str, input: &Path, short: u32, progress: &mut dyn FnMut(usize, usize)) -> Result<(Vec<DynamicImage>, Skipped)> {
    // A domain the model lacks is one error, not a skip per image.
    tr.generator_to(to)?;
    let files = images_under(input)?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let r = (|| -> Result<DynamicImage> {
            let src = resize_short(&decode_image(path)?, short);
            tr.translate(to, &src)
        })();
        match r {
            Ok(img) => out.push(img),
            Err(e) => skipped.push((path.clone(), format!("{e:#}"))),
        }
        progress(i + 1, files.len());
    }
    Ok((out, skipped))
}

#[derive(Clone, Debug, Serialize)]
pub struct AnomalyScore {
    pub file: PathBuf,
    /// Mean absolute cycle-reconstruction error in `[0,1]` pixel units.
    pub score: f64,
}

/// Images that could not be scored, each with the reason.
pub type Skipped = Vec<(PathBuf, String)>;

/// Ranks the images of `dir` (taken as domain `domain`) by cycle-reconstruction error,
/// most anomalous first. Images are resized so the short side is `short` for speed.
pub fn score_anomalies(tr: &Translator, domain: &str, dir: &Path, short: u32) -> Result<(Vec<AnomalyScore>, Skipped)> {
    let [a, b] = tr.domains();
    let other = if domain == a {
        b
    } else if domain == b {
        a
    } else {
        bail!("model {} has no domain '{domain}'; it has {a} and {b}", tr.run_dir.display());
    };
    let other = other.to_string();
    tr.generator_to(&other).context("scoring needs both generators")?;
    let (_, _, cout_back) = tr.generator_to(domain).context("scoring needs both generators")?;
    let mut scores = Vec::new();
    let mut skipped = Vec::new();
    for path in images_under(dir)? {
        let s = (|| -> Result<f64> {
            let src = resize_short(&decode_image(&path)?, short);
            let there = tr.translate(&other, &src)?;
            let back = tr.translate(domain, &there)?;
            let x = Pixels::from_image(&src, cout_back)?.0;
            let y = Pixels::from_image(&back, cout_back)?.0;
            Ok(x.data.iter().zip(&y.data).map(|(p, q)| (p - q).abs() as f64).sum::<f64>() / x.data.len() as f64)
        })();
        match s {
            Ok(score) => scores.push(AnomalyScore { file: path, score }),
            Err(e) => skipped.push((path, format!("{e:#}"))),
        }
    }
    scores.sort_by(|x, y| y.score.total_cmp(&x.score));
    Ok((scores, skipped))
}
