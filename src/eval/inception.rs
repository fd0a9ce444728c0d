//! The FID Inception network of pytorch-fid: the TensorFlow-ported Inception v3
//! (`pt_inception-2015-12-05-6726825d.pth`) with pytorch-fid's FID-specific blocks
//! (`FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1`, `FIDInceptionE_2`: average pools that
//! ignore the zero padding, and a max pool in the last block), cut after the global average pool
//! so it gives the 2048-d features FID and KID are computed from. Also its weights: the `.pth`
//! loader with the SHA-256 check, and deterministic synthetic weights for tests and benchmarks.
//!
//! Inference only, on the CPU, in f32: batch norm (eps 0.001) is folded into the convolutions at
//! load time, every convolution is im2col + one GEMM over the whole batch (1×1 convolutions are
//! the GEMM alone), and the 1×1 convolutions of a block that read the same input are one GEMM.

use crate::ops::gemm::{matmul, Mat};
use anyhow::{bail, Context};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Side the images are resized to (bilinear, as pytorch-fid's `F.interpolate`).
pub const INPUT_SIZE: usize = 299;
/// Length of a feature vector (the pool3 features).
pub const FEATURES: usize = 2048;
/// The standard weights' file name and SHA-256 (its first 8 hex digits are the name's suffix,
/// torch.hub's convention).
pub const STANDARD_WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
pub const STANDARD_WEIGHTS_SHA256: &str = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2";
pub const STANDARD_WEIGHTS_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

/// pytorch-fid's `InceptionV3(resize_input, normalize_input)` options.
#[derive(Clone, Debug)]
pub struct InceptionConfig {
    /// Resize the input to 299×299 (bilinear, align_corners false, no antialiasing).
    pub resize_input: bool,
    /// Map the input from [0, 1] to [−1, 1].
    pub normalize_input: bool,
}

impl Default for InceptionConfig {
    fn default() -> Self {
        Self { resize_input: true, normalize_input: true }
    }
}

/// A batch of feature maps [B,C,H,W], contiguous.
#[derive(Clone)]
pub(crate) struct Maps {
    data: Vec<f32>,
    b: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl Maps {
    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Channels [c0, c0+n) of every image.
    fn channels(&self, c0: usize, n: usize) -> Maps {
        let p = self.plane();
        let mut data = Vec::with_capacity(self.b * n * p);
        for b in 0..self.b {
            data.extend_from_slice(&self.data[(b * self.c + c0) * p..(b * self.c + c0 + n) * p]);
        }
        Maps { data, b: self.b, c: n, h: self.h, w: self.w }
    }

    /// Concatenation along the channels (all of the same batch and size).
    fn cat(parts: &[&Maps]) -> Maps {
        let (b, h, w) = (parts[0].b, parts[0].h, parts[0].w);
        let c = parts.iter().map(|m| m.c).sum();
        let mut data = Vec::with_capacity(b * c * h * w);
        for i in 0..b {
            for m in parts {
                let p = m.plane();
                data.extend_from_slice(&m.data[i * m.c * p..(i + 1) * m.c * p]);
            }
        }
        Maps { data, b, c, h, w }
    }
}

/// torchvision's `BasicConv2d` (convolution without bias, batch norm eps 0.001, ReLU) with the
/// batch norm folded into the weights and a bias: relu(W'·x + b').
#[derive(Clone)]
struct ConvBn {
    /// [Cout, Cin·kh·kw]
    w: Vec<f32>,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    ph: usize,
    pw: usize,
}

const BN_EPS: f64 = 1e-3;

/// Largest im2col matrix, in floats (64 MiB); larger batches are split.
const MAX_COLS: usize = 16 << 20;

impl ConvBn {
    /// `name.conv.weight` [Cout,Cin,kh,kw] and `name.bn.{weight,bias,running_mean,running_var}`.
    fn new(cin: usize, cout: usize, (kh, kw): (usize, usize), stride: usize, (ph, pw): (usize, usize), vb: VarBuilder) -> Result<Self> {
        let w = vb.pp("conv").get((cout, cin, kh, kw), "weight")?.to_dtype(DType::F64)?.flatten_from(1)?.to_vec2::<f64>()?;
        let bn = vb.pp("bn");
        let v = |n: &str| bn.get(cout, n)?.to_dtype(DType::F64)?.to_vec1::<f64>();
        let (gamma, beta, mean, var) = (v("weight")?, v("bias")?, v("running_mean")?, v("running_var")?);
        let mut wf = Vec::with_capacity(cout * cin * kh * kw);
        let mut bias = Vec::with_capacity(cout);
        for o in 0..cout {
            let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
            wf.extend(w[o].iter().map(|x| (x * scale) as f32));
            bias.push((beta[o] - mean[o] * scale) as f32);
        }
        Ok(Self { w: wf, bias, cin, cout, kh, kw, stride, ph, pw })
    }

    fn square(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(cin, cout, (k, k), stride, (pad, pad), vb)
    }

    /// Several 1×1 convolutions of the same input as one (outputs stacked in order).
    fn stack(parts: &[ConvBn]) -> Self {
        let mut out = parts[0].clone();
        for p in &parts[1..] {
            debug_assert!(p.cin == out.cin && p.kh == 1 && p.kw == 1 && p.stride == 1);
            out.w.extend_from_slice(&p.w);
            out.bias.extend_from_slice(&p.bias);
            out.cout += p.cout;
        }
        out
    }

    fn forward(&self, x: &Maps) -> Maps {
        assert_eq!(x.c, self.cin, "inception: channel mismatch");
        let s = self.stride;
        let ho = (x.h + 2 * self.ph - self.kh) / s + 1;
        let wo = (x.w + 2 * self.pw - self.kw) / s + 1;
        let (po, pi) = (ho * wo, x.plane());
        let k = self.cin * self.kh * self.kw;
        let mut out = vec![0f32; x.b * self.cout * po];
        let per_chunk = (MAX_COLS / (k * po).max(1)).clamp(1, x.b);
        let pointwise = self.kh == 1 && self.kw == 1 && s == 1 && self.ph == 0 && self.pw == 0;
        let mut cols = Vec::new();
        let mut res = Vec::new();
        for b0 in (0..x.b).step_by(per_chunk) {
            let nb = per_chunk.min(x.b - b0);
            let n = nb * po;
            cols.clear();
            cols.resize(k * n, 0f32);
            if pointwise {
                // [B,C,P] → [C, B·P]
                cols.par_chunks_mut(n).enumerate().for_each(|(c, row)| {
                    for i in 0..nb {
                        row[i * po..(i + 1) * po].copy_from_slice(&x.data[((b0 + i) * x.c + c) * pi..][..pi]);
                    }
                });
            } else {
                let (kh, kw, ph, pw) = (self.kh, self.kw, self.ph, self.pw);
                cols.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
                    let (c, ki, kj) = (r / (kh * kw), r / kw % kh, r % kw);
                    // Output columns ox whose input column ox·s + kj − pw is inside the image.
                    let x_lo = pw.saturating_sub(kj).div_ceil(s).min(wo);
                    let x_hi = (x.w + pw).saturating_sub(kj).div_ceil(s).min(wo).max(x_lo);
                    for i in 0..nb {
                        let plane = &x.data[((b0 + i) * x.c + c) * pi..][..pi];
                        for oy in 0..ho {
                            let dst = &mut row[i * po + oy * wo..][..wo];
                            let iy = (oy * s + ki) as isize - ph as isize;
                            if iy < 0 || iy >= x.h as isize || x_lo == x_hi {
                                continue; // zeros already
                            }
                            let src = &plane[iy as usize * x.w..][..x.w];
                            let ix0 = x_lo * s + kj - pw;
                            if s == 1 {
                                dst[x_lo..x_hi].copy_from_slice(&src[ix0..ix0 + x_hi - x_lo]);
                            } else {
                                for (d, v) in dst[x_lo..x_hi].iter_mut().zip(src[ix0..].iter().step_by(s)) {
                                    *d = *v;
                                }
                            }
                        }
                    }
                });
            }
            res.clear();
            res.resize(self.cout * n, 0f32);
            matmul(self.cout, n, k, (&mut res, n), false, Mat::rows(&self.w, k), Mat::rows(&cols, n));
            // [Cout, B·P] → [B, Cout, P] with bias and ReLU.
            let dst = &mut out[b0 * self.cout * po..(b0 + nb) * self.cout * po];
            dst.par_chunks_mut(po).enumerate().for_each(|(j, plane)| {
                let (i, o) = (j / self.cout, j % self.cout);
                let bias = self.bias[o];
                for (d, v) in plane.iter_mut().zip(&res[o * n + i * po..][..po]) {
                    *d = (v + bias).max(0.0);
                }
            });
        }
        Maps { data: out, b: x.b, c: self.cout, h: ho, w: wo }
    }
}

