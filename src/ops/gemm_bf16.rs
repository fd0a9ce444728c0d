//! Matrix products in bf16 with f32 accumulation, for `--precision bf16`: operands are rounded to
//! bf16 (round to nearest even) as they are packed, pairs of products are summed in f32 by
//! AMX's tile multiply `tdpbf16ps` where the CPU has AMX, else by AVX512-BF16's `vdpbf16ps`, and
//! the destination stays f32 — the recipe PyTorch's autocast gives a convolution. Same operand
//! conventions as `gemm` (strided f32 `Mat`s, a row-strided f32 destination), so the convolution
//! kernels swap one product for the other and change nothing else;
//! `gemm_made` also takes a B (or Bᵀ) made segment by segment as it is packed (a convolution's
//! im2col matrix, read from the image in place instead of stored in f32 first).
//!
//! Layout (BLIS-style, with the vector along the destination's rows): B is packed in panels of
//! `NR` columns, each k-pair of a column one u32 (bf16 of row 2p in the low half, row 2p+1 in the
//! high half), which is what `vdpbf16ps` multiplies lane by lane and what an AMX B tile is (16
//! pairs × 16 columns, `NR` columns apart). A is packed in panels of `Isa::mr` rows with the same
//! pairs: for AVX512-BF16 pair-major (each pair broadcast to all lanes; the micro-kernel keeps a
//! 12×32 block of the destination in 24 registers), for AMX row-major (a row's pairs contiguous,
//! as an A tile reads them; the micro-kernel keeps a 32×32 block in four accumulator tiles, and a
//! block's depth is padded with zero pairs to a multiple of a tile's 16).

use super::gemm::{from_line, with_taken, Mat, SharedDst};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// Columns per micro-kernel call: two 16-lane vectors, or two AMX tiles' 16 columns.
const NR: usize = 32;
/// The deepest packed block of any kernel (`Isa::kc`).
const KC_MAX: usize = 1024;
/// Most columns of B a task packs at once.
const NC: usize = 512;
/// Pairs of k in one AMX tile row (64 bytes): an A tile is 16 rows × 16 pairs, a B tile 16 pairs
/// × 16 columns, an accumulator 16 × 16 f32.
pub(crate) const TILE_PAIRS: usize = 16;

/// The instruction sets the bf16 products have kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX512-BF16's `vdpbf16ps` (16 lanes, pairs of products).
    Avx512Bf16,
    /// AMX's `tdpbf16ps` on 16×32 by 32×16 bf16 tiles (Intel Sapphire Rapids and later).
    Amx,
}

impl Isa {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Avx512Bf16 => "AVX512-BF16",
            Isa::Amx => "AMX",
        }
    }

    /// Rows of the destination per micro-kernel call.
    const fn mr(self) -> usize {
        match self {
            Isa::Avx512Bf16 => 12,
            Isa::Amx => 32,
        }
    }

    /// Most rows of A packed at once (a multiple of `mr`): the packed block stays in L2.
    const fn mc(self) -> usize {
        match self {
            Isa::Avx512Bf16 => 144,
            Isa::Amx => 128,
        }
    }

    /// Depth of one packed block (even). AVX512-BF16: its B micro-panel (256 × NR bf16 = 16 KiB)
    /// stays in L1. AMX, whose products are ~4× faster, reads and writes the destination once
    /// per block: deeper blocks (a 64 KiB B micro-panel, in L2) save that traffic.
    const fn kc(self) -> usize {
        match self {
            Isa::Avx512Bf16 => 256,
            Isa::Amx => KC_MAX,
        }
    }

    /// Pairs a packed block of `kc` values of k takes: AMX multiplies 16 pairs per tile, so its
    /// blocks are padded with zero pairs to a multiple of 16.
    fn depth(self, kc: usize) -> usize {
        match self {
            Isa::Avx512Bf16 => kc.div_ceil(2),
            Isa::Amx => kc.div_ceil(2).next_multiple_of(TILE_PAIRS),
        }
    }
}

/// The bf16 instruction sets this CPU has kernels for (best first): AMX where the CPU has it and
/// Linux grants the process its tile data, and AVX512-BF16 (which every AMX CPU has too; AMX is
/// only looked for beside it, so `CS_NO_AMX` always has a kernel to fall back on).
fn detected() -> &'static [Isa] {
    static HW: OnceLock<Vec<Isa>> = OnceLock::new();
    HW.get_or_init(|| {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut found = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16") {
                if amx::available() {
                    found.push(Isa::Amx);
                }
                found.push(Isa::Avx512Bf16);
            }
        }
        found
    })
}

/// The instruction set the bf16 products run on: the best detected, unless `CS_NO_AMX` keeps
/// AMX out (to compare).
pub(crate) fn isa() -> Option<Isa> {
    detected().iter().copied().find(|&isa| isa != Isa::Amx || !super::settings().no_amx)
}

/// The instruction set the bf16 products run on, if this CPU has one we have kernels for.
pub fn hardware() -> Option<&'static str> {
    isa().map(Isa::name)
}

/// `x` rounded to bf16 (nearest, ties to even), as the high 16 bits of the result. NaNs stay NaNs
/// for the quiet ones arithmetic produces; the low bits are garbage the caller drops.
#[inline(always)]
fn round_bits(x: f32) -> u32 {
    let b = x.to_bits();
    b.wrapping_add(0x7FFF + ((b >> 16) & 1))
}

