//! Checks the fast CPU convolutions in `cyclestudio::ops::conv` against candle's native ops and
//! against finite differences, and (ignored by default) times them against candle.
//!
//! The losses are sum(out · R) for a fixed random R, which is linear in each argument, so a
//! central difference is exact up to rounding even with a large step.

mod common;
use common::rand_tensor;

use candle_core::{DType, Result, Tensor, Var};
use cyclestudio::ops::conv::{conv2d, conv_transpose2d};
use std::time::Instant;

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a − b| relative to the scale of `b` (at least 1).
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let (a, b) = (flat(a), flat(b));
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// One convolution configuration; `out_pad` only applies to transposed convolutions.
#[derive(Clone, Copy, Debug)]
struct Cfg {
    b: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out_pad: usize,
}

/// Positional constructor, so that the tables below stay one line per case.
#[allow(clippy::too_many_arguments)]
const fn cfg(
    b: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out_pad: usize,
) -> Cfg {
    Cfg { b, cin, cout, h, w, k, stride, pad, out_pad }
}

/// Stride-1 layers with fewer output than input channels (the 6→5, 8→3 and 9→2 ones) take the
/// narrow-output kernel, 3×3 and 4×4 ones padded by 0 or 1 with ≥ 16 channels Winograd's (the
/// last five, with odd and even output sizes); the rest im2col, at strides 1, 2 (its own
/// vectorised gather, and col2im through even/odd column phases) and 3.
const CONV_CFGS: [Cfg; 16] = [
    cfg(2, 3, 8, 37, 44, 3, 2, 1, 0),
    cfg(2, 5, 4, 36, 44, 3, 2, 1, 0),
    cfg(2, 3, 6, 22, 19, 7, 1, 0, 0),
    cfg(1, 4, 3, 21, 21, 4, 2, 1, 0),
    cfg(2, 6, 5, 17, 23, 3, 1, 1, 0),
    cfg(2, 4, 7, 16, 16, 4, 2, 0, 0),
    cfg(2, 3, 4, 13, 18, 7, 2, 3, 0),
    cfg(3, 2, 2, 5, 6, 3, 2, 0, 0),
    cfg(2, 8, 3, 14, 19, 7, 1, 0, 0),
    cfg(1, 9, 2, 11, 8, 4, 1, 2, 0),
    cfg(2, 16, 17, 9, 12, 3, 1, 0, 0),
    cfg(1, 24, 16, 10, 7, 3, 1, 0, 0),
    cfg(2, 16, 16, 11, 9, 3, 1, 1, 0),
    cfg(2, 16, 20, 10, 13, 4, 1, 1, 0),
    cfg(1, 20, 16, 9, 8, 4, 1, 0, 0),
    cfg(2, 3, 5, 16, 20, 4, 3, 1, 0),
];

const CONVT_CFGS: [Cfg; 8] = [
    cfg(2, 8, 4, 17, 22, 3, 2, 1, 1),
    cfg(2, 5, 3, 18, 13, 3, 2, 1, 0),
    cfg(2, 4, 6, 9, 11, 4, 2, 1, 0),
    cfg(1, 3, 5, 10, 7, 3, 1, 1, 0),
    cfg(2, 3, 2, 8, 9, 7, 1, 0, 0),
    cfg(2, 4, 4, 7, 12, 4, 2, 0, 1),
    cfg(3, 2, 3, 1, 2, 3, 2, 1, 1),
    cfg(2, 3, 4, 6, 5, 4, 3, 1, 2),
];

impl Cfg {
    fn conv_inputs(&self, seed: u64) -> (Tensor, Tensor) {
        let x = rand_tensor(&[self.b, self.cin, self.h, self.w], seed);
        let w = rand_tensor(&[self.cout, self.cin, self.k, self.k], seed + 1);
        (x, w)
    }

    fn convt_inputs(&self, seed: u64) -> (Tensor, Tensor) {
        let x = rand_tensor(&[self.b, self.cin, self.h, self.w], seed);
        let w = rand_tensor(&[self.cin, self.cout, self.k, self.k], seed + 1);
        (x, w)
    }

    fn conv(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        conv2d(x, w, self.stride, self.pad)
    }

    fn convt(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        conv_transpose2d(x, w, self.stride, self.pad, self.out_pad)
    }