/// 3×3 pooling of every plane: max or average, with the given stride and padding. Padded
/// positions are left out of both (max ignores them; the average divides by the number of
/// positions inside the image: `count_include_pad=False`).
fn pool3(x: &Maps, stride: usize, pad: usize, max: bool) -> Maps {
    let ho = (x.h + 2 * pad - 3) / stride + 1;
    let wo = (x.w + 2 * pad - 3) / stride + 1;
    let mut data = vec![0f32; x.b * x.c * ho * wo];
    data.par_chunks_mut(ho * wo).zip(x.data.par_chunks(x.plane())).for_each(|(out, src)| {
        for oy in 0..ho {
            let y0 = (oy * stride) as isize - pad as isize;
            let (ya, yb) = (y0.max(0) as usize, ((y0 + 3) as usize).min(x.h));
            for ox in 0..wo {
                let x0 = (ox * stride) as isize - pad as isize;
                let (xa, xb) = (x0.max(0) as usize, ((x0 + 3) as usize).min(x.w));
                let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                for yy in ya..yb {
                    for v in &src[yy * x.w + xa..yy * x.w + xb] {
                        acc = if max { acc.max(*v) } else { acc + v };
                    }
                }
                out[oy * wo + ox] = if max { acc } else { acc / ((yb - ya) * (xb - xa)) as f32 };
            }
        }
    });
    Maps { data, b: x.b, c: x.c, h: ho, w: wo }
}

