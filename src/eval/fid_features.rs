//! Inception features of images and folders for FID/KID: images read as pytorch-fid reads them
//! (RGB, `ToTensor` to [0, 1], bilinear resize to 299), batched through the network, and a
//! cache of every image's features keyed by the SHA-256 of its file and of the weights, so a
//! second `eval` against the same reference folder reads them instead of recomputing.

use super::fid::Features;
use super::inception::{resize_bilinear, LoadedInception, FEATURES, INPUT_SIZE};
use super::{images_under, Skipped};
use crate::data::decode_image;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::DynamicImage;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Images per forward pass.
pub const BATCH: usize = 8;

/// Bumped whenever the preprocessing changes, so old cache entries are not reused.
const CACHE_VERSION: &str = "v1";

/// One image as the network's input: RGB in [0, 1] (grey repeated, alpha dropped, 16-bit
/// rounded to 8 as PIL's `convert('RGB')`), resized to 299×299 → [3·299·299].
pub fn image_input(img: &DynamicImage) -> Vec<f32> {
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut planes = vec![0f32; 3 * w * h];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            planes[c * w * h + i] = p[c] as f32 / 255.0;
        }
    }
    if w == INPUT_SIZE && h == INPUT_SIZE {
        return planes;
    }
    resize_bilinear(&planes, 3, h, w, INPUT_SIZE, INPUT_SIZE)
}

