//! The training loop shared by the CLI and the studio: lock, data, steps, logs, previews,
//! checkpoints, health checks and validation, steered through `RunControl`.

use super::trainer::Divergence;
use super::{Losses, MethodTrainer, TrainConfig};
use crate::checkpoint::load_generation;
use crate::data::dataset::Check;
use crate::data::{image_io::png_bytes, BatchLoader, Dataset, LoaderOptions, Pixels};
use crate::tensorboard::RunEvents;
use crate::util::atomic_write;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::{DynamicImage, GenericImage};
use serde_json::json;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const LOG_FILE: &str = "log.jsonl";
pub const SAMPLES_DIR: &str = "samples";

/// Where the preview grid of `step` is saved in a run's folder (`samples/step_0000100.png`).
pub fn sample_path(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(SAMPLES_DIR).join(format!("step_{step:07}.png"))
}

/// The step of a preview grid's file name (see [`sample_path`]).
pub fn sample_step(file_name: &str) -> Option<u64> {
    file_name.strip_prefix("step_")?.strip_suffix(".png")?.parse().ok()
}

/// Flags the caller flips to steer a running training from another thread.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Finish the current step, save a checkpoint and return.
    pub stop: Arc<AtomicBool>,
    /// Save and return (stopped) once this step is reached, wherever the schedule ends (a
    /// sweep's rung: the run continues exactly from there when resumed).
    pub stop_at: Option<u64>,
    /// Hold between steps until cleared (or stopped).
    pub pause: Arc<AtomicBool>,
    /// When a checkpoint cannot be written (full disk, read-only folder): warn and keep training
    /// (trying again at the next save) instead of stopping. Either way the previous checkpoint
    /// stays intact.
    pub keep_going_on_save_error: bool,
}

/// Progress of one step, for progress bars and charts.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub lr: f64,
    pub losses: Losses,
    pub images_per_sec: f64,
    pub eta: Duration,
}

/// What training tells its observer (the CLI's progress bar or the studio's channel).
#[derive(Clone, Debug)]
pub enum TrainEvent {
    Started { step: u64, total_steps: u64, device: String, note: Option<String> },
    Step(StepReport),
    /// real A | fake B | rec A over real B | fake A | rec B, for the fixed preview images.
    Preview { step: u64, grid: DynamicImage },
    Saved { step: u64, dir: PathBuf },
    Health(crate::health::HealthReport),
    /// Held-out scores (`--eval-every`); `best` set when its generators were kept in `best/`.
    Validation(super::ValidationScores),
    Warning(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Finished { step: u64 },
    Stopped { step: u64 },
}

/// Opens the device named like "cpu" or "cuda:0".
pub fn open_device(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(i) = name.strip_prefix("cuda").map(|r| r.trim_start_matches(':')) {
        let ordinal: usize = if i.is_empty() { 0 } else { i.parse().with_context(|| format!("bad device '{name}'"))? };
        if !candle_core::utils::cuda_is_available() {
            bail!("device {name}: this cyclestudio was built without CUDA (rebuild with --features cuda)");
        }
        if let Err(why) = cuda_libraries() {
            bail!("device {name}: {why}");
        }
        return Device::new_cuda(ordinal).with_context(|| format!("cannot open {name}"));
    }
    bail!("unknown device '{name}': use cpu or cuda:N")
}

/// The CUDA devices the driver reports, as ("cuda:N", model name), for choosing a device (the
/// studio); Err says why there are none: a build without CUDA, no driver or no device. Counting
/// and naming devices creates no context, so this is cheap.
pub fn cuda_devices() -> std::result::Result<Vec<(String, String)>, String> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::result;
        cuda_libraries()?;
        let list = || -> std::result::Result<Vec<(String, String)>, result::DriverError> {
            result::init()?;
            (0..result::device::get_count()?)
                .map(|i| Ok((format!("cuda:{i}"), result::device::get_name(result::device::get(i)?)?)))
                .collect()
        };
        match list() {
            Ok(v) if v.is_empty() => Err("no CUDA device found".into()),
            Ok(v) => Ok(v),
            Err(e) => Err(format!("no usable CUDA device ({e})")),
        }
    }
    #[cfg(not(feature = "cuda"))]
    Err("this build has no CUDA (rebuild with --features cuda)".into())
}

