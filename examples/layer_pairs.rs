//! One CycleGAN step's layers, each alone, forward and backward (loss = sum of the output), with
//! the networks' channel counts at a given image size: the Rust half of `bench/compare_layers.sh`,
//! whose PyTorch half (`bench/torch_layers.py`) builds the same layers. A layer's line is the
//! median milliseconds of REPEATS runs after two warm-ups.
//!
//!     cargo run --release --example layer_pairs -- [fp32|bf16] [SIZE] [REPEATS]
//!
//! `ONLY=stem,block` runs only the named layers.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cyclestudio::model::{Conv2d, ConvTranspose2d};
use cyclestudio::ops::{with_precision, Act, Precision};
#[path = "common/timing.rs"]
mod timing;
use timing::time;

type Forward = Box<dyn Fn(&Tensor) -> Result<Tensor>>;

/// A layer: its name, input shape, whether the input takes a gradient, and its forward pass.
struct Layer(&'static str, [usize; 4], bool, Forward);

/// The layers of resnet_*blocks (ngf 64) and the PatchGAN (ndf 64, 3 layers) for `s`² images.
fn layers(s: usize, vb: &VarBuilder) -> Result<Vec<Layer>> {
    let leaky = Act::LeakyRelu(0.2);
    let (stem, d0, d1) = (Conv2d::new(3, 64, 7, 1, 0, vb.pp("stem"))?, Conv2d::new(64, 128, 3, 2, 1, vb.pp("d0"))?, Conv2d::new(128, 256, 3, 2, 1, vb.pp("d1"))?);
    let (b1, b2) = (Conv2d::new(256, 256, 3, 1, 0, vb.pp("b1"))?, Conv2d::new(256, 256, 3, 1, 0, vb.pp("b2"))?);
    let (u0, u1) = (ConvTranspose2d::new(256, 128, 3, 2, 1, 1, vb.pp("u0"))?, ConvTranspose2d::new(128, 64, 3, 2, 1, 1, vb.pp("u1"))?);
    let head = Conv2d::new(64, 3, 7, 1, 0, vb.pp("head"))?;
    let dl: Vec<Conv2d> = [(3, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 1), (512, 1, 1)]
        .iter()
        .enumerate()
        .map(|(i, &(ci, co, st))| Conv2d::new(ci, co, 4, st, 1, vb.pp(format!("D{i}"))))
        .collect::<Result<_>>()?;
    let [d0_, d1_, d2_, d3_, d4_] = <[Conv2d; 5]>::try_from(dl).ok().expect("five layers");
    Ok(vec![
        Layer("stem", [1, 3, s, s], false, Box::new(move |x| stem.forward_reflect_norm_act(x, 3, Act::Relu))),
        Layer("down0", [1, 64, s, s], true, Box::new(move |x| d0.forward_norm_act(x, Act::Relu))),
        Layer("down1", [1, 128, s / 2, s / 2], true, Box::new(move |x| d1.forward_norm_act(x, Act::Relu))),
        Layer(
            "block",
            [1, 256, s / 4, s / 4],
            true,
            Box::new(move |x| b2.forward_reflect_norm_residual(&b1.forward_reflect_norm_act(x, 1, Act::Relu)?, 1, x)),
        ),
        Layer("up0", [1, 256, s / 4, s / 4], true, Box::new(move |x| u0.forward_norm_act(x, Act::Relu))),
        Layer("up1", [1, 128, s / 2, s / 2], true, Box::new(move |x| u1.forward_norm_act(x, Act::Relu))),
        Layer("head", [1, 64, s, s], true, Box::new(move |x| head.forward_reflect(x, 3)?.tanh())),
        Layer("D0", [1, 3, s, s], false, Box::new(move |x| d0_.forward_act(x, leaky))),
        Layer("D1", [1, 64, s / 2, s / 2], true, Box::new(move |x| d1_.forward_norm_act(x, leaky))),
        Layer("D2", [1, 128, s / 4, s / 4], true, Box::new(move |x| d2_.forward_norm_act(x, leaky))),
        Layer("D3", [1, 256, s / 8, s / 8], true, Box::new(move |x| d3_.forward_norm_act(x, leaky))),
        Layer("D4", [1, 512, s / 8 - 1, s / 8 - 1], true, Box::new(move |x| d4_.forward(x))),
    ])
}

fn main() -> Result<()> {
    // As the binary does: this may start the program again in place.
    cyclestudio::ops::use_huge_pages();
    // SAFETY: first thing in main after that, before any thread is started.
    unsafe { cyclestudio::ops::tune_cpu_runtime() };
    let arg = |i: usize| std::env::args().nth(i);
    let precision = if arg(1).as_deref() == Some("bf16") { Precision::Bf16 } else { Precision::Fp32 };
    let size: usize = arg(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let repeats: usize = arg(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let only = std::env::var("ONLY").ok();
    let dev = Device::Cpu;
    let vm = VarMap::new();
    for Layer(name, shape, grad_in, forward) in layers(size, &VarBuilder::from_varmap(&vm, DType::F32, &dev))? {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|n| n == name)) {
            continue;
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?)?;
        let input = if grad_in { x.as_tensor().clone() } else { x.as_tensor().detach() };
        let step = || {
            with_precision(precision, || cyclestudio::ops::backward_first_order(&forward(&input)?.sum_all()?)).expect("forward and backward pass");
        };
        step(); // the second warm-up: `time` runs one
        time(name, repeats, step);
    }
    Ok(())
}
