//! Training health: diversity of translations (mode collapse), discriminator balance and loss
//! trends on a fixed held-out batch, turned into plain-language warnings by documented rules.

use crate::data::{Dataset, Pixels};
use crate::train::{GanLoss, Losses, MethodTrainer, TrainConfig};
use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;

/// Diversity ratio below which a generator's outputs count as near-identical.
pub const COLLAPSE_RATIO: f64 = 0.1;
/// Consecutive checks below [`COLLAPSE_RATIO`] before the collapse warning fires.
pub const COLLAPSE_CHECKS: u32 = 3;
/// Real-minus-fake score gap above which a discriminator counts as near-perfect.
pub const D_PERFECT_GAP: f64 = 0.9;
/// Consecutive near-perfect checks before the overpowering warning fires.
pub const D_PERFECT_CHECKS: u32 = 5;
/// Gap below which a discriminator counts as at chance (reported, not warned: LSGAN's
/// equilibrium sits there).
pub const D_CHANCE_GAP: f64 = 0.05;

/// Metrics of one health check.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HealthMetrics {
    /// Mean pairwise distance of G_AB's outputs relative to that of its inputs (→ 0 under collapse).
    pub diversity_ab: f64,
    /// NaN for a one-sided (CUT) run, which has no G_BA; likewise D_A's scores.
    pub diversity_ba: f64,
    /// D_B's mean score on real B and on G_AB's fakes (probabilities for the vanilla loss,
    /// clamped LSGAN scores otherwise).
    pub d_b_real: f64,
    pub d_b_fake: f64,
    pub d_a_real: f64,
    pub d_a_fake: f64,
}

/// A health check's metrics, how long each condition has lasted, and the warnings it raised.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HealthReport {
    pub step: u64,
    pub metrics: HealthMetrics,
    /// Steps for which each discriminator has been near-perfect / at chance.
    pub d_a_perfect_steps: u64,
    pub d_b_perfect_steps: u64,
    pub d_a_chance_steps: u64,
    pub d_b_chance_steps: u64,
    /// Exponential moving averages of the cycle and identity losses, and their change since the
    /// previous check (negative = improving).
    pub cycle_ema: f64,
    pub cycle_trend: f64,
    pub identity_ema: f64,
    pub identity_trend: f64,
    /// A generator's outputs have been near-identical long enough to warn of mode collapse (a
    /// sweep stops such a trial).
    #[serde(default)]
    pub mode_collapse: bool,
    pub warnings: Vec<String>,
}

/// Mean absolute difference between all pairs of samples of `xs` `[N,C,H,W]`.
pub fn mean_pairwise_distance(xs: &Tensor) -> Result<f64> {
    let n = xs.dim(0)?;
    let mut total = 0.0;
    let mut pairs = 0;
    for i in 0..n {
        for j in i + 1..n {
            let d = (xs.get(i)? - xs.get(j)?)?.abs()?.mean_all()?.to_scalar::<f32>()?;
            total += d as f64;
            pairs += 1;
        }
    }
    Ok(if pairs == 0 { 0.0 } else { total / pairs as f64 })
}

/// Output diversity relative to input diversity.
pub fn diversity_ratio(inputs: &Tensor, outputs: &Tensor) -> Result<f64> {
    let din = mean_pairwise_distance(inputs)?;
    Ok(if din <= 1e-12 { 1.0 } else { mean_pairwise_distance(outputs)? / din })
}

/// The rules: state carried between checks.
#[derive(Clone, Debug, Default)]
pub struct HealthRules {
    collapse_ab: u32,
    collapse_ba: u32,
    perfect_a: u32,
    perfect_b: u32,
    chance_a: u32,
    chance_b: u32,
    last_healthy_step: u64,
    cycle_ema: Option<f64>,
    identity_ema: Option<f64>,
    every: u64,
    save_every: u64,
}

impl HealthRules {
    pub fn new(every: u64, save_every: u64) -> Self {
        Self { every, save_every, ..Default::default() }
    }