/// The shared libraries a CUDA device needs, as `(what, names to try)`: the cuda build opens them
/// at its first CUDA call (cudarc's dynamic loading, see .ci/cuda-build.sh), so the same binary
/// starts and runs CPU work on a machine without them. The names are those cudarc tries.
const CUDA_LIBRARIES: [(&str, &[&str]); 3] = [
    ("the NVIDIA driver's CUDA library", &["libcuda.so.1", "libcuda.so"]),
    ("cuBLAS", &["libcublas.so.13", "libcublas.so.12", "libcublas.so"]),
    ("cuRAND", &["libcurand.so.10", "libcurand.so"]),
];

/// Err names the first CUDA library that cannot be opened and what to do, instead of the panic
/// deep in cudarc that its absence would cause.
pub fn cuda_libraries() -> std::result::Result<(), String> {
    for (what, names) in CUDA_LIBRARIES {
        if !names.iter().any(|n| shared_library_opens(n)) {
            return Err(format!(
                "{what} ({}) cannot be loaded{}. This binary runs everything on the CPU (--device cpu); \
                 a GPU needs the NVIDIA driver and CUDA 13's cuBLAS and cuRAND (PyTorch's pip packages \
                 carry these, in nvidia/cu13/lib) in the loader's path (LD_LIBRARY_PATH)",
                names[0],
                if names[0].starts_with("libcuda.") { " (is the NVIDIA driver installed?)" } else { "" }
            ));
        }
    }
    Ok(())
}

/// Whether the dynamic loader finds and opens `name` (searching as dlopen does); the handle is
/// kept open, as cudarc will open the same library again. (Without dlopen, true: opening the
/// device then says what is missing.)
#[cfg(not(unix))]
fn shared_library_opens(_name: &str) -> bool {
    true
}

#[cfg(unix)]
fn shared_library_opens(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: dlopen with a valid C string; a CUDA library's initialisers have no preconditions.
    !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_GLOBAL) }.is_null()
}

/// A square preview image of a domain: short side resized to `size`, centre crop.
fn preview_tensor(path: &Path, size: usize, channels: usize, device: &Device) -> Result<Tensor> {
    let img = crate::data::centre_square(&crate::data::decode_image(path)?, size as u32);
    Ok(Pixels::from_image(&img, channels)?.0.to_tensor(device)?.unsqueeze(0)?)
}

/// Lays tensors `[1,C,S,S]` out as rows of tiles in one RGB image.
pub fn grid(rows: &[Vec<&Tensor>]) -> Result<DynamicImage> {
    let tiles: Vec<Vec<DynamicImage>> = rows
        .iter()
        .map(|r| r.iter().map(|t| Ok(DynamicImage::ImageRgb8(crate::data::tensor_to_image(t)?.to_rgb8()))).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    let tw = tiles.iter().flatten().map(|t| t.width()).max().unwrap_or(1);
    let th = tiles.iter().flatten().map(|t| t.height()).max().unwrap_or(1);
    let cols = tiles.iter().map(|r| r.len()).max().unwrap_or(1) as u32;
    let mut out = DynamicImage::new_rgb8(tw * cols, th * tiles.len() as u32);
    for (y, row) in tiles.iter().enumerate() {
        for (x, t) in row.iter().enumerate() {
            out.copy_from(t, x as u32 * tw, y as u32 * th)?;
        }
    }
    Ok(out)
}

/// The losses of every logged step up to `up_to_step` from a run's `log.jsonl` (for a resumed
/// run's charts); unreadable lines are skipped.
pub fn read_loss_log(path: &Path, up_to_step: u64) -> Vec<(u64, Losses)> {
    #[derive(serde::Deserialize)]
    struct Line {
        step: u64,
        /// Present on loss lines only (health lines share the file).
        lr: Option<f64>,
        #[serde(flatten)]
        losses: Losses,
    }
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter(|l| l.lr.is_some() && l.step <= up_to_step)
        .map(|l| (l.step, l.losses))
        .collect()
}

/// The colour classes' rebalancing weights from the colours of `files` (RGB photos), each
/// resized so its short side is `short` (the training scale); unreadable files are skipped.
fn colour_prior_weights(files: &[PathBuf], short: u32) -> Result<Vec<f32>> {
    use crate::model::colour_classes;
    let mut counts = vec![0f64; colour_classes::bins().len()];
    for f in files {
        let Ok(img) = crate::data::decode_image(f) else { continue };
        let (w, h) = crate::data::image_io::short_side_dims(img.width(), img.height(), short);
        let img = img.resize_exact(w, h, image::imageops::FilterType::Triangle);
        let (pixels, _) = Pixels::from_image(&img, 3)?;
        colour_classes::histogram(&pixels.data, &mut counts);
    }
    Ok(colour_classes::rebalancing_weights(&counts))
}

/// Removes log lines for steps after `step` (written by a run that was killed before its next
/// checkpoint), so a resumed run's log has each step once.
fn trim_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        atomic_write(path, kept.as_bytes())?;
    }
    Ok(())
}

