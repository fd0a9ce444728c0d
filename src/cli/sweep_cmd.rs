//! The CLI's `sweep`: trains the trials of the grid (`--jobs` at a time, successive halving with
//! `--halving`, one part with `--shard`) through `train`'s own preparation, scores each on the
//! held-out pairs and rewrites the leaderboard as trials finish.

use super::{Cli, Command, SweepArgs, TrainArgs};
use crate::sweep::{self, SweepSpec, TrialRecord, TrialStatus};
use crate::train::{run_training, Divergence, RunControl, RunOutcome, TrainEvent};
use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn settings_text(settings: &[(String, String)]) -> String {
    settings.iter().map(|(f, v)| format!("--{f} {v}")).collect::<Vec<_>>().join(" ")
}

fn print_best(sweep_dir: &Path, spec: &SweepSpec, trials: Vec<TrialRecord>) {
    let metric = spec.metric.as_str();
    if let Some(best) = sweep::ranked(trials, spec.metric).first() {
        let score = best.scores.get(metric).copied().unwrap_or(f64::NAN);
        outln!(
            "best by {metric}: {} ({}, {} at step {}) with {score:.4}; translate with --model {}",
            best.trial,
            settings_text(&best.settings),
            best.status_text(),
            best.step,
            best.run.display()
        );
    }
    outln!("leaderboard: {}", sweep_dir.join(sweep::LEADERBOARD_MD).display());
}

/// One trial of the grid, as `train` would run it.
struct Trial {
    name: String,
    settings: Vec<(String, String)>,
    args: TrainArgs,
    /// Steps of its schedule (its rungs are fractions of it).
    total: u64,
    run_dir: PathBuf,
}

/// How one training of a trial ended.
enum Ended {
    /// Reached its target step (a rung or the end).
    Reached,
    /// Ctrl-C/SIGTERM: saved, the sweep stops.
    Interrupted,
    Collapsed(String),
    Diverged(String),
    Failed(String),
}

/// Everything the trials of one invocation share.
struct Sweep<'a> {
    checkpoints: &'a Path,
    dir: PathBuf,
    spec: SweepSpec,
    held_a: PathBuf,
    held_b: PathBuf,
    /// For KID, FID and FD-DINOv2, loaded once.
    models: sweep::DistanceModels,
    stop: Arc<AtomicBool>,
    bars: MultiProgress,
    /// Serialises record and leaderboard writes of parallel trials.
    records: Mutex<()>,
}

