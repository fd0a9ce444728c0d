//! `--precision bf16`: every convolution kernel in bf16 against the fp32 result (forward, data and
//! weight gradients) on the layer shapes the networks use; whole networks against PyTorch's bf16
//! autocast (fixtures by tools/make_bf16_fixtures.py); the device-generic path in bf16; a short
//! training run in bf16. On a CPU without AVX512-BF16 the CPU kernels' tests print why they are
//! skipped (there, `--precision bf16` runs fp32).

mod common;
use common::*;

use candle_core::{Device, Tensor, Var};
use cyclestudio::ops::conv::{blur_up_conv3x3, conv2d, conv2d_reflect, conv_transpose2d};
use cyclestudio::ops::{with_precision, Precision};

/// The bf16 CPU kernels' instruction set, or None after printing why their tests are skipped
/// (on the generic path bf16 is candle's, which runs anywhere).
fn bf16_kernels(test: &str) -> Option<&'static str> {
    if std::env::var_os(cyclestudio::ops::GENERIC_OPS_VAR).is_some() {
        return Some("candle (device-generic path)");
    }
    let hw = cyclestudio::ops::precision::bf16_hardware();
    if hw.is_none() {
        eprintln!("{test}: skipped: this CPU has no AVX512-BF16, the instruction set of the bf16 kernels (AMX kernels: not written)");
    }
    hw
}

type Op = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;

/// A layer of the networks: its name, input [B,C,H,W], weight shape and the op.
struct Layer {
    what: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    op: Op,
}

/// The kinds of convolution the networks run, at the networks' channel counts (ngf 64, ndf 64)
/// and small spatial sizes: each takes the kernel path it takes in the network (im2col, narrow
/// output, Winograd F(4×4,3×3) with reflection or zero padding, Winograd F(3×3,4×4) or, for
/// small outputs in bf16, im2col, the up-sampling Winograd, transposed convolutions).
fn layers() -> Vec<Layer> {
    vec![
        Layer { what: "G first 7×7 3→64 (im2col, reflect-padded input)", x: [1, 3, 22, 20], w: [64, 3, 7, 7], op: |x, w| conv2d(x, w, 1, 0) },
        Layer { what: "G down 3×3/2 64→128 (im2col)", x: [1, 64, 20, 18], w: [128, 64, 3, 3], op: |x, w| conv2d(x, w, 2, 1) },
        Layer { what: "G down 3×3/2 128→256 (im2col)", x: [1, 128, 12, 10], w: [256, 128, 3, 3], op: |x, w| conv2d(x, w, 2, 1) },
        Layer { what: "G residual 3×3 256→256 (Winograd, reflect)", x: [1, 256, 12, 10], w: [256, 256, 3, 3], op: |x, w| conv2d_reflect(x, w, 1) },
        Layer { what: "G up 3×3/2ᵀ 256→128 (transposed)", x: [1, 256, 6, 5], w: [256, 128, 3, 3], op: |x, w| conv_transpose2d(x, w, 2, 1, 1) },
        Layer { what: "G up 3×3/2ᵀ 128→64 (transposed)", x: [1, 128, 12, 10], w: [128, 64, 3, 3], op: |x, w| conv_transpose2d(x, w, 2, 1, 1) },
        Layer { what: "G last 7×7 64→3 (narrow output)", x: [1, 64, 26, 24], w: [3, 64, 7, 7], op: |x, w| conv2d(x, w, 1, 0) },
        Layer { what: "D 4×4/2 3→64 (im2col)", x: [1, 3, 32, 30], w: [64, 3, 4, 4], op: |x, w| conv2d(x, w, 2, 1) },
        Layer { what: "D 4×4/2 64→128 (im2col)", x: [1, 64, 16, 16], w: [128, 64, 4, 4], op: |x, w| conv2d(x, w, 2, 1) },
        // Under 64 tiles of F(3×3,4×4) a 4×4 layer takes im2col in bf16; from 22² outputs on, Winograd.
        Layer { what: "D 4×4 256→512 (small output: im2col in bf16)", x: [1, 256, 9, 8], w: [512, 256, 4, 4], op: |x, w| conv2d(x, w, 1, 1) },
        Layer { what: "D 4×4 256→512 (Winograd F(3×3,4×4))", x: [1, 256, 23, 23], w: [512, 256, 4, 4], op: |x, w| conv2d(x, w, 1, 1) },
        Layer { what: "D 4×4 512→1 (narrow output)", x: [1, 512, 8, 7], w: [1, 512, 4, 4], op: |x, w| conv2d(x, w, 1, 1) },
        Layer { what: "CUT down 3×3 64→128 (Winograd, zero padding)", x: [1, 64, 16, 14], w: [128, 64, 3, 3], op: |x, w| conv2d(x, w, 1, 1) },
        Layer {
            what: "CUT up blur + 3×3 128→64 (up-sampling Winograd)",
            x: [1, 128, 8, 7],
            w: [64, 128, 3, 3],
            op: |x, w| match blur_up_conv3x3(x, w)? {
                Some(y) => Ok(y),
                None => conv2d(&cyclestudio::model::antialias::blur_up(x)?, w, 1, 1),
            },
        },
        Layer { what: "CUT D 4×4 128→256 (Winograd F(3×3,4×4))", x: [1, 128, 23, 24], w: [256, 128, 4, 4], op: |x, w| conv2d(x, w, 1, 1) },
    ]
}

