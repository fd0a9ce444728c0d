//! Stride-1 convolutions by Winograd's minimal filtering F(m×m, r×r): every α×α input tile
//! (α = m + r − 1, tiles step by m) gives an m×m output tile with α² multiplications per input
//! channel instead of r²m².
//! * 3×3 without padding, with a reflection padding of 1 (the residual blocks') or a zero
//!   padding of 1 (CUT's anti-aliased generator): F(4×4, 3×3) by default (36 per 16 outputs:
//!   4× less GEMM work than im2col); F(6×6, 3×3) (64 per 36 outputs, 5.06× less) in bf16
//!   translations of large images (`Kernel::choose`); F(2×2, 3×3) (16 per 4 outputs) with
//!   `CS_WINOGRAD_TILE=2`, to compare (`=4`, `=6` force the others for 3×3 kernels).
//! * 4×4 without padding or with a zero padding of 1 (the PatchGAN's stride-1 layers, all of them
//!   in the anti-aliased one): F(3×3, 4×4), 36 per 9 outputs (4× less). It shares F(4×4, 3×3)'s
//!   points and so its Bᵀ; only G (α×4) and Aᵀ (3×α) differ.
//!
//! Padding happens inside the transforms (rows are padded as tiles read them), so no padded copy
//! of the input is made, kept for backward, or differentiated. So does CUT's blur up-sampling in
//! front of its up-sampling convolutions (`Pad::UpZero`): tiles read rows of the up-sampled,
//! zero-padded input made on the fly from the stored half-size one, and backward folds them back
//! through the up-sampling's adjoint.
//!
//! With the transforms Bᵀ (α×α), G (α×r) and Aᵀ (m×α) of Lavin & Gray (2016), every input tile
//! d and every filter g give V = Bᵀ d B and U = G g Gᵀ, and
//!   y_tile = Aᵀ [ Σ_ci U[co,ci] ⊙ V[ci] ] A.
//! For each of the α² tile positions ξ the channel sum is one GEMM:
//!   M[ξ] [Cout, T] = U[ξ] [Cout, Cin] · V[ξ] [Cin, T].
//! Buffers are channel-major ([C][α²][ts], ts ≥ T a padded row length; U as [Cout][α²][Cin]) so
//! transforms run in parallel over channels on contiguous chunks and, within a channel, over whole
//! rows of tiles as vector loops; the GEMMs read them with strides.
//! The gradients are the adjoints of the same linear maps, so they are GEMMs in the same domain:
//!   dM = A dY Aᵀ,  dV[ξ] = U[ξ]ᵀ · dM[ξ],  dx = Σ_tiles B dV Bᵀ,
//!   dU[ξ] = dM[ξ] · V[ξ]ᵀ,  dW = Gᵀ dU G.
//! The three ops (forward, data gradient, filter gradient) are bilinear and each one's
//! derivatives are the other two, so second-order gradients work as for `conv`.

use super::gemm::{matmul_batch, with_scratch, with_scratch_slot, LineBuf, Mat};
use super::{act_data, act_storage, data, Elem};
use half::bf16;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, TensorId};
use std::cell::RefCell;
use std::collections::hash_map::{Entry, HashMap};
use std::sync::{Arc, Mutex};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod direct;

/// AMX exists only on x86-64: elsewhere the direct kernels never apply.
#[cfg(not(target_arch = "x86_64"))]
mod direct {
    use super::Tiles;
    use crate::ops::Elem;

    pub(super) fn applies(_cin: usize, _cout: usize, _t: &Tiles) -> bool {
        false
    }

    pub(super) fn forward<E: Elem>(_x: &[E], _w: &[f32], _cin: usize, _cout: usize, _t: &Tiles, _kept: Option<&[u32]>) -> Vec<E> {
        unreachable!("AMX direct kernels on a CPU without AMX")
    }

    pub(super) fn packed_weights(_w: &[f32], _cout: usize, _cin: usize, _r: usize) -> crate::ops::gemm::LineBuf<u32> {
        unreachable!("AMX direct kernels on a CPU without AMX")
    }

    pub(super) fn data_grad<E: Elem>(_dy: &[E], _w: &[f32], _cin: usize, _cout: usize, _t: &Tiles) -> Vec<f32> {
        unreachable!("AMX direct kernels on a CPU without AMX")
    }

    pub(super) fn filter_grad<E: Elem, F: Elem>(_x: &[E], _dy: &[F], _cin: usize, _cout: usize, _t: &Tiles) -> Vec<f32> {
        unreachable!("AMX direct kernels on a CPU without AMX")
    }
}

/// Whether a convolution with outputs of `out` (height, width) takes this path: 3×3 or 4×4,
/// stride 1, padding 0 or 1, and enough channels for the per-position GEMMs to beat one im2col
/// GEMM; in bf16, a 4×4 kernel also needs [`MIN_TILES_4X4_BF16`] tiles. `CS_NO_WINOGRAD` set
/// turns it off (for benchmarks).
pub(crate) fn applies(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, out: (usize, usize)) -> bool {
    let few_tiles = k == 4 && super::precision::cpu_bf16() && out.0.div_ceil(3) * out.1.div_ceil(3) < MIN_TILES_4X4_BF16;
    (k == 3 || k == 4) && stride == 1 && pad <= 1 && cin >= 16 && cout >= 16 && !few_tiles && !super::settings().no_winograd
}

/// The fewest F(3×3, 4×4) tiles for which a 4×4 convolution takes Winograd in bf16. Against the
/// im2col path's bf16 products its fp32 products and filter transforms (of every Cout × Cin
/// filter, for a few tiles) lose on small outputs: the PatchGAN's 256→512 layer, forward and
/// backward (AVX512-BF16, AMD EPYC, 2 threads, medians of 20–40 runs): 15² outputs (25 tiles)
/// 14.6–15.0 ms vs 12.1–12.6 ms with im2col, 19² (49) 22.2–23.6 vs 20.4–21.1 ms, 23² (64)
/// 25.3–26.7 vs 26.7–31.1 ms, 31² (121) 33.7–37.2 vs 39.6–40.7 ms. In fp32 Winograd won at 15²
/// (16.4–19.4 ms vs 18.5–31.9 ms), so fp32 keeps it everywhere.
const MIN_TILES_4X4_BF16: usize = 64;

/// Winograd's per-position products, in fp32 whatever this thread's precision: with bf16
/// operands F(4×4, 3×3)'s and F(3×3, 4×4)'s transforms amplify the rounding to 5–8 % of the
/// output's scale (20–40× a direct bf16 product's), and F(2×2, 3×3), accurate enough in bf16
/// (4e-3), was no faster than F(4×4, 3×3) in fp32 and slower over a training step (AVX512-BF16,
/// AMD EPYC: 128² step 1.45 s with fp32 Winograd vs 1.63–1.73 s; see bench/RESULTS.md). So in
/// bf16 the convolutions that take this path keep fp32, and the others (im2col, transposed,
/// narrow) run in bf16.
fn batch(count: usize, shape: (usize, usize, usize), dst: (&mut [f32], usize, usize), accumulate: bool, lhs: (Mat, usize), rhs: (Mat, usize)) {
    super::precision::with_precision(super::Precision::Fp32, || matmul_batch(count, shape, dst, accumulate, lhs, rhs))
}

/// How the transforms pad the input: by nothing, or by one pixel, reflected or zero; or
/// blur-up-sample it 2× (`ops::blur::blur_up`) and zero-pad that by one pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pad {
    None,
    Reflect,
    Zero,
    UpZero,
}

impl Pad {
    fn size(self) -> usize {
        usize::from(self != Pad::None)
    }
}

/// `xs` [B,Cin,H,W], `w` [Cout,Cin,r,r] (r 3 or 4) → [B,Cout,H+2p−r+1,W+2p−r+1] (contiguous
/// CPU operands, `xs` f32 or bf16, `w` f32), `xs` padded as `pad` says (p its size; reflection for 3×3 only).
pub(crate) fn conv(xs: &Tensor, w: &Tensor, pad: Pad) -> Result<Tensor> {
    xs.contiguous()?.apply_op2(&w.contiguous()?, forward_op(xs, w, pad)?)
}

/// The op [`conv`] applies.
pub(super) fn forward_op(xs: &Tensor, w: &Tensor, pad: Pad) -> Result<Forward> {
    let (b, _, h, wd) = xs.dims4()?;
    let k = Kernel::choose(w.dim(3)?, h, wd, pad, xs.track_op() || w.track_op())?;
    let t = Tiles::new(h, wd, pad, k)?;
    // F(6×6, 3×3) runs only for outputs of 128² and more, where the transform is a small share
    // and its U (1.8× F(4×4, 3×3)'s) not worth keeping.
    // The direct kernels' packed weights are half the weights' size: kept at any size.
    let direct = direct::applies(xs.dim(1)?, w.dim(0)?, &t);
    let keep = !w.track_op() && (direct || b * t.th * t.tw <= KEEP_TILES && k.m != 6);
    let kept = FilterCache::active().filter(|_| keep).map(|c| (c, w.id()));
    Ok(Forward { pad, k, kept })
}

/// Transformed filters (U) kept between calls for weights that do not change while the cache
/// lives: a loaded model translating image after image (`Translator`). Without it each call
/// transforms every filter again, which at 256² (64² feature maps, 256 tiles per call) is 8 % of
/// a translation. A weight's U is kept from its second call on, so translating one image costs
/// no memory. Only weights without autograd are kept (a trained weight changes in place under the
/// same id), and only for calls of at most 1024 tiles (`KEEP_TILES`) of F(4×4, 3×3) or
/// F(3×3, 4×4): past that the transform is under ~2 % of the layer, not worth U's memory (4× the
/// weights' for 3×3 kernels). Where the direct kernels run instead (bf16 on AMX), their packed
/// weights are kept the same way, at any size (half the weights' memory; packing the 256-channel
/// weights was ~5 % of a 256² translation).
#[derive(Clone, Default)]
pub struct FilterCache(Arc<Mutex<KeptFilters>>);

/// Tiles per call (images × tiles per image) up to which [`FilterCache`] keeps U: 1024 is a
/// 512² image's residual blocks.
const KEEP_TILES: usize = 1024;

/// A weight and what is kept for it: U for a Winograd kernel, or (`None`) the direct kernels'
/// packed weights.
type FilterKey = (TensorId, Option<Kernel>);

/// What [`FilterCache`] keeps for a weight.
enum Kept {
    /// Winograd's transformed filters U.
    Transformed(Vec<f32>),
    /// The weights as the direct kernels read them.
    Packed(LineBuf<u32>),
}

impl Kept {
    fn transformed(&self) -> Option<&[f32]> {
        match self {
            Kept::Transformed(u) => Some(u),
            Kept::Packed(_) => None,
        }
    }

    fn packed(&self) -> Option<&[u32]> {
        match self {
            Kept::Packed(p) => Some(p),
            Kept::Transformed(_) => None,
        }
    }
}

/// Every weight seen, with what is kept for it once kept (`None`: made once, so its next call
/// keeps it).
type KeptFilters = HashMap<FilterKey, Option<Arc<Kept>>>;

thread_local! {
    static ACTIVE_FILTERS: RefCell<Option<FilterCache>> = const { RefCell::new(None) };
}

impl FilterCache {
    /// Runs `f` with this thread's Winograd convolutions of weights without autograd reading
    /// and filling this cache (the previous cache, if any, restored afterwards, also on panic),
    /// on a thread of rayon's pool ([`in_pool`](super::in_pool)).
    pub fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        super::in_pool(|| self.scope_here(f))
    }

    /// [`scope`](Self::scope) on this thread.
    fn scope_here<R>(&self, f: impl FnOnce() -> R) -> R {
        super::with_replaced(&ACTIVE_FILTERS, Some(self.clone()), f)
    }

    /// Runs `f` with no cache active on this thread (the active one restored afterwards).
    pub(crate) fn set_aside<R>(f: impl FnOnce() -> R) -> R {
        super::with_replaced(&ACTIVE_FILTERS, None, f)
    }

    fn active() -> Option<Self> {
        ACTIVE_FILTERS.with(|c| c.borrow().clone())
    }

    /// What is kept for weight `id` (data `w` [cout][cin][r][r]) for the convolution `t` runs:
    /// the direct kernels' packed weights where they apply, else U; made now on its second call,
    /// `None` on its first (the caller makes its own).
    fn kept(&self, id: TensorId, w: &[f32], cout: usize, cin: usize, t: &Tiles) -> Option<Arc<Kept>> {
        let direct = direct::applies(cin, cout, t);
        let key = (id, (!direct).then_some(Kernel { r: t.r, m: t.m }));
        match self.lock().entry(key) {
            Entry::Occupied(seen) => {
                if let Some(kept) = seen.get() {
                    return Some(kept.clone());
                }
            }
            Entry::Vacant(first) => {
                first.insert(None);
                return None;
            }
        }
        // Made outside the lock (it runs on the rayon threads); a thread that made the same
        // meanwhile wins, and both give the same values.
        let made = if direct {
            Kept::Packed(direct::packed_weights(w, cout, cin, t.r))
        } else {
            let mut u = crate::ops::zeros(t.positions() * cout * cin);
            filter_transform(w, cout, cin, t, &mut u);
            Kept::Transformed(u)
        };
        Some(self.lock().entry(key).or_default().get_or_insert_with(|| Arc::new(made)).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeptFilters> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn kept_count(&self) -> usize {
        self.lock().values().filter(|u| u.is_some()).count()
    }
}

/// The algorithm of one convolution: kernel size r and output tile size m.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Kernel {
    r: usize,
    m: usize,
}

