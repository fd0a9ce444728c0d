//! PatchNCE (CUT, Park et al. 2020): the projection heads `F`, the sampling of patch features and
//! the contrastive loss, as the reference's `PatchSampleF` (`mlp_sample`) and `PatchNCELoss`
//! with `nce_includes_all_negatives_from_minibatch` off.

use crate::util::Rng;
use crate::model::Feature;
use crate::ops::{cpu_f32, f32_data};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use candle_nn::{Init, VarBuilder};

/// `nn.Linear`: weight [out,in] and bias [out] as in PyTorch.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        // Placeholder init: the trainer re-draws every weight from the run's seed (xavier).
        let weight = vb.get_with_hints((cout, cin), "weight", Init::Randn { mean: 0.0, stdev: 0.02 })?;
        let bias = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    /// [N,in] → [N,out].
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// One head: Linear(C, nc) → ReLU → Linear(nc, nc).
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// The reference's `Normalize(2)`: x / (‖x‖₂ + 1e-7) over dimension 1.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(1)?.sqrt()?;
    xs.broadcast_div(&(norm + 1e-7)?)
}

/// The MLP heads of `F`, one per NCE layer. Checkpoint keys `mlp.{i}.fc{1,2}.{weight,bias}`.
///
/// The reference creates them lazily at the first batch from the features' channel counts; those
/// are known up front (layer 0: the input's channels, 1–7: ngf or 2ngf, 8 and beyond: 4ngf; see
/// [`PatchSampleF::channels`]), so ours are created in `new` and initialised like the rest
/// (xavier_normal, gain 0.02) by the trainer.
pub struct PatchSampleF {
    mlps: Vec<Mlp>,
}

impl PatchSampleF {
    /// Channels of the anti-aliased ResNet generator's feature at `layer` of the reference's
    /// `nn.Sequential` (see `ResnetGenerator::encode`).
    pub fn channels(layer: usize, in_channels: usize, ngf: usize) -> usize {
        match layer {
            0 => in_channels,
            1..=3 => ngf,
            4..=7 => 2 * ngf,
            _ => 4 * ngf,
        }
    }

    /// One head per entry of `channels` (the features' channel counts), each of width `nc`.
    pub fn new(channels: &[usize], nc: usize, vb: VarBuilder) -> Result<Self> {
        let mlps = channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let vb = vb.pp("mlp").pp(i);
                Ok(Mlp { fc1: Linear::new(c, nc, vb.pp("fc1"))?, fc2: Linear::new(nc, nc, vb.pp("fc2"))? })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { mlps })
    }

    /// Projects the sampled patches of every layer: `feats[i]` `[B,C,H,W]` with `ids[i]` (indices
    /// into H·W) → [B·P, nc], L2-normalised. Patches are ordered image-major as the reference's
    /// `permute(0,2,3,1).flatten(1,2)[:, ids, :].flatten(0,1)`.
    pub fn forward(&self, feats: &[Feature], ids: &[Vec<u32>]) -> Result<Vec<Tensor>> {
        if feats.len() != self.mlps.len() || ids.len() != feats.len() {
            candle_core::bail!("{} features and {} id lists for {} heads", feats.len(), ids.len(), self.mlps.len());
        }
        feats
            .iter()
            .zip(ids)
            .zip(&self.mlps)
            .map(|((f, ids), mlp)| {
                let x = sample_patches(f, ids)?; // [B·P,C]
                let x = mlp.fc2.forward(&mlp.fc1.forward(&x)?.relu()?)?; // [B·P,nc]
                l2_normalize(&x)
            })
            .collect()
    }
}

/// `feat` `[B,C,H,W]` → the features at positions `ids` of each image, `[B·P,C]`, its bias (if kept
/// apart) added to them.
pub fn sample_patches(feat: &Feature, ids: &[u32]) -> Result<Tensor> {
    // The MLP's f32 weights multiply f32 samples (the map may be bf16).
    let picked = sample_map(&feat.map, ids)?.to_dtype(candle_core::DType::F32)?;
    match &feat.bias {
        Some(b) => picked.broadcast_add(b),
        None => Ok(picked),
    }
}