/// The training images of each domain: all readable ones, or in paired mode the pairs (A and B
/// files with the same stem), in the same order.
fn training_files(cfg: &TrainConfig, dataset: &Dataset) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut files_a, mut files_b) = (dataset.a.train.paths(), dataset.b.train.paths());
    if cfg.paired {
        let stem = |p: &PathBuf| p.file_stem().map(|s| s.to_os_string());
        let b_by_stem: std::collections::HashMap<_, _> = files_b.iter().map(|p| (stem(p), p.clone())).collect();
        let pairs: Vec<(PathBuf, PathBuf)> = files_a.iter().filter_map(|a| b_by_stem.get(&stem(a)).map(|b| (a.clone(), b.clone()))).collect();
        if pairs.is_empty() {
            bail!("--paired: no file names are shared between {}/trainA and trainB", cfg.dataset.display());
        }
        files_a = pairs.iter().map(|p| p.0.clone()).collect();
        files_b = pairs.into_iter().map(|p| p.1).collect();
    }
    if files_a.is_empty() || files_b.is_empty() {
        bail!("dataset {} needs readable images in both trainA and trainB", cfg.dataset.display());
    }
    Ok((files_a, files_b))
}

/// The run's trainer, fresh or restored from its checkpoint (`opts.resume`), and the note the
/// start event carries. A new run refuses a folder that already holds a checkpoint.
fn start_trainer(cfg: &TrainConfig, opts: &RunOptions, device: &Device, files_b: &[PathBuf]) -> Result<(MethodTrainer, Option<String>)> {
    let run_dir = &opts.run_dir;
    let mut trainer = MethodTrainer::new(cfg.clone(), device.clone())?;
    if let (MethodTrainer::CycleGan(t), super::PairedLoss::Classify) = (&mut trainer, cfg.paired_loss) {
        // A function of the training photos only, so a resumed run computes the same weights.
        t.set_class_weights(colour_prior_weights(files_b, cfg.load_size as u32)?)?;
    }
    let mut note = None;
    if opts.resume {
        let generation = trainer.restore(run_dir)?;
        note = Some(match generation.fallback_reason {
            Some(why) => format!("resumed from step {} — {why}", trainer.step()),
            None => format!("resumed from step {}", trainer.step()),
        });
        trim_log(&run_dir.join(LOG_FILE), trainer.step())?;
    } else if load_generation(run_dir).is_ok() {
        bail!("{} already holds a checkpoint: add --resume to continue it, or choose another --name", run_dir.display());
    } else {
        // A run that stopped before its first checkpoint starts again from scratch: its log
        // lines are stale.
        trim_log(&run_dir.join(LOG_FILE), 0)?;
    }
    Ok((trainer, note))
}

