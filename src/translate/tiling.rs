//! Laying an image out for a generator: padding to its size multiple, margins, and tiles that
//! agree with the whole image (whole-image norm statistics, real neighbouring context).

use crate::data::Pixels;
use crate::model::norm_stats::{self, NormStats, RegionSums};
use crate::model::Generator;
use anyhow::Result;
use candle_core::{Device, Tensor};
use image::DynamicImage;

/// How to run a generator over an image of arbitrary size.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    /// Translate in overlapping tiles of this side (rounded to the network's multiple).
    pub tile: Option<usize>,
    /// Images with more pixels than this are tiled automatically (tiles of 1024).
    pub max_pixels: usize,
    /// Pixels of mirrored context added on every side of the image before it is translated
    /// (then cropped off). 0 runs the network on the image exactly as it is (padded only up to
    /// the size multiple), as the reference's `test.py` does.
    pub margin: usize,
    /// What the generator's convolutions multiply in (`--precision`).
    pub precision: crate::ops::Precision,
    /// Told how a tiled translation advances (a large image can take minutes).
    pub progress: Option<TileProgress>,
}

/// Called as a tiled translation advances with (stage, done, total): "statistics" (one partial
/// pass per norm layer over each block, for images beyond one statistics window), then "tiles".
#[derive(Clone)]
pub struct TileProgress(pub std::sync::Arc<dyn Fn(&'static str, u64, u64) + Send + Sync>);

impl std::fmt::Debug for TileProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TileProgress")
    }
}

impl TranslateOptions {
    fn report(&self, stage: &'static str, done: usize, total: usize) {
        if let Some(p) = &self.progress {
            (p.0)(stage, done as u64, total as u64);
        }
    }
}

/// The default `--margin`, chosen by measurement (bench/RESULTS.md, "Translation at the edges").
pub const DEFAULT_MARGIN: usize = 0;

impl Default for TranslateOptions {
    fn default() -> Self {
        Self { tile: None, max_pixels: 1536 * 1536, margin: DEFAULT_MARGIN, precision: crate::ops::Precision::Fp32, progress: None }
    }
}

const AUTO_TILE: usize = 1024;

/// Mirror index into 0..n without repeating the edge (like reflection padding), valid for any
/// offset and any n ≥ 1.
fn mirror(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let j = i.rem_euclid(period);
    (if j >= n as isize { period - j } else { j }) as usize
}

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// The image as the network sees it: `src` mirror-padded to `width`×`height`, with `src`'s
/// top-left pixel at (`left`, `top`). Windows of it are read without building it whole.
struct Padded<'a> {
    src: &'a Pixels,
    left: usize,
    top: usize,
    width: usize,
    height: usize,
}

impl<'a> Padded<'a> {
    /// `src` with `margin` pixels of context on every side, rounded up to the network's
    /// `multiple` (and to a minimum size), centred.
    fn new(src: &'a Pixels, multiple: usize, margin: usize) -> Self {
        // ResNet generators (multiple 4) need at least 2 pixels per side after their two
        // down-samplings; a U-Net's innermost level is 1×1 at one multiple.
        let min_side = multiple.max(8);
        let width = round_up((src.width + 2 * margin).max(min_side), multiple);
        let height = round_up((src.height + 2 * margin).max(min_side), multiple);
        Self { src, left: (width - src.width) / 2, top: (height - src.height) / 2, width, height }
    }

    /// Source row of padded row `y`; any row is valid.
    fn source_row(&self, y: usize) -> usize {
        mirror(y as isize - self.top as isize, self.src.height)
    }

    /// Source column of padded column `x`; any column is valid.
    fn source_col(&self, x: usize) -> usize {
        mirror(x as isize - self.left as isize, self.src.width)
    }

    /// The window (x0, y0, w, h) of the padded image.
    fn window(&self, (x0, y0, w, h): (usize, usize, usize, usize)) -> Pixels {
        let (c, sw, plane) = (self.src.channels, self.src.width, self.src.width * self.src.height);
        // The source column of each window column (mirrored where it is padding): rows whose
        // columns run straight through the source are copied as slices.
        let cols: Vec<usize> = (0..w).map(|x| self.source_col(x0 + x)).collect();
        let straight = cols.windows(2).all(|p| p[1] == p[0] + 1);
        let mut data = vec![0f32; c * w * h];
        for y in 0..h {
            let row = self.source_row(y0 + y) * sw;
            for ch in 0..c {
                let src = &self.src.data[ch * plane + row..][..sw];
                let dst = &mut data[ch * w * h + y * w..][..w];
                if straight {
                    dst.copy_from_slice(&src[cols[0]..cols[0] + w]);
                } else {
                    dst.iter_mut().zip(&cols).for_each(|(d, &i)| *d = src[i]);
                }
            }
        }
        Pixels { channels: c, width: w, height: h, data }
    }
}

