//! The CUT / FastCUT optimisation step (the reference's `CUTModel.optimize_parameters`): one
//! anti-aliased generator A→B, one anti-aliased PatchGAN on B, the PatchNCE heads `F`, their
//! optimisers, checkpoints with exact resume.

use super::patchnce::{draw_patch_ids, patch_nce_loss, PatchSampleF};
use super::trainer::{gan_loss, init_weights, load_weights, named_weights, set_named_weights, sorted_vars, Divergence, Losses, OPTIM_FILE};
use super::{Adam, NceConfig, TrainConfig};
use crate::checkpoint::{load_generation, safetensors_bytes, save_generation, Generation, Network};
use crate::model::{Feature, Generator, PatchGan};
use crate::ops::{adapt_channels, all_finite};
use crate::util::Rng;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Rng streams (the CycleGAN trainer uses 11–13).
const STREAM_INIT: u64 = 21;
const STREAM_FLIP: u64 = 22;
const STREAM_PATCHES: u64 = 23;

/// The networks of a CUT run, in the order of their variable maps.
pub const CUT_NETWORKS: [Network; 3] = Network::ONE_SIDED;

/// The random choices of one step, given explicitly (parity fixtures) instead of drawn.
#[derive(Clone, Debug, Default)]
pub struct CutDraws {
    /// FastCUT's flip-equivariance: the batch is flipped horizontally (ignored without it).
    pub flip: bool,
    /// Patch ids per NCE layer for PatchNCE(real_a, fake_b).
    pub patch_ids: Vec<Vec<u32>>,
    /// Patch ids per NCE layer for the identity term PatchNCE(real_b, G(real_b)) (CUT only).
    pub patch_ids_idt: Vec<Vec<u32>>,
}

/// PatchNCE's keys for one term: the patch ids per layer and F's projections of the source
/// images' features there ([B·P, nc] per layer, no gradient).
struct NceKeys {
    ids: Vec<Vec<u32>>,
    pooled: Vec<Tensor>,
}

/// G (saved as `G_AB`), D (as `D_B`), F (as `F`), their three Adams: one CUT/FastCUT run.
pub struct CutTrainer {
    pub cfg: TrainConfig,
    pub device: Device,
    /// Completed optimisation steps.
    pub step: u64,
    vars: [VarMap; 3],
    pub g: Generator,
    pub d: PatchGan,
    pub f: PatchSampleF,
    nce: NceConfig,
    adam_g: Adam,
    adam_d: Adam,
    adam_f: Adam,
}

/// xavier_normal_ standard deviation of a conv ([out,in,k,k]) or linear ([out,in]) weight.
fn xavier_std(dims: &[usize], gain: f64) -> f64 {
    let receptive: usize = dims[2..].iter().product();
    let (fan_in, fan_out) = (dims[1] * receptive, dims[0] * receptive);
    gain * (2.0 / (fan_in + fan_out) as f64).sqrt()
}

/// Horizontal flip of [B,C,H,W] (`torch.flip(x, [3])`).
fn flip_w(xs: &Tensor) -> candle_core::Result<Tensor> {
    let w = xs.dim(3)?;
    let idx = Tensor::from_vec((0..w as u32).rev().collect::<Vec<_>>(), w, xs.device())?;
    xs.index_select(&idx, 3)
}

fn net_index(net: &str) -> Option<usize> {
    CUT_NETWORKS.iter().position(|n| n.name() == net)
}

impl CutTrainer {
    /// Builds the networks with fresh weights drawn from the run's seed as the reference's CUT
    /// default init ('xavier', gain 0.02): xavier_normal for every convolution and linear
    /// weight, 0 for biases. F's heads are created here, not at the first batch (see
    /// [`PatchSampleF`]).
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self> {
        cfg.validate()?; // a ResNet generator, NCE layers it has, usable PatchNCE settings
        let nce = cfg.nce.clone().with_context(|| format!("a {} run has no PatchNCE settings", cfg.method))?;
        let vars: [VarMap; 3] = std::array::from_fn(|_| VarMap::new());
        let vb = |i: usize| VarBuilder::from_varmap(&vars[i], DType::F32, &device);
        let gcfg = cfg.g_ab();
        let g = Generator::new(&gcfg, vb(0))?;
        let d = PatchGan::new(&cfg.d_b(), vb(1))?;
        let channels: Vec<usize> = nce.nce_layers.iter().map(|&l| PatchSampleF::channels(l, gcfg.in_channels, gcfg.ngf)).collect();
        let f = PatchSampleF::new(&channels, nce.netf_nc, vb(2))?;
        let names = CUT_NETWORKS.map(Network::name);
        init_weights(&names, &vars, &mut Rng::stream(cfg.seed, STREAM_INIT, 0), |dims| xavier_std(dims, 0.02), &device)?;
        let adam = |i: usize| Adam::new(sorted_vars(CUT_NETWORKS[i].name(), &vars[i]), cfg.beta1, cfg.beta2);
        let (adam_g, adam_d, adam_f) = (adam(0)?, adam(1)?, adam(2)?);
        Ok(Self { cfg, device, step: 0, vars, g, d, f, nce, adam_g, adam_d, adam_f })
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr * self.cfg.schedule.lr_factor(self.step)
    }

