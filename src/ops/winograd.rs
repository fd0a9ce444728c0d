//! 3×3 stride-1 convolutions without padding or with a reflection padding of 1 (the residual
//! blocks' convolutions) by Winograd's minimal filtering F(2×2, 3×3): 16 multiplications per 2×2
//! output tile and input channel instead of 36, so 2.25× less GEMM work than im2col.
//!
//! With the transforms Bᵀ (4×4), G (4×3) and Aᵀ (2×4) of Lavin & Gray (2016), every 4×4 input
//! tile d (tiles step by 2) and every filter g give V = Bᵀ d B and U = G g Gᵀ, and
//!   y_tile = Aᵀ [ Σ_ci U[co,ci] ⊙ V[ci] ] A.
//! For each of the 16 tile positions ξ the channel sum is one GEMM:
//!   M[ξ] [Cout, T] = U[ξ] [Cout, Cin] · V[ξ] [Cin, T].
//! Buffers are channel-major ([C][16][ts], ts ≥ T a padded row length; U as [Cout][16][Cin]) so
//! transforms run in parallel over channels on contiguous chunks and, within a channel, over whole
//! rows of tiles as vector loops; the GEMMs read them with strides.
//! The gradients are the adjoints of the same linear maps, so they are GEMMs in the same domain:
//!   dM = A dY Aᵀ,  dV[ξ] = U[ξ]ᵀ · dM[ξ],  dx = Σ_tiles B dV Bᵀ,
//!   dU[ξ] = dM[ξ] · V[ξ]ᵀ,  dW = Gᵀ dU G.
//! The three ops (forward, data gradient, filter gradient) are bilinear and each one's
//! derivatives are the other two, so second-order gradients work as for `conv`.

use super::conv::{matmul, matmul_split_k, with_scratch, Mat};
use super::f32_data;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether a convolution takes this path: 3×3, stride 1, no padding, and enough channels for
/// the 16 GEMMs to beat one im2col GEMM. `CS_NO_WINOGRAD` set turns it off (for benchmarks).
pub(crate) fn applies(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    k == 3 && stride == 1 && pad == 0 && cin >= 16 && cout >= 16 && !*OFF.get_or_init(|| std::env::var_os("CS_NO_WINOGRAD").is_some())
}

/// `xs` [B,Cin,H,W] reflection-padded by `pad` (0 or 1), `w` [Cout,Cin,3,3] →
/// [B,Cout,H+2·pad−2,W+2·pad−2] (contiguous f32 CPU operands). The padding happens inside the
/// transforms, so no padded copy of `xs` exists or is kept for backward.
pub(crate) fn conv3x3(xs: &Tensor, w: &Tensor, pad: usize) -> Result<Tensor> {
    xs.apply_op2(w, Forward { pad })
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

/// The tiling of one stored [sh, sw] input plane, reflection-padded by `pad` (0 or 1) to the
/// [h, w] plane the convolution sees: output (h−2)×(w−2) in 2×2 tiles, `th`×`tw` of them.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    sh: usize,
    sw: usize,
    pad: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(sh: usize, sw: usize, pad: usize) -> Result<Self> {
        if pad > 1 || (pad == 1 && (sh < 2 || sw < 2)) {
            bail!("winograd conv: reflection padding {pad} of a {sh}x{sw} input is not supported");
        }
        let (h, w) = (sh + 2 * pad, sw + 2 * pad);
        if h < 3 || w < 3 {
            bail!("3x3 convolution of a {h}x{w} input without padding has no output");
        }
        let (ho, wo) = (h - 2, w - 2);
        Ok(Self { sh, sw, pad, h, w, ho, wo, th: ho.div_ceil(2), tw: wo.div_ceil(2) })
    }

    fn plane(&self) -> usize {
        self.sh * self.sw
    }

    /// Columns one row of tiles reads: 2 per tile plus the 2 the last one overlaps (zeros past `w`).
    fn row_width(&self) -> usize {
        2 * self.tw + 2
    }

    /// Padded rows the tile rows `band` read.
    fn band_rows(band: (usize, usize)) -> usize {
        2 * (band.1 - band.0) + 2
    }

    /// The stored row that padded row `r` (< h) shows.
    fn source_row(&self, r: usize) -> usize {
        match (self.pad, r) {
            (0, r) => r,
            (_, 0) => 1,
            (_, r) if r > self.sh => self.sh - 2,
            (_, r) => r - 1,
        }
    }

    /// Writes padded row `r`'s `w` values into `row[..w]` from `src`, the stored row.
    fn padded_row(&self, src: &[f32], row: &mut [f32]) {
        if self.pad == 0 {
            row[..self.sw].copy_from_slice(src);
        } else {
            row[0] = src[1];
            row[1..self.sw + 1].copy_from_slice(src);
            row[self.sw + 1] = src[self.sw - 2];
        }
    }

    /// Adds padded row `row[..w]` into the stored row `dst` (the adjoint of `padded_row`).
    fn fold_row(&self, row: &[f32], dst: &mut [f32]) {
        let p = self.pad;
        for (d, v) in dst.iter_mut().zip(&row[p..p + self.sw]) {
            *d += v;
        }
        if p == 1 {
            dst[1] += row[0];
            dst[self.sw - 2] += row[self.sw + 1];
        }
    }

    /// Bands of tile rows whose transformed data (16 floats per tile for each of `channels`)
    /// stays within [`BAND_FLOATS`].
    fn bands(&self, channels: usize) -> Vec<(usize, usize)> {
        let rows = (band_limit() / (16 * channels * self.tw).max(1)).clamp(1, self.th);
        (0..self.th).step_by(rows).map(|r0| (r0, (r0 + rows).min(self.th))).collect()
    }
}