impl Sweep<'_> {
    fn record_of(&self, name: &str) -> Option<TrialRecord> {
        sweep::read_trial(&self.dir.join(name))
    }

    fn save(&self, record: &TrialRecord) -> Result<()> {
        let _one_at_a_time = self.records.lock().unwrap_or_else(|e| e.into_inner());
        sweep::record_trial(record, &record.run)?;
        sweep::write_leaderboard(&self.dir, &self.spec, &sweep::read_trials(&self.dir))
    }

    /// A line above the progress bars (on stderr when they are hidden: no terminal, a batch job).
    fn say(&self, line: String) {
        if self.bars.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.bars.println(line);
        }
    }

    /// Trains `trial` until `stop_at` (a rung's step; None: its schedule's end).
    fn train(&self, trial: &Trial, stop_at: Option<u64>) -> Ended {
        let (cfg, options) = match super::train_cmd::prepare(self.checkpoints, &trial.args) {
            Ok(p) => p,
            Err(e) => return Ended::Failed(format!("{e:#}")),
        };
        let target = stop_at.unwrap_or(u64::MAX).min(cfg.schedule.total_steps());
        let control = RunControl { stop_at, ..Default::default() };
        let bar = super::styled(self.bars.add(ProgressBar::new(target)), "{prefix:>4} {bar:24.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}");
        bar.set_prefix(trial.name.clone());
        let mut collapse = None;
        let outcome = run_training(cfg, &options, &control, &mut |e| {
            if self.stop.load(Ordering::SeqCst) {
                control.stop.store(true, Ordering::SeqCst);
            }
            match e {
                TrainEvent::Step(r) => {
                    bar.set_position(r.step);
                    bar.set_message(format!("G {:.3} D {:.3}/{:.3}", r.losses.g_total, r.losses.d_a, r.losses.d_b));
                }
                TrainEvent::Health(h) if h.mode_collapse => {
                    collapse = Some(h.warnings.join("; "));
                    control.stop.store(true, Ordering::SeqCst);
                }
                TrainEvent::Warning(w) => self.say(format!("{}: warning: {w}", trial.name)),
                _ => {}
            }
        });
        bar.finish_and_clear();
        match (outcome, collapse) {
            (Ok(_), Some(why)) => Ended::Collapsed(why),
            (Ok(RunOutcome::Stopped { step }), None) if self.stop.load(Ordering::SeqCst) && step < target => Ended::Interrupted,
            (Ok(_), None) => Ended::Reached,
            (Err(e), _) if e.downcast_ref::<Divergence>().is_some() => Ended::Diverged(format!("{e:#}")),
            (Err(e), _) => Ended::Failed(format!("{e:#}")),
        }
    }

    /// Trains `trial` to `stop_at`, scores it and records the result; Ok(false) when interrupted.
    fn step(&self, trial: &Trial, stop_at: Option<u64>) -> Result<bool> {
        let started = Instant::now();
        let ended = self.train(trial, stop_at);
        if matches!(ended, Ended::Interrupted) {
            return Ok(false);
        }
        let previous = self.record_of(&trial.name);
        let mut record = TrialRecord {
            trial: trial.name.clone(),
            run: trial.run_dir.clone(),
            settings: trial.settings.clone(),
            step: 0,
            seconds: previous.as_ref().map_or(0.0, |p| p.seconds) + started.elapsed().as_secs_f64(),
            scores: BTreeMap::new(),
            images: 0,
            status: if stop_at.is_some() { TrialStatus::AtRung } else { TrialStatus::Finished },
            rung_scores: previous.map(|p| p.rung_scores).unwrap_or_default(),
            note: String::new(),
        };
        match ended {
            Ended::Collapsed(why) => (record.status, record.note) = (TrialStatus::Collapsed, why),
            Ended::Diverged(why) => (record.status, record.note) = (TrialStatus::Diverged, why),
            Ended::Failed(why) => (record.status, record.note) = (TrialStatus::Failed, why),
            Ended::Reached | Ended::Interrupted => {}
        }
        // Every trial with a checkpoint is scored at the step it reached, broken ones included.
        let scored = (|| -> Result<()> {
            record.step = crate::checkpoint::load_generation(&trial.run_dir)?.manifest.step;
            let device = crate::train::TrainConfig::load(&trial.run_dir)?.device;
            (record.scores, record.images) = sweep::score_run(&trial.run_dir, &self.held_a, &self.held_b, self.spec.short_side, &device, &self.models)?;
            Ok(())
        })();
        match scored {
            Ok(()) => {
                if record.status == TrialStatus::AtRung {
                    record.rung_scores.push(record.scores.get(self.spec.metric.as_str()).copied().unwrap_or(f64::NAN));
                }
            }
            Err(e) if record.status == TrialStatus::Failed || record.status == TrialStatus::Diverged => record.note.push_str(&format!(" (not scored: {e:#})")),
            Err(e) => (record.status, record.note) = (TrialStatus::Failed, format!("scoring failed: {e:#}")),
        }
        let scores: Vec<String> = record.scores.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        let mut line = format!("{} ({}): {} at step {}", trial.name, settings_text(&trial.settings), record.status_text(), record.step);
        if !scores.is_empty() {
            line.push_str(&format!(": {}", scores.join(", ")));
        }
        if !record.note.is_empty() {
            line.push_str(&format!(" — {}", record.note));
        }
        self.say(line);
        self.save(&record)?;
        Ok(true)
    }

    /// Runs `step` for each trial, `jobs` at a time; Ok(false) when interrupted.
    fn run_all(&self, trials: &[&Trial], stop_at: &(dyn Fn(&Trial) -> Option<u64> + Sync), jobs: usize) -> Result<bool> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Result<bool>>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..jobs.clamp(1, trials.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(trial) = trials.get(i) else { break };
                    if self.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = self.step(trial, stop_at(trial));
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                });
            }
        });
        let mut all_done = !self.stop.load(Ordering::SeqCst);
        for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            all_done &= r?;
        }
        Ok(all_done)
    }
}

