//! Instance-norm statistics taken from one forward pass and reused by others: tiled translation
//! normalises every tile with statistics of the whole image, so tiles agree with each other.
//!
//! The statistics are collected and replayed per thread, in the order the network's norm layers
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
}

thread_local! {
    static MODE: RefCell<Option<Mode>> = const { RefCell::new(None) };
}

/// Clears the thread's mode when dropped, so an error or panic inside `f` leaves nothing behind.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        MODE.with(|m| m.borrow_mut().take());
    }
}

fn with_mode<T>(mode: Mode, f: impl FnOnce() -> Result<T>) -> Result<(T, Mode)> {
    if MODE.with(|m| m.borrow().is_some()) {
        bail!("norm statistics are already being recorded or replayed on this thread");
    }
    MODE.with(|m| *m.borrow_mut() = Some(mode));
    let reset = Reset;
    let out = f()?;
    let mode = MODE.with(|m| m.borrow_mut().take()).expect("set above");
    drop(reset);
    Ok((out, mode))
}

/// Runs `f` (a forward pass) and returns its result with the statistics of every norm layer.
pub fn record<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, NormStats)> {
    match with_mode(Mode::Record(NormStats::default()), f)? {
        (out, Mode::Record(stats)) => Ok((out, stats)),
        _ => unreachable!("the mode is only replaced by with_mode"),
    }
}

/// Runs `f` (a forward pass of the network that recorded `stats`) with every norm layer using
/// the recorded statistics instead of its own input's. Batch entries of `stats` are broadcast:
/// statistics of one image serve a batch of windows of it.
pub fn replay<T>(stats: &NormStats, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match with_mode(Mode::Replay { stats: stats.clone(), next: 0 }, f)? {
        (out, Mode::Replay { stats, next }) if next == stats.len() => Ok(out),
        (_, Mode::Replay { stats, next }) => bail!("the network ran {next} norm layers, the statistics have {}", stats.len()),
        _ => unreachable!("the mode is only replaced by with_mode"),
    }
}

/// `blur_down(act(instance_norm(xs)))` (CUT's anti-aliased down-sampling): fused into one op on
/// the CPU unless statistics are being recorded or replayed.
pub(crate) fn norm_act_blur_down(xs: &Tensor, act: Act) -> Result<Tensor> {
    if MODE.with(|m| m.borrow().is_none()) && crate::ops::blur::fused_down_applies(xs) {
        return crate::ops::norm::instance_norm_act_blur_down(xs, act);
    }
    super::antialias::blur_down(&norm_act(xs, act)?)
}

/// `act(instance_norm(xs))` for `xs` [B,C,H,W]; records or replays statistics when asked to.
pub(crate) fn norm_act(xs: &Tensor, act: Act) -> Result<Tensor> {
    MODE.with(|m| {
        let mut mode = m.borrow_mut();
        match mode.as_mut() {
            None => instance_norm_act(xs, act),
            Some(Mode::Record(stats)) => {
                let mean = xs.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?; // [B,C,1,1]
                let var = xs.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
                stats.layers.push((mean, var));
                instance_norm_act(xs, act)
            }
            Some(Mode::Replay { stats, next }) => {
                let Some((mean, var)) = stats.layers.get(*next) else {
                    bail!("the network runs more norm layers than the {} recorded", stats.len())
                };
                *next += 1;
                let inv_std = (var + EPS)?.sqrt()?.recip()?;
                act.compose(&xs.broadcast_sub(mean)?.broadcast_mul(&inv_std)?)
            }
        }
    })
}