    fn native_conv(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        x.conv2d(w, self.pad, self.stride, 1, 1)
    }

    fn native_convt(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        x.conv_transpose2d(w, self.pad, self.out_pad, self.stride, 1)
    }
}

type Conv<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + 'a;

/// Gradients of sum(f(x, w) · r) with respect to x and w.
fn grads(f: &Conv<'_>, x: &Tensor, w: &Tensor, r: &Tensor) -> (Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let loss = (f(xv.as_tensor(), wv.as_tensor()).unwrap() * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    (g.get(xv.as_tensor()).unwrap().clone(), g.get(wv.as_tensor()).unwrap().clone())
}

/// sum(out · r), accumulated in f64.
fn linear_loss(out: &Tensor, r: &Tensor) -> f64 {
    let prod = (out.to_dtype(DType::F64).unwrap() * r.to_dtype(DType::F64).unwrap()).unwrap();
    prod.sum_all().unwrap().to_scalar::<f64>().unwrap()
}

/// `t` with element `i` (row-major) shifted by `delta`.
fn nudge(t: &Tensor, i: usize, delta: f32) -> Tensor {
    let mut v = flat(t);
    v[i] += delta;
    Tensor::from_vec(v, t.dims(), t.device()).unwrap()
}

/// Indices to probe: both ends plus a spread of interior elements.
fn probes(n: usize) -> Vec<usize> {
    let mut idx = vec![0, n - 1];
    idx.extend((1..6).map(|j| (j * 7919 * n / 5 + j * 131) % n));
    idx
}

/// Central differences of `loss` at the probed elements of `t` vs the analytic gradient `g`.
fn check_fd(what: &str, t: &Tensor, g: &Tensor, loss: impl Fn(&Tensor) -> f64) {
    const EPS: f32 = 0.25;
    assert_eq!(g.dims(), t.dims(), "{what}: gradient shape");
    let g = flat(g);
    for i in probes(g.len()) {
        let fd = (loss(&nudge(t, i, EPS)) - loss(&nudge(t, i, -EPS))) / (2.0 * EPS as f64);
        let err = (fd - g[i] as f64).abs();
        assert!(err <= 1e-3 * (g[i].abs() as f64).max(1.0), "{what}[{i}]: analytic {} vs finite difference {fd}", g[i]);
    }
}

/// Checks both gradients of sum(f(x, w) · r) against finite differences.
fn check_grads_fd(what: &str, f: &Conv<'_>, x: &Tensor, w: &Tensor, seed: u64) {
    let out = f(x, w).unwrap();
    let r = rand_tensor(out.dims(), seed);
    let (gx, gw) = grads(f, x, w, &r);
    check_fd(&format!("{what} dx"), x, &gx, |x| linear_loss(&f(x, w).unwrap(), &r));
    check_fd(&format!("{what} dw"), w, &gw, |w| linear_loss(&f(x, w).unwrap(), &r));
}

#[test]
fn conv2d_forward_matches_candle() {
    for (i, c) in CONV_CFGS.iter().enumerate() {
        let (x, w) = c.conv_inputs(10 + i as u64);
        let d = rel_diff(&c.conv(&x, &w).unwrap(), &c.native_conv(&x, &w).unwrap());
        assert!(d < 1e-4, "{c:?}: relative difference {d}");
    }
}

#[test]
fn conv_transpose2d_forward_matches_candle() {
    for (i, c) in CONVT_CFGS.iter().enumerate() {
        let (x, w) = c.convt_inputs(30 + i as u64);
        let ours = c.convt(&x, &w).unwrap();
        let expect_h = (c.h - 1) * c.stride + c.k + c.out_pad - 2 * c.pad;
        let expect_w = (c.w - 1) * c.stride + c.k + c.out_pad - 2 * c.pad;
        assert_eq!(ours.dims(), [c.b, c.cout, expect_h, expect_w], "{c:?}");
        let d = rel_diff(&ours, &c.native_convt(&x, &w).unwrap());
        assert!(d < 1e-4, "{c:?}: relative difference {d}");
    }
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    for (i, c) in CONV_CFGS.iter().enumerate() {
        let (x, w) = c.conv_inputs(50 + i as u64);
        check_grads_fd(&format!("conv2d {c:?}"), &|x, w| c.conv(x, w), &x, &w, 60 + i as u64);
    }
}

