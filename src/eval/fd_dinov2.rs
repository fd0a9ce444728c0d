//! FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics and
//! their unfair treatment of diffusion models"): the Fréchet distance of [`super::fid`] computed
//! on DINOv2 ViT features instead of Inception ones. The paper and its code (dgm-eval,
//! `--model dinov2`) use ViT-L/14; any of ViT-S/B/L/14 loads here, whichever the user supplies.
//!
//! What is matched, from layer6ai-labs/dgm-eval (`dgm_eval/models/dinov2.py`,
//! `DINOv2Encoder`, default `clean_resize=False`, and `dgm_eval/representations.py`):
//!
//! * **Preprocessing** ([`image_input`]): the image as RGB (PIL `convert('RGB')`; here
//!   `to_rgb8`, as the FID path does), `torchvision.transforms.Resize((224, 224), BICUBIC)`,
//!   which on a PIL image is Pillow's antialiased bicubic resize of the uint8 image (Keys cubic
//!   a = −0.5, support widened by the scale when shrinking, horizontal pass then vertical, 22-bit
//!   fixed-point coefficients, each pass rounded and clipped to uint8): reproduced bit for bit
//!   by [`resize_bicubic_like_pil`]. Then `ToTensor` (/255) and `Normalize` with the ImageNet
//!   mean and std, in f32 as torchvision does. No crop; the aspect ratio is not kept.
//! * **Network** ([`Dinov2`]): `torch.hub.load('facebookresearch/dinov2', 'dinov2_vit?14')`,
//!   whose forward is the class token after the final LayerNorm (`x_norm_clstoken`; the head is
//!   the identity): patch embedding (a 14×14 stride-14 convolution), class token, learned
//!   position embedding, pre-norm blocks with LayerScale (`x + γ₁·attn(norm₁ x)`,
//!   `x + γ₂·mlp(norm₂ x)`), LayerNorm eps 1e-6, exact (erf) GELU, qkv with bias. The released
//!   checkpoints' position embedding is for 518×518 (37×37 patches); for the 224 input the hub
//!   model resizes it in `interpolate_pos_encoding` with PyTorch's bicubic `F.interpolate`
//!   (A = −0.75, `align_corners=False`, no antialias, border clamped) at
//!   `scale_factor = (16 + 0.1) / 37` (`interpolate_offset = 0.1`): reproduced by
//!   [`resize_pos_embed_like_hub`], once at load. A position embedding already 16×16 is used
//!   as is (timm built with `img_size=224`), as the hub model does.
//! * **Distance** ([`fd_dinov2`]): dgm-eval's `compute_FD_with_reps` (np.mean, np.cov,
//!   `sqrtm`), which is pytorch-fid's formula: [`super::fid::fid`] itself.
//!
//! Weights: a `.safetensors` of timm's `vit_{small,base,large}_patch14_dinov2` `state_dict`
//! (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.{norm1,attn.qkv,attn.proj,ls1,
//! norm2,mlp.fc1,mlp.fc2,ls2}.*`, `norm.*`); the torch.hub checkpoints use the same names (their
//! extra `mask_token` is ignored). Any dtype, computed in f32. The size is read from the shapes
//! (width, depth, MLP width, patch size, position grid); the head count, which the shapes do not
//! give, is the `num_heads` entry of the file's metadata if it has one, else width / 64 (every
//! DINOv2 ViT: S 384/6, B 768/12, L 1024/16). Not supported, with an error saying so: ViT-g
//! (SwiGLU MLP), the register variants, HF transformers' `Dinov2Model` names.
//!
//! Why not `candle_transformers::models::dinov2`: its blocks are private and its forward differs
//! from the reference in ways that exceed the parity tolerance — tanh-approximated GELU instead
//! of erf, LayerNorm eps 1e-5 instead of 1e-6, a required 1000-class `head` that DINOv2 backbone
//! checkpoints do not have, a position embedding fixed at 518 and resized by nearest neighbour
//! instead of bicubic. This is the same network in candle ops, written to match the reference.

