//! The convolutions Winograd takes, computed instead as direct sums on AMX tiles in bf16 (f32
//! sums) under `--precision bf16` on a CPU with AMX, in training and in translations: a bf16 tile
//! product runs at ~16× an f32 FMA's rate, so the direct sums beat Winograd's 4× fewer fp32
//! products (since their operands start on cache lines also F(6×6, 3×3) with kept filters in
//! translations; bench/RESULTS.md, "A tenth round"), and they are as accurate as the im2col
//! convolutions' (Winograd's transforms would amplify bf16's rounding 20–40×).
//!
//! No im2col matrix is made. The input is copied once, padded, into bf16 channel pairs
//! [C/2][H'][W'] (a pair of channels per u32, as `tdpbf16ps` multiplies them); then a B tile
//! (16 channel pairs × 16 neighbouring pixels of one row) of tap (kh, kw) is a plain strided load
//! from that copy, at row y + kh, column x + kw, one channel pair per plane apart. A tiles are the
//! weights of one tap, packed [tap][Cout][Cin/2]. The data gradient is the same kernel run on the
//! output gradient (zero-padded by r − 1) with the flipped, transposed weights, its padded result
//! folded back as the padding's adjoint. The filter gradient pairs pixels instead: the output
//! gradient in pixel pairs [row][16-pair step][Cout][16] (A), the input channels-last in pixel
//! pairs [row][pixel pair][C] twice, once shifted by a pixel (B, so odd taps start on a pair too).

use super::Tiles;
use crate::ops::gemm::{with_scratch_slot, with_taken, LineBuf, SharedDst};
use crate::ops::gemm_bf16::{self, amx, Isa};
use crate::ops::{widened, Elem};
use rayon::prelude::*;
use std::cell::Cell;

/// Tile edge: 16 rows (output channels or pixels) and 16 pairs of k per tile.
const T: usize = amx::PAIRS;

/// Whether the convolutions of `t`'s shape from `cin` to `cout` channels run here: bf16 on a CPU
/// with AMX (`CS_NO_AMX` unset), whole 32-row blocks of channels on both sides (every network
/// here has multiples of 32).
pub(super) fn applies(cin: usize, cout: usize, _t: &Tiles) -> bool {
    crate::ops::precision::cpu_bf16() && gemm_bf16::isa() == Some(Isa::Amx) && cin.is_multiple_of(2 * T) && cout.is_multiple_of(2 * T)
}

/// Runs `f` on this thread's packing buffer `slot` (0 or 1), at least `len` pairs long; its
/// contents on entry are whatever the last user left.
fn with_pairs<R>(slot: usize, len: usize, f: impl FnOnce(&mut [u32]) -> R) -> R {
    thread_local! {
        static BUFS: [Cell<Vec<u32>>; 2] = const { [Cell::new(Vec::new()), Cell::new(Vec::new())] };
    }
    BUFS.with(|b| with_taken(&b[slot], len, f))
}

/// Channel pairs of `c` channels, padded to whole tiles.
fn pairs_of(c: usize) -> usize {
    c.div_ceil(2).next_multiple_of(T)
}

/// Pairs past the end of a packed plane buffer that a tile may read: the last segment of a row
/// reads up to 15 + r − 1 values past the row's last output (those columns are never stored).
const SLACK: usize = 64;

/// The length [`pack_planes`] fills.
fn planes_len(c: usize, rows: usize, width: usize) -> usize {
    pairs_of(c) * rows * width + SLACK
}

/// `c` channels of `rows` × `width` made by `row(ch, r, out, tmp)` (`out` holds `width` floats,
/// `tmp` is scratch of `width`) packed into `out` as [pairs_of(c)][rows][width] bf16 channel
/// pairs, then `SLACK` zero pairs.
fn pack_planes(c: usize, rows: usize, width: usize, out: &mut [u32], row: impl Fn(usize, usize, &mut [f32], &mut [f32]) + Sync) {
    let plane = rows * width;
    let (made, zeros) = out.split_at_mut(c.div_ceil(2) * plane);
    zeros.fill(0);
    made.par_chunks_mut(plane).enumerate().for_each(|(cp, dst)| {
        let (mut lo, mut hi, mut tmp) = (vec![0f32; width], vec![0f32; width], vec![0f32; width]);
        let has_hi = 2 * cp + 1 < c;
        for r in 0..rows {
            row(2 * cp, r, &mut lo, &mut tmp);
            if has_hi {
                row(2 * cp + 1, r, &mut hi, &mut tmp);
            }
            gemm_bf16::fill_pairs(&mut dst[r * width..(r + 1) * width], &lo, has_hi.then_some(&hi[..]));
        }
    });
}