/// The trials of the grid this process runs (all, or its `--shard`).
fn trials_of(checkpoints: &Path, a: &SweepArgs, spec: &SweepSpec, dataset: &Path) -> Result<Vec<Trial>> {
    let mut out = Vec::new();
    for (i, settings) in spec.grid().into_iter().enumerate() {
        if a.shard.is_some_and(|s| !s.owns(i as u64)) {
            continue;
        }
        let name = sweep::trial_name(i);
        let mut argv: Vec<String> = ["cyclestudio", "train", "--resume-or-start", "--name"].map(String::from).to_vec();
        argv.push(format!("{}/{name}", a.name));
        argv.push("--dataset".into());
        argv.push(dataset.display().to_string());
        argv.extend(spec.train_args.iter().cloned());
        for (flag, value) in &settings {
            argv.push(format!("--{flag}"));
            argv.push(value.clone());
        }
        let parsed = Cli::try_parse_from(&argv).with_context(|| format!("trial {name}: the train flags {}", argv[2..].join(" ")))?;
        let Some(Command::Train(args)) = parsed.command else { unreachable!("parsed as train") };
        // A grid point `train` would refuse (--size 96 for a unet_128) stops the sweep before it starts.
        let (cfg, _) = super::train_cmd::prepare(checkpoints, &args).with_context(|| format!("trial {name} ({})", settings_text(&settings)))?;
        out.push(Trial { run_dir: checkpoints.join(&a.name).join(&name), name, settings, args: *args, total: cfg.schedule.total_steps() });
    }
    Ok(out)
}

/// The definition `a` gives, checked.
fn spec_of(a: &SweepArgs) -> Result<SweepSpec> {
    if a.vary.is_empty() {
        bail!("sweep needs at least one --vary FLAG=V1,V2,…");
    }
    for v in &a.vary {
        let flag = format!("--{}", v.flag);
        if a.train_args.iter().any(|t| *t == flag || t.starts_with(&format!("{flag}="))) {
            bail!("{flag} is both varied and given after --; give it once");
        }
        if ["name", "dataset", "resume", "resume-or-start"].contains(&v.flag.as_str()) {
            bail!("--{} cannot be varied: the sweep sets it for each trial", v.flag);
        }
    }
    let mut rungs = if a.halving && a.rungs.is_empty() { sweep::DEFAULT_RUNGS.to_vec() } else { a.rungs.clone() };
    if rungs.iter().any(|r| !(*r > 0.0 && *r < 1.0)) {
        bail!("--rungs are fractions of the iterations between 0 and 1, e.g. 0.25,0.5");
    }
    rungs.sort_by(f64::total_cmp);
    rungs.dedup();
    if a.metric == sweep::Metric::FdDinov2 && a.dinov2_weights.is_none() {
        bail!("--metric fd-dinov2 needs --dinov2-weights FILE (DINOv2 weights as .safetensors, see docs/sweeps.md)");
    }
    if matches!(a.metric, sweep::Metric::Kid | sweep::Metric::Fid) && a.fid.fid_weights.is_none() {
        bail!("--metric {} needs --fid-weights FILE (the FID Inception weights, see docs/metrics.md)", a.metric.as_str());
    }
    Ok(SweepSpec {
        vary: a.vary.clone(),
        metric: a.metric,
        train_args: a.train_args.clone(),
        rungs,
        dinov2_weights: a.dinov2_weights.clone(),
        fid_weights: a.fid.fid_weights.clone(),
        fid_weights_unchecked: a.fid.fid_weights_unchecked,
        short_side: a.short_side.or_else(|| {
            // Trials of different sizes are scored alike, at the largest.
            let sizes = a.vary.iter().find(|v| v.flag == "size")?;
            sizes.values.iter().filter_map(|v| v.parse::<u32>().ok()).max()
        }),
    })
}

