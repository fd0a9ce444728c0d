//! Per-layer timings of the generator convolutions and kernels on the CPU (medians), to see where
//! a training step or a translation spends its time. Noisy on a shared machine: compare lines
//! from one run only.
//!
//!     cargo run --release --example layer_timing
//!
//! `CS_NO_WINOGRAD=1` / `CS_NATIVE_CONV=1` switch the Winograd path / all our convolutions off;
//! `CS_WINOGRAD_TILE=2` uses F(2×2, 3×3) instead of F(4×4, 3×3).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cyclestudio::model::{Generator, GeneratorConfig};
use cyclestudio::ops::conv::{conv2d, conv2d_reflect, conv_transpose2d};
use cyclestudio::ops::{instance_norm_act, Act};
#[path = "common/timing.rs"]
mod timing;
use timing::time;

/// Median milliseconds of `n` runs after one warm-up.
fn generator(kind: &str, dev: &Device) -> (VarMap, Generator) {
    let vm = VarMap::new();
    let cfg = GeneratorConfig { kind: kind.parse().unwrap(), in_channels: 3, out_channels: 3, ngf: 64, output: Default::default(), antialias: false };
    let g = Generator::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, dev)).unwrap();
    (vm, g)
}

fn main() {
    // As the binary does: this may start the program again in place.
    cyclestudio::ops::use_huge_pages();
    // SAFETY: first thing in main after that, before any thread is started.
    unsafe { cyclestudio::ops::tune_cpu_runtime() };
    let dev = Device::Cpu;
    let var = |dims: &[usize], std: f32| Var::from_tensor(&Tensor::randn(0f32, std, dims, &dev).unwrap()).unwrap();

    let (_vm6, g6) = generator("resnet_6blocks", &dev);
    let x = Tensor::randn(0f32, 1.0, (1, 3, 128, 128), &dev).unwrap();
    time("resnet_6blocks 128² forward", 5, || drop(g6.forward(&x).unwrap()));
    time("resnet_6blocks 128² forward+backward", 5, || drop(g6.forward(&x).unwrap().sum_all().unwrap().backward().unwrap()));
    let (_vm9, g9) = generator("resnet_9blocks", &dev);
    let x = Tensor::randn(0f32, 1.0, (1, 3, 256, 256), &dev).unwrap();
    time("resnet_9blocks 256² forward", 5, || drop(g9.forward(&x).unwrap()));

    for side in [32, 64] {
        let (xb, w) = (var(&[1, 256, side, side], 1.0), var(&[256, 256, 3, 3], 0.02));
        time(&format!("block conv 256ch {side}² forward"), 9, || drop(conv2d_reflect(xb.as_tensor(), w.as_tensor(), 1).unwrap()));
        time(&format!("block conv 256ch {side}² fwd+bwd"), 9, || {
            drop(conv2d_reflect(xb.as_tensor(), w.as_tensor(), 1).unwrap().sum_all().unwrap().backward().unwrap())
        });
        time(&format!("norm+relu 256ch {side}² fwd+bwd"), 9, || {
            drop(instance_norm_act(xb.as_tensor(), Act::Relu).unwrap().sum_all().unwrap().backward().unwrap())
        });
    }

    // (name, cin, cout, kernel, stride, padding, input side, transposed) of the other layers.
    let layers = [
        ("stem 3→64 7×7, 128²", 3, 64, 7, 1, 0, 134, false),
        ("down 64→128 s2, 128²", 64, 128, 3, 2, 1, 128, false),
        ("down 128→256 s2, 64²", 128, 256, 3, 2, 1, 64, false),
        ("up 256→128 s2, 32²", 256, 128, 3, 2, 1, 32, true),
        ("up 128→64 s2, 64²", 128, 64, 3, 2, 1, 64, true),
        ("head 64→3 7×7, 128²", 64, 3, 7, 1, 0, 134, false),
    ];
    for (name, cin, cout, k, s, p, side, transposed) in layers {
        let x = var(&[1, cin, side, side], 1.0);
        let w = if transposed { var(&[cin, cout, k, k], 0.02) } else { var(&[cout, cin, k, k], 0.02) };
        let f = || {
            if transposed {
                conv_transpose2d(x.as_tensor(), w.as_tensor(), s, p, 1).unwrap()
            } else {
                conv2d(x.as_tensor(), w.as_tensor(), s, p).unwrap()
            }
        };
        time(&format!("{name} forward"), 5, || drop(f()));
        time(&format!("{name} fwd+bwd"), 5, || drop(f().sum_all().unwrap().backward().unwrap()));
    }
}