/// Runs `g` on the whole of each source (all the same size) in one batch, padded as
/// `margin` and the network need; returns the outputs cropped back to the sources' size.
fn run_whole(g: &Generator, multiple: usize, margin: usize, device: &Device, srcs: &[&Pixels]) -> Result<Vec<Pixels>> {
    let padded: Vec<Padded> = srcs.iter().map(|s| Padded::new(s, multiple, margin)).collect();
    let (tw, th) = (padded[0].width, padded[0].height);
    let inputs = padded.iter().map(|p| p.window((0, 0, tw, th)).to_tensor(device)).collect::<Result<Vec<_>>>()?;
    let out = g.forward(&Tensor::stack(&inputs, 0)?)?; // [N,Cout,th,tw]
    let (w, h) = (srcs[0].width, srcs[0].height);
    let out = out.narrow(2, padded[0].top, h)?.narrow(3, padded[0].left, w)?;
    (0..srcs.len()).map(|i| Pixels::from_tensor(&out.get(i)?)).collect()
}

/// Tile start positions covering 0..n with tiles of `t` overlapping by at least `overlap`.
fn tile_starts(n: usize, t: usize, overlap: usize) -> Vec<usize> {
    if n <= t {
        return vec![0];
    }
    let stride = t - overlap;
    let mut v: Vec<usize> = (0..).map(|k| k * stride).take_while(|&s| s + t < n).collect();
    v.push(n - t);
    v
}

fn tile_for(w: usize, h: usize, multiple: usize, opts: &TranslateOptions) -> Option<usize> {
    let t = match opts.tile {
        Some(t) => round_up(t.max(2 * multiple).max(64), multiple),
        None if w * h > opts.max_pixels => round_up(AUTO_TILE, multiple),
        None => return None,
    };
    (w > t || h > t).then_some(t)
}

/// Translates one image with generator `g` (`cin` → `cout` channels), at its own size: the
/// output has the input's width and height, its alpha channel if it had one, and `cout` colour
/// channels. Large images (or `opts.tile`) go through overlapping tiles blended with linear ramps.
pub fn translate_image(g: &Generator, cin: usize, multiple: usize, device: &Device, img: &DynamicImage, opts: &TranslateOptions) -> Result<DynamicImage> {
    Ok(translate_batch(g, cin, multiple, device, std::slice::from_ref(img), opts)?.remove(0))
}

/// Like [`translate_image`] for several images; images of one size that need no tiling run as
/// one batch (instance norm is per image, so batching does not change any output).
pub fn translate_batch(g: &Generator, cin: usize, multiple: usize, device: &Device, imgs: &[DynamicImage], opts: &TranslateOptions) -> Result<Vec<DynamicImage>> {
    crate::ops::translating_in(opts.precision, || translate_batch_inner(g, cin, multiple, device, imgs, opts))
}

fn translate_batch_inner(g: &Generator, cin: usize, multiple: usize, device: &Device, imgs: &[DynamicImage], opts: &TranslateOptions) -> Result<Vec<DynamicImage>> {
    let decoded = imgs.iter().map(|i| Pixels::from_image(i, cin)).collect::<Result<Vec<_>>>()?;
    let (w, h) = (decoded[0].0.width, decoded[0].0.height);
    let uniform = decoded.iter().all(|(p, _)| (p.width, p.height) == (w, h));
    let outs: Vec<Pixels> = if uniform && tile_for(w, h, multiple, opts).is_none() {
        let srcs: Vec<&Pixels> = decoded.iter().map(|(p, _)| p).collect();
        run_whole(g, multiple, opts.margin, device, &srcs)?
    } else {
        decoded
            .iter()
            .map(|(src, _)| match tile_for(src.width, src.height, multiple, opts) {
                Some(t) => translate_tiled(g, multiple, device, src, t, opts),
                None => Ok(run_whole(g, multiple, opts.margin, device, &[src])?.remove(0)),
            })
            .collect::<Result<_>>()?
    };
    Ok(outs.iter().zip(&decoded).map(|(o, (_, alpha))| o.to_image(alpha.as_deref())).collect())
}