#[test]
fn conv_transpose2d_gradients_match_finite_differences() {
    for (i, c) in CONVT_CFGS.iter().enumerate() {
        let (x, w) = c.convt_inputs(70 + i as u64);
        check_grads_fd(&format!("conv_transpose2d {c:?}"), &|x, w| c.convt(x, w), &x, &w, 80 + i as u64);
    }
}

/// Square inputs, where candle's own backward passes are right.
#[test]
fn gradients_match_candle_on_square_inputs() {
    let conv_cfgs = [
        cfg(2, 3, 5, 16, 16, 3, 2, 1, 0),
        cfg(2, 4, 6, 15, 15, 3, 2, 1, 0),
        cfg(2, 3, 4, 12, 12, 7, 1, 3, 0),
        cfg(1, 4, 3, 16, 16, 4, 2, 1, 0),
        cfg(2, 5, 5, 10, 10, 3, 1, 0, 0),
    ];
    for (i, c) in conv_cfgs.iter().enumerate() {
        let (x, w) = c.conv_inputs(90 + i as u64);
        let r = rand_tensor(c.conv(&x, &w).unwrap().dims(), 100 + i as u64);
        let (gx, gw) = grads(&|x, w| c.conv(x, w), &x, &w, &r);
        let (nx, nw) = grads(&|x, w| c.native_conv(x, w), &x, &w, &r);
        assert!(rel_diff(&gx, &nx) < 1e-4, "conv2d dx {c:?}");
        assert!(rel_diff(&gw, &nw) < 1e-4, "conv2d dw {c:?}");
    }
    let convt_cfgs = [cfg(2, 6, 4, 8, 8, 3, 2, 1, 1), cfg(2, 4, 3, 9, 9, 4, 2, 1, 0), cfg(1, 3, 5, 10, 10, 3, 1, 1, 0)];
    for (i, c) in convt_cfgs.iter().enumerate() {
        let (x, w) = c.convt_inputs(110 + i as u64);
        let r = rand_tensor(c.convt(&x, &w).unwrap().dims(), 120 + i as u64);
        let (gx, gw) = grads(&|x, w| c.convt(x, w), &x, &w, &r);
        let (nx, nw) = grads(&|x, w| c.native_convt(x, w), &x, &w, &r);
        assert!(rel_diff(&gx, &nx) < 1e-4, "conv_transpose2d dx {c:?}");
        assert!(rel_diff(&gw, &nw) < 1e-4, "conv_transpose2d dw {c:?}");
    }
}

/// 37×44 at stride 2: the height needs output_padding 0 to invert, the width 1. candle's conv2d
/// backward derives output_padding from the height alone and fails on this input; ours must
/// give an input gradient of the input's shape with the right values.
#[test]
fn non_square_odd_stride2_conv2d_backward() {
    let c = cfg(1, 3, 8, 37, 44, 3, 2, 1, 0);
    let (x, w) = c.conv_inputs(130);
    let out = c.conv(&x, &w).unwrap();
    assert_eq!(out.dims(), [1, 8, 19, 22]);
    assert!(rel_diff(&out, &c.native_conv(&x, &w).unwrap()) < 1e-4);
    let r = rand_tensor(out.dims(), 131);
    let (gx, gw) = grads(&|x, w| c.conv(x, w), &x, &w, &r);
    assert_eq!(gx.dims(), [1, 3, 37, 44]);
    assert_eq!(gw.dims(), [8, 3, 3, 3]);
    check_fd("dx", &x, &gx, |x| linear_loss(&c.conv(x, &w).unwrap(), &r));
    check_fd("dw", &w, &gw, |w| linear_loss(&c.conv(&x, w).unwrap(), &r));
}

