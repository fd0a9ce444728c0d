//! The CycleGAN optimisation step (the reference's `optimize_parameters`): four networks, their
//! losses and optimisers, checkpoints with exact resume.

use super::{Adam, GanLoss, ImagePool, PairedLoss, TrainConfig};
use crate::checkpoint::{load_generation, safetensors_bytes, save_generation, Generation, Network};
use crate::model::{colour_classes, Generator, PatchGan};
use crate::ops::{adapt_channels, all_finite, bce_logits_to_const, l1_loss, mse_loss, mse_to_const};
use crate::util::Rng;
use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const STREAM_POOL_A: u64 = 11;
const STREAM_POOL_B: u64 = 12;
const STREAM_INIT: u64 = 13;

pub const NETWORKS: [&str; 4] = [Network::GAb.name(), Network::GBa.name(), Network::DA.name(), Network::DB.name()];
pub const OPTIM_FILE: &str = "optim.safetensors";

/// Loss terms of one step, named after our networks: `G_AB` translates A→B and is judged by
/// `D_B`; `D_A` judges domain A. (The reference calls G_AB `G_A` and D_B `D_A`.)
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Losses {
    /// LSGAN/vanilla loss of G_AB's fakes under D_B.
    pub g_ab_adv: f32,
    pub g_ba_adv: f32,
    /// λ·|G_BA(G_AB(a)) − a|₁
    pub cycle_a: f32,
    pub cycle_b: f32,
    /// λ·λidt·|G_AB(b) − b|₁ (identity of G_AB on B images)
    pub idt_ab: f32,
    pub idt_ba: f32,
    /// Supervised L1 to the true pair (paired mode).
    pub paired: f32,
    /// CUT/FastCUT: λ_NCE·PatchNCE(a, G(a)) (the reference's `NCE`).
    pub nce: f32,
    /// CUT: λ_NCE·PatchNCE(b, G(b)) (the reference's `NCE_Y`).
    pub nce_idt: f32,
    pub g_total: f32,
    /// ½(loss on real + loss on pooled fakes) for each discriminator.
    pub d_a: f32,
    pub d_b: f32,
}

impl Losses {
    pub fn terms(&self) -> [(&'static str, f32); 12] {
        [
            ("g_ab_adv", self.g_ab_adv),
            ("g_ba_adv", self.g_ba_adv),
            ("cycle_a", self.cycle_a),
            ("cycle_b", self.cycle_b),
            ("idt_ab", self.idt_ab),
            ("idt_ba", self.idt_ba),
            ("paired", self.paired),
            ("nce", self.nce),
            ("nce_idt", self.nce_idt),
            ("g_total", self.g_total),
            ("d_a", self.d_a),
            ("d_b", self.d_b),
        ]
    }
}

/// The four networks, their optimisers and image pools: one CycleGAN in training.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub device: Device,
    /// Completed optimisation steps.
    pub step: u64,
    vars: [VarMap; 4],
    pub g_ab: Generator,
    pub g_ba: Generator,
    pub d_a: PatchGan,
    pub d_b: PatchGan,
    adam_g: Adam,
    adam_d: Adam,
    pool_a: ImagePool,
    pool_b: ImagePool,
    /// `--paired-loss classify`: the rebalancing weight of each colour class, from the training
    /// photos' colour prior (uniform until [`Trainer::set_class_weights`]).
    class_weights: Option<Vec<f32>>,
}

