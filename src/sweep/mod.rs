//! Sweeps: a grid of training settings, each trial a normal run under the sweep's folder, scored
//! on held-out pairs and ranked in a leaderboard (CSV, Markdown) and a TensorBoard HParams experiment.

use crate::eval::fd_dinov2::Dinov2Features;
use crate::eval::fid::{fid, kid, Features, KidOptions};
use crate::eval::fid_features::features_of_images;
use crate::eval::inception::{load_fid_inception, LoadedInception};
use crate::tensorboard::events;
use crate::train::TrainConfig;
use crate::util::atomic_write;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a sweep varies and how it ranks, saved in the sweep's folder (`--leaderboard` reads it).
pub const SWEEP_FILE: &str = "sweep.toml";
/// A finished trial's settings and scores, in its run folder.
pub const TRIAL_FILE: &str = "trial.json";
pub const LEADERBOARD_CSV: &str = "leaderboard.csv";
pub const LEADERBOARD_MD: &str = "leaderboard.md";
/// The rungs of successive halving when `--halving` is given without `--rungs`.
pub const DEFAULT_RUNGS: [f64; 2] = [0.25, 0.5];
/// The scores every trial gets, as columns and as TensorBoard scalars `sweep/NAME`; with DINOv2
/// weights also [`FD_DINOV2`].
pub const SCORES: [&str; 3] = ["psnr", "ssim", "colourfulness"];
/// The Fréchet distance of DINOv2 features between a trial's translations of the held-out A
/// images and the held-out B images (Stein et al. 2023).
pub const FD_DINOV2: &str = "fd_dinov2";
/// KID and FID (Inception features) of the same two sets, with FID Inception weights.
pub const KID: &str = "kid";
pub const FID: &str = "fid";

/// One varied `train` flag: `--vary lr=0.0001,0.0002`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vary {
    /// The flag without its dashes (`lr`, `lambda-cycle`).
    pub flag: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for Vary {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (flag, values) = s.split_once('=').ok_or_else(|| format!("'{s}': expected FLAG=V1,V2,… (e.g. lr=0.0001,0.0002)"))?;
        let flag = flag.trim().trim_start_matches('-').to_string();
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
        if flag.is_empty() || values.is_empty() {
            return Err(format!("'{s}': expected FLAG=V1,V2,… with at least one value"));
        }
        Ok(Self { flag, values })
    }
}

/// How the trials are ranked: the mean over the held-out pairs of A→B translations (higher is
/// better), or a distance between the translations and the held-out B images: KID, FID or
/// FD-DINOv2 (lower is better).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    #[default]
    Psnr,
    Ssim,
    Colourfulness,
    Kid,
    Fid,
    FdDinov2,
}

impl Metric {
    /// Its column in the leaderboard (and key in the scores).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Psnr => "psnr",
            Self::Ssim => "ssim",
            Self::Colourfulness => "colourfulness",
            Self::Kid => KID,
            Self::Fid => FID,
            Self::FdDinov2 => FD_DINOV2,
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::Psnr | Self::Ssim | Self::Colourfulness)
    }

    /// `x` turned so that larger is better (missing and non-finite scores last).
    fn goodness(self, x: Option<f64>) -> f64 {
        match x.filter(|x| x.is_finite()) {
            Some(x) if self.higher_is_better() => x,
            Some(x) => -x,
            None => f64::NEG_INFINITY,
        }
    }
}

/// A sweep's definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub vary: Vec<Vary>,
    pub metric: Metric,
    /// The `train` flags every trial shares.
    pub train_args: Vec<String>,
    /// Successive halving: at each of these fractions of its iterations, the worse half of the
    /// trials still running stops. Empty: every trial trains to the end.
    #[serde(default)]
    pub rungs: Vec<f64>,
    /// DINOv2 weights for FD-DINOv2 (timm's `vit_*_patch14_dinov2` keys, safetensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dinov2_weights: Option<PathBuf>,
    /// FID Inception weights for KID and FID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_weights: Option<PathBuf>,
    /// Accept FID weights that are not the standard file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fid_weights_unchecked: bool,
    /// The short side held-out images are scored at (None: each trial's training size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_side: Option<u32>,
}