/// Distance between the 16 position rows of one channel in a band buffer: the band's tile count
/// rounded up to whole cache lines, and moved off multiples of 1 KiB so that the 16 rows a
/// transform reads or writes side by side do not all fall into the same cache sets.
fn row_stride(tb: usize) -> usize {
    let s = tb.next_multiple_of(16);
    if s.is_multiple_of(256) {
        s + 16
    } else {
        s
    }
}

/// `dst[k] = f(a[k], b[k])` over the common length (a loop LLVM vectorises).
#[inline(always)]
fn map2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &p), &q) in dst.iter_mut().zip(a).zip(b) {
        *d = f(p, q);
    }
}

/// `dst[k] = f(a[k], b[k], c[k])`.
#[inline(always)]
fn map3(dst: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (((d, &p), &q), &r) in dst.iter_mut().zip(a).zip(b).zip(c) {
        *d = f(p, q, r);
    }
}


// The transforms below work on whole rows of tiles at once: every 4×4 (or 2×2, 3×3) matrix
// entry is a vector over the tiles of a tile row (or over input channels, for the filters),
// so each step is one vectorised loop, and each of the 16 rows of a channel's band buffer is
// read or written in contiguous runs. The 1-D maps, on a vector v of 4 (3, 2) entries:
//   Bᵀv = [v0−v2, v1+v2, v2−v1, v1−v3]          Bv = [v0, v1−v2+v3, v1+v2−v0, −v3]
//   Gv  = [v0, ½(v0+v1+v2), ½(v0−v1+v2), v2]     Gᵀv = [v0+½(v1+v2), ½(v1−v2), ½(v1+v2)+v3]
//   Aᵀv = [v0+v1+v2, v1−v2−v3]                   Av = [v0, v0+v1, v0−v1, −v1]

/// U [Cout][16][Cin] from `w` [Cout, Cin, 3, 3] (so each output channel's part is one
/// contiguous chunk; the GEMMs read U[ξ] [Cout, Cin] with row stride 16·Cin).
fn filter_transform(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; cout * 16 * cin];
    let scratch = || vec![0f32; 21 * cin];
    u.par_chunks_mut(16 * cin).zip(w.par_chunks(9 * cin)).take(cout).for_each_init(scratch, |buf, (uc, wc)| filter_plane(buf, uc, wc, cin));
    u
}