/// Features of prepared inputs ([3·299·299] each), in batches of [`BATCH`].
pub fn features_of_inputs(model: &LoadedInception, inputs: &[Vec<f32>]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(inputs.len() * FEATURES);
    for chunk in inputs.chunks(BATCH) {
        let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (chunk.len(), 3, INPUT_SIZE, INPUT_SIZE), &Device::Cpu)?;
        out.extend(model.model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Features of in-memory images (translations), in order.
pub fn features_of_images(model: &LoadedInception, images: &[DynamicImage]) -> Result<Features> {
    let mut data = Vec::with_capacity(images.len() * FEATURES);
    for chunk in images.chunks(BATCH) {
        let inputs: Vec<Vec<f32>> = chunk.iter().map(image_input).collect();
        data.extend(features_of_inputs(model, &inputs)?);
    }
    Features::new(images.len(), FEATURES, data)
}

/// Where features are cached: `CYCLESTUDIO_CACHE`, else `$XDG_CACHE_HOME/cyclestudio`, else
/// `~/.cache/cyclestudio`, with `/fid` appended; None when there is no home.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("CYCLESTUDIO_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("cyclestudio")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("cyclestudio")))?;
    Some(base.join("fid"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Features of a folder: how many were read from the cache.
pub struct FolderFeatures {
    pub features: Features,
    pub files: Vec<PathBuf>,
    pub cached: usize,
    pub skipped: Skipped,
}

/// Features of every image under `dir` (sorted by path). With a cache folder, each image's
/// features are looked up by the SHA-256 of its file (and the weights'), and new ones are
/// added to the cache afterwards. `progress(done, total)` is called as images are processed.
pub fn folder_features(model: &LoadedInception, dir: &Path, cache: Option<&Path>, progress: &mut dyn FnMut(usize, usize)) -> Result<FolderFeatures> {
    let files = images_under(dir)?;
    let cache_file = cache.map(|c| c.join(format!("features-{CACHE_VERSION}-{}.safetensors", &model.sha256[..16])));
    let mut known: HashMap<String, Tensor> = match &cache_file {
        Some(f) if f.exists() => candle_core::safetensors::load(f, &Device::Cpu).unwrap_or_default(),
        _ => HashMap::new(),
    };
    let mut rows: Vec<Option<Vec<f32>>> = Vec::with_capacity(files.len());
    let mut keys = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    let mut todo: Vec<usize> = Vec::new();
    let mut cached = 0;
    for (i, f) in files.iter().enumerate() {
        let key = match std::fs::read(f) {
            Ok(b) => sha256_hex(&b),
            Err(e) => {
                skipped.push((f.clone(), format!("cannot read: {e}")));
                keys.push(String::new());
                rows.push(None);
                continue;
            }
        };
        match known.get(&key).and_then(|t| t.to_vec1::<f32>().ok()).filter(|v| v.len() == FEATURES) {
            Some(v) => {
                rows.push(Some(v));
                cached += 1;
            }
            None => {
                rows.push(None);
                todo.push(i);
            }
        }
        keys.push(key);
    }
    let total = files.len();
    let mut done = cached;
    progress(done, total);
    let mut added = false;
    for chunk in todo.chunks(BATCH) {
        let mut inputs = Vec::new();
        let mut which = Vec::new();
        for &i in chunk {
            match decode_image(&files[i]) {
                Ok(img) => {
                    inputs.push(image_input(&img));
                    which.push(i);
                }
                Err(e) => skipped.push((files[i].clone(), format!("{e:#}"))),
            }
        }
        let feats = features_of_inputs(model, &inputs)?;
        for (j, &i) in which.iter().enumerate() {
            let v = feats[j * FEATURES..(j + 1) * FEATURES].to_vec();
            known.insert(keys[i].clone(), Tensor::from_vec(v.clone(), FEATURES, &Device::Cpu)?);
            rows[i] = Some(v);
            added = true;
        }
        done += chunk.len();
        progress(done, total);
    }
    if let (Some(f), true) = (&cache_file, added) {
        // A cache that cannot be written only costs time next run.
        let write = || -> Result<()> {
            std::fs::create_dir_all(f.parent().context("cache folder")?)?;
            let mut named: Vec<(String, Tensor)> = known.into_iter().collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            crate::util::atomic_write(f, &crate::checkpoint::safetensors_bytes(&named)?)
        };
        if let Err(e) = write() {
            eprintln!("warning: could not write the feature cache {}: {e:#}", f.display());
        }
    }
    let mut data = Vec::new();
    let mut kept = Vec::new();
    for (f, r) in files.into_iter().zip(rows) {
        if let Some(v) = r {
            data.extend(v);
            kept.push(f);
        }
    }
    Ok(FolderFeatures { features: Features::new(kept.len(), FEATURES, data)?, files: kept, cached, skipped })
}

/// FID and KID of a set of images against a reference folder.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FidReport {
    pub input: PathBuf,
    pub reference: PathBuf,
    /// Images judged / reference images.
    pub input_images: usize,
    pub reference_images: usize,
    pub fid: f64,
    pub kid: super::fid::Kid,
    /// The standard weights (SHA-256 checked): comparable to pytorch-fid's and torch-fidelity's.
    pub standard_weights: bool,
    pub weights_sha256: String,
    /// Reference images whose features came from the cache.
    pub reference_cached: usize,
    pub skipped: Skipped,
}

impl FidReport {
    pub fn table(&self) -> String {
        let n = self.input_images.min(self.reference_images);
        let mut s = format!(
            "FID/KID: {} images of {} against {} reference images of {}\n\n| | value |\n|---|---|\n| FID | {:.3} |\n| KID | {:.5} ± {:.5} ({} subsets of {}) |\n",
            self.input_images,
            self.input.display(),
            self.reference_images,
            self.reference.display(),
            self.fid,
            self.kid.mean,
            self.kid.std,
            self.kid.subsets,
            self.kid.subset_size
        );
        if self.standard_weights {
            s.push_str("\nWeights: the standard pt_inception-2015-12-05 (SHA-256 checked): scores comparable to pytorch-fid's FID and torch-fidelity's KID on the same images.\n");
        } else {
            s.push_str(&format!(
                "\nWeights: NOT the standard FID Inception (SHA-256 {}…): these scores are not comparable to pytorch-fid's or to published figures.\n",
                &self.weights_sha256[..12.min(self.weights_sha256.len())]
            ));
        }
        if n < 2000 {
            s.push_str(&format!(
                "Note: N = {n}. FID is biased upwards below ~2,000 images (it falls as N grows), so compare FIDs only at equal N; \
                 KID is unbiased and is the figure to compare on small sets.\n"
            ));
        }
        s
    }
}

/// FID and KID of `input` (features already computed) against the images of `reference`.
pub fn compare_with_reference(
    model: &LoadedInception,
    input_dir: &Path,
    input: &Features,
    reference: &Path,
    cache: Option<&Path>,
    kid_opts: &super::fid::KidOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FidReport> {
    let r = folder_features(model, reference, cache, progress)?;
    if input.n < 2 || r.features.n < 2 {
        anyhow::bail!("FID/KID need at least 2 images on each side ({} in {}, {} in {})", input.n, input_dir.display(), r.features.n, reference.display());
    }
    Ok(FidReport {
        input: input_dir.to_path_buf(),
        reference: reference.to_path_buf(),
        input_images: input.n,
        reference_images: r.features.n,
        fid: super::fid::fid(input, &r.features)?,
        kid: super::fid::kid(input, &r.features, kid_opts)?,
        standard_weights: model.standard,
        weights_sha256: model.sha256.clone(),
        reference_cached: r.cached,
        skipped: r.skipped,
    })
}