use super::fid::{fid, Features};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use image::{DynamicImage, RgbImage};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Side the images are resized to (dgm-eval's `Resize((224, 224))`).
pub const INPUT_SIZE: usize = 224;
/// ImageNet mean and std of `Normalize` (f32, as torchvision applies them to an f32 tensor).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Images per forward pass unless [`Dinov2Features::batch_size`] is changed.
pub const DEFAULT_BATCH: usize = 16;
/// The torch.hub models' `interpolate_offset`.
const INTERPOLATE_OFFSET: f64 = 0.1;
const LN_EPS: f64 = 1e-6;

/// FD-DINOv2: the Fréchet distance between two sets of DINOv2 features (dgm-eval's
/// `compute_FD_with_reps`, which is [`fid`]). Needs at least two images on each side.
pub fn fd_dinov2(a: &Features, b: &Features) -> Result<f64> {
    fid(a, b)
}

// ---------------------------------------------------------------------------------------------
// Preprocessing

/// Pillow's bicubic kernel (a = −0.5).
fn pil_bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `PRECISION_BITS` for 8-bit images.
const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

/// One pass of Pillow's resampling (`precompute_coeffs` + `normalize_coeffs_8bpc`): for each
/// output index, the first input index and the fixed-point weights.
fn pil_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let mut k: Vec<f64> = (0..xmax).map(|x| pil_bicubic(((x + xmin) as f64 - center + 0.5) * ss)).collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            let one = (1u32 << PIL_PRECISION_BITS) as f64;
            let k = k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect();
            (xmin as usize, k)
        })
        .collect()
}

fn pil_clip8(v: i32) -> u8 {
    (v >> PIL_PRECISION_BITS).clamp(0, 255) as u8
}

/// `img.resize((w, h), Image.BICUBIC)` of Pillow on an RGB image, bit for bit (what
/// torchvision's `Resize(..., BICUBIC)` does to a PIL image): horizontal pass then vertical,
/// each rounded and clipped to uint8; a pass whose size does not change is skipped.
pub fn resize_bicubic_like_pil(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (w, h) = (w as usize, h as usize);
    let mut src: Vec<u8> = img.as_raw().clone();
    let round = 1i32 << (PIL_PRECISION_BITS - 1);
    let mut cur_w = iw;
    if w != iw {
        let coeffs = pil_coeffs(iw, w);
        let mut out = vec![0u8; w * ih * 3];
        out.par_chunks_mut(w * 3).zip(src.par_chunks(iw * 3)).for_each(|(orow, irow)| {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss = round;
                    for (x, kw) in k.iter().enumerate() {
                        ss += irow[(xmin + x) * 3 + c] as i32 * kw;
                    }
                    orow[xx * 3 + c] = pil_clip8(ss);
                }
            }
        });
        src = out;
        cur_w = w;
    }
    if h != ih {
        let coeffs = pil_coeffs(ih, h);
        let mut out = vec![0u8; cur_w * h * 3];
        out.par_chunks_mut(cur_w * 3).zip(coeffs.par_iter()).for_each(|(orow, (ymin, k))| {
            for (i, o) in orow.iter_mut().enumerate() {
                let mut ss = round;
                for (y, kw) in k.iter().enumerate() {
                    ss += src[(ymin + y) * cur_w * 3 + i] as i32 * kw;
                }
                *o = pil_clip8(ss);
            }
        });
        src = out;
    }
    RgbImage::from_raw(w as u32, h as u32, src).expect("buffer of the resized size")
}