/// Bilinear resize of one [C,H,W] image as PyTorch's `F.interpolate(mode='bilinear',
/// align_corners=False)` without antialiasing.
pub(crate) fn resize_bilinear(src: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let s = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(n_in - 1);
                let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
                let l1 = s - i0 as f32;
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, oh), taps(w, ow));
    let mut out = vec![0f32; c * oh * ow];
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for (oy, &(y0, y1, hy0, hy1)) in ty.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in tx.iter().enumerate() {
                let v = hy0 * (wx0 * plane[y0 * w + x0] + wx1 * plane[y0 * w + x1]) + hy1 * (wx0 * plane[y1 * w + x0] + wx1 * plane[y1 * w + x1]);
                out[(ch * oh + oy) * ow + ox] = v;
            }
        }
    }
    out
}

/// `FIDInceptionA` (Mixed_5b/c/d): 1×1, 5×5, double 3×3 and average-pool branches.
struct BlockA {
    pointwise: ConvBn, // branch1x1 (64) | branch5x5_1 (48) | branch3x3dbl_1 (64)
    b5x5_2: ConvBn,
    b3x3dbl_2: ConvBn,
    b3x3dbl_3: ConvBn,
    pool: ConvBn,
}

impl BlockA {
    fn new(cin: usize, pool_features: usize, vb: VarBuilder) -> Result<Self> {
        let c1 = |n: &str, cout| ConvBn::square(cin, cout, 1, 1, 0, vb.pp(n));
        Ok(Self {
            pointwise: ConvBn::stack(&[c1("branch1x1", 64)?, c1("branch5x5_1", 48)?, c1("branch3x3dbl_1", 64)?]),
            b5x5_2: ConvBn::square(48, 64, 5, 1, 2, vb.pp("branch5x5_2"))?,
            b3x3dbl_2: ConvBn::square(64, 96, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
            b3x3dbl_3: ConvBn::square(96, 96, 3, 1, 1, vb.pp("branch3x3dbl_3"))?,
            pool: c1("branch_pool", pool_features)?,
        })
    }

    fn forward(&self, x: &Maps) -> Maps {
        let p = self.pointwise.forward(x);
        let b1 = p.channels(0, 64);
        let b5 = self.b5x5_2.forward(&p.channels(64, 48));
        let b3 = self.b3x3dbl_3.forward(&self.b3x3dbl_2.forward(&p.channels(112, 64)));
        let bp = self.pool.forward(&pool3(x, 1, 1, false));
        Maps::cat(&[&b1, &b5, &b3, &bp])
    }
}

/// torchvision's `InceptionB` (Mixed_6a): strided 3×3, double 3×3 and max-pool branches.
struct BlockB {
    b3x3: ConvBn,
    b3x3dbl_1: ConvBn,
    b3x3dbl_2: ConvBn,
    b3x3dbl_3: ConvBn,
}

impl BlockB {
    fn new(cin: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            b3x3: ConvBn::square(cin, 384, 3, 2, 0, vb.pp("branch3x3"))?,
            b3x3dbl_1: ConvBn::square(cin, 64, 1, 1, 0, vb.pp("branch3x3dbl_1"))?,
            b3x3dbl_2: ConvBn::square(64, 96, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
            b3x3dbl_3: ConvBn::square(96, 96, 3, 2, 0, vb.pp("branch3x3dbl_3"))?,
        })
    }

