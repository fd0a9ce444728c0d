//! Images in and out: decoding with clear errors, conversion to and from [-1, 1] tensors, PNG
//! bytes, resizing by the short side.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageReader, Limits, Rgba32FImage};
use std::path::Path;

/// File extensions treated as images when scanning folders.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"];

/// Largest side accepted, and the most memory one decode may take: a header that declares a
/// 100000×100000 image is refused up front instead of exhausting memory.
pub const MAX_SIDE: u32 = 32_768;
pub const MAX_DECODE_BYTES: u64 = 2 << 30;

pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

fn reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let mut reader = ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if reader.format().is_none() {
        bail!("{}: not a recognised image format", path.display());
    }
    reader.limits(limits());
    Ok(reader)
}

/// Decodes an image file (png, jpeg incl. CMYK, webp, bmp, tiff, first frame of a gif) with size
/// limits. Errors name the file and the reason.
pub fn decode_image(path: &Path) -> Result<DynamicImage> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if meta.len() == 0 {
        bail!("{}: empty file", path.display());
    }
    let img = reader(path)?.decode().map_err(|e| anyhow::anyhow!("{}: {}", path.display(), describe(e)))?;
    if img.width() == 0 || img.height() == 0 {
        bail!("{}: image has no pixels", path.display());
    }
    Ok(img)
}

/// [`decode_image`] for bytes already in memory (same formats and limits).
pub fn decode_image_bytes(bytes: &[u8]) -> Result<DynamicImage> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    if reader.format().is_none() {
        bail!("not a recognised image format");
    }
    reader.limits(limits());
    let img = reader.decode().map_err(|e| anyhow::anyhow!("{}", describe(e)))?;
    if img.width() == 0 || img.height() == 0 {
        bail!("image has no pixels");
    }
    Ok(img)
}

/// Reads only the header: the image's (width, height).
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    reader(path)?.into_dimensions().map_err(|e| anyhow::anyhow!("{}: {}", path.display(), describe(e)))
}

fn describe(e: image::ImageError) -> String {
    let text = match e {
        image::ImageError::Limits(l) => format!("image too large to decode safely ({l})"),
        image::ImageError::Unsupported(u) => format!("unsupported image: {u}"),
        image::ImageError::Decoding(d) => format!("corrupt or truncated image: {d}"),
        other => other.to_string(),
    };
    text.trim_end().to_string()
}

/// Planar float pixels in `[0,1]`: `data[c*h*w + y*w + x]`.
#[derive(Clone, Debug)]
pub struct Pixels {
    pub channels: usize,
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Pixels {
    /// The colour planes of an image with `channels` (1: ITU-R 601 luma, 3: RGB), plus its alpha
    /// plane if the image has a meaningful one.
    pub fn from_image(img: &DynamicImage, channels: usize) -> Result<(Self, Option<Vec<f32>>)> {
        let has_alpha = img.color().has_alpha();
        let rgba: Rgba32FImage = img.to_rgba32f();
        let (w, h) = (rgba.width() as usize, rgba.height() as usize);
        let n = w * h;
        let mut data = vec![0f32; channels * n];
        let mut alpha = has_alpha.then(|| vec![0f32; n]);
        for (i, p) in rgba.pixels().enumerate() {
            let [r, g, b, a] = p.0;
            match channels {
                1 => data[i] = 0.299 * r + 0.587 * g + 0.114 * b,
                3 => {
                    data[i] = r;
                    data[n + i] = g;
                    data[2 * n + i] = b;
                }
                c => bail!("unsupported channel count {c} (1 or 3)"),
            }
            if let Some(al) = alpha.as_mut() {
                al[i] = a;
            }
        }
        Ok((Self { channels, width: w, height: h, data }, alpha))
    }

    /// Tensor `[C,H,W]` scaled to `[-1,1]` as the networks expect.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let t = Tensor::from_slice(&self.data, (self.channels, self.height, self.width), device)?;
        Ok(t.affine(2.0, -1.0)?)
    }

    /// An 8-bit image (grey, RGB, or with the given alpha plane appended).
    pub fn to_image(&self, alpha: Option<&[f32]>) -> DynamicImage {
        let (w, h, n) = (self.width as u32, self.height as u32, self.width * self.height);
        let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        let get = |c: usize, i: usize| self.data[c * n + i];
        match (self.channels, alpha) {
            (1, None) => DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
                image::Luma([q(get(0, (y * w + x) as usize))])
            })),
            (1, Some(a)) => DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_fn(w, h, |x, y| {
                let i = (y * w + x) as usize;
                image::LumaA([q(get(0, i)), q(a[i])])
            })),
            (_, None) => DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
                let i = (y * w + x) as usize;
                image::Rgb([q(get(0, i)), q(get(1, i)), q(get(2, i))])
            })),
            (_, Some(a)) => DynamicImage::ImageRgba8(image::RgbaImage::from_fn(w, h, |x, y| {
                let i = (y * w + x) as usize;
                image::Rgba([q(get(0, i)), q(get(1, i)), q(get(2, i)), q(a[i])])
            })),
        }
    }

    /// From a `[C,H,W]` or `[1,C,H,W]` tensor in `[-1,1]`.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let t = if t.rank() == 4 { t.squeeze(0)? } else { t.clone() };
        let (c, h, w) = t.dims3()?;
        let data = t
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .affine(0.5, 0.5)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self { channels: c, width: w, height: h, data })
    }
}

/// The size of a `w`×`h` image scaled so its short side is `short` (neither side below it).
pub fn short_side_dims(w: u32, h: u32, short: u32) -> (u32, u32) {
    let s = short as f64 / w.min(h) as f64;
    (((w as f64 * s).round() as u32).max(short), ((h as f64 * s).round() as u32).max(short))
}

/// The centred `size`×`size` square of `img` after scaling its short side to `size` (bicubic).
pub fn centre_square(img: &DynamicImage, size: u32) -> DynamicImage {
    let (nw, nh) = short_side_dims(img.width(), img.height(), size);
    img.resize_exact(nw, nh, image::imageops::FilterType::CatmullRom).crop_imm((nw - size) / 2, (nh - size) / 2, size, size)
}

/// Tensor `[C,H,W]` or `[1,C,H,W]` in `[-1,1]` → 8-bit image.
pub fn tensor_to_image(t: &Tensor) -> Result<DynamicImage> {
    Ok(Pixels::from_tensor(t)?.to_image(None))
}

/// Encodes an image as PNG bytes.
pub fn png_bytes(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)?;
    Ok(buf.into_inner())
}