#[test]
fn non_contiguous_operands() {
    let base = rand_tensor(&[2, 4, 23, 18], 140);
    let x = base.transpose(2, 3).unwrap(); // [2,4,18,23]
    let w = rand_tensor(&[4, 6, 3, 3], 141).transpose(0, 1).unwrap(); // [6,4,3,3]
    assert!(!x.is_contiguous() && !w.is_contiguous());
    let ours = conv2d(&x, &w, 2, 1).unwrap();
    let native = x.contiguous().unwrap().conv2d(&w.contiguous().unwrap(), 1, 2, 1, 1).unwrap();
    assert!(rel_diff(&ours, &native) < 1e-4);

    // Gradients reach the un-transposed variable through the layout change.
    let bv = Var::from_tensor(&base).unwrap();
    let r = rand_tensor(ours.dims(), 142);
    let loss = (conv2d(&bv.transpose(2, 3).unwrap(), &w, 2, 1).unwrap() * &r).unwrap().sum_all().unwrap();
    let g_base = loss.backward().unwrap().get(bv.as_tensor()).unwrap().clone();
    let (gx, _) = grads(&|x, w| conv2d(x, w, 2, 1), &x.contiguous().unwrap(), &w, &r);
    assert!(rel_diff(&g_base, &gx.transpose(2, 3).unwrap()) < 1e-6);

    let wt = rand_tensor(&[4, 5, 3, 3], 143);
    let ours = conv_transpose2d(&x, &wt, 2, 1, 1).unwrap();
    let native = x.contiguous().unwrap().conv_transpose2d(&wt, 1, 1, 2, 1).unwrap();
    assert!(rel_diff(&ours, &native) < 1e-4);
}

/// The weight gradient is itself differentiable: d/dx of sum(∂L/∂w · R2) for both ops (the
/// conv_transpose2d case runs the weight-gradient op with x as its gradient operand).
#[test]
fn second_order_gradients_match_finite_differences() {
    type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let cases: [(&str, Op, Tensor, Tensor); 2] = [
        ("conv2d", |x, w| conv2d(x, w, 2, 1), rand_tensor(&[2, 3, 11, 14], 150), rand_tensor(&[4, 3, 3, 3], 151)),
        (
            "conv_transpose2d",
            |x, w| conv_transpose2d(x, w, 2, 1, 1),
            rand_tensor(&[2, 3, 7, 9], 152),
            rand_tensor(&[3, 4, 3, 3], 153),
        ),
    ];
    for (what, f, x, w) in cases {
        let w = Var::from_tensor(&w).unwrap(); // tracked, so that its gradient exists
        let r = rand_tensor(f(&x, &w).unwrap().dims(), 154);
        let r2 = rand_tensor(w.dims(), 155);
        // ∂/∂w of sum(f(x, w) · r), as a graph that depends on x.
        let w_grad = |x: &Var| {
            let loss = (f(x, &w).unwrap() * &r).unwrap().sum_all().unwrap();
            loss.backward().unwrap().get(&w).unwrap().clone()
        };
        let xv = Var::from_tensor(&x).unwrap();
        let loss2 = (w_grad(&xv) * &r2).unwrap().sum_all().unwrap();
        let gx = loss2.backward().unwrap().get(&xv).unwrap().clone();
        check_fd(&format!("{what} second order"), &x, &gx, |x| {
            linear_loss(&w_grad(&Var::from_tensor(x).unwrap()), &r2)
        });
    }
}

#[test]
fn rejects_output_padding_not_below_stride() {
    let x = rand_tensor(&[1, 2, 5, 5], 160);
    let w = rand_tensor(&[2, 3, 3, 3], 161);
    assert!(conv_transpose2d(&x, &w, 2, 1, 2).is_err());
    assert!(conv_transpose2d(&x, &w, 1, 1, 1).is_err());
}

#[test]
fn other_dtypes_fall_back_to_candle() {
    let c = CONV_CFGS[0];
    let (x, w) = c.conv_inputs(170);
    let (x64, w64) = (x.to_dtype(DType::F64).unwrap(), w.to_dtype(DType::F64).unwrap());
    let ours = c.conv(&x64, &w64).unwrap();
    assert_eq!(ours.dtype(), DType::F64);
    assert!(rel_diff(&ours.to_dtype(DType::F32).unwrap(), &c.conv(&x, &w).unwrap()) < 1e-5);
}

