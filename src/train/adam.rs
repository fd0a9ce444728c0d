use anyhow::Result;
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::HashMap;

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
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self { beta1, beta2, eps: 1e-8, t: 0, params, m, v })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left unchanged
    /// (their moments still decay, as in PyTorch only when a gradient exists — so skip them).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let step_size = lr / bc1;
        let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            // candle leaves the accumulated gradient of a variable attached to the forward graph
            // it came from; detached, the moments cannot keep every step's graph alive.
            let g = g.detach();
            let g = &g;
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((v.sqrt()? * inv_sqrt_bc2)? + self.eps)?;
            let update = (m.div(&denom)? * step_size)?;
            p.set(&p.as_tensor().sub(&update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
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
                *slot = x.to_device(p.device())?;
            }
        }
        self.t = t;
        Ok(())
    }
}
