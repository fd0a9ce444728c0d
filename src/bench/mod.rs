//! `cyclestudio bench`: seconds per training iteration, inference time and peak memory for the
//! reference configurations, as medians over repeats, each case in its own process. On a CUDA
//! device the peak is the driver's own high-water mark of device memory (`device_memory`).

use crate::data::DomainSpec;
use crate::model::Generator;
use crate::ops::Precision;
use crate::train::{open_device, Method, MethodTrainer, NceConfig, Schedule, TrainConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One benchmark case.
#[derive(Clone, Debug)]
pub struct Case {
    pub id: &'static str,
    pub what: &'static str,
    pub generator: &'static str,
    pub size: usize,
    pub train: bool,
    /// The training method (CycleGAN for the inference cases).
    pub method: Method,
}

const fn case(id: &'static str, what: &'static str, generator: &'static str, size: usize, train: bool, method: Method) -> Case {
    Case { id, what, generator, size, train, method }
}

pub const CASES: [Case; 9] = [
    case("train128", "training iteration, 128², resnet_6blocks", "resnet_6blocks", 128, true, Method::Cyclegan),
    case("train256", "training iteration, 256², resnet_9blocks", "resnet_9blocks", 256, true, Method::Cyclegan),
    case("cut128", "CUT training iteration, 128², resnet_6blocks", "resnet_6blocks", 128, true, Method::Cut),
    case("fastcut128", "FastCUT training iteration, 128², resnet_6blocks", "resnet_6blocks", 128, true, Method::Fastcut),
    case("cut256", "CUT training iteration, 256², resnet_9blocks", "resnet_9blocks", 256, true, Method::Cut),
    case("fastcut256", "FastCUT training iteration, 256², resnet_9blocks", "resnet_9blocks", 256, true, Method::Fastcut),
    case("infer256", "translate 256² (resnet_9blocks)", "resnet_9blocks", 256, false, Method::Cyclegan),
    case("infer512", "translate 512² (resnet_9blocks)", "resnet_9blocks", 512, false, Method::Cyclegan),
    case("infer1024", "translate 1024² (resnet_9blocks)", "resnet_9blocks", 1024, false, Method::Cyclegan),
];

/// The FID Inception case (`--cases inception8`, not in the default set): features of a batch
/// of 8 images at 299² with synthetic weights (the same network as pytorch-fid's; compare with
/// `bench/pytorch_fid_speed.py`).
pub const INCEPTION_CASE: &str = "inception8";
const INCEPTION_BATCH: usize = 8;

/// The training-loop case (`--cases loop128`, not in the default set): `train128` run through
/// the whole loop of `train` (data loading, a log line every step, health and a sample grid every
/// `LOOP_BLOCK` steps, TensorBoard events unless `--no-tensorboard`), timed per block of
/// `LOOP_BLOCK` steps and reported per step, so the loop's own costs show against `train128`.
pub const LOOP_CASE: &str = "loop128";
const LOOP_BLOCK: u64 = 10;

/// How the cases run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub device: String,
    pub precision: Precision,
    pub warmup: usize,
    pub repeats: usize,
    /// The loop case writes TensorBoard events.
    pub tensorboard: bool,
}

/// What one case measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub id: String,
    pub what: String,
    /// Seconds of each timed repeat.
    pub seconds: Vec<f64>,
    pub median_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
    /// On a CUDA device: the driver's figures for the case's process (absent on the CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<DeviceMemory>,
    /// What the convolutions multiplied in (the precision that really ran).
    #[serde(default)]
    pub precision: crate::ops::Precision,
}