/// Times the fast ops against candle's on the layer shapes of a 128×128 resnet_6blocks
/// generator (batch 1): `cargo test --release --test conv_ops -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_vs_candle() {
    struct Case {
        name: &'static str,
        x: [usize; 4],
        w: [usize; 4],
        fast: Box<Conv<'static>>,
        native: Box<Conv<'static>>,
    }
    let cases = [
        Case {
            name: "conv 7x7 3->64 @134²",
            x: [1, 3, 134, 134],
            w: [64, 3, 7, 7],
            fast: Box::new(|x, w| conv2d(x, w, 1, 0)),
            native: Box::new(|x, w| x.conv2d(w, 0, 1, 1, 1)),
        },
        Case {
            name: "conv 3x3 s2 64->128 @128²",
            x: [1, 64, 128, 128],
            w: [128, 64, 3, 3],
            fast: Box::new(|x, w| conv2d(x, w, 2, 1)),
            native: Box::new(|x, w| x.conv2d(w, 1, 2, 1, 1)),
        },
        Case {
            name: "conv 3x3 256->256 @34²",
            x: [1, 256, 34, 34],
            w: [256, 256, 3, 3],
            fast: Box::new(|x, w| conv2d(x, w, 1, 0)),
            native: Box::new(|x, w| x.conv2d(w, 0, 1, 1, 1)),
        },
        Case {
            name: "convT 3x3 s2 256->128 @32²",
            x: [1, 256, 32, 32],
            w: [256, 128, 3, 3],
            fast: Box::new(|x, w| conv_transpose2d(x, w, 2, 1, 1)),
            native: Box::new(|x, w| x.conv_transpose2d(w, 1, 1, 2, 1)),
        },
    ];
    let median_ms = |runs: usize, f: &dyn Fn()| {
        f();
        let mut t: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[runs / 2]
    };
    println!("{:<28} {:>12} {:>12} {:>16} {:>16}", "shape", "fwd fast", "fwd candle", "fwd+bwd fast", "fwd+bwd candle");
    for c in &cases {
        let x = Var::from_tensor(&rand_tensor(&c.x, 1)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&c.w, 2)).unwrap();
        let (xd, wd) = (x.as_tensor().detach(), w.as_tensor().detach());
        let fwd = |f: &Conv<'_>| {
            f(&xd, &wd).unwrap();
        };
        // Backward from the output itself (candle seeds it with ones), so only the
        // convolution's own passes are timed.
        let train = |f: &Conv<'_>| {
            f(&x, &w).unwrap().backward().unwrap();
        };
        println!(
            "{:<28} {:>10.1}ms {:>10.1}ms {:>14.1}ms {:>14.1}ms",
            c.name,
            median_ms(15, &|| fwd(&*c.fast)),
            median_ms(5, &|| fwd(&*c.native)),
            median_ms(15, &|| train(&*c.fast)),
            median_ms(5, &|| train(&*c.native)),
        );
    }
    println!("{}", generator_timing());
}

type ConvFn = fn(&Tensor, &Tensor, usize, usize) -> Result<Tensor>;
type ConvTFn = fn(&Tensor, &Tensor, usize, usize, usize) -> Result<Tensor>;