impl Kernel {
    /// The algorithm for an r×r convolution of an `h`×`w` input padded as `pad` says (`grad`:
    /// its backward pass will run): F(3×3, 4×4) for 4×4 kernels; for 3×3 ones the tile size that
    /// `CS_WINOGRAD_TILE` sets, else F(4×4, 3×3), except in a bf16 translation (no backward) with
    /// outputs of at least 128×128 where F(6×6, 3×3) multiplies less (16–20 % fewer
    /// multiplications; its f32 rounding, 1e-5 of the output's scale, is far under bf16's 4e-3).
    /// Measured, one 3×3 convolution forward (AMD EPYC, 2 threads): F(6×6, 3×3) takes 0.76–0.90×
    /// F(4×4, 3×3)'s time at 256² outputs, 0.95–1.02× at 128², 1.00–1.05× at 64² (its per-position
    /// products are smaller: 64 of them over 11² tiles against 36 over 16²), and its gradients
    /// 0.95–1.03× at 256², up to 1.17× at 64². fp32 always keeps F(4×4, 3×3): its results stay
    /// those of earlier versions bit for bit.
    fn choose(r: usize, h: usize, w: usize, pad: Pad, grad: bool) -> Result<Self> {
        let default = Self::new(r, 4)?;
        if r != 3 {
            return Ok(default);
        }
        if let Some(m) = super::settings().winograd_tile {
            return Self::new(r, m);
        }
        if grad || super::precision::current() != super::Precision::Bf16 {
            return Ok(default);
        }
        let t = Tiles::new(h, w, pad, default)?;
        let work = |m: usize| t.ho.div_ceil(m) * t.wo.div_ceil(m) * (m + 2) * (m + 2);
        Ok(if t.ho.min(t.wo) >= 128 && work(6) < work(4) { Self { r, m: 6 } } else { default })
    }

    /// F(3×3, 4×4) for 4×4 kernels; for 3×3 ones F(`tile3`×`tile3`, 3×3) (2, 4 or 6).
    fn new(r: usize, tile3: usize) -> Result<Self> {
        match (r, tile3) {
            (3, 2 | 4 | 6) => Ok(Self { r, m: tile3 }),
            (4, _) => Ok(Self { r, m: 3 }),
            _ => bail!("winograd conv: no algorithm for {r}x{r} kernels with {tile3}x{tile3} tiles"),
        }
    }
}

/// A transform matrix of one of the algorithms (α ≤ 8), row-major in the top-left corner.
type Coeffs = [[f32; 8]; 8];

/// A 6×6 matrix (the algorithms with α ≤ 6) as [`Coeffs`].
const fn widen(m: [[f32; 6]; 6]) -> Coeffs {
    let mut w = [[0f32; 8]; 8];
    let mut i = 0;
    while i < 6 {
        let mut j = 0;
        while j < 6 {
            w[i][j] = m[i][j];
            j += 1;
        }
        i += 1;
    }
    w
}

const fn transpose(m: Coeffs) -> Coeffs {
    let mut t = [[0f32; 8]; 8];
    let mut i = 0;
    while i < 8 {
        let mut j = 0;
        while j < 8 {
            t[j][i] = m[i][j];
            j += 1;
        }
        i += 1;
    }
    t
}

/// `dst.copy_from_slice(src)` for a transform's short rows (a row of tiles: 8 floats at 32²),
/// in 16-float blocks kept inline: `copy_from_slice` would call the C library's memcpy, whose
/// call costs more than copying so few floats.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    fn block<const N: usize>(dst: &mut [f32], src: &[f32], at: usize) {
        let d: &mut [f32; N] = (&mut dst[at..at + N]).try_into().expect("N floats");
        *d = src[at..at + N].try_into().expect("N floats");
    }
    let n = src.len();
    assert_eq!(dst.len(), n);
    let mut i = 0;
    while i + 16 <= n {
        block::<16>(dst, src, i);
        i += 16;
    }
    if i + 8 <= n {
        block::<8>(dst, src, i);
        i += 8;
    }
    if i + 4 <= n {
        block::<4>(dst, src, i);
        i += 4;
    }
    // At most 3 left, one by one (a loop here would become a memcpy call again).
    for j in [i, i + 1, i + 2] {
        if j < n {
            dst[j] = src[j];
        }
    }
}

/// The matrices of one algorithm F(m×m, r×r), with their transposes, so that every step of a
/// transform is "dst[r] = Σ_c mat[r][c]·src[c]" with compile-time coefficients.
struct Scheme {
    bt: Coeffs, // Bᵀ [α, α]
    b: Coeffs,  // B [α, α]
    g: Coeffs,  // G [α, r]
    gt: Coeffs, // Gᵀ [r, α]
    at: Coeffs, // Aᵀ [m, α]
    a: Coeffs,  // A [α, m]
}

impl Scheme {
    const fn new(bt: Coeffs, g: Coeffs, at: Coeffs) -> Self {
        Self { bt, b: transpose(bt), g, gt: transpose(g), at, a: transpose(at) }
    }
}

/// F(2×2, 3×3), interpolation points 0, ±1, ∞.
#[rustfmt::skip]
const F2: Scheme = Scheme::new(
    widen([[1., 0., -1., 0., 0., 0.],
     [0., 1., 1., 0., 0., 0.],
     [0., -1., 1., 0., 0., 0.],
     [0., 1., 0., -1., 0., 0.],
     [0.; 6], [0.; 6]]),
    widen([[1., 0., 0., 0., 0., 0.],
     [0.5, 0.5, 0.5, 0., 0., 0.],
     [0.5, -0.5, 0.5, 0., 0., 0.],
     [0., 0., 1., 0., 0., 0.],
     [0.; 6], [0.; 6]]),
    widen([[1., 1., 1., 0., 0., 0.],
     [0., 1., -1., -1., 0., 0.],
     [0.; 6], [0.; 6], [0.; 6], [0.; 6]]),
);

/// Bᵀ of the points 0, ±1, ±2, ∞ (α = 6), shared by F(4×4, 3×3) and F(3×3, 4×4).
#[rustfmt::skip]
const BT6: Coeffs = widen(
    [[4., 0., -5., 0., 1., 0.],
     [0., -4., -4., 1., 1., 0.],
     [0., 4., -4., -1., 1., 0.],
     [0., -2., -1., 2., 1., 0.],
     [0., 2., -1., -2., 1., 0.],
     [0., 4., 0., -5., 0., 1.]]);

/// F(4×4, 3×3), interpolation points 0, ±1, ±2, ∞.
#[rustfmt::skip]
const F4: Scheme = Scheme::new(
    BT6,
    widen([[1. / 4., 0., 0., 0., 0., 0.],
     [-1. / 6., -1. / 6., -1. / 6., 0., 0., 0.],
     [-1. / 6., 1. / 6., -1. / 6., 0., 0., 0.],
     [1. / 24., 1. / 12., 1. / 6., 0., 0., 0.],
     [1. / 24., -1. / 12., 1. / 6., 0., 0., 0.],
     [0., 0., 1., 0., 0., 0.]]),
    widen([[1., 1., 1., 1., 1., 0.],
     [0., 1., -1., 2., -2., 0.],
     [0., 1., 1., 4., 4., 0.],
     [0., 1., -1., 8., -8., 1.],
     [0.; 6], [0.; 6]]),
);

/// F(3×3, 4×4) on the same points: G row ξ is the point's powers 1, p, p², p³ (∞: the last)
/// scaled as F(4×4, 3×3)'s G scales them, Aᵀ rows the powers 0–2 (solved for and checked
/// against the direct convolution in the tests).
#[rustfmt::skip]
const F3K4: Scheme = Scheme::new(
    BT6,
    widen([[1. / 4., 0., 0., 0., 0., 0.],
     [-1. / 6., -1. / 6., -1. / 6., -1. / 6., 0., 0.],
     [-1. / 6., 1. / 6., -1. / 6., 1. / 6., 0., 0.],
     [1. / 24., 1. / 12., 1. / 6., 1. / 3., 0., 0.],
     [1. / 24., -1. / 12., 1. / 6., -1. / 3., 0., 0.],
     [0., 0., 0., 1., 0., 0.]]),
    widen([[1., 1., 1., 1., 1., 0.],
     [0., 1., -1., 2., -2., 0.],
     [0., 1., 1., 4., 4., 1.],
     [0.; 6], [0.; 6], [0.; 6]]),
);

/// F(6×6, 3×3), interpolation points 0, ±1, ±½, ±2, ∞ (α = 8): as F(4×4, 3×3), G row ξ is the
/// point's powers over Π(p − q) of the other finite points, Aᵀ rows its powers 0–5, and Bᵀ was
/// solved for exactly so that Aᵀ[(G g) ⊙ (Bᵀ d)] is the correlation
/// (`tools/winograd_coefficients.py 6 3 0 1 -1 1/2 -1/2 2 -2`; row 0 of Bᵀ and of G negated
/// together here, which changes no product); checked against the direct convolution in the
/// tests. 1.78 multiplications per output against F(4×4, 3×3)'s 2.25, for about 10× its rounding
/// error in f32 (1e-5 of the output's scale): used in bf16 only.
#[rustfmt::skip]
const F6: Scheme = Scheme::new(
    [[1., 0., -21. / 4., 0., 21. / 4., 0., -1., 0.],
     [0., 1., 1., -17. / 4., -17. / 4., 1., 1., 0.],
     [0., -1., 1., 17. / 4., -17. / 4., -1., 1., 0.],
     [0., 2., 4., -5. / 2., -5., 1. / 2., 1., 0.],
     [0., -2., 4., 5. / 2., -5., -1. / 2., 1., 0.],
     [0., 1. / 2., 1. / 4., -5. / 2., -5. / 4., 2., 1., 0.],
     [0., -1. / 2., 1. / 4., 5. / 2., -5. / 4., -2., 1., 0.],
     [0., -1., 0., 21. / 4., 0., -21. / 4., 0., 1.]],
    [[1., 0., 0., 0., 0., 0., 0., 0.],
     [-2. / 9., -2. / 9., -2. / 9., 0., 0., 0., 0., 0.],
     [-2. / 9., 2. / 9., -2. / 9., 0., 0., 0., 0., 0.],
     [32. / 45., 16. / 45., 8. / 45., 0., 0., 0., 0., 0.],
     [32. / 45., -16. / 45., 8. / 45., 0., 0., 0., 0., 0.],
     [1. / 90., 1. / 45., 2. / 45., 0., 0., 0., 0., 0.],
     [1. / 90., -1. / 45., 2. / 45., 0., 0., 0., 0., 0.],
     [0., 0., 1., 0., 0., 0., 0., 0.]],
    [[1., 1., 1., 1., 1., 1., 1., 0.],
     [0., 1., -1., 1. / 2., -1. / 2., 2., -2., 0.],
     [0., 1., 1., 1. / 4., 1. / 4., 4., 4., 0.],
     [0., 1., -1., 1. / 8., -1. / 8., 8., -8., 0.],
     [0., 1., 1., 1. / 16., 1. / 16., 16., 16., 0.],
     [0., 1., -1., 1. / 32., -1. / 32., 32., -32., 1.],
     [0.; 8], [0.; 8]],
);

#[inline(always)]
fn scheme<const M: usize>() -> &'static Scheme {
    match M {
        2 => &F2,
        3 => &F3K4,
        6 => &F6,
        _ => &F4,
    }
}

