//! The image pool of earlier fakes that the CycleGAN discriminators see (the reference's 50).

use crate::util::Rng;
use anyhow::Result;
use candle_core::Tensor;

/// The reference's history of generated images (Shrivastava et al.): until it holds `capacity`
/// images it stores and returns each new fake; afterwards, with probability 1/2, it returns a
/// random stored fake and keeps the new one in its place.
pub struct ImagePool {
    capacity: usize,
    pub images: Vec<Tensor>, // each [1,C,H,W], detached
}

impl ImagePool {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, images: Vec::new() }
    }

    /// `fakes` `[B,C,H,W]` → `[B,C,H,W]` drawn from the pool, detached from the graph.
    pub fn query(&mut self, fakes: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let fakes = fakes.detach();
        if self.capacity == 0 {
            return Ok(fakes);
        }
        let mut out = Vec::with_capacity(fakes.dim(0)?);
        for i in 0..fakes.dim(0)? {
            // A copy: the fakes may be a view of a larger batch (the generator pass runs several
            // images at once), which a stored view would keep alive.
            let img = fakes.narrow(0, i, 1)?.copy()?;
            if self.images.len() < self.capacity {
                self.images.push(img.clone());
                out.push(img);
            } else if rng.uniform() > 0.5 {
                let j = rng.below(self.capacity);
                out.push(std::mem::replace(&mut self.images[j], img));
            } else {
                out.push(img);
            }
        }
        Ok(Tensor::cat(&out, 0)?)
    }
}
