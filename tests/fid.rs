//! FID/KID parity with pytorch-fid and torch-fidelity (fixtures from tools/make_fid_fixtures.py),
//! the weights loader (zip and legacy .pth, SHA-256 check), and the CLI: `eval --fid-weights`
//! with its feature cache, `train --eval-every` keeping the best generation.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::fixture_path;
use cyclestudio::eval::fid::{fid, kid, Features, KidOptions};
use cyclestudio::eval::fid_features::{features_of_inputs, image_input};
use cyclestudio::eval::inception::{load_fid_inception, read_weights, synthetic_value, synthetic_weights, FidInception, InceptionConfig, LoadedInception};
use std::collections::HashMap;

fn fid_fixture(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_path("fid").join(name), &Device::Cpu).expect("fixture loads")
}

fn features(t: &Tensor) -> Features {
    let (n, d) = t.dims2().unwrap();
    Features::new(n, d, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap()
}

fn synthetic_model() -> LoadedInception {
    let tensors: HashMap<String, Tensor> = synthetic_weights().unwrap().into_iter().collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    LoadedInception { model: FidInception::new(&InceptionConfig::default(), vb).unwrap(), sha256: "0".repeat(64), standard: false }
}

/// Features of the fixture images through `model` against pytorch-fid's.
fn check_features_against_pytorch_fid(model: &LoadedInception) {
    let want = fid_fixture("inception_features.safetensors");
    for name in ["img_0", "img_1", "img_2"] {
        let img = cyclestudio::data::decode_image(&fixture_path("fid").join(format!("{name}.png"))).unwrap();
        let got = features_of_inputs(model, &[image_input(&img)]).unwrap();
        let want = want[name].to_vec1::<f32>().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        println!("{name}: max |Δ| / max |f| = {err:.2e}");
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

#[test]
fn inception_features_match_pytorch_fid() {
    check_features_against_pytorch_fid(&synthetic_model());
}

/// The whole synthetic network as torch wrote it, a legacy-format .pth like the real weights
/// (`python3 tools/make_fid_fixtures.py --full-pth PATH`, ≈95 MB, not committed), loaded the way
/// `--fid-weights` loads: `FID_FULL_PTH=PATH cargo test --release --test fid -- --ignored`.
#[test]
#[ignore]
fn full_size_pth_written_by_torch_loads_and_matches() {
    let path = std::env::var("FID_FULL_PTH").expect("set FID_FULL_PTH to the .pth written by make_fid_fixtures.py --full-pth");
    let model = load_fid_inception(std::path::Path::new(&path), true).unwrap();
    assert!(!model.standard);
    check_features_against_pytorch_fid(&model);
}

#[test]
fn fid_matches_pytorch_fid() {
    let sets = fid_fixture("fid_sets.safetensors");
    for tag in ["big", "small"] {
        let (a, b) = (features(&sets[&format!("{tag}_a")]), features(&sets[&format!("{tag}_b")]));
        let want = sets[&format!("{tag}_fid")].to_vec1::<f64>().unwrap()[0];
        let got = fid(&a, &b).unwrap();
        println!("{tag}: FID {got:.6} vs pytorch-fid {want:.6}");
        assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "{tag}: {got} vs {want}");
    }
    // 2048-d sets from a formula (as make_fid_fixtures.py), rank-deficient with fewer images than
    // dimensions, and with more: tiny FIDs, where the last digits are rounding of either side.
    let formula = sets["formula"].to_vec2::<f64>().unwrap();
    for row in formula {
        let (n1, n2, p, want) = (row[0] as usize, row[1] as usize, row[2] as usize, row[3]);
        let mk = |n: usize, seed: usize| {
            Features::new(n, 2048, (0..n * 2048).map(|i| ((i * 7919 + seed) % p) as f32 / p as f32).map(|x| x * x).collect()).unwrap()
        };
        let got = fid(&mk(n1, 1), &mk(n2, 5)).unwrap();
        println!("formula {n1}/{n2}/{p}: FID {got:.6} vs pytorch-fid {want:.6}");
        assert!((got - want).abs() <= 1e-3, "{got} vs {want}");
    }
}

#[test]
fn kid_matches_torch_fidelity() {
    let sets = fid_fixture("kid_sets.safetensors");
    for tag in ["sub", "whole"] {
        let (a, b) = (features(&sets[&format!("{tag}_a")]), features(&sets[&format!("{tag}_b")]));
        let want = sets[&format!("{tag}_kid")].to_vec1::<f64>().unwrap();
        let opts = KidOptions { subsets: want[2] as usize, subset_size: want[3] as usize, ..Default::default() };
        let got = kid(&a, &b, &opts).unwrap();
        println!("{tag}: KID {:.8} ± {:.8} vs torch-fidelity {:.8} ± {:.8}", got.mean, got.std, want[0], want[1]);
        assert!((got.mean - want[0]).abs() <= 1e-4 * want[0].abs(), "{tag}: mean {} vs {}", got.mean, want[0]);
        assert!((got.std - want[1]).abs() <= 1e-4 * want[0].abs(), "{tag}: std {} vs {}", got.std, want[1]);
    }
}

#[test]
fn pth_weights_are_read_in_zip_and_legacy_formats() {
    for file in ["weights_subset.pth", "weights_subset_legacy.pth"] {
        let t = read_weights(&fixture_path("fid").join(file)).unwrap();
        assert_eq!(t.len(), 9, "{file}: {:?}", t.keys().collect::<Vec<_>>());
        for (name, v) in &t {
            let dims = v.dims().to_vec();
            let got = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, g) in got.iter().enumerate() {
                assert_eq!(*g, synthetic_value(name, &dims, i) as f32, "{file}: {name}[{i}]");
            }
        }
    }
}

#[test]
fn wrong_or_missing_weights_are_refused_by_name() {
    let missing = std::path::Path::new("/nonexistent/pt_inception-2015-12-05-6726825d.pth");
    let e = load_fid_inception(missing, false).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/pt_inception-2015-12-05-6726825d.pth") && e.contains("https://github.com/mseitzer/pytorch-fid/releases"), "{e}");
    let wrong = fixture_path("fid").join("weights_subset.pth");
    let e = load_fid_inception(&wrong, false).err().unwrap().to_string();
    assert!(e.contains("weights_subset.pth") && e.contains("SHA-256") && e.contains("6726825d0af5f729"), "{e}");
    // Accepted as non-standard, it is still refused for not holding the whole network.
    let e = load_fid_inception(&wrong, true).err().unwrap().to_string();
    assert!(e.contains("not FID Inception weights"), "{e}");
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cyclestudio")).args(args).output().expect("cyclestudio runs")
}

/// The synthetic full-size weights as a safetensors file (accepted with --fid-weights-unchecked).
fn synthetic_weights_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("synthetic_inception.safetensors");
    let named = synthetic_weights().unwrap();
    std::fs::write(&path, cyclestudio::checkpoint::safetensors_bytes(&named).unwrap()).unwrap();
    path
}

