//! Reliability: kills, full and read-only disks, divergence, corrupted checkpoints, bad inputs.
#![cfg(unix)] // Unix signals, permissions and paths

mod common;
use common::*;

use candle_core::{Device, Tensor};
use cyclestudio::checkpoint::{load_generation, LATEST};
use cyclestudio::train::{run_training, Divergence, RunControl, RunOptions, Trainer};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cyclestudio"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn train_args<'a>(ds: &'a str, name: &'a str, iters: &'a str) -> Vec<&'a str> {
    vec![
        "train", "--dataset", ds, "--name", name, "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters",
        iters, "--save-every", "1", "--sample-every", "1000", "--quiet", "--seed", "3",
    ]
}

/// `kill -9` at random moments, then `--resume`: the run always finds a loadable checkpoint and
/// ends with exactly the weights of an uninterrupted run.
#[test]
fn kill_nine_at_random_moments_never_loses_the_run() {
    let trials: usize = std::env::var("KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = tiny_dataset(d);
    let ds = ds.to_str().unwrap();
    let iters = "10";
    let straight = bin().current_dir(d).args(train_args(ds, "straight", iters)).output().unwrap();
    assert!(straight.status.success(), "{}", text(&straight));
    let reference = load_generation(&d.join("checkpoints/straight")).unwrap();

    let mut rng = (Instant::now().elapsed().subsec_nanos() as u64) ^ 0x5DEECE66D;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut killed_with_checkpoint = 0;
    for trial in 0..trials {
        let name = format!("trial{trial}");
        let run = d.join("checkpoints").join(&name);
        let mut child = bin().current_dir(d).args(train_args(ds, &name, iters)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(50 + next() % 1200));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let resume = match load_generation(&run) {
            Ok(g) => {
                killed_with_checkpoint += 1;
                assert!(g.manifest.step <= 10);
                true
            }
            Err(_) => false, // killed before the first save: nothing to resume, start again
        };
        let mut args = train_args(ds, &name, iters);
        if resume {
            args.push("--resume");
        }
        let out = bin().current_dir(d).args(&args).output().unwrap();
        assert!(out.status.success(), "trial {trial}: {}", text(&out));
        let g = load_generation(&run).unwrap();
        assert_eq!(g.manifest.step, 10);
        assert_same_checkpoint(&g, &reference, &format!("trial {trial}"));
    }
    eprintln!("{trials} kill trials, {killed_with_checkpoint} killed after a checkpoint existed: all resumed exactly");
    assert!(killed_with_checkpoint > 0, "no trial was killed mid-training; the timing window is off");
}

/// Mounts a small tmpfs (root only); None where that is not possible.
struct SmallDisk(PathBuf);
impl SmallDisk {
    fn new(dir: &Path, size: &str) -> Option<Self> {
        let p = dir.join("disk");
        std::fs::create_dir_all(&p).ok()?;
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&p).status().ok()?.success();
        ok.then_some(Self(p))
    }
    fn remount_read_only(&self) {
        assert!(Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap().success());
    }
}
impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_or_read_only_disk_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let Some(disk) = SmallDisk::new(dir.path(), "3m") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let run = disk.0.join("run");
    train_tiny(&run, &ds, 2, false);
    // Fill the disk, leaving too little room for another checkpoint.
    let free = {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&disk.0).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    std::fs::write(disk.0.join("filler"), vec![0u8; (free - 64 * 1024) as usize]).unwrap();
    let mut cfg = cyclestudio::train::TrainConfig::load(&run).unwrap();
    cfg.schedule = cyclestudio::train::Schedule::Iters { iters: 4, decay_iters: 0 };
    cfg.save_every = 1;
    let err = run_training(cfg.clone(), &RunOptions { run_dir: run.clone(), resume: true, tensorboard: true }, &RunControl::default(), &mut |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("previous checkpoint is intact"), "{msg}");
    let g = load_generation(&run).unwrap();
    assert_eq!(g.manifest.step, 2);
    assert!(g.fallback_reason.is_none(), "{:?}", g.fallback_reason);

    // The user may choose to keep training; it warns at each failed save and goes on.
    let mut warnings = 0;
    let keep = RunControl { keep_going_on_save_error: true, ..Default::default() };
    let mut cfg3 = cfg.clone();
    cfg3.schedule = cyclestudio::train::Schedule::Iters { iters: 4, decay_iters: 0 };
    cfg3.save_every = 1;
    let r = run_training(cfg3, &RunOptions { run_dir: run.clone(), resume: true, tensorboard: true }, &keep, &mut |e| {
        if let cyclestudio::train::TrainEvent::Warning(w) = e {
            if w.contains("will try again") {
                warnings += 1;
            }
        }
    });
    assert!(r.is_err(), "the final save still fails and is reported");
    assert!(warnings >= 1);
    assert_eq!(load_generation(&run).unwrap().manifest.step, 2);

    // Read-only: same guarantees.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    disk.remount_read_only();
    let err = run_training(cfg, &RunOptions { run_dir: run.clone(), resume: true, tensorboard: true }, &RunControl::default(), &mut |_| {}).unwrap_err();
    assert!(format!("{err:#}").to_lowercase().contains("read-only"), "{err:#}");
    assert_eq!(load_generation(&run).unwrap().manifest.step, 2);
}