fn sample_map(feat: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let (b, c, h, w) = feat.dims4()?;
    let hw = h * w;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= hw) {
        candle_core::bail!("patch id {bad} outside a {h}x{w} feature map");
    }
    if cpu_f32(feat) {
        return feat.contiguous()?.apply_op1(SamplePatches { ids: ids.to_vec() });
    }
    // Gather first, transpose after: only the P sampled columns are moved, not the whole map
    // (the reference's permute copies all H·W positions, and its gradient would be strided).
    let idx = Tensor::from_slice(ids, ids.len(), feat.device())?;
    let picked = feat.reshape((b, c, hw))?.index_select(&idx, 2)?; // [B,C,P]
    picked.transpose(1, 2)?.contiguous()?.reshape((b * ids.len(), c))
}

/// [B,C,H,W] → [B·P,C], the positions `ids` of every image (f32 on the CPU). Its backward
/// scatters into one zeroed map per plane, in parallel: the gather composed from reshape and
/// index_select costs several full-size passes in backward for a few hundred positions.
struct SamplePatches {
    ids: Vec<u32>,
}

impl CustomOp1 for SamplePatches {
    fn name(&self) -> &'static str {
        "sample-patches"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l)?;
        let (b, c, h, w) = l.shape().dims4()?;
        let (hw, p) = (h * w, self.ids.len());
        let mut y = vec![0f32; b * p * c];
        for (n, yb) in y.chunks_exact_mut(p * c).enumerate() {
            for (row, &id) in yb.chunks_exact_mut(c).zip(&self.ids) {
                for (ch, v) in row.iter_mut().enumerate() {
                    *v = x[(n * c + ch) * hw + id as usize];
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((b * p, c))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        let op = ScatterPatches { ids: self.ids.clone(), shape: (b, c, h, w) };
        Ok(Some(dy.contiguous()?.apply_op1(op)?))
    }
}

/// The adjoint of [`SamplePatches`]: [B·P,C] → [B,C,H,W], zero but at the sampled positions
/// (repeated ids add up).
struct ScatterPatches {
    ids: Vec<u32>,
    shape: (usize, usize, usize, usize),
}

impl CustomOp1 for ScatterPatches {
    fn name(&self) -> &'static str {
        "scatter-patches"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_data(s, l)?;
        let (b, c, h, w) = self.shape;
        let (hw, p) = (h * w, self.ids.len());
        if g.len() != b * p * c {
            candle_core::bail!("scatter_patches: gradient {:?} for {p} patches of {:?}", l.dims(), self.shape);
        }
        let mut dx = vec![0f32; b * c * hw];
        dx.par_chunks_mut(hw).enumerate().for_each(|(plane, d)| {
            let (n, ch) = (plane / c, plane % c);
            for (k, &id) in self.ids.iter().enumerate() {
                d[id as usize] += g[(n * p + k) * c + ch];
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from(self.shape)))
    }

    fn bwd(&self, _g: &Tensor, _res: &Tensor, ddx: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(ddx.contiguous()?.apply_op1(SamplePatches { ids: self.ids.clone() })?))
    }
}

/// Patch ids as the reference draws them: the first `min(num_patches, hw)` entries of a random
/// permutation of 0..hw (`np.random.permutation`, here from our own generator).
pub fn draw_patch_ids(hw: usize, num_patches: usize, rng: &mut Rng) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..hw as u32).collect();
    rng.shuffle(&mut ids);
    ids.truncate(num_patches.min(hw));
    ids
}

