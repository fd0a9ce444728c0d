//! The training engine: op gradients, architectures, learning, checkpoints and exact resume.

mod common;
use common::*;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cyclestudio::checkpoint::load_generation;
use cyclestudio::data::dataset::{scan_folder, Check};
use cyclestudio::model::{compose_chroma_over_luma, count_params, DiscriminatorConfig, Generator, GeneratorConfig, OutputMode, PatchGan};
use cyclestudio::ops::{instance_norm, reflect_pad2d, with_precision, Precision};
use cyclestudio::train::{RunOutcome, TrainConfig, Trainer};

/// Compares autograd's gradient of sum(op(x)·r) with central finite differences, in f64.
fn check_gradient(op: impl Fn(&Tensor) -> Tensor, shape: (usize, usize, usize, usize)) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, shape, &dev).unwrap()).unwrap();
    let y = op(x.as_tensor());
    let r = Tensor::randn(0f64, 1.0, y.shape(), &dev).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let loss = |v: &[f64]| {
        let t = Tensor::from_slice(v, shape, &dev).unwrap();
        (op(&t) * &r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let eps = 1e-5;
    for i in (0..base.len()).step_by(7) {
        let (mut p, mut m) = (base.clone(), base.clone());
        p[i] += eps;
        m[i] -= eps;
        let fd = (loss(&p) - loss(&m)) / (2.0 * eps);
        assert!((fd - g[i]).abs() < 1e-6 * fd.abs().max(1.0), "element {i}: autograd {} vs finite difference {fd}", g[i]);
    }
}

#[test]
fn reflection_pad_gradient_matches_finite_differences() {
    check_gradient(|x| reflect_pad2d(x, 3).unwrap(), (2, 2, 5, 7));
    check_gradient(|x| reflect_pad2d(x, 1).unwrap(), (1, 3, 4, 4));
}

#[test]
fn instance_norm_gradient_matches_finite_differences() {
    check_gradient(|x| instance_norm(x).unwrap(), (2, 3, 5, 6));
}

#[test]
fn chroma_over_luma_gradient_matches_finite_differences() {
    // Full-range chroma puts many pixels outside the RGB gamut, where the chroma is shrunk to fit.
    let dev = Device::Cpu;
    let grey = Tensor::rand(-1f64, 1.0, (2, 1, 5, 6), &dev).unwrap();
    check_gradient(|x| compose_chroma_over_luma(&grey, &x.tanh().unwrap()).unwrap(), (2, 2, 5, 6));
    let chroma = Tensor::rand(-1f64, 1.0, (2, 2, 5, 6), &dev).unwrap();
    check_gradient(|x| compose_chroma_over_luma(&x.tanh().unwrap(), &chroma).unwrap(), (2, 3, 5, 6));
}

fn params_of(build: impl FnOnce(VarBuilder)) -> usize {
    let vm = VarMap::new();
    build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu));
    count_params(&vm.all_vars().iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>())
}

#[test]
fn parameter_counts_match_reference() {
    let g = |kind: &str| {
        let cfg = GeneratorConfig { kind: kind.parse().unwrap(), in_channels: 3, out_channels: 3, ngf: 64, output: OutputMode::Direct, antialias: false };
        params_of(|vb| {
            Generator::new(&cfg, vb).unwrap();
        })
    };
    assert_eq!(g("resnet_9blocks"), 11_378_179);
    assert_eq!(g("resnet_6blocks"), 7_837_699);
    let d = params_of(|vb| {
        PatchGan::new(&DiscriminatorConfig { in_channels: 3, ndf: 64, n_layers: 3, antialias: false }, vb).unwrap();
    });
    assert_eq!(d, 2_764_737);
}

#[test]
fn networks_keep_odd_sizes_and_channels() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let cfg = GeneratorConfig { kind: "resnet_2blocks".parse().unwrap(), in_channels: 1, out_channels: 3, ngf: 4, output: OutputMode::Direct, antialias: false };
    let g = Generator::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let y = g.forward(&Tensor::zeros((2, 1, 36, 44), DType::F32, &dev).unwrap()).unwrap();
    assert_eq!(y.dims(), &[2, 3, 36, 44]);
}