#[test]
fn divergence_is_caught_and_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let run = dir.path().join("run");
    train_tiny(&run, &ds, 2, false);
    let before = std::fs::read(run.join(LATEST).join("G_AB.safetensors")).unwrap();
    let mut t = Trainer::new(tiny_config(&ds, 10), Device::Cpu).unwrap();
    t.restore(&run).unwrap();
    let mut w: std::collections::HashMap<String, Tensor> = t.weights("G_AB").into_iter().collect();
    let bad = Tensor::full(f32::NAN, w["stem.weight"].shape(), &Device::Cpu).unwrap();
    w.insert("stem.weight".into(), bad);
    t.set_weights("G_AB", &w).unwrap();
    let a = Tensor::rand(-1f32, 1.0, (1, 1, 32, 32), &Device::Cpu).unwrap();
    let b = Tensor::rand(-1f32, 1.0, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let err = t.train_step(&a, &b).unwrap_err();
    let div = err.downcast_ref::<Divergence>().expect("a divergence error");
    assert_eq!(div.step, 3);
    assert!(err.to_string().contains("diverged at step 3"), "{err}");
    let err = t.save(&run).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
    assert_eq!(std::fs::read(run.join(LATEST).join("G_AB.safetensors")).unwrap(), before);
}

#[test]
fn corrupted_checkpoint_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = tiny_dataset(d);
    let run = d.join("checkpoints/tiny");
    train_tiny(&run, &ds, 1, false);
    let f = run.join(LATEST).join("G_AB.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();
    write_pngs(d, 1, 20, 20);
    let out = bin().current_dir(d).args(["translate", "img0.png", "--to", "color", "--model", "checkpoints/tiny"]).output().unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("G_AB.safetensors") && msg.contains("truncated"), "{msg}");
}

