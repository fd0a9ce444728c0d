//! Numerical parity with the PyTorch reference, against fixtures made by tools/make_fixtures.py.

mod common;
use common::*;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use cyclestudio::interop::{discriminator_key_map, from_reference_keys, generator_from_reference, infer_generator, read_pth};
use cyclestudio::model::{DiscriminatorConfig, GeneratorKind, PatchGan};

const TOL: f32 = 1e-4;

fn check_generator(file: &str, expect: GeneratorKind) {
    let fx = load_fixture(file);
    let w = with_prefix(&fx, "w.");
    let cfg = infer_generator(&w).unwrap();
    assert_eq!(cfg.kind, expect);
    let (g, _) = generator_from_reference(&w, &cfg, &Device::Cpu).unwrap();
    let out = g.forward(&fx["input"]).unwrap();
    let e = rel_err(&out, &fx["output"]);
    assert!(e < TOL, "{file}: relative error {e}");
}

#[test]
fn resnet_generator_matches_reference() {
    check_generator("resnet_3to3.safetensors", GeneratorKind::Resnet { blocks: 2 });
}

#[test]
fn resnet_generator_grey_input_matches_reference() {
    check_generator("resnet_1to3.safetensors", GeneratorKind::Resnet { blocks: 2 });
}

#[test]
fn unet_generator_matches_reference() {
    check_generator("unet.safetensors", GeneratorKind::Unet { downs: 5 });
}

#[test]
fn patchgan_matches_reference() {
    let fx = load_fixture("patchgan.safetensors");
    let ours = from_reference_keys(&discriminator_key_map(3), &with_prefix(&fx, "w.")).unwrap();
    let vb = VarBuilder::from_tensors(ours, DType::F32, &Device::Cpu);
    let d = PatchGan::new(&DiscriminatorConfig { in_channels: 3, ndf: 8, n_layers: 3, antialias: false }, vb).unwrap();
    let out = d.forward(&fx["input"]).unwrap();
    assert_eq!(out.dims(), &[1, 1, 6, 6]);
    let e = rel_err(&out, &fx["output"]);
    assert!(e < TOL, "relative error {e}");
}

#[test]
fn imported_pth_translates_like_pytorch() {
    let w = read_pth(&fixture_path("resnet_import.pth")).unwrap();
    assert!(w.contains_key("model.2.running_mean"), "fixture carries old instance-norm keys");
    let cfg = infer_generator(&w).unwrap();
    assert_eq!((cfg.kind, cfg.ngf, cfg.in_channels, cfg.out_channels), (GeneratorKind::Resnet { blocks: 2 }, 8, 3, 3));
    let (g, _) = generator_from_reference(&w, &cfg, &Device::Cpu).unwrap();
    let io = load_fixture("resnet_import_io.safetensors");
    let e = rel_err(&g.forward(&io["input"]).unwrap(), &io["output"]);
    assert!(e < TOL, "relative error {e}");
}

#[test]
fn not_a_generator_is_refused_clearly() {
    let w = read_pth(&fixture_path("not_a_generator.pth")).unwrap();
    let e = infer_generator(&w).unwrap_err().to_string();
    assert!(e.contains("not a CycleGAN or CUT generator"), "{e}");
}

/// Our weight name → reference key, for one network.
fn reference_name(theirs: &str, ours_key: &str) -> String {
    let (layer, p) = ours_key.rsplit_once('.').unwrap();
    let map = key_map(theirs);
    let r = &map.iter().find(|(o, _)| o == layer).unwrap().1;
    format!("{r}.{p}")
}

/// Biases of convolutions followed by instance norm have no effect on anything: their true
/// gradient is 0 and PyTorch's is float noise, so Adam moves them in random directions. Ours
/// are left out of the graph and never move.
fn bias_before_norm(theirs: &str, ref_key: &str) -> bool {
    let last = if theirs.starts_with('G') { "model.18.bias" } else { "model.11.bias" };
    let first_d = theirs.starts_with('D') && ref_key == "model.0.bias";
    ref_key.ends_with(".bias") && ref_key != last && !first_d
}

