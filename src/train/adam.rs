//! Adam as PyTorch's (no weight decay), with its moments saved for exact resume and a fused
//! in-place update on the CPU.

use anyhow::Result;
use candle_core::{backprop::GradStore, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use crate::ops::{all_finite, cpu_f32, f32_data, f32_data_mut, lane_sum};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// Adam exactly as PyTorch's `torch.optim.Adam` (no weight decay, eps outside the square root,
/// bias corrections folded into the step size), with its moments exposed for checkpoints.
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Completed update steps.
    pub t: u64,
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    /// `params` in a fixed order (sorted by name by the caller).
    pub fn new(params: Vec<(String, Var)>, beta1: f64, beta2: f64) -> Result<Self> {
        // Separate allocations: the moments are updated in place.
        let zeros = || params.iter().map(|(_, p)| p.zeros_like()).collect::<candle_core::Result<Vec<_>>>();
        let (m, v) = (zeros()?, zeros()?);
        Ok(Self { beta1, beta2, eps: 1e-8, t: 0, params, m, v })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left unchanged
    /// (their moments still decay, as in PyTorch only when a gradient exists — so skip them).
    /// Returns whether every updated weight is finite, with a sum of squares that is too (what
    /// [`all_finite`] asks): the in-place update finds it in the pass that writes the weights,
    /// where a separate check would read them all again.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<bool> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let step_size = lr / bc1;
        let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
        let mut finite = true;
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            // candle leaves the accumulated gradient of a variable attached to the forward graph
            // it came from; detached, the moments cannot keep every step's graph alive.
            let g = g.detach();
            if in_place(p.as_tensor(), &g) {
                let update = FusedUpdate { eps: self.eps, step_size, inv_sqrt_bc2, finite: AtomicBool::new(false) };
                // m and v hold (m, v) after the call, p the updated weights: a pass each, no
                // allocations. Nothing else shares their storage (checkpoints copy them out
                // synchronously between steps).
                self.m[i].inplace_op2(&g, &MomentUpdate { beta: self.beta1, square: false })?;
                self.v[i].inplace_op2(&g, &MomentUpdate { beta: self.beta2, square: true })?;
                p.as_tensor().inplace_op3(&self.m[i], &self.v[i], &update)?;
                finite &= update.finite.load(Ordering::Relaxed);
                continue;
            }
            let g = &g;
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((v.sqrt()? * inv_sqrt_bc2)? + self.eps)?;
            let update = (m.div(&denom)? * step_size)?;
            p.set(&p.as_tensor().sub(&update)?)?;
            finite &= all_finite(p.as_tensor())?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(finite)
    }

    /// Moments as named tensors `{prefix}.m.{name}` / `{prefix}.v.{name}`.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("{prefix}.m.{name}"), self.m[i].clone()));
            out.push((format!("{prefix}.v.{name}"), self.v[i].clone()));
        }
        out
    }

    pub fn load_state(&mut self, prefix: &str, tensors: &HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{kind}.{name}");
                let x = tensors
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("optimiser state has no {key}"))?;
                if x.shape() != p.shape() {
                    anyhow::bail!("optimiser state {key} has shape {:?}, expected {:?}", x.shape(), p.shape());
                }
                // A copy: the moments are updated in place and must not share storage.
                *slot = x.to_device(p.device())?.copy()?;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Elements per parallel task of the in-place updates.
const CHUNK: usize = 1 << 16;

/// Whether the update can run in place on the CPU: f32 and contiguous, as candle creates
/// variables and gradients.
fn in_place(p: &Tensor, g: &Tensor) -> bool {
    cpu_f32(p) && g.dtype() == DType::F32 && p.is_contiguous() && g.is_contiguous()
}

/// moment ← β·moment + (1−β)·g (or g² for the second moment), in place.
struct MomentUpdate {
    beta: f64,
    square: bool,
}

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let g = f32_data(g, gl)?;
        let m = f32_data_mut(dst, dst_l)?;
        if m.len() != g.len() {
            // zip would update only the shorter length and leave the rest stale, silently.
            candle_core::bail!("adam: moment of {} elements for a gradient of {}", m.len(), g.len());
        }
        let (b, c) = (self.beta as f32, (1.0 - self.beta) as f32);
        let square = self.square;
        m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
            if square {
                m.iter_mut().zip(g).for_each(|(m, &g)| *m = b * *m + c * (g * g));
            } else {
                m.iter_mut().zip(g).for_each(|(m, &g)| *m = b * *m + c * g);
            }
        });
        Ok(())
    }
}

/// p ← p − step·m / (√v/√(1−β₂ᵗ) + ε), in place (PyTorch's Adam with bias corrections); sets
/// `finite` to whether the new weights' sum of squares is finite.
struct FusedUpdate {
    eps: f64,
    step_size: f64,
    inv_sqrt_bc2: f64,
    finite: AtomicBool,
}

impl InplaceOp3 for FusedUpdate {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, m: &CpuStorage, ml: &Layout, v: &CpuStorage, vl: &Layout) -> candle_core::Result<()> {
        let (m, v) = (f32_data(m, ml)?, f32_data(v, vl)?);
        let p = f32_data_mut(dst, dst_l)?;
        if m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!("adam: {} weights with moments of {} and {} elements", p.len(), m.len(), v.len());
        }
        let (step, k, eps) = (self.step_size as f32, self.inv_sqrt_bc2 as f32, self.eps as f32);
        let squares: f64 = p
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .map(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    // The same operation order as the composed path (and PyTorch's).
                    *p -= m / (v.sqrt() * k + eps) * step;
                }
                // While the chunk is in cache. NaN and infinity carry through the sum.
                lane_sum(p, |w| w * w)
            })
            .sum();
        self.finite.store((squares as f32).is_finite(), Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A step says whether the weights it wrote are finite: not after they overflow (squares past
    /// f32's range) or turn NaN, as the trainers' divergence check needs.
    #[test]
    fn a_step_reports_weights_that_stop_being_finite() {
        let p = Var::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![("w".into(), p.clone())], 0.5, 0.999).unwrap();
        let grads = (p.as_tensor() * 2.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(adam.step(&grads, 2e-4).unwrap());
        assert!(!adam.step(&grads, 1e30).unwrap());
        p.set(&Tensor::new(&[f32::NAN, 0.0, 0.0], &Device::Cpu).unwrap()).unwrap();
        assert!(!adam.step(&grads, 2e-4).unwrap());
        p.set(&Tensor::new(&[1f32, 0.0, 0.0], &Device::Cpu).unwrap()).unwrap();
        assert!(adam.step(&grads, 2e-4).unwrap());
    }

    /// The in-place updates refuse operands of different lengths instead of updating only the
    /// shorter length.
    #[test]
    fn in_place_updates_refuse_mismatched_lengths() {
        let m = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        let err = m.inplace_op2(&g, &MomentUpdate { beta: 0.9, square: false }).unwrap_err();
        assert!(err.to_string().contains("moment of 4 elements for a gradient of 3"), "{err}");
        let p = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let err = p.inplace_op3(&m, &g, &FusedUpdate { eps: 1e-8, step_size: 1e-3, inv_sqrt_bc2: 1.0, finite: AtomicBool::new(false) }).unwrap_err();
        assert!(err.to_string().contains("3 weights with moments of 4 and 3"), "{err}");
    }
}