/// Where a run's log lines go: `log.jsonl`, and the same figures as TensorBoard scalars.
struct RunLog {
    file: std::fs::File,
    events: RunEvents,
}

impl RunLog {
    fn open(run_dir: &Path, events: RunEvents) -> Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(run_dir.join(LOG_FILE)).context("cannot open the training log")?;
        Ok(Self { file, events })
    }

    /// Appends `line` (which has a "step") to the log and its numbers to the events.
    fn line(&mut self, step: u64, line: &serde_json::Value, on_event: &mut dyn FnMut(TrainEvent)) -> Result<()> {
        writeln!(self.file, "{line}").context("cannot append to the training log")?;
        self.event(step, Ok(crate::tensorboard::log_line_values(line)), on_event);
        Ok(())
    }

    /// Writes events at `step`; a failure is reported once and training goes on.
    fn event(&mut self, step: u64, values: Result<Vec<crate::tensorboard::proto::SummaryValue>>, on_event: &mut dyn FnMut(TrainEvent)) {
        if let Some(w) = self.events.write(step, values) {
            on_event(TrainEvent::Warning(w));
        }
    }

    /// Makes everything logged so far durable (at checkpoints and at the end).
    fn sync(&mut self, on_event: &mut dyn FnMut(TrainEvent)) {
        self.file.sync_data().ok();
        if let Some(w) = self.events.flush() {
            on_event(TrainEvent::Warning(w));
        }
    }
}

/// Scores the held-out images now, keeps the generators in `best/` when they are the best so
/// far, logs the scores and reports them. A failed validation is a warning, not the run's end.
fn validate(v: &mut super::validation::Validator, trainer: &MethodTrainer, run_dir: &Path, log: &mut RunLog, on_event: &mut dyn FnMut(TrainEvent)) -> Result<()> {
    let step = trainer.step();
    match v.run(trainer) {
        Ok(scores) => {
            if scores.best {
                let mut files = trainer.generator_files()?;
                files.push((super::validation::BEST_SCORES_FILE.to_string(), serde_json::to_vec_pretty(&scores)?));
                if let Err(e) = crate::checkpoint::save_named_generation(run_dir, crate::checkpoint::BEST, step, &files) {
                    on_event(TrainEvent::Warning(format!("could not keep the best generation of step {step}: {e:#}")));
                }
            }
            log.line(step, &json!({"step": step, "validation": scores}), on_event)?;
            on_event(TrainEvent::Validation(scores));
        }
        Err(e) => on_event(TrainEvent::Warning(format!("validation at step {step} failed: {e:#}"))),
    }
    Ok(())
}

/// Where a run lives and whether to continue it.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    pub resume: bool,
    /// Write TensorBoard events in the run's folder (`--no-tensorboard` turns them off).
    pub tensorboard: bool,
}