impl SweepSpec {
    pub fn load(sweep_dir: &Path) -> Result<Self> {
        let path = sweep_dir.join(SWEEP_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{} is not a sweep (cannot read {})", sweep_dir.display(), path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: not a sweep definition", path.display()))
    }

    /// The score columns: [`SCORES`], KID and FID with FID weights, FD-DINOv2 with DINOv2 weights.
    pub fn score_names(&self) -> Vec<&'static str> {
        let mut names = SCORES.to_vec();
        if self.fid_weights.is_some() {
            names.extend([KID, FID]);
        }
        if self.dinov2_weights.is_some() {
            names.push(FD_DINOV2);
        }
        names
    }

    pub fn save(&self, sweep_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(sweep_dir)?;
        atomic_write(&sweep_dir.join(SWEEP_FILE), toml::to_string(self)?.as_bytes())
    }

    /// The trials: every combination of the varied values, the first flag's values outermost.
    pub fn grid(&self) -> Vec<Vec<(String, String)>> {
        let mut grid: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for v in &self.vary {
            grid = grid.iter().flat_map(|t| v.values.iter().map(move |x| [t.clone(), vec![(v.flag.clone(), x.clone())]].concat())).collect();
        }
        grid
    }
}

/// The folder name of trial `index` (0-based) of a grid of `n`.
pub fn trial_name(index: usize) -> String {
    format!("t{:02}", index + 1)
}

/// Where a trial stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    /// Trained to the end of its schedule.
    Finished,
    /// Scored at a rung and still in the running (the sweep was stopped or is under way).
    AtRung,
    /// Among the worse half at a rung: stopped there, its checkpoint kept.
    Halved,
    /// Stopped when its health monitor reported mode collapse.
    Collapsed,
    /// Its losses or weights became non-finite; its last good checkpoint is kept.
    Diverged,
    /// Training or scoring failed (the reason is in `note`).
    Failed,
}

impl TrialStatus {
    /// Trials that are no longer trained.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::AtRung)
    }

    /// Leaderboard groups: trials in the running or finished, then halved, then broken.
    fn group(self) -> u8 {
        match self {
            Self::Finished | Self::AtRung => 0,
            Self::Halved => 1,
            Self::Collapsed | Self::Diverged | Self::Failed => 2,
        }
    }
}

/// A scored trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub trial: String,
    /// The run folder (for `--model`).
    pub run: PathBuf,
    /// The varied settings, as (flag, value).
    pub settings: Vec<(String, String)>,
    /// The step its scores are of.
    pub step: u64,
    /// Wall time of its training.
    pub seconds: f64,
    pub scores: BTreeMap<String, f64>,
    /// Held-out pairs scored (or held-out A images, when they have no pairs and distances score them).
    pub images: usize,
    pub status: TrialStatus,
    /// The ranking metric at each rung the trial reached (successive halving).
    #[serde(default)]
    pub rung_scores: Vec<f64>,
    /// Why it failed, diverged or collapsed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl TrialRecord {
    /// The status as the leaderboard shows it.
    pub fn status_text(&self) -> String {
        match self.status {
            TrialStatus::Finished => "finished".into(),
            TrialStatus::AtRung => format!("at rung {}", self.rung_scores.len()),
            TrialStatus::Halved => format!("stopped at rung {}", self.rung_scores.len()),
            TrialStatus::Collapsed => "collapsed".into(),
            TrialStatus::Diverged => "diverged".into(),
            TrialStatus::Failed => "failed".into(),
        }
    }
}

/// The step of each rung of a schedule of `total` steps at `fractions` of it (rungs that would
/// fall on the first or the last step are left out).
pub fn rung_steps(fractions: &[f64], total: u64) -> Vec<u64> {
    let mut steps: Vec<u64> = fractions.iter().map(|f| (f * total as f64).round() as u64).filter(|s| *s >= 1 && *s < total).collect();
    steps.dedup();
    steps
}

/// Successive halving at rung `rung` (1-based) of the trials that reached it: the better half
/// (rounded up) by their score at that rung stays, best first; the rest are returned second.
pub fn halve(trials: Vec<TrialRecord>, rung: usize, metric: Metric) -> (Vec<TrialRecord>, Vec<TrialRecord>) {
    let score = |t: &TrialRecord| metric.goodness(t.rung_scores.get(rung - 1).copied());
    let mut sorted = trials;
    sorted.sort_by(|a, b| score(b).total_cmp(&score(a)).then_with(|| a.trial.cmp(&b.trial)));
    let keep = sorted.len().div_ceil(2);
    let rest = sorted.split_off(keep);
    (sorted, rest)
}

/// The held-out B images' features for each network: (Inception, DINOv2).
type ReferenceFeatures = (Option<Features>, Option<Features>);