/// The row length [`pack_planes`] lays rows of `w` pairs on for [`direct`] to read into `ho` × `wo`
/// outputs: whole tiles (16 pairs, a cache line) where rows hold whole segments, so that every
/// plane, row and segment starts on a line, and so do the rows of the B tiles of taps at kw = 0
/// (a third; the 64² direct convolution 0.90×); `w` itself where segments laid across rows take
/// fewer tiles (see `direct`).
fn plane_width(w: usize, ho: usize, wo: usize) -> usize {
    if segments_across_rows(w, ho, wo) {
        w
    } else {
        w.next_multiple_of(T)
    }
}

/// Whether [`direct`] lays its 16-position segments across the input's rows (`width` apart)
/// rather than 16 pixels of one output row: where that takes fewer segments for `ho` × `wo`
/// outputs.
fn segments_across_rows(width: usize, ho: usize, wo: usize) -> bool {
    (ho * width).div_ceil(T) < ho * wo.div_ceil(T)
}

/// `out` [m][ho][wo] (one image) = Σ over taps (kh, kw) and channel pairs p of
/// `w`[tap][row][p] · `x`[p][oy + kh][ox + kw], with `x` as `pack_planes` makes it (`width`
/// columns, `plane` pairs per channel pair, `pairs` channel pairs) and `w` [r²][m][pairs].
#[allow(clippy::too_many_arguments)]
fn direct(x: &[u32], (pairs, plane, width): (usize, usize, usize), w: &[u32], r: usize, m: usize, (ho, wo): (usize, usize), out: &mut [f32]) {
    assert!(x.len() >= pairs * plane + SLACK && w.len() >= r * r * m * pairs && out.len() >= m * ho * wo && m.is_multiple_of(2 * T));
    // The planes hold the rows and columns every output reads (what the SLACK bound counts on).
    assert!(width >= wo + r - 1 && plane >= (ho + r - 1) * width);
    // The output in segments of 16 positions, taken two at a time: 16 pixels of a row (the last
    // of a row may be shorter), or, where that makes fewer segments, 16 consecutive positions of
    // the output laid on the input's rows (`width` apart), the ones past `wo` computed and
    // dropped: a data gradient's 34 columns on rows of 36 take 77 segments instead of 102. Either
    // way a segment reads its tap's inputs 16 in a row from position `start(s) + kh·width + kw`.
    let per_row = wo.div_ceil(T);
    let flat = segments_across_rows(width, ho, wo);
    let segments = if flat { (ho * width).div_ceil(T) } else { ho * per_row };
    let seg_pairs = segments.div_ceil(2);
    let start = |s: usize| if flat { s * T } else { s / per_row * width + s % per_row * T };
    // The output runs (index in `out`'s plane, the segment's first sum, count) segment s owns.
    let runs = |s: usize| -> Vec<(usize, usize, usize)> {
        if !flat {
            let (y, x0) = (s / per_row, s % per_row * T);
            return vec![(y * wo + x0, 0, (wo - x0).min(T))];
        }
        let mut runs = Vec::new();
        let (mut g, end) = (s * T, (s + 1) * T);
        while g < end && g / width < ho {
            let (y, x) = (g / width, g % width);
            let run = (end - g).min(width - x);
            if x < wo {
                runs.push((y * wo + x, g - s * T, run.min(wo - x)));
            }
            g += run;
        }
        runs
    };
    // Tasks: a block of 32 output rows × a run of segment pairs, about 4 tasks per thread.
    let blocks = m / (2 * T);
    let chunk = seg_pairs.div_ceil((4 * rayon::current_num_threads()).div_ceil(blocks));
    let dst = SharedDst(out.as_mut_ptr());
    let items: Vec<(usize, usize)> = (0..blocks).flat_map(|b| (0..seg_pairs).step_by(chunk).map(move |s| (b, s))).collect();
    items.into_par_iter().for_each(|(block, s0)| {
        // SAFETY: AMX was detected (`applies`); every tile load stays inside `w` (32 rows of
        // `pairs` at a tap) or `x` (16 channel pairs of a plane, 16 positions from a segment's
        // start, which is at most 15 past the last output's position on the input's rows, so at
        // most `width`·(r − 1) + r − 1 + 15 past a plane's last output: inside the SLACK after the
        // last plane); each output position belongs to one segment, and it to this task alone
        // (a direct store writes the block's 32 output channels at its two segments' positions).
        unsafe {
            let tiles = amx::Tiles::configure();
            for sp in s0..(s0 + chunk).min(seg_pairs) {
                let (s_a, s_b) = (2 * sp, (2 * sp + 1).min(segments - 1));
                let (ga, gb) = (start(s_a), start(s_b));
                // Channel pairs outer, taps inner: a pair block's rows for all taps (12 KiB for
                // 3×3) stay in L1 while its taps read them. (Keeping the sums of a few segment
                // pairs in memory between pair blocks, so that each block's weights are read
                // from L2 once per few pairs, was slower: every block then stores and reloads
                // the sums, 1.0–1.2× the time of this loop.)
                let steps = (0..pairs).step_by(T).flat_map(|p| (0..r * r).map(move |tap| (tap, p))).map(|(tap, p)| {
                    let (kh, kw) = (tap / r, tap % r);
                    let a = w.as_ptr().add((tap * m + block * 2 * T) * pairs + p);
                    let b = x.as_ptr().add(p * plane);
                    amx::Step {
                        a: [a, a.add(T * pairs)],
                        a_stride: pairs * 4,
                        b: [b.add(ga + kh * width + kw), b.add(gb + kh * width + kw)],
                        b_stride: plane * 4,
                    }
                });
                let (runs_a, runs_b) = (runs(s_a), if s_b != s_a { runs(s_b) } else { Vec::new() });
                let base = block * 2 * T * ho * wo;
                // Two whole segments side by side in the output (all of a 32-wide residual
                // block's rows, most of wider ones'): the tiles are stored there directly.
                if let ([(at, 0, T)], [(next, 0, T)]) = (&runs_a[..], &runs_b[..]) {
                    if *next == at + T {
                        tiles.block_into(dst.at(base + at), ho * wo, false, steps);
                        continue;
                    }
                }
                let sums = tiles.block(steps);
                for (i, row) in sums.iter().enumerate() {
                    let base = base + i * ho * wo;
                    for (half, runs) in [(0, &runs_a), (T, &runs_b)] {
                        for &(at, from, n) in runs {
                            std::ptr::copy_nonoverlapping(row[half + from..].as_ptr(), dst.at(base + at), n);
                        }
                    }
                }
            }
        }
    });
}