simd_fn! {
    fn filter_plane(buf: &mut [f32], uc: &mut [f32], wc: &[f32], cin: usize) {
        // g[i][j] as a vector over input channels, then H = G g (4×3), then U = H Gᵀ.
        let (g, h) = buf.split_at_mut(9 * cin);
        for (k, gk) in g.chunks_exact_mut(cin).enumerate() {
            for (v, wf) in gk.iter_mut().zip(wc.chunks_exact(9)) {
                *v = wf[k];
            }
        }
        let gr = |i: usize, j: usize| &g[(i * 3 + j) * cin..][..cin];
        for j in 0..3 {
            let hr = |i: usize| (i * 3 + j) * cin;
            h[hr(0)..][..cin].copy_from_slice(gr(0, j));
            map3(&mut h[hr(1)..][..cin], gr(0, j), gr(1, j), gr(2, j), |a, b, c| 0.5 * (a + b + c));
            map3(&mut h[hr(2)..][..cin], gr(0, j), gr(1, j), gr(2, j), |a, b, c| 0.5 * (a - b + c));
            h[hr(3)..][..cin].copy_from_slice(gr(2, j));
        }
        for (i, ui) in uc.chunks_exact_mut(4 * cin).enumerate() {
            let hr = |j: usize| &h[(i * 3 + j) * cin..][..cin];
            let (u0, rest) = ui.split_at_mut(cin);
            let (u1, rest) = rest.split_at_mut(cin);
            let (u2, u3) = rest.split_at_mut(cin);
            u0.copy_from_slice(hr(0));
            map3(u1, hr(0), hr(1), hr(2), |a, b, c| 0.5 * (a + b + c));
            map3(u2, hr(0), hr(1), hr(2), |a, b, c| 0.5 * (a - b + c));
            u3.copy_from_slice(hr(2));
        }
    }
}

/// dW [Cout, Cin, 3, 3] from dU [Cout][16][Cin] (the adjoint of `filter_transform`).
fn filter_transform_adjoint(du: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut dw = vec![0f32; cout * cin * 9];
    let scratch = || vec![0f32; 21 * cin];
    dw.par_chunks_mut(9 * cin).zip(du.par_chunks(16 * cin)).take(cout).for_each_init(scratch, |buf, (wc, uc)| filter_adjoint_plane(buf, wc, uc, cin));
    dw
}

simd_fn! {
    fn filter_adjoint_plane(buf: &mut [f32], wc: &mut [f32], uc: &[f32], cin: usize) {
        // H = Gᵀ dU (3×4), then dW = H G (3×3), each entry a vector over input channels.
        let (h, o) = buf.split_at_mut(12 * cin);
        let ur = |i: usize, j: usize| &uc[(i * 4 + j) * cin..][..cin];
        for j in 0..4 {
            let hr = |i: usize| (i * 4 + j) * cin;
            map3(&mut h[hr(0)..][..cin], ur(0, j), ur(1, j), ur(2, j), |a, b, c| a + 0.5 * (b + c));
            map2(&mut h[hr(1)..][..cin], ur(1, j), ur(2, j), |b, c| 0.5 * (b - c));
            map3(&mut h[hr(2)..][..cin], ur(1, j), ur(2, j), ur(3, j), |b, c, d| 0.5 * (b + c) + d);
        }
        for i in 0..3 {
            let hr = |j: usize| &h[(i * 4 + j) * cin..][..cin];
            let or = |j: usize| (i * 3 + j) * cin;
            map3(&mut o[or(0)..][..cin], hr(0), hr(1), hr(2), |a, b, c| a + 0.5 * (b + c));
            map2(&mut o[or(1)..][..cin], hr(1), hr(2), |b, c| 0.5 * (b - c));
            map3(&mut o[or(2)..][..cin], hr(1), hr(2), hr(3), |b, c, d| 0.5 * (b + c) + d);
        }
        for (k, ok) in o.chunks_exact(cin).enumerate() {
            for (wf, &v) in wc.chunks_exact_mut(9).zip(ok) {
                wf[k] = v;
            }
        }
    }
}

/// Splits `row` into its even and odd entries; entries of `even` / `odd` past the row are zeros.
#[inline(always)]
fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.len() / 2;
    for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
        *e = p[0];
        *o = p[1];
    }
    let mut done = pairs;
    if row.len() % 2 == 1 {
        even[pairs] = row[row.len() - 1];
        odd[pairs] = 0.0;
        done += 1;
    }
    even[done..].fill(0.0);
    odd[done..].fill(0.0);
}

/// V [C][16][ts] for the tile rows `band` of `x` [C, sh, sw], padded as `t` says; reads past
/// the padded plane's edge (partial tiles) are zeros. Bᵀ runs down the columns of a whole tile
/// row, then across the tiles on the even and odd columns.
fn input_transform(x: &[f32], c: usize, t: &Tiles, band: (usize, usize), v: &mut [f32]) {
    let tw = t.tw;
    let ts = row_stride((band.1 - band.0) * tw);
    let width = t.row_width();
    let scratch = || vec![0f32; 8 * width + 2 * (tw + 1)];
    v.par_chunks_mut(16 * ts).zip(x.par_chunks(t.plane())).take(c).for_each_init(scratch, |buf, (vc, plane)| input_plane(buf, vc, plane, t, band, ts));
}