/// Two values rounded to bf16 and paired for `vdpbf16ps`: `lo` in bits 0..16, `hi` in 16..32.
#[inline(always)]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    (round_bits(lo) >> 16) | (round_bits(hi) & 0xFFFF_0000)
}

/// `x` rounded to bf16 and back (what the kernels multiply), for tests and reference sums.
#[cfg(test)]
pub(crate) fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(round_bits(x) & 0xFFFF_0000)
}

simd_fn! {
    /// Packs A rows [i0, i0+mc) × k [k0, k0+kc) into panels of `isa.mr()` rows, `d =
    /// isa.depth(kc)` pairs deep: for AVX512-BF16 panel r, pair p, row ii at `(r·d + p)·mr + ii`,
    /// for AMX at `(r·mr + ii)·d + p`; rows past `mc` and pairs past k are zero.
    fn pack_a(isa: Isa, a: Mat, i0: usize, mc: usize, k0: usize, kc: usize, out: &mut [u32]) {
        let (mr, kp, depth) = (isa.mr(), kc.div_ceil(2), isa.depth(kc));
        // Where pair p of row ii goes in a panel.
        let at = |ii: usize, p: usize| match isa {
            Isa::Avx512Bf16 => p * mr + ii,
            Isa::Amx => ii * depth + p,
        };
        for (r, panel) in out.chunks_exact_mut(depth * mr).take(mc.div_ceil(mr)).enumerate() {
            let rows = (mc - r * mr).min(mr);
            if isa == Isa::Amx {
                panel[rows * depth..].fill(0);
                for ii in 0..rows {
                    panel[ii * depth + kp..(ii + 1) * depth].fill(0);
                }
            }
            if a.rs == 1 {
                // Column-major A (a transposed weight): a pair's two rows are read along the
                // destination's rows (vectorised).
                for p in 0..kp {
                    let base = (i0 + r * mr) + (k0 + 2 * p) * a.cs;
                    let r0 = &a.data[base..][..rows];
                    let hi = (2 * p + 1 < kc).then(|| &a.data[base + a.cs..][..rows]);
                    if isa == Isa::Avx512Bf16 {
                        let dst = &mut panel[p * mr..(p + 1) * mr];
                        fill_pairs(&mut dst[..rows], r0, hi);
                        dst[rows..].fill(0);
                    } else {
                        for ii in 0..rows {
                            panel[at(ii, p)] = pair(r0[ii], hi.map_or(0.0, |hi| hi[ii]));
                        }
                    }
                }
                continue;
            }
            for ii in 0..mr {
                if ii >= rows {
                    if isa == Isa::Avx512Bf16 {
                        for p in 0..kp {
                            panel[at(ii, p)] = 0;
                        }
                    }
                    continue;
                }
                let row = (i0 + r * mr + ii) * a.rs + k0 * a.cs;
                strided_pairs(a.data, row, a.cs, kc, |p, v| panel[at(ii, p)] = v);
            }
        }
    }
}

/// `dst[i]` = the pair (`lo[i]`, `hi[i]` or 0): two rows rounded and interleaved in one pass.
#[inline(always)]
pub(crate) fn fill_pairs(dst: &mut [u32], lo: &[f32], hi: Option<&[f32]>) {
    match hi {
        Some(hi) => {
            for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
                *d = pair(l, h);
            }
        }
        None => {
            for (d, &l) in dst.iter_mut().zip(lo) {
                *d = pair(l, 0.0);
            }
        }
    }
}

/// `dst[p]` = the pair (`src[2p]`, `src[2p + 1]`), and for an odd length the last one (`src`'s
/// last value, 0): a line of k rounded and paired into `src.len().div_ceil(2)` pairs.
#[inline(always)]
pub(crate) fn pair_up(dst: &mut [u32], src: &[f32]) {
    let pairs = src.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    for (d, s) in dst.iter_mut().zip(pairs) {
        *d = pair(s[0], s[1]);
    }
    if let Some(v) = last {
        dst[src.len() / 2] = pair(v, 0.0);
    }
}

/// Calls `put(p, pair)` for the `kc.div_ceil(2)` pairs of a line of `kc` values starting at
/// `data[start]`, `step` apart. A contiguous line (step 1, the common case: k runs along memory)
/// is rounded and paired in chunks through a small buffer, which vectorises; `put`'s strided
/// stores are then one per pair.
#[inline(always)]
fn strided_pairs(data: &[f32], start: usize, step: usize, kc: usize, mut put: impl FnMut(usize, u32)) {
    let kp = kc.div_ceil(2);
    if step == 1 {
        const CHUNK: usize = 64;
        let mut buf = [0u32; CHUNK];
        for (c, values) in data[start..start + kc].chunks(2 * CHUNK).enumerate() {
            let n = values.len().div_ceil(2);
            pair_up(&mut buf[..n], values);
            for (i, &v) in buf[..n].iter().enumerate() {
                put(c * CHUNK + i, v);
            }
        }
        return;
    }
    for p in 0..kp {
        let lo = data[start + 2 * p * step];
        let hi = if 2 * p + 1 < kc { data[start + (2 * p + 1) * step] } else { 0.0 };
        put(p, pair(lo, hi));
    }
}