/// The rows (output channels of the product) and k (channels summed over) of `w` [cout][cin][r][r]
/// packed as [`pack_weights`] packs it.
fn packed_shape(cout: usize, cin: usize, adjoint: bool) -> (usize, usize) {
    if adjoint {
        (cin, cout)
    } else {
        (cout, cin)
    }
}

/// The length [`pack_weights`] fills: r² taps of `rows` rows of `pairs_of(k)` pairs.
fn packed_len(cout: usize, cin: usize, r: usize, adjoint: bool) -> usize {
    let (rows, k) = packed_shape(cout, cin, adjoint);
    r * r * rows * pairs_of(k)
}

/// `w` [cout][cin][r][r] as `direct`'s A operand, written to `out`'s start (a thread's buffer,
/// which starts on a cache line): [r²][cout][pairs_of(cin)], or flipped and transposed
/// ([r²][cin][pairs_of(cout)], tap (kh, kw) taking w's (r−1−kh, r−1−kw)) if `adjoint`. Returns
/// the part of `out` written.
fn pack_weights<'a>(w: &[f32], cout: usize, cin: usize, r: usize, adjoint: bool, out: &'a mut [u32]) -> &'a [u32] {
    let (rows, k) = packed_shape(cout, cin, adjoint);
    let (pairs, taps) = (pairs_of(k), r * r);
    let out = &mut out[..packed_len(cout, cin, r, adjoint)];
    let dst = SharedU32(out.as_mut_ptr());
    (0..rows).into_par_iter().for_each(|row| {
        // The row's weights tap-major ([tap][kk], k padded to even), then paired along kk.
        let mut by_tap = vec![0f32; taps * 2 * k.div_ceil(2)];
        let stride = 2 * k.div_ceil(2);
        for kk in 0..k {
            let (co, ci) = if adjoint { (kk, row) } else { (row, kk) };
            for (tap, &v) in w[(co * cin + ci) * taps..][..taps].iter().enumerate() {
                let tap = if adjoint { taps - 1 - tap } else { tap };
                by_tap[tap * stride + kk] = v;
            }
        }
        for tap in 0..taps {
            // SAFETY: row `row` of tap `tap` is inside `out` (`pairs` long), and only this task
            // writes row `row`.
            let line = unsafe { std::slice::from_raw_parts_mut(dst.at((tap * rows + row) * pairs), pairs) };
            let (made, rest) = line.split_at_mut(k.div_ceil(2));
            gemm_bf16::pair_up(made, &by_tap[tap * stride..(tap + 1) * stride]);
            rest.fill(0);
        }
    });
    out
}