simd_fn! {
    fn input_plane(buf: &mut [f32], vc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        let tw = t.tw;
        let width = t.row_width();
        let (rows, rest) = buf.split_at_mut(4 * width);
        let (cols, rest) = rest.split_at_mut(4 * width);
        let (ev, od) = rest.split_at_mut(tw + 1);
        for ti in band.0..band.1 {
            for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                let r = 2 * ti + i;
                if r < t.h {
                    let sr = t.source_row(r);
                    t.padded_row(&plane[sr * t.sw..(sr + 1) * t.sw], row);
                    row[t.w..].fill(0.0);
                } else {
                    row.fill(0.0);
                }
            }
            let (d0, rest) = rows.split_at(width);
            let (d1, rest) = rest.split_at(width);
            let (d2, d3) = rest.split_at(width);
            let (c0, rest) = cols.split_at_mut(width);
            let (c1, rest) = rest.split_at_mut(width);
            let (c2, c3) = rest.split_at_mut(width);
            map2(c0, d0, d2, |a, b| a - b);
            map2(c1, d1, d2, |a, b| a + b);
            map2(c2, d2, d1, |a, b| a - b);
            map2(c3, d1, d3, |a, b| a - b);
            let base = (ti - band.0) * tw;
            for (i, cr) in cols.chunks_exact(width).enumerate() {
                deinterleave(cr, ev, od);
                let out = |j: usize| (i * 4 + j) * ts + base;
                let (e0, e1, o0, o1) = (&ev[..tw], &ev[1..], &od[..tw], &od[1..]);
                map2(&mut vc[out(0)..][..tw], e0, e1, |a, b| a - b);
                map2(&mut vc[out(1)..][..tw], o0, e1, |a, b| a + b);
                map2(&mut vc[out(2)..][..tw], e1, o0, |a, b| a - b);
                map2(&mut vc[out(3)..][..tw], o0, o1, |a, b| a - b);
            }
        }
    }
}

/// Adds Σ_tiles B dV Bᵀ from dV [C][16][ts] into `dx` [C, sh, sw] (the adjoint of
/// `input_transform`): tiles add into a padded band of rows, which is then folded back.
fn input_transform_adjoint(dv: &[f32], c: usize, t: &Tiles, band: (usize, usize), dx: &mut [f32]) {
    let tw = t.tw;
    let ts = row_stride((band.1 - band.0) * tw);
    let width = t.row_width();
    let rows = Tiles::band_rows(band);
    let scratch = || vec![0f32; rows * width + 32 * tw + 2 * (tw + 1)];
    dx.par_chunks_mut(t.plane()).zip(dv.par_chunks(16 * ts)).take(c).for_each_init(scratch, |buf, (plane, vc)| input_adjoint_plane(buf, plane, vc, t, band, ts));
}

