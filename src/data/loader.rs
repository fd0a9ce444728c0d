//! The background batch loader: resized, cropped, flipped training pairs whose every random
//! choice is a function of the seed and the step.

use super::image_io::{decode_image, Pixels};
use crate::util::Rng;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use image::{imageops::FilterType, DynamicImage, GenericImageView};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Random-stream purposes: each random choice of training has its own stream per sample.
const STREAM_PERMUTATION: u64 = 1;
const STREAM_PICK_B: u64 = 2;
const STREAM_AUGMENT_A: u64 = 3;
const STREAM_AUGMENT_B: u64 = 4;

/// Decoded, resized images kept in memory up to this many bytes per domain.
const CACHE_BYTES: usize = 1 << 30;

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// Side of the square training crop.
    pub size: usize,
    /// Short side the image is resized to before cropping (≥ size).
    pub load_size: usize,
    pub batch: usize,
    pub seed: u64,
    /// Same-index files of A and B are pairs: crop and flip them identically.
    pub paired: bool,
    pub flip: bool,
}

/// One training batch, built on the loader thread.
pub struct Batch {
    pub step: u64,
    pub real_a: Tensor, // [B,Ca,S,S] on the CPU
    pub real_b: Tensor, // [B,Cb,S,S] on the CPU
    /// Files that could not be loaded for this batch (replaced by others).
    pub warnings: Vec<String>,
}

struct DomainFiles {
    files: Vec<PathBuf>,
    channels: usize,
    cache: HashMap<usize, Arc<DynamicImage>>,
    cached_bytes: usize,
    broken: HashMap<usize, String>,
}

impl DomainFiles {
    /// The image at `idx` resized so its short side is `load_size` (or to `exact` when given).
    fn resized(&mut self, idx: usize, load_size: usize, exact: Option<(u32, u32)>) -> Result<Arc<DynamicImage>> {
        if exact.is_none() {
            if let Some(img) = self.cache.get(&idx) {
                return Ok(img.clone());
            }
        }
        if let Some(why) = self.broken.get(&idx) {
            bail!("{why}");
        }
        let img = match decode_image(&self.files[idx]) {
            Ok(i) => i,
            Err(e) => {
                let why = format!("{e:#}");
                self.broken.insert(idx, why.clone());
                bail!("{why}");
            }
        };
        let (w, h) = img.dimensions();
        let (nw, nh) = exact.unwrap_or_else(|| super::short_side_dims(w, h, load_size as u32));
        let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
        let resized = if (nw, nh) == (w, h) { rgb } else { rgb.resize_exact(nw, nh, FilterType::CatmullRom) };
        let resized = Arc::new(resized);
        let bytes = (nw * nh * 3) as usize;
        if exact.is_none() && self.cached_bytes + bytes <= CACHE_BYTES {
            self.cached_bytes += bytes;
            self.cache.insert(idx, resized.clone());
        }
        Ok(resized)
    }
}

/// Crop window and flip drawn for one sample.
#[derive(Clone, Copy)]
struct Augment {
    x: u32,
    y: u32,
    flip: bool,
}

fn draw_augment(rng: &mut Rng, w: u32, h: u32, size: usize, flip: bool) -> Augment {
    let x = rng.below((w as usize - size) + 1) as u32;
    let y = rng.below((h as usize - size) + 1) as u32;
    let f = flip && rng.uniform() < 0.5;
    Augment { x, y, flip: f }
}

fn apply(img: &DynamicImage, aug: Augment, size: usize, channels: usize) -> Result<Pixels> {
    let crop = img.crop_imm(aug.x, aug.y, size as u32, size as u32);
    let crop = if aug.flip { crop.fliph() } else { crop };
    Ok(Pixels::from_image(&crop, channels)?.0)
}