    fn forward(&self, x: &Maps) -> Maps {
        let b3 = self.b3x3.forward(x);
        let bd = self.b3x3dbl_3.forward(&self.b3x3dbl_2.forward(&self.b3x3dbl_1.forward(x)));
        let bp = pool3(x, 2, 0, true);
        Maps::cat(&[&b3, &bd, &bp])
    }
}

/// `FIDInceptionC` (Mixed_6b–e): 1×1, factorised 7×7, double factorised 7×7, average pool.
struct BlockC {
    c7: usize,
    pointwise: ConvBn, // branch1x1 (192) | branch7x7_1 (c7) | branch7x7dbl_1 (c7)
    b7x7: [ConvBn; 2],
    b7x7dbl: [ConvBn; 4],
    pool: ConvBn,
}

impl BlockC {
    fn new(cin: usize, c7: usize, vb: VarBuilder) -> Result<Self> {
        let c1 = |n: &str, cout| ConvBn::square(cin, cout, 1, 1, 0, vb.pp(n));
        let row = |n: &str, ci, co| ConvBn::new(ci, co, (1, 7), 1, (0, 3), vb.pp(n));
        let col = |n: &str, ci, co| ConvBn::new(ci, co, (7, 1), 1, (3, 0), vb.pp(n));
        Ok(Self {
            c7,
            pointwise: ConvBn::stack(&[c1("branch1x1", 192)?, c1("branch7x7_1", c7)?, c1("branch7x7dbl_1", c7)?]),
            b7x7: [row("branch7x7_2", c7, c7)?, col("branch7x7_3", c7, 192)?],
            b7x7dbl: [
                col("branch7x7dbl_2", c7, c7)?,
                row("branch7x7dbl_3", c7, c7)?,
                col("branch7x7dbl_4", c7, c7)?,
                row("branch7x7dbl_5", c7, 192)?,
            ],
            pool: c1("branch_pool", 192)?,
        })
    }

    fn forward(&self, x: &Maps) -> Maps {
        let p = self.pointwise.forward(x);
        let b1 = p.channels(0, 192);
        let b7 = self.b7x7.iter().fold(p.channels(192, self.c7), |t, c| c.forward(&t));
        let bd = self.b7x7dbl.iter().fold(p.channels(192 + self.c7, self.c7), |t, c| c.forward(&t));
        let bp = self.pool.forward(&pool3(x, 1, 1, false));
        Maps::cat(&[&b1, &b7, &bd, &bp])
    }
}

/// torchvision's `InceptionD` (Mixed_7a): strided 3×3, factorised 7×7 then strided 3×3, max pool.
struct BlockD {
    pointwise: ConvBn, // branch3x3_1 (192) | branch7x7x3_1 (192)
    b3x3_2: ConvBn,
    b7x7x3: [ConvBn; 3],
}

