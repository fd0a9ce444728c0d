//! Where a CUT step spends its time on the CPU (medians): the anti-aliased generator against the
//! plain one, the blur layers, the anti-aliased discriminator. Compare lines from one run only.
//!
//!     cargo run --release --example cut_timing

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use cyclestudio::model::antialias::{blur_down, blur_up};
use cyclestudio::model::{DiscriminatorConfig, Generator, GeneratorConfig, PatchGan};
#[path = "common/timing.rs"]
mod timing;
use timing::time;

fn main() {
    // As the binary does: this may start the program again in place.
    cyclestudio::ops::use_huge_pages();
    // SAFETY: first thing in main after that, before any thread is started.
    unsafe { cyclestudio::ops::tune_cpu_runtime() };
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 256, 256), &dev).unwrap();
    for antialias in [false, true] {
        let vm = VarMap::new();
        let cfg = GeneratorConfig { kind: "resnet_9blocks".parse().unwrap(), in_channels: 3, out_channels: 3, ngf: 64, output: Default::default(), antialias };
        let g = Generator::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        time(&format!("G 256² forward (antialias {antialias})"), 3, || drop(g.forward(&x).unwrap()));
        time(&format!("G 256² forward+backward (antialias {antialias})"), 3, || drop(g.forward(&x).unwrap().sum_all().unwrap().backward().unwrap()));
        if antialias {
            time("G encode 0,4,8,12,16 fwd+bwd", 3, || {
                let f = g.encode(&x, &[0, 4, 8, 12, 16]).unwrap();
                let s = f.iter().map(|t| t.sum_all().unwrap()).reduce(|a, b| (a + b).unwrap()).unwrap();
                drop(s.backward().unwrap())
            });
        }
        let vm = VarMap::new();
        let dcfg = DiscriminatorConfig { in_channels: 3, ndf: 64, n_layers: 3, antialias };
        let d = PatchGan::new(&dcfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        time(&format!("D 256² forward+backward (antialias {antialias})"), 3, || drop(d.forward(&x).unwrap().sum_all().unwrap().backward().unwrap()));
    }
    // The anti-aliased generator's four full-resolution 3×3 convolutions and their norms.
    for (name, cin, cout, side) in [("down0 64→128", 64, 128, 256), ("down1 128→256", 128, 256, 128), ("up0 256→128", 256, 128, 128), ("up1 128→64", 128, 64, 256)] {
        let xv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, cin, side, side), &dev).unwrap()).unwrap();
        let wv = Var::from_tensor(&Tensor::randn(0f32, 0.02, (cout, cin, 3, 3), &dev).unwrap()).unwrap();
        time(&format!("{name} 3×3 pad 1, {side}² fwd+bwd"), 3, || {
            drop(cyclestudio::ops::conv::conv2d(xv.as_tensor(), wv.as_tensor(), 1, 1).unwrap().sum_all().unwrap().backward().unwrap())
        });
        let yv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, cout, side, side), &dev).unwrap()).unwrap();
        time(&format!("{name} norm+relu {side}² fwd+bwd"), 3, || {
            drop(cyclestudio::ops::instance_norm_act(yv.as_tensor(), cyclestudio::ops::Act::Relu).unwrap().sum_all().unwrap().backward().unwrap())
        });
    }
    // The up-sampling layers as the generator runs them: blur up-sampling, then the 3×3
    // convolution, against the convolution alone on an input of the up-sampled size.
    for (name, cin, cout, side) in [("up0 256→128", 256, 128, 64), ("up1 128→64", 128, 64, 128)] {
        let xv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, cin, side, side), &dev).unwrap()).unwrap();
        let big = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, cin, 2 * side, 2 * side), &dev).unwrap()).unwrap();
        let wv = Var::from_tensor(&Tensor::randn(0f32, 0.02, (cout, cin, 3, 3), &dev).unwrap()).unwrap();
        time(&format!("{name} blur_up + 3×3 fwd+bwd"), 3, || {
            drop(cyclestudio::ops::conv::conv2d(&blur_up(xv.as_tensor()).unwrap(), wv.as_tensor(), 1, 1).unwrap().sum_all().unwrap().backward().unwrap())
        });
        time(&format!("{name} 3×3 alone at {}² fwd+bwd", 2 * side), 3, || {
            drop(cyclestudio::ops::conv::conv2d(big.as_tensor(), wv.as_tensor(), 1, 1).unwrap().sum_all().unwrap().backward().unwrap())
        });
    }
    // The anti-aliased PatchGAN's stride-1 4×4 convolutions (zero padding 1) after each blur-pool.
    for (name, cin, cout, side) in [("D layer 0 3→64", 3, 64, 256), ("D layer 1 64→128", 64, 128, 128), ("D layer 2 128→256", 128, 256, 64), ("D layer 3 256→512", 256, 512, 32)] {
        let xv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, cin, side, side), &dev).unwrap()).unwrap();
        let wv = Var::from_tensor(&Tensor::randn(0f32, 0.02, (cout, cin, 4, 4), &dev).unwrap()).unwrap();
        time(&format!("{name} 4×4 pad 1, {side}² fwd"), 3, || drop(cyclestudio::ops::conv::conv2d(xv.as_tensor(), wv.as_tensor(), 1, 1).unwrap()));
        time(&format!("{name} 4×4 pad 1, {side}² fwd+bwd"), 3, || {
            drop(cyclestudio::ops::conv::conv2d(xv.as_tensor(), wv.as_tensor(), 1, 1).unwrap().sum_all().unwrap().backward().unwrap())
        });
    }
    for (c, side) in [(128usize, 256usize), (256, 128)] {
        let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, c, side, side), &dev).unwrap()).unwrap();
        time(&format!("blur_down {c}ch {side}² fwd+bwd"), 5, || drop(blur_down(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap()));
        let h = side / 2;
        let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, c * 2, h, h), &dev).unwrap()).unwrap();
        time(&format!("blur_up {}ch {h}² fwd+bwd", c * 2), 5, || drop(blur_up(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap()));
    }
}