    /// Named weights of one network ("G_AB", "D_B", "F"), sorted by name.
    pub fn weights(&self, net: &str) -> Vec<(String, Tensor)> {
        named_weights(&self.vars[net_index(net).expect("a CUT network")])
    }

    /// Replaces one network's weights (names and shapes must match exactly).
    pub fn set_weights(&mut self, net: &str, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let i = net_index(net).with_context(|| format!("{net} is not a CUT network"))?;
        set_named_weights(net, &self.vars[i], tensors, &self.device)
    }

    /// True if every weight of every network is finite.
    pub fn weights_finite(&self) -> Result<bool> {
        for net in CUT_NETWORKS {
            for (_, t) in self.weights(net.name()) {
                if !all_finite(&t)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn gan_loss(&self, pred: &Tensor, real: bool) -> Result<Tensor> {
        gan_loss(self.cfg.gan_loss, pred, real)
    }

    /// One CUT/FastCUT iteration, its random choices (flip, patch ids) drawn from the seed and
    /// the step. `real_a` `[B,Ca,S,S]`, `real_b` `[B,Cb,S,S]` in `[-1,1]` on the trainer's device.
    pub fn train_step(&mut self, real_a: &Tensor, real_b: &Tensor) -> Result<Losses> {
        let flip = self.nce.flip_equivariance && Rng::stream(self.cfg.seed, STREAM_FLIP, self.step).uniform() < 0.5;
        self.step_inner(real_a, real_b, flip, None)
    }

    /// [`CutTrainer::train_step`] with the given flip and patch ids.
    pub fn train_step_with(&mut self, real_a: &Tensor, real_b: &Tensor, draws: &CutDraws) -> Result<Losses> {
        let flip = self.nce.flip_equivariance && draws.flip;
        self.step_inner(real_a, real_b, flip, Some(draws))
    }

    /// As the reference: forward, then D on the detached fake and real B (updated), then G and F
    /// on the GAN loss under the updated D plus PatchNCE. If a generator loss is not finite the
    /// discriminator has already been updated; the error stops the run, which rolls back to a
    /// checkpoint.
    fn step_inner(&mut self, real_a: &Tensor, real_b: &Tensor, flip: bool, ids: Option<&CutDraws>) -> Result<Losses> {
        let lr = self.lr();
        let idt = self.nce.nce_idt && self.nce.lambda_nce > 0.0;
        // G and its encoder take as many channels as either domain has (`TrainConfig::g_ab`):
        // between grey and colour, grey images and outputs enter them repeated to RGB, as the
        // reference loads every image; with equal counts (the reference) nothing changes.
        let gin = self.g_in();
        let (real_a_in, real_b_in) = (adapt_channels(real_a, gin)?, adapt_channels(real_b, gin)?);
        // Patch ids are drawn as the reference draws them: for A's term, then the identity term.
        let mut rng = Rng::stream(self.cfg.seed, STREAM_PATCHES, self.step);
        let (ids_x, ids_y) = (ids.map(|d| d.patch_ids.as_slice()), ids.map(|d| d.patch_ids_idt.as_slice()));
        let (fake_b, keys_x) = self.translate_with_keys(&real_a_in, flip, ids_x, &mut rng)?;

        // D: ½(fake → 0, real → 1), stepped before G's loss is computed.
        let loss_d = ((self.gan_loss(&self.d.forward(&fake_b.detach())?, false)? + self.gan_loss(&self.d.forward(real_b)?, true)?)? * 0.5)?;
        let d_b = loss_d.to_scalar::<f32>()?;
        if !d_b.is_finite() {
            bail!(Divergence { step: self.step + 1, what: format!("discriminator loss is {d_b}") });
        }
        let grads = crate::ops::backward_first_order(&loss_d)?;
        let d_finite = self.adam_d.step(&grads, lr)?;
        drop(grads);

        // G and F, judged by the updated (frozen) D. The reference runs G on A and B images as
        // one batch and takes one backward of GAN + ½(NCE + NCE_Y); instance norm keeps images
        // independent, so A's terms and the identity term are done one after the other and
        // their gradients summed: the same step (up to float summation order) with half the
        // activations alive at once.
        let d = self.d.frozen();
        let g_gan = (self.gan_loss(&d.forward(&fake_b)?, true)? * self.cfg.lambda_gan)?;
        let mut losses = Losses { g_ab_adv: g_gan.to_scalar()?, d_b, ..Losses::default() };
        let nce_weight = if idt { 0.5 } else { 1.0 };
        let loss_x = match &keys_x {
            Some(keys) => {
                let nce_x = self.nce_loss(keys, &adapt_channels(&fake_b, gin)?, flip)?;
                losses.nce = nce_x.to_scalar()?;
                (g_gan + (nce_x * nce_weight)?)?
            }
            None => g_gan,
        };
        losses.g_total = loss_x.to_scalar()?;
        if !losses.g_total.is_finite() {
            bail!(Divergence { step: self.step + 1, what: format!("generator loss is {}", losses.g_total) });
        }
        let mut grads = crate::ops::backward_first_order(&loss_x)?;
        drop((loss_x, fake_b));
        if idt {
            // Only G's and F's gradients of A's terms are kept (detached), so the first pass's
            // activations and their gradients are freed before the second pass.
            let g_and_f: Vec<Var> = [(Network::GAb, 0), (Network::F, 2)].iter().flat_map(|&(n, i)| sorted_vars(n.name(), &self.vars[i])).map(|(_, v)| v).collect();
            let kept: Vec<(Var, Tensor)> = g_and_f.into_iter().filter_map(|v| grads.get(v.as_tensor()).map(|g| (v.clone(), g.detach()))).collect();
            drop(grads);
            let (idt_b, keys_y) = self.translate_with_keys(&real_b_in, flip, ids_y, &mut rng)?;
            let nce_y = self.nce_loss(&keys_y.context("identity NCE without keys")?, &adapt_channels(&idt_b, gin)?, flip)?;
            losses.nce_idt = nce_y.to_scalar()?;
            losses.g_total += nce_weight as f32 * losses.nce_idt;
            if !losses.g_total.is_finite() {
                bail!(Divergence { step: self.step + 1, what: format!("generator loss is {}", losses.g_total) });
            }
            grads = crate::ops::backward_first_order(&(nce_y * nce_weight)?)?;
            for (var, gx) in kept {
                let sum = match grads.get(var.as_tensor()) {
                    Some(gy) => (gx + gy)?,
                    None => gx,
                };
                grads.insert(var.as_tensor(), sum);
            }
        }
        let g_finite = self.adam_g.step(&grads, lr)?;
        let f_finite = self.adam_f.step(&grads, lr)?;
        drop(grads);
        self.step += 1;
        // As the CycleGAN step: the optimisers checked the weights they wrote.
        if !(d_finite && g_finite && f_finite) {
            bail!(Divergence { step: self.step, what: "a weight became NaN or infinite".into() });
        }
        Ok(losses)
    }

    /// G(x) (flipped first under flip-equivariance) and, with PatchNCE on, its keys: the input's
    /// encoder features at the sampled patches through F, detached (the reference detaches
    /// them in the loss); only those rows are kept. Unflipped the features come from the same
    /// pass (the reference encodes the input again); flipped they are the unflipped input's.
    fn translate_with_keys(&self, x: &Tensor, flip: bool, ids: Option<&[Vec<u32>]>, rng: &mut Rng) -> Result<(Tensor, Option<NceKeys>)> {
        let layers = &self.nce.nce_layers;
        if self.nce.lambda_nce <= 0.0 {
            return Ok((self.g.forward(&if flip { flip_w(x)? } else { x.clone() })?, None));
        }
        if flip {
            let fake = self.g.forward(&flip_w(x)?)?;
            let keys = self.nce_keys(&self.g.encode_features(x, layers)?, ids, rng)?;
            return Ok((fake, Some(keys)));
        }
        let (fake, feats) = self.g.forward_with_features(x, layers)?;
        Ok((fake, Some(self.nce_keys(&feats, ids, rng)?)))
    }

    /// The keys of PatchNCE for the encoder features `feat_k` of its source images: patch ids
    /// per layer (given, or drawn as the reference draws them) and F's projections of those
    /// patches, detached.
    fn nce_keys(&self, feat_k: &[Feature], ids: Option<&[Vec<u32>]>, rng: &mut Rng) -> Result<NceKeys> {
        let ids: Vec<Vec<u32>> = match ids {
            Some(ids) => ids.to_vec(),
            None => feat_k.iter().map(|f| Ok(draw_patch_ids(f.map.dim(2)? * f.map.dim(3)?, self.nce.num_patches, rng))).collect::<Result<_>>()?,
        };
        let detached: Vec<Feature> = feat_k.iter().map(Feature::detach).collect();
        let pooled = self.f.forward(&detached, &ids)?.iter().map(Tensor::detach).collect();
        Ok(NceKeys { ids, pooled })
    }

    /// The reference's `calculate_NCE_loss(src, tgt)`: λ_NCE·PatchNCE between G's encoder
    /// features of the output `tgt` (queries; flipped back under flip-equivariance) at the
    /// patches of `keys` and the keys (of `src`), averaged over the NCE layers.
    fn nce_loss(&self, keys: &NceKeys, tgt: &Tensor, flip: bool) -> Result<Tensor> {
        let layers = &self.nce.nce_layers;
        let mut feat_q = self.g.encode_features(tgt, layers)?;
        if flip {
            feat_q = feat_q.iter().map(|f| f.map_spatial(flip_w)).collect::<candle_core::Result<_>>()?;
        }
        let q_pool = self.f.forward(&feat_q, &keys.ids)?;
        let batch = tgt.dim(0)?;
        let mut total: Option<Tensor> = None;
        for (q, k) in q_pool.iter().zip(&keys.pooled) {
            let l = (patch_nce_loss(q, k, batch, self.nce.nce_t)? * self.nce.lambda_nce)?.mean_all()?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        Ok((total.context("no NCE layers")? / layers.len() as f64)?)
    }

    /// Writes a checkpoint generation (G_AB, D_B, F and the three optimisers' moments) under
    /// `run_dir`. Refuses to write non-finite weights over a good checkpoint.
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        if !self.weights_finite()? {
            bail!(Divergence { step: self.step, what: "weights contain NaN or infinity; the last good checkpoint is kept".into() });
        }
        let mut files = Vec::new();
        for net in CUT_NETWORKS {
            files.push((net.file().to_string(), safetensors_bytes(&self.weights(net.name()))?));
        }
        let mut state = self.adam_g.state("G");
        state.extend(self.adam_d.state("D"));
        state.extend(self.adam_f.state("F"));
        files.push((OPTIM_FILE.to_string(), safetensors_bytes(&state)?));
        save_generation(run_dir, self.step, &files)
    }

    /// Restores weights, optimiser moments and the step counter from the newest good checkpoint
    /// generation of `run_dir`.
    pub fn restore(&mut self, run_dir: &Path) -> Result<Generation> {
        let generation = load_generation(run_dir)?;
        load_weights(&generation, &CUT_NETWORKS, &self.vars, &self.device)?;
        let state = generation.load_tensors(OPTIM_FILE, &self.device)?;
        let step = generation.manifest.step;
        self.adam_g.load_state("G", &state, step)?;
        self.adam_d.load_state("D", &state, step)?;
        self.adam_f.load_state("F", &state, step)?;
        self.step = step;
        Ok(generation)
    }

    /// The generator's safetensors file (`G_AB.safetensors`), as `save` writes it.
    pub fn generator_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(vec![(Network::GAb.file().to_string(), safetensors_bytes(&self.weights(Network::GAb.name()))?)])
    }

    /// Channels of G's input (A and B images are converted to it).
    fn g_in(&self) -> usize {
        self.cfg.g_ab().in_channels
    }

    /// G(x), detached, for previews: `x` an A image (or a B image, for the identity G asks of
    /// itself), converted to G's input channels.
    pub fn translate(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.g.forward(&adapt_channels(x, self.g_in())?)?.detach())
    }

    pub fn param_counts(&self) -> BTreeMap<&'static str, usize> {
        CUT_NETWORKS.iter().map(|n| (n.name(), self.weights(n.name()).iter().map(|(_, t)| t.elem_count()).sum())).collect()
    }
}