simd_fn! {
    fn input_adjoint_plane(buf: &mut [f32], plane: &mut [f32], vc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        let tw = t.tw;
        let width = t.row_width();
        let r0 = 2 * band.0; // first padded row the band's tiles touch
        let rows = Tiles::band_rows(band);
        let (acc, rest) = buf.split_at_mut(rows * width);
        let (cb, rest) = rest.split_at_mut(16 * tw);
        let (dd, rest) = rest.split_at_mut(16 * tw);
        let (ev, od) = rest.split_at_mut(tw + 1);
        acc.fill(0.0);
        for ti in band.0..band.1 {
            let base = (ti - band.0) * tw;
            let m = |i: usize, j: usize| &vc[(i * 4 + j) * ts + base..][..tw];
            // C = dV B (B applied to every row of dV's 4×4), then dD = B C down the columns.
            for i in 0..4 {
                let o = |j: usize| (i * 4 + j) * tw;
                cb[o(0)..][..tw].copy_from_slice(m(i, 0));
                map3(&mut cb[o(1)..][..tw], m(i, 1), m(i, 2), m(i, 3), |b, c, d| b - c + d);
                map3(&mut cb[o(2)..][..tw], m(i, 1), m(i, 2), m(i, 0), |b, c, a| b + c - a);
                map2(&mut cb[o(3)..][..tw], m(i, 3), m(i, 3), |d, _| -d);
            }
            let cr = |i: usize, j: usize| &cb[(i * 4 + j) * tw..][..tw];
            for j in 0..4 {
                let o = |i: usize| (i * 4 + j) * tw;
                dd[o(0)..][..tw].copy_from_slice(cr(0, j));
                map3(&mut dd[o(1)..][..tw], cr(1, j), cr(2, j), cr(3, j), |b, c, d| b - c + d);
                map3(&mut dd[o(2)..][..tw], cr(1, j), cr(2, j), cr(0, j), |b, c, a| b + c - a);
                map2(&mut dd[o(3)..][..tw], cr(3, j), cr(3, j), |d, _| -d);
            }
            // Row i of every tile adds into padded row 2·ti+i: columns 2·tj + j, where entries
            // 2 and 3 of one tile meet entries 0 and 1 of the next.
            for i in 0..4 {
                let d = |j: usize| &dd[(i * 4 + j) * tw..][..tw];
                ev[..tw].copy_from_slice(d(0));
                od[..tw].copy_from_slice(d(1));
                ev[tw] = 0.0;
                od[tw] = 0.0;
                for (e, &v) in ev[1..].iter_mut().zip(d(2)) {
                    *e += v;
                }
                for (e, &v) in od[1..].iter_mut().zip(d(3)) {
                    *e += v;
                }
                let row = &mut acc[(2 * ti + i - r0) * width..][..width];
                for (pair, (&e, &o)) in row.chunks_exact_mut(2).zip(ev.iter().zip(od.iter())) {
                    pair[0] += e;
                    pair[1] += o;
                }
            }
        }
        for (i, row) in acc.chunks_exact(width).enumerate() {
            let r = r0 + i;
            if r >= t.h {
                break;
            }
            let sr = t.source_row(r);
            t.fold_row(row, &mut plane[sr * t.sw..(sr + 1) * t.sw]);
        }
    }
}

/// Writes Aᵀ M A from M [C][16][ts] into the tiles `band` of `y` [C, Ho, Wo].
fn output_transform(m: &[f32], c: usize, t: &Tiles, band: (usize, usize), y: &mut [f32]) {
    let tw = t.tw;
    let ts = row_stride((band.1 - band.0) * tw);
    let scratch = || vec![0f32; 10 * tw];
    y.par_chunks_mut(t.ho * t.wo).zip(m.par_chunks(16 * ts)).take(c).for_each_init(scratch, |buf, (plane, mc)| output_plane(buf, plane, mc, t, band, ts));
}

simd_fn! {
    fn output_plane(buf: &mut [f32], plane: &mut [f32], mc: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        let tw = t.tw;
        let (r, rest) = buf.split_at_mut(8 * tw);
        let (ev, od) = rest.split_at_mut(tw);
        for ti in band.0..band.1 {
            let base = (ti - band.0) * tw;
            let mm = |i: usize, j: usize| &mc[(i * 4 + j) * ts + base..][..tw];
            // R = Aᵀ M down the columns (2×4), then each output row R A across the tiles.
            for j in 0..4 {
                map3(&mut r[j * tw..][..tw], mm(0, j), mm(1, j), mm(2, j), |a, b, c| a + b + c);
                map3(&mut r[(4 + j) * tw..][..tw], mm(1, j), mm(2, j), mm(3, j), |b, c, d| b - c - d);
            }
            for i in 0..2 {
                let row = 2 * ti + i;
                if row >= t.ho {
                    break;
                }
                let rr = |j: usize| &r[(i * 4 + j) * tw..][..tw];
                map3(ev, rr(0), rr(1), rr(2), |a, b, c| a + b + c);
                map3(od, rr(1), rr(2), rr(3), |b, c, d| b - c - d);
                let out = &mut plane[row * t.wo..][..t.wo];
                let mut pairs = out.chunks_exact_mut(2);
                for (pair, (&e, &o)) in (&mut pairs).zip(ev.iter().zip(od.iter())) {
                    pair[0] = e;
                    pair[1] = o;
                }
                if let [last] = pairs.into_remainder() {
                    *last = ev[tw - 1];
                }
            }
        }
    }
}