#[test]
fn eval_fid_kid_without_truth_and_cache_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = synthetic_weights_file(tmp.path());
    let (input, reference) = (tmp.path().join("input"), tmp.path().join("ref"));
    common::write_pngs(&input, 3, 50, 40);
    common::write_pngs(&reference, 4, 64, 48);
    let cache = tmp.path().join("cache");
    let args = |json: &str| {
        let v: Vec<String> = ["eval", "--fid-weights", weights.to_str().unwrap(), "--fid-weights-unchecked", "--input", input.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .chain(["--reference", reference.to_str().unwrap(), "--fid-cache", cache.to_str().unwrap(), "--json", json].iter().map(|s| s.to_string()))
            .collect();
        v
    };
    let j1 = tmp.path().join("r1.json");
    let a1 = args(j1.to_str().unwrap());
    let o = cli(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("| FID |") && out.contains("| KID |") && out.contains("3 images") && out.contains("N = 3"), "{out}");
    assert!(out.contains("NOT the standard FID Inception"), "{out}");
    let j2 = tmp.path().join("r2.json");
    let a2 = args(j2.to_str().unwrap());
    let o = cli(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("4 of 4 reference features read from the cache"), "{}", String::from_utf8_lossy(&o.stderr));
    let r1: serde_json::Value = serde_json::from_slice(&std::fs::read(&j1).unwrap()).unwrap();
    let r2: serde_json::Value = serde_json::from_slice(&std::fs::read(&j2).unwrap()).unwrap();
    assert_eq!(r1["fid"], r2["fid"]);
    assert_eq!(r1["kid"]["mean"], r2["kid"]["mean"]);
    // Without the flag, the same weights are refused by name.
    let o = cli(&["eval", "--fid-weights", weights.to_str().unwrap(), "--input", input.to_str().unwrap(), "--reference", reference.to_str().unwrap(), "--no-fid-cache"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("synthetic_inception.safetensors"));
}

#[test]
fn train_eval_every_logs_kid_and_keeps_the_best_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = synthetic_weights_file(tmp.path());
    let ds = common::tiny_dataset(tmp.path());
    let ck = tmp.path().join("ck");
    let o = cli(&[
        "--checkpoints", ck.to_str().unwrap(), "train", "--dataset", ds.to_str().unwrap(), "--name", "val", "--generator", "resnet_2blocks",
        "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "6", "--eval-every", "2", "--fid-weights", weights.to_str().unwrap(),
        "--fid-weights-unchecked", "--quiet", "--sample-every", "3", "--save-every", "3",
    ]);
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let run = ck.join("val");
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let vals: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.get("validation").is_some()).collect();
    let steps: Vec<u64> = vals.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 4, 6]);
    let kid_of = |v: &serde_json::Value| v["validation"]["kid"].as_f64().unwrap();
    assert!(vals.iter().all(|v| kid_of(v).is_finite() && v["validation"]["fid_ab"].as_f64().unwrap().is_finite()));
    // Domain B is colour: the translations' colourfulness is scored too.
    assert!(vals.iter().all(|v| v["validation"]["colourfulness_ab"].as_f64().is_some_and(|c| c.is_finite() && c >= 0.0)), "{vals:?}");
    let best = vals.iter().min_by(|a, b| kid_of(a).total_cmp(&kid_of(b))).unwrap();
    let manifest = std::fs::read_to_string(run.join("best/manifest.toml")).unwrap();
    assert!(manifest.contains(&format!("step = {}", best["step"])), "best/ {manifest} vs log {steps:?} {:?}", vals.iter().map(kid_of).collect::<Vec<_>>());
    let scores: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("best/validation.json")).unwrap()).unwrap();
    assert_eq!(scores["kid"].as_f64().unwrap(), kid_of(best));
    // The kept generators translate.
    let img = ds.join("testA/img0.png");
    let out = tmp.path().join("best.png");
    let o = cli(&["translate", img.to_str().unwrap(), "--to", "color", "--model", run.to_str().unwrap(), "--generation", "best", "-o", out.to_str().unwrap()]);
    assert!(o.status.success() && out.exists(), "{}", String::from_utf8_lossy(&o.stderr));
    // Paired data: the validation PSNR/SSIM the same way.
    let o = cli(&[
        "--checkpoints", ck.to_str().unwrap(), "train", "--dataset", ds.to_str().unwrap(), "--name", "paired", "--generator", "resnet_2blocks",
        "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "2", "--paired", "--eval-every", "2", "--fid-weights", weights.to_str().unwrap(),
        "--fid-weights-unchecked", "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(ck.join("paired/log.jsonl")).unwrap();
    let v: serde_json::Value = log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|v| v.get("validation").is_some()).unwrap();
    assert!(v["validation"]["psnr_ab"].as_f64().unwrap() > 0.0 && v["validation"]["ssim_ba"].as_f64().is_some(), "{v}");
}