pub fn run(checkpoints: &Path, a: SweepArgs) -> Result<()> {
    let sweep_dir = checkpoints.join(&a.name);
    if a.leaderboard {
        let spec = SweepSpec::load(&sweep_dir)?;
        let trials = sweep::read_trials(&sweep_dir);
        sweep::write_leaderboard(&sweep_dir, &spec, &trials)?;
        sweep::write_experiment(&sweep_dir, &spec)?;
        outln!("{} of {} trials scored", trials.len(), spec.grid().len());
        print_best(&sweep_dir, &spec, trials);
        return Ok(());
    }
    let dataset = a.dataset.clone().context("sweep needs --dataset DIR (or --leaderboard to rebuild the leaderboard)")?;
    let spec = spec_of(&a)?;
    let (held_a, held_b) = sweep::held_out(&dataset, a.val_a.as_deref(), a.val_b.as_deref())?;
    // Every trial's flags parse, and the weights load, before anything is written.
    let trials = trials_of(checkpoints, &a, &spec, &dataset)?;
    let models = sweep::DistanceModels::load(&spec)?;
    // Running the same sweep command again continues it; another definition under the same name
    // would mix trials of two grids.
    match SweepSpec::load(&sweep_dir) {
        Ok(saved) if saved != spec => bail!(
            "sweep '{}' was started with other settings ({}); use another --name or the same --vary, --metric, --halving/--rungs and train flags",
            a.name,
            sweep_dir.join(sweep::SWEEP_FILE).display()
        ),
        _ => spec.save(&sweep_dir)?,
    }
    sweep::write_experiment(&sweep_dir, &spec)?;
    let part = a.shard.map(|s| format!(" (part {s}: {} of {} trials)", trials.len(), spec.grid().len())).unwrap_or_default();
    eprintln!("sweep {}: {} trials{part}, ranked by {} on {} held-out pairs from {}", a.name, trials.len(), spec.metric.as_str(), held_b.display(), held_a.display());

    let stop = Arc::new(AtomicBool::new(false));
    super::stop_on_interrupt(stop.clone(), "finishing the running trials' steps and saving their checkpoints…", "exiting without saving (the last checkpoints are intact)");
    let sweep = Sweep { checkpoints, dir: sweep_dir.clone(), spec: spec.clone(), held_a, held_b, models, stop, bars: MultiProgress::new(), records: Mutex::new(()) };
    let interrupted = || {
        outln!("stopped; the running trials saved their checkpoints. Run the same sweep command to continue");
        Ok(())
    };

    // Trials still in the running: a collapsed or diverged trial is out; a failed one is retried.
    let mut alive: Vec<&Trial> = trials.iter().filter(|t| sweep.record_of(&t.name).is_none_or(|r| !matches!(r.status, TrialStatus::Collapsed | TrialStatus::Diverged))).collect();
    for (k, fraction) in spec.rungs.iter().enumerate() {
        let rung = k + 1;
        // Trials scored at this rung already (an earlier, interrupted invocation) are not retrained.
        let todo: Vec<&Trial> = alive.iter().copied().filter(|t| sweep.record_of(&t.name).is_none_or(|r| r.rung_scores.len() < rung)).collect();
        let at = |t: &Trial| sweep::rung_steps(&[*fraction], t.total).first().copied();
        if !todo.is_empty() {
            eprintln!("rung {rung}: training {} trial(s) to {fraction} of their iterations", todo.len());
        }
        if !sweep.run_all(&todo, &at, a.jobs)? {
            return interrupted();
        }
        let reached: Vec<TrialRecord> = alive.iter().filter_map(|t| sweep.record_of(&t.name)).filter(|r| r.rung_scores.len() >= rung && !matches!(r.status, TrialStatus::Collapsed | TrialStatus::Diverged | TrialStatus::Failed)).collect();
        let (keep, halved) = sweep::halve(reached, rung, spec.metric);
        for mut r in halved {
            if r.status == TrialStatus::AtRung && r.rung_scores.len() == rung {
                r.status = TrialStatus::Halved;
                sweep.save(&r)?;
            }
        }
        let kept: Vec<String> = keep.iter().map(|r| r.trial.clone()).collect();
        eprintln!("rung {rung}: {} go on ({})", kept.len(), kept.join(", "));
        alive.retain(|t| kept.contains(&t.name));
    }
    let todo: Vec<&Trial> = alive.into_iter().filter(|t| sweep.record_of(&t.name).is_none_or(|r| r.status != TrialStatus::Finished)).collect();
    if !sweep.run_all(&todo, &|_| None, a.jobs)? {
        return interrupted();
    }
    let records = sweep::read_trials(&sweep_dir);
    let broken: Vec<String> = records.iter().filter(|r| trials.iter().any(|t| t.name == r.trial) && matches!(r.status, TrialStatus::Failed)).map(|r| format!("{}: {}", r.trial, r.note)).collect();
    print_best(&sweep_dir, &spec, records);
    if !broken.is_empty() {
        bail!("{} trial(s) failed (their runs are kept; fix the cause and run the same command to retry them):\n{}", broken.len(), broken.join("\n"));
    }
    Ok(())
}
