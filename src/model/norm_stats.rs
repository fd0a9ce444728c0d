//! Instance-norm statistics taken from one forward pass (or measured over parts of an image, one
//! layer at a time) and reused by others: tiled translation normalises every tile with statistics
//! of the whole image, so tiles agree with each other.
//!
//! The statistics are collected, measured and replayed per thread, in the order the network's norm layers
//! run (the same for every input), so the networks' `forward` stays exactly the training one and
//! needs no extra argument.

use crate::ops::{instance_norm_act, Act};
use candle_core::{bail, Result, Tensor, D};
use std::cell::RefCell;

/// PyTorch's `InstanceNorm2d` epsilon, as in `ops::norm`.
const EPS: f64 = 1e-5;

/// Per norm layer, in the order they run: the mean and biased variance of every plane,
/// each `[B,C,1,1]`.
#[derive(Clone, Debug, Default)]
pub struct NormStats {
    layers: Vec<(Tensor, Tensor)>,
}

impl NormStats {
    /// Number of norm layers recorded.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

enum Mode {
    Record(NormStats),
    Replay { stats: NormStats, next: usize },
    Measure(Measure),
}

/// One norm layer's per-channel sums over a region of one window (see [`measure`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegionSums {
    /// Σx and Σx² per channel, in f64 so sums over millions of pixels keep their precision.
    pub sum: Vec<f64>,
    pub sum_sq: Vec<f64>,
    /// Pixels summed per channel.
    pub count: usize,
}

impl RegionSums {
    /// Adds another region's sums (the same layer, another window).
    pub fn add(&mut self, other: &RegionSums) {
        if self.sum.is_empty() {
            *self = other.clone();
            return;
        }
        self.sum.iter_mut().zip(&other.sum).for_each(|(a, b)| *a += b);
        self.sum_sq.iter_mut().zip(&other.sum_sq).for_each(|(a, b)| *a += b);
        self.count += other.count;
    }

    /// The mean and biased variance, each `[1,C,1,1]`, as [`record`] keeps them.
    fn stats(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let n = self.count.max(1) as f64;
        let mean: Vec<f32> = self.sum.iter().map(|s| (s / n) as f32).collect();
        let var: Vec<f32> = self.sum.iter().zip(&self.sum_sq).map(|(s, q)| ((q / n) - (s / n) * (s / n)).max(0.0) as f32).collect();
        let c = mean.len();
        Ok((Tensor::from_vec(mean, (1, c, 1, 1), device)?, Tensor::from_vec(var, (1, c, 1, 1), device)?))
    }
}

struct Measure {
    /// Statistics for the norm layers before `target` (replayed).
    stats: NormStats,
    next: usize,
    target: usize,
    /// Rows and columns (y0, y1, x0, x1) of the network's input to sum over; each layer sees
    /// them scaled by its own resolution.
    region: (usize, usize, usize, usize),
    input_hw: (usize, usize),
    sums: Option<RegionSums>,
}

/// Why a measuring forward pass stops early (not a failure: [`measure`] checks its own mode).
const MEASURED: &str = "norm statistics measured; the rest of the forward pass is not needed";

thread_local! {
    static MODE: RefCell<Option<Mode>> = const { RefCell::new(None) };
}

/// Runs `f` with no mode on this thread (its mode, if any, restored afterwards).
pub(crate) fn set_aside<R>(f: impl FnOnce() -> R) -> R {
    crate::ops::with_replaced(&MODE, None, f)
}

/// Clears the thread's mode when dropped, so an error or panic inside `f` leaves nothing behind.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        MODE.with(|m| m.borrow_mut().take());
    }
}

/// Runs `f` with the thread in `mode`, and returns `f`'s result with the mode as `f` left it,
/// also when `f` failed (a measuring pass stops by failing). Err only if the thread already is in
/// a mode.
fn with_mode<T>(mode: Mode, f: impl FnOnce() -> Result<T>) -> Result<(Result<T>, Mode)> {
    if MODE.with(|m| m.borrow().is_some()) {
        bail!("norm statistics are already being recorded or replayed on this thread");
    }
    MODE.with(|m| *m.borrow_mut() = Some(mode));
    let reset = Reset;
    let out = f();
    let mode = MODE.with(|m| m.borrow_mut().take()).expect("set above");
    drop(reset);
    Ok((out, mode))
}