/// Device memory as the CUDA driver reports it, MiB. candle allocates through the device's
/// stream-ordered memory pool (`cuMemAllocAsync`), whose high-water marks the driver keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceMemory {
    /// Peak of memory held by live allocations (the pool's `USED_MEM_HIGH`; PyTorch's
    /// counterpart is `torch.cuda.max_memory_allocated`).
    pub peak_used_mib: f64,
    /// Peak of memory the pool took from the device (`RESERVED_MEM_HIGH`; PyTorch's
    /// `max_memory_reserved`).
    pub peak_reserved_mib: f64,
    /// Memory in use on the whole device at the end of the case (total − free from
    /// `cuMemGetInfo`: this process's context, kernels and cuBLAS workspace included, and any
    /// other process on the device).
    pub device_used_mib: f64,
}

/// The driver's memory figures for `dev`; None on the CPU, in a build without CUDA, or where the
/// device has no memory pool (candle then allocates with `cuMemAlloc`, which keeps no peak).
pub fn device_memory(dev: &Device) -> Option<DeviceMemory> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = dev {
        return cuda_memory(cuda).ok().flatten();
    }
    let _ = dev;
    None
}

#[cfg(feature = "cuda")]
fn cuda_memory(dev: &candle_core::CudaDevice) -> std::result::Result<Option<DeviceMemory>, candle_core::cuda_backend::cudarc::driver::DriverError> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let ctx = dev.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let (free, total) = ctx.mem_get_info()?;
    // SAFETY: the device handle comes from a live context; each attribute is a cuuint64_t.
    let (used, reserved) = unsafe {
        let pool = result::device::get_mem_pool(ctx.cu_device())?;
        let get = |attr| -> std::result::Result<u64, _> {
            let mut v: u64 = 0;
            result::mem_pool::get_attribute(pool, attr, (&mut v as *mut u64).cast())?;
            Ok(v)
        };
        (get(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?, get(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?)
    };
    Ok(Some(DeviceMemory { peak_used_mib: mib(used), peak_reserved_mib: mib(reserved), device_used_mib: mib((total - free) as u64) }))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Peak resident set size of this process (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn bench_config(case: &Case, device: &str, precision: Precision) -> TrainConfig {
    let base = TrainConfig::reference("bench", "".into(), DomainSpec { name: "A".into(), channels: 3 }, DomainSpec { name: "B".into(), channels: 3 }, 1);
    TrainConfig {
        method: case.method,
        nce: NceConfig::for_method(case.method),
        // CUT keeps no pool of fakes (the reference's pool_size 0).
        pool: if case.method.one_sided() { 0 } else { base.pool },
        generator: case.generator.parse().expect("known generator"),
        size: case.size,
        load_size: case.size,
        schedule: Schedule::Iters { iters: 1000, decay_iters: 0 },
        health_every: 0,
        device: device.into(),
        precision,
        ..base
    }
}

/// Runs one case in this process: `warmup` untimed then `repeats` timed runs, its convolutions
/// in `precision` (or fp32 where this CPU cannot do bf16; the result says which ran).
pub fn run_case(id: &str, settings: &Settings) -> Result<CaseResult> {
    let Settings { device, precision, warmup, repeats, .. } = settings.clone();
    let device = device.as_str();
    if id == INCEPTION_CASE {
        // Always fp32 on the CPU, as `eval` runs it.
        return run_inception_case(warmup, repeats);
    }
    if id == LOOP_CASE {
        return run_loop_case(settings);
    }
    let dev = open_device(device)?;
    let (precision, fallback) = crate::ops::precision::effective(precision, &dev);
    if let Some(why) = fallback {
        eprintln!("{why}");
    }
    let case = CASES.iter().find(|c| c.id == id).with_context(|| format!("unknown case {id}"))?;
    let cfg = bench_config(case, device, precision);
    let s = case.size;
    let mut seconds = Vec::new();
    if case.train {
        let mut t = MethodTrainer::new(cfg, dev.clone())?;
        let a = Tensor::rand(-1f32, 1.0, (1, 3, s, s), &dev)?;
        let b = Tensor::rand(-1f32, 1.0, (1, 3, s, s), &dev)?;
        for i in 0..warmup + repeats {
            let t0 = Instant::now();
            t.train_step(&a, &b)?;
            dev.synchronize()?;
            if i >= warmup {
                seconds.push(t0.elapsed().as_secs_f64());
            }
        }
    } else {
        let vm = VarMap::new();
        let gcfg = cfg.g_ab();
        let g = Generator::new(&gcfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        // Inference weights are plain tensors (no autograd), as `translate` loads them.
        let plain: std::collections::HashMap<String, Tensor> =
            vm.data().lock().unwrap().iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().detach()))).collect::<Result<_>>()?;
        let g_plain = Generator::new(&gcfg, VarBuilder::from_tensors(plain, DType::F32, &dev))?;
        drop(g);
        let x = Tensor::rand(-1f32, 1.0, (1, 3, s, s), &dev)?;
        // Filters kept from one image to the next, as a `Translator` keeps them: from its second
        // call on, so with a warm-up the second call (which makes and keeps them) is untimed too.
        let filters = crate::ops::FilterCache::default();
        let warmup = if warmup > 0 { warmup + 1 } else { 0 };
        for i in 0..warmup + repeats {
            let t0 = Instant::now();
            let y = filters.scope(|| crate::ops::translating_in(precision, || g_plain.forward(&x)))?;
            dev.synchronize()?;
            drop(y);
            if i >= warmup {
                seconds.push(t0.elapsed().as_secs_f64());
            }
        }
    }
    let device_memory = device_memory(&dev);
    Ok(CaseResult { id: id.into(), what: case.what.into(), median_s: median(&seconds), seconds, peak_rss_mib: peak_rss_mib(), device_memory, precision })
}

fn run_inception_case(warmup: usize, repeats: usize) -> Result<CaseResult> {
    use crate::eval::inception::{synthetic_weights, FidInception, InceptionConfig, INPUT_SIZE};
    let dev = candle_core::Device::Cpu;
    let tensors: std::collections::HashMap<String, Tensor> = synthetic_weights()?.into_iter().collect();
    let model = FidInception::new(&InceptionConfig::default(), VarBuilder::from_tensors(tensors, DType::F32, &dev))?;
    let x = Tensor::rand(0f32, 1.0, (INCEPTION_BATCH, 3, INPUT_SIZE, INPUT_SIZE), &dev)?;
    let mut seconds = Vec::new();
    for i in 0..warmup + repeats {
        let t0 = Instant::now();
        let y = model.forward(&x)?;
        drop(y);
        if i >= warmup {
            seconds.push(t0.elapsed().as_secs_f64());
        }
    }
    let what = format!("FID Inception features, batch of {INCEPTION_BATCH} at 299² (CPU)");
    Ok(CaseResult { id: INCEPTION_CASE.into(), what, median_s: median(&seconds), seconds, peak_rss_mib: peak_rss_mib(), device_memory: None, precision: Precision::Fp32 })
}

/// A small dataset of noise images for the loop case (4 per domain, 144² so that 128² crops vary).
fn noise_dataset(root: &std::path::Path) -> Result<()> {
    let mut rng = crate::util::Rng::new(7);
    for domain in ["trainA", "trainB"] {
        std::fs::create_dir_all(root.join(domain))?;
        for i in 0..4 {
            let img = image::RgbImage::from_fn(144, 144, |_, _| image::Rgb([rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8]));
            img.save(root.join(domain).join(format!("{i}.png")))?;
        }
    }
    Ok(())
}

fn run_loop_case(settings: &Settings) -> Result<CaseResult> {
    use crate::train::request::{Intervals, Length, RunRequest};
    let root = std::env::temp_dir().join(format!("cyclestudio-bench-loop-{}", std::process::id()));
    let result = (|| -> Result<CaseResult> {
        noise_dataset(&root.join("data"))?;
        let blocks = (settings.warmup + settings.repeats) as u64;
        let request = RunRequest {
            name: "loop".into(),
            dataset: Some(root.join("data")),
            generator: Some("resnet_6blocks".parse().map_err(anyhow::Error::msg)?),
            size: Some(128),
            load_size: Some(144),
            length: Length::Iters { iters: blocks * LOOP_BLOCK, decay_iters: 0 },
            device: Some(settings.device.clone()),
            precision: Some(settings.precision),
            intervals: Intervals { sample_every: Some(LOOP_BLOCK), save_every: Some(u64::MAX), log_every: Some(1), health_every: Some(LOOP_BLOCK) },
            ..Default::default()
        };
        let cfg = request.new_run()?;
        let precision = cfg.precision;
        let opts = crate::train::RunOptions { run_dir: root.join("run"), resume: false, tensorboard: settings.tensorboard };
        let mut block_start = None;
        let mut seconds = Vec::new();
        crate::train::run_training(cfg, &opts, &crate::train::RunControl::default(), &mut |e| {
            if let crate::train::TrainEvent::Step(r) = e {
                // Step k's report comes after its optimisation and before its logging, so a block
                // from report k to report k + LOOP_BLOCK holds LOOP_BLOCK whole steps.
                if r.step % LOOP_BLOCK == 0 {
                    if let Some(t0) = block_start.replace(Instant::now()) {
                        if r.step > settings.warmup as u64 * LOOP_BLOCK {
                            seconds.push(t0.elapsed().as_secs_f64() / LOOP_BLOCK as f64);
                        }
                    }
                }
            }
        })?;
        let events = if settings.tensorboard { "events on" } else { "events off" };
        let what = format!("training loop per step, 128², resnet_6blocks, {events}");
        Ok(CaseResult { id: LOOP_CASE.into(), what, median_s: median(&seconds), seconds, peak_rss_mib: peak_rss_mib(), device_memory: None, precision })
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}

/// Runs the chosen cases, each in a fresh child process (so peak memory is per case), and
/// returns their results.
pub fn run_all(ids: &[String], settings: &Settings) -> Result<Vec<CaseResult>> {
    let Settings { device, precision, warmup, repeats, tensorboard } = settings;
    let exe = std::env::current_exe()?;
    let mut out = Vec::new();
    for id in ids {
        let o = std::process::Command::new(&exe)
            .args(["bench", "--case-in-process", id, "--device", device, "--precision", precision.as_str()])
            .args(["--warmup", &warmup.to_string(), "--repeats", &repeats.to_string()])
            .args(if *tensorboard { &[][..] } else { &["--no-tensorboard"][..] })
            .output()
            .with_context(|| format!("running bench case {id}"))?;
        if !o.status.success() {
            bail!("bench case {id} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().to_string();
        out.push(serde_json::from_str(&line).with_context(|| format!("bench case {id} printed {line}"))?);
    }
    Ok(out)
}

pub fn table(results: &[CaseResult]) -> String {
    let on_device = results.iter().any(|r| r.device_memory.is_some());
    let mut s = String::from("| case | median | runs (s) | peak RSS |");
    s.push_str(if on_device { " peak device memory: used / pool / device |\n|---|---|---|---|---|\n" } else { "\n|---|---|---|---|\n" });
    for r in results {
        let runs: Vec<String> = r.seconds.iter().map(|x| format!("{x:.3}")).collect();
        s.push_str(&format!("| {} ({}) | {:.3} s | {} | {:.0} MiB |", r.what, r.precision, r.median_s, runs.join(", "), r.peak_rss_mib));
        match (&r.device_memory, on_device) {
            (Some(m), _) => s.push_str(&format!(" {:.0} / {:.0} / {:.0} MiB |", m.peak_used_mib, m.peak_reserved_mib, m.device_used_mib)),
            (None, true) => s.push_str(" – |"),
            (None, false) => {}
        }
        s.push('\n');
    }
    s
}