impl BlockD {
    fn new(cin: usize, vb: VarBuilder) -> Result<Self> {
        let c1 = |n: &str| ConvBn::square(cin, 192, 1, 1, 0, vb.pp(n));
        Ok(Self {
            pointwise: ConvBn::stack(&[c1("branch3x3_1")?, c1("branch7x7x3_1")?]),
            b3x3_2: ConvBn::square(192, 320, 3, 2, 0, vb.pp("branch3x3_2"))?,
            b7x7x3: [
                ConvBn::new(192, 192, (1, 7), 1, (0, 3), vb.pp("branch7x7x3_2"))?,
                ConvBn::new(192, 192, (7, 1), 1, (3, 0), vb.pp("branch7x7x3_3"))?,
                ConvBn::square(192, 192, 3, 2, 0, vb.pp("branch7x7x3_4"))?,
            ],
        })
    }

    fn forward(&self, x: &Maps) -> Maps {
        let p = self.pointwise.forward(x);
        let b3 = self.b3x3_2.forward(&p.channels(0, 192));
        let b7 = self.b7x7x3.iter().fold(p.channels(192, 192), |t, c| c.forward(&t));
        let bp = pool3(x, 2, 0, true);
        Maps::cat(&[&b3, &b7, &bp])
    }
}

/// `FIDInceptionE_1` / `FIDInceptionE_2` (Mixed_7b / 7c): 1×1, split 3×3, split double 3×3,
/// and a pool branch (average without padding in 7b, max in 7c).
struct BlockE {
    pointwise: ConvBn, // branch1x1 (320) | branch3x3_1 (384) | branch3x3dbl_1 (448)
    b3x3_2: [ConvBn; 2],
    b3x3dbl_2: ConvBn,
    b3x3dbl_3: [ConvBn; 2],
    pool: ConvBn,
    max_pool: bool,
}

impl BlockE {
    fn new(cin: usize, max_pool: bool, vb: VarBuilder) -> Result<Self> {
        let c1 = |n: &str, cout| ConvBn::square(cin, cout, 1, 1, 0, vb.pp(n));
        let split = |a: &str, b: &str, ci| -> Result<[ConvBn; 2]> {
            Ok([ConvBn::new(ci, 384, (1, 3), 1, (0, 1), vb.pp(a))?, ConvBn::new(ci, 384, (3, 1), 1, (1, 0), vb.pp(b))?])
        };
        Ok(Self {
            pointwise: ConvBn::stack(&[c1("branch1x1", 320)?, c1("branch3x3_1", 384)?, c1("branch3x3dbl_1", 448)?]),
            b3x3_2: split("branch3x3_2a", "branch3x3_2b", 384)?,
            b3x3dbl_2: ConvBn::square(448, 384, 3, 1, 1, vb.pp("branch3x3dbl_2"))?,
            b3x3dbl_3: split("branch3x3dbl_3a", "branch3x3dbl_3b", 384)?,
            pool: c1("branch_pool", 192)?,
            max_pool,
        })
    }

    fn forward(&self, x: &Maps) -> Maps {
        let p = self.pointwise.forward(x);
        let b1 = p.channels(0, 320);
        let t = p.channels(320, 384);
        let (b3a, b3b) = (self.b3x3_2[0].forward(&t), self.b3x3_2[1].forward(&t));
        let d = self.b3x3dbl_2.forward(&p.channels(704, 448));
        let (bda, bdb) = (self.b3x3dbl_3[0].forward(&d), self.b3x3dbl_3[1].forward(&d));
        let bp = self.pool.forward(&pool3(x, 1, 1, self.max_pool));
        Maps::cat(&[&b1, &b3a, &b3b, &bda, &bdb, &bp])
    }
}

/// pytorch-fid's `InceptionV3([3])` (`use_fid_inception=True`): images `[B,3,H,W]` in `[0,1]` →
/// pool3 features `[B,2048]`. Tensor names are those of the standard weights' state dict
/// (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, …).
pub struct FidInception {
    cfg: InceptionConfig,
    stem: [ConvBn; 3],  // Conv2d_1a_3x3, 2a, 2b; then max pool 3/2
    stem2: [ConvBn; 2], // Conv2d_3b_1x1, 4a; then max pool 3/2
    mixed5: [BlockA; 3],
    mixed6a: BlockB,
    mixed6: [BlockC; 4],
    mixed7a: BlockD,
    mixed7: [BlockE; 2],
}