/// The training step runs several images through a generator or discriminator as one batch
/// (`Trainer::generator_pass`); that is only the same step because every network treats the
/// images of a batch independently (instance norm, no batch statistics). Each image's output in
/// a batch must equal its output alone, for every kind of layer the networks use (Winograd,
/// im2col, transposed and narrow convolutions), in both precisions.
#[test]
fn images_in_a_batch_come_out_as_they_would_alone() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let generator = |kind: &str, output, name: &str| {
        let cfg = GeneratorConfig { kind: kind.parse().unwrap(), in_channels: 1, out_channels: 3, ngf: 16, output, antialias: false };
        Generator::new(&cfg, vb.pp(name)).unwrap()
    };
    let resnet = generator("resnet_2blocks", OutputMode::Direct, "resnet");
    let unet = generator("unet_32", OutputMode::ChromaOverLuma, "unet");
    let d = PatchGan::new(&DiscriminatorConfig { in_channels: 3, ndf: 16, n_layers: 3, antialias: false }, vb.pp("d")).unwrap();
    let grey = Tensor::randn(0f32, 1., (3, 1, 64, 64), &dev).unwrap();
    let colour = Tensor::randn(0f32, 1., (3, 3, 64, 64), &dev).unwrap();
    type Net<'a> = &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>;
    let nets: [(&str, Net, &Tensor); 3] = [("resnet", &|x| resnet.forward(x), &grey), ("unet", &|x| unet.forward(x), &grey), ("patchgan", &|x| d.forward(x), &colour)];
    for precision in [Precision::Fp32, Precision::Bf16] {
        with_precision(precision, || {
            for (name, net, xs) in nets {
                let batch = net(xs).unwrap();
                for i in 0..3 {
                    let alone = net(&xs.narrow(0, i, 1).unwrap()).unwrap();
                    let diff = (batch.narrow(0, i, 1).unwrap() - &alone).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert_eq!(diff, 0.0, "{name} ({precision}): image {i} in a batch of 3 differs from alone by {diff}");
                }
            }
        });
    }
}

#[test]
fn cycle_loss_falls_when_overfitting_one_pair() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(&tiny_dataset(dir.path()), 200);
    cfg.lr = 1e-3;
    cfg.ngf = 8;
    let mut t = Trainer::new(cfg, Device::Cpu).unwrap();
    let a = Tensor::rand(-1f32, 1.0, (1, 1, 32, 32), &Device::Cpu).unwrap();
    let b = Tensor::rand(-1f32, 1.0, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let cycle: Vec<f32> = (0..60).map(|_| {
        let l = t.train_step(&a, &b).unwrap();
        l.cycle_a + l.cycle_b
    }).collect();
    let first: f32 = cycle[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = cycle[55..].iter().sum::<f32>() / 5.0;
    assert!(last < 0.5 * first, "cycle loss {first} → {last}");
}

#[test]
fn checkpoint_round_trip_restores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let run = dir.path().join("run");
    assert_eq!(train_tiny(&run, &ds, 3, false), RunOutcome::Finished { step: 3 });
    let generation = load_generation(&run).unwrap();
    assert_eq!(generation.manifest.step, 3);
    for f in CHECKPOINT_FILES {
        assert!(generation.has(f), "{f}");
    }
    let cfg = cyclestudio::train::TrainConfig::load(&run).unwrap();
    assert_eq!(cfg, tiny_config(&ds, 3));
    let mut t = Trainer::new(cfg, Device::Cpu).unwrap();
    t.restore(&run).unwrap();
    assert_eq!(t.step, 3);
    let saved = generation.load_tensors("G_AB.safetensors", &Device::Cpu).unwrap();
    for (k, w) in t.weights("G_AB") {
        assert_eq!(rel_err(&w, &saved[&k]), 0.0, "{k}");
    }
    assert!(run.join("log.jsonl").exists());
    assert!(run.join("samples/step_0000002.png").exists());
}

#[test]
fn resume_gives_the_same_weights_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");
    train_tiny(&straight, &ds, 7, false);
    train_tiny(&split, &ds, 3, false);
    assert_eq!(train_tiny(&split, &ds, 7, true), RunOutcome::Finished { step: 7 });
    let a = load_generation(&straight).unwrap();
    let b = load_generation(&split).unwrap();
    assert_same_checkpoint(&b, &a, "resumed vs straight");
    // The log holds each step once.
    let log = std::fs::read_to_string(split.join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("step")?.as_u64()).collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
}

#[test]
fn scanning_reports_broken_files_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pngs(d, 2, 20, 10);
    std::fs::write(d.join("notes.txt"), "hello").unwrap();
    std::fs::write(d.join("fake.png"), "this is text").unwrap();
    std::fs::write(d.join("empty.jpg"), "").unwrap();
    let good = std::fs::read(d.join("img0.png")).unwrap();
    std::fs::write(d.join("truncated.png"), &good[..good.len() / 2]).unwrap();
    let full = scan_folder(d, Check::Full);
    assert_eq!(full.images.len(), 2);
    assert_eq!(full.ignored, 1);
    let names: Vec<String> = full.problems.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["empty.jpg", "fake.png", "truncated.png"]);
    assert!(full.problems.iter().all(|(_, why)| !why.is_empty()));
    assert_eq!(std::fs::read(d.join("img0.png")).unwrap(), good, "inputs untouched");
}