/// A buffer that parallel tasks write at disjoint indices.
struct SharedU32(*mut u32);

// SAFETY: users write disjoint elements through it.
unsafe impl Sync for SharedU32 {}

impl SharedU32 {
    fn at(&self, off: usize) -> *mut u32 {
        self.0.wrapping_add(off)
    }
}

/// `w` [cout][cin][r][r] packed as [`forward`] reads it, to keep (a translation's weights, which
/// do not change between images).
pub(super) fn packed_weights(w: &[f32], cout: usize, cin: usize, r: usize) -> LineBuf<u32> {
    let mut out = LineBuf::new(packed_len(cout, cin, r, false));
    pack_weights(w, cout, cin, r, false, &mut out);
    out
}

/// The convolution of `x` [B][cin][sh][sw] by `w` [cout][cin][r][r] as `t` pads it, → [B][cout][ho][wo].
/// `kept`: `w` as [`packed_weights`] made it earlier; without it `w` is packed here.
pub(super) fn forward<E: Elem>(x: &[E], w: &[f32], cin: usize, cout: usize, t: &Tiles, kept: Option<&[u32]>) -> Vec<E> {
    let (plane_in, plane_out) = (cin * t.sh * t.sw, cout * t.ho * t.wo);
    let mut y = crate::ops::zeros(x.len() / plane_in * plane_out);
    let mut out_f32 = if E::as_f32(&[]).is_some() { Vec::new() } else { crate::ops::zeros(plane_out) };
    let width = plane_width(t.w, t.ho, t.wo);
    with_pairs(1, if kept.is_some() { 0 } else { packed_len(cout, cin, t.r, false) }, |wp| {
        let wp = match kept {
            Some(kept) => kept,
            None => pack_weights(w, cout, cin, t.r, false, wp),
        };
        with_pairs(0, planes_len(cin, t.h, width), |px| {
            for (xb, yb) in x.chunks_exact(plane_in).zip(y.chunks_exact_mut(plane_out)) {
                // bf16 images are widened a row at a time as they are packed, not copied whole.
                pack_planes(cin, t.h, width, px, |c, r, row, tmp| t.load_row_of(&xb[c * t.sh * t.sw..(c + 1) * t.sh * t.sw], r, row, tmp));
                let out = match E::as_f32_mut(yb) {
                    Some(out) => out,
                    None => &mut out_f32[..],
                };
                direct(px, (pairs_of(cin), t.h * width, width), wp, t.r, cout, (t.ho, t.wo), out);
                if E::as_f32(yb).is_none() {
                    crate::ops::par_narrow(yb, &out_f32);
                }
            }
        })
    });
    y
}