impl FidInception {
    pub fn new(cfg: &InceptionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            stem: [
                ConvBn::square(3, 32, 3, 2, 0, vb.pp("Conv2d_1a_3x3"))?,
                ConvBn::square(32, 32, 3, 1, 0, vb.pp("Conv2d_2a_3x3"))?,
                ConvBn::square(32, 64, 3, 1, 1, vb.pp("Conv2d_2b_3x3"))?,
            ],
            stem2: [ConvBn::square(64, 80, 1, 1, 0, vb.pp("Conv2d_3b_1x1"))?, ConvBn::square(80, 192, 3, 1, 0, vb.pp("Conv2d_4a_3x3"))?],
            mixed5: [
                BlockA::new(192, 32, vb.pp("Mixed_5b"))?,
                BlockA::new(256, 64, vb.pp("Mixed_5c"))?,
                BlockA::new(288, 64, vb.pp("Mixed_5d"))?,
            ],
            mixed6a: BlockB::new(288, vb.pp("Mixed_6a"))?,
            mixed6: [
                BlockC::new(768, 128, vb.pp("Mixed_6b"))?,
                BlockC::new(768, 160, vb.pp("Mixed_6c"))?,
                BlockC::new(768, 160, vb.pp("Mixed_6d"))?,
                BlockC::new(768, 192, vb.pp("Mixed_6e"))?,
            ],
            mixed7a: BlockD::new(768, vb.pp("Mixed_7a"))?,
            mixed7: [BlockE::new(1280, false, vb.pp("Mixed_7b"))?, BlockE::new(2048, true, vb.pp("Mixed_7c"))?],
        })
    }

    /// `[B,3,H,W]` in `[0,1]` → `[B,2048]` (f32, on the CPU).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        if c != 3 {
            candle_core::bail!("the FID Inception takes 3-channel images, got {c}");
        }
        let data = xs.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let x = Maps { data, b, c, h, w };
        let x = if self.cfg.resize_input && (h != INPUT_SIZE || w != INPUT_SIZE) {
            let mut out = Vec::with_capacity(b * 3 * INPUT_SIZE * INPUT_SIZE);
            for i in 0..b {
                out.extend(resize_bilinear(&x.data[i * 3 * h * w..(i + 1) * 3 * h * w], 3, h, w, INPUT_SIZE, INPUT_SIZE));
            }
            Maps { data: out, b, c, h: INPUT_SIZE, w: INPUT_SIZE }
        } else {
            x
        };
        if x.h < 75 || x.w < 75 {
            candle_core::bail!("the FID Inception needs images of at least 75×75 (got {}×{}); keep resize_input on", x.h, x.w);
        }
        let feats = self.forward_maps(x);
        Tensor::from_vec(feats, (b, FEATURES), &Device::Cpu)
    }

    fn forward_maps(&self, mut x: Maps) -> Vec<f32> {
        if self.cfg.normalize_input {
            x.data.par_iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
        }
        let x = self.stem.iter().fold(x, |t, c| c.forward(&t));
        let x = pool3(&x, 2, 0, true);
        let x = self.stem2.iter().fold(x, |t, c| c.forward(&t));
        let x = pool3(&x, 2, 0, true);
        let x = self.mixed5.iter().fold(x, |t, blk| blk.forward(&t));
        let x = self.mixed6a.forward(&x);
        let x = self.mixed6.iter().fold(x, |t, blk| blk.forward(&t));
        let x = self.mixed7a.forward(&x);
        let x = self.mixed7.iter().fold(x, |t, blk| blk.forward(&t));
        // Adaptive average pool to 1×1.
        let p = x.plane();
        x.data.chunks(p).map(|pl| (pl.iter().map(|&v| v as f64).sum::<f64>() / p as f64) as f32).collect()
    }
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The FID Inception with its weights, and whether they are the standard ones.
pub struct LoadedInception {
    pub model: FidInception,
    /// SHA-256 of the weights file.
    pub sha256: String,
    /// The weights are pytorch-fid's own (`pt_inception-2015-12-05-6726825d.pth`): scores are
    /// comparable to pytorch-fid's.
    pub standard: bool,
}