/// The feature networks for the set distances (loaded once per sweep).
#[derive(Default)]
pub struct DistanceModels {
    pub inception: Option<LoadedInception>,
    pub dinov2: Option<Dinov2Features>,
    /// The held-out B images' (Inception, DINOv2) features per short side: the same for every
    /// trial scored at that size, so computed once.
    references: std::sync::Mutex<std::collections::HashMap<u32, ReferenceFeatures>>,
}

impl DistanceModels {
    pub fn load(spec: &SweepSpec) -> Result<Self> {
        let inception = spec.fid_weights.as_deref().map(|w| load_fid_inception(w, spec.fid_weights_unchecked)).transpose()?;
        let dinov2 = spec.dinov2_weights.as_deref().map(|w| Dinov2Features::load(w, &candle_core::Device::Cpu)).transpose()?;
        Ok(Self { inception, dinov2, references: Default::default() })
    }

    fn any(&self) -> bool {
        self.inception.is_some() || self.dinov2.is_some()
    }

    /// The features of the images of `held_b` resized to `short` on their short side.
    fn references(&self, held_b: &Path, short: u32) -> Result<ReferenceFeatures> {
        let mut cache = self.references.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get(&short) {
            return Ok(f.clone());
        }
        let mut real = Vec::new();
        for path in crate::eval::images_under(held_b)? {
            // Unreadable files were skipped by `evaluate` too.
            if let Ok(img) = crate::data::decode_image(&path) {
                real.push(crate::eval::resize_short(&img, short));
            }
        }
        let inception = self.inception.as_ref().map(|m| features_of_images(m, &real)).transpose()?;
        let dinov2 = self.dinov2.as_ref().map(|m| m.features_of_images(&real)).transpose()?;
        Ok(cache.entry(short).or_insert((inception, dinov2)).clone())
    }
}

/// Scores the run in `run_dir` on held-out pairs: its A→B translations of `held_a` against the
/// images with the same names in `held_b`, resized to `short` on their short side (None: the
/// run's training size); with the `models` loaded, also the distances (KID, FID, FD-DINOv2)
/// between those translations and the `held_b` images at that size.
pub fn score_run(run_dir: &Path, held_a: &Path, held_b: &Path, short: Option<u32>, device: &str, models: &DistanceModels) -> Result<(BTreeMap<String, f64>, usize)> {
    let cfg = TrainConfig::load(run_dir)?;
    let tr = crate::translate::Translator::load(run_dir, device)?;
    let short = short.unwrap_or(cfg.size as u32);
    let distances = models.any();
    // Each held-out image is translated once; with distances, every translation is kept for them.
    let (report, translations) = crate::eval::evaluate_keeping(&tr, &cfg.domain_b.name, held_a, held_b, short, distances)?;
    let (mut scores, mut images) = match report {
        Ok(r) => (BTreeMap::from([("psnr".to_string(), r.psnr), ("ssim".to_string(), r.ssim), ("colourfulness".to_string(), r.colourfulness)]), r.images),
        // Held-out images without true pairs: the distances alone score them.
        Err(_) if distances => (BTreeMap::new(), 0),
        Err(e) => return Err(e),
    };
    if !distances {
        return Ok((scores, images));
    }
    if images == 0 {
        images = translations.len();
        if let Some(c) = crate::eval::mean_colourfulness(&translations)?.filter(|_| cfg.domain_b.channels == 3) {
            scores.insert("colourfulness".to_string(), c);
        }
    }
    let (inception_truth, dinov2_truth) = models.references(held_b, short)?;
    if let (Some(model), Some(truth)) = (&models.inception, &inception_truth) {
        let fake = features_of_images(model, &translations)?;
        scores.insert(KID.to_string(), kid(&fake, truth, &KidOptions::default())?.mean);
        scores.insert(FID.to_string(), fid(&fake, truth)?);
    }
    if let (Some(model), Some(truth)) = (&models.dinov2, &dinov2_truth) {
        scores.insert(FD_DINOV2.to_string(), crate::eval::fd_dinov2::fd_dinov2(&model.features_of_images(&translations)?, truth)?);
    }
    Ok((scores, images))
}

/// Records the scores of a trial: its `trial.json`, and `sweep/…` scalars at its last step in its
/// TensorBoard events (the HParams dashboard's metrics).
pub fn record_trial(record: &TrialRecord, run_dir: &Path) -> Result<()> {
    atomic_write(&run_dir.join(TRIAL_FILE), serde_json::to_string_pretty(record)?.as_bytes())?;
    if !events::event_files(run_dir).is_empty() {
        let mut w = crate::tensorboard::EventWriter::open(run_dir, Some(record.step), &[])?;
        w.write(record.step, record.scores.iter().map(|(k, v)| events::scalar(&format!("sweep/{k}"), *v)).collect())?;
        w.flush()?;
    }
    Ok(())
}