/// max |a − b| / max |b|.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Output, input gradient and weight gradient of sum(op(x, w) · r).
fn run(layer: &Layer, precision: Precision) -> [Tensor; 3] {
    let x = Var::from_tensor(&rand_tensor(&layer.x, 1)).unwrap();
    let w = Var::from_tensor(&(rand_tensor(&layer.w, 2) * 0.1).unwrap()).unwrap();
    with_precision(precision, || {
        let y = (layer.op)(x.as_tensor(), w.as_tensor()).unwrap();
        let r = rand_tensor(y.dims(), 3);
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        [y, g.get(x.as_tensor()).unwrap().clone(), g.get(w.as_tensor()).unwrap().clone()]
    })
}

/// bf16 has 8 significant bits: each rounded operand is off by at most 2⁻⁹ of itself, a product
/// by about 2⁻⁸, and sums of many such errors with random signs stay near that relative to the
/// result's scale (measured ~2e-3).
const TOL: f32 = 1.0 / 64.0;

/// Convolutions on the im2col, transposed and narrow paths multiply in bf16 within bf16's
/// rounding of fp32 (and not equal to it: a path that silently ran fp32 would pass a tolerance
/// alone). Winograd's keep fp32 in bf16 runs, bit for bit (with bf16 operands its transforms
/// amplify the rounding to 5–8e-2, see `ops::winograd::batch`).
#[test]
fn every_layer_kind_in_bf16_matches_fp32_within_bf16_rounding() {
    if bf16_kernels("every_layer_kind_in_bf16_matches_fp32_within_bf16_rounding").is_none() {
        return;
    }
    let generic = std::env::var_os(cyclestudio::ops::GENERIC_OPS_VAR).is_some();
    let mut failures = Vec::new();
    for layer in layers() {
        let exact = run(&layer, Precision::Fp32);
        let bf16 = run(&layer, Precision::Bf16);
        let errs: Vec<f32> = bf16.iter().zip(&exact).map(|(a, b)| rel(a, b)).collect();
        eprintln!("{}: relative error y {:.2e}, dx {:.2e}, dw {:.2e}", layer.what, errs[0], errs[1], errs[2]);
        let fp32_kept = layer.what.contains("Winograd") && !generic;
        for (name, e) in ["y", "dx", "dw"].iter().zip(&errs) {
            let ok = if fp32_kept { *e == 0.0 } else { *e > 1e-5 && *e < TOL };
            if !ok {
                failures.push(format!("{} {name}: {e:.2e} ({})", layer.what, if fp32_kept { "expected fp32 exactly" } else { "expected bf16 rounding" }));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The generators and the PatchGAN of the parity fixtures, forward in bf16, against PyTorch's
/// bf16 autocast of the same weights and inputs: our error from the fp32 reference output is no
/// larger than autocast's own (which also rounds every activation to bf16; ours stay fp32).
#[test]
fn networks_in_bf16_match_pytorch_bf16_autocast() {
    use candle_core::DType;
    use candle_nn::VarBuilder;
    use cyclestudio::interop::{discriminator_key_map, from_reference_keys, generator_from_reference, infer_generator};
    use cyclestudio::model::{DiscriminatorConfig, PatchGan};
    if bf16_kernels("networks_in_bf16_match_pytorch_bf16_autocast").is_none() {
        return;
    }
    let autocast = load_fixture("bf16_autocast.safetensors");
    for file in ["resnet_3to3", "resnet_1to3", "unet", "patchgan"] {
        let fx = load_fixture(&format!("{file}.safetensors"));
        let w = with_prefix(&fx, "w.");
        let ours = with_precision(Precision::Bf16, || {
            if file == "patchgan" {
                let vb = VarBuilder::from_tensors(from_reference_keys(&discriminator_key_map(3), &w).unwrap(), DType::F32, &Device::Cpu);
                let d = PatchGan::new(&DiscriminatorConfig { in_channels: 3, ndf: 8, n_layers: 3, antialias: false }, vb).unwrap();
                d.forward(&fx["input"]).unwrap()
            } else {
                let cfg = infer_generator(&w).unwrap();
                let (g, _) = generator_from_reference(&w, &cfg, &Device::Cpu).unwrap();
                g.forward(&fx["input"]).unwrap()
            }
        });
        let theirs = &autocast[&format!("{file}.output")];
        let fp32 = &fx["output"];
        let (e_ours, e_theirs, e_between) = (rel_err(&ours, fp32), rel_err(theirs, fp32), rel_err(&ours, theirs));
        eprintln!("{file}: bf16 vs fp32 reference: ours {e_ours:.2e}, PyTorch autocast {e_theirs:.2e}; ours vs autocast {e_between:.2e}");
        assert!(e_ours <= 1.25 * e_theirs + 1e-3, "{file}: our bf16 error {e_ours} exceeds autocast's {e_theirs}");
        assert!(e_between <= e_ours + e_theirs + 1e-3, "{file}: {e_between}");
        assert!(e_ours > 0.0, "{file}: the bf16 forward gave the fp32 result exactly: did it run in bf16?");
    }
}

/// A short CycleGAN training in bf16 keeps finite, changing losses and writes the precision into
/// the run's config, which --resume keeps.
#[test]
fn training_in_bf16_runs_and_resume_keeps_the_precision() {
    if bf16_kernels("training_in_bf16_runs_and_resume_keeps_the_precision").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dataset = tiny_dataset(dir.path());
    let run_dir = dir.path().join("runs/bf16");
    let cfg = cyclestudio::train::TrainConfig { precision: Precision::Bf16, ..tiny_config(&dataset, 4) };
    let opts = cyclestudio::train::RunOptions { run_dir: run_dir.clone(), resume: false, tensorboard: true };
    let mut losses = Vec::new();
    let outcome = cyclestudio::train::run_training(cfg, &opts, &Default::default(), &mut |e| {
        if let cyclestudio::train::TrainEvent::Step(r) = e {
            losses.push(r.losses.g_total);
        }
    })
    .unwrap();
    assert!(matches!(outcome, cyclestudio::train::RunOutcome::Finished { .. }));
    assert!(losses.iter().all(|l| l.is_finite()) && losses.len() == 4, "{losses:?}");
    let saved = cyclestudio::train::TrainConfig::load(&run_dir).unwrap();
    assert_eq!(saved.precision, Precision::Bf16);
    let resumed = cyclestudio::train::request::RunRequest::default().resume(&run_dir).unwrap();
    assert_eq!(resumed.precision, Precision::Bf16);
}

/// The path a GPU takes (`CS_GENERIC_OPS`: candle's own convolutions, here in bf16).
#[test]
fn bf16_on_the_device_generic_path() {
    rerun_on_generic_path(&["every_layer_kind_in_bf16_matches_fp32_within_bf16_rounding", "networks_in_bf16_match_pytorch_bf16_autocast"]);
}