fn missing_weights_help(path: &Path) -> String {
    format!(
        "the FID Inception weights {} do not exist. Download them once (95 MB) from\n  {STANDARD_WEIGHTS_URL}\nand pass the file with --fid-weights",
        path.display()
    )
}

/// Loads the FID Inception from `path`: pytorch-fid's `.pth` (zip or legacy PyTorch format) or
/// a `.safetensors` with the same tensor names. Its SHA-256 must be the standard weights' unless
/// `allow_nonstandard` (for tests and other weights; scores are then not comparable to
/// pytorch-fid's).
pub fn load_fid_inception(path: &Path, allow_nonstandard: bool) -> anyhow::Result<LoadedInception> {
    if !path.exists() {
        bail!("{}", missing_weights_help(path));
    }
    let sha256 = sha256_file(path)?;
    let standard = sha256 == STANDARD_WEIGHTS_SHA256;
    if !standard && !allow_nonstandard {
        bail!(
            "{} is not the FID Inception weights file {STANDARD_WEIGHTS_FILE}: its SHA-256 is {sha256}, expected {STANDARD_WEIGHTS_SHA256}. \
             Download it again from {STANDARD_WEIGHTS_URL} (or pass --fid-weights-unchecked to use other weights; scores are then not comparable to pytorch-fid's)",
            path.display()
        );
    }
    let tensors = read_weights(path)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = FidInception::new(&InceptionConfig::default(), vb)
        .map_err(|e| anyhow::anyhow!("{}: not FID Inception weights: {e}", path.display()))?;
    Ok(LoadedInception { model, sha256, standard })
}

/// The named tensors of a `.safetensors` or `.pth` file (zip or legacy format).
pub fn read_weights(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("{}: not a readable safetensors file", path.display()));
    }
    if super::pth_legacy::is_legacy(path)? {
        return super::pth_legacy::read(path);
    }
    crate::interop::read_pth(path)
}

/// Deterministic synthetic weights for the FID Inception, by a formula of each tensor's name and
/// element index that `tools/make_fid_fixtures.py` computes the same way: the parity fixtures
/// and the benchmark use them, so neither needs the 95 MB download.
pub fn synthetic_weights() -> Result<Vec<(String, Tensor)>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(Box::new(SyntheticBackend { seen: seen.clone() }), DType::F32, Device::Cpu);
    FidInception::new(&InceptionConfig::default(), vb)?;
    let mut seen = std::mem::take(&mut *seen.lock().map_err(|_| candle_core::Error::Msg("synthetic weights: poisoned lock".into()))?);
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    seen.dedup_by(|a, b| a.0 == b.0);
    Ok(seen)
}

/// The value of element `i` of the synthetic tensor `name` of `shape` (see `synthetic_weights`):
/// a uniform draw u in [−0.5, 0.5) from a hash of (name, i), scaled per kind of tensor.
pub fn synthetic_value(name: &str, shape: &[usize], i: usize) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut z = h.wrapping_add((i as u64).wrapping_mul(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^= z >> 31;
    let u = (z >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
    if name.ends_with("conv.weight") {
        let fan_in: usize = shape[1..].iter().product();
        u * (24.0 / fan_in as f64).sqrt()
    } else if name.ends_with("running_var") {
        1.0 + u
    } else if name.ends_with("bn.weight") {
        1.0 + 0.5 * u
    } else {
        0.2 * u // bn.bias, running_mean, fc
    }
}

struct SyntheticBackend {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Tensor)>>>,
}

impl candle_nn::var_builder::SimpleBackend for SyntheticBackend {
    fn get(&self, s: Shape, name: &str, _h: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let dims = s.dims().to_vec();
        let v: Vec<f32> = (0..s.elem_count()).map(|i| synthetic_value(name, &dims, i) as f32).collect();
        let t = Tensor::from_vec(v, s, dev)?.to_dtype(dtype)?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((name.to_string(), t.clone()));
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("synthetic weights: {name} has no known shape")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