/// dM [C][16][ts] = A dY Aᵀ for the tiles `band` of `dy` [C, Ho, Wo] (the adjoint of
/// `output_transform`; outputs past the edge count as zero).
fn output_transform_adjoint(dy: &[f32], c: usize, t: &Tiles, band: (usize, usize), dm: &mut [f32]) {
    let tw = t.tw;
    let ts = row_stride((band.1 - band.0) * tw);
    let scratch = || vec![0f32; 6 * tw];
    dm.par_chunks_mut(16 * ts).zip(dy.par_chunks(t.ho * t.wo)).take(c).for_each_init(scratch, |buf, (mc, plane)| output_adjoint_plane(buf, mc, plane, t, band, ts));
}

simd_fn! {
    fn output_adjoint_plane(buf: &mut [f32], mc: &mut [f32], plane: &[f32], t: &Tiles, band: (usize, usize), ts: usize) {
        let tw = t.tw;
        let (d, p) = buf.split_at_mut(4 * tw);
        let (pe, po) = p.split_at_mut(tw);
        for ti in band.0..band.1 {
            let base = (ti - band.0) * tw;
            // The tile row's two output rows as even / odd columns, zeros past the edges.
            let (e0, rest) = d.split_at_mut(tw);
            let (o0, rest) = rest.split_at_mut(tw);
            let (e1, o1) = rest.split_at_mut(tw);
            for (i, (e, o)) in [(e0, o0), (e1, o1)].into_iter().enumerate() {
                let row = 2 * ti + i;
                if row < t.ho {
                    deinterleave(&plane[row * t.wo..][..t.wo], e, o);
                } else {
                    e.fill(0.0);
                    o.fill(0.0);
                }
            }
            let (e0, o0, e1, o1) = (&d[..tw], &d[tw..2 * tw], &d[2 * tw..3 * tw], &d[3 * tw..]);
            // A dY down the columns gives rows [d0, d0+d1, d0−d1, −d1]; A across each row.
            for i in 0..4 {
                match i {
                    0 => {
                        pe.copy_from_slice(e0);
                        po.copy_from_slice(o0);
                    }
                    1 => {
                        map2(pe, e0, e1, |a, b| a + b);
                        map2(po, o0, o1, |a, b| a + b);
                    }
                    2 => {
                        map2(pe, e0, e1, |a, b| a - b);
                        map2(po, o0, o1, |a, b| a - b);
                    }
                    _ => {
                        map2(pe, e1, e1, |b, _| -b);
                        map2(po, o1, o1, |b, _| -b);
                    }
                }
                let out = |j: usize| (i * 4 + j) * ts + base;
                mc[out(0)..][..tw].copy_from_slice(pe);
                map2(&mut mc[out(1)..][..tw], pe, po, |a, b| a + b);
                map2(&mut mc[out(2)..][..tw], pe, po, |a, b| a - b);
                map2(&mut mc[out(3)..][..tw], po, po, |b, _| -b);
            }
        }
    }
}






/// For every ξ: `dst`[ξ] (rows of a [rows][16][Tb] buffer) = U[ξ] · `src`[ξ] (rows of a
/// [k][16][Tb] buffer), with U [Cout][16][Cin] and U[ξ] [Cout, Cin] or, `transpose_u`, its
/// transpose [Cin, Cout].
fn gemm_per_position(u: &[f32], transpose_u: bool, rows: usize, k: usize, src: &[f32], tb: usize, dst: &mut [f32]) {
    let cin = if transpose_u { rows } else { k };
    let ts = row_stride(tb);
    for xi in 0..16 {
        let uxi = &u[xi * cin..];
        let lhs = if transpose_u { Mat { data: uxi, rs: 1, cs: 16 * cin } } else { Mat { data: uxi, rs: 16 * cin, cs: 1 } };
        let rhs = Mat { data: &src[xi * ts..], rs: 16 * ts, cs: 1 };
        matmul(rows, tb, k, (&mut dst[xi * ts..], 16 * ts), false, lhs, rhs);
    }
}

fn forward_kernel(x: &[f32], w: &[f32], cin: usize, cout: usize, t: &Tiles) -> Vec<f32> {
    let u = filter_transform(w, cout, cin);
    let mut y = vec![0f32; x.len() / (cin * t.plane()) * cout * t.ho * t.wo];
    for (xb, yb) in x.chunks_exact(cin * t.plane()).zip(y.chunks_exact_mut(cout * t.ho * t.wo)) {
        for band in t.bands(cin + cout) {
            let tb = (band.1 - band.0) * t.tw;
            let ts = row_stride(tb);
            with_scratch(16 * ts * (cin + cout), |buf| {
                let (v, m) = buf.split_at_mut(16 * ts * cin);
                input_transform(xb, cin, t, band, v);
                gemm_per_position(&u, false, cout, cin, v, tb, m);
                output_transform(m, cout, t, band, yb);
            });
        }
    }
    y
}