/// A matrix made segment by segment as it is packed: `f(r, j0, out)` fills `out` with row r's
/// columns [j0, j0 + out.len()) (a convolution's im2col matrix, read from the image in place).
pub(crate) type RowSegments<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// The right operand of a bf16 product: a strided f32 matrix, a matrix made by row segments, or
/// the transpose of one (B's column j is the made matrix's row j).
#[derive(Clone, Copy)]
pub(crate) enum Rhs<'a> {
    Mat(Mat<'a>),
    Rows(RowSegments<'a>),
    Cols(RowSegments<'a>),
}

simd_fn! {
    /// Packs B k [k0, k0+kc) × columns [j0, j0+nc) into panels of NR columns, `depth` pairs
    /// deep (at least kc/2): panel q, pair p, column jj at `(q·depth + p)·NR + jj`; columns past
    /// `nc` and pairs past k are zero.
    fn pack_b(b: Rhs, k0: usize, kc: usize, depth: usize, j0: usize, nc: usize, out: &mut [u32]) {
        let kp = kc.div_ceil(2);
        for panel in out.chunks_exact_mut(depth * NR).take(nc.div_ceil(NR)) {
            panel[kp * NR..].fill(0);
        }
        match b {
            // Row-major B: two source rows per pair, read along the rows (vectorised).
            Rhs::Mat(b) if b.cs == 1 => {
                let row = |k: usize| &b.data[(k0 + k) * b.rs + j0..][..nc];
                for p in 0..kp {
                    put_pair_row(out, depth, p, row(2 * p), (2 * p + 1 < kc).then(|| row(2 * p + 1)));
                }
            }
            // Column-major (or strided) B: a column's pairs are read down the column.
            Rhs::Mat(b) => by_column(out, depth, kp, nc, |j, mut col| strided_pairs(b.data, (j0 + j) * b.cs + k0 * b.rs, b.rs, kc, |p, v| col.set(p, v))),
            // Made rows: two at a time into buffers, then as a row-major B.
            Rhs::Rows(rows) => {
                assert!(nc <= NC, "bf16 gemm: a task packs at most NC columns");
                let (mut lo, mut hi) = ([0f32; NC], [0f32; NC]);
                for p in 0..kp {
                    rows(k0 + 2 * p, j0, &mut lo[..nc]);
                    let has_hi = 2 * p + 1 < kc;
                    if has_hi {
                        rows(k0 + 2 * p + 1, j0, &mut hi[..nc]);
                    }
                    put_pair_row(out, depth, p, &lo[..nc], has_hi.then(|| &hi[..nc]));
                }
            }
            // Made columns (Bᵀ's rows): 16 at a time, each one's k segment made, rounded and
            // paired along k into a line, then the 16 lines transposed into the panel's pair rows
            // in 16×16 blocks. (Set pair by pair down a column, every store met another cache
            // line of a panel larger than L1: a tenth of a 7×7 layer's backward pass.)
            Rhs::Cols(rows) => {
                const LINES: usize = 16;
                let mut made = [0f32; KC_MAX];
                let mut lines = [0u32; LINES * KC_MAX / 2];
                let lines = &mut lines[..LINES * kp];
                for (q, panel) in out.chunks_exact_mut(depth * NR).take(nc.div_ceil(NR)).enumerate() {
                    for g in (0..NR).step_by(LINES) {
                        for (l, line) in lines.chunks_exact_mut(kp).enumerate() {
                            let j = q * NR + g + l;
                            if j >= nc {
                                line.fill(0);
                                continue;
                            }
                            rows(j0 + j, k0, &mut made[..kc]);
                            pair_up(line, &made[..kc]);
                        }
                        transpose_16_rows(lines, &mut panel[g..], NR);
                    }
                }
            }
        }
    }
}

/// Pair row `p` of every panel (`depth` pairs deep) from B's k rows 2p (`lo`) and 2p+1 (`hi`,
/// None past kc), each over the block's columns; panel columns past them are zero.
#[inline(always)]
fn put_pair_row(out: &mut [u32], depth: usize, p: usize, lo: &[f32], hi: Option<&[f32]>) {
    let nc = lo.len();
    for (q, panel) in out.chunks_exact_mut(depth * NR).take(nc.div_ceil(NR)).enumerate() {
        let cols = (nc - q * NR).min(NR);
        let dst = &mut panel[p * NR..(p + 1) * NR];
        fill_pairs(&mut dst[..cols], &lo[q * NR..][..cols], hi.map(|hi| &hi[q * NR..][..cols]));
        dst[cols..].fill(0);
    }
}

/// Column `jj` of one packed panel.
struct PanelColumn<'a> {
    panel: &'a mut [u32],
    jj: usize,
}

impl PanelColumn<'_> {
    /// Sets the column's pair `p`.
    #[inline(always)]
    fn set(&mut self, p: usize, pair: u32) {
        self.panel[p * NR + self.jj] = pair;
    }
}

/// Fills the panels (`depth` pairs deep) column by column: `column(j, col)` sets the `kp` pairs
/// of the block's column j (of `nc`) through `col`; panel columns past them are zero.
#[inline(always)]
fn by_column(out: &mut [u32], depth: usize, kp: usize, nc: usize, mut column: impl FnMut(usize, PanelColumn)) {
    for (q, panel) in out.chunks_exact_mut(depth * NR).take(nc.div_ceil(NR)).enumerate() {
        for jj in 0..NR {
            if q * NR + jj >= nc {
                for p in 0..kp {
                    panel[p * NR + jj] = 0;
                }
                continue;
            }
            column(q * NR + jj, PanelColumn { panel: &mut *panel, jj });
        }
    }
}