/// A PNG whose header declares `w`×`h` but holds almost no data.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(1, 1).write_to(&mut buf, image::ImageFormat::Png).unwrap();
    let mut png = buf.into_inner();
    // IHDR data starts at byte 16: width, height; its CRC covers the chunk type and data.
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// Every odd file a user's folder may hold.
fn bad_inputs(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    std::fs::create_dir_all(dir).unwrap();
    let good = dir.join("good.png");
    image::DynamicImage::ImageRgb8(gradient_image(30, 22, 9)).save(&good).unwrap();
    let png = std::fs::read(&good).unwrap();
    let mut jpg = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(gradient_image(30, 22, 9)).write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
    let jpg = jpg.into_inner();
    let mut files = vec![("good", good)];
    let mut put = |label: &'static str, name: &[u8], bytes: &[u8]| {
        let p = dir.join(std::ffi::OsStr::from_bytes(name));
        std::fs::write(&p, bytes).unwrap();
        files.push((label, p));
    };
    put("zero-byte", b"empty.png", b"");
    put("truncated png", b"truncated.png", &png[..png.len() / 2]);
    put("truncated jpeg", b"truncated.jpg", &jpg[..jpg.len() / 2]);
    put("text named png", b"text.png", b"hello, I am not an image");
    put("decompression bomb", b"bomb.png", &png_bomb(100_000, 100_000));
    put("non-utf8 name", b"caf\xe9.png", &png);
    let mut one = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3])).write_to(&mut one, image::ImageFormat::Png).unwrap();
    put("1x1", b"dot.png", &one.into_inner());
    let mut sixteen = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(9, 7, |x, y| image::Rgb([x as u16 * 7000, y as u16 * 9000, 300]))).write_to(&mut sixteen, image::ImageFormat::Png).unwrap();
    put("16-bit png", b"sixteen.png", &sixteen.into_inner());
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        for k in 0..3u8 {
            let frame = image::RgbaImage::from_pixel(12, 10, image::Rgba([k * 80, 10, 10, 255]));
            enc.encode_frame(image::Frame::new(frame)).unwrap();
        }
    }
    put("animated gif", b"anim.gif", &gif);
    put("cmyk jpeg", b"cmyk.jpg", &std::fs::read(fixture_path("bad_inputs/cmyk.jpg")).unwrap());
    put("palette png with transparency", b"palette.png", &std::fs::read(fixture_path("bad_inputs/palette_transparent.png")).unwrap());
    std::os::unix::fs::symlink(".", dir.join("loop")).unwrap();
    files
}

const BROKEN: [&str; 5] = ["empty.png", "truncated.png", "truncated.jpg", "text.png", "bomb.png"];

#[test]
fn odd_files_are_reported_by_name_and_never_modified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = tiny_dataset(d);
    let odd = bad_inputs(&ds.join("trainA/odd"));
    let before: Vec<(PathBuf, Vec<u8>)> = odd.iter().map(|(_, p)| (p.clone(), std::fs::read(p).unwrap())).collect();

    // dataset info: names each broken file and the reason; the readable ones count.
    let out = bin().current_dir(d).args(["dataset", "info"]).arg(&ds).output().unwrap();
    let info = text(&out);
    assert!(out.status.success(), "{info}");
    for name in BROKEN {
        assert!(info.contains(name), "{name} missing from:\n{info}");
    }
    assert!(info.contains("too large"), "the bomb is refused by a size limit:\n{info}");
    assert!(info.contains("link loop"), "{info}");
    assert!(info.contains("train 10"), "3 tiny + good, 1x1, 16-bit, gif, cmyk, palette, non-utf8 = 10:\n{info}");

    // Training on a domain full of odd files works (broken ones skipped).
    let out = bin()
        .current_dir(d)
        .args(["train", "--dataset"])
        .arg(&ds)
        .args(["--name", "odd", "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "12", "--quiet"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // translate each file: readable ones work, broken ones name the file and the reason.
    for (label, p) in &odd {
        let out = bin().current_dir(d).arg("translate").arg(p).args(["--to", "color", "-o"]).arg(d.join("t.png")).arg("--overwrite").output().unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if BROKEN.contains(&name.as_str()) {
            assert!(!out.status.success(), "{label}");
            assert!(text(&out).contains(&name), "{label}: {}", text(&out));
        } else {
            assert!(out.status.success(), "{label}: {}", text(&out));
            let (w, h) = image::image_dimensions(d.join("t.png")).unwrap();
            let (iw, ih) = image::image_dimensions(p).unwrap();
            assert_eq!((w, h), (iw, ih), "{label}");
        }
    }

    // convert the folder: every readable file converted, every broken one reported.
    let out = bin().current_dir(d).arg("convert").arg(ds.join("trainA/odd")).args(["--to", "color", "-o"]).arg(d.join("converted")).output().unwrap();
    let report = text(&out);
    assert!(!out.status.success());
    assert!(report.contains("converted 7") && report.contains("failed 6"), "{report}");

    for (p, bytes) in before {
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "{} was modified", p.display());
    }
}