/// The gradient of [`forward`]'s input from `dy` [B][cout][ho][wo]: [B][cin][sh][sw], f32.
pub(super) fn data_grad<E: Elem>(dy: &[E], w: &[f32], cin: usize, cout: usize, t: &Tiles) -> Vec<f32> {
    let (plane_dy, plane_dx) = (cout * t.ho * t.wo, cin * t.sh * t.sw);
    let r = t.r;
    let mut dx = crate::ops::zeros(dy.len() / plane_dy * plane_dx);
    // The full correlation's input: dy zero-padded by r − 1 on every side.
    let (hp, wpad) = (t.ho + 2 * (r - 1), t.wo + 2 * (r - 1));
    let width = plane_width(wpad, t.h, t.w);
    with_pairs(1, packed_len(cout, cin, r, true), |wp| {
        let wp = pack_weights(w, cout, cin, r, true, wp);
        with_pairs(0, planes_len(cout, hp, width), |pg| {
            with_scratch_slot(0, cin * t.h * t.w, |padded| {
                for (dyb, dxb) in dy.chunks_exact(plane_dy).zip(dx.chunks_exact_mut(plane_dx)) {
                    let g = widened(dyb);
                    pack_planes(cout, hp, width, pg, |c, row, out, _| {
                        out.fill(0.0);
                        if (r - 1..r - 1 + t.ho).contains(&row) {
                            out[r - 1..r - 1 + t.wo].copy_from_slice(&g[(c * t.ho + row - (r - 1)) * t.wo..][..t.wo]);
                        }
                    });
                    // The gradient of the padded input [cin][h][w], then folded onto the stored one.
                    direct(pg, (pairs_of(cout), hp * width, width), wp, r, cin, (t.h, t.w), padded);
                    dxb.par_chunks_mut(t.sh * t.sw).zip(padded.par_chunks(t.h * t.w)).for_each(|(plane, src)| {
                        let mut tmp = vec![0f32; t.sw];
                        for row in 0..t.h {
                            t.fold_into(&src[row * t.w..(row + 1) * t.w], row, plane, &mut tmp);
                        }
                    });
                }
            })
        })
    });
    dx
}

simd_fn! {
    /// Row `y` of the output gradient `g` [cout][ho][wo] as the filter gradient's A:
    /// `dst[(step·cout + co)·16 + i]` = the pair of columns (32·step + 2i, 32·step + 2i + 1) of
    /// channel co, zero past wo (`dst` holds `cout` rows of whole 16-pair steps).
    fn pixel_pairs(g: &[f32], y: usize, cout: usize, ho: usize, wo: usize, dst: &mut [u32]) {
        let row_pairs = dst.len() / cout;
        let mut line = vec![0f32; 2 * row_pairs];
        for co in 0..cout {
            line[..wo].copy_from_slice(&g[(co * ho + y) * wo..][..wo]);
            for (step, pairs) in line.chunks_exact(2 * T).enumerate() {
                gemm_bf16::pair_up(&mut dst[(step * cout + co) * T..][..T], pairs);
            }
        }
    }
}

simd_fn! {
    /// Padded row `row` of the input `xf` [cin][sh][sw] (as `t` pads it) as the filter
    /// gradient's B, channels last in pixel pairs: `ev[j·cin + c]` = the pair of columns (2j,
    /// 2j + 1) of channel c, `od[j·cin + c]` = (2j + 1, 2j + 2), zero past the row (both hold
    /// `x_pairs`·cin pairs). 16 channels at a time: their rows loaded and paired along the row
    /// (which vectorises), then written channels-last.
    fn channels_last_pairs(t: &Tiles, xf: &[f32], row: usize, cin: usize, ev: &mut [u32], od: &mut [u32]) {
        let x_pairs = ev.len() / cin;
        let len = 2 * x_pairs + 2;
        let (mut line, mut tmp) = (vec![0f32; len], vec![0f32; t.sw]);
        let (mut pe, mut po) = (vec![0u32; T * x_pairs], vec![0u32; T * x_pairs]);
        for c0 in (0..cin).step_by(T) {
            for cc in 0..T {
                t.load_row(&xf[(c0 + cc) * t.sh * t.sw..][..t.sh * t.sw], row, &mut line, &mut tmp);
                let (e, o) = (&mut pe[cc * x_pairs..][..x_pairs], &mut po[cc * x_pairs..][..x_pairs]);
                for j in 0..x_pairs {
                    e[j] = gemm_bf16::pair(line[2 * j], line[2 * j + 1]);
                    o[j] = gemm_bf16::pair(line[2 * j + 1], line[2 * j + 2]);
                }
            }
            gemm_bf16::transpose_16_rows(&pe, &mut ev[c0..], cin);
            gemm_bf16::transpose_16_rows(&po, &mut od[c0..], cin);
        }
    }
}