/// `dst[j·stride + r]` = `src[r·n + j]` for the 16 rows r of `src` (n = src.len() / 16): 16×16
/// blocks in AVX-512 registers where the CPU has them (every CPU with AMX does), the rest one by
/// one.
pub(crate) fn transpose_16_rows(src: &[u32], dst: &mut [u32], stride: usize) {
    const T: usize = 16;
    let n = src.len() / T;
    assert!(src.len() == T * n && (n == 0 || dst.len() >= (n - 1) * stride + T));
    // Only x86-64 has the block transpose; elsewhere every column goes one by one.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut j0 = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::ops::simd_level() == crate::ops::SimdLevel::Avx512 {
        while j0 + T <= n {
            // SAFETY: AVX-512F is present (simd_level); the block's 16 rows of 16 are inside `src`
            // (row r at r·n + j0) and its 16 columns inside `dst` (column j at (j0 + j)·stride).
            unsafe { transpose_16x16(src.as_ptr().add(j0), n, dst.as_mut_ptr().add(j0 * stride), stride) };
            j0 += T;
        }
    }
    for j in j0..n {
        for r in 0..T {
            dst[j * stride + r] = src[r * n + j];
        }
    }
}

/// The 16×16 block of u32 at `src` (rows `src_stride` apart) transposed to `dst` (rows
/// `dst_stride` apart): pairs of rows interleaved by 32 bits, then 64, then 128-bit lanes twice.
///
/// # Safety
/// The CPU must have AVX-512F; `src` and `dst` must point to 16 rows of 16 readable / writable
/// u32s at their strides.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_16x16(src: *const u32, src_stride: usize, dst: *mut u32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let mut r: [__m512i; 16] = std::array::from_fn(|i| _mm512_loadu_si512(src.add(i * src_stride) as *const _));
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
            r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
            r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
            r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
        }
        for h in 0..2 {
            for j in 0..4 {
                t[8 * h + j] = _mm512_shuffle_i32x4::<0x88>(r[8 * h + j], r[8 * h + j + 4]);
                t[8 * h + j + 4] = _mm512_shuffle_i32x4::<0xdd>(r[8 * h + j], r[8 * h + j + 4]);
            }
        }
        for j in 0..8 {
            r[j] = _mm512_shuffle_i32x4::<0x88>(t[j], t[j + 8]);
            r[j + 8] = _mm512_shuffle_i32x4::<0xdd>(t[j], t[j + 8]);
        }
        for (i, row) in r.iter().enumerate() {
            _mm512_storeu_si512(dst.add(i * dst_stride) as *mut _, *row);
        }
    }
}

/// The MR×NR micro-kernel: the destination block at `c` (row stride `c_rs`; only `rows` × `cols`
/// of it written) = (itself if `load_c`) + A panel · B panel over `kp` k-pairs.
///
/// # Safety
/// The CPU must have AVX512F/BW/VL and AVX512-BF16 (`hardware()`); `a` must hold kp·MR and `b`
/// kp·NR u32s; `c` must point to `rows` rows of `cols` writable floats `c_rs` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_kernel(kp: usize, a: *const u32, b: *const u32, c: *mut f32, c_rs: usize, rows: usize, cols: usize, load_c: bool) {
    use std::arch::x86_64::*;
    const MR: usize = Isa::Avx512Bf16.mr();
    // SAFETY (whole body): reads stay inside the packed panels (kp pairs each), writes inside
    // the rows × cols block the caller owns, through masked stores for partial blocks.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            let ap = a.add(p * MR);
            for (i, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        let mask = |n: usize| -> __mmask16 { if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as __mmask16 } };
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        for (i, acc) in acc.iter().enumerate().take(rows) {
            let row = c.add(i * c_rs);
            let (mut v0, mut v1) = (acc[0], acc[1]);
            if load_c {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            _mm512_mask_storeu_ps(row.add(16), m1, v1);
        }
    }
}

/// Runs `f` on this thread's two packing buffers (A, B), `a_len` and `b_len` long, each starting
/// on a cache line (`with_taken`).
fn with_pack_buffers<R>(a_len: usize, b_len: usize, f: impl FnOnce(&mut [u32], &mut [u32]) -> R) -> R {
    thread_local! {
        static BUFS: [Cell<Vec<u32>>; 2] = const { [Cell::new(Vec::new()), Cell::new(Vec::new())] };
    }
    BUFS.with(|bufs| with_taken(&bufs[0], a_len, |a| with_taken(&bufs[1], b_len, |b| f(a, b))))
}

/// All of A [m,k] packed into `packed` (`packed_a_len(isa, m, k)` pairs; its contents on entry do
/// not matter): for each `isa.kc()` block of k, `pack_a`'s panels of all m rows, so the panels of
/// rows [i, …) of the block at k0 (d = `isa.depth(kc)` pairs deep) start at
/// `a_block_start(isa, m, k0) + i · d`. Spread over the rayon threads if `parallel`.
fn pack_a_whole(isa: Isa, lhs: Mat, m: usize, k: usize, parallel: bool, packed: &mut [u32]) {
    // One piece per (k block, MC rows): disjoint slices of the buffer.
    let mut pieces = Vec::new();
    let mut rest = packed;
    for k0 in (0..k).step_by(isa.kc()) {
        let kc = isa.kc().min(k - k0);
        for i0 in (0..m).step_by(isa.mc()) {
            let mc = isa.mc().min(m - i0);
            let (piece, tail) = rest.split_at_mut(mc.next_multiple_of(isa.mr()) * isa.depth(kc));
            pieces.push((k0, kc, i0, mc, piece));
            rest = tail;
        }
    }
    let pack = |(k0, kc, i0, mc, piece): (usize, usize, usize, usize, &mut [u32])| pack_a(isa, lhs, i0, mc, k0, kc, piece);
    if parallel {
        pieces.into_par_iter().for_each(pack);
    } else {
        pieces.into_iter().for_each(pack);
    }
}