/// Trains `cfg` (a new run, or the run in `opts.run_dir` when resuming) until its schedule ends
/// or `control.stop` is set, saving checkpoints, samples and the log. Every step and event is
/// reported to `on_event`.
pub fn run_training(cfg: TrainConfig, opts: &RunOptions, control: &RunControl, on_event: &mut dyn FnMut(TrainEvent)) -> Result<RunOutcome> {
    let run_dir = &opts.run_dir;
    let device = open_device(&cfg.device)?;
    let dataset = Dataset::open(&cfg.dataset, Check::Header)?;
    for (p, why) in dataset.problems() {
        on_event(TrainEvent::Warning(format!("skipping {}: {why}", p.display())));
    }
    let (files_a, files_b) = training_files(&cfg, &dataset)?;

    // Held until this function returns: a second trainer of the run (CLI or studio) stops here.
    let _lock = super::RunLock::acquire(run_dir)?;
    let (mut trainer, note) = start_trainer(&cfg, opts, &device, &files_b)?;
    cfg.save(run_dir)?;
    cfg.model_spec().save(run_dir)?;
    std::fs::create_dir_all(run_dir.join(SAMPLES_DIR))?;

    let total = cfg.schedule.total_steps();
    let (precision, fallback) = crate::ops::precision::effective(cfg.precision, &device);
    if let Some(why) = fallback {
        on_event(TrainEvent::Warning(why));
    }
    let device_name = match precision {
        crate::ops::Precision::Fp32 => cfg.device.clone(),
        p => format!("{} ({p})", cfg.device),
    };
    on_event(TrainEvent::Started { step: trainer.step(), total_steps: total, device: device_name, note });
    if trainer.step() >= total {
        return Ok(RunOutcome::Finished { step: trainer.step() });
    }

    let preview_file = |d: &crate::data::Domain| d.test.images.first().or(d.train.images.first()).map(|(p, _)| p.clone());
    let previews = match (preview_file(&dataset.a), preview_file(&dataset.b)) {
        (Some(a), Some(b)) => Some((
            preview_tensor(&a, cfg.size, cfg.domain_a.channels, &device)?,
            preview_tensor(&b, cfg.size, cfg.domain_b.channels, &device)?,
        )),
        _ => None,
    };
    let mut health = crate::health::HealthMonitor::new(&cfg, &dataset, &device)?;
    let mut validator = match &cfg.validation {
        Some(v) => Some((v.every.max(1), super::validation::Validator::new(&cfg, v, run_dir)?)),
        None => None,
    };

    let loader = BatchLoader::spawn(
        (files_a.clone(), cfg.domain_a.channels),
        (files_b.clone(), cfg.domain_b.channels),
        LoaderOptions { size: cfg.size, load_size: cfg.load_size, batch: cfg.batch, seed: cfg.seed, paired: cfg.paired, flip: cfg.flip },
        trainer.step(),
    )?;
    let events = if opts.tensorboard {
        let (mut events, warning) = RunEvents::open(run_dir, trainer.step());
        if let Some(w) = warning {
            on_event(TrainEvent::Warning(w));
        }
        // The settings as text at every start (a resume may change the device or precision);
        // the HParams once, when the run begins (the dashboard reads a run's first).
        let mut values = vec![crate::tensorboard::config_text(&cfg)];
        if trainer.step() == 0 {
            values.push(crate::tensorboard::config_hparams(&cfg));
        }
        if let Some(w) = events.write(trainer.step(), values.into_iter().collect()) {
            on_event(TrainEvent::Warning(w));
        }
        events
    } else {
        RunEvents::off()
    };
    let mut log = RunLog::open(run_dir, events)?;
    let started = Instant::now();
    let first_step = trainer.step();
    let mut window = (Instant::now(), 0u64);
    let mut ips = 0.0f64;
    let save = |trainer: &MethodTrainer, on_event: &mut dyn FnMut(TrainEvent), last: bool| -> Result<()> {
        match trainer.save(run_dir) {
            Ok(()) => {
                on_event(TrainEvent::Saved { step: trainer.step(), dir: run_dir.clone() });
                Ok(())
            }
            Err(e) if e.downcast_ref::<Divergence>().is_some() => Err(e),
            Err(e) => {
                let e = e.context(format!("saving the checkpoint of step {} failed; the previous checkpoint is intact", trainer.step()));
                if control.keep_going_on_save_error && !last {
                    on_event(TrainEvent::Warning(format!("{e:#}; training goes on and will try again at the next save")));
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    };

    while trainer.step() < total {
        while control.pause.load(Ordering::Relaxed) && !control.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if control.stop.load(Ordering::Relaxed) || control.stop_at.is_some_and(|s| trainer.step() >= s) {
            log.sync(on_event);
            save(&trainer, on_event, true)?;
            return Ok(RunOutcome::Stopped { step: trainer.step() });
        }
        let batch = loader.next()?;
        debug_assert_eq!(batch.step, trainer.step());
        for w in batch.warnings {
            on_event(TrainEvent::Warning(w));
        }
        let lr = trainer.lr();
        let t0 = Instant::now();
        let losses = match trainer.train_step(&batch.real_a.to_device(&device)?, &batch.real_b.to_device(&device)?) {
            Ok(l) => l,
            Err(e) if e.downcast_ref::<Divergence>().is_some() => {
                // Still a Divergence (a sweep marks such trials), with what to do about it.
                let d = e.downcast::<Divergence>().expect("checked above");
                let what = format!("{}. Nothing was saved over the last good checkpoint (step ≤ {}); resume it with a lower --lr, or change --gan-loss", d.what, trainer.step());
                return Err(Divergence { step: d.step, what }.into());
            }
            Err(e) => return Err(e),
        };
        let dt = t0.elapsed().as_secs_f64().max(1e-9);
        let inst = cfg.batch as f64 / dt;
        ips = if ips == 0.0 { inst } else { 0.9 * ips + 0.1 * inst };
        let step = trainer.step();
        let epoch = BatchLoader::epoch_of(step - 1, cfg.batch, files_a.len(), files_b.len(), cfg.paired) + 1;
        let done = (step - first_step) as f64;
        let eta = Duration::from_secs_f64(started.elapsed().as_secs_f64() / done * (total - step) as f64);
        on_event(TrainEvent::Step(StepReport { step, total_steps: total, epoch, lr, losses: losses.clone(), images_per_sec: ips, eta }));

        if step % cfg.log_every.max(1) == 0 || step == total {
            let n = step - window.1.max(first_step);
            let rate = n as f64 * cfg.batch as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            window = (Instant::now(), step);
            let mut line = json!({"step": step, "epoch": epoch, "lr": lr, "images_per_sec": rate});
            for (k, v) in losses.terms() {
                line[k] = json!(v);
            }
            log.line(step, &line, on_event)?;
        }
        if let Some(report) = health.observe(&trainer, &losses)? {
            log.line(step, &json!({"step": step, "health": report}), on_event)?;
            for w in &report.warnings {
                on_event(TrainEvent::Warning(w.clone()));
            }
            on_event(TrainEvent::Health(report));
        }
        if let Some((pa, pb)) = &previews {
            if step % cfg.sample_every.max(1) == 0 || step == total {
                let g = trainer.preview(pa, pb)?;
                let png = png_bytes(&g)?;
                atomic_write(&sample_path(run_dir, step), &png)?;
                log.event(step, crate::tensorboard::events::image_png(crate::tensorboard::SAMPLES_TAG, png, g.width(), g.height()).map(|v| vec![v]), on_event);
                on_event(TrainEvent::Preview { step, grid: g });
            }
        }
        if step % cfg.save_every.max(1) == 0 || step == total {
            log.sync(on_event);
            save(&trainer, on_event, step == total)?;
        }
        if let Some((every, v)) = validator.as_mut() {
            if step % *every == 0 || step == total {
                validate(v, &trainer, run_dir, &mut log, on_event)?;
            }
        }
    }
    log.event(trainer.step(), Ok(vec![crate::tensorboard::events::session_end_success()]), on_event);
    log.sync(on_event);
    Ok(RunOutcome::Finished { step: trainer.step() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_log_is_read_back_up_to_a_step_skipping_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let lines = [
            r#"{"step":1,"epoch":0,"lr":0.0002,"images_per_sec":3.0,"cycle_a":0.5,"d_a":0.25,"g_ab_adv":1.0}"#,
            r#"{"step":1,"health":{"diversity_ab":0.3}}"#,
            "not json",
            r#"{"step":2,"epoch":0,"lr":0.0002,"images_per_sec":3.0,"cycle_a":0.4,"paired":2.0}"#,
            r#"{"step":3,"epoch":0,"lr":0.0002,"images_per_sec":3.0,"cycle_a":0.3}"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let read = read_loss_log(&path, 2);
        let steps: Vec<u64> = read.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [1, 2]);
        assert_eq!((read[0].1.cycle_a, read[0].1.d_a, read[0].1.g_ab_adv), (0.5, 0.25, 1.0));
        assert_eq!((read[1].1.cycle_a, read[1].1.paired), (0.4, 2.0));
        assert!(read_loss_log(&dir.path().join("missing"), 9).is_empty());
    }
}