/// Floats of transformed data (inputs plus outputs) one band of tiles may use (64 MiB).
const BAND_FLOATS: usize = 16 << 20;

#[cfg(test)]
thread_local! {
    /// Lets the unit tests force one tile row per band.
    static BAND_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(BAND_FLOATS) };
}

fn band_limit() -> usize {
    #[cfg(test)]
    return BAND_LIMIT.with(std::cell::Cell::get);
    #[cfg(not(test))]
    BAND_FLOATS
}

/// The tiling of one stored [sh, sw] input plane, padded as `pad` says to the [h, w] plane the
/// convolution sees: output (h−r+1)×(w−r+1) in m×m tiles, `th`×`tw` of them.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    sh: usize,
    sw: usize,
    pad: Pad,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    m: usize,
    r: usize,
    alpha: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(sh: usize, sw: usize, pad: Pad, k: Kernel) -> Result<Self> {
        let Kernel { r, m } = k;
        if pad == Pad::Reflect && (sh < 2 || sw < 2 || r != 3) {
            bail!("winograd conv: reflection padding of a {sh}x{sw} input for a {r}x{r} kernel is not supported");
        }
        if pad == Pad::UpZero && (sh == 0 || sw == 0 || r != 3) {
            bail!("winograd conv: blur up-sampling of a {sh}x{sw} input for a {r}x{r} kernel is not supported");
        }
        let p = pad.size();
        let (h, w) = if pad == Pad::UpZero { (2 * sh + 2, 2 * sw + 2) } else { (sh + 2 * p, sw + 2 * p) };
        if h < r || w < r {
            bail!("{r}x{r} convolution of a {h}x{w} input without padding has no output");
        }
        let (ho, wo) = (h + 1 - r, w + 1 - r);
        Ok(Self { sh, sw, pad, h, w, ho, wo, m, r, alpha: m + r - 1, th: ho.div_ceil(m), tw: wo.div_ceil(m) })
    }

    /// Tile positions α².
    fn positions(&self) -> usize {
        self.alpha * self.alpha
    }

    fn plane(&self) -> usize {
        self.sh * self.sw
    }

    /// Columns one row of tiles reads: m per tile plus the r − 1 the last one overlaps (zeros
    /// past `w`).
    fn row_width(&self) -> usize {
        self.m * self.tw + self.r - 1
    }

    /// Padded rows the tile rows `band` read.
    fn band_rows(&self, band: (usize, usize)) -> usize {
        self.m * (band.1 - band.0) + self.r - 1
    }

    /// Writes padded row `r` (< h) of the convolution's input into `row[..w]` from the stored
    /// `plane` [sh, sw]; `tmp` holds `sw` floats (the up-sampling's vertical combination).
    fn load_row(&self, plane: &[f32], r: usize, row: &mut [f32], tmp: &mut [f32]) {
        let sw = self.sw;
        let stored = |i: usize| &plane[i * sw..(i + 1) * sw];
        if self.pad != Pad::UpZero {
            return self.padded_row(self.source_row(r).map(stored), row);
        }
        let Some((near, far)) = self.up_rows(r) else { return row[..self.w].fill(0.0) };
        for ((t, &a), &b) in tmp[..sw].iter_mut().zip(stored(near)).zip(stored(far)) {
            *t = 0.75 * a + 0.25 * b;
        }
        row[0] = 0.0;
        super::blur::up_row(&mut row[1..2 * sw + 1], &tmp[..sw]);
        row[2 * sw + 1] = 0.0;
    }

    /// [`Self::load_row`] of a stored plane of either element type: a bf16 plane's source rows
    /// are widened into `tmp` (2·sw floats) as they are read, the same values as from the plane
    /// widened whole. (Only the direct kernels, x86-64's, read bf16 planes this way.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn load_row_of<E: Elem>(&self, plane: &[E], r: usize, row: &mut [f32], tmp: &mut [f32]) {
        if let Some(plane) = E::as_f32(plane) {
            return self.load_row(plane, r, row, tmp);
        }
        let sw = self.sw;
        let stored = |i: usize| &plane[i * sw..(i + 1) * sw];
        if self.pad != Pad::UpZero {
            let src = match self.source_row(r) {
                Some(i) => {
                    E::widen(&mut tmp[..sw], stored(i));
                    Some(&tmp[..sw])
                }
                None => None,
            };
            return self.padded_row(src, row);
        }
        let Some((near, far)) = self.up_rows(r) else { return row[..self.w].fill(0.0) };
        let (a, b) = tmp.split_at_mut(sw);
        E::widen(a, stored(near));
        E::widen(&mut b[..sw], stored(far));
        for (t, &v) in a.iter_mut().zip(&b[..sw]) {
            *t = 0.75 * *t + 0.25 * v;
        }
        row[0] = 0.0;
        super::blur::up_row(&mut row[1..2 * sw + 1], a);
        row[2 * sw + 1] = 0.0;
    }

    /// Adds padded row `row[..w]` (row `r` < h) into the stored `plane` (the adjoint of
    /// `load_row`); `tmp` holds `sw` floats.
    fn fold_into(&self, row: &[f32], r: usize, plane: &mut [f32], tmp: &mut [f32]) {
        let sw = self.sw;
        if self.pad != Pad::UpZero {
            if let Some(sr) = self.source_row(r) {
                self.fold_row(row, &mut plane[sr * sw..(sr + 1) * sw]);
            }
            return;
        }
        let Some((near, far)) = self.up_rows(r) else { return };
        super::blur::up_row_adjoint(&mut tmp[..sw], &row[1..2 * sw + 1]);
        for (k, i) in [(0.75f32, near), (0.25, far)] {
            for (d, &v) in plane[i * sw..(i + 1) * sw].iter_mut().zip(tmp.iter()) {
                *d += k * v;
            }
        }
    }

    /// For `Pad::UpZero`: the stored rows that padded row `r` combines, ¾ of the first and ¼
    /// of the second (up-sampled row u = r − 1: u = 2m takes m and m − 1, u = 2m + 1 takes m and
    /// m + 1, clamped); `None` for the zero rows.
    fn up_rows(&self, r: usize) -> Option<(usize, usize)> {
        if r == 0 || r + 1 >= self.h {
            return None;
        }
        let (u, n) = (r - 1, self.sh);
        let m = u / 2;
        Some((m, if u % 2 == 0 { m.saturating_sub(1) } else { (m + 1).min(n - 1) }))
    }

    /// The stored row that padded row `r` (< h) shows; `None` for a row of zero padding (and
    /// under `Pad::UpZero`, whose rows `load_row` combines from two).
    fn source_row(&self, r: usize) -> Option<usize> {
        match (self.pad, r) {
            (Pad::None, r) => Some(r),
            (Pad::UpZero, _) => None,
            (Pad::Zero, r) if r == 0 || r > self.sh => None,
            (Pad::Reflect, 0) => Some(1),
            (Pad::Reflect, r) if r > self.sh => Some(self.sh - 2),
            (_, r) => Some(r - 1),
        }
    }

    /// Writes padded row `r` (`w` values) into `row[..w]` from `src`, the stored row it shows,
    /// or zeros where it has none.
    fn padded_row(&self, src: Option<&[f32]>, row: &mut [f32]) {
        let Some(src) = src else { return row[..self.w].fill(0.0) };
        let sw = self.sw;
        match self.pad {
            Pad::None => row[..sw].copy_from_slice(src),
            Pad::Reflect => {
                row[0] = src[1];
                row[1..sw + 1].copy_from_slice(src);
                row[sw + 1] = src[sw - 2];
            }
            Pad::Zero | Pad::UpZero => {
                row[0] = 0.0;
                row[1..sw + 1].copy_from_slice(src);
                row[sw + 1] = 0.0;
            }
        }
    }

    /// Adds padded row `row[..w]` into the stored row `dst` (the adjoint of `padded_row`).
    fn fold_row(&self, row: &[f32], dst: &mut [f32]) {
        let p = self.pad.size();
        for (d, v) in dst.iter_mut().zip(&row[p..p + self.sw]) {
            *d += v;
        }
        if self.pad == Pad::Reflect {
            dst[1] += row[0];
            dst[self.sw - 2] += row[self.sw + 1];
        }
    }

    /// Bands of tile rows whose transformed data (α² floats per tile for each of `channels`)
    /// stays within [`BAND_FLOATS`].
    fn bands(&self, channels: usize) -> Vec<(usize, usize)> {
        let rows = (band_limit() / (self.positions() * channels * self.tw).max(1)).clamp(1, self.th);
        (0..self.th).step_by(rows).map(|r0| (r0, (r0 + rows).min(self.th))).collect()
    }

    /// Row length of a band buffer: see [`row_stride`].
    fn band_stride(&self, band: (usize, usize)) -> usize {
        row_stride((band.1 - band.0) * self.tw)
    }
}

/// Distance between the α² position rows of one channel in a band buffer: the band's tile count
/// rounded up to whole cache lines, and moved off multiples of 1 KiB so that the rows a
/// transform reads or writes side by side do not all fall into the same cache sets.
fn row_stride(tb: usize) -> usize {
    let s = tb.next_multiple_of(16);
    if s.is_multiple_of(256) {
        s + 16
    } else {
        s
    }
}

// The transforms below work on whole rows of tiles at once: every entry of a tile's α×α (or
// m×m, r×r) matrix is a vector over the tiles of a tile row (or over input channels, for the
// filters), and every step of a matrix product maps all the input vectors to all the output
// vectors in one pass (`apply`), 8 lanes at a time in registers, with the scheme's constant
// coefficients folded in at compile time. Each transform body is written once for the tile
// size m, the kernel size r and α = m + r − 1 as const parameters and dispatched on `Tiles::m`
// (which fixes r: 3×3 tiles only serve 4×4 kernels). The phase splitting below relies on
// α ≤ 2m, true of all three.

/// `dst[dst_at[r]..][..len]` = Σ_c `mat[r][c]`·`src[src_at[c]..][..len]` for r < R, c < C.
#[inline(always)]
fn apply<const R: usize, const C: usize>(mat: &Coeffs, src: &[f32], src_at: [usize; C], dst: &mut [f32], dst_at: [usize; R], len: usize) {
    // Every row is checked once here, and the loops read and write through row pointers: with
    // a bounds check per access the offsets and limits did not fit in registers, and the
    // transforms spent their time moving them to and from the stack.
    assert!(src_at.iter().all(|&o| o + len <= src.len()) && dst_at.iter().all(|&o| o + len <= dst.len()), "winograd transform: row out of range");
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: each row [offset, offset + len) lies inside its slice (asserted above), and every
    // access below is at an index below `len` of one row; `src` and `dst` do not overlap (one is
    // borrowed shared, the other exclusively).
    let srcs: [*const f32; C] = std::array::from_fn(|c| unsafe { sp.add(src_at[c]) });
    let dsts: [*mut f32; R] = std::array::from_fn(|r| unsafe { dp.add(dst_at[r]) });
    let body = len - len % 8;
    for q in (0..body).step_by(8) {
        // SAFETY: q + 8 ≤ body ≤ len.
        let x: [[f32; 8]; C] = std::array::from_fn(|c| unsafe { srcs[c].add(q).cast::<[f32; 8]>().read_unaligned() });
        for r in 0..R {
            let mut acc = [0f32; 8];
            for c in 0..C {
                let k = mat[r][c];
                if k != 0.0 {
                    for l in 0..8 {
                        acc[l] += k * x[c][l];
                    }
                }
            }
            // SAFETY: as for the loads.
            unsafe { dsts[r].add(q).cast::<[f32; 8]>().write_unaligned(acc) };
        }
    }
    for q in body..len {
        for r in 0..R {
            let mut acc = 0f32;
            for c in 0..C {
                let k = mat[r][c];
                if k != 0.0 {
                    // SAFETY: q < len.
                    acc += k * unsafe { *srcs[c].add(q) };
                }
            }
            // SAFETY: q < len.
            unsafe { *dsts[r].add(q) = acc };
        }
    }
}

/// `N` offsets: `off`, `off + stride`, ….
#[inline(always)]
fn at<const N: usize>(off: usize, stride: usize) -> [usize; N] {
    let mut o = [off; N];
    for (i, v) in o.iter_mut().enumerate() {
        *v += i * stride;
    }
    o
}