/// The convolutions of a 128×128 resnet_6blocks generator (reflection padding, ReLU and the
/// residual adds, no normalisation), forward + backward into every weight, once with the fast
/// ops and once with candle's.
fn generator_timing() -> String {
    use cyclestudio::ops::reflect_pad2d;
    let weight = |dims: &[usize], seed: u64| {
        let fan_in = (dims[1] * dims[2] * dims[3]) as f64;
        Var::from_tensor(&(rand_tensor(dims, seed) * (1.0 / fan_in.sqrt())).unwrap()).unwrap()
    };
    let mut ws = vec![weight(&[64, 3, 7, 7], 1), weight(&[128, 64, 3, 3], 2), weight(&[256, 128, 3, 3], 3)];
    ws.extend((0..12).map(|i| weight(&[256, 256, 3, 3], 10 + i)));
    ws.extend([weight(&[256, 128, 3, 3], 4), weight(&[128, 64, 3, 3], 5), weight(&[3, 64, 7, 7], 6)]);
    let image = rand_tensor(&[1, 3, 128, 128], 7);
    let run = |conv: ConvFn, convt: ConvTFn| {
        let mut h = conv(&reflect_pad2d(&image, 3)?, &ws[0], 1, 0)?.relu()?;
        h = conv(&h, &ws[1], 2, 1)?.relu()?;
        h = conv(&h, &ws[2], 2, 1)?.relu()?;
        for block in ws[3..15].chunks(2) {
            let r = conv(&reflect_pad2d(&h, 1)?, &block[0], 1, 0)?.relu()?;
            h = (&h + conv(&reflect_pad2d(&r, 1)?, &block[1], 1, 0)?)?;
        }
        h = convt(&h, &ws[15], 2, 1, 1)?.relu()?;
        h = convt(&h, &ws[16], 2, 1, 1)?.relu()?;
        conv(&reflect_pad2d(&h, 3)?, &ws[17], 1, 0)?.tanh()?.backward()
    };
    let fast: (ConvFn, ConvTFn) = (conv2d, conv_transpose2d);
    let native: (ConvFn, ConvTFn) =
        (|x, w, s, p| x.conv2d(w, p, s, 1, 1), |x, w, s, p, op| x.conv_transpose2d(w, p, op, s, 1));
    let mut report = String::from("generator convs fwd+bwd:");
    for (name, (conv, convt)) in [("fast", fast), ("candle", native)] {
        run(conv, convt).unwrap();
        let mut t: Vec<f64> = (0..3)
            .map(|_| {
                let start = Instant::now();
                run(conv, convt).unwrap();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        report += &format!(" {name} {:.0}ms", t[1]);
    }
    report
}

/// The reflection-padded convolution (padding folded into the Winograd kernels) against padding
/// then convolving: forward and both gradients, with odd and even sizes.
#[test]
fn reflect_padded_conv_matches_pad_then_conv() {
    use cyclestudio::ops::{conv::conv2d_reflect, reflect_pad2d};
    for (i, &(b, cin, cout, h, w)) in [(2, 16, 17, 7, 10), (1, 20, 16, 2, 5), (1, 16, 16, 9, 9)].iter().enumerate() {
        let x = Var::from_tensor(&rand_tensor(&[b, cin, h, w], 200 + i as u64)).unwrap();
        let wt = Var::from_tensor(&rand_tensor(&[cout, cin, 3, 3], 210 + i as u64)).unwrap();
        let r = rand_tensor(&[b, cout, h, w], 220 + i as u64);
        let ours = conv2d_reflect(x.as_tensor(), wt.as_tensor(), 1).unwrap();
        let reference = conv2d(&reflect_pad2d(x.as_tensor(), 1).unwrap(), wt.as_tensor(), 1, 0).unwrap();
        assert_same_op(&format!("{:?}", (b, cin, cout, h, w)), ours, reference, &r, [&x, &wt]);
    }
}

/// The generator's first and last layers (7×7, reflection padding 3; im2col and narrow output),
/// whose padded input is made per pass instead of kept: forward and both gradients bit for bit
/// those of padding then convolving, in fp32 and (within bf16's rounding of each other's inputs
/// being the same) in bf16; second-order gradients still flow through the input.
#[test]
fn reflect_padded_seven_by_seven_convs_equal_pad_then_conv() {
    use cyclestudio::ops::{conv::conv2d_reflect, reflect_pad2d, with_precision, Precision};
    let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for precision in [Precision::Fp32, Precision::Bf16] {
        for (i, &(b, cin, cout, h, w)) in [(2, 3, 16, 9, 12), (1, 16, 3, 10, 7), (1, 5, 4, 4, 6)].iter().enumerate() {
            let x = Var::from_tensor(&rand_tensor(&[b, cin, h, w], 300 + i as u64)).unwrap();
            let wt = Var::from_tensor(&rand_tensor(&[cout, cin, 7, 7], 310 + i as u64)).unwrap();
            let r = rand_tensor(&[b, cout, h, w], 320 + i as u64);
            with_precision(precision, || {
                let ours = conv2d_reflect(x.as_tensor(), wt.as_tensor(), 3).unwrap();
                let reference = conv2d(&reflect_pad2d(x.as_tensor(), 3).unwrap(), wt.as_tensor(), 1, 0).unwrap();
                let what = format!("{precision:?} {:?}", (b, cin, cout, h, w));
                assert_eq!(bits(&ours), bits(&reference), "forward {what}");
                let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (reference * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for v in [&x, &wt] {
                    assert_eq!(bits(g1.get(v.as_tensor()).unwrap()), bits(g2.get(v.as_tensor()).unwrap()), "gradient {what}");
                }
                assert!(g1.get(wt.as_tensor()).unwrap().track_op(), "the weight gradient stays differentiable (second order)");
            });
        }
    }
}

/// `ours` against `reference`, two ways of computing one op of `vars`: the values, and the
/// gradients of Σ r·y with respect to every var, within 1e-5 (relative).
fn assert_same_op(what: &str, ours: Tensor, reference: Tensor, r: &Tensor, vars: [&Var; 2]) {
    assert!(rel_diff(&ours, &reference) < 1e-5, "forward {what}");
    let g1 = (ours * r).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (reference * r).unwrap().sum_all().unwrap().backward().unwrap();
    for v in vars {
        let d = rel_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
        assert!(d < 1e-5, "gradient {what}: {d}");
    }
}

/// The blur-up-sampling convolution (up-sampling folded into the Winograd kernels) against
/// up-sampling then convolving: forward and both gradients, with odd, even and one-pixel sizes.
#[test]
fn blur_up_conv_matches_upsample_then_conv() {
    use cyclestudio::model::antialias::blur_up;
    use cyclestudio::ops::conv::blur_up_conv3x3;
    for (i, &(b, cin, cout, h, w)) in [(2, 16, 17, 5, 7), (1, 20, 16, 1, 4), (1, 16, 16, 8, 8)].iter().enumerate() {
        let x = Var::from_tensor(&rand_tensor(&[b, cin, h, w], 300 + i as u64)).unwrap();
        let wt = Var::from_tensor(&rand_tensor(&[cout, cin, 3, 3], 310 + i as u64)).unwrap();
        let r = rand_tensor(&[b, cout, 2 * h, 2 * w], 320 + i as u64);
        let ours = blur_up_conv3x3(x.as_tensor(), wt.as_tensor()).unwrap().expect("the fused kernel applies");
        let reference = conv2d(&blur_up(x.as_tensor()).unwrap(), wt.as_tensor(), 1, 1).unwrap();
        assert_same_op(&format!("{:?}", (b, cin, cout, h, w)), ours, reference, &r, [&x, &wt]);
    }
    // Too few channels for Winograd: the caller up-samples and convolves itself.
    let x = rand_tensor(&[1, 4, 5, 5], 330);
    assert!(blur_up_conv3x3(&x, &rand_tensor(&[4, 4, 3, 3], 331)).unwrap().is_none());
}

/// `backward_first_order` gives the same gradients as `backward`, bit for bit, with the weight
/// gradients cut off from autograd (a plain `backward` leaves them attached, as the second-order
/// test above needs): through every convolution path (im2col, transposed, narrow, Winograd).
#[test]
fn first_order_backward_gives_the_same_gradients_detached() {
    type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let cases: [(&str, Op, Vec<usize>, Vec<usize>); 4] = [
        ("im2col", |x, w| conv2d(x, w, 2, 1), vec![2, 3, 11, 14], vec![4, 3, 3, 3]),
        ("transposed", |x, w| conv_transpose2d(x, w, 2, 1, 1), vec![2, 3, 7, 9], vec![3, 4, 3, 3]),
        ("narrow", |x, w| conv2d(x, w, 1, 3), vec![1, 16, 9, 9], vec![3, 16, 7, 7]),
        ("winograd", |x, w| cyclestudio::ops::conv::conv2d_reflect(x, w, 1), vec![1, 16, 12, 12], vec![16, 16, 3, 3]),
    ];
    for (i, (what, f, xs, ws)) in cases.into_iter().enumerate() {
        let x = Var::from_tensor(&rand_tensor(&xs, 170 + i as u64)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&ws, 180 + i as u64)).unwrap();
        let loss = || {
            let y = f(&x, &w).unwrap();
            let r = rand_tensor(y.dims(), 190);
            (y * r).unwrap().sum_all().unwrap()
        };
        let plain = loss().backward().unwrap();
        let first = cyclestudio::ops::backward_first_order(&loss()).unwrap();
        for (name, v) in [("input", &x), ("weight", &w)] {
            let (a, b) = (plain.get(v).unwrap(), first.get(v).unwrap());
            let (a, b) = (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(a, b, "{what}: {name} gradients differ");
        }
        assert!(plain.get(&w).unwrap().track_op(), "{what}: a plain backward keeps the weight gradient differentiable");
        assert!(!first.get(&w).unwrap().track_op(), "{what}: the first-order weight gradient is still attached");
        assert!(!first.get(&x).unwrap().track_op(), "{what}: the first-order input gradient is still attached");
    }
}
