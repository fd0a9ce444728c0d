//! TensorBoard events, read back by TensorBoard itself (PyPI's `tensorboard`, through
//! tests/tensorboard_read.py): a run's scalars are its `log.jsonl` at the same steps, its sample
//! grids are images at their steps, a run resumed after a crash continues without duplicates, a
//! run exported afterwards (`tensorboard-export`) reads the same, and the HParams dashboard
//! compares the runs. Needs python3 with tensorboard (.ci/run installs it); skips without it
//! outside CI.

mod common;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cyclestudio(checkpoints: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cyclestudio")).arg("--checkpoints").arg(checkpoints).args(args).output().expect("binary runs");
    assert!(out.status.success(), "cyclestudio {args:?} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// A tiny training on the demo data: every step logged, a sample every 2 steps, checkpoints
/// at 4 and at the end.
fn train(checkpoints: &Path, name: &str, iters: &str, extra: &[&str]) -> Output {
    let demo = repo().join("datasets/demo");
    let mut args = vec!["train", "--dataset", demo.to_str().unwrap(), "--name", name, "--generator", "resnet_6blocks"];
    args.extend(["--ngf", "8", "--ndf", "8", "--size", "32", "--iters", iters, "--decay-iters", "0", "--quiet"]);
    args.extend(["--log-every", "1", "--sample-every", "2", "--save-every", "4", "--health-every", "2"]);
    args.extend(extra);
    cyclestudio(checkpoints, &args)
}

/// What `log.jsonl` of `run` says, as TensorBoard scalars: tag → [(step, value)].
fn expected_scalars(run: &Path) -> BTreeMap<String, Vec<(u64, f64)>> {
    let mut out: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for line in std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        for (tag, x) in cyclestudio::tensorboard::scalars_of_log_line(&v) {
            out.entry(tag).or_default().push((step, x));
        }
    }
    out
}

fn sample_steps(run: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(run.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_start_matches("step_").trim_end_matches(".png").parse().unwrap())
        .collect();
    steps.sort();
    steps
}

fn read_with_tensorboard(logdir: &Path) -> Value {
    let out = Command::new("python3").arg(repo().join("tests/tensorboard_read.py")).arg(logdir).output().expect("python3 runs");
    assert!(out.status.success(), "tensorboard_read.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from tensorboard_read.py")
}

/// The run as TensorBoard read it has exactly the log's scalars, the samples as images and the
/// settings as text at `config_steps`.
fn assert_run_reads_back(read: &Value, run_dir: &Path, config_steps: &[u64]) {
    let name = run_dir.file_name().unwrap().to_str().unwrap();
    let run = &read["runs"][name];
    assert!(run.is_object(), "TensorBoard found no run {name}: {}", read["runs"]);
    let want = expected_scalars(run_dir);
    let got = run["scalars"].as_object().unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name}: scalar tags");
    for (tag, points) in &want {
        let got: Vec<(u64, f64)> = got[tag].as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect();
        let steps: Vec<u64> = got.iter().map(|p| p.0).collect();
        assert_eq!(steps, points.iter().map(|p| p.0).collect::<Vec<_>>(), "{name} {tag}: steps");
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{name} {tag}: a step twice or out of order: {steps:?}");
        for ((s, g), (_, w)) in got.iter().zip(points) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name} {tag} step {s}: {g} vs {w} in log.jsonl");
        }
    }
    let samples = run["images"]["samples"].as_array().unwrap_or_else(|| panic!("{name}: no sample images"));
    let image_steps: Vec<u64> = samples.iter().map(|i| i[0].as_u64().unwrap()).collect();
    assert_eq!(image_steps, sample_steps(run_dir), "{name}: images at the sample steps");
    let first = image::open(run_dir.join(format!("samples/step_{:07}.png", image_steps[0]))).unwrap();
    assert_eq!((samples[0][1].as_u64(), samples[0][2].as_u64()), (Some(first.width() as u64), Some(first.height() as u64)));
    let config = run["texts"]["config"].as_array().unwrap_or_else(|| panic!("{name}: no config text"));
    assert_eq!(config.iter().map(|c| c[0].as_u64().unwrap()).collect::<Vec<_>>(), config_steps, "{name}: config text steps");
    assert!(config[0][1].as_str().unwrap().contains(&format!("name = \"{name}\"")), "{name}: config text {}", config[0][1]);
}