/// Splits `row` into its `M` phases: `ph[p·stride + q]` = `row[M·q + p]` for q < `len`, zeros
/// past the row.
#[inline(always)]
fn deinterleave<const M: usize>(row: &[f32], ph: &mut [f32], stride: usize, len: usize) {
    let full = (row.len() / M).min(len);
    let ph = &mut ph[..(M - 1) * stride + len];
    // Blocks of 16 samples per phase through a fixed-size buffer, which the compiler turns into
    // vector shuffles; the rest (all of a row of a 32² plane's tiles) phase by phase with
    // `gather` (element by element it compiled to scalar moves with a bounds check each: input
    // transform 5.9 % → 4.6 % of a bf16 128² step).
    let blocks = full / 16;
    for blk in 0..blocks {
        let src = &row[blk * 16 * M..][..16 * M];
        let mut t = [[0f32; 16]; M];
        for (l, chunk) in src.chunks_exact(M).enumerate() {
            for p in 0..M {
                t[p][l] = chunk[p];
            }
        }
        for (p, tp) in t.iter().enumerate() {
            ph[p * stride + blk * 16..][..16].copy_from_slice(tp);
        }
    }
    let (q0, rem) = (blocks * 16, full - blocks * 16);
    if rem > 0 {
        for p in 0..M {
            super::gather::<M>(&mut ph[p * stride + q0..][..rem], &row[q0 * M + p..]);
        }
    }
    for p in 0..M {
        for q in full..len {
            ph[p * stride + q] = row.get(M * q + p).copied().unwrap_or(0.0);
        }
    }
}

/// The inverse of `deinterleave` into `out` (entries past `out` dropped): `out[M·q + p]`
/// = (or += with `ADD`) `ph[p·stride + q]` for q < `len`.
#[inline(always)]
fn interleave<const M: usize, const ADD: bool>(ph: &[f32], stride: usize, len: usize, out: &mut [f32]) {
    let ph = &ph[..(M - 1) * stride + len];
    let full = (out.len() / M).min(len);
    let put = |o: &mut f32, v: f32| *o = if ADD { *o + v } else { v };
    // As in `deinterleave`: blocks of 16 per phase through fixed-size buffers.
    let blocks = full / 16;
    for blk in 0..blocks {
        let mut t = [[0f32; 16]; M];
        for (p, tp) in t.iter_mut().enumerate() {
            tp.copy_from_slice(&ph[p * stride + blk * 16..][..16]);
        }
        let mut o = [0f32; 96]; // 16·M ≤ 96
        for l in 0..16 {
            for p in 0..M {
                o[l * M + p] = t[p][l];
            }
        }
        for (d, &v) in out[blk * 16 * M..][..16 * M].iter_mut().zip(&o) {
            put(d, v);
        }
    }
    for (q, chunk) in out.chunks_exact_mut(M).enumerate().take(full).skip(blocks * 16) {
        for p in 0..M {
            put(&mut chunk[p], ph[p * stride + q]);
        }
    }
    for (i, o) in out.iter_mut().enumerate().skip(M * full) {
        put(o, ph[(i % M) * stride + i / M]);
    }
}

/// Calls `$f::<2, 3, 4>`, `$f::<3, 4, 6>` or `$f::<4, 3, 6>` (m, r and α) for the tile size `$m`,
/// or for 6 `$f6`, `$f::<6, 3, 8>` compiled apart (see `out_of_line6!`).
macro_rules! by_tile {
    ($m:expr, $f:ident($($arg:expr),*), $f6:ident) => {
        match $m {
            2 => $f::<2, 3, 4>($($arg),*),
            3 => $f::<3, 4, 6>($($arg),*),
            6 => $f6($($arg),*),
            _ => $f::<4, 3, 6>($($arg),*),
        }
    };
}

/// Defines `$name`, a `simd_fn!` running `$f::<6, 3, 8>` (F(6×6, 3×3)), never inlined: inside one
/// function with the other tile sizes' bodies, its larger one made the F(4×4, 3×3) transforms
/// 5–25 % slower (output transform at 32², 256 channels: 0.152–0.168 ms against 0.119–0.136).
macro_rules! out_of_line6 {
    ($name:ident, $f:ident($($arg:ident: $ty:ty),*)) => {
        simd_fn! {
            #[inline(never)]
            fn $name($($arg: $ty),*) {
                $f::<6, 3, 8>($($arg),*)
            }
        }
    };
}

/// Runs `f(scratch, dst chunk, src chunk)` on the first `c` chunks of `dst` and `src` (one per
/// channel, of the given lengths) in parallel, each thread with its own scratch of `scratch`
/// floats: the shape of every transform below (the filter transforms' chunks are output
/// channels).
fn per_channel(
    (dst, dst_len): (&mut [f32], usize),
    (src, src_len): (&[f32], usize),
    c: usize,
    scratch: usize,
    f: impl Fn(&mut [f32], &mut [f32], &[f32]) + Send + Sync,
) {
    dst.par_chunks_mut(dst_len).zip(src.par_chunks(src_len)).take(c).for_each_init(|| vec![0f32; scratch], |buf, (d, s)| f(buf, d, s));
}

/// [`per_channel`] over planes of an activation `src` stored as `T`: bf16 planes are widened
/// into a per-thread f32 plane (in cache) just before `f` reads them.
fn per_channel_in<T: Elem>(
    (dst, dst_len): (&mut [f32], usize),
    (src, src_len): (&[T], usize),
    c: usize,
    scratch: usize,
    f: impl Fn(&mut [f32], &mut [f32], &[f32]) + Send + Sync,
) {
    if let Some(src) = T::as_f32(src) {
        return per_channel((dst, dst_len), (src, src_len), c, scratch, f);
    }
    dst.par_chunks_mut(dst_len).zip(src.par_chunks(src_len)).take(c).for_each_init(
        || (vec![0f32; scratch], vec![0f32; src_len]),
        |(buf, wide), (d, s)| {
            T::widen(wide, s);
            f(buf, d, wide)
        },
    );
}

/// [`per_channel`] into planes of an activation `dst` stored as `T`: for bf16, `f` writes a
/// per-thread f32 plane, whose elements `written` are then rounded into `dst`'s plane.
fn per_channel_out<T: Elem>(
    (dst, dst_len): (&mut [T], usize),
    (src, src_len): (&[f32], usize),
    c: usize,
    scratch: usize,
    written: std::ops::Range<usize>,
    f: impl Fn(&mut [f32], &mut [f32], &[f32]) + Send + Sync,
) {
    if let Some(dst) = T::as_f32_mut(dst) {
        return per_channel((dst, dst_len), (src, src_len), c, scratch, f);
    }
    dst.par_chunks_mut(dst_len).zip(src.par_chunks(src_len)).take(c).for_each_init(
        || (vec![0f32; scratch], vec![0f32; dst_len]),
        |(buf, wide), (d, s)| {
            f(buf, wide, s);
            T::narrow(&mut d[written.clone()], &wide[written.clone()]);
        },
    );
}

/// U [Cout][α²][Cin] from `w` [Cout, Cin, r, r] into `u` (so each output channel's part is one
/// contiguous chunk; the GEMMs read U[ξ] [Cout, Cin] with row stride α²·Cin).
fn filter_transform(w: &[f32], cout: usize, cin: usize, t: &Tiles, u: &mut [f32]) {
    let (pos, taps) = (t.positions(), t.r * t.r);
    per_channel((u, pos * cin), (w, taps * cin), cout, (taps + t.r * t.alpha) * cin, |buf, uc, wc| filter_plane(buf, uc, wc, cin, t.m));
}

/// Runs `f` on U for `w` in a reused per-thread buffer: U is α²/r² times the size of the weights
/// (9.4 MB for 256 channels and 4×4 tiles of a 3×3 kernel), too much to allocate and zero on
/// every call.
fn with_filter<R>(w: &[f32], cout: usize, cin: usize, t: &Tiles, f: impl FnOnce(&[f32]) -> R) -> R {
    with_scratch_slot(1, t.positions() * cout * cin, |u| {
        filter_transform(w, cout, cin, t, u);
        f(u)
    })
}

simd_fn! {
    fn filter_plane(buf: &mut [f32], uc: &mut [f32], wc: &[f32], cin: usize, m: usize) {
        by_tile!(m, filter_plane_m(buf, uc, wc, cin), filter_plane6)
    }
}

out_of_line6!(filter_plane6, filter_plane_m(buf: &mut [f32], uc: &mut [f32], wc: &[f32], cin: usize));

#[inline(always)]
fn filter_plane_m<const M: usize, const R: usize, const AL: usize>(buf: &mut [f32], uc: &mut [f32], wc: &[f32], cin: usize) {
    // The taps as r² rows over the input channels, then H = G g (α×r rows) and U = H Gᵀ (α×α
    // rows, U's own layout), each step a long vector loop over the channels as in
    // `filter_adjoint_plane`. (With 8 channels at a time in registers the transform ran 2–3×
    // slower per call than its adjoint: 9 % of a 128² training step.)
    let s = scheme::<M>();
    let (g, h) = buf.split_at_mut(R * R * cin);
    for (c, taps) in wc.chunks_exact(R * R).take(cin).enumerate() {
        for (k, &v) in taps.iter().enumerate() {
            g[k * cin + c] = v;
        }
    }
    // H[i][j] = Σ_k G[i][k]·g[k][j], g[k][j] (tap row k, column j) at (k·r + j)·cin, H[i][j] at
    // (i·r + j)·cin.
    for j in 0..R {
        apply::<AL, R>(&s.g, g, at(j * cin, R * cin), h, at(j * cin, R * cin), cin);
    }
    // U[i][q] = Σ_j G[q][j]·H[i][j], at (i·α + q)·cin.
    for i in 0..AL {
        apply::<AL, R>(&s.g, h, at(i * R * cin, cin), uc, at(i * AL * cin, cin), cin);
    }
}

/// dW [Cout, Cin, r, r] from dU [Cout][α²][Cin] (the adjoint of `filter_transform`).
fn filter_transform_adjoint(du: &[f32], cout: usize, cin: usize, t: &Tiles) -> Vec<f32> {
    let (r, m) = (t.r, t.m);
    let mut dw = crate::ops::zeros(cout * cin * r * r);
    per_channel((&mut dw, r * r * cin), (du, t.positions() * cin), cout, (r * r + r * t.alpha) * cin, |buf, wc, uc| filter_adjoint_plane(buf, wc, uc, cin, m));
    dw
}

simd_fn! {
    fn filter_adjoint_plane(buf: &mut [f32], wc: &mut [f32], uc: &[f32], cin: usize, m: usize) {
        by_tile!(m, filter_adjoint_plane_m(buf, wc, uc, cin), filter_adjoint_plane6)
    }
}

out_of_line6!(filter_adjoint_plane6, filter_adjoint_plane_m(buf: &mut [f32], wc: &mut [f32], uc: &[f32], cin: usize));

#[inline(always)]
fn filter_adjoint_plane_m<const M: usize, const R: usize, const AL: usize>(buf: &mut [f32], wc: &mut [f32], uc: &[f32], cin: usize) {
    // H = Gᵀ dU (r×α), then dW = H G (r×r), each entry a vector over input channels.
    let s = scheme::<M>();
    let (h, o) = buf.split_at_mut(R * AL * cin);
    for l in 0..AL {
        apply::<R, AL>(&s.gt, uc, at(l * cin, AL * cin), h, at(l * cin, AL * cin), cin);
    }
    for k in 0..R {
        apply::<R, AL>(&s.gt, h, at(k * AL * cin, cin), o, at(k * R * cin, cin), cin);
    }
    for (k, ok) in o.chunks_exact(cin).take(R * R).enumerate() {
        for (wf, &v) in wc.chunks_exact_mut(R * R).zip(ok) {
            wf[k] = v;
        }
    }
}

/// V [C][α²][ts] for the tile rows `band` of `x` [C, sh, sw], padded as `t` says; reads past
/// the padded plane's edge (partial tiles) are zeros.
fn input_transform<T: Elem>(x: &[T], c: usize, t: &Tiles, band: (usize, usize), v: &mut [f32]) {
    let ts = t.band_stride(band);
    let scratch = 2 * t.alpha * t.row_width() + t.m * (t.tw + 1) + t.sw;
    per_channel_in((v, t.positions() * ts), (x, t.plane()), c, scratch, |buf, vc, plane| input_plane(buf, vc, plane, t, band, ts));
}

simd_fn! {
    fn input_plane(buf: &mut [f32], vc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        by_tile!(t.m, input_plane_m(buf, vc, plane, t, band, ts), input_plane6)
    }
}

out_of_line6!(input_plane6, input_plane_m(buf: &mut [f32], vc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize));