/// SIGTERM (a cluster's time limit, `kill`, `docker stop`) and SIGHUP (a closed terminal or SSH
/// session) stop a training as Ctrl-C does: the step finishes, a checkpoint is saved, the lock is
/// released, the process says how to continue and exits 0; the run then resumes to exactly the
/// weights of an uninterrupted one.
#[test]
fn sigterm_and_sighup_save_a_checkpoint_and_exit_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = tiny_dataset(d);
    let ds = ds.to_str().unwrap();
    let iters = "100";
    let straight = bin().current_dir(d).args(train_args(ds, "straight", iters)).output().unwrap();
    assert!(straight.status.success(), "{}", text(&straight));
    let reference = load_generation(&d.join("checkpoints/straight")).unwrap();
    for signal in ["TERM", "HUP"] {
        let name = format!("sig{signal}");
        let run = d.join("checkpoints").join(&name);
        let mut args = train_args(ds, &name, iters);
        // Checkpoints far apart: only the signal's save can have written the one found after it.
        let at = args.iter().position(|a| *a == "--save-every").unwrap();
        args[at + 1] = "1000";
        let child = bin().current_dir(d).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Signalled once training is under way (its log has lines).
        let started = Instant::now();
        while std::fs::metadata(run.join("log.jsonl")).map_or(true, |m| m.len() == 0) {
            assert!(started.elapsed() < Duration::from_secs(60), "the run never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sent = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(0), "SIG{signal}: {said}");
        assert!(said.contains("checkpoint saved. Continue with") && said.contains("--resume"), "SIG{signal}: {said}");
        let g = load_generation(&run).unwrap_or_else(|e| panic!("SIG{signal}: no checkpoint: {e:#}\n{said}"));
        assert!(g.manifest.step >= 1 && g.manifest.step < 100, "SIG{signal}: saved at step {}", g.manifest.step);
        assert!(!cyclestudio::train::is_being_trained(&run), "SIG{signal}: the lock is still held");
        let mut resume = train_args(ds, &name, iters);
        resume.push("--resume");
        let out = bin().current_dir(d).args(&resume).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let g = load_generation(&run).unwrap();
        assert_eq!(g.manifest.step, 100);
        assert_same_checkpoint(&g, &reference, &format!("SIG{signal}"));
    }
}

/// `train --resume-or-start`: one command line for the first start and every restart (a requeued
/// cluster job). It starts a run without a checkpoint, continues one with a checkpoint (ending
/// with the weights of an uninterrupted run), and refuses, naming the flag, a setting that differs
/// from the saved run's.
#[test]
fn resume_or_start_starts_continues_and_refuses_changed_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = tiny_dataset(d);
    let ds = ds.to_str().unwrap();
    let straight = bin().current_dir(d).args(train_args(ds, "straight", "8")).output().unwrap();
    assert!(straight.status.success(), "{}", text(&straight));
    let reference = load_generation(&d.join("checkpoints/straight")).unwrap();
    let run = |iters: &str, extra: &[&str]| {
        let mut args = train_args(ds, "requeued", iters);
        args.push("--resume-or-start");
        args.extend_from_slice(extra);
        bin().current_dir(d).args(&args).output().unwrap()
    };
    let first = run("4", &[]);
    assert!(first.status.success() && text(&first).contains("no checkpoint yet, starting"), "{}", text(&first));
    let second = run("8", &[]);
    assert!(second.status.success() && text(&second).contains("resuming"), "{}", text(&second));
    let g = load_generation(&d.join("checkpoints/requeued")).unwrap();
    assert_eq!(g.manifest.step, 8);
    assert_same_checkpoint(&g, &reference, "after resuming");
    let changed = run("8", &["--lr", "0.001"]);
    assert!(!changed.status.success(), "{}", text(&changed));
    assert!(text(&changed).contains("--lr 0.001 (the run has 0.0002)"), "{}", text(&changed));
    let both = run("8", &["--resume"]);
    assert!(!both.status.success() && text(&both).contains("cannot be used with"), "{}", text(&both));
}
