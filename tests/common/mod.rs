//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use cyclestudio::train::Trainer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A file of tests/fixtures: in the source tree the executable was built from, or, for a test
/// executable carried to another machine (bench/gpu.sh), under the current directory.
pub fn fixture_path(name: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = if built.is_dir() { built } else { PathBuf::from("tests/fixtures") };
    dir.join(name)
}

pub fn load_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_path(name), &Device::Cpu).expect("fixture loads")
}

/// Tensors under `prefix`, with the prefix removed.
pub fn with_prefix(all: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    all.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|r| (r.to_string(), v.clone()))).collect()
}

/// max |a-b| / max(1, max |b|).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
    diff / scale
}

pub fn scalar(t: &Tensor) -> f32 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

/// A solid-colour-with-gradient RGB test image.
pub fn gradient_image(w: u32, h: u32, seed: u8) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 255 / w.max(1)) as u8 ^ seed, (y * 255 / h.max(1)) as u8, ((x + y) % 256) as u8])
    })
}

/// Writes `n` small colour PNGs into `dir` (varied content, sizes `w`×`h`).
pub fn write_pngs(dir: &Path, n: usize, w: u32, h: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("img{i}.png"));
            gradient_image(w, h, (i * 37) as u8).save(&p).unwrap();
            p
        })
        .collect()
}

/// A tiny two-domain dataset (grey A, colour B) in the reference layout with a dataset.toml.
pub fn tiny_dataset(root: &Path) -> PathBuf {
    let ds = root.join("tiny");
    for sub in ["trainA", "trainB", "testA", "testB"] {
        write_pngs(&ds.join(sub), if sub.starts_with("train") { 3 } else { 2 }, 40, 36);
    }
    std::fs::write(ds.join("dataset.toml"), "[a]\nname = \"gray\"\nchannels = 1\n[b]\nname = \"color\"\nchannels = 3\n").unwrap();
    ds
}

/// A tiny training configuration on `dataset` (fast enough for tests).
pub fn tiny_config(dataset: &Path, iters: u64) -> cyclestudio::train::TrainConfig {
    use cyclestudio::data::DomainSpec;
    use cyclestudio::train::{Schedule, TrainConfig};
    TrainConfig {
        generator: "resnet_2blocks".parse().unwrap(),
        ngf: 4,
        ndf: 4,
        size: 32,
        load_size: 36,
        schedule: Schedule::Iters { iters, decay_iters: 0 },
        pool: 2,
        seed: 7,
        sample_every: 2,
        save_every: 2,
        log_every: 1,
        health_every: 2,
        ..TrainConfig::reference(
            "tiny",
            dataset.to_path_buf(),
            DomainSpec { name: "gray".into(), channels: 1 },
            DomainSpec { name: "color".into(), channels: 3 },
            1,
        )
    }
}

/// Trains the tiny configuration for `iters` steps into `run_dir`.
pub fn train_tiny(run_dir: &Path, dataset: &Path, iters: u64, resume: bool) -> cyclestudio::train::RunOutcome {
    use cyclestudio::train::{run_training, RunControl, RunOptions};
    let cfg = if resume {
        let mut c = cyclestudio::train::TrainConfig::load(run_dir).unwrap();
        c.schedule = cyclestudio::train::Schedule::Iters { iters, decay_iters: 0 };
        c
    } else {
        tiny_config(dataset, iters)
    };
    run_training(cfg, &RunOptions { run_dir: run_dir.to_path_buf(), resume, tensorboard: true }, &RunControl::default(), &mut |_| {}).unwrap()
}

/// Runs the named tests of this test executable again in a child process with
/// `CS_GENERIC_OPS=1`, where every op takes the device-generic path a GPU takes (candle's own
/// ops; our CPU kernels refuse to run), and fails with the child's output if any of them fails
/// or does not run. In that child it does nothing.
pub fn rerun_on_generic_path(tests: &[&str]) {
    rerun_on_generic_path_with(tests, &[]);
}