    /// Feeds one check's metrics and the latest losses; returns the report with its warnings.
    pub fn update(&mut self, step: u64, m: HealthMetrics, losses: &Losses) -> HealthReport {
        let mut warnings = Vec::new();
        let count = |c: &mut u32, cond: bool| if cond { *c += 1 } else { *c = 0 };
        count(&mut self.collapse_ab, m.diversity_ab < COLLAPSE_RATIO);
        count(&mut self.collapse_ba, m.diversity_ba < COLLAPSE_RATIO);
        let gap_a = m.d_a_real - m.d_a_fake;
        let gap_b = m.d_b_real - m.d_b_fake;
        count(&mut self.perfect_a, gap_a > D_PERFECT_GAP);
        count(&mut self.perfect_b, gap_b > D_PERFECT_GAP);
        count(&mut self.chance_a, gap_a.abs() < D_CHANCE_GAP);
        count(&mut self.chance_b, gap_b.abs() < D_CHANCE_GAP);
        let healthy = self.collapse_ab == 0 && self.collapse_ba == 0 && self.perfect_a == 0 && self.perfect_b == 0;
        if healthy {
            self.last_healthy_step = step;
        }
        let resume_from = self.last_healthy_step.checked_div(self.save_every).map_or(0, |n| n * self.save_every);
        let resume_hint = if resume_from > 0 { format!(", or resume from the checkpoint of step {resume_from}") } else { String::new() };
        for (net, n) in [("G_AB", self.collapse_ab), ("G_BA", self.collapse_ba)] {
            if n >= COLLAPSE_CHECKS {
                warnings.push(format!(
                    "outputs of {net} have become near-identical for {} steps: mode collapse likely — lower --lr, raise --pool{resume_hint}",
                    n as u64 * self.every
                ));
            }
        }
        for (net, gen, n) in [("D_A", "G_BA", self.perfect_a), ("D_B", "G_AB", self.perfect_b)] {
            if n >= D_PERFECT_CHECKS {
                warnings.push(format!(
                    "{net} has told real from fake almost perfectly for {} steps: it is overpowering {gen}, which gets little signal — lower --lr, raise --pool or use --gan-loss lsgan{resume_hint}",
                    n as u64 * self.every
                ));
            }
        }
        let cycle = (losses.cycle_a + losses.cycle_b) as f64;
        let identity = (losses.idt_ab + losses.idt_ba) as f64;
        let ema = |slot: &mut Option<f64>, x: f64| -> (f64, f64) {
            let prev = slot.unwrap_or(x);
            let next = 0.8 * prev + 0.2 * x;
            *slot = Some(next);
            (next, next - prev)
        };
        let (cycle_ema, cycle_trend) = ema(&mut self.cycle_ema, cycle);
        let (identity_ema, identity_trend) = ema(&mut self.identity_ema, identity);
        HealthReport {
            step,
            d_a_perfect_steps: self.perfect_a as u64 * self.every,
            d_b_perfect_steps: self.perfect_b as u64 * self.every,
            d_a_chance_steps: self.chance_a as u64 * self.every,
            d_b_chance_steps: self.chance_b as u64 * self.every,
            metrics: m,
            cycle_ema,
            cycle_trend,
            identity_ema,
            identity_trend,
            mode_collapse: self.collapse_ab.max(self.collapse_ba) >= COLLAPSE_CHECKS,
            warnings,
        }
    }
}

/// Runs the checks during training on a fixed held-out batch of each domain.
pub struct HealthMonitor {
    every: u64,
    gan: GanLoss,
    batch: Option<(Tensor, Tensor)>,
    rules: HealthRules,
}

/// Up to `n` centre crops of side `size` from a domain's test images (training images if none).
fn held_out(d: &crate::data::Domain, n: usize, size: usize, device: &Device) -> Result<Option<Tensor>> {
    let files = if d.test.images.len() >= 2 { &d.test.images } else { &d.train.images };
    let mut ts = Vec::new();
    for (p, _) in files.iter().take(n) {
        let Ok(img) = crate::data::decode_image(p) else { continue };
        let img = crate::data::centre_square(&img, size as u32);
        ts.push(Pixels::from_image(&img, d.spec.channels)?.0.to_tensor(device)?);
    }
    Ok(if ts.len() >= 2 { Some(Tensor::stack(&ts, 0)?) } else { None })
}