/// Runs `f` (a forward pass) and returns its result with the statistics of every norm layer.
pub fn record<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, NormStats)> {
    match with_mode(Mode::Record(NormStats::default()), f)? {
        (out, Mode::Record(stats)) => Ok((out?, stats)),
        _ => unreachable!("the mode is only replaced by with_mode"),
    }
}

/// Runs `f` (a forward pass of the network that recorded `stats`) with every norm layer using
/// the recorded statistics instead of its own input's. Batch entries of `stats` are broadcast:
/// statistics of one image serve a batch of windows of it.
pub fn replay<T>(stats: &NormStats, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match with_mode(Mode::Replay { stats: stats.clone(), next: 0 }, f)? {
        (out, Mode::Replay { stats, next }) if next == stats.len() => out,
        (Err(e), Mode::Replay { .. }) => Err(e),
        (Ok(_), Mode::Replay { stats, next }) => bail!("the network ran {next} norm layers, the statistics have {}", stats.len()),
        _ => unreachable!("the mode is only replaced by with_mode"),
    }
}

/// Runs `f` (a forward pass of a network with at least `target + 1` norm layers, on an input of
/// `input_hw` pixels) with the first `target` norm layers using `stats`, and returns norm layer
/// `target`'s input summed over `region` (y0, y1, x0, x1 of the input, scaled to that layer's
/// resolution, which must divide it evenly). The pass stops at that layer. Summed over regions
/// that partition an image, with windows around them wide enough for the network's view, this
/// gives the layer's statistics over the whole image without ever holding all of it: one layer
/// at a time, each with the exact statistics of the layers before (`exact_stats` in tiling).
pub fn measure(stats: &NormStats, target: usize, input_hw: (usize, usize), region: (usize, usize, usize, usize), f: impl FnOnce() -> Result<Tensor>) -> Result<RegionSums> {
    if stats.len() < target {
        bail!("statistics for {target} norm layers needed, {} given", stats.len());
    }
    let stats = NormStats { layers: stats.layers[..target].to_vec() };
    match with_mode(Mode::Measure(Measure { stats, next: 0, target, region, input_hw, sums: None }), f)? {
        (_, Mode::Measure(Measure { sums: Some(sums), .. })) => Ok(sums),
        (Err(e), _) => Err(e),
        (Ok(_), _) => bail!("the network ran fewer than {} norm layers", target + 1),
    }
}

/// Builds statistics from per-layer sums (each over a whole image), in layer order.
pub fn from_sums(layers: &[RegionSums], device: &candle_core::Device) -> Result<NormStats> {
    Ok(NormStats { layers: layers.iter().map(|l| l.stats(device)).collect::<Result<_>>()? })
}