/// `rerun_on_generic_path` with more environment variables for the child.
pub fn rerun_on_generic_path_with(tests: &[&str], env: &[(&str, &str)]) {
    use cyclestudio::ops::GENERIC_OPS_VAR;
    if std::env::var_os(GENERIC_OPS_VAR).is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("test executable");
    let out = std::process::Command::new(exe)
        .args(tests)
        .args(["--exact", "--nocapture"])
        .env(GENERIC_OPS_VAR, "1")
        .envs(env.iter().copied())
        .output()
        .expect("test executable runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A renamed test would otherwise be filtered out silently.
    let passed = format!("test result: ok. {} passed", tests.len());
    assert!(out.status.success() && text.contains(&passed), "under {GENERIC_OPS_VAR}=1:\n{text}");
}

/// (reference name, our name): the reference's D_A judges domain B, so it is our D_B.
pub const NETS: [(&str, &str); 4] = [("G_A", "G_AB"), ("G_B", "G_BA"), ("D_A", "D_B"), ("D_B", "D_A")];

pub fn key_map(net: &str) -> Vec<(String, String)> {
    if net.starts_with('G') {
        cyclestudio::interop::generator_key_map(cyclestudio::model::GeneratorKind::Resnet { blocks: 1 })
    } else {
        cyclestudio::interop::discriminator_key_map(3)
    }
}

/// A trainer on `device` with the weights of the training-step fixture (tests/fixtures/train_step).
pub fn fixture_trainer(fx: &HashMap<String, Tensor>, device: &Device) -> Trainer {
    use cyclestudio::data::DomainSpec;
    use cyclestudio::train::{Schedule, TrainConfig};
    let cfg = TrainConfig {
        generator: cyclestudio::model::GeneratorKind::Resnet { blocks: 1 },
        ngf: 8,
        ndf: 4,
        size: 32,
        load_size: 32,
        schedule: Schedule::Iters { iters: 10, decay_iters: 0 },
        flip: false,
        health_every: 0,
        ..TrainConfig::reference("parity", "unused".into(), DomainSpec { name: "A".into(), channels: 3 }, DomainSpec { name: "B".into(), channels: 3 }, 1)
    };
    let mut t = Trainer::new(cfg, device.clone()).unwrap();
    for (theirs, ours) in NETS {
        let w = cyclestudio::interop::from_reference_keys(&key_map(theirs), &with_prefix(fx, &format!("init.{theirs}."))).unwrap();
        t.set_weights(ours, &w).unwrap();
    }
    t
}

/// Deterministic uniform(-1, 1) tensor (xorshift), so failures reproduce.
pub fn rand_tensor(dims: &[usize], seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
}

/// The files of a CycleGAN checkpoint: the four networks and the optimiser state.
pub const CHECKPOINT_FILES: [&str; 5] = ["G_AB.safetensors", "G_BA.safetensors", "D_A.safetensors", "D_B.safetensors", "optim.safetensors"];

/// Asserts that two checkpoints hold byte-identical networks and optimiser state (`what` names
/// the comparison in the failure).
pub fn assert_same_checkpoint(got: &cyclestudio::checkpoint::Generation, want: &cyclestudio::checkpoint::Generation, what: &str) {
    for f in CHECKPOINT_FILES {
        assert!(got.read_verified(f).unwrap() == want.read_verified(f).unwrap(), "{what}: {f} differs");
    }
}

/// True when python3 can import `modules` (comma-separated, as in an import statement). Under CI
/// (`CI` set) their absence fails the test, since .ci/run installs them; elsewhere the test skips
/// with a message saying what to install.
pub fn python_can_import(modules: &str) -> bool {
    let probe = std::process::Command::new("python3").args(["-c", &format!("import {modules}")]).output();
    let ok = probe.as_ref().is_ok_and(|o| o.status.success());
    if !ok {
        let why = match &probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => format!("python3: {e}"),
        };
        assert!(std::env::var_os("CI").is_none(), "CI is set but python3 cannot import {modules} ({why}); .ci/run installs them");
        eprintln!("skipping: python3 cannot import {modules} ({why}); pip install them to run this test");
    }
    ok
}

/// Feeds a studio the events its worker threads send until `done` holds (two minutes at most).
pub fn settle(app: &mut cyclestudio::tui::app::App, rx: &std::sync::mpsc::Receiver<cyclestudio::tui::event::AppEvent>, what: &str, done: impl Fn(&cyclestudio::tui::app::App) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !done(app) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let event = rx.recv_timeout(left).unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        app.handle(event);
    }
}

/// A key press in a studio.
pub fn press(app: &mut cyclestudio::tui::app::App, code: crossterm::event::KeyCode) {
    use crossterm::event::{KeyEvent, KeyModifiers};
    app.handle(cyclestudio::tui::event::AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE)));
}
