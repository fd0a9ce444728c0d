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

#[test]
fn inception_features_match_pytorch_fid() {
    let model = synthetic_model();
    let want = fid_fixture("inception_features.safetensors");
    for name in ["img_0", "img_1", "img_2"] {
        let img = cyclestudio::data::decode_image(&fixture_path("fid").join(format!("{name}.png"))).unwrap();
        let got = features_of_inputs(&model, &[image_input(&img)]).unwrap();
        let want = want[name].to_vec1::<f32>().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        println!("{name}: max |Δ| / max |f| = {err:.2e}");
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
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