/// `eval --truth … --fid-weights …` scores FID/KID on the translations it made for PSNR/SSIM (it
/// translated the input twice): the figures equal those of `eval` with FID/KID alone.
#[test]
fn eval_with_truth_and_fid_scores_the_same_translations() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = synthetic_weights_file(tmp.path());
    let ds = common::tiny_dataset(tmp.path());
    let ck = tmp.path().join("ck");
    let ck = ck.to_str().unwrap();
    let o = cli(&["--checkpoints", ck, "train", "--dataset", ds.to_str().unwrap(), "--name", "m", "--generator", "resnet_2blocks", "--ngf", "4", "--ndf", "4", "--size", "32", "--iters", "2", "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (input, truth, model) = (ds.join("testA"), ds.join("testB"), format!("{ck}/m"));
    let run = |json: &std::path::Path, with_truth: bool| -> serde_json::Value {
        let mut args = vec!["--checkpoints", ck, "eval", "--model", &model, "--to", "color", "--input", input.to_str().unwrap()];
        if with_truth {
            args.extend(["--truth", truth.to_str().unwrap()]);
        }
        args.extend(["--fid-weights", weights.to_str().unwrap(), "--fid-weights-unchecked", "--reference", truth.to_str().unwrap(), "--no-fid-cache", "--json", json.to_str().unwrap()]);
        let o = cli(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
    };
    let alone = run(&tmp.path().join("alone.json"), false);
    let both = run(&tmp.path().join("both.json"), true);
    assert!(both["psnr_ssim"]["psnr"].as_f64().is_some_and(f64::is_finite), "{both}");
    assert_eq!(both["fid_kid"]["fid"], alone["fid"], "{both}\n{alone}");
    assert_eq!(both["fid_kid"]["kid"]["mean"], alone["kid"]["mean"]);
}