/// One image as the network's input, as dgm-eval prepares it: RGB, resized to 224×224 like
/// Pillow's bicubic, /255, ImageNet-normalised → [3·224·224] (channel planes).
pub fn image_input(img: &DynamicImage) -> Vec<f32> {
    let rgb = img.to_rgb8();
    let rgb = if rgb.width() as usize == INPUT_SIZE && rgb.height() as usize == INPUT_SIZE {
        rgb
    } else {
        resize_bicubic_like_pil(&rgb, INPUT_SIZE as u32, INPUT_SIZE as u32)
    };
    let n = INPUT_SIZE * INPUT_SIZE;
    let mut planes = vec![0f32; 3 * n];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            planes[c * n + i] = (p[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    planes
}

// ---------------------------------------------------------------------------------------------
// Position embedding

/// PyTorch's `upsample_bicubic2d` (CPU, `align_corners=False`) indices and weights along one
/// axis, for an explicit `scale_factor` (the source step is 1/scale_factor, not in/out).
fn torch_cubic_taps(in_size: usize, out_size: usize, scale_factor: f64) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let conv1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let conv2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let step = (1.0 / scale_factor) as f32;
    (0..out_size)
        .map(|o| {
            let real = step * (o as f32 + 0.5) - 0.5;
            let idx = (real.floor() as i64).min(in_size as i64 - 1);
            let t = (real - idx as f32).clamp(0.0, 1.0);
            let w = [conv2(t + 1.0), conv1(t), conv1(1.0 - t), conv2(2.0 - t)];
            let ids = std::array::from_fn(|j| (idx - 1 + j as i64).clamp(0, in_size as i64 - 1) as usize);
            (ids, w)
        })
        .collect()
}

/// The patch position embedding `[m·m, dim]` (row-major grid) resized to `[g·g, dim]` as the
/// torch.hub DINOv2's `interpolate_pos_encoding` does for a g·14 square input: bicubic
/// `F.interpolate` with `scale_factor = (g + 0.1) / m`, no antialias (f32, the same order of
/// operations as PyTorch's CPU kernel: a sum over rows of sums over columns).
pub fn resize_pos_embed_like_hub(grid: &[f32], m: usize, dim: usize, g: usize) -> Vec<f32> {
    let taps = torch_cubic_taps(m, g, (g as f64 + INTERPOLATE_OFFSET) / m as f64);
    let mut out = vec![0f32; g * g * dim];
    for (oy, (iy, wy)) in taps.iter().enumerate() {
        for (ox, (ix, wx)) in taps.iter().enumerate() {
            let o = &mut out[(oy * g + ox) * dim..(oy * g + ox + 1) * dim];
            for (d, v) in o.iter_mut().enumerate() {
                let mut acc = 0f32;
                for (jy, &ry) in iy.iter().enumerate() {
                    let mut row = 0f32;
                    for (jx, &rx) in ix.iter().enumerate() {
                        row += grid[(ry * m + rx) * dim + d] * wx[jx];
                    }
                    acc += row * wy[jy];
                }
                *v = acc;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Network

/// The size of a DINOv2 ViT, as read from its weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dinov2Config {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Hidden width of the MLPs (4 × `embed_dim` for ViT-S/B/L).
    pub mlp_hidden: usize,
    pub patch_size: usize,
    /// Side of the position-embedding grid in the file (37 for the released 518×518
    /// checkpoints; 16 if already for 224×224).
    pub pos_grid: usize,
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// Over the last dimension, two-pass (mean, then the variance of the centred values), as
    /// PyTorch's CPU LayerNorm is accurate to.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + LN_EPS)?.sqrt()?)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// `x·Wᵀ + b` with W stored transposed ([in, out]); x is [rows, in].
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ls1: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Tensor,
}

/// The DINOv2 ViT backbone for 224×224 inputs, returning the normalised class token.
pub struct Dinov2 {
    config: Dinov2Config,
    /// Patch embedding as a matrix [3·p·p, dim] and its bias.
    patch: Linear,
    cls_token: Tensor,
    /// Position embedding for 224×224, [1 + g·g, dim].
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Dinov2 {
    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    fn attention(&self, blk: &Block, x: &Tensor, b: usize, n: usize) -> candle_core::Result<Tensor> {
        let (dim, heads) = (self.config.embed_dim, self.config.num_heads);
        let hd = dim / heads;
        let qkv = blk.qkv.forward(x)?.reshape((b, n, 3, heads, hd))?.permute([2, 0, 3, 1, 4])?;
        let q = (qkv.i(0)?.contiguous()? * (1.0 / (hd as f64).sqrt()))?;
        let k = qkv.i(1)?.contiguous()?;
        let v = qkv.i(2)?.contiguous()?;
        let attn = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let o = attn.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b * n, dim))?;
        blk.proj.forward(&o)
    }

    /// Features of a batch of prepared inputs [b, 3, 224, 224] → [b, dim]: the class token
    /// after the final norm.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != 3 || h != INPUT_SIZE || w != INPUT_SIZE {
            candle_core::bail!("DINOv2 input must be [b, 3, {INPUT_SIZE}, {INPUT_SIZE}], got {:?}", x.dims());
        }
        let (p, dim) = (self.config.patch_size, self.config.embed_dim);
        let g = INPUT_SIZE / p;
        // The stride-p convolution as one matrix product over the patches (c, ky, kx order).
        let patches = x.reshape(vec![b, 3, g, p, g, p])?.permute([0, 2, 4, 1, 3, 5])?.contiguous()?.reshape((b * g * g, 3 * p * p))?;
        let tokens = self.patch.forward(&patches)?.reshape((b, g * g, dim))?;
        let n = g * g + 1;
        let cls = self.cls_token.broadcast_as((b, 1, dim))?;
        let mut x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed)?.reshape((b * n, dim))?;
        for blk in &self.blocks {
            let a = self.attention(blk, &blk.norm1.forward(&x)?, b, n)?;
            x = (x + a.broadcast_mul(&blk.ls1)?)?;
            let m = blk.fc2.forward(&blk.fc1.forward(&blk.norm2.forward(&x)?)?.gelu_erf()?)?;
            x = (x + m.broadcast_mul(&blk.ls2)?)?;
        }
        // The norm is per token: normalising the class token alone is the same.
        let cls = x.reshape((b, n, dim))?.i((.., 0))?.contiguous()?;
        self.norm.forward(&cls)
    }
}

