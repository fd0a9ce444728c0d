//! FD-DINOv2 parity with the reference (dgm-eval's preprocessing, torch.hub DINOv2's forward,
//! dgm-eval's Fréchet distance) on a tiny random DINOv2 ViT from timm
//! (tests/fixtures/dinov2_small_random.safetensors, written by tools/make_dinov2_fixture.py),
//! and the loader's errors.

mod common;

use candle_core::{Device, Tensor};
use common::fixture_path;
use cyclestudio::eval::fd_dinov2::{fd_dinov2, image_input, resize_bicubic_like_pil, Dinov2Config, Dinov2Features};
use cyclestudio::eval::fid::Features;
use image::{DynamicImage, RgbImage};
use std::collections::HashMap;
use std::path::PathBuf;

const FIXTURE: &str = "dinov2_small_random.safetensors";
const SET_A: [usize; 3] = [0, 1, 2];
const SET_B: [usize; 3] = [3, 4, 5];

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_path(FIXTURE), &Device::Cpu).expect("fixture loads")
}

fn rgb(t: &Tensor) -> RgbImage {
    let (h, w, c) = t.dims3().unwrap();
    assert_eq!(c, 3);
    RgbImage::from_raw(w as u32, h as u32, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
}

fn images(fx: &HashMap<String, Tensor>) -> Vec<DynamicImage> {
    (0..6).map(|i| DynamicImage::ImageRgb8(rgb(&fx[&format!("fixture.image.{i}")]))).collect()
}

fn features(t: &Tensor) -> Features {
    let (n, d) = t.dims2().unwrap();
    Features::new(n, d, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap()
}

fn rows(f: &Features, idx: &[usize]) -> Features {
    let data = idx.iter().flat_map(|&i| f.data[i * f.dim..(i + 1) * f.dim].iter().copied()).collect();
    Features::new(idx.len(), f.dim, data).unwrap()
}

/// max |got − want| / max |want|.
fn rel_err(got: &Features, want: &Features) -> f32 {
    assert_eq!((got.n, got.dim), (want.n, want.dim));
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.data.iter().zip(&want.data).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn resize_is_pillow_bicubic_bit_for_bit() {
    let fx = fixture();
    for i in [0, 3] {
        let src = rgb(&fx[&format!("fixture.image.{i}")]);
        let want = rgb(&fx[&format!("fixture.resized.{i}")]);
        let got = resize_bicubic_like_pil(&src, 224, 224);
        let differing = got.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "image {i} ({}×{}): {differing} values differ from Pillow's", src.width(), src.height());
    }
    // All six sizes (down, up, identity, mixed) by a weighted sum of the resized values.
    let want = fx["fixture.resized_hash"].to_vec1::<i64>().unwrap();
    for (i, img) in images(&fx).iter().enumerate() {
        let got = resize_bicubic_like_pil(&img.to_rgb8(), 224, 224);
        let hash: i64 = got.as_raw().iter().enumerate().map(|(j, &v)| v as i64 * (j as i64 % 251 + 1)).sum();
        assert_eq!(hash, want[i], "image {i} ({}×{}): resize differs from Pillow's", img.width(), img.height());
    }
}

#[test]
fn features_and_distance_match_pytorch() {
    let fx = fixture();
    let mut model = Dinov2Features::load(&fixture_path(FIXTURE), &Device::Cpu).unwrap();
    assert_eq!(
        model.config(),
        &Dinov2Config { embed_dim: 48, depth: 2, num_heads: 3, mlp_hidden: 192, patch_size: 14, pos_grid: 37 }
    );
    // 6 images in batches of 4: a full batch and a partial one.
    model.batch_size = 4;
    let got = model.features_of_images(&images(&fx)).unwrap();
    let want = features(&fx["fixture.features"]);
    let err = rel_err(&got, &want);
    println!("features (518 position grid, resized like torch.hub): max |Δ| / max |f| = {err:.2e}");
    assert!(err <= 1e-4, "relative error {err}");

    // The distance, as dgm-eval computes it, on PyTorch's features and on ours.
    let fd_want = fx["fixture.fd"].to_vec1::<f64>().unwrap()[0];
    let fd_py = fd_dinov2(&rows(&want, &SET_A), &rows(&want, &SET_B)).unwrap();
    let fd_ours = fd_dinov2(&rows(&got, &SET_A), &rows(&got, &SET_B)).unwrap();
    let (e_py, e_ours) = ((fd_py - fd_want).abs() / fd_want, (fd_ours - fd_want).abs() / fd_want);
    println!("FD-DINOv2: reference {fd_want:.6}, ours on its features {fd_py:.6} (rel {e_py:.1e}), on our features {fd_ours:.6} (rel {e_ours:.1e})");
    assert!(e_py <= 1e-6, "FD on the reference features: {fd_py} vs {fd_want}");
    assert!(e_ours <= 1e-4, "FD on our features: {fd_ours} vs {fd_want}");
}

#[test]
fn a_224_position_embedding_is_used_as_is() {
    let fx = fixture();
    let mut weights: HashMap<String, Tensor> = fx.iter().filter(|(k, _)| !k.starts_with("fixture.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    weights.insert("pos_embed".into(), fx["fixture.pos_embed_224"].clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dinov2_224.safetensors");
    candle_core::safetensors::save(&weights, &path).unwrap();
    // No metadata in this file: 48 / 64 is not a head count, so it says why ...
    let err = format!("{:#}", Dinov2Features::load(&path, &Device::Cpu).err().expect("no head count"));
    assert!(err.contains("num_heads") && err.contains("dinov2_224.safetensors"), "{err}");
    // ... and loads with the count given.
    let model = Dinov2Features::load_with_heads(&path, &Device::Cpu, Some(3)).unwrap();
    assert_eq!(model.config().pos_grid, 16);
    let inputs: Vec<Vec<f32>> = images(&fx).iter().map(image_input).collect();
    let got = model.features_of_inputs(&inputs).unwrap();
    let err = rel_err(&got, &features(&fx["fixture.features_224"]));
    println!("features (16×16 position grid): max |Δ| / max |f| = {err:.2e}");
    assert!(err <= 1e-4, "relative error {err}");
}

#[test]
fn loader_errors_name_the_file() {
    let missing = PathBuf::from("/nonexistent/dinov2_vitl14.safetensors");
    let err = format!("{:#}", Dinov2Features::load(&missing, &Device::Cpu).err().expect("missing file"));
    assert!(err.contains("/nonexistent/dinov2_vitl14.safetensors") && err.contains("do not exist"), "{err}");

    // A safetensors file of another network.
    let other = fixture_path("patchgan.safetensors");
    let err = format!("{:#}", Dinov2Features::load(&other, &Device::Cpu).err().expect("not DINOv2"));
    assert!(err.contains("patchgan.safetensors") && err.contains("not DINOv2 ViT weights"), "{err}");

    // Not a safetensors file at all.
    let png = fixture_path("cli_parity_input.png");
    let err = format!("{:#}", Dinov2Features::load(&png, &Device::Cpu).err().expect("not safetensors"));
    assert!(err.contains("cli_parity_input.png") && err.contains("not a readable safetensors file"), "{err}");

    // A DINOv2 with a tensor of the wrong shape.
    let fx = fixture();
    let mut weights: HashMap<String, Tensor> = fx.into_iter().filter(|(k, _)| !k.starts_with("fixture.")).collect();
    weights.insert("blocks.1.ls2.gamma".into(), Tensor::zeros(47, candle_core::DType::F32, &Device::Cpu).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_shape.safetensors");
    candle_core::safetensors::save(&weights, &path).unwrap();
    let err = format!("{:#}", Dinov2Features::load_with_heads(&path, &Device::Cpu, Some(3)).err().expect("bad shape"));
    assert!(err.contains("bad_shape.safetensors") && err.contains("blocks.1.ls2.gamma"), "{err}");
}

#[test]
fn fd_needs_two_images_a_side() {
    let f = Features::new(1, 4, vec![0.0; 4]).unwrap();
    let g = Features::new(6, 4, (0..24u32).map(|i| ((i * 7919 % 113) as f32 / 113.0).sin()).collect()).unwrap();
    assert!(fd_dinov2(&f, &g).is_err());
    let d = fd_dinov2(&g, &g).unwrap();
    assert!(d.abs() < 1e-9, "FD of a set with itself: {d}");
}

/// The same parity on a full-size network: `FD_DINOV2_PARITY=<file> cargo test --release --test
/// fd_dinov2 -- --ignored`, the file written by `tools/make_dinov2_fixture.py --arch
/// vit_small_patch14_dinov2 --out <file>` (random ViT-S/14, 90 MB; `--weights` for real ones).
#[test]
#[ignore]
fn full_size_parity() {
    let path = PathBuf::from(std::env::var("FD_DINOV2_PARITY").expect("FD_DINOV2_PARITY=<file>"));
    let fx = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let model = Dinov2Features::load(&path, &Device::Cpu).unwrap();
    println!("{:?}", model.config());
    let t = std::time::Instant::now();
    let got = model.features_of_images(&images(&fx)).unwrap();
    println!("6 images in {:.2} s", t.elapsed().as_secs_f64());
    let err = rel_err(&got, &features(&fx["fixture.features"]));
    let fd_want = fx["fixture.fd"].to_vec1::<f64>().unwrap()[0];
    let fd = fd_dinov2(&rows(&got, &SET_A), &rows(&got, &SET_B)).unwrap();
    println!("features: max |Δ| / max |f| = {err:.2e}; FD {fd:.6} vs {fd_want:.6} (rel {:.1e})", (fd - fd_want).abs() / fd_want);
    assert!(err <= 1e-4 && (fd - fd_want).abs() <= 1e-4 * fd_want);
}