/// Norm layer `m.target`'s input `xs` [1,C,h,w] summed over the region, scaled to `h`×`w`.
fn region_sums(xs: &Tensor, m: &Measure) -> Result<RegionSums> {
    let (b, c, h, w) = xs.dims4()?;
    let (ih, iw) = m.input_hw;
    let (y0, y1, x0, x1) = m.region;
    if b != 1 || h == 0 || w == 0 || ih % h != 0 || iw % w != 0 {
        bail!("cannot measure a [{b},{c},{h},{w}] layer of a {ih}×{iw} input");
    }
    let (sy, sx) = (ih / h, iw / w);
    if [y0, y1].iter().any(|v| v % sy != 0) || [x0, x1].iter().any(|v| v % sx != 0) {
        bail!("the region {y0}..{y1} × {x0}..{x1} does not fall on a {sy}×{sx} layer's pixels");
    }
    let part = xs.narrow(2, y0 / sy, (y1 - y0) / sy)?.narrow(3, x0 / sx, (x1 - x0) / sx)?;
    let planes = part.squeeze(0)?.flatten_from(1)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    let sum = planes.iter().map(|p| p.iter().map(|&v| v as f64).sum()).collect();
    let sum_sq = planes.iter().map(|p| p.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
    Ok(RegionSums { sum, sum_sq, count: planes.first().map_or(0, Vec::len) })
}

/// Whether no statistics are being recorded, replayed or measured on this thread: ops that
/// normalise inside themselves (fused blocks) may run only then.
pub(crate) fn idle() -> bool {
    MODE.with(|m| m.borrow().is_none())
}

/// `blur_down(act(instance_norm(xs)))` (CUT's anti-aliased down-sampling): fused into one op on
/// the CPU unless statistics are being recorded or replayed.
pub(crate) fn norm_act_blur_down(xs: &Tensor, act: Act) -> Result<Tensor> {
    if idle() && crate::ops::blur::fused_down_applies(xs) {
        return crate::ops::norm::instance_norm_act_blur_down(xs, act);
    }
    super::antialias::blur_down(&norm_act(xs, act)?)
}

/// `act((xs - mean) / sqrt(var + eps))` with given statistics (broadcast over the batch).
fn normalise(xs: &Tensor, mean: &Tensor, var: &Tensor, act: Act) -> Result<Tensor> {
    let inv_std = (var + EPS)?.sqrt()?.recip()?;
    crate::ops::normalise_act(xs, mean, &inv_std, act)
}

/// `residual + instance_norm(xs)`: fused into one op on the CPU where autograd would keep the
/// normalised tensor alive (training), unless statistics are being recorded, replayed or
/// measured. Without autograd the pair frees it at once, and the fused op only changed how the
/// heap is cut up (translating a 1024² image in bf16 peaked at 1308 instead of 1244 MiB).
/// `xs` is taken so that the unfused pair frees it before the sum is made (kept until then, it
/// raised that peak to 1372 MiB).
pub(crate) fn norm_residual(xs: Tensor, residual: &Tensor) -> Result<Tensor> {
    // With bf16 activations the fused op also spares candle's bf16 add (slow on the CPU).
    let bf16 = xs.dtype() == candle_core::DType::BF16 && xs.device().is_cpu();
    if idle() && (xs.track_op() || residual.track_op() || bf16) {
        return crate::ops::instance_norm_residual(&xs, residual);
    }
    let normalised = norm_act(&xs, Act::Identity)?;
    drop(xs); // before the sum is made, as the composed layers did
    residual + normalised
}

/// `act(instance_norm(xs))` for `xs` [B,C,H,W]; records, replays or measures statistics when asked to.
pub(crate) fn norm_act(xs: &Tensor, act: Act) -> Result<Tensor> {
    // The mode is taken out while the ops run, not borrowed: a rayon thread waiting inside them
    // may take another job (`ops::in_pool`), which sets this thread's mode aside for itself.
    let Some(mut mode) = MODE.with(|m| m.borrow_mut().take()) else { return instance_norm_act(xs, act) };
    let out = norm_act_in(&mut mode, xs, act);
    MODE.with(|m| *m.borrow_mut() = Some(mode));
    out
}

/// [`norm_act`] in `mode`.
fn norm_act_in(mode: &mut Mode, xs: &Tensor, act: Act) -> Result<Tensor> {
    match mode {
        Mode::Record(stats) => {
            let mean = xs.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?; // [B,C,1,1]
            let var = xs.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
            stats.layers.push((mean, var));
            instance_norm_act(xs, act)
        }
        Mode::Replay { stats, next } => {
            let Some((mean, var)) = stats.layers.get(*next) else {
                bail!("the network runs more norm layers than the {} recorded", stats.len())
            };
            *next += 1;
            normalise(xs, mean, var, act)
        }
        Mode::Measure(m) => {
            if m.next == m.target {
                m.sums = Some(region_sums(xs, m)?);
                bail!("{MEASURED}");
            }
            let (mean, var) = &m.stats.layers[m.next];
            m.next += 1;
            normalise(xs, mean, var, act)
        }
    }
}
