//! Matrix products and per-thread scratch buffers, the leaf the convolution kernels share
//! (im2col in `conv`, Winograd in `winograd`, the FID Inception's 1×1 convolutions): it depends
//! on no other kernel module, so `ops` has no import cycle.

use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::Cell;

/// A matrix operand: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub fn rows(data: &'a [f32], width: usize) -> Self {
        Self { data, rs: width, cs: 1 }
    }

    pub fn transposed(data: &'a [f32], width: usize) -> Self {
        Self { data, rs: 1, cs: width }
    }

    /// Whether every element of a rows × cols operand lies in `data` (an empty one reads none).
    pub fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst` [m,n] (row stride `dst_rs`) = (`dst` if `accumulate`) + `lhs` [m,k] · `rhs` [k,n],
/// multithreaded; in bf16 where this thread's precision says so (`super::precision`), as are the
/// two below.
pub(crate) fn matmul(m: usize, n: usize, k: usize, dst: (&mut [f32], usize), accumulate: bool, lhs: Mat, rhs: Mat) {
    gemm_with(m, n, k, dst, accumulate, lhs, rhs, Arith::current(), Parallelism::Rayon(0));
}

/// Which kernel a product runs on: read on the calling thread (the precision is per thread, and
/// the products may run on rayon's workers).
#[derive(Clone, Copy)]
enum Arith {
    F32,
    Bf16,
}

impl Arith {
    fn current() -> Self {
        if super::precision::cpu_bf16() {
            Arith::Bf16
        } else {
            Arith::F32
        }
    }
}

/// `matmul` for a long inner dimension and a small output (weight gradients): `k` is split
/// across the rayon threads, each running a one-thread GEMM into its own buffer, and the parts
/// are summed. The gemm crate only parallelises over the output, and on such shapes a second
/// thread gained it almost nothing (measured alone on 2 cores: 128×576 output with k 4096,
/// 7.4 → 6.7 ms; 64×147 with k 16384, 6.0 → 3.0 ms).
pub(crate) fn matmul_split_k(m: usize, n: usize, k: usize, (dst, dst_rs): (&mut [f32], usize), accumulate: bool, lhs: Mat, rhs: Mat) {
    let arith = Arith::current();
    let parts = rayon::current_num_threads().min(k / 256);
    if parts < 2 || k < 2 * m.max(n) {
        return gemm_with(m, n, k, (dst, dst_rs), accumulate, lhs, rhs, arith, Parallelism::Rayon(0));
    }
    let mut partial = crate::ops::zeros(parts * m * n);
    partial.par_chunks_mut(m * n).enumerate().for_each(|(p, out)| {
        let (k0, k1) = (k * p / parts, k * (p + 1) / parts);
        let lhs = Mat { data: &lhs.data[k0 * lhs.cs..], ..lhs };
        let rhs = Mat { data: &rhs.data[k0 * rhs.rs..], ..rhs };
        gemm_with(m, n, k1 - k0, (out, n), false, lhs, rhs, arith, Parallelism::None);
    });
    let (first, rest) = partial.split_at(m * n);
    dst.par_chunks_mut(dst_rs).take(m).enumerate().for_each(|(i, row)| {
        let row = &mut row[..n];
        if !accumulate {
            row.copy_from_slice(&first[i * n..][..n]);
        } else {
            for (d, v) in row.iter_mut().zip(&first[i * n..][..n]) {
                *d += v;
            }
        }
        for part in rest.chunks_exact(m * n) {
            for (d, v) in row.iter_mut().zip(&part[i * n..][..n]) {
                *d += v;
            }
        }
    });
}

/// `count` independent products of one shape, each GEMM on one thread and the GEMMs spread over
/// the rayon threads: for p < `count`, `dst` at p·`dst_step` (row stride `dst_rs`) (+)= `lhs` at
/// p·`lhs_step` · `rhs` at p·`rhs_step`. For many mid-sized GEMMs (Winograd's per-position
/// products) this beats splitting each one across the threads. Product p's rows are
/// `dst[p·dst_step + i·dst_rs..][..n]`; `n ≤ dst_step` and `count·dst_step ≤ dst_rs` keep all
/// of them apart.
pub(crate) fn matmul_batch(
    count: usize,
    (m, n, k): (usize, usize, usize),
    (dst, dst_step, dst_rs): (&mut [f32], usize, usize),
    accumulate: bool,
    (lhs, lhs_step): (Mat, usize),
    (rhs, rhs_step): (Mat, usize),
) {
    if count == 0 || m == 0 || n == 0 {
        return;
    }
    let last = count - 1;
    assert!(
        n <= dst_step
            && (m == 1 || count * dst_step <= dst_rs)
            && last * dst_step + (m - 1) * dst_rs + n <= dst.len()
            && Mat { data: lhs.data.get(last * lhs_step..).unwrap_or(&[]), ..lhs }.fits(m, k)
            && Mat { data: rhs.data.get(last * rhs_step..).unwrap_or(&[]), ..rhs }.fits(k, n),
        "batched gemm operand out of bounds"
    );
    // The products write disjoint elements (see above).
    let out = SharedDst(dst.as_mut_ptr());
    let arith = Arith::current();
    (0..count).into_par_iter().for_each(|p| {
        let lhs = Mat { data: &lhs.data[p * lhs_step..], ..lhs };
        let rhs = Mat { data: &rhs.data[p * rhs_step..], ..rhs };
        // SAFETY: the assert keeps every read inside `lhs` / `rhs` and every write inside `dst`
        // (the last product reaches furthest), and product p's writes are its own.
        unsafe { gemm_raw(m, n, k, (out.at(p * dst_step), dst_rs), accumulate, lhs, rhs, arith, Parallelism::None) }
    });
}

/// A destination's base pointer shared by parallel tasks that each write their own elements of
/// it (the batched products here, the bf16 product's blocks).
#[derive(Clone, Copy)]
pub(crate) struct SharedDst(pub *mut f32);

// SAFETY: users write disjoint elements through it, so sharing the pointer across threads never
// lets two of them touch the same float.
unsafe impl Sync for SharedDst {}
unsafe impl Send for SharedDst {}

impl SharedDst {
    /// The float `off` past the base (a method, so closures capture the wrapper, not the pointer).
    pub fn at(&self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_with(m: usize, n: usize, k: usize, (dst, dst_rs): (&mut [f32], usize), accumulate: bool, lhs: Mat, rhs: Mat, arith: Arith, par: Parallelism) {
    if m == 0 || n == 0 {
        return; // nothing to write (and `m − 1` below would underflow)
    }
    assert!(
        dst_rs >= n && (m - 1) * dst_rs + n <= dst.len() && lhs.fits(m, k) && rhs.fits(k, n),
        "conv gemm operand out of bounds"
    );
    // SAFETY: the assert above keeps every element gemm reads or writes inside the slices,
    // and `dst` is borrowed mutably, so it aliases neither operand.
    unsafe { gemm_raw(m, n, k, (dst.as_mut_ptr(), dst_rs), accumulate, lhs, rhs, arith, par) }
}

/// The gemm crate's call (or, for `Arith::Bf16`, ours in bf16) in our operand conventions:
/// `dst` [m,n] at row stride `dst_rs` (+)= `lhs` [m,k] · `rhs` [k,n].
///
/// # Safety
/// `lhs` and `rhs` must fit their shapes (`Mat::fits`), and `dst` must point to m rows of n
/// writable floats `dst_rs` apart that nothing else reads or writes during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(m: usize, n: usize, k: usize, (dst, dst_rs): (*mut f32, usize), accumulate: bool, lhs: Mat, rhs: Mat, arith: Arith, par: Parallelism) {
    if let Arith::Bf16 = arith {
        // SAFETY: forwarded from the caller's contract; Arith::Bf16 only where the CPU has the
        // instructions (`precision::cpu_bf16`).
        return unsafe { super::gemm_bf16::gemm(m, n, k, (dst, dst_rs), accumulate, lhs, rhs, matches!(par, Parallelism::Rayon(_))) };
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Runs `f` on a buffer of `len` floats with unspecified contents, reusing one allocation per
/// thread: an im2col matrix runs to tens of MB, and allocating and zeroing it on every call
/// costs a noticeable share of a small convolution. The buffer is taken out of the slot while
/// in use, so a nested call on the same thread just allocates its own (use `with_scratch_slot`
/// with another slot for a buffer that outlives the inner calls).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_scratch_slot(0, len, f)
}

/// `with_scratch` on one of two per-thread buffers (`slot` 0 or 1).
pub(crate) fn with_scratch_slot<R>(slot: usize, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: [Cell<Vec<f32>>; 2] = const { [Cell::new(Vec::new()), Cell::new(Vec::new())] };
    }
    SCRATCH.with(|s| with_taken(&s[slot], len, f))
}

/// Bytes in a cache line.
const LINE: usize = 64;

/// Runs `f` on `len` elements of the buffer kept in `cell` (a thread's), grown as needed, from its
/// first cache-line boundary on: taken out while in use, so a nested call on the same cell gets a
/// buffer of its own. The start is on a line because the kernels' packed operands have rows of
/// whole lines, and a 64-byte load that straddles two lines (an AMX tile row, an AVX-512 vector)
/// costs two: AMX's direct convolutions ran 1.5–1.9× longer on weights 16 bytes off a line
/// (malloc's alignment) than on aligned ones (bench/RESULTS.md, "A tenth round").
pub(crate) fn with_taken<T: Clone + Default, R>(cell: &Cell<Vec<T>>, len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let mut buf = cell.take();
    let out = f(from_line(&mut buf, len));
    cell.set(buf);
    out
}

/// `len` elements of `buf` from its first cache-line boundary on (see [`with_taken`]), `buf`
/// made longer first where it is too short (its contents then start as `T::default()`).
pub(crate) fn from_line<T: Clone + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    let start = line_start(buf, len);
    &mut buf[start..start + len]
}

/// Where `len` elements of `buf` (made longer first where it is too short) start on a line.
fn line_start<T: Clone + Default>(buf: &mut Vec<T>, len: usize) -> usize {
    let size = std::mem::size_of::<T>().max(1);
    if buf.len() < len + LINE / size {
        *buf = vec![T::default(); len + LINE / size];
    }
    // A Vec<T> is aligned to T, so the distance to the next line is whole elements where T's
    // size divides a line (u32, f32); otherwise the buffer is used as it is.
    if LINE.is_multiple_of(size) {
        (LINE - buf.as_ptr() as usize % LINE) % LINE / size
    } else {
        0
    }
}

/// A buffer of `len` elements (zero at first) that start on a cache line, for packed operands
/// kept across calls (see [`with_taken`]).
pub(crate) struct LineBuf<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Clone + Default> LineBuf<T> {
    // Only the AMX direct kernels keep such buffers.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn new(len: usize) -> Self {
        let mut buf = Vec::new();
        let start = line_start(&mut buf, len);
        Self { buf, start, len }
    }
}

impl<T> std::ops::Deref for LineBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for LineBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-thread buffers and kept ones start on a cache line whatever malloc returned, keep
    /// their contents between uses of the same size, and a nested use gets a buffer of its own.
    #[test]
    fn buffers_start_on_a_cache_line() {
        thread_local! {
            static CELL: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
        }
        let on_line = |p: *const u32| (p as usize).is_multiple_of(LINE);
        for len in [1, 15, 16, 1000, 4097] {
            CELL.with(|cell| {
                with_taken(cell, len, |outer| {
                    assert!(on_line(outer.as_ptr()) && outer.len() == len);
                    outer[len - 1] = 7;
                    with_taken(cell, len, |inner| assert!(on_line(inner.as_ptr()) && inner.as_ptr() != outer.as_ptr()));
                });
                with_taken(cell, len, |again| assert_eq!(again[len - 1], 7));
            });
            let kept = LineBuf::<u32>::new(len);
            assert!(on_line(kept.as_ptr()) && kept.len() == len && kept.iter().all(|&v| v == 0));
        }
        with_scratch(33, |s: &mut [f32]| assert!((s.as_ptr() as usize).is_multiple_of(LINE)));
    }

    /// Empty products write nothing (no dimension underflows in the bounds checks), and a product
    /// over an empty inner dimension is zero.
    #[test]
    fn empty_dimensions_are_no_ops() {
        let a = [1f32; 6];
        for (m, n) in [(0, 3), (2, 0), (0, 0)] {
            let mut dst = [7f32; 6];
            matmul(m, n, 3, (&mut dst, 3), false, Mat::rows(&a, 3), Mat::rows(&a, 3));
            assert_eq!(dst, [7.0; 6]);
        }
        let mut dst = [7f32; 6];
        matmul(2, 3, 0, (&mut dst, 3), false, Mat::rows(&[], 0), Mat::rows(&[], 3));
        assert_eq!(dst, [0.0; 6]);
    }
}