/// Context (pixels of the real image) each tile's window reaches beyond its core (before the
/// window is widened to the network's size multiple): convolutions near a window's edge see
/// padding instead of the image, and this keeps that effect away from the pixels kept. A U-Net's
/// innermost features see about 3 × its size `multiple` pixels (each of its down-samplings, a
/// 4×4 convolution of stride 2, widens the view by 3 × its stride), so the context is at least
/// half of that: with less, the default model's (unet_128) tiles of 256 differed from the whole
/// image by up to 23 levels, with 1.5 × 128 by at most 3 (bench/RESULTS.md, "Translation at the
/// edges"). A ResNet's `multiple` is 4: there t / 16, at least 32 pixels, is enough.
fn tile_context(t: usize, multiple: usize) -> usize {
    (t / 16).max(32).max(multiple * 3 / 2)
}

/// The window (start, length) around a core (start, length) along an axis of `n` pixels:
/// `context` pixels beyond the core on each side, aligned to the network's `multiple`.
fn window_1d(core: usize, len: usize, n: usize, context: usize, multiple: usize) -> (usize, usize) {
    let a = core.saturating_sub(context) / multiple * multiple;
    let b = round_up(core + len + context, multiple).min(n);
    (a, b - a)
}

/// Translates `src` in tiles of side `t`. Every norm layer uses the statistics of the whole
/// (padded) image, so tiles agree with each other and with the whole-image translation: from
/// one pass over the image where that fits in one (automatic) tile window's memory, else from
/// [`exact_stats`]. Each tile's window reaches [`tile_context`] pixels into its neighbours
/// (aligned to the network's multiple, so every window samples on the whole image's grid), and
/// the kept cores overlap by a few pixels blended with linear ramps.
fn translate_tiled(g: &Generator, multiple: usize, device: &Device, src: &Pixels, t: usize, opts: &TranslateOptions) -> Result<Pixels> {
    let (w, h) = (src.width, src.height);
    let padded = Padded::new(src, multiple, opts.margin);
    let context = tile_context(t, multiple);
    // The statistics pass is no larger than one window of an automatic tile (or of `t`, if
    // larger), so memory stays bounded by the tile size.
    let core = AUTO_TILE.max(t);
    let stats = if stats_in_one_pass(&padded, t, multiple) {
        let whole = padded.window((0, 0, padded.width, padded.height)).to_tensor(device)?.unsqueeze(0)?; // [1,C,H,W]
        norm_stats::record(|| g.forward(&whole).map(drop))?.1
    } else {
        exact_stats(g, multiple, device, &padded, core, context, opts)?
    };

    let overlap = (t / 16).max(8);
    let mut acc: Option<Vec<f32>> = None;
    let mut weight = vec![0f32; w * h];
    let mut cout = 0;
    let (rows, cols) = (tile_starts(h, t, overlap), tile_starts(w, t, overlap));
    let tiles = rows.len() * cols.len();
    for (i, (&y0, &x0)) in rows.iter().flat_map(|y| cols.iter().map(move |x| (y, x))).enumerate() {
        opts.report("tiles", i, tiles);
        let (tw, th) = (t.min(w), t.min(h));
        // The core (x0, y0, tw, th) in source coordinates sits at (left + x0, top + y0) in
        // the padded image; its window is aligned to the network's multiple.
        let (cx, cy) = (padded.left + x0, padded.top + y0);
        let (wx, ww) = window_1d(cx, tw, padded.width, context, multiple);
        let (wy, wh) = window_1d(cy, th, padded.height, context, multiple);
        let input = padded.window((wx, wy, ww, wh)).to_tensor(device)?.unsqueeze(0)?;
        let out = norm_stats::replay(&stats, || g.forward(&input))?; // [1,Cout,wh,ww]
        let out = Pixels::from_tensor(&out.narrow(2, cy - wy, th)?.narrow(3, cx - wx, tw)?)?;
        cout = out.channels;
        let acc = acc.get_or_insert_with(|| vec![0f32; cout * w * h]);
        // Linear ramps over the overlap, flat at the image border.
        let ramp = |i: usize, n: usize, at_start: bool, at_end: bool| -> f32 {
            let r = (overlap + 1) as f32;
            let a = if at_start { 1.0 } else { ((i + 1) as f32 / r).min(1.0) };
            let b = if at_end { 1.0 } else { ((n - i) as f32 / r).min(1.0) };
            a.min(b)
        };
        for y in 0..th {
            let wy = ramp(y, th, y0 == 0, y0 + th == h);
            for x in 0..tw {
                let wt = wy * ramp(x, tw, x0 == 0, x0 + tw == w);
                let (gx, gy) = (x0 + x, y0 + y);
                weight[gy * w + gx] += wt;
                for c in 0..cout {
                    acc[c * w * h + gy * w + gx] += wt * out.data[c * tw * th + y * tw + x];
                }
            }
        }
    }
    opts.report("tiles", tiles, tiles);
    let mut data = acc.unwrap_or_default();
    for c in 0..cout {
        for i in 0..w * h {
            data[c * w * h + i] /= weight[i].max(1e-12);
        }
    }
    Ok(Pixels { channels: cout, width: w, height: h, data })
}