#[inline(always)]
fn input_plane_m<const M: usize, const _R: usize, const AL: usize>(buf: &mut [f32], vc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
    // Bᵀ down the columns of a whole tile row's α padded rows, then, on each result row split
    // into its m phases (column m·tj + j of tile tj is phase j mod m at tile tj + j div m),
    // Bᵀ across the tiles.
    let (s, tw, width) = (scheme::<M>(), t.tw, t.row_width());
    let pl = tw + 1;
    let (buf, tmp) = buf.split_at_mut(buf.len() - t.sw);
    let (padded, rest) = buf.split_at_mut(AL * width);
    let (cols, ph) = rest.split_at_mut(AL * width);
    for ti in band.0..band.1 {
        for (i, row) in padded.chunks_exact_mut(width).enumerate() {
            let r = M * ti + i;
            if r < t.h {
                // Columns past w stay zero from the scratch's allocation: load_row writes only
                // row[..w] (and a memset call per row cost more than the row's copy).
                t.load_row(plane, r, row, tmp);
                debug_assert!(row[t.w..].iter().all(|&v| v == 0.0));
            } else {
                row.fill(0.0);
            }
        }
        apply::<AL, AL>(&s.bt, padded, at(0, width), cols, at(0, width), width);
        let base = (ti - band.0) * tw;
        for k in 0..AL {
            deinterleave::<M>(&cols[k * width..][..width], ph, pl, pl);
            let mut src_at = [0; AL];
            for (j, o) in src_at.iter_mut().enumerate() {
                *o = (j % M) * pl + j / M;
            }
            apply::<AL, AL>(&s.bt, ph, src_at, vc, at(k * AL * ts + base, ts), tw);
        }
    }
}

/// Adds Σ_tiles B dV Bᵀ from dV [C][α²][ts] into `dx` [C, sh, sw] (the adjoint of
/// `input_transform`): tiles add into a padded band of rows, which is then folded back.
fn input_transform_adjoint(dv: &[f32], c: usize, t: &Tiles, band: (usize, usize), dx: &mut [f32]) {
    let ts = t.band_stride(band);
    let scratch = t.band_rows(band) * t.row_width() + 2 * t.positions() * (band.1 - band.0) * t.tw + t.m * (t.tw + 1) + t.sw;
    per_channel((dx, t.plane()), (dv, t.positions() * ts), c, scratch, |buf, plane, vc| input_adjoint_plane(buf, plane, vc, t, band, ts));
}

simd_fn! {
    fn input_adjoint_plane(buf: &mut [f32], plane: &mut [f32], vc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        by_tile!(t.m, input_adjoint_plane_m(buf, plane, vc, t, band, ts), input_adjoint_plane6)
    }
}

out_of_line6!(input_adjoint_plane6, input_adjoint_plane_m(buf: &mut [f32], plane: &mut [f32], vc: &[f32], t: &Tiles, band: (usize, usize), ts: usize));

#[inline(always)]
fn input_adjoint_plane_m<const M: usize, const _R: usize, const AL: usize>(buf: &mut [f32], plane: &mut [f32], vc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
    let (s, tw, width) = (scheme::<M>(), t.tw, t.row_width());
    let pl = tw + 1;
    let (buf, tmp) = buf.split_at_mut(buf.len() - t.sw);
    let r0 = M * band.0; // first padded row the band's tiles touch
    let nt = (band.1 - band.0) * tw;
    let (acc, rest) = buf.split_at_mut(t.band_rows(band) * width);
    let (cb, rest) = rest.split_at_mut(AL * AL * nt);
    let (dd, ph) = rest.split_at_mut(AL * AL * nt);
    acc.fill(0.0);
    // C = dV B (row k of C from row k of dV), then dD = B C (column j from column j), each over
    // all the band's tiles at once (long vector loops).
    for k in 0..AL {
        apply::<AL, AL>(&s.b, vc, at(k * AL * ts, ts), cb, at(k * AL * nt, nt), nt);
    }
    for j in 0..AL {
        apply::<AL, AL>(&s.b, cb, at(j * nt, AL * nt), dd, at(j * nt, AL * nt), nt);
    }
    for ti in band.0..band.1 {
        let base = (ti - band.0) * tw;
        // Entry j of row i of tile tj adds into padded row m·ti + i, column m·tj + j: phase
        // j mod m at tile tj + j div m, where the last r − 1 entries of a tile meet the first
        // r − 1 of the next.
        for i in 0..AL {
            let d = |j: usize| &dd[(i * AL + j) * nt + base..][..tw];
            for p in 0..M {
                let part = &mut ph[p * pl..][..pl];
                copy_short(&mut part[..tw], d(p));
                part[tw] = 0.0;
                if p + M < AL {
                    for (v, &e) in part[1..].iter_mut().zip(d(p + M)) {
                        *v += e;
                    }
                }
            }
            interleave::<M, true>(ph, pl, pl, &mut acc[(M * ti + i - r0) * width..][..width]);
        }
    }
    for (i, row) in acc.chunks_exact(width).enumerate() {
        let r = r0 + i;
        if r >= t.h {
            break;
        }
        t.fold_into(row, r, plane, tmp);
    }
}

/// Writes Aᵀ M A from M [C][α²][ts] into the tiles `band` of `y` [C, Ho, Wo].
fn output_transform<T: Elem>(m: &[f32], c: usize, t: &Tiles, band: (usize, usize), y: &mut [T]) {
    let ts = t.band_stride(band);
    let scratch = (t.m * t.alpha + t.m) * (band.1 - band.0) * t.tw;
    let written = (t.m * band.0).min(t.ho) * t.wo..(t.m * band.1).min(t.ho) * t.wo;
    per_channel_out((y, t.ho * t.wo), (m, t.positions() * ts), c, scratch, written, |buf, plane, mc| output_plane(buf, plane, mc, t, band, ts));
}

simd_fn! {
    fn output_plane(buf: &mut [f32], plane: &mut [f32], mc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        by_tile!(t.m, output_plane_m(buf, plane, mc, t, band, ts), output_plane6)
    }
}

out_of_line6!(output_plane6, output_plane_m(buf: &mut [f32], plane: &mut [f32], mc: &[f32], t: &Tiles, band: (usize, usize), ts: usize));

#[inline(always)]
fn output_plane_m<const M: usize, const _R: usize, const AL: usize>(buf: &mut [f32], plane: &mut [f32], mc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
    // R = Aᵀ M down the columns (m×α), then row i of every tile R A across the tiles, as its m
    // phases, each step over all the band's tiles at once (long vector loops), then the phases
    // of each tile row's output row i interleaved into the plane.
    let (s, tw, nt) = (scheme::<M>(), t.tw, (band.1 - band.0) * t.tw);
    let (r, ph) = buf.split_at_mut(M * AL * nt);
    for j in 0..AL {
        apply::<M, AL>(&s.at, mc, at(j * ts, AL * ts), r, at(j * nt, AL * nt), nt);
    }
    for i in 0..M {
        apply::<M, AL>(&s.at, r, at(i * AL * nt, nt), ph, at(0, nt), nt);
        for ti in band.0..band.1 {
            let row = M * ti + i;
            if row >= t.ho {
                break;
            }
            interleave::<M, false>(&ph[(ti - band.0) * tw..], nt, tw, &mut plane[row * t.wo..][..t.wo]);
        }
    }
}

/// dM [C][α²][ts] = A dY Aᵀ for the tiles `band` of `dy` [C, Ho, Wo] (the adjoint of
/// `output_transform`; outputs past the edge count as zero).
fn output_transform_adjoint<T: Elem>(dy: &[T], c: usize, t: &Tiles, band: (usize, usize), dm: &mut [f32]) {
    let ts = t.band_stride(band);
    let scratch = (t.m * t.m + t.alpha * t.m) * (band.1 - band.0) * t.tw;
    per_channel_in((dm, t.positions() * ts), (dy, t.ho * t.wo), c, scratch, |buf, mc, plane| output_adjoint_plane(buf, mc, plane, t, band, ts));
}

simd_fn! {
    fn output_adjoint_plane(buf: &mut [f32], mc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        by_tile!(t.m, output_adjoint_plane_m(buf, mc, plane, t, band, ts), output_adjoint_plane6)
    }
}

out_of_line6!(output_adjoint_plane6, output_adjoint_plane_m(buf: &mut [f32], mc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize));

#[inline(always)]
fn output_adjoint_plane_m<const M: usize, const _R: usize, const AL: usize>(buf: &mut [f32], mc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
    // Every tile's m output rows, each as its m phases (d[i][p] over the band's tiles), zeros
    // past the edges; then E = A dY (α×m, column p from column p) and dM = E Aᵀ (row k from
    // row k), each step over all the band's tiles at once (long vector loops).
    let (s, tw, nt) = (scheme::<M>(), t.tw, (band.1 - band.0) * t.tw);
    let (d, e) = buf.split_at_mut(M * M * nt);
    for (i, di) in d.chunks_exact_mut(M * nt).enumerate() {
        for ti in band.0..band.1 {
            let (row, base) = (M * ti + i, (ti - band.0) * tw);
            if row < t.ho {
                deinterleave::<M>(&plane[row * t.wo..][..t.wo], &mut di[base..], nt, tw);
            } else {
                for p in 0..M {
                    di[p * nt + base..][..tw].fill(0.0);
                }
            }
        }
    }
    for p in 0..M {
        apply::<AL, M>(&s.a, d, at(p * nt, M * nt), e, at(p * nt, M * nt), nt);
    }
    for k in 0..AL {
        apply::<AL, M>(&s.a, e, at(k * M * nt, nt), mc, at(k * AL * ts, ts), nt);
    }
}

/// For every ξ: `dst`[ξ] (rows of a [rows][α²][ts] buffer) = U[ξ] · `src`[ξ] (rows of a
/// [k][α²][ts] buffer), with U [Cout][α²][Cin] and U[ξ] [Cout, Cin] or, `transpose_u`, its
/// transpose [Cin, Cout].
#[allow(clippy::too_many_arguments)]
fn gemm_per_position(u: &[f32], transpose_u: bool, rows: usize, k: usize, src: &[f32], t: &Tiles, band: (usize, usize), dst: &mut [f32]) {
    let cin = if transpose_u { rows } else { k };
    let (tb, ts, pos) = ((band.1 - band.0) * t.tw, t.band_stride(band), t.positions());
    let lhs = if transpose_u { Mat { data: u, rs: 1, cs: pos * cin } } else { Mat { data: u, rs: pos * cin, cs: 1 } };
    let rhs = Mat { data: src, rs: pos * ts, cs: 1 };
    batch(pos, (rows, tb, k), (dst, ts, pos * ts), false, (lhs, cin), (rhs, ts));
}

/// Runs `step(image, band, first, second)` for every image that `images` yields (its slices)
/// and every band of its tiles, with per-thread scratch for the band's planes in the transform
/// domain: `first` holds `split` channels of them, `second` the other `cin + cout − split`.
fn for_each_band<I>(t: &Tiles, cin: usize, cout: usize, split: usize, images: impl Iterator<Item = I>, mut step: impl FnMut(&mut I, (usize, usize), &mut [f32], &mut [f32])) {
    for mut image in images {
        for band in t.bands(cin + cout) {
            let len = t.positions() * t.band_stride(band);
            with_scratch(len * (cin + cout), |buf| {
                let (first, second) = buf.split_at_mut(len * split);
                step(&mut image, band, first, second);
            });
        }
    }
}

/// `kept`: what [`FilterCache`] keeps for `w`, made earlier; without it (or U or the packed
/// weights in it) they are made here. Bf16 on AMX runs the direct kernels (see `direct`).
fn forward_kernel<T: Elem>(x: &[T], w: &[f32], cin: usize, cout: usize, t: &Tiles, kept: Option<&Kept>) -> Vec<T> {
    if direct::applies(cin, cout, t) {
        return direct::forward(x, w, cin, cout, t, kept.and_then(Kept::packed));
    }
    let kept = kept.and_then(Kept::transformed);
    let mut y = crate::ops::zeros(x.len() / (cin * t.plane()) * cout * t.ho * t.wo);
    let mut run = |u: &[f32]| {
        let images = x.chunks_exact(cin * t.plane()).zip(y.chunks_exact_mut(cout * t.ho * t.wo));
        for_each_band(t, cin, cout, cin, images, |(xb, yb), band, v, m| {
            input_transform(xb, cin, t, band, v);
            gemm_per_position(u, false, cout, cin, v, t, band, m);
            output_transform(m, cout, t, band, yb);
        });
    };
    match kept {
        Some(u) => run(u),
        None => with_filter(w, cout, cin, t, run),
    }
    y
}

