//! The CLI's `train`: a run request from the flags, a progress bar, Ctrl-C.

use super::TrainArgs;
use crate::train::request::{Intervals, Length, RunRequest};
use crate::train::{run_training, RunControl, RunOptions, RunOutcome, TrainEvent};
use anyhow::{bail, Result};
use indicatif::ProgressBar;
use std::io::Write;
use std::path::Path;

/// The run the command line asks for; every unset value is the library's default.
pub fn request_from_args(args: &TrainArgs) -> Result<RunRequest> {
    let length = match (args.iters, args.decay_iters, args.epochs, args.decay_epochs) {
        (None, None, None, None) => Length::ReferenceEpochs,
        (i, d, None, None) => Length::Iters { iters: i.unwrap_or(0), decay_iters: d.unwrap_or(0) },
        (None, None, epochs, decay_epochs) => Length::Epochs { epochs, decay_epochs },
        _ => bail!("give either --iters/--decay-iters or --epochs/--decay-epochs"),
    };
    Ok(RunRequest {
        name: args.name.clone(),
        dataset: args.dataset.clone(),
        method: args.method,
        generator: args.generator,
        ngf: args.ngf,
        ndf: args.ndf,
        n_layers_d: args.n_layers_d,
        size: args.size,
        load_size: args.load_size,
        batch: args.batch,
        length,
        lr: args.lr,
        beta1: args.beta1,
        lambda_cycle: args.lambda_cycle,
        lambda_identity: args.lambda_identity,
        lambda_gan: args.lambda_gan,
        lambda_paired: args.lambda_paired,
        paired_loss: args.paired_loss,
        gan_loss: args.gan_loss,
        pool: args.pool,
        paired: args.paired,
        keep_luma: args.keep_luma,
        seed: args.seed,
        no_flip: args.no_flip,
        device: args.device.clone(),
        precision: args.precision,
        intervals: Intervals {
            sample_every: args.sample_every,
            save_every: args.save_every,
            log_every: args.log_every,
            health_every: args.health_every,
        },
        validation: validation_from_args(args)?,
    })
}

/// `--eval-every N --fid-weights FILE [--val-a DIR --val-b DIR]`.
fn validation_from_args(args: &TrainArgs) -> Result<Option<crate::train::ValidationConfig>> {
    match (args.eval_every, &args.fid.fid_weights) {
        (None, None) => Ok(None),
        (Some(0), _) => bail!("--eval-every must be positive"),
        (Some(every), Some(w)) => Ok(Some(crate::train::ValidationConfig {
            every,
            fid_weights: w.clone(),
            weights_unchecked: args.fid.fid_weights_unchecked,
            held_out_a: args.val_a.clone(),
            held_out_b: args.val_b.clone(),
        })),
        (Some(_), None) => bail!("--eval-every needs --fid-weights FILE (the FID Inception weights, see README)"),
        (None, Some(_)) => bail!("--fid-weights in training needs --eval-every N"),
    }
}

/// The configuration and options of the run `args` asks for: a new run, or with `--resume` (or
/// `--resume-or-start` and a checkpoint) the saved one with what a resume may change.
pub fn prepare(checkpoints: &Path, args: &TrainArgs) -> Result<(crate::train::TrainConfig, RunOptions)> {
    let run_dir = checkpoints.join(&args.name);
    let request = request_from_args(args)?;
    // A run with a checkpoint folder resumes (and fails, saying why, if it cannot be read) rather
    // than starting over on top of it: only a run that never saved starts again.
    let has_checkpoint = [crate::checkpoint::LATEST, crate::checkpoint::PREVIOUS].iter().any(|g| run_dir.join(g).exists());
    let resume = args.resume || (args.resume_or_start && has_checkpoint);
    let cfg = if resume {
        let cfg = request.resume(&run_dir)?;
        if args.resume_or_start {
            let conflicts = request.conflicts_with(&cfg);
            if !conflicts.is_empty() {
                bail!("run '{}' was started with other settings; remove or change: {}", cfg.name, conflicts.join("; "));
            }
        }
        cfg
    } else {
        if args.dataset.is_none() {
            bail!("--dataset is required for a new run (or add --resume)");
        }
        request.new_run()?
    };
    Ok((cfg, RunOptions { run_dir, resume, tensorboard: !args.no_tensorboard }))
}