/// The tensors of a weights file, with errors that name it.
struct WeightFile<'a> {
    path: &'a Path,
    tensors: HashMap<String, Tensor>,
    device: &'a Device,
}

impl WeightFile<'_> {
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn dims(&self, name: &str) -> Result<&[usize]> {
        match self.tensors.get(name) {
            Some(t) => Ok(t.dims()),
            None => bail!("{}: not DINOv2 ViT weights: no tensor `{name}`", self.path.display()),
        }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let dims = self.dims(name)?;
        if dims != shape {
            bail!("{}: tensor `{name}` has shape {dims:?}, expected {shape:?} for this DINOv2 ViT", self.path.display());
        }
        let t = &self.tensors[name];
        Ok(t.to_dtype(DType::F32)?.to_device(self.device)?)
    }

    fn layer_norm(&self, prefix: &str, dim: usize) -> Result<LayerNorm> {
        Ok(LayerNorm { weight: self.get(&format!("{prefix}.weight"), &[dim])?, bias: self.get(&format!("{prefix}.bias"), &[dim])? })
    }

    fn linear(&self, prefix: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let w = self.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        Ok(Linear { weight_t: w.t()?.contiguous()?, bias: self.get(&format!("{prefix}.bias"), &[out_dim])? })
    }
}

/// The DINOv2 feature extractor of FD-DINOv2: a loaded network and its batch size.
pub struct Dinov2Features {
    pub model: Dinov2,
    /// Images per forward pass ([`DEFAULT_BATCH`]).
    pub batch_size: usize,
    /// The weights file it was loaded from.
    pub weights: PathBuf,
    device: Device,
}