#[test]
fn tensorboard_reads_runs_resumed_runs_exported_runs_and_their_hparams() {
    if !common::python_can_import("tensorboard, werkzeug") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("checkpoints");

    // Run a: trained to 6, then "crashes": its last checkpoint is lost, so it resumes from the
    // one of step 4 although log and events went on to 6; resumed, it goes on to 8.
    train(&ck, "a", "6", &[]);
    let a = ck.join("a");
    assert_eq!(std::fs::read_dir(&a).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("tfevents")).count(), 1);
    std::fs::remove_dir_all(a.join("latest")).unwrap();
    train(&ck, "a", "8", &["--resume"]);

    // Run b: another learning rate, trained without events, exported afterwards.
    train(&ck, "b", "4", &["--lr", "0.0001", "--no-tensorboard"]);
    let b = ck.join("b");
    let has_events = |d: &PathBuf| std::fs::read_dir(d).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("tfevents"));
    assert!(!has_events(&b), "--no-tensorboard wrote events");
    let out = cyclestudio(&ck, &["tensorboard-export", "b"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tensorboard --logdir"));
    assert!(has_events(&b));

    // Run c: its only checkpoint is lost, so it starts again from scratch: the first attempt's
    // log lines and events are dropped.
    train(&ck, "c", "4", &[]);
    std::fs::remove_dir_all(ck.join("c/latest")).unwrap();
    train(&ck, "c", "4", &[]);

    let read = read_with_tensorboard(&ck);
    assert_run_reads_back(&read, &ck.join("c"), &[0]);
    assert_run_reads_back(&read, &a, &[0, 4]);
    assert_run_reads_back(&read, &b, &[0]);
    let a_steps: Vec<u64> = read["runs"]["a"]["scalars"]["loss/g_total"].as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(a_steps, (1..=8).collect::<Vec<_>>());

    // The HParams dashboard: one session per run, their settings, the learning rate told apart,
    // the losses as metrics, both finished.
    let infos = read["experiment"]["hparamInfos"].as_array().unwrap();
    let lr = infos.iter().find(|i| i["name"] == "lr").expect("lr among the hparams");
    assert_eq!(lr["differs"], true, "{lr}");
    let groups = read["session_groups"]["sessionGroups"].as_array().unwrap();
    let mut by_name: BTreeMap<&str, &Value> = BTreeMap::new();
    for g in groups {
        by_name.insert(g["name"].as_str().unwrap(), g);
    }
    assert_eq!(by_name.keys().copied().collect::<Vec<_>>(), ["a", "b", "c"], "{}", read["session_groups"]);
    for (name, lr, last) in [("a", 0.0002, 8), ("b", 0.0001, 4)] {
        let g = by_name[name];
        assert_eq!(g["hparams"]["lr"].as_f64(), Some(lr), "{name}");
        assert_eq!(g["hparams"]["size"].as_f64(), Some(32.0), "{name}");
        let session = &g["sessions"][0];
        assert_eq!(session["status"], "STATUS_SUCCESS", "{name}: {session}");
        let total = session["metricValues"].as_array().unwrap().iter().find(|m| m["name"]["tag"] == "loss/g_total").expect("g_total as a metric");
        assert_eq!(total["trainingStep"].as_u64(), Some(last), "{name}: {total}");
    }
}

#[test]
fn a_sweep_is_an_hparams_experiment_of_its_varied_settings_and_scores() {
    if !common::python_can_import("tensorboard, werkzeug") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("checkpoints");
    let demo = repo().join("datasets/demo");
    let mut args = vec!["sweep", "--dataset", demo.to_str().unwrap(), "--name", "sw", "--vary", "lr=0.0002,0.001", "--vary", "lambda-cycle=5,10", "--"];
    args.extend(["--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "2", "--decay-iters", "0", "--quiet"]);
    cyclestudio(&ck, &args);

    let read = read_with_tensorboard(&ck.join("sw"));
    let mut names: Vec<&str> = read["experiment"]["hparamInfos"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["lambda_cycle", "lr"], "exactly the varied settings: {}", read["experiment"]);
    let metrics: Vec<&str> = read["experiment"]["metricInfos"].as_array().unwrap().iter().map(|m| m["name"]["tag"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["sweep/psnr", "sweep/ssim", "sweep/colourfulness"]);
    let groups = read["session_groups"]["sessionGroups"].as_array().unwrap();
    assert_eq!(groups.len(), 4, "{}", read["session_groups"]);
    for g in groups {
        let trial = g["name"].as_str().unwrap();
        let record: Value = serde_json::from_slice(&std::fs::read(ck.join("sw").join(trial).join("trial.json")).unwrap()).unwrap();
        let setting = |flag: &str| record["settings"].as_array().unwrap().iter().find(|s| s[0] == flag).unwrap()[1].as_str().unwrap().parse::<f64>().unwrap();
        assert_eq!(g["hparams"]["lr"].as_f64(), Some(setting("lr")), "{trial}");
        assert_eq!(g["hparams"]["lambda_cycle"].as_f64(), Some(setting("lambda-cycle")), "{trial}");
        let psnr = g["metricValues"].as_array().unwrap().iter().find(|m| m["name"]["tag"] == "sweep/psnr").unwrap_or_else(|| panic!("{trial}: no sweep/psnr in {g}"));
        let want = record["scores"]["psnr"].as_f64().unwrap();
        assert!((psnr["value"].as_f64().unwrap() - want).abs() < 1e-4 * want.abs(), "{trial}: {psnr} vs {want}");
        assert_eq!(psnr["trainingStep"].as_u64(), record["step"].as_u64());
    }
}