/// The record of the trial whose run is `run_dir`, if it has been scored.
pub fn read_trial(run_dir: &Path) -> Option<TrialRecord> {
    serde_json::from_slice(&std::fs::read(run_dir.join(TRIAL_FILE)).ok()?).ok()
}

/// The scored trials in a sweep's folder, in trial order.
pub fn read_trials(sweep_dir: &Path) -> Vec<TrialRecord> {
    let mut out: Vec<TrialRecord> = std::fs::read_dir(sweep_dir).into_iter().flatten().flatten().filter_map(|e| read_trial(&e.path())).collect();
    out.sort_by(|a, b| a.trial.cmp(&b.trial));
    out
}

/// The trials best first: those still running or finished, then those halved, then the broken
/// ones; within a group the furthest trained first (a trial that survived a rung beat those
/// stopped there), then by `metric` (ties: trial order).
pub fn ranked(mut trials: Vec<TrialRecord>, metric: Metric) -> Vec<TrialRecord> {
    let score = |t: &TrialRecord| metric.goodness(t.scores.get(metric.as_str()).copied());
    trials.sort_by(|a, b| {
        a.status.group().cmp(&b.status.group()).then(b.step.cmp(&a.step)).then_with(|| score(b).total_cmp(&score(a))).then_with(|| a.trial.cmp(&b.trial))
    });
    trials
}

/// Writes `leaderboard.csv` and `leaderboard.md` of the sweep: rank, trial, run, one column per
/// varied flag, step, the scores, seconds; best first.
pub fn write_leaderboard(sweep_dir: &Path, spec: &SweepSpec, trials: &[TrialRecord]) -> Result<()> {
    let ranked = ranked(trials.to_vec(), spec.metric);
    let mut header: Vec<String> = ["rank", "trial", "run"].map(String::from).to_vec();
    header.extend(spec.vary.iter().map(|v| v.flag.clone()));
    header.push("step".into());
    header.push("status".into());
    let score_names = spec.score_names();
    header.extend(score_names.iter().map(|s| s.to_string()));
    header.push("seconds".into());
    let rows: Vec<Vec<String>> = ranked
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut row = vec![(i + 1).to_string(), t.trial.clone(), t.run.display().to_string()];
            let setting = |flag: &str| t.settings.iter().find(|(f, _)| f == flag).map(|(_, v)| v.clone()).unwrap_or_default();
            row.extend(spec.vary.iter().map(|v| setting(&v.flag)));
            row.push(t.step.to_string());
            row.push(t.status_text());
            row.extend(score_names.iter().map(|s| t.scores.get(*s).map(|x| format!("{x:.4}")).unwrap_or_default()));
            row.push(format!("{:.1}", t.seconds));
            row
        })
        .collect();
    let csv_field = |f: &String| if f.contains([',', '"', '\n']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.clone() };
    let csv: String = std::iter::once(&header).chain(&rows).map(|r| r.iter().map(csv_field).collect::<Vec<_>>().join(",") + "\n").collect();
    atomic_write(&sweep_dir.join(LEADERBOARD_CSV), csv.as_bytes())?;
    let better = if spec.metric.higher_is_better() { "higher" } else { "lower" };
    let mut md = format!("# Sweep {}: ranked by {} on held-out images ({better} is better)\n\n", sweep_dir.display(), spec.metric.as_str());
    if !spec.rungs.is_empty() {
        md.push_str(&format!("Successive halving at {:?} of the iterations: trials stopped at a rung rank below those that went on.\n\n", spec.rungs));
    }
    md.push_str(&format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len())));
    for r in &rows {
        md.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    atomic_write(&sweep_dir.join(LEADERBOARD_MD), md.as_bytes())
}

/// The name a varied flag's value has among a run's settings (its `config.toml` keys, which the
/// HParams dashboard matches).
fn config_key(flag: &str) -> String {
    match flag {
        "iters" | "decay-iters" | "epochs" | "decay-epochs" => format!("schedule.{}", flag.replace('-', "_")),
        "model" => "method".into(),
        f => f.replace('-', "_"),
    }
}