/// Whether the statistics pass of tiles of `t` runs the whole padded image at once: when it is no
/// larger than one window of an automatic tile (or of `t`, if larger).
fn stats_in_one_pass(padded: &Padded, t: usize, multiple: usize) -> bool {
    let window = AUTO_TILE.max(t) + 2 * tile_context(t, multiple);
    padded.width * padded.height <= window * window
}

/// The statistics of every norm layer over the whole padded image, without ever running the
/// whole image: the image is cut into blocks of `core` pixels (on the network's grid), each run in
/// a window reaching `context` pixels beyond it, and each layer's input is summed over the blocks
/// ([`norm_stats::measure`]), one layer at a time, so every layer is normalised with the exact
/// statistics of the layers before it. Costs one partial forward pass per norm layer; statistics
/// from a reduced copy of the image instead put the built-in model's tiles 8–24 levels off the
/// whole image (bench/RESULTS.md, "Translation at the edges").
fn exact_stats(g: &Generator, multiple: usize, device: &Device, padded: &Padded, core: usize, context: usize, opts: &TranslateOptions) -> Result<NormStats> {
    let probe = round_up(multiple.max(8), multiple);
    let probe = padded.window((0, 0, probe, probe)).to_tensor(device)?.unsqueeze(0)?;
    let layers = norm_stats::record(|| g.forward(&probe).map(drop))?.1.len();
    let blocks = |n: usize| -> Vec<(usize, usize)> { (0..n).step_by(core).map(|a| (a, (a + core).min(n) - a)).collect() };
    let mut windows = Vec::new(); // (window x, y, w, h; block region within the window: y0, y1, x0, x1)
    for &(y0, bh) in &blocks(padded.height) {
        for &(x0, bw) in &blocks(padded.width) {
            let (wx, ww) = window_1d(x0, bw, padded.width, context, multiple);
            let (wy, wh) = window_1d(y0, bh, padded.height, context, multiple);
            windows.push(((wx, wy, ww, wh), (y0 - wy, y0 - wy + bh, x0 - wx, x0 - wx + bw)));
        }
    }
    let mut sums: Vec<RegionSums> = Vec::with_capacity(layers);
    for layer in 0..layers {
        let known = norm_stats::from_sums(&sums, device)?;
        let mut total = RegionSums::default();
        for (i, &((wx, wy, ww, wh), region)) in windows.iter().enumerate() {
            opts.report("statistics", layer * windows.len() + i, layers * windows.len());
            let input = padded.window((wx, wy, ww, wh)).to_tensor(device)?.unsqueeze(0)?; // [1,C,wh,ww]
            total.add(&norm_stats::measure(&known, layer, (wh, ww), region, || g.forward(&input))?);
        }
        sums.push(total);
    }
    Ok(norm_stats::from_sums(&sums, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GeneratorConfig, GeneratorKind, OutputMode};

    /// Mean and largest difference (8-bit levels) between two images of one size.
    fn level_diff(a: &DynamicImage, b: &DynamicImage) -> (f64, u8) {
        let (a, b) = (a.to_rgb8(), b.to_rgb8());
        let d: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
        (d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64, d.into_iter().max().unwrap_or(0))
    }

    /// Translates a synthetic `w`×`h` image with a random generator `kind` whole and in tiles of
    /// `tile`, and checks they agree within a level on average and 4 at most.
    fn assert_tiles_agree(kind: GeneratorKind, w: u32, h: u32, tile: usize) -> (f64, Vec<(&'static str, u64, u64)>) {
        let device = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &device);
        let cfg = GeneratorConfig { kind, in_channels: 3, out_channels: 3, ngf: if matches!(kind, GeneratorKind::Unet { .. }) { 4 } else { 8 }, output: OutputMode::Direct, antialias: false };
        let g = Generator::new(&cfg, vb).unwrap();
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x * y) % 251) as u8])));
        let multiple = kind.size_multiple();
        let whole = translate_image(&g, 3, multiple, &device, &img, &TranslateOptions::default()).unwrap();
        let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = reports.clone();
        let progress = Some(TileProgress(std::sync::Arc::new(move |stage, done, total| log.lock().unwrap().push((stage, done, total)))));
        let tiled = translate_image(&g, 3, multiple, &device, &img, &TranslateOptions { tile: Some(tile), progress, ..Default::default() }).unwrap();
        let (mean, max) = level_diff(&whole, &tiled);
        assert!(mean <= 1.0 && max <= 4, "{kind} tiles of {tile} vs whole: mean {mean:.3}, max {max} levels");
        let reports = reports.lock().unwrap().clone();
        (mean, reports)
    }

    /// Whether tiles of `tile` on a `w`×`h` image take their statistics layer by layer.
    fn streamed_stats(kind: GeneratorKind, w: usize, h: usize, tile: usize) -> bool {
        let src = Pixels { channels: 1, width: w, height: h, data: vec![0.0; w * h] };
        let multiple = kind.size_multiple();
        let t = tile_for(w, h, multiple, &TranslateOptions { tile: Some(tile), ..Default::default() }).unwrap();
        !stats_in_one_pass(&Padded::new(&src, multiple, 0), t, multiple)
    }

    /// Beyond one window's size the statistics come from [`exact_stats`], one norm layer at a
    /// time over blocks of the image; they are the whole image's, so tiles agree as closely as
    /// below it (a reduced copy's statistics put this test's tiles 132 levels off, the built-in
    /// model's 8–24 on large photos).
    #[test]
    fn tiles_of_images_beyond_one_statistics_window_agree_with_the_whole_image() {
        let (kind, w, h) = (GeneratorKind::Resnet { blocks: 1 }, 1300, 1100);
        assert!(streamed_stats(kind, w, h, 256));
        let (mean, reports) = assert_tiles_agree(kind, w as u32, h as u32, 256);
        assert!(mean < 0.05, "mean {mean}");
        // Progress: the statistics passes (2 blocks × the norm layers), then the tiles, each
        // counted up from 0 to its total, which is reported last.
        let stats: Vec<_> = reports.iter().filter(|r| r.0 == "statistics").collect();
        let tiles: Vec<_> = reports.iter().filter(|r| r.0 == "tiles").collect();
        assert!(stats.len() >= 2 && stats.iter().enumerate().all(|(i, r)| r.1 == i as u64 && r.2 == stats.len() as u64), "{reports:?}");
        assert!(tiles.iter().enumerate().all(|(i, r)| r.1 == i as u64 && r.2 == tiles.len() as u64 - 1), "{reports:?}");
        assert_eq!(reports.iter().position(|r| r.0 == "tiles"), Some(stats.len()), "{reports:?}");
    }

    #[test]
    fn forced_small_tiles_agree_with_the_whole_image() {
        assert!(!streamed_stats(GeneratorKind::Resnet { blocks: 2 }, 212, 150, 64));
        assert_tiles_agree(GeneratorKind::Resnet { blocks: 2 }, 212, 150, 64);
    }

    /// A U-Net sees far (unet_128: about 3 × 128 pixels), so its tiles need that much context.
    #[test]
    fn forced_small_tiles_of_a_unet_agree_with_the_whole_image() {
        assert_tiles_agree(GeneratorKind::Unet { downs: 7 }, 640, 384, 128);
    }

    #[test]
    fn mirror_and_tiles() {
        assert_eq!((-3..6).map(|i| mirror(i, 3)).collect::<Vec<_>>(), vec![1, 2, 1, 0, 1, 2, 1, 0, 1]);
        assert_eq!(mirror(5, 1), 0);
        assert_eq!(tile_starts(100, 64, 16), vec![0, 36]);
        assert_eq!(tile_starts(64, 64, 16), vec![0]);
        let s = tile_starts(1000, 256, 64);
        assert!(s.windows(2).all(|p| p[1] - p[0] <= 192) && *s.last().unwrap() == 744);
    }
}