/// dM of every band of every image, in the order [`for_each_band`] visits them: what the data
/// gradient computes and the filter gradient of the same backward pass needs again.
fn kept_dm_len(images: usize, cin: usize, cout: usize, t: &Tiles) -> usize {
    images * t.bands(cin + cout).iter().map(|&b| t.positions() * t.band_stride(b) * cout).sum::<usize>()
}

/// `keep`: where dM is written (then read from) instead of band scratch, sized by
/// [`kept_dm_len`], for [`filter_grad_kernel`] to reuse.
fn data_grad_kernel<T: Elem>(dy: &[T], w: &[f32], cin: usize, cout: usize, t: &Tiles, mut keep: Option<&mut [f32]>) -> Vec<f32> {
    if direct::applies(cin, cout, t) {
        return direct::data_grad(dy, w, cin, cout, t);
    }
    let mut dx = crate::ops::zeros(dy.len() / (cout * t.ho * t.wo) * cin * t.plane());
    let mut at = 0;
    with_filter(w, cout, cin, t, |u| {
        let images = dy.chunks_exact(cout * t.ho * t.wo).zip(dx.chunks_exact_mut(cin * t.plane()));
        for_each_band(t, cin, cout, cout, images, |(dyb, dxb), band, scratch, dv| {
            let len = t.positions() * t.band_stride(band) * cout;
            let dm = match keep.as_deref_mut() {
                Some(kept) => &mut kept[at..at + len],
                None => scratch,
            };
            at += len;
            output_transform_adjoint(dyb, cout, t, band, dm);
            // dV[ξ] [Cin, Tb] = U[ξ]ᵀ · dM[ξ]; U[ξ] is [Cout, Cin].
            gemm_per_position(u, true, cin, cout, dm, t, band, dv);
            input_transform_adjoint(dv, cin, t, band, dxb);
        });
    });
    dx
}

/// `kept`: dM as [`data_grad_kernel`] kept it for this `dy`, if it did.
fn filter_grad_kernel<T: Elem, U: Elem>(x: &[T], dy: &[U], cin: usize, cout: usize, t: &Tiles, kept: Option<&[f32]>) -> Vec<f32> {
    if direct::applies(cin, cout, t) {
        return direct::filter_grad(x, dy, cin, cout, t);
    }
    let pos = t.positions();
    let mut at = 0;
    // dU in the reused buffer: the first band's GEMMs overwrite it, the others add.
    with_scratch_slot(1, pos * cout * cin, |du| {
        let mut first = true;
        let images = x.chunks_exact(cin * t.plane()).zip(dy.chunks_exact(cout * t.ho * t.wo));
        for_each_band(t, cin, cout, cin, images, |(xb, dyb), band, v, scratch| {
            let (tb, ts) = ((band.1 - band.0) * t.tw, t.band_stride(band));
            input_transform(xb, cin, t, band, v);
            let len = pos * ts * cout;
            let dm: &[f32] = match kept {
                Some(kept) => &kept[at..at + len],
                None => {
                    output_transform_adjoint(dyb, cout, t, band, scratch);
                    scratch
                }
            };
            at += len;
            // dU[ξ] [Cout, Cin] (+)= dM[ξ] [Cout, Tb] · V[ξ]ᵀ [Tb, Cin].
            let lhs = Mat { data: dm, rs: pos * ts, cs: 1 };
            let rhs = Mat { data: v, rs: 1, cs: pos * ts };
            batch(pos, (cout, cin, tb), (du, cin, pos * cin), !first, (lhs, ts), (rhs, ts));
            first = false;
        });
        if first {
            // No band ran (an empty batch): the reused buffer holds an earlier call's dU.
            du.fill(0.0);
        }
        filter_transform_adjoint(du, cout, cin, t)
    })
}

/// A 3×3 convolution of C channels to C of a reflection-padded [H, W] input, in training (its
/// gradients will be taken): the residual blocks' convolutions, for `ops::residual`'s fused
/// block. Kernels as `conv2d_reflect` runs them, so the results are the same bit for bit.
pub(super) struct ReflectConv3x3 {
    t: Tiles,
    c: usize,
}

impl ReflectConv3x3 {
    /// `None` where `conv2d_reflect` would not take Winograd for this layer.
    pub(super) fn plan(c: usize, h: usize, w: usize) -> Result<Option<Self>> {
        if h < 2 || w < 2 || !applies(c, c, 3, 1, 0, (h, w)) {
            return Ok(None);
        }
        let t = Tiles::new(h, w, Pad::Reflect, Kernel::choose(3, h, w, Pad::Reflect, true)?)?;
        Ok(Some(Self { t, c }))
    }

    /// Whether its kernels are the direct bf16 ones (AMX), whose gradients read the input
    /// rounded to bf16: an input kept for them may be kept in bf16, with the same results.
    pub(super) fn rounds_input_to_bf16(&self) -> bool {
        direct::applies(self.c, self.c, &self.t)
    }

    /// `x` [B,C,H,W], `w` [C,C,3,3] → [B,C,H,W].
    pub(super) fn forward<T: Elem>(&self, x: &[T], w: &[f32]) -> Vec<T> {
        forward_kernel(x, w, self.c, self.c, &self.t, None)
    }

    /// The gradients (dx, dw) of the convolution of `x` by `w` from the gradient `dy` of its
    /// output, dM computed once for both (as `Forward::bwd`'s pair of ops share it).
    pub(super) fn grads<T: Elem, U: Elem>(&self, x: &[T], w: &[f32], dy: &[U]) -> (Vec<f32>, Vec<f32>) {
        let (c, t) = (self.c, &self.t);
        if direct::applies(c, c, t) {
            return (direct::data_grad(dy, w, c, c, t), direct::filter_grad(x, dy, c, c, t));
        }
        let len = kept_dm_len(dy.len() / (c * t.ho * t.wo), c, c, t);
        let mut buf = KeptDm::buffer(len);
        let dx = data_grad_kernel(dy, w, c, c, t, Some(&mut buf[..len]));
        let dw = filter_grad_kernel(x, dy, c, c, t, Some(&buf[..len]));
        KeptDm::recycle(buf);
        (dx, dw)
    }
}

/// (x [B,Cin,H,W], w [Cout,Cin,r,r]) → y [B,Cout,H+2p−r+1,W+2p−r+1], x padded by p as `pad` says.
/// With `kept`, U comes from (or goes to) that cache under the weight's id.
pub(super) struct Forward {
    pad: Pad,
    k: Kernel,
    kept: Option<(FilterCache, TensorId)>,
}

/// (dy [B,Cout,H+2p−r+1,W+2p−r+1], w [Cout,Cin,r,r]) → dx [B,Cin,H,W]. With `keep`, its dM
/// is left there for the [`FilterGrad`] of the same backward pass.
struct DataGrad {
    h: usize,
    w: usize,
    pad: Pad,
    k: Kernel,
    keep: Option<KeptDm>,
}

/// (x [B,Cin,H,W], dy [B,Cout,H+2p−r+1,W+2p−r+1]) → dW [Cout,Cin,r,r]. With `kept` filled by
/// the [`DataGrad`] of the same `dy`, its dM is read instead of computed again.
struct FilterGrad {
    pad: Pad,
    k: Kernel,
    kept: Option<KeptDm>,
}

/// dM handed from a backward pass's data gradient to its filter gradient: the output adjoint
/// A dY Aᵀ is the same for both and costs as much as the forward's output transform. The buffer
/// (2.25× dy for 3×3 kernels, 4× for 4×4) is taken from and returned to a per-thread pool, so
/// it is not allocated and faulted in on every layer.
#[derive(Clone, Default)]
struct KeptDm(Arc<Mutex<Option<Vec<f32>>>>);