/// A network's variables named `prefix.key`, sorted (the optimisers' order).
pub(super) fn sorted_vars(prefix: &str, vm: &VarMap) -> Vec<(String, Var)> {
    let data = vm.data().lock().unwrap();
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (format!("{prefix}.{k}"), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Draws fresh weights for the networks `nets` (names of the variable maps `vars`), in sorted
/// name order: every `.weight` from N(0, std²) with `std = weight_std(dims)`, every bias 0.
pub(super) fn init_weights(nets: &[&str], vars: &[VarMap], rng: &mut Rng, weight_std: impl Fn(&[usize]) -> f64, device: &Device) -> Result<()> {
    for (net, vm) in nets.iter().zip(vars) {
        for (name, var) in sorted_vars(net, vm) {
            let n = var.elem_count();
            let values: Vec<f32> = if name.ends_with(".weight") {
                let std = weight_std(var.dims());
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            } else {
                vec![0.0; n]
            };
            var.set(&Tensor::from_vec(values, var.shape(), device)?)?;
        }
    }
    Ok(())
}

/// Loads the weights of `nets` from a checkpoint generation into their variable maps `vars`.
pub(super) fn load_weights(generation: &Generation, nets: &[Network], vars: &[VarMap], device: &Device) -> Result<()> {
    for (net, vm) in nets.iter().zip(vars) {
        let t = generation.load_tensors(net.file(), device)?;
        set_named_weights(net.name(), vm, &t, device)?;
    }
    Ok(())
}

/// A network's weights by name, sorted.
pub(super) fn named_weights(vm: &VarMap) -> Vec<(String, Tensor)> {
    let data = vm.data().lock().unwrap();
    let mut v: Vec<(String, Tensor)> = data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Replaces the weights of network `net` (names and shapes must match exactly).
pub(super) fn set_named_weights(net: &str, vm: &VarMap, tensors: &std::collections::HashMap<String, Tensor>, device: &Device) -> Result<()> {
    let data = vm.data().lock().unwrap();
    if tensors.len() != data.len() {
        bail!("{net}: checkpoint has {} tensors, the network {}", tensors.len(), data.len());
    }
    for (name, var) in data.iter() {
        let t = tensors.get(name).with_context(|| format!("{net}: checkpoint lacks {name}"))?;
        if t.id() == var.as_tensor().id() {
            continue; // already this variable's value
        }
        if t.shape() != var.shape() {
            bail!("{net}: {name} has shape {:?} in the checkpoint, {:?} in the network", t.shape(), var.shape());
        }
        var.set(&t.to_device(device)?.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// The adversarial loss of `pred` against real (1) or fake (0).
pub(super) fn gan_loss(kind: GanLoss, pred: &Tensor, real: bool) -> Result<Tensor> {
    let target = if real { 1.0 } else { 0.0 };
    Ok(match kind {
        GanLoss::Lsgan => mse_to_const(pred, target)?,
        GanLoss::Vanilla => bce_logits_to_const(pred, target)?,
    })
}

/// `g` on the given (`Some`) inputs [B,C,S,S] in one batch: their outputs in order, and the raw
/// output (see [`Generator::forward_parts`]) of the first.
fn forward_batch(g: &Generator, inputs: &[Option<&Tensor>]) -> Result<(Vec<Tensor>, Tensor)> {
    let inputs: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
    let (out, raw) = g.forward_parts(&Tensor::cat(&inputs, 0)?)?;
    let (mut outs, mut at) = (Vec::new(), 0);
    for x in &inputs {
        let n = x.dim(0)?;
        outs.push(out.narrow(0, at, n)?);
        at += n;
    }
    Ok((outs, raw.narrow(0, 0, inputs[0].dim(0)?)?))
}

impl Trainer {
    /// Builds the networks with fresh weights drawn from the run's seed: N(0, 0.02) for
    /// convolution weights, 0 for biases, as the reference's 'normal' init.
    pub fn new(cfg: TrainConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let vars: [VarMap; 4] = std::array::from_fn(|_| VarMap::new());
        let vb = |i: usize| VarBuilder::from_varmap(&vars[i], DType::F32, &device);
        let g_ab = Generator::new(&cfg.g_ab(), vb(0))?;
        let g_ba = Generator::new(&cfg.g_ba(), vb(1))?;
        let d_a = PatchGan::new(&cfg.d_a(), vb(2))?;
        let d_b = PatchGan::new(&cfg.d_b(), vb(3))?;
        init_weights(&NETWORKS, &vars, &mut Rng::stream(cfg.seed, STREAM_INIT, 0), |_| 0.02, &device)?;
        let params_g = [sorted_vars(NETWORKS[0], &vars[0]), sorted_vars(NETWORKS[1], &vars[1])].concat();
        let params_d = [sorted_vars(NETWORKS[2], &vars[2]), sorted_vars(NETWORKS[3], &vars[3])].concat();
        let adam_g = Adam::new(params_g, cfg.beta1, cfg.beta2)?;
        let adam_d = Adam::new(params_d, cfg.beta1, cfg.beta2)?;
        Ok(Self {
            pool_a: ImagePool::new(cfg.pool),
            pool_b: ImagePool::new(cfg.pool),
            cfg,
            device,
            step: 0,
            vars,
            g_ab,
            g_ba,
            d_a,
            d_b,
            adam_g,
            adam_d,
            class_weights: None,
        })
    }

    /// Sets the colour classes' rebalancing weights (see [`colour_classes::rebalancing_weights`]).
    pub fn set_class_weights(&mut self, weights: Vec<f32>) -> Result<()> {
        if weights.len() != colour_classes::bins().len() {
            bail!("{} class weights for {} colour classes", weights.len(), colour_classes::bins().len());
        }
        self.class_weights = Some(weights);
        Ok(())
    }

    /// Named weights of one network ("G_AB", "G_BA", "D_A", "D_B").
    pub fn weights(&self, net: &str) -> Vec<(String, Tensor)> {
        named_weights(&self.vars[NETWORKS.iter().position(|n| *n == net).expect("known network")])
    }

    /// Replaces one network's weights (names and shapes must match exactly).
    pub fn set_weights(&mut self, net: &str, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let i = NETWORKS.iter().position(|n| *n == net).context("unknown network")?;
        set_named_weights(net, &self.vars[i], tensors, &self.device)
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr * self.cfg.schedule.lr_factor(self.step)
    }

    fn gan_loss(&self, pred: &Tensor, real: bool) -> Result<Tensor> {
        gan_loss(self.cfg.gan_loss, pred, real)
    }

    /// One CycleGAN iteration as the reference's `optimize_parameters`: both generators updated
    /// with the discriminators frozen, then both discriminators on real vs pooled fakes.
    /// `real_a` `[B,Ca,S,S]`, `real_b` `[B,Cb,S,S]` in `[-1,1]` on the trainer's device. Nothing is
    /// updated if a loss is not finite (the error says which).
    pub fn train_step(&mut self, real_a: &Tensor, real_b: &Tensor) -> Result<Losses> {
        let lr = self.lr();
        let mut g = self.generator_pass(real_a, real_b)?;
        let d = self.discriminator_pass(real_a, real_b, &g.fake_a, &g.fake_b)?;
        g.losses.d_a = d.d_a;
        g.losses.d_b = d.d_b;
        // The discriminator pass used only detached fakes, so updating the generators after it
        // gives the same result as the reference's order.
        let g_finite = self.adam_g.step(&g.grads, lr)?;
        drop(g.grads);
        let d_finite = self.adam_d.step(&d.grads, lr)?;
        self.step += 1;
        // Losses can stay finite while a weight is NaN (ReLU maps NaN to 0), so the weights are
        // checked too (by the optimisers, as they write them; the others have not changed since
        // the last step's check): divergence is caught at the step it appears.
        if !(g_finite && d_finite) {
            bail!(Divergence { step: self.step, what: "a weight became NaN or infinite".into() });
        }
        Ok(g.losses)
    }

    /// Generator losses and their gradients (discriminators frozen); updates nothing.
    pub fn generator_pass(&self, real_a: &Tensor, real_b: &Tensor) -> Result<GeneratorPass> {
        let cfg = &self.cfg;
        let (ca, cb) = (cfg.domain_a.channels, cfg.domain_b.channels);
        let lam = cfg.lambda_cycle;
        // Identity: G_AB should leave B images unchanged. With different channel counts the B
        // image enters G_AB converted to A's channels (luma or repeat) and the output is compared
        // with the original B image. Every generator input that is ready goes through in one
        // batch: instance norm is per image, so this changes no output (bit for bit, tested in
        // tests/engine.rs), and each weight is transformed and read once per batch instead of
        // once per image (the weight gradients sum over the batch in another order, within
        // rounding).
        let identity = cfg.lambda_identity > 0.0;
        let b_as_a = identity.then(|| adapt_channels(real_b, ca)).transpose()?;
        let a_as_b = identity.then(|| adapt_channels(real_a, cb)).transpose()?;
        // G_AB on A (and B, for the identity loss), then G_BA on B, on G_AB's fakes and (for the
        // identity loss) on A; every output [B,C,S,S] with the other domain's channels.
        let (mut outs, logits_b) = forward_batch(&self.g_ab, &[Some(real_a), b_as_a.as_ref()])?;
        let (fake_b, idt_b) = (outs.remove(0), outs.pop());
        let (mut outs, _) = forward_batch(&self.g_ba, &[Some(real_b), Some(&fake_b), a_as_b.as_ref()])?;
        let (fake_a, rec_a, idt_a) = (outs.remove(0), outs.remove(0), outs.pop());
        let rec_b = self.g_ab.forward(&fake_a)?;
        let (d_a, d_b) = (self.d_a.frozen(), self.d_b.frozen());
        let g_ab_adv = self.gan_loss(&d_b.forward(&fake_b)?, true)?;
        let g_ba_adv = self.gan_loss(&d_a.forward(&fake_a)?, true)?;
        let cycle_a = (l1_loss(&rec_a, real_a)? * lam)?;
        let cycle_b = (l1_loss(&rec_b, real_b)? * lam)?;
        let mut total = ((((&g_ab_adv + &g_ba_adv)? * cfg.lambda_gan)? + &cycle_a)? + &cycle_b)?;
        let mut losses = Losses::default();
        if let (Some(idt_b), Some(idt_a)) = (idt_b, idt_a) {
            let w = lam * cfg.lambda_identity;
            let idt_ab = (l1_loss(&idt_b, real_b)? * w)?;
            let idt_ba = (l1_loss(&idt_a, real_a)? * w)?;
            total = ((total + &idt_ab)? + &idt_ba)?;
            losses.idt_ab = idt_ab.to_scalar()?;
            losses.idt_ba = idt_ba.to_scalar()?;
        }
        if cfg.paired && cfg.lambda_paired > 0.0 {
            let paired = |fake: &Tensor, real: &Tensor| match cfg.paired_loss {
                PairedLoss::L1 | PairedLoss::Classify => l1_loss(fake, real),
                PairedLoss::L2 => mse_loss(fake, real),
            };
            let to_b = if cfg.paired_loss == PairedLoss::Classify {
                let uniform;
                let weights = match &self.class_weights {
                    Some(w) => w.as_slice(),
                    None => {
                        uniform = vec![1.0; colour_classes::bins().len()];
                        &uniform
                    }
                };
                let (targets, pixel_w) = colour_classes::soft_targets(real_b, weights)?;
                colour_classes::class_loss(&logits_b, &targets, &pixel_w)?
            } else {
                paired(&fake_b, real_b)?
            };
            let p = ((to_b + paired(&fake_a, real_a)?)? * cfg.lambda_paired)?;
            total = (total + &p)?;
            losses.paired = p.to_scalar()?;
        }
        losses.g_ab_adv = g_ab_adv.to_scalar()?;
        losses.g_ba_adv = g_ba_adv.to_scalar()?;
        losses.cycle_a = cycle_a.to_scalar()?;
        losses.cycle_b = cycle_b.to_scalar()?;
        losses.g_total = total.to_scalar()?;
        if !losses.g_total.is_finite() {
            bail!(Divergence { step: self.step + 1, what: format!("generator loss is {}", losses.g_total) });
        }
        let grads = crate::ops::backward_first_order(&total)?;
        Ok(GeneratorPass { losses, grads, fake_a: fake_a.detach(), fake_b: fake_b.detach() })
    }

    /// Discriminator losses on real images and pooled fakes, and their gradients. Advances the
    /// pools (their random choices depend on the seed and the step only).
    pub fn discriminator_pass(&mut self, real_a: &Tensor, real_b: &Tensor, fake_a: &Tensor, fake_b: &Tensor) -> Result<DiscriminatorPass> {
        let seed = self.cfg.seed;
        let pooled_b = self.pool_b.query(fake_b, &mut Rng::stream(seed, STREAM_POOL_B, self.step))?;
        let pooled_a = self.pool_a.query(fake_a, &mut Rng::stream(seed, STREAM_POOL_A, self.step))?;
        // Real and fake images through each discriminator in one batch (instance norm is per
        // image, so each image's prediction is what it would be alone).
        let loss = |d: &PatchGan, real: &Tensor, fake: &Tensor| -> Result<Tensor> {
            let n = real.dim(0)?;
            let pred = d.forward(&Tensor::cat(&[real, fake], 0)?)?; // [B+B',1,P,P]
            let (pred_real, pred_fake) = (pred.narrow(0, 0, n)?, pred.narrow(0, n, fake.dim(0)?)?);
            Ok(((self.gan_loss(&pred_real, true)? + self.gan_loss(&pred_fake, false)?)? * 0.5)?)
        };
        let d_b = loss(&self.d_b, real_b, &pooled_b)?;
        let d_a = loss(&self.d_a, real_a, &pooled_a)?;
        let (la, lb) = (d_a.to_scalar::<f32>()?, d_b.to_scalar::<f32>()?);
        if !(la.is_finite() && lb.is_finite()) {
            bail!(Divergence { step: self.step + 1, what: format!("discriminator losses are {la} / {lb}") });
        }
        let grads = crate::ops::backward_first_order(&(d_a + d_b)?)?;
        Ok(DiscriminatorPass { d_a: la, d_b: lb, grads })
    }

    /// The gradients of one network's weights in `grads`, by our weight names.
    pub fn grads_of(&self, net: &str, grads: &GradStore) -> Vec<(String, Option<Tensor>)> {
        self.weights(net).into_iter().map(|(k, t)| (k, grads.get(&t).cloned())).collect()
    }

    /// True if every weight of every network is finite.
    pub fn weights_finite(&self) -> Result<bool> {
        for net in NETWORKS {
            for (_, t) in self.weights(net) {
                if !all_finite(&t)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Writes a checkpoint generation (weights, optimiser moments, pools) under `run_dir`.
    /// Refuses to write non-finite weights over a good checkpoint.
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        if !self.weights_finite()? {
            bail!(Divergence { step: self.step, what: "weights contain NaN or infinity; the last good checkpoint is kept".into() });
        }
        let mut files = Vec::new();
        for net in Network::ALL {
            files.push((net.file().to_string(), safetensors_bytes(&self.weights(net.name()))?));
        }
        let mut state = self.adam_g.state("G");
        state.extend(self.adam_d.state("D"));
        for (name, pool) in [("pool_A", &self.pool_a), ("pool_B", &self.pool_b)] {
            if !pool.images.is_empty() {
                state.push((name.to_string(), Tensor::cat(&pool.images, 0)?));
            }
        }
        files.push((OPTIM_FILE.to_string(), safetensors_bytes(&state)?));
        save_generation(run_dir, self.step, &files)
    }

    /// The generators' safetensors files (`G_AB.safetensors`, `G_BA.safetensors`), as `save` writes them.
    pub fn generator_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Network::GENERATORS.iter().map(|net| Ok((net.file().to_string(), safetensors_bytes(&self.weights(net.name()))?))).collect()
    }

    /// Restores weights, optimiser moments, pools and the step counter from the newest good
    /// checkpoint generation of `run_dir`. Returns that generation (its `fallback_reason` says if
    /// an older one had to be used).
    pub fn restore(&mut self, run_dir: &Path) -> Result<Generation> {
        let generation = load_generation(run_dir)?;
        load_weights(&generation, &Network::ALL, &self.vars, &self.device)?;
        let state = generation.load_tensors(OPTIM_FILE, &self.device)?;
        let step = generation.manifest.step;
        self.adam_g.load_state("G", &state, step)?;
        self.adam_d.load_state("D", &state, step)?;
        for (name, pool) in [("pool_A", &mut self.pool_a), ("pool_B", &mut self.pool_b)] {
            pool.images = match state.get(name) {
                Some(t) => (0..t.dim(0)?).map(|i| t.narrow(0, i, 1)).collect::<candle_core::Result<_>>()?,
                None => Vec::new(),
            };
        }
        self.step = step;
        Ok(generation)
    }

    /// Translations for previews: (fake_b, rec_a, fake_a, rec_b), detached.
    pub fn translate_pair(&self, real_a: &Tensor, real_b: &Tensor) -> Result<[Tensor; 4]> {
        let fake_b = self.g_ab.forward(real_a)?.detach();
        let rec_a = self.g_ba.forward(&fake_b)?.detach();
        let fake_a = self.g_ba.forward(real_b)?.detach();
        let rec_b = self.g_ab.forward(&fake_a)?.detach();
        Ok([fake_b, rec_a, fake_a, rec_b])
    }

    pub fn param_counts(&self) -> BTreeMap<&'static str, usize> {
        NETWORKS.iter().map(|n| (*n, self.weights(n).iter().map(|(_, t)| t.elem_count()).sum())).collect()
    }
}

/// Result of [`Trainer::generator_pass`].
pub struct GeneratorPass {
    pub losses: Losses,
    pub grads: GradStore,
    pub fake_a: Tensor,
    pub fake_b: Tensor,
}

/// Result of [`Trainer::discriminator_pass`].
pub struct DiscriminatorPass {
    pub d_a: f32,
    pub d_b: f32,
    pub grads: GradStore,
}

/// A non-finite loss or weight: training must stop or roll back, never save.
#[derive(Debug, thiserror::Error)]
#[error("training diverged at step {step}: {what}")]
pub struct Divergence {
    pub step: u64,
    pub what: String,
}