fn data_grad_kernel(dy: &[f32], w: &[f32], cin: usize, cout: usize, t: &Tiles) -> Vec<f32> {
    let u = filter_transform(w, cout, cin);
    let mut dx = vec![0f32; dy.len() / (cout * t.ho * t.wo) * cin * t.plane()];
    for (dyb, dxb) in dy.chunks_exact(cout * t.ho * t.wo).zip(dx.chunks_exact_mut(cin * t.plane())) {
        for band in t.bands(cin + cout) {
            let tb = (band.1 - band.0) * t.tw;
            let ts = row_stride(tb);
            with_scratch(16 * ts * (cin + cout), |buf| {
                let (dm, dv) = buf.split_at_mut(16 * ts * cout);
                output_transform_adjoint(dyb, cout, t, band, dm);
                // dV[ξ] [Cin, Tb] = U[ξ]ᵀ · dM[ξ]; U[ξ] is [Cout, Cin].
                gemm_per_position(&u, true, cin, cout, dm, tb, dv);
                input_transform_adjoint(dv, cin, t, band, dxb);
            });
        }
    }
    dx
}

fn filter_grad_kernel(x: &[f32], dy: &[f32], cin: usize, cout: usize, t: &Tiles) -> Vec<f32> {
    let mut du = vec![0f32; 16 * cout * cin];
    let mut first = true;
    for (xb, dyb) in x.chunks_exact(cin * t.plane()).zip(dy.chunks_exact(cout * t.ho * t.wo)) {
        for band in t.bands(cin + cout) {
            let tb = (band.1 - band.0) * t.tw;
            let ts = row_stride(tb);
            with_scratch(16 * ts * (cin + cout), |buf| {
                let (v, dm) = buf.split_at_mut(16 * ts * cin);
                input_transform(xb, cin, t, band, v);
                output_transform_adjoint(dyb, cout, t, band, dm);
                // dU[ξ] [Cout, Cin] (+)= dM[ξ] [Cout, Tb] · V[ξ]ᵀ [Tb, Cin].
                for xi in 0..16 {
                    let lhs = Mat { data: &dm[xi * ts..], rs: 16 * ts, cs: 1 };
                    let rhs = Mat { data: &v[xi * ts..], rs: 1, cs: 16 * ts };
                    matmul_split_k(cout, cin, tb, (&mut du[xi * cin..], 16 * cin), !first, lhs, rhs);
                }
            });
            first = false;
        }
    }
    filter_transform_adjoint(&du, cout, cin)
}

/// (x [B,Cin,H,W], w [Cout,Cin,3,3]) → y [B,Cout,H+2p−2,W+2p−2], x reflection-padded by p.
struct Forward {
    pad: usize,
}

/// (dy [B,Cout,H+2p−2,W+2p−2], w [Cout,Cin,3,3]) → dx [B,Cin,H,W].
struct DataGrad {
    h: usize,
    w: usize,
    pad: usize,
}

/// (x [B,Cin,H,W], dy [B,Cout,H+2p−2,W+2p−2]) → dW [Cout,Cin,3,3].
struct FilterGrad {
    pad: usize,
}