impl Dinov2Features {
    /// Loads a DINOv2 ViT from a `.safetensors` (timm / torch.hub key names; see the module
    /// documentation) onto `device`; its size is read from the weights.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with_heads(path, device, None)
    }

    /// As [`Self::load`], with the number of attention heads given (None: the file's
    /// `num_heads` metadata, else width / 64).
    pub fn load_with_heads(path: &Path, device: &Device, num_heads: Option<usize>) -> Result<Self> {
        if !path.exists() {
            bail!(
                "the DINOv2 weights {} do not exist: pass a .safetensors of timm's vit_large_patch14_dinov2 (FD-DINOv2's ViT-L/14; \
                 vit_small/vit_base also load), e.g. model.safetensors of timm/vit_large_patch14_dinov2.lvd142m on the Hugging Face hub",
                path.display()
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading the DINOv2 weights {}", path.display()))?;
        let metadata = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow!("{}: not a readable safetensors file ({e})", path.display()))?
            .1
            .metadata()
            .clone()
            .unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
        drop(bytes);
        let wf = WeightFile { path, tensors, device };
        let model = build(&wf, num_heads, &metadata)?;
        Ok(Self { model, batch_size: DEFAULT_BATCH, weights: path.to_path_buf(), device: device.clone() })
    }

    pub fn config(&self) -> &Dinov2Config {
        self.model.config()
    }

    /// Length of a feature vector (the network's width: 384 for ViT-S, 1024 for ViT-L).
    pub fn dim(&self) -> usize {
        self.model.config().embed_dim
    }

    /// Features of prepared inputs ([`image_input`], [3·224·224] each), in batches.
    pub fn features_of_inputs(&self, inputs: &[Vec<f32>]) -> Result<Features> {
        let dim = self.dim();
        let mut data = Vec::with_capacity(inputs.len() * dim);
        for chunk in inputs.chunks(self.batch_size.max(1)) {
            let mut flat = Vec::with_capacity(chunk.len() * 3 * INPUT_SIZE * INPUT_SIZE);
            for x in chunk {
                if x.len() != 3 * INPUT_SIZE * INPUT_SIZE {
                    bail!("DINOv2 input of {} values, expected 3·{INPUT_SIZE}·{INPUT_SIZE}", x.len());
                }
                flat.extend_from_slice(x);
            }
            let x = Tensor::from_vec(flat, (chunk.len(), 3, INPUT_SIZE, INPUT_SIZE), &self.device)?;
            data.extend(self.model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Features::new(inputs.len(), dim, data)
    }

    /// Features of images, in order (preprocessed as dgm-eval does, in parallel, then batched).
    pub fn features_of_images(&self, images: &[DynamicImage]) -> Result<Features> {
        let dim = self.dim();
        let mut data = Vec::with_capacity(images.len() * dim);
        for chunk in images.chunks(self.batch_size.max(1)) {
            let inputs: Vec<Vec<f32>> = chunk.par_iter().map(image_input).collect();
            data.extend(self.features_of_inputs(&inputs)?.data);
        }
        Features::new(images.len(), dim, data)
    }
}

fn build(wf: &WeightFile, num_heads: Option<usize>, metadata: &HashMap<String, String>) -> Result<Dinov2> {
    let path = wf.path.display();
    if wf.has("embeddings.cls_token") {
        bail!("{path}: a Hugging Face transformers Dinov2Model checkpoint; pass timm's (vit_*_patch14_dinov2) or torch.hub's state_dict names");
    }
    if wf.has("reg_token") || wf.has("register_tokens") {
        bail!("{path}: a DINOv2 with registers; FD-DINOv2 uses the plain DINOv2 (vit_*_patch14_dinov2)");
    }
    if wf.has("blocks.0.mlp.w12.weight") {
        bail!("{path}: a DINOv2 ViT-g/14 (SwiGLU MLP), which is not supported; use ViT-S/B/L/14");
    }
    if wf.has("blocks.0.0.norm1.weight") {
        bail!("{path}: chunked blocks (blocks.<chunk>.<i>.*); save the state_dict of a model built with block_chunks=0");
    }
    let cls_dims = wf.dims("cls_token")?;
    let [1, 1, dim] = *cls_dims else {
        bail!("{path}: `cls_token` has shape {cls_dims:?}, expected [1, 1, dim]");
    };
    let pd = wf.dims("patch_embed.proj.weight")?;
    let p = match *pd {
        [d, 3, p, q] if d == dim && p == q && p > 0 && INPUT_SIZE.is_multiple_of(p) => p,
        _ => bail!("{path}: `patch_embed.proj.weight` has shape {pd:?}, expected [{dim}, 3, p, p] with p dividing {INPUT_SIZE}"),
    };
    let g = INPUT_SIZE / p;
    let pos_dims = wf.dims("pos_embed")?;
    let n_pos = match *pos_dims {
        [1, n, d] if d == dim && n > 1 => n - 1,
        _ => bail!("{path}: `pos_embed` has shape {pos_dims:?}, expected [1, 1 + m·m, {dim}]"),
    };
    let m = (n_pos as f64).sqrt().round() as usize;
    if m * m != n_pos {
        bail!("{path}: `pos_embed` has {n_pos} patch positions, not a square grid");
    }
    let depth = (0..).take_while(|i| wf.has(&format!("blocks.{i}.norm1.weight"))).count();
    if depth == 0 {
        bail!("{path}: not DINOv2 ViT weights: no tensor `blocks.0.norm1.weight`");
    }
    let fc1 = wf.dims("blocks.0.mlp.fc1.weight")?;
    let mlp_hidden = fc1.first().copied().unwrap_or(0);
    let fc2 = wf.dims("blocks.0.mlp.fc2.weight")?;
    if fc2.get(1).is_some_and(|&h| 2 * h == mlp_hidden) {
        bail!("{path}: a SwiGLU MLP (DINOv2 ViT-g/14), which is not supported; use ViT-S/B/L/14");
    }
    let heads = match num_heads {
        Some(h) => h,
        None => match metadata.get("num_heads") {
            Some(s) => s.trim().parse().map_err(|_| anyhow!("{path}: metadata num_heads = {s:?} is not a number"))?,
            None => dim / 64,
        },
    };
    if heads == 0 || !dim.is_multiple_of(heads) {
        bail!("{path}: width {dim} is not a multiple of {heads} heads (64-wide heads are assumed unless the file's metadata has num_heads)");
    }
    let config = Dinov2Config { embed_dim: dim, depth, num_heads: heads, mlp_hidden, patch_size: p, pos_grid: m };

    let pw = wf.get("patch_embed.proj.weight", &[dim, 3, p, p])?.reshape((dim, 3 * p * p))?;
    let patch = Linear { weight_t: pw.t()?.contiguous()?, bias: wf.get("patch_embed.proj.bias", &[dim])? };
    let pos = wf.get("pos_embed", &[1, n_pos + 1, dim])?;
    let pos_embed = if m == g {
        pos.reshape((n_pos + 1, dim))?
    } else {
        let grid = pos.i((0, 1..))?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let resized = Tensor::from_vec(resize_pos_embed_like_hub(&grid, m, dim, g), (g * g, dim), wf.device)?;
        Tensor::cat(&[&pos.i((0, ..1))?, &resized], 0)?
    };
    let blocks = (0..depth)
        .map(|i| {
            let b = format!("blocks.{i}");
            Ok(Block {
                norm1: wf.layer_norm(&format!("{b}.norm1"), dim)?,
                qkv: wf.linear(&format!("{b}.attn.qkv"), dim, 3 * dim)?,
                proj: wf.linear(&format!("{b}.attn.proj"), dim, dim)?,
                ls1: wf.get(&format!("{b}.ls1.gamma"), &[dim])?,
                norm2: wf.layer_norm(&format!("{b}.norm2"), dim)?,
                fc1: wf.linear(&format!("{b}.mlp.fc1"), dim, mlp_hidden)?,
                fc2: wf.linear(&format!("{b}.mlp.fc2"), mlp_hidden, dim)?,
                ls2: wf.get(&format!("{b}.ls2.gamma"), &[dim])?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dinov2 {
        patch,
        cls_token: wf.get("cls_token", &[1, 1, dim])?.reshape((1, 1, dim))?,
        pos_embed: pos_embed.contiguous()?,
        blocks,
        norm: wf.layer_norm("norm", dim)?,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_coefficients_sum_to_one_and_identity_is_exact() {
        for (i, o) in [(256, 224), (97, 224), (224, 224), (1000, 224)] {
            for (_, k) in pil_coeffs(i, o) {
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!((s - (1 << PIL_PRECISION_BITS)).abs() <= k.len() as i64, "{i}->{o}: {s}");
            }
        }
        let img = RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 20) as u8, (y * 30) as u8, (x * y) as u8]));
        assert_eq!(resize_bicubic_like_pil(&img, 9, 7), img);
    }

    #[test]
    fn pos_embed_resize_keeps_a_constant() {
        let (m, g, dim) = (37, 16, 2);
        let grid: Vec<f32> = (0..m * m * dim).map(|i| if i % 2 == 0 { 1.5 } else { -2.0 }).collect();
        let out = resize_pos_embed_like_hub(&grid, m, dim, g);
        assert_eq!(out.len(), g * g * dim);
        for (i, v) in out.iter().enumerate() {
            let want = if i % 2 == 0 { 1.5 } else { -2.0 };
            assert!((v - want).abs() < 1e-5, "{i}: {v}");
        }
    }
}