/// Output-gradient pixel pairs per 16-pair step of the filter gradient, per k block: 256 pairs
/// (16 steps) of A and the B rows they meet stay in L2 while every output block takes them.
const FILTER_K_STEPS: usize = 16;

/// The gradient of [`forward`]'s weight from its input `x` and `dy`: [cout][cin][r][r], f32.
pub(super) fn filter_grad<E: Elem, F: Elem>(x: &[E], dy: &[F], cin: usize, cout: usize, t: &Tiles) -> Vec<f32> {
    let (r, taps) = (t.r, t.r * t.r);
    let (plane_in, plane_dy) = (cin * t.sh * t.sw, cout * t.ho * t.wo);
    let images = x.len() / plane_in;
    // A: dy in pixel pairs, zero past wo, as [B][ho][step][cout][16 pairs]: an A tile (16
    // output channels × the 16 pairs of one step) is 1 KiB in one piece. (Rows of a plane apart
    // instead, 2–8 KiB, would all fall into the same few L1 sets.)
    let row_pairs = t.wo.div_ceil(2).next_multiple_of(T);
    let steps_per_row = row_pairs / T;
    let a_image = cout * t.ho * row_pairs;
    // B: the padded input channels-last in pixel pairs, [B][shift][h][x_pairs][cin]: pair j of
    // shift s holds columns 2j + s and 2j + s + 1 (zero past w).
    let x_pairs = row_pairs + r;
    let b_image = 2 * t.h * x_pairs * cin;
    // dW [cout][tap][cin], summed block by block over k.
    let by_tap = with_pairs(0, images * a_image, |a| {
        with_pairs(1, images * b_image + SLACK, |b| {
            for (dyb, ab) in dy.chunks_exact(plane_dy).zip(a.chunks_exact_mut(a_image)) {
                let g = widened(dyb);
                ab.par_chunks_mut(cout * row_pairs).enumerate().for_each(|(y, dst)| pixel_pairs(&g, y, cout, t.ho, t.wo, dst));
            }
            b[images * b_image..].fill(0);
            for (xb, bb) in x.chunks_exact(plane_in).zip(b.chunks_exact_mut(b_image)) {
                let xf = widened(xb);
                let (even, odd) = bb.split_at_mut(t.h * x_pairs * cin);
                even.par_chunks_mut(x_pairs * cin).zip(odd.par_chunks_mut(x_pairs * cin)).enumerate().for_each(|(row, (ev, od))| channels_last_pairs(t, &xf, row, cin, ev, od));
            }
            // dW for tap (kh, kw) [cout, cin] = Σ over images, rows and 16-pair steps of A · B,
            // k block by k block; a task owns a block of 32 output channels (all taps, all input
            // channels), so each A tile it loads serves every tap and input block.
            let k_steps = images * t.ho * steps_per_row;
            let (a, b) = (&*a, &*b);
            crate::ops::par_chunks_made(cout * taps * cin, 2 * T * taps * cin, || (), |_, bm, dw_block: &mut [f32]| {
                // SAFETY: AMX was detected (`applies`); A loads read 16 rows of 16 pairs inside an
                // image's rows of `a`; B loads 16 pixel pairs × 16 channels inside a row's
                // x_pairs (j0 + 16 + kw/2 ≤ row_pairs + r) of `b`; the stores stay inside this
                // task's 32 output channels [32][tap][cin].
                unsafe {
                    let tiles = amx::Tiles::configure();
                    for k0 in (0..k_steps).step_by(FILTER_K_STEPS) {
                        let ks = k0..(k0 + FILTER_K_STEPS).min(k_steps);
                        for bn in 0..cin / (2 * T) {
                            for tap in 0..taps {
                                let (kh, kw) = (tap / r, tap % r);
                                let steps = ks.clone().map(|s| {
                                    let (img, y, j0) = (s / (t.ho * steps_per_row), s / steps_per_row % t.ho, s % steps_per_row * T);
                                    let pa = a.as_ptr().add(img * a_image + ((y * steps_per_row + j0 / T) * cout + bm * 2 * T) * T);
                                    let pb = b.as_ptr().add(img * b_image + (kw % 2) * t.h * x_pairs * cin + ((y + kh) * x_pairs + j0 + kw / 2) * cin + bn * 2 * T);
                                    amx::Step { a: [pa, pa.add(T * T)], a_stride: T * 4, b: [pb, pb.add(T)], b_stride: cin * 4 }
                                });
                                let c = dw_block.as_mut_ptr().add(tap * cin + bn * 2 * T);
                                tiles.block_into(c, taps * cin, k0 > 0, steps);
                            }
                        }
                    }
                }
            })
            .0
        })
    });
    // [cout][tap][cin] → [cout][cin][tap].
    crate::ops::par_chunks_made(cout * cin * taps, cin * taps, || (), |_, co, dst| {
        let src = &by_tap[co * taps * cin..][..taps * cin];
        for (ci, d) in dst.chunks_exact_mut(taps).enumerate() {
            for (tap, v) in d.iter_mut().enumerate() {
                *v = src[tap * cin + ci];
            }
        }
    })
    .0
}