/// The sweep's HParams experiment, in an event file of its own folder: the varied settings and
/// the `sweep/…` scores, so TensorBoard's HParams dashboard compares exactly the trials' choices.
/// Written once (it depends on the definition only, which a sweep's folder keeps).
pub fn write_experiment(sweep_dir: &Path, spec: &SweepSpec) -> Result<()> {
    if !events::event_files(sweep_dir).is_empty() {
        return Ok(());
    }
    let hparams: Vec<(String, String, Vec<String>)> = spec.vary.iter().map(|v| (config_key(&v.flag), v.flag.clone(), v.values.clone())).collect();
    let metrics: Vec<String> = spec.score_names().iter().map(|s| format!("sweep/{s}")).collect();
    let metric_refs: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let description = format!("cyclestudio sweep, ranked by {}", spec.metric.as_str());
    let mut w = crate::tensorboard::EventWriter::open(sweep_dir, None, &[])?;
    w.write(0, vec![events::experiment(&description, &hparams, &metric_refs)])?;
    w.flush()
}

/// The held-out pairs of a dataset: `--val-a/--val-b`, else its testA and testB.
pub fn held_out(dataset: &Path, val_a: Option<&Path>, val_b: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let a = val_a.map(Path::to_path_buf).unwrap_or_else(|| dataset.join("testA"));
    let b = val_b.map(Path::to_path_buf).unwrap_or_else(|| dataset.join("testB"));
    for d in [&a, &b] {
        if !d.is_dir() {
            bail!("the sweep scores trials on held-out pairs: {} is not a folder (give --val-a DIR --val-b DIR: images of A and their true B translations, with the same file names)", d.display());
        }
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_every_combination_in_order() {
        let spec = SweepSpec { vary: vec!["lr=1,2".parse().unwrap(), "--ngf=8,16,32".parse().unwrap()], metric: Metric::Psnr, train_args: vec![], rungs: vec![], dinov2_weights: None, fid_weights: None, fid_weights_unchecked: false, short_side: None };
        let g = spec.grid();
        assert_eq!(g.len(), 6);
        assert_eq!(g[0], [("lr".to_string(), "1".to_string()), ("ngf".to_string(), "8".to_string())]);
        assert_eq!(g[5], [("lr".to_string(), "2".to_string()), ("ngf".to_string(), "32".to_string())]);
        assert!("lr".parse::<Vary>().is_err());
        assert!("lr=".parse::<Vary>().is_err());
    }

    fn trial(name: &str, psnr: Option<f64>, step: u64, status: TrialStatus) -> TrialRecord {
        TrialRecord {
            trial: name.into(),
            run: name.into(),
            settings: vec![],
            step,
            seconds: 1.0,
            scores: psnr.map(|p| BTreeMap::from([("psnr".to_string(), p)])).unwrap_or_default(),
            images: 1,
            status,
            rung_scores: psnr.into_iter().collect(),
            note: String::new(),
        }
    }

    #[test]
    fn ranking_puts_the_best_first_and_missing_scores_last() {
        use TrialStatus::*;
        let t = |name: &str, psnr: Option<f64>| trial(name, psnr, 10, Finished);
        let r = ranked(vec![t("t01", Some(20.0)), t("t02", None), t("t03", Some(25.0)), t("t04", Some(f64::NAN))], Metric::Psnr);
        let names: Vec<&str> = r.iter().map(|t| t.trial.as_str()).collect();
        assert_eq!(names, ["t03", "t01", "t02", "t04"]);
        // Halved and broken trials rank below, whatever their scores; the furthest first.
        let r = ranked(
            vec![trial("t1", Some(30.0), 5, Halved), trial("t2", Some(10.0), 10, Finished), trial("t3", Some(40.0), 3, Diverged), trial("t4", Some(35.0), 2, Halved)],
            Metric::Psnr,
        );
        let names: Vec<&str> = r.iter().map(|t| t.trial.as_str()).collect();
        assert_eq!(names, ["t2", "t1", "t4", "t3"]);
    }

    #[test]
    fn halving_keeps_the_better_half_rounded_up() {
        let ts = vec![trial("a", Some(1.0), 5, TrialStatus::AtRung), trial("b", Some(3.0), 5, TrialStatus::AtRung), trial("c", Some(2.0), 5, TrialStatus::AtRung)];
        let (keep, stop) = halve(ts.clone(), 1, Metric::Psnr);
        assert_eq!(keep.iter().map(|t| t.trial.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(stop.iter().map(|t| t.trial.as_str()).collect::<Vec<_>>(), ["a"]);
        // A distance: lower is better.
        let (keep, _) = halve(ts, 1, Metric::FdDinov2);
        assert_eq!(keep.iter().map(|t| t.trial.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(rung_steps(&[0.25, 0.5], 8), [2, 4]);
        assert_eq!(rung_steps(&[0.01, 0.5, 0.99], 10), [5]);
    }
}