#[test]
fn training_iteration_matches_reference() {
    let fx = load_fixture("train_step.safetensors");
    let mut t = fixture_trainer(&fx, &Device::Cpu);
    let (a0, b0) = (&fx["iter0.real_A"], &fx["iter0.real_B"]);

    // Gradients of the first iteration.
    let g = t.generator_pass(a0, b0).unwrap();
    let d = t.discriminator_pass(a0, b0, &g.fake_a, &g.fake_b).unwrap();
    for (theirs, ours) in NETS {
        let grads = if ours.starts_with('G') { &g.grads } else { &d.grads };
        for (k, grad) in t.grads_of(ours, grads) {
            let rk = reference_name(theirs, &k);
            let expect = &fx[&format!("grad0.{theirs}.{rk}")];
            if bias_before_norm(theirs, &rk) && grad.is_none() {
                // Our layers leave this bias out of the graph (it cancels); PyTorch's gradient
                // for it is float noise around 0.
                let noise = expect.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(noise <= 1e-5, "{theirs}.{rk}: reference gradient {noise} is not noise");
                continue;
            }
            let grad = grad.unwrap_or_else(|| panic!("no gradient for {ours}.{k}"));
            let scale = expect.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = (&grad - expect).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let tol = if bias_before_norm(theirs, &rk) { 1e-5 } else { 1e-4 * scale.max(1e-3) };
            assert!(diff <= tol, "gradient of {ours}.{k} ({theirs}.{rk}): max diff {diff}, scale {scale}");
        }
    }
    drop((g, d));

    // Two full iterations: every loss term, then the weights.
    let mut t = fixture_trainer(&fx, &Device::Cpu);
    for it in 0..2 {
        let l = t.train_step(&fx[&format!("iter{it}.real_A")], &fx[&format!("iter{it}.real_B")]).unwrap();
        let pairs = [
            ("loss_G_A", l.g_ab_adv),
            ("loss_G_B", l.g_ba_adv),
            ("loss_cycle_A", l.cycle_a),
            ("loss_cycle_B", l.cycle_b),
            ("loss_idt_A", l.idt_ab),
            ("loss_idt_B", l.idt_ba),
            ("loss_G", l.g_total),
            ("loss_D_A", l.d_b),
            ("loss_D_B", l.d_a),
        ];
        for (name, ours) in pairs {
            let expect = scalar(&fx[&format!("iter{it}.{name}")]);
            assert!((ours - expect).abs() <= TOL * expect.abs().max(1.0), "iteration {it} {name}: {ours} vs {expect}");
        }
    }
    let (mut compared, mut flipped) = (0usize, 0usize);
    for (theirs, ours) in NETS {
        for (k, w) in t.weights(ours) {
            let rk = reference_name(theirs, &k);
            if bias_before_norm(theirs, &rk) {
                continue;
            }
            let expect = &fx[&format!("final.{theirs}.{rk}")];
            let grad0 = &fx[&format!("grad0.{theirs}.{rk}")];
            let diff = (&w - expect).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g0 = grad0.abs().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (d, g) in diff.iter().zip(&g0) {
                compared += 1;
                if *d > TOL {
                    // Adam's update m/√v is ill-conditioned where an element's gradient is at
                    // rounding level (first step: lr·sign(g)) or where the second gradient nearly
                    // cancels the first: such elements may land up to a couple of lr apart.
                    assert!(*d < 5e-4, "{ours}.{k} ({theirs}.{rk}) differs by {d} (gradient {g})");
                    flipped += 1;
                }
            }
        }
    }
    assert!(flipped * 2_000 <= compared, "{flipped} of {compared} weights differ by more than {TOL}");
}

/// The reference's `test.py` runs the generator on the whole image as it is; `import` followed by
/// `translate --margin 0` must give its output (to 8-bit rounding) through the command line.
#[test]
fn cli_translate_with_margin_0_matches_the_reference_whole_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cyclestudio")).current_dir(d).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let pth = fixture_path("cli_parity.pth");
    run(&["import", "--name", "reference", "--g-ab", pth.to_str().unwrap(), "--domains", "a,b"]);
    let input = fixture_path("cli_parity_input.png");
    run(&["translate", input.to_str().unwrap(), "--to", "b", "--model", "checkpoints/reference", "--margin", "0", "-o", "ours.png"]);
    let ours = image::open(d.join("ours.png")).unwrap().into_rgb8();
    let theirs = load_fixture("cli_parity_output.safetensors")["output"].squeeze(0).unwrap(); // [3,H,W] in [-1,1]
    let (c, h, w) = theirs.dims3().unwrap();
    assert_eq!((ours.width() as usize, ours.height() as usize, c), (w, h, 3));
    let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut worst = 0f32;
    for (i, t) in theirs.iter().enumerate() {
        let (ch, y, x) = (i / (h * w), i / w % h, i % w);
        let level = (t * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0;
        worst = worst.max((ours.get_pixel(x as u32, y as u32)[ch] as f32 - level).abs());
    }
    assert!(worst <= 1.5, "largest difference from the reference: {worst} levels");
}

/// The same fixtures on the path a GPU takes (`CS_GENERIC_OPS`: candle's own ops, no CPU
/// kernels), in a child process.
#[test]
fn parity_holds_on_the_device_generic_path() {
    rerun_on_generic_path(&[
        "resnet_generator_matches_reference",
        "resnet_generator_grey_input_matches_reference",
        "unet_generator_matches_reference",
        "patchgan_matches_reference",
        "imported_pth_translates_like_pytorch",
        "training_iteration_matches_reference",
        "cli_translate_with_margin_0_matches_the_reference_whole_image",
    ]);
}