/// Where `pack_a_whole` puts the k block starting at `k0` (a multiple of `isa.kc()`; the blocks
/// before it are full).
fn a_block_start(isa: Isa, m: usize, k0: usize) -> usize {
    k0 / isa.kc() * m.next_multiple_of(isa.mr()) * isa.depth(isa.kc())
}

/// The length `pack_a_whole` fills.
fn packed_a_len(isa: Isa, m: usize, k: usize) -> usize {
    let last = k - (k - 1) / isa.kc() * isa.kc();
    a_block_start(isa, m, k - last) + m.next_multiple_of(isa.mr()) * isa.depth(last)
}

/// `dst` [m,n] (row stride `dst_rs`) = (`dst` if `accumulate`) + `lhs` [m,k] · `rhs` [k,n], with
/// both operands rounded to bf16 and f32 sums; spread over the rayon threads if `parallel`.
///
/// # Safety
/// `hardware()` must be `Some`; `lhs` and `rhs` must fit their shapes, and `dst` must point to m
/// rows of n writable floats `dst_rs` apart that nothing else touches during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(m: usize, n: usize, k: usize, dst: (*mut f32, usize), accumulate: bool, lhs: Mat, rhs: Mat, parallel: bool) {
    let isa = isa().expect("bf16 gemm on a CPU without bf16 instructions");
    // SAFETY: the caller's contract is this one's.
    unsafe { gemm_impl(isa, m, n, k, dst, accumulate, lhs, Rhs::Mat(rhs), parallel) }
}

/// `dst` [m,n] (row stride `dst_rs`) = (`dst` if `accumulate`) + `lhs` [m,k] · B [k,n] in bf16
/// (f32 sums) over the rayon threads, where B is made as the product packs it: `Rhs::Rows(f)`,
/// the matrix whose row r's columns [j0, j0 + out.len()) `f(r, j0, out)` fills (a convolution's
/// im2col matrix), or `Rhs::Cols(f)`, the transpose of such a matrix [n,k] (a weight gradient's
/// im2col matrix). No B is ever stored whole.
///
/// Panics if this CPU has no bf16 kernel (`hardware()`), `rhs` is a `Mat` (use `gemm`) or an
/// operand is out of bounds.
pub(crate) fn gemm_made(m: usize, n: usize, k: usize, (dst, dst_rs): (&mut [f32], usize), accumulate: bool, lhs: Mat, rhs: Rhs) {
    let isa = isa().expect("bf16 gemm on a CPU without bf16 instructions");
    assert!(!matches!(rhs, Rhs::Mat(_)), "gemm_made takes a made right operand");
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && (m - 1) * dst_rs + n <= dst.len() && lhs.fits(m, k), "bf16 gemm operand out of bounds");
    // SAFETY: hardware checked; the assert keeps A's reads and the writes inside the slices, and
    // `dst` is borrowed mutably, so nothing else touches it; B's values come from the closure.
    unsafe { gemm_impl(isa, m, n, k, (dst.as_mut_ptr(), dst_rs), accumulate, lhs, rhs, true) }
}