impl HealthMonitor {
    pub fn new(cfg: &TrainConfig, dataset: &Dataset, device: &Device) -> Result<Self> {
        let batch = if cfg.health_every > 0 {
            match (held_out(&dataset.a, 4, cfg.size, device)?, held_out(&dataset.b, 4, cfg.size, device)?) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            }
        } else {
            None
        };
        Ok(Self { every: cfg.health_every, gan: cfg.gan_loss, batch, rules: HealthRules::new(cfg.health_every, cfg.save_every) })
    }

    fn score(&self, logits: &Tensor) -> Result<f64> {
        let s = match self.gan {
            GanLoss::Vanilla => candle_nn::ops::sigmoid(logits)?,
            GanLoss::Lsgan => logits.clamp(0f32, 1f32)?,
        };
        Ok(s.mean_all()?.to_scalar::<f32>()? as f64)
    }

    /// Runs a check when the step is due; None otherwise.
    /// A one-sided run's B→A metrics are NaN, which no rule counts.
    pub fn observe(&mut self, trainer: &MethodTrainer, losses: &Losses) -> Result<Option<HealthReport>> {
        let step = trainer.step();
        if self.every == 0 || !step.is_multiple_of(self.every) {
            return Ok(None);
        }
        let Some((a, b)) = &self.batch else { return Ok(None) };
        let ((g_ab, g_ba), (d_b, d_a)) = (trainer.generators(), trainer.discriminators());
        // A CUT generator may take more channels than domain A has (see `TrainConfig::g_ab`).
        let fake_b = g_ab.forward(&crate::ops::adapt_channels(a, trainer.cfg().g_ab().in_channels)?)?.detach();
        let mut m = HealthMetrics {
            diversity_ab: diversity_ratio(a, &fake_b)?,
            d_b_real: self.score(&d_b.forward(b)?.detach())?,
            d_b_fake: self.score(&d_b.forward(&fake_b)?.detach())?,
            diversity_ba: f64::NAN,
            d_a_real: f64::NAN,
            d_a_fake: f64::NAN,
        };
        if let (Some(g_ba), Some(d_a)) = (g_ba, d_a) {
            let fake_a = g_ba.forward(b)?.detach();
            m.diversity_ba = diversity_ratio(b, &fake_a)?;
            m.d_a_real = self.score(&d_a.forward(a)?.detach())?;
            m.d_a_fake = self.score(&d_a.forward(&fake_a)?.detach())?;
        }
        Ok(Some(self.rules.update(step, m, losses)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HealthMetrics {
        HealthMetrics { diversity_ab: 0.8, diversity_ba: 0.9, d_b_real: 0.6, d_b_fake: 0.4, d_a_real: 0.55, d_a_fake: 0.45 }
    }

    #[test]
    fn constant_generator_triggers_collapse_warning() {
        let dev = Device::Cpu;
        let inputs = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &dev).unwrap();
        let constant = Tensor::full(0.3f32, (4, 3, 16, 16), &dev).unwrap();
        let ratio = diversity_ratio(&inputs, &constant).unwrap();
        assert!(ratio < 1e-6);
        let mut rules = HealthRules::new(100, 500);
        let mut fired = vec![];
        let mut flagged = vec![];
        for k in 1..=5 {
            let m = if k == 1 { healthy() } else { HealthMetrics { diversity_ab: ratio, ..healthy() } };
            let report = rules.update(k * 100, m, &Losses::default());
            flagged.push(report.mode_collapse);
            fired.push(report.warnings);
        }
        assert_eq!(flagged, [false, false, false, true, true]);
        assert!(fired[..3].iter().all(|w| w.is_empty()), "{fired:?}");
        assert!(fired[3][0].contains("G_AB") && fired[3][0].contains("mode collapse"), "{fired:?}");
    }

    #[test]
    fn healthy_run_raises_nothing() {
        let mut rules = HealthRules::new(10, 50);
        for k in 1..=50 {
            assert!(rules.update(k * 10, healthy(), &Losses::default()).warnings.is_empty());
        }
    }

    #[test]
    fn overpowering_discriminator_warns() {
        let mut rules = HealthRules::new(10, 50);
        let m = HealthMetrics { d_b_real: 0.99, d_b_fake: 0.02, ..healthy() };
        let w: Vec<_> = (1..=5).map(|k| rules.update(k * 10, m.clone(), &Losses::default()).warnings).collect();
        assert!(w[3].is_empty());
        assert!(w[4][0].starts_with("D_B has told real from fake"), "{w:?}");
    }
}