#[test]
fn paired_mode_aligns_crops_and_adds_the_supervised_term() {
    use cyclestudio::data::create::{gray2color, CreateOptions};
    use cyclestudio::data::{BatchLoader, Dataset, LoaderOptions};
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    write_pngs(&photos, 8, 70, 50);
    let report = gray2color(&dir.path().join("datasets"), "pairs", &photos, true, &CreateOptions { test_percent: 0, max_side: 0 }).unwrap();
    assert_eq!(report.counts[0], report.counts[1], "paired: every photo in both domains");
    let ds = Dataset::open(&report.root, Check::Header).unwrap();
    assert!(ds.spec.paired);
    let loader = BatchLoader::spawn(
        (ds.a.train.paths(), 1),
        (ds.b.train.paths(), 3),
        LoaderOptions { size: 32, load_size: 40, batch: 2, seed: 1, paired: true, flip: true },
        0,
    )
    .unwrap();
    for _ in 0..4 {
        let b = loader.next().unwrap();
        // The grey image is the luma of its colour pair, cropped and flipped the same way.
        let luma = cyclestudio::ops::adapt_channels(&b.real_b, 1).unwrap();
        let diff = (luma - &b.real_a).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 0.03, "grey and colour crops are misaligned: mean difference {diff}");
    }
    let mut cfg = tiny_config(&report.root, 2);
    cfg.paired = true;
    cfg.lambda_paired = 10.0;
    let b = loader.next().unwrap();
    let t = Trainer::new(cfg.clone(), Device::Cpu).unwrap();
    let l1 = t.generator_pass(&b.real_a, &b.real_b).unwrap().losses;
    assert!(l1.paired > 0.0 && l1.g_total > l1.paired);
    // The same untrained networks with the L2 term: λ·(mean (G_AB(a)−b)² + mean (G_BA(b)−a)²).
    let cfg2 = TrainConfig { paired_loss: cyclestudio::train::PairedLoss::L2, ..cfg };
    let t2 = Trainer::new(cfg2, Device::Cpu).unwrap();
    let paired = t2.generator_pass(&b.real_a, &b.real_b).unwrap().losses.paired;
    let [fake_b, _, fake_a, _] = t2.translate_pair(&b.real_a, &b.real_b).unwrap();
    let mse = |x: &Tensor, y: &Tensor| (x - y).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    let expect = 10.0 * (mse(&fake_b, &b.real_b) + mse(&fake_a, &b.real_a));
    assert!((paired - expect).abs() <= 1e-4 * expect, "L2 paired term {paired}, expected {expect}");
}

#[test]
fn keep_luma_model_colours_without_changing_brightness() {
    use cyclestudio::train::{run_training, RunControl, RunOptions, TrainConfig};
    use cyclestudio::translate::{translate_image, TranslateOptions, Translator};
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_dataset(dir.path());
    let run = dir.path().join("run");
    let cfg = TrainConfig { keep_luma: true, ..tiny_config(&ds, 2) };
    let outcome = run_training(cfg, &RunOptions { run_dir: run.clone(), resume: false, tensorboard: true }, &RunControl::default(), &mut |_| {}).unwrap();
    assert_eq!(outcome, RunOutcome::Finished { step: 2 });
    // Resuming rebuilds the networks from the saved config: a direct G_AB would not fit the
    // saved weights (its head has 3 output channels, the chroma head 2).
    assert_eq!(train_tiny(&run, &ds, 3, true), RunOutcome::Finished { step: 3 });
    assert_eq!(load_generation(&run).unwrap().load_tensors("G_AB.safetensors", &Device::Cpu).unwrap()["head.weight"].dims()[0], 2);

    let tr = Translator::load(&run, "cpu").unwrap();
    let (g, cin, cout) = tr.generator_to("color").unwrap();
    assert_eq!((cin, cout), (1, 3));
    let grey = image::DynamicImage::ImageRgb8(gradient_image(45, 29, 3)).to_luma8();
    let input = image::DynamicImage::ImageLuma8(grey.clone());
    let out = translate_image(g, cin, tr.size_multiple(), &tr.device, &input, &TranslateOptions::default()).unwrap().to_rgb8();
    assert_eq!(out.dimensions(), grey.dimensions());
    let mut colourfulness = 0u8;
    for (rgb, l) in out.pixels().zip(grey.pixels()) {
        let [r, g, b] = rgb.0.map(f32::from);
        let luma = 0.299 * r + 0.587 * g + 0.114 * b;
        // Each channel is rounded to 8 bits, which moves the luma by at most half a level.
        assert!((luma - f32::from(l.0[0])).abs() <= 0.51, "luma {luma} for grey {}", l.0[0]);
        colourfulness = colourfulness.max(rgb.0.iter().max().unwrap() - rgb.0.iter().min().unwrap());
    }
    assert!(colourfulness > 5, "the output should have some colour, not only the grey input");
}

/// Exact resume on the path a GPU takes (`CS_GENERIC_OPS`: candle's own ops and the composed
/// Adam update), in a child process.
#[test]
fn resume_is_exact_on_the_device_generic_path() {
    rerun_on_generic_path(&["resume_gives_the_same_weights_as_an_uninterrupted_run", "checkpoint_round_trip_restores_everything"]);
}