#[cfg(test)]
mod timing {
    use super::super::{Kernel, Pad, Tiles};
    use crate::ops::{with_precision, Precision};

    /// `cargo test --release --lib direct::timing -- --ignored --nocapture`: the three AMX direct
    /// kernels against fp32 Winograd on the residual blocks' shapes (medians of 15).
    #[test]
    #[ignore]
    fn direct_vs_winograd() {
        let val = crate::ops::test_value;
        for (hw, c) in [(32usize, 256usize), (64, 256), (64, 128), (128, 64)] {
            let t = Tiles::new(hw, hw, Pad::Reflect, Kernel::new(3, 4).unwrap()).unwrap();
            let x: Vec<f32> = (0..c * hw * hw).map(val).collect();
            let w: Vec<f32> = (0..c * c * 9).map(|i| val(i + 3) * 0.05).collect();
            let dy: Vec<f32> = (0..c * hw * hw).map(|i| val(i + 5)).collect();
            let median = |f: &mut dyn FnMut()| {
                let mut v: Vec<f64> = (0..15).map(|_| {
                    let t0 = std::time::Instant::now();
                    f();
                    t0.elapsed().as_secs_f64() * 1e3
                }).collect();
                v.sort_by(f64::total_cmp);
                v[7]
            };
            let mut line = format!("{hw}², {c} channels:");
            for p in [Precision::Fp32, Precision::Bf16] {
                let (f, d, g) = with_precision(p, || {
                    (
                        median(&mut || drop(super::super::forward_kernel(&x, &w, c, c, &t, None))),
                        median(&mut || drop(super::super::data_grad_kernel(&dy, &w, c, c, &t, None))),
                        median(&mut || drop(super::super::filter_grad_kernel(&x, &dy, c, c, &t, None))),
                    )
                });
                line += &format!(" {p}: forward {f:.2} ms, data grad {d:.2}, filter grad {g:.2};");
            }
            eprintln!("{line}");
            let width = super::plane_width(t.w, t.ho, t.wo);
            // Packed where the kernels pack them: in the threads' buffers, which start on a line.
            let (pw, pwa, pp, k) = super::with_pairs(1, super::packed_len(c, c, 3, false), |packed| {
                let pw = median(&mut || _ = super::pack_weights(&w, c, c, 3, false, packed));
                let pwa = median(&mut || _ = super::pack_weights(&w, c, c, 3, true, packed));
                let wp = super::pack_weights(&w, c, c, 3, false, packed);
                super::with_pairs(0, super::planes_len(c, t.h, width), |px| {
                    let load = |ch: usize, r: usize, row: &mut [f32], tmp: &mut [f32]| t.load_row(&x[ch * hw * hw..(ch + 1) * hw * hw], r, row, tmp);
                    let pp = median(&mut || super::pack_planes(c, t.h, width, px, load));
                    let mut out = vec![0f32; c * hw * hw];
                    let k = median(&mut || super::direct(px, (super::pairs_of(c), t.h * width, width), wp, 3, c, (t.ho, t.wo), &mut out));
                    (pw, pwa, pp, k)
                })
            });
            eprintln!("  forward: pack weights {pw:.2} ms (adjoint {pwa:.2} ms), pack input {pp:.2} ms, tiles {k:.2} ms ({:.0} GFLOP/s)", 2.0 * (c * c * 9 * hw * hw) as f64 / k / 1e6);
        }
    }
}