pub fn train(checkpoints: &Path, args: TrainArgs) -> Result<()> {
    let (cfg, options) = prepare(checkpoints, &args)?;
    let run_dir = options.run_dir.clone();
    if args.resume_or_start {
        eprintln!("{}", if options.resume { "--resume-or-start: resuming the run's checkpoint" } else { "--resume-or-start: no checkpoint yet, starting the run" });
    }
    let control = RunControl { keep_going_on_save_error: args.keep_going_on_save_error, ..Default::default() };
    super::stop_on_interrupt(control.stop.clone(), "finishing this step and saving a checkpoint…", "exiting without saving (the last checkpoint is intact)");
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(cfg.schedule.total_steps()) };
    let bar = super::styled(bar, "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}");
    let quiet = args.quiet;
    let log_every = cfg.log_every.max(1);
    // A hidden bar (quiet, or no terminal) drops println: say things on stderr then.
    let say = |msg: String| {
        if bar.is_hidden() {
            let _ = writeln!(std::io::stderr(), "{msg}");
        } else {
            bar.println(msg)
        }
    };
    let mut on_event = |e: TrainEvent| match e {
        TrainEvent::Started { step, total_steps, device, note } => {
            bar.set_position(step);
            say(format!("training {} on {device}: steps {step}..{total_steps} → {}", cfg.name, run_dir.display()));
            if let Some(n) = note {
                say(n);
            }
        }
        TrainEvent::Step(r) => {
            bar.set_position(r.step);
            let l = &r.losses;
            let msg = if cfg.method.one_sided() {
                format!(
                    "ep {} lr {:.2e} G {:.3} GAN {:.3} NCE {:.3}/{:.3} D {:.3} {:.2} img/s",
                    r.epoch, r.lr, l.g_total, l.g_ab_adv, l.nce, l.nce_idt, l.d_b, r.images_per_sec
                )
            } else {
                format!(
                    "ep {} lr {:.2e} G {:.3} cyc {:.3}/{:.3} idt {:.3}/{:.3} D {:.3}/{:.3} {:.2} img/s",
                    r.epoch, r.lr, l.g_total, l.cycle_a, l.cycle_b, l.idt_ab, l.idt_ba, l.d_a, l.d_b, r.images_per_sec
                )
            };
            if quiet && r.step % log_every == 0 {
                outln!("step {}/{} {msg}", r.step, r.total_steps);
            }
            bar.set_message(msg);
        }
        TrainEvent::Saved { step, dir } => say(format!("saved checkpoint of step {step} in {}", dir.display())),
        TrainEvent::Warning(w) => say(format!("warning: {w}")),
        TrainEvent::Validation(v) => say(format!("step {}: held-out {}", v.step, v.summary())),
        TrainEvent::Preview { .. } | TrainEvent::Health(_) => {}
    };
    let outcome = run_training(cfg.clone(), &options, &control, &mut on_event);
    bar.finish_and_clear();
    // The checkpoint is saved by now; outln! keeps a closed terminal from turning that into a failure.
    match outcome? {
        RunOutcome::Finished { step } => outln!("finished {} at step {step}; checkpoint in {}", cfg.name, run_dir.display()),
        RunOutcome::Stopped { step } if args.resume_or_start => {
            outln!("stopped {} at step {step}; checkpoint saved. Continue with the same command (--resume-or-start)", cfg.name)
        }
        RunOutcome::Stopped { step } => {
            outln!("stopped {} at step {step}; checkpoint saved. Continue with: cyclestudio train --name {} --resume", cfg.name, cfg.name)
        }
    }
    Ok(())
}