/// Produces batches on a background thread, a few steps ahead of training. Every choice (which
/// image, which crop, which flip) is drawn from streams keyed by (seed, sample index), so the
/// batch of a step is the same whether training started at step 0 or resumed at that step.
pub struct BatchLoader {
    rx: Receiver<Result<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl BatchLoader {
    /// The epoch (0-based) that step `step` falls in for datasets of these sizes.
    pub fn epoch_of(step: u64, batch: usize, n_a: usize, n_b: usize, paired: bool) -> u64 {
        let n = if paired { n_a } else { n_a.max(n_b) }.max(1) as u64;
        step * batch as u64 / n
    }

    pub fn spawn(
        a: (Vec<PathBuf>, usize),
        b: (Vec<PathBuf>, usize),
        opts: LoaderOptions,
        start_step: u64,
    ) -> Result<Self> {
        if a.0.is_empty() || b.0.is_empty() {
            bail!("both domains need at least one readable training image");
        }
        if opts.paired && a.0.len() != b.0.len() {
            bail!("paired training needs as many images in A as in B");
        }
        if opts.load_size < opts.size {
            bail!("load size {} is smaller than the crop size {}", opts.load_size, opts.size);
        }
        let (tx, rx) = sync_channel(3);
        let handle = std::thread::Builder::new().name("batch-loader".into()).spawn(move || {
            let mut da = DomainFiles { files: a.0, channels: a.1, cache: HashMap::new(), cached_bytes: 0, broken: HashMap::new() };
            let mut db = DomainFiles { files: b.0, channels: b.1, cache: HashMap::new(), cached_bytes: 0, broken: HashMap::new() };
            let mut perm_epoch = u64::MAX;
            let mut perm: Vec<usize> = Vec::new();
            let n = if opts.paired { da.files.len() } else { da.files.len().max(db.files.len()) };
            for step in start_step.. {
                let mut warnings = Vec::new();
                let mut xa = Vec::with_capacity(opts.batch);
                let mut xb = Vec::with_capacity(opts.batch);
                let mut failed = None;
                for j in 0..opts.batch {
                    let k = step * opts.batch as u64 + j as u64;
                    let epoch = k / n as u64;
                    if epoch != perm_epoch {
                        perm = (0..n).collect();
                        Rng::stream(opts.seed, STREAM_PERMUTATION, epoch).shuffle(&mut perm);
                        perm_epoch = epoch;
                    }
                    let idx = perm[(k % n as u64) as usize];
                    match sample(&mut da, &mut db, idx, k, &opts, &mut warnings) {
                        Ok((pa, pb)) => {
                            xa.push(pa);
                            xb.push(pb);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                let batch = match failed {
                    Some(e) => Err(e),
                    None => stack(&xa).and_then(|ra| Ok(Batch { step, real_a: ra, real_b: stack(&xb)?, warnings })),
                };
                let stop = batch.is_err();
                if tx.send(batch).is_err() || stop {
                    return;
                }
            }
        })?;
        Ok(Self { rx, handle: Some(handle) })
    }

    /// The next batch (blocks until the loader thread has it ready).
    pub fn next(&self) -> Result<Batch> {
        match self.rx.recv() {
            Ok(b) => b,
            Err(_) => bail!("the batch loader stopped unexpectedly"),
        }
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail, which ends it.
        drop(std::mem::replace(&mut self.rx, sync_channel(1).1));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Loads sample `k` (dataset position `idx`); a broken file is replaced by the next readable one.
fn sample(
    da: &mut DomainFiles,
    db: &mut DomainFiles,
    idx: usize,
    k: u64,
    opts: &LoaderOptions,
    warnings: &mut Vec<String>,
) -> Result<(Pixels, Pixels)> {
    let n_try = da.files.len().max(db.files.len());
    for attempt in 0..n_try {
        let ia = (idx + attempt) % da.files.len();
        let img_a = match da.resized(ia, opts.load_size, None) {
            Ok(i) => i,
            Err(e) => {
                warnings.push(format!("skipped {e:#}"));
                continue;
            }
        };
        let ib = if opts.paired {
            ia
        } else {
            (Rng::stream(opts.seed, STREAM_PICK_B, k).below(db.files.len()) + attempt) % db.files.len()
        };
        let exact = opts.paired.then(|| img_a.dimensions());
        let img_b = match db.resized(ib, opts.load_size, exact) {
            Ok(i) => i,
            Err(e) => {
                warnings.push(format!("skipped {e:#}"));
                continue;
            }
        };
        let (wa, ha) = img_a.dimensions();
        let aug_a = draw_augment(&mut Rng::stream(opts.seed, STREAM_AUGMENT_A, k), wa, ha, opts.size, opts.flip);
        let aug_b = if opts.paired {
            aug_a
        } else {
            let (wb, hb) = img_b.dimensions();
            draw_augment(&mut Rng::stream(opts.seed, STREAM_AUGMENT_B, k), wb, hb, opts.size, opts.flip)
        };
        return Ok((apply(&img_a, aug_a, opts.size, da.channels)?, apply(&img_b, aug_b, opts.size, db.channels)?));
    }
    bail!("no readable training image left (last problems: {})", warnings.join("; "))
}

fn stack(xs: &[Pixels]) -> Result<Tensor> {
    let ts = xs.iter().map(|p| p.to_tensor(&Device::Cpu)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&ts, 0)?)
}