/// `gemm` on the kernels of `isa` over any kind of right operand.
///
/// # Safety
/// As `gemm`'s, with `isa` one of `detected()` (`rhs`, where a `Mat`, must fit k × n).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_impl(isa: Isa, m: usize, n: usize, k: usize, (dst, dst_rs): (*mut f32, usize), accumulate: bool, lhs: Mat, rhs: Rhs, parallel: bool) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i of the destination, which the caller gave us.
                unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n) }.fill(0.0);
            }
        }
        return;
    }
    let (mr, mc_max) = (isa.mr(), isa.mc());
    // Tasks split the columns (each packs its own B block once per k-block and reuses it for
    // all its rows); where there are too few column blocks for the threads, rows are split too.
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let col_tasks = if threads > 1 { (n.div_ceil(NR)).min(2 * threads) } else { 1 }.max(n.div_ceil(NC));
    let nt = n.div_ceil(col_tasks).next_multiple_of(NR).min(n);
    let col_tasks = n.div_ceil(nt);
    let row_tasks = if col_tasks >= threads { 1 } else { threads.div_ceil(col_tasks).min(m.div_ceil(mr)) };
    let mt = m.div_ceil(row_tasks).next_multiple_of(mr);
    let row_tasks = m.div_ceil(mt);
    // Where several tasks share rows (a column split), A is packed once for all of them: packed
    // per task it would be rounded and paired `col_tasks` times, which for a wide A and a narrow
    // B (a weight times a small plane, a gradient's long k) costs more than the products.
    // The buffer is this thread's, reused (taken out while in use, so a nested call allocates).
    thread_local! {
        static SHARED_A: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    }
    let mut shared_buf = Vec::new();
    let shared_a = if col_tasks > 1 {
        shared_buf = SHARED_A.with(Cell::take);
        let packed = from_line(&mut shared_buf, packed_a_len(isa, m, k));
        pack_a_whole(isa, lhs, m, k, parallel, packed);
        Some(&*packed)
    } else {
        None
    };
    // Tasks write disjoint row × column blocks.
    let out = SharedDst(dst);
    let task = |t: usize| {
        let (ti, tj) = (t / col_tasks, t % col_tasks);
        let (i0, j0) = (ti * mt, tj * nt);
        let (mrows, ncols) = ((m - i0).min(mt), (n - j0).min(nt));
        let depth_max = isa.depth(isa.kc().min(k));
        let a_len = if shared_a.is_some() { 0 } else { mc_max.min(mrows).next_multiple_of(mr) * depth_max };
        let b_len = ncols.div_ceil(NR) * NR * depth_max;
        with_pack_buffers(a_len, b_len, |abuf, bbuf| {
            for k0 in (0..k).step_by(isa.kc()) {
                let kc = isa.kc().min(k - k0);
                let depth = isa.depth(kc);
                pack_b(rhs, k0, kc, depth, j0, ncols, bbuf);
                for ic in (0..mrows).step_by(mc_max) {
                    let mc = mc_max.min(mrows - ic);
                    let apanels: &[u32] = match shared_a {
                        // Rows start at multiples of mr (mt and mc_max are), so panels line up.
                        Some(packed) => &packed[a_block_start(isa, m, k0) + (i0 + ic) * depth..],
                        None => {
                            pack_a(isa, lhs, i0 + ic, mc, k0, kc, abuf);
                            abuf
                        }
                    };
                    let load_c = accumulate || k0 > 0;
                    // SAFETY: isa is one this CPU has (the caller's contract); the panels hold
                    // `depth` pairs; each block is inside this task's part of the destination.
                    // No closure runs between configuring the tiles and releasing them, so no
                    // other work can take this thread's tiles in between.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let tiles = (isa == Isa::Amx).then(|| amx::Tiles::configure());
                        for q in 0..ncols.div_ceil(NR) {
                            let cols = (ncols - q * NR).min(NR);
                            let b = bbuf[q * depth * NR..].as_ptr();
                            for r in 0..mc.div_ceil(mr) {
                                let rows = (mc - r * mr).min(mr);
                                let a = apanels[r * depth * mr..].as_ptr();
                                let c = out.at((i0 + ic + r * mr) * dst_rs + j0 + q * NR);
                                match &tiles {
                                    Some(tiles) => tiles.kernel(depth, a, b, c, dst_rs, rows, cols, load_c),
                                    None => micro_kernel(depth, a, b, c, dst_rs, rows, cols, load_c),
                                }
                            }
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (apanels, load_c, &out);
                }
            }
        });
    };
    let tasks = row_tasks * col_tasks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    if col_tasks > 1 {
        SHARED_A.with(|s| s.set(shared_buf));
    }
}