/// The reference's `PatchNCELoss` per patch (reduction 'none'): `feat_q`, `feat_k` [B·P,D] with
/// the P patches of each of the `batch` images together. The positive of query i is key i; its
/// negatives are the other keys of the same image. Cross-entropy to the positive of the logits
/// /τ, the self-similarities of the negatives replaced by −10. Keys carry no gradient.
/// Returns [B·P].
pub fn patch_nce_loss(feat_q: &Tensor, feat_k: &Tensor, batch: usize, tau: f64) -> Result<Tensor> {
    let (n, dim) = feat_q.dims2()?;
    let feat_k = feat_k.detach();
    let l_pos = (feat_q * &feat_k)?.sum_keepdim(1)?; // [N,1]
    let p = n / batch;
    let q = feat_q.reshape((batch, p, dim))?;
    let k = feat_k.reshape((batch, p, dim))?;
    let l_neg = q.matmul(&k.t()?)?; // [B,P,P]
    // masked_fill of the diagonal with −10: its entries take no gradient.
    let eye = Tensor::eye(p, DType::F32, feat_q.device())?.unsqueeze(0)?; // [1,P,P]
    let l_neg = (l_neg.broadcast_mul(&(1.0 - &eye)?)? + (eye * -10.0)?.broadcast_as((batch, p, p))?)?;
    let l_neg = l_neg.reshape((n, p))?;
    let logits = (Tensor::cat(&[l_pos, l_neg], 1)? / tau)?; // [N,1+P]
    candle_nn::ops::log_softmax(&logits, D::Minus1)?.narrow(1, 0, 1)?.squeeze(1)?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The gather op against reshape + index_select: values and gradient, repeated ids included.
    #[test]
    fn sampling_op_matches_index_select() {
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..2 * 3 * 4 * 5).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = candle_core::Var::from_tensor(&Tensor::from_vec(v, (2, 3, 4, 5), &dev).unwrap()).unwrap();
        let ids = [7u32, 0, 19, 7];
        let idx = Tensor::new(&ids, &dev).unwrap();
        let composed = x.as_tensor().reshape((2, 3, 20)).unwrap().index_select(&idx, 2).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape((8, 3)).unwrap();
        let ours = sample_map(x.as_tensor(), &ids).unwrap();
        assert_eq!(ours.to_vec2::<f32>().unwrap(), composed.to_vec2::<f32>().unwrap());
        let wts = Tensor::from_vec((0..24).map(|i| i as f32 - 7.0).collect::<Vec<f32>>(), (8, 3), &dev).unwrap();
        let g1 = (ours * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(sample_map(x.as_tensor(), &[20]).is_err(), "an id past the map is an error");
    }

    #[test]
    fn patches_are_taken_image_major() {
        // feat[b,c,y,x] = 100b + 10c + (2y + x) for a 2×2 image.
        let v: Vec<f32> = (0..2).flat_map(|b| (0..3).flat_map(move |c| (0..4).map(move |p| (100 * b + 10 * c + p) as f32))).collect();
        let feat = Tensor::from_vec(v, (2, 3, 2, 2), &Device::Cpu).unwrap();
        let s = sample_patches(&Feature::from(feat.clone()), &[3, 1]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(s, vec![vec![3., 13., 23.], vec![1., 11., 21.], vec![103., 113., 123.], vec![101., 111., 121.]]);
        // A bias kept apart is added to the sampled rows, as if it were in the map.
        let bias = Tensor::new(&[0.5f32, 1.0, 2.0], &Device::Cpu).unwrap();
        let s = sample_patches(&Feature { map: feat, bias: Some(bias) }, &[3]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(s, vec![vec![3.5, 14., 25.], vec![103.5, 114., 125.]]);
    }

    #[test]
    fn patch_ids_are_distinct_and_bounded() {
        let ids = draw_patch_ids(64, 16, &mut Rng::new(3));
        assert_eq!(ids.len(), 16);
        let mut s = ids.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 16);
        assert!(ids.iter().all(|&i| i < 64));
        assert_eq!(draw_patch_ids(9, 256, &mut Rng::new(3)).len(), 9);
    }
}