thread_local! {
    static DM_POOL: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl KeptDm {
    /// A pooled buffer of at least `len` floats (contents unspecified). It only grows, so it is
    /// zeroed once per size reached, not on every layer.
    fn buffer(len: usize) -> Vec<f32> {
        let mut buf = DM_POOL.with(std::cell::Cell::take);
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        buf
    }

    fn put(&self, buf: Vec<f32>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(buf);
    }

    fn take(&self) -> Option<Vec<f32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn recycle(buf: Vec<f32>) {
        DM_POOL.with(|p| p.set(buf));
    }
}

fn check_weight(l: &Layout, cin: usize, r: usize) -> Result<usize> {
    let (cout, cin_w, kh, kw) = l.shape().dims4()?;
    if (cin_w, kh, kw) != (cin, r, r) {
        bail!("winograd conv: weight {:?} does not fit {cin} input channels and a {r}x{r} kernel", l.dims());
    }
    Ok(cout)
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "winograd-conv"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cin, h, w) = l1.shape().dims4()?;
        let cout = check_weight(l2, cin, self.k.r)?;
        let t = Tiles::new(h, w, self.pad, self.k)?;
        let w = data::<f32>(s2, l2)?;
        let kept = self.kept.as_ref().and_then(|(cache, id)| cache.kept(*id, w, cout, cin, &t));
        let y = match s1 {
            CpuStorage::BF16(_) => CpuStorage::BF16(forward_kernel(data::<bf16>(s1, l1)?, w, cin, cout, &t, kept.as_deref())),
            _ => CpuStorage::F32(forward_kernel(data::<f32>(s1, l1)?, w, cin, cout, &t, kept.as_deref())),
        };
        Ok((y, Shape::from((bsz, cout, t.ho, t.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let (pad, k) = (self.pad, self.k);
        let kept = (x.track_op() && w.track_op()).then(KeptDm::default);
        let dx = x.track_op().then(|| dy.apply_op2(w, DataGrad { h, w: wd, pad, k, keep: kept.clone() })).transpose()?;
        let dw = w.track_op().then(|| x.apply_op2(&dy, FilterGrad { pad, k, kept })).transpose()?;
        Ok(super::made_grads((dx, dw)))
    }
}

impl CustomOp2 for DataGrad {
    fn name(&self) -> &'static str {
        "winograd-conv-data-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cout, ho, wo) = l1.shape().dims4()?;
        let (cout_w, cin, _, _) = l2.shape().dims4()?;
        if cout_w != cout || check_weight(l2, cin, self.k.r).is_err() {
            bail!("winograd conv backward: gradient {:?} does not fit weight {:?}", l1.dims(), l2.dims());
        }
        let t = Tiles::new(self.h, self.w, self.pad, self.k)?;
        if (t.ho, t.wo) != (ho, wo) {
            bail!("winograd conv backward: gradient {ho}x{wo} does not match input {}x{}", self.h, self.w);
        }
        let w = data::<f32>(s2, l2)?;
        let run = |keep: Option<&mut [f32]>| -> Result<Vec<f32>> {
            // dx is summed over bands in f32, then rounded once.
            Ok(match s1 {
                CpuStorage::BF16(_) => data_grad_kernel(data::<bf16>(s1, l1)?, w, cin, cout, &t, keep),
                _ => data_grad_kernel(data::<f32>(s1, l1)?, w, cin, cout, &t, keep),
            })
        };
        let dx = match &self.keep {
            // The direct kernels keep no dM.
            Some(keep) if !direct::applies(cin, cout, &t) => {
                let len = kept_dm_len(bsz, cin, cout, &t);
                let mut buf = KeptDm::buffer(len);
                let dx = run(Some(&mut buf[..len]))?;
                keep.put(buf);
                dx
            }
            _ => run(None)?,
        };
        Ok((act_storage(dx, s1)?, Shape::from((bsz, cin, self.h, self.w))))
    }

    fn bwd(&self, dy: &Tensor, w: &Tensor, _res: &Tensor, ddx: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ddx = ddx.contiguous()?;
        let (pad, k) = (self.pad, self.k);
        let ddy = dy.track_op().then(|| ddx.apply_op2(w, Forward { pad, k, kept: None })).transpose()?;
        let dw = w.track_op().then(|| ddx.apply_op2(dy, FilterGrad { pad, k, kept: None })).transpose()?;
        Ok(super::made_grads((ddy, dw)))
    }
}

impl CustomOp2 for FilterGrad {
    fn name(&self) -> &'static str {
        "winograd-conv-filter-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cin, h, w) = l1.shape().dims4()?;
        let (bg, cout, ho, wo) = l2.shape().dims4()?;
        let t = Tiles::new(h, w, self.pad, self.k)?;
        if (bg, ho, wo) != (bsz, t.ho, t.wo) {
            bail!("winograd conv filter gradient: gradient {:?} does not match input {:?}", l2.dims(), l1.dims());
        }
        let len = kept_dm_len(bsz, cin, cout, &t);
        let kept = self.kept.as_ref().and_then(KeptDm::take).filter(|buf| buf.len() >= len);
        let dm = kept.as_ref().map(|b| &b[..len]);
        let dw = match (s1, s2) {
            (CpuStorage::BF16(_), CpuStorage::BF16(_)) => filter_grad_kernel(data::<bf16>(s1, l1)?, data::<bf16>(s2, l2)?, cin, cout, &t, dm),
            // A fused op's gradient (`ops::conv_norm`) stays f32.
            (CpuStorage::BF16(_), CpuStorage::F32(_)) => filter_grad_kernel(data::<bf16>(s1, l1)?, data::<f32>(s2, l2)?, cin, cout, &t, dm),
            _ => filter_grad_kernel(&act_data(s1, l1)?, &act_data(s2, l2)?, cin, cout, &t, dm),
        };
        if let Some(buf) = kept {
            KeptDm::recycle(buf);
        }
        Ok((CpuStorage::F32(dw), Shape::from((cout, cin, t.r, t.r))))
    }

    fn bwd(&self, x: &Tensor, dy: &Tensor, _res: &Tensor, ddw: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ddw = ddw.contiguous()?;
        let (_, _, h, w) = x.dims4()?;
        let (pad, k) = (self.pad, self.k);
        let dx = x.track_op().then(|| dy.apply_op2(&ddw, DataGrad { h, w, pad, k, keep: None })).transpose()?;
        let ddy = dy.track_op().then(|| x.apply_op2(&ddw, Forward { pad, k, kept: None })).transpose()?;
        Ok(super::made_grads((dx, ddy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (x, w, dy) test inputs for `t`.
    fn inputs(b: usize, cin: usize, cout: usize, t: &Tiles) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let val = super::super::test_value;
        let x = (0..b * cin * t.plane()).map(val).collect();
        let w = (0..cout * cin * t.r * t.r).map(|i| val(i + 3)).collect();
        let dy = (0..b * cout * t.ho * t.wo).map(|i| val(i + 5)).collect();
        (x, w, dy)
    }

    type Outputs = (Vec<f32>, Vec<f32>, Vec<f32>);

    /// A kept U gives the same outputs bit for bit; it is kept from a weight's second call, never
    /// for a weight with autograd (which may change in place) and never past `KEEP_TILES`.
    #[test]
    fn kept_filters_change_nothing_and_only_keep_constant_weights() -> Result<()> {
        if super::super::settings().winograd_tile.is_some() {
            eprintln!("skipped: CS_WINOGRAD_TILE is set");
            return Ok(());
        }
        let dev = candle_core::Device::Cpu;
        let k = Kernel::new(3, 4)?;
        let t = Tiles::new(12, 12, Pad::Reflect, k)?;
        let (x, w, _) = inputs(2, 16, 24, &t);
        let x = Tensor::from_vec(x, (2, 16, 12, 12), &dev)?;
        let w = Tensor::from_vec(w, (24, 16, 3, 3), &dev)?;
        kept_from_second_call_change_nothing(&x, &w)?;
        // A trained weight: its values change under the same id, so nothing is kept.
        let var = candle_core::Var::from_tensor(&w)?;
        let cache = FilterCache::default();
        for scale in [1.0, 2.0, 3.0] {
            var.set(&(&w * scale)?)?;
            let y = cache.scope(|| conv(&x, var.as_tensor(), Pad::Reflect))?;
            let want = conv(&x, &(&w * scale)?, Pad::Reflect)?;
            assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, want.flatten_all()?.to_vec1::<f32>()?);
        }
        assert_eq!(cache.kept_count(), 0);
        // 33 × 33 tiles of a 134² input (132² outputs) are past KEEP_TILES.
        let big = Tensor::zeros((1, 16, 134, 134), candle_core::DType::F32, &dev)?;
        for _ in 0..3 {
            cache.scope(|| conv(&big, &w, Pad::None))?;
        }
        assert_eq!(cache.kept_count(), 0);
        Ok(())
    }

    /// In bf16 on AMX the direct kernels' packed weights are kept instead of U, at any size
    /// (past `KEEP_TILES` here), and change nothing either.
    #[test]
    fn kept_packed_weights_change_nothing() -> Result<()> {
        use super::super::gemm_bf16::{isa, Isa};
        use crate::ops::{with_precision, Precision};
        if isa() != Some(Isa::Amx) {
            eprintln!("skipped: this CPU has no AMX (or CS_NO_AMX is set), so no convolution takes the direct kernels");
            return Ok(());
        }
        let dev = candle_core::Device::Cpu;
        let t = Tiles::new(134, 134, Pad::Reflect, Kernel::new(3, 4)?)?;
        let (x, w, _) = inputs(1, 32, 64, &t);
        let x = Tensor::from_vec(x, (1, 32, 134, 134), &dev)?;
        let w = Tensor::from_vec(w, (64, 32, 3, 3), &dev)?;
        with_precision(Precision::Bf16, || kept_from_second_call_change_nothing(&x, &w))
    }

    /// Three calls of `conv(x, w)` in one `FilterCache`: `w`'s filters are kept from the second
    /// call on, and every call gives the uncached output bit for bit.
    fn kept_from_second_call_change_nothing(x: &Tensor, w: &Tensor) -> Result<()> {
        let plain = conv(x, w, Pad::Reflect)?.flatten_all()?.to_vec1::<f32>()?;
        let cache = FilterCache::default();
        for call in 1..=3 {
            let y = cache.scope(|| conv(x, w, Pad::Reflect))?.flatten_all()?.to_vec1::<f32>()?;
            assert!(y.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "call {call}");
            assert_eq!(cache.kept_count(), usize::from(call > 1), "call {call}");
        }
        Ok(())
    }

    fn run_kernels(cin: usize, cout: usize, t: &Tiles, (x, w, dy): &Outputs) -> Outputs {
        (forward_kernel(x, w, cin, cout, t, None), data_grad_kernel(dy, w, cin, cout, t, None), filter_grad_kernel(x, dy, cin, cout, t, None))
    }

    /// The direct convolution, its data gradient and its filter gradient, in f64.
    fn direct(b: usize, cin: usize, cout: usize, t: &Tiles, (x, w, dy): &Outputs) -> [Vec<f64>; 3] {
        // Padded index → stored index (None: a zero).
        let index = |n: usize| -> Vec<Option<usize>> {
            match t.pad {
                Pad::Zero => (0..n + 2).map(|i| (1..=n).contains(&i).then(|| i - 1)).collect(),
                pad => super::super::reflect_indices(n, pad.size()).into_iter().map(|i| Some(i as usize)).collect(),
            }
        };
        let (rows, cols) = (index(t.sh), index(t.sw));
        let mut y = vec![0f64; b * cout * t.ho * t.wo];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; w.len()];
        let r = t.r;
        for n in 0..b {
            for co in 0..cout {
                for ci in 0..cin {
                    for (i, j, ki, kj) in (0..t.ho).flat_map(|i| (0..t.wo).flat_map(move |j| (0..r * r).map(move |k| (i, j, k / r, k % r)))) {
                        let (Some(row), Some(col)) = (rows[i + ki], cols[j + kj]) else { continue };
                        let xi = ((n * cin + ci) * t.sh + row) * t.sw + col;
                        let wi = ((co * cin + ci) * r + ki) * r + kj;
                        let yi = ((n * cout + co) * t.ho + i) * t.wo + j;
                        y[yi] += w[wi] as f64 * x[xi] as f64;
                        dx[xi] += w[wi] as f64 * dy[yi] as f64;
                        dw[wi] += x[xi] as f64 * dy[yi] as f64;
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn max_rel_diff(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f64, |m, (&p, &q)| m.max((p as f64 - q).abs())) / scale
    }

    /// All three algorithms, padded (3×3) and not, with outputs that do and do not fill the last
    /// tiles: all three kernels against the direct sums.
    #[test]
    fn kernels_match_direct_convolution() {
        let (b, cin, cout) = (2, 5, 3);
        use Pad::{None as No, Reflect, Zero};
        let cases3 = [(9, 8, No), (7, 6, Reflect), (6, 11, Reflect), (3, 3, No), (2, 2, Reflect), (12, 10, Reflect), (7, 6, Zero), (1, 1, Zero), (9, 11, Zero)];
        let cases4 = [(9, 8, No), (4, 4, No), (5, 13, No), (12, 10, No), (7, 6, No), (7, 6, Zero), (2, 2, Zero), (10, 13, Zero)];
        let runs = [(3, 2), (3, 4), (3, 6)].map(|(r, m)| (Kernel::new(r, m).unwrap(), &cases3[..]));
        for (k, cases) in runs.into_iter().chain([(Kernel::new(4, 4).unwrap(), &cases4[..])]) {
            for &(sh, sw, pad) in cases {
                let t = Tiles::new(sh, sw, pad, k).unwrap();
                let data = inputs(b, cin, cout, &t);
                let ours = run_kernels(cin, cout, &t, &data);
                let want = direct(b, cin, cout, &t, &data);
                for (name, a, w) in [("forward", &ours.0, &want[0]), ("data grad", &ours.1, &want[1]), ("filter grad", &ours.2, &want[2])] {
                    let d = max_rel_diff(a, w);
                    // f32 rounding in the transforms: up to 4.4e-6 of the largest value here
                    // (F(6×6, 3×3): 8.9e-6).
                    let tol = if k.m == 6 { 3e-5 } else { 1e-5 };
                    assert!(d < tol, "{k:?} {sh}x{sw} pad {pad:?} {name}: {d}");
                }
            }
        }
    }

    /// On a CPU with AMX, bf16 convolutions take the direct tile kernels (`direct`): all three
    /// against the exact sums of bf16-rounded operands (so only f32 summation error is left), for
    /// every padding, 3×3 and 4×4, outputs that do and do not fill the 16-pixel segments, and as
    /// many or more input channels than output ones; CUT's blur up-sampling against fp32 Winograd.
    #[test]
    fn amx_direct_kernels_match_exact_sums_of_rounded_operands() {
        use crate::ops::{with_precision, Precision};
        use super::super::gemm_bf16::{round_to_bf16, Isa};
        if super::super::gemm_bf16::isa() != Some(Isa::Amx) {
            eprintln!("skipped: this CPU has no AMX (or CS_NO_AMX is set), so bf16 convolutions do not take the AMX direct kernels");
            return;
        }
        use Pad::{None as No, Reflect, UpZero, Zero};
        let cases = [(9, 8, No, 3), (7, 6, Reflect, 3), (6, 11, Reflect, 3), (12, 10, Reflect, 3), (33, 20, Reflect, 3), (7, 6, Zero, 3), (1, 1, Zero, 3), (9, 17, Zero, 3), (9, 8, No, 4), (5, 13, No, 4), (7, 6, Zero, 4), (10, 13, Zero, 4), (17, 16, Zero, 4), (4, 4, UpZero, 3), (5, 7, UpZero, 3)];
        for (cin, cout) in [(32, 64), (64, 32)] {
            for &(sh, sw, pad, r) in &cases {
                let t = Tiles::new(sh, sw, pad, Kernel::new(r, if r == 3 { 4 } else { 3 }).unwrap()).unwrap();
                let round = |v: Vec<f32>| v.into_iter().map(round_to_bf16).collect::<Vec<_>>();
                let (x, w, dy) = inputs(2, cin, cout, &t);
                let data = (round(x), round(w), round(dy));
                assert!(with_precision(Precision::Bf16, || direct::applies(cin, cout, &t)));
                let ours = with_precision(Precision::Bf16, || run_kernels(cin, cout, &t, &data));
                let want = if pad == UpZero {
                    let fp32 = run_kernels(cin, cout, &t, &data);
                    [fp32.0, fp32.1, fp32.2].map(|v| v.into_iter().map(f64::from).collect())
                } else {
                    direct(2, cin, cout, &t, &data)
                };
                for (name, a, w) in [("forward", &ours.0, &want[0]), ("data grad", &ours.1, &want[1]), ("filter grad", &ours.2, &want[2])] {
                    let d = max_rel_diff(a, w);
                    // The blurred, up-sampled input is made in f32 and rounded to bf16 after (a
                    // padding bug would be off by the order of the values).
                    let tol = if pad == UpZero { 1e-2 } else { 2e-5 };
                    assert!(d < tol, "{cin}->{cout} {r}x{r} {sh}x{sw} pad {pad:?} {name}: {d}");
                }
            }
        }
    }

    /// CUT's blur up-sampling inside the transforms (which `direct` does not model) gives the
    /// same three results with F(6×6, 3×3) as with F(4×4, 3×3), within their rounding.
    #[test]
    fn six_by_six_tiles_blur_up_as_four_by_four_ones() {
        let (b, cin, cout) = (2, 5, 3);
        for (sh, sw) in [(4, 4), (5, 7), (9, 6), (1, 3)] {
            let t4 = Tiles::new(sh, sw, Pad::UpZero, Kernel::new(3, 4).unwrap()).unwrap();
            let t6 = Tiles::new(sh, sw, Pad::UpZero, Kernel::new(3, 6).unwrap()).unwrap();
            let data = inputs(b, cin, cout, &t4);
            let (four, six) = (run_kernels(cin, cout, &t4, &data), run_kernels(cin, cout, &t6, &data));
            for (a, w) in [(&six.0, &four.0), (&six.1, &four.1), (&six.2, &four.2)] {
                let w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
                let d = max_rel_diff(a, &w);
                assert!(d < 3e-5, "{sh}x{sw}: {d}");
            }
        }
    }

    /// fp32 keeps F(4×4, 3×3) (bit for bit earlier versions' results); a bf16 translation takes
    /// F(6×6, 3×3) for outputs of 128² and more (reflection padded or not), training never.
    #[test]
    fn bf16_translations_take_six_by_six_tiles_for_large_outputs() {
        use crate::ops::{with_precision, Precision};
        if crate::ops::settings().winograd_tile.is_some() {
            eprintln!("skipped: CS_WINOGRAD_TILE is set");
            return;
        }
        let m = |p, h, pad, grad| with_precision(p, || Kernel::choose(3, h, h, pad, grad).unwrap().m);
        for (h, pad) in [(32, Pad::Reflect), (256, Pad::Reflect), (258, Pad::None), (16, Pad::Zero)] {
            assert_eq!(m(Precision::Fp32, h, pad, false), 4);
        }
        assert_eq!(m(Precision::Bf16, 64, Pad::Reflect, false), 4);
        assert_eq!(m(Precision::Bf16, 126, Pad::None, false), 4);
        assert_eq!(m(Precision::Bf16, 128, Pad::Reflect, false), 6);
        assert_eq!(m(Precision::Bf16, 258, Pad::None, false), 6);
        assert_eq!(m(Precision::Bf16, 256, Pad::Reflect, true), 4);
        assert_eq!(with_precision(Precision::Bf16, || Kernel::choose(4, 256, 256, Pad::Zero, false).unwrap().m), 3);
    }

    /// In bf16 the PatchGAN's small 4×4 layers take im2col (bf16 products) instead of Winograd;
    /// fp32 and the 3×3 layers keep Winograd.
    #[test]
    fn bf16_takes_im2col_for_small_four_by_four_outputs() {
        use crate::ops::{with_precision, Precision};
        if crate::ops::settings().no_winograd {
            eprintln!("skipped: CS_NO_WINOGRAD is set");
            return;
        }
        let takes = |p, k, out| with_precision(p, || applies(256, 512, k, 1, 1, out));
        for out in [(7, 7), (15, 15), (31, 31)] {
            assert!(takes(Precision::Fp32, 4, out));
            assert!(takes(Precision::Bf16, 3, out));
        }
        if crate::ops::precision::bf16_hardware().is_none() {
            eprintln!("skipped the bf16 half: this CPU has no AVX512-BF16, so bf16 runs fp32");
            return;
        }
        assert!(!takes(Precision::Bf16, 4, (15, 15)));
        assert!(!takes(Precision::Bf16, 4, (21, 21)), "7×7 = 49 tiles");
        assert!(takes(Precision::Bf16, 4, (22, 22)), "8×8 = 64 tiles");
        assert!(takes(Precision::Bf16, 4, (31, 31)));
    }

    /// The filter gradient of an empty batch is zero, not what the reused buffer held from the
    /// call before.
    #[test]
    fn filter_gradient_of_an_empty_batch_is_zero() {
        let (cin, cout) = (5, 3);
        let t = Tiles::new(7, 6, Pad::Reflect, Kernel::new(3, 4).unwrap()).unwrap();
        let (x, _, dy) = inputs(2, cin, cout, &t);
        assert!(filter_grad_kernel(&x, &dy, cin, cout, &t, None).iter().any(|v| *v != 0.0));
        let empty = filter_grad_kernel::<f32, f32>(&[], &[], cin, cout, &t, None);
        assert_eq!(empty.len(), cout * cin * 9);
        assert!(empty.iter().all(|v| *v == 0.0), "stale dW: {empty:?}");
    }

    #[test]
    fn four_by_four_kernels_take_three_by_three_tiles_and_no_reflection() {
        assert_eq!(Kernel::new(4, 2).unwrap(), Kernel { r: 4, m: 3 });
        assert!(Kernel::new(5, 4).is_err());
        assert!(Tiles::new(8, 8, Pad::Reflect, Kernel::new(4, 4).unwrap()).is_err());
        assert!(Tiles::new(3, 8, Pad::None, Kernel::new(4, 4).unwrap()).is_err());
        assert!(Tiles::new(2, 2, Pad::Zero, Kernel::new(4, 4).unwrap()).is_ok());
    }

    /// The filter gradient from the dM its data gradient kept equals the one that computes it.
    #[test]
    fn kept_dm_gives_the_same_filter_gradient() {
        let (b, cin, cout) = (2, 3, 4);
        for (k, pad) in [(Kernel::new(3, 4).unwrap(), Pad::Reflect), (Kernel::new(4, 4).unwrap(), Pad::Zero)] {
            let t = Tiles::new(14, 13, pad, k).unwrap();
            let (x, w, dy) = inputs(b, cin, cout, &t);
            BAND_LIMIT.with(|l| l.set(2000)); // several bands
            assert!(t.bands(cin + cout).len() > 1);
            let mut kept = vec![f32::NAN; kept_dm_len(b, cin, cout, &t)];
            let dx = data_grad_kernel(&dy, &w, cin, cout, &t, Some(&mut kept));
            let dw = filter_grad_kernel(&x, &dy, cin, cout, &t, Some(&kept));
            assert_eq!(dx, data_grad_kernel(&dy, &w, cin, cout, &t, None));
            assert_eq!(dw, filter_grad_kernel(&x, &dy, cin, cout, &t, None));
            BAND_LIMIT.with(|l| l.set(BAND_FLOATS));
        }
    }

    /// One tile row per band gives the same results as one band, for all three kernels.
    #[test]
    fn banded_kernels_match_single_band() {
        let (b, cin, cout) = (2, 3, 4);
        for (r, m) in [(3, 2), (3, 4), (3, 6), (4, 3)] {
            let k = Kernel::new(r, m).unwrap();
            let pad = if r == 3 { Pad::Reflect } else { Pad::Zero };
            for t in [Tiles::new(9, 8, Pad::None, k).unwrap(), Tiles::new(7, 6, pad, k).unwrap(), Tiles::new(14, 13, Pad::Zero, k).unwrap()] {
                let data = inputs(b, cin, cout, &t);
                let whole = run_kernels(cin, cout, &t, &data);
                BAND_LIMIT.with(|l| l.set(1));
                assert_eq!(t.bands(cin + cout).len(), t.th);
                let banded = run_kernels(cin, cout, &t, &data);
                BAND_LIMIT.with(|l| l.set(BAND_FLOATS));
                for (a, b) in [(&whole.0, &banded.0), (&whole.1, &banded.1), (&whole.2, &banded.2)] {
                    assert!(a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-5), "{k:?} {t:?}");
                }
            }
        }
    }

    /// The AMX direct kernels read bf16 activations a row at a time as they pack them: their
    /// forward pass on bf16 images gives the widened images' results, rounded, bit for bit, at
    /// every padding (CUT's blur up-sampling included).
    #[test]
    fn amx_direct_forward_on_bf16_activations_rounds_the_f32_result() {
        use super::super::gemm_bf16::Isa;
        use crate::ops::{with_precision, Precision};
        if super::super::gemm_bf16::isa() != Some(Isa::Amx) {
            eprintln!("skipped: this CPU has no AMX (or CS_NO_AMX is set), so bf16 convolutions do not take the AMX direct kernels");
            return;
        }
        use Pad::{None as No, Reflect, UpZero, Zero};
        let (cin, cout) = (32, 64);
        for (sh, sw, pad, r) in [(7, 6, Reflect, 3), (12, 10, Reflect, 3), (9, 8, No, 3), (7, 6, Zero, 4), (5, 7, UpZero, 3)] {
            let t = Tiles::new(sh, sw, pad, Kernel::new(r, if r == 3 { 4 } else { 3 }).unwrap()).unwrap();
            let x16: Vec<bf16> = inputs(2, cin, cout, &t).0.iter().map(|&v| bf16::from_f32(v)).collect();
            let x32: Vec<f32> = x16.iter().map(|v| v.to_f32()).collect();
            let w = inputs(2, cin, cout, &t).1;
            with_precision(Precision::Bf16, || {
                assert!(direct::applies(cin, cout, &t));
                let want: Vec<bf16> = forward_kernel(&x32, &w, cin, cout, &t, None).into_iter().map(bf16::from_f32).collect();
                let got: Vec<bf16> = forward_kernel(&x16, &w, cin, cout, &t, None);
                assert!(got == want, "{sh}x{sw} pad {pad:?}");
            });
        }
    }

    /// On bf16 activations (converted a plane at a time) one band per tile row gives the single
    /// band's results: each band rounds only the output rows it wrote.
    #[test]
    fn banded_kernels_on_bf16_activations_match_single_band() {
        let (b, c) = (2, 3);
        let t = Tiles::new(14, 13, Pad::Reflect, Kernel::new(3, 4).unwrap()).unwrap();
        let (x, w, dy) = inputs(b, c, c, &t);
        let to_bf16 = |v: &[f32]| v.iter().map(|&f| bf16::from_f32(f)).collect::<Vec<_>>();
        let (x, dy) = (to_bf16(&x), to_bf16(&dy[..b * c * t.ho * t.wo]));
        let run = || {
            let y: Vec<bf16> = forward_kernel(&x, &w, c, c, &t, None);
            (y, data_grad_kernel(&dy, &w, c, c, &t, None), filter_grad_kernel(&x, &dy, c, c, &t, None))
        };
        let whole = run();
        BAND_LIMIT.with(|l| l.set(1));
        assert_eq!(t.bands(2 * c).len(), t.th);
        let banded = run();
        BAND_LIMIT.with(|l| l.set(BAND_FLOATS));
        assert_eq!(whole.0, banded.0);
        for (a, b) in [(&whole.1, &banded.1), (&whole.2, &banded.2)] {
            let d = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            let scale = a.iter().fold(0f32, |m, p| m.max(p.abs()));
            assert!(d <= 1e-5 * scale.max(1.0), "{d:e} of {scale:e}");
        }
    }

    /// The four band transforms alone, on the residual blocks' shapes (F(4×4, 3×3), reflection
    /// padding), best of 40 runs: `cargo test --release --lib winograd::tests::timing --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let k = Kernel::new(3, 4).unwrap();
        for (hw, c) in [(32usize, 256usize), (64, 256), (128, 128)] {
            let t = Tiles::new(hw, hw, Pad::Reflect, k).unwrap();
            let band = (0, t.th);
            let len = c * t.positions() * t.band_stride(band);
            let (x, _, y) = inputs(1, c, c, &t);
            let (mut v, mut m, mut dx, mut out) = (vec![0f32; len], vec![0f32; len], vec![0f32; x.len()], vec![0f32; y.len()]);
            let best = |f: &mut dyn FnMut()| {
                (0..40).map(|_| {
                    let t0 = std::time::Instant::now();
                    f();
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
            };
            let input = best(&mut || input_transform(&x, c, &t, band, &mut v));
            let output = best(&mut || output_transform(&v, c, &t, band, &mut out));
            let output_adj = best(&mut || output_transform_adjoint(&y, c, &t, band, &mut m));
            let input_adj = best(&mut || input_transform_adjoint(&m, c, &t, band, &mut dx));
            eprintln!("{hw}x{hw}, {c} channels: input {input:.3} ms, output {output:.3} ms, output adjoint {output_adj:.3} ms, input adjoint {input_adj:.3} ms");
        }
    }
}