/// AMX: the process's permission to use tiles, their configuration, and the micro-kernel.
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx {
    use super::NR;
    use std::arch::asm;

    /// Pairs of k in one tile row (see [`TILE_PAIRS`](super::TILE_PAIRS)).
    pub(crate) const PAIRS: usize = super::TILE_PAIRS;

    /// Whether this CPU has AMX-TILE and AMX-BF16 and Linux lets this process use them: the
    /// tile data (8 KiB of state per thread) must be asked for (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`) before the first tile instruction, which would otherwise fault.
    pub(super) fn available() -> bool {
        // CPUID.(EAX=7, ECX=0):EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 7 exists on every x86_64 CPU with AVX-512 (checked by the caller).
        let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0 && request_tile_data()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn request_tile_data() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with this request only changes the process's permission flags.
        let granted = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 };
        if !granted {
            // Said once (the caller's OnceLock): the user sees why bf16 runs slower than it could.
            eprintln!("note: this CPU has AMX, but Linux refused this process its tile data ({}); bf16 runs on AVX512-BF16", std::io::Error::last_os_error());
        }
        granted
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn request_tile_data() -> bool {
        false
    }

    /// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes (tmm0–3 the
    /// accumulators, tmm4–5 A's two row halves, tmm6–7 B's two column halves).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
            t += 1;
        }
        Config(c)
    };

    /// This thread's tiles, configured for the micro-kernel while the value lives.
    pub(crate) struct Tiles(());

    /// One step of [`Tiles::block`]: two A tiles (16 rows × 16 pairs each, rows `a_stride`
    /// bytes apart) and two B tiles (16 pairs × 16 columns, rows `b_stride` bytes apart).
    pub(crate) struct Step {
        pub a: [*const u32; 2],
        pub a_stride: usize,
        pub b: [*const u32; 2],
        pub b_stride: usize,
    }

    impl Tiles {
        /// # Safety
        /// `available()` must have returned true.
        pub(crate) unsafe fn configure() -> Tiles {
            // SAFETY: AMX is present and permitted (the caller's contract); CONFIG is valid.
            unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags)) };
            Tiles(())
        }

        /// The 32×NR destination block at `c` (row stride `c_rs` floats; only `rows` × `cols` of
        /// it written) = (itself if `load_c`) + A panel (32 rows × `depth` pairs, row-major) · B
        /// panel (`depth` pairs × NR columns), `depth` a multiple of `PAIRS`.
        ///
        /// # Safety
        /// `a` must hold 32·depth and `b` depth·NR u32s; `c` must point to `rows` rows of `cols`
        /// writable floats `c_rs` apart.
        #[allow(clippy::too_many_arguments)]
        #[inline]
        pub(super) unsafe fn kernel(&self, depth: usize, a: *const u32, b: *const u32, c: *mut f32, c_rs: usize, rows: usize, cols: usize, load_c: bool) {
            const H: usize = 16;
            debug_assert!(depth.is_multiple_of(PAIRS) && NR == 2 * H);
            // SAFETY (whole body): the steps read 16 rows of 16 pairs inside the panels (32 ×
            // depth and depth × NR); a full block is the caller's, a partial one is written
            // through the local sums, `rows` × `cols` of them.
            unsafe {
                let steps = (0..depth).step_by(PAIRS).map(|p| Step { a: [a.add(p), a.add(H * depth + p)], a_stride: depth * 4, b: [b.add(p * NR), b.add(p * NR + H)], b_stride: NR * 4 });
                if rows == 2 * H && cols == 2 * H {
                    return self.block_into(c, c_rs, load_c, steps);
                }
                for (i, sums) in self.block(steps).iter().enumerate().take(rows) {
                    let row = std::slice::from_raw_parts_mut(c.add(i * c_rs), cols);
                    if load_c {
                        row.iter_mut().zip(sums).for_each(|(d, s)| *d += s);
                    } else {
                        row.copy_from_slice(&sums[..cols]);
                    }
                }
            }
        }

        /// The 32×32 block Σ over `steps` of [A₀; A₁] · [B₀ B₁] (rows: A's, columns: B's).
        ///
        /// # Safety
        /// Every step's pointers must point to 16 readable rows of 64 bytes at their strides.
        pub(crate) unsafe fn block(&self, steps: impl Iterator<Item = Step>) -> [[f32; 32]; 32] {
            #[repr(C, align(64))]
            struct Block([[f32; 32]; 32]);
            let mut out = Block([[0.0; 32]; 32]);
            // SAFETY: the loads are the caller's; the block is 32 rows of 32 floats.
            unsafe { self.block_into(out.0.as_mut_ptr() as *mut f32, 32, false, steps) };
            out.0
        }

        /// The 32×32 block at `c` (rows `c_rs` floats apart) = (itself if `load`) + Σ over
        /// `steps` of [A₀; A₁] · [B₀ B₁].
        ///
        /// # Safety
        /// Every step's pointers must point to 16 readable rows of 64 bytes at their strides;
        /// `c` must point to 32 rows of 32 writable floats `c_rs` apart.
        pub(crate) unsafe fn block_into(&self, c: *mut f32, c_rs: usize, load: bool, steps: impl Iterator<Item = Step>) {
            // SAFETY: the caller's contract; tmm0/tmm1 are the block's top half, tmm2/tmm3 the
            // bottom.
            unsafe {
                let (c0, c1, c2, c3, stride) = (c, c.add(16), c.add(16 * c_rs), c.add(16 * c_rs + 16), c_rs * 4);
                if load {
                    asm!(
                        "tileloadd tmm0, [{c0} + {s}*1]",
                        "tileloadd tmm1, [{c1} + {s}*1]",
                        "tileloadd tmm2, [{c2} + {s}*1]",
                        "tileloadd tmm3, [{c3} + {s}*1]",
                        c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) stride,
                        options(nostack, readonly, preserves_flags)
                    );
                } else {
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem, preserves_flags));
                }
                for s in steps {
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) s.a[0], a1 = in(reg) s.a[1], sa = in(reg) s.a_stride,
                        b0 = in(reg) s.b[0], b1 = in(reg) s.b[1], sb = in(reg) s.b_stride,
                        options(nostack, readonly, preserves_flags)
                    );
                }
                asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    "tilestored [{c2} + {s}*1], tmm2",
                    "tilestored [{c3} + {s}*1], tmm3",
                    c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) stride,
                    options(nostack, preserves_flags)
                );
            }
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: tiles were configured (`configure`); releasing them returns the thread's
            // tile state to its initial (smaller to save) state.
            unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 16-row transpose (AVX-512 blocks and the scalar rest) against the definition, for
    /// lengths with and without a rest.
    #[test]
    fn transpose_16_rows_matches_the_definition() {
        for n in [0usize, 1, 15, 16, 17, 35, 48] {
            let src: Vec<u32> = (0..16 * n as u32).collect();
            let stride = 40;
            let mut dst = vec![u32::MAX; n * stride + 16];
            transpose_16_rows(&src, &mut dst, stride);
            for j in 0..n {
                for r in 0..16 {
                    assert_eq!(dst[j * stride + r], src[r * n + j], "n {n}, row {r}, column {j}");
                }
                assert!(dst[j * stride + 16..(j + 1) * stride].iter().all(|&v| v == u32::MAX), "n {n}: wrote past a column");
            }
        }
    }

    /// The f64 sum of bf16-rounded operands: what the kernel must give up to f32 rounding.
    fn reference(m: usize, n: usize, k: usize, lhs: Mat, rhs: Mat) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| round_to_bf16(lhs.data[i * lhs.rs + p * lhs.cs]) as f64 * round_to_bf16(rhs.data[p * rhs.rs + j * rhs.cs]) as f64)
                    .sum();
            }
        }
        out
    }

    /// Every edge case of the blocking (partial row and NR blocks, odd k, k not a multiple of
    /// AMX's 32, several KC and MC blocks, row and column splits, A packed once for a column
    /// split, with and without a row split beside it: 5 threads), both operand orders,
    /// overwriting and accumulating, on every kernel this CPU has: the kernel equals the exact sum
    /// of the rounded operands up to f32 summation error.
    #[test]
    fn bf16_gemm_matches_exact_sums_of_rounded_operands() {
        if !detected().contains(&Isa::Avx512Bf16) {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the bf16 kernels' instruction set)");
            return;
        }
        if !detected().contains(&Isa::Amx) {
            eprintln!("the AMX kernel not tested: this CPU has no AMX (or Linux refused its tiles)");
        }
        for &isa in detected() {
            eprintln!("testing the {} kernel", isa.name());
            check_against_exact_sums(isa);
            rayon::ThreadPoolBuilder::new().num_threads(5).build().expect("thread pool").install(|| check_against_exact_sums(isa));
        }
    }

    fn check_against_exact_sums(isa: Isa) {
        let val = super::super::test_value;
        for &(m, n, k) in &[(1, 1, 1), (5, 7, 3), (12, 32, 256), (13, 33, 257), (32, 32, 64), (33, 65, 290), (40, 40, 1100), (150, 70, 600), (3, 2100, 9), (64, 4100, 27), (300, 96, 40)] {
            let lhs_data: Vec<f32> = (0..m * k).map(|i| val(i) * 3.0).collect();
            let rhs_data: Vec<f32> = (0..k * n).map(|i| val(i + 7) - 0.1).collect();
            for (lt, rt) in [(false, false), (true, true), (false, true)] {
                let lhs = if lt { Mat::transposed(&lhs_data, m) } else { Mat::rows(&lhs_data, k) };
                let rhs = if rt { Mat::transposed(&rhs_data, k) } else { Mat::rows(&rhs_data, n) };
                let want = reference(m, n, k, lhs, rhs);
                let dst_rs = n + 3;
                for accumulate in [false, true] {
                    for parallel in [false, true] {
                        let start: Vec<f32> = (0..m * dst_rs).map(|i| val(i + 11)).collect();
                        let mut dst = start.clone();
                        // SAFETY: isa detected; operands and destination sized above.
                        unsafe { gemm_impl(isa, m, n, k, (dst.as_mut_ptr(), dst_rs), accumulate, lhs, Rhs::Mat(rhs), parallel) };
                        for i in 0..m {
                            for j in 0..dst_rs {
                                let got = dst[i * dst_rs + j] as f64;
                                if j >= n {
                                    assert_eq!(got, start[i * dst_rs + j] as f64, "wrote outside the block");
                                    continue;
                                }
                                let base = if accumulate { start[i * dst_rs + j] as f64 } else { 0.0 };
                                let w = want[i * n + j] + base;
                                assert!((got - w).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + w.abs()), "{} {m}x{n}x{k} lt {lt} rt {rt} acc {accumulate}: {got} vs {w}", isa.name());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(round_to_bf16(1.0), 1.0);
        // 1 + 2^-8 is half-way between 1 and 1 + 2^-7: ties to the even (1.0).
        assert_eq!(round_to_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_to_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_to_bf16(-2.5e-3), half::bf16::from_f32(-2.5e-3).to_f32());
        for i in 0..1000 {
            let x = super::super::test_value(i) * (i as f32 + 1.0) * 1e-3 + i as f32 * 0.37;
            assert_eq!(round_to_bf16(x), half::bf16::from_f32(x).to_f32(), "{x}");
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release --lib gemm_bf16::timing -- --ignored --nocapture`: the bf16 kernel
    /// against the gemm crate's f32 on the convolutions' shapes.
    #[test]
    #[ignore]
    fn bf16_vs_f32_gemm() {
        if hardware().is_none() {
            eprintln!("skipped: no AVX512-BF16");
            return;
        }
        for &(m, n, k, bt) in &[(256, 4096, 2304, false), (128, 16384, 576, false), (64, 16384, 147, false), (2304, 4096, 256, false), (64, 147, 16384, true), (128, 576, 4096, true), (256, 1024, 256, false)] {
            let a: Vec<f32> = (0..m * k).map(super::super::test_value).collect();
            let b: Vec<f32> = (0..k * n).map(|i| super::super::test_value(i + 3)).collect();
            let mut c = vec![0f32; m * n];
            let time = |f: &mut dyn FnMut()| {
                f();
                let t = std::time::Instant::now();
                for _ in 0..5 {
                    f();
                }
                t.elapsed().as_secs_f64() / 5.0
            };
            let rhs = if bt { Mat::transposed(&b, k) } else { Mat::rows(&b, n) };
            let f32_s = time(&mut || super::super::gemm::matmul(m, n, k, (&mut c, n), false, Mat::rows(&a, k), rhs));
            let gf = 2.0 * (m * n * k) as f64 / 1e9;
            let mut line = format!("{m}x{n}x{k}{}: f32 {:.2} ms ({:.0} GFLOP/s)", if bt { " (Bᵀ)" } else { "" }, f32_s * 1e3, gf / f32_s);
            for &isa in detected() {
                // SAFETY: isa detected; operands sized above.
                let bf_s = time(&mut || unsafe { gemm_impl(isa, m, n, k, (c.as_mut_ptr(), n), false, Mat::rows(&a, k), Rhs::Mat(rhs), true) });
                line += &format!(", {} {:.2} ms ({:.0} GFLOP/s, {:.2}×)", isa.name(), bf_s * 1e3, gf / bf_s, bf_s / f32_s);
            }
            eprintln!("{line}");
        }
    }
}