fn check_weight(l: &Layout, cin: usize) -> Result<usize> {
    let (cout, cin_w, kh, kw) = l.shape().dims4()?;
    if (cin_w, kh, kw) != (cin, 3, 3) {
        bail!("winograd conv: weight {:?} does not fit {cin} input channels and a 3x3 kernel", l.dims());
    }
    Ok(cout)
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "winograd-conv3x3"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cin, h, w) = l1.shape().dims4()?;
        let cout = check_weight(l2, cin)?;
        let t = Tiles::new(h, w, self.pad)?;
        let y = forward_kernel(f32_data(s1, l1)?, f32_data(s2, l2)?, cin, cout, &t);
        Ok((CpuStorage::F32(y), Shape::from((bsz, cout, t.ho, t.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let pad = self.pad;
        let dx = x.track_op().then(|| dy.apply_op2(w, DataGrad { h, w: wd, pad })).transpose()?;
        let dw = w.track_op().then(|| x.apply_op2(&dy, FilterGrad { pad })).transpose()?;
        Ok((dx, dw))
    }
}

impl CustomOp2 for DataGrad {
    fn name(&self) -> &'static str {
        "winograd-conv3x3-data-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cout, ho, wo) = l1.shape().dims4()?;
        let (cout_w, cin, _, _) = l2.shape().dims4()?;
        if cout_w != cout || check_weight(l2, cin).is_err() {
            bail!("winograd conv backward: gradient {:?} does not fit weight {:?}", l1.dims(), l2.dims());
        }
        let t = Tiles::new(self.h, self.w, self.pad)?;
        if (t.ho, t.wo) != (ho, wo) {
            bail!("winograd conv backward: gradient {ho}x{wo} does not match input {}x{}", self.h, self.w);
        }
        let dx = data_grad_kernel(f32_data(s1, l1)?, f32_data(s2, l2)?, cin, cout, &t);
        Ok((CpuStorage::F32(dx), Shape::from((bsz, cin, self.h, self.w))))
    }

    fn bwd(&self, dy: &Tensor, w: &Tensor, _res: &Tensor, ddx: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ddx = ddx.contiguous()?;
        let pad = self.pad;
        let ddy = dy.track_op().then(|| ddx.apply_op2(w, Forward { pad })).transpose()?;
        let dw = w.track_op().then(|| ddx.apply_op2(dy, FilterGrad { pad })).transpose()?;
        Ok((ddy, dw))
    }
}

impl CustomOp2 for FilterGrad {
    fn name(&self) -> &'static str {
        "winograd-conv3x3-filter-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bsz, cin, h, w) = l1.shape().dims4()?;
        let (bg, cout, ho, wo) = l2.shape().dims4()?;
        let t = Tiles::new(h, w, self.pad)?;
        if (bg, ho, wo) != (bsz, t.ho, t.wo) {
            bail!("winograd conv filter gradient: gradient {:?} does not match input {:?}", l2.dims(), l1.dims());
        }
        let dw = filter_grad_kernel(f32_data(s1, l1)?, f32_data(s2, l2)?, cin, cout, &t);
        Ok((CpuStorage::F32(dw), Shape::from((cout, cin, 3, 3))))
    }

    fn bwd(&self, x: &Tensor, dy: &Tensor, _res: &Tensor, ddw: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ddw = ddw.contiguous()?;
        let (_, _, h, w) = x.dims4()?;
        let pad = self.pad;
        let dx = x.track_op().then(|| dy.apply_op2(&ddw, DataGrad { h, w, pad })).transpose()?;
        let ddy = dy.track_op().then(|| x.apply_op2(&ddw, Forward { pad })).transpose()?;
        Ok((dx, ddy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tile row per band gives the same results as one band, for all three kernels.
    #[test]
    fn banded_kernels_match_single_band() {
        let (b, cin, cout) = (2, 3, 4);
        for t in [Tiles::new(9, 8, 0).unwrap(), Tiles::new(7, 6, 1).unwrap()] {
            check_bands(b, cin, cout, &t);
        }
    }

    fn check_bands(b: usize, cin: usize, cout: usize, t: &Tiles) {
        let t = *t;
        assert_eq!((t.ho, t.wo, t.th, t.tw), (7, 6, 4, 3));
        let val = super::super::test_value;
        let x: Vec<f32> = (0..b * cin * t.plane()).map(val).collect();
        let w: Vec<f32> = (0..cout * cin * 9).map(|i| val(i + 3)).collect();
        let dy: Vec<f32> = (0..b * cout * t.ho * t.wo).map(|i| val(i + 5)).collect();
        let run = || {
            (forward_kernel(&x, &w, cin, cout, &t), data_grad_kernel(&dy, &w, cin, cout, &t), filter_grad_kernel(&x, &dy, cin, cout, &t))
        };
        let whole = run();
        BAND_LIMIT.with(|l| l.set(1));
        assert_eq!(t.bands(cin + cout).len(), t.th);
        let banded = run();
        BAND_LIMIT.with(|l| l.set(BAND_FLOATS));
        for (a, b) in [(&whole.0, &banded.0), (&whole.1, &banded.1), (&whole.2, &banded.2)] {
            assert!(a.iter().zip(b).all(|(p, q)| (p - q).abs() < 1e-5));
        }
    }
}
