use crate::data::Pixels;
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
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self { tile: None, max_pixels: 1536 * 1536 }
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

/// The window (x0, y0, w, h) of `src`, mirror-padded to `tw`×`th` with the window centred.
fn padded_window(src: &Pixels, x0: usize, y0: usize, w: usize, h: usize, tw: usize, th: usize) -> Pixels {
    let (left, top) = ((tw - w) / 2, (th - h) / 2);
    let c = src.channels;
    let mut data = vec![0f32; c * tw * th];
    for ch in 0..c {
        let plane = &src.data[ch * src.width * src.height..(ch + 1) * src.width * src.height];
        for y in 0..th {
            let sy = y0 + mirror(y as isize - top as isize, h);
            for x in 0..tw {
                let sx = x0 + mirror(x as isize - left as isize, w);
                data[ch * tw * th + y * tw + x] = plane[sy * src.width + sx];
            }
        }
    }
    Pixels { channels: c, width: tw, height: th, data }
}

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Runs `g` on the same window (x0,y0,w,h) of each source (all the same size) in one batch,
/// padded as the network needs; returns the outputs cropped back to w×h.
fn run_windows(g: &Generator, multiple: usize, device: &Device, srcs: &[&Pixels], win: (usize, usize, usize, usize)) -> Result<Vec<Pixels>> {
    let (x0, y0, w, h) = win;
    // A margin of context on every side keeps the borders as good as the centre; ResNet
    // generators also need at least 2 pixels per side after their two down-samplings.
    let min_side = (2 * multiple).max(8);
    let tw = round_up((w + 16).max(min_side), multiple);
    let th = round_up((h + 16).max(min_side), multiple);
    let inputs = srcs
        .iter()
        .map(|s| padded_window(s, x0, y0, w, h, tw, th).to_tensor(device))
        .collect::<Result<Vec<_>>>()?;
    let out = g.forward(&Tensor::stack(&inputs, 0)?)?; // [N,Cout,th,tw]
    let (left, top) = ((tw - w) / 2, (th - h) / 2);
    let out = out.narrow(2, top, h)?.narrow(3, left, w)?;
    (0..srcs.len()).map(|i| Pixels::from_tensor(&out.get(i)?)).collect()
}

fn run_window(g: &Generator, multiple: usize, device: &Device, src: &Pixels, win: (usize, usize, usize, usize)) -> Result<Pixels> {
    Ok(run_windows(g, multiple, device, &[src], win)?.remove(0))
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
    let decoded = imgs.iter().map(|i| Pixels::from_image(i, cin)).collect::<Result<Vec<_>>>()?;
    let (w, h) = (decoded[0].0.width, decoded[0].0.height);
    let uniform = decoded.iter().all(|(p, _)| (p.width, p.height) == (w, h));
    let outs: Vec<Pixels> = if uniform && tile_for(w, h, multiple, opts).is_none() {
        let srcs: Vec<&Pixels> = decoded.iter().map(|(p, _)| p).collect();
        run_windows(g, multiple, device, &srcs, (0, 0, w, h))?
    } else {
        decoded
            .iter()
            .map(|(src, _)| match tile_for(src.width, src.height, multiple, opts) {
                Some(t) => translate_tiled(g, multiple, device, src, t),
                None => run_window(g, multiple, device, src, (0, 0, src.width, src.height)),
            })
            .collect::<Result<_>>()?
    };
    Ok(outs.iter().zip(&decoded).map(|(o, (_, alpha))| o.to_image(alpha.as_deref())).collect())
}

fn translate_tiled(g: &Generator, multiple: usize, device: &Device, src: &Pixels, t: usize) -> Result<Pixels> {
    let (w, h) = (src.width, src.height);
    let overlap = (t / 4).max(8);
    let mut acc: Option<Vec<f32>> = None;
    let mut weight = vec![0f32; w * h];
    let mut cout = 0;
    for &y0 in &tile_starts(h, t, overlap) {
        for &x0 in &tile_starts(w, t, overlap) {
            let (tw, th) = (t.min(w), t.min(h));
            let out = run_window(g, multiple, device, src, (x0, y0, tw, th))?;
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
    }
    let mut data = acc.unwrap_or_default();
    for c in 0..cout {
        for i in 0..w * h {
            data[c * w * h + i] /= weight[i].max(1e-12);
        }
    }
    Ok(Pixels { channels: cout, width: w, height: h, data })
}

#[cfg(test)]
mod tests {
    use super::*;
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
