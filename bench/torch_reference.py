#!/usr/bin/env python3
"""The PyTorch reference's timings for the cases of `cyclestudio bench`, on the same machine.

Same architectures (the reference's module layout, from tools/make_fixtures.py), same step:
G_A/G_B forward, identity, LSGAN + cycle + identity losses, backward, Adam on both generators,
then both discriminators on real vs pooled fakes, backward, Adam. Each case runs in its own
process so its peak RSS is its own. Prints one JSON object per case (same fields as
`cyclestudio bench --json`).

With --device cuda the models run on the GPU: the device is synchronised before each clock
read, and `device_memory` holds torch.cuda.max_memory_allocated (peak_used_mib, the counterpart
of the driver pool's USED_MEM_HIGH that cyclestudio reports), max_memory_reserved
(peak_reserved_mib) and the device's total − free at the end (device_used_mib). PyTorch's
defaults are kept (cuDNN, TF32 allowed in convolutions); the JSON says which were on.

--precision bf16 is the one-line recipe a PyTorch user adds for speed: the forward passes and the
loss computations run under torch.autocast(device type, dtype=torch.bfloat16); backward passes
and optimiser steps stay outside it, as PyTorch's AMP docs recommend (weights, gradients and Adam
state stay float32; bf16 needs no GradScaler). For inference each translation is its own autocast
region (weight casts included in its time). The JSON's "precision" is fp32 or bf16 and its
"torch" field says "<version> bf16 autocast" for bf16 (just the version for fp32).

The CUT/FastCUT cases (cut128, cut256, fastcut128, fastcut256; not in the default set) run the
reference's own networks and losses, imported from a checkout of
taesungp/contrastive-unpaired-translation OUTSIDE this repository, as tools/make_cut_fixtures.py
does (--cut-ref, default $CUT_REF or /tmp/cut-ref; it needs the `packaging` module, not PIL or
torchvision). The step is CUTModel.optimize_parameters line by line (set up as the reference's
CUT/FastCUT defaults: anti-aliased resnet generator, ngf 64, instance norm, xavier init; PatchNCE
over layers 0,4,8,12,16 with 256 patches, MLP heads of 256, tau 0.07; LSGAN; basic PatchGAN; batch
1, no pool), as `cyclestudio bench` runs it: one real A and one real B image of the case's size.
Without the checkout these cases are skipped with a message on stderr (exit status 0).

    git clone https://github.com/taesungp/contrastive-unpaired-translation /tmp/cut-ref
    python3 bench/torch_reference.py [--cases train128,infer256,cut256] [--warmup 1] [--repeats 3] [--threads N]
                                     [--device cpu|cuda] [--precision fp32|bf16] [--cut-ref PATH]
"""
import argparse
import contextlib
import itertools
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "train128": ("training iteration, 128², resnet_6blocks", 6, 128, True),
    "train256": ("training iteration, 256², resnet_9blocks", 9, 256, True),
    "infer256": ("translate 256² (resnet_9blocks)", 9, 256, False),
    "infer512": ("translate 512² (resnet_9blocks)", 9, 512, False),
    "infer1024": ("translate 1024² (resnet_9blocks)", 9, 1024, False),
}
# id: (what, resnet blocks, size, CUT mode); the `what` strings are cyclestudio's.
CUT_CASES = {
    "cut128": ("CUT training iteration, 128², resnet_6blocks", 6, 128, "cut"),
    "fastcut128": ("FastCUT training iteration, 128², resnet_6blocks", 6, 128, "fastcut"),
    "cut256": ("CUT training iteration, 256², resnet_9blocks", 9, 256, "cut"),
    "fastcut256": ("FastCUT training iteration, 256², resnet_9blocks", 9, 256, "fastcut"),
}
PRECISIONS = ("fp32", "bf16")
CUT_REF_DEFAULT = os.environ.get("CUT_REF", "/tmp/cut-ref")


def cut_ref_missing(ref):
    """Why the CUT reference checkout at `ref` cannot be used, or None."""
    need = [os.path.join(ref, "models", f) for f in ("networks.py", "patchnce.py", "stylegan_networks.py")]
    missing = [f for f in need if not os.path.isfile(f)]
    if missing:
        return (f"the CUT reference (taesungp/contrastive-unpaired-translation) is not at {ref} (no {missing[0]}); "
                f"clone it there (git clone https://github.com/taesungp/contrastive-unpaired-translation {ref}) "
                f"or pass --cut-ref PATH / set CUT_REF")
    return None


def autocast_for(dev, precision):
    """A factory of the autocast context for `precision` (a no-op context for fp32)."""
    import torch
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(dev.type, dtype=torch.bfloat16)


def run_cut_case(case, warmup, repeats, dev, autocast, sync, ref):
    """Seconds of each CUT/FastCUT iteration: CUTModel.optimize_parameters with the reference's
    networks, forward and losses under `autocast()`, backward and Adam steps outside."""
    import numpy as np
    import torch
    from types import SimpleNamespace
    sys.path.insert(0, os.path.abspath(ref))
    import models.networks as networks
    from models.patchnce import PatchNCELoss

    _, blocks, size, mode = CUT_CASES[case]
    fast = mode == "fastcut"
    np.random.seed(0)
    nce_layers = [0, 4, 8, 12, 16]
    # The reference's options for CUT / FastCUT (options/*.py, CUTModel.modify_commandline_options).
    opt = SimpleNamespace(
        ngf=64, ndf=64, netG=f"resnet_{blocks}blocks", netD="basic", n_layers_D=3, normG="instance", normD="instance",
        no_dropout=True, init_type="xavier", init_gain=0.02, no_antialias=False, no_antialias_up=False,
        netF="mlp_sample", netF_nc=256, gan_mode="lsgan", lr=2e-4, beta1=0.5, beta2=0.999,
        lambda_GAN=1.0, lambda_NCE=10.0 if fast else 1.0, nce_idt=not fast, flip_equivariance=fast,
        nce_includes_all_negatives_from_minibatch=False, nce_T=0.07, num_patches=256, batch_size=1,
    )
    # gpu_ids [] everywhere: the networks are built on the CPU and moved to `dev` afterwards.
    net_g = networks.define_G(3, 3, opt.ngf, opt.netG, opt.normG, not opt.no_dropout, opt.init_type, opt.init_gain,
                              opt.no_antialias, opt.no_antialias_up, [], opt)
    net_f = networks.define_F(3, opt.netF, opt.normG, not opt.no_dropout, opt.init_type, opt.init_gain, opt.no_antialias, [], opt)
    net_d = networks.define_D(3, opt.ndf, opt.netD, opt.n_layers_D, opt.normD, opt.init_type, opt.init_gain, opt.no_antialias, [], opt)
    # data_dependent_initialize's effect: F's heads sized from G's encoder features (their
    # channels do not depend on the image size), then F's Adam.
    with torch.no_grad():
        net_f.create_mlp(net_g(torch.zeros(1, 3, 32, 32), nce_layers, encode_only=True))
    net_g, net_f, net_d = net_g.to(dev), net_f.to(dev), net_d.to(dev)
    net_g.train(), net_f.train(), net_d.train()
    crit_gan = networks.GANLoss(opt.gan_mode).to(dev)
    crit_nce = [PatchNCELoss(opt).to(dev) for _ in nce_layers]
    adam = lambda net: torch.optim.Adam(net.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2))
    opt_g, opt_d, opt_f = adam(net_g), adam(net_d), adam(net_f)
    real_a = (torch.rand(1, 3, size, size) * 2 - 1).to(dev)
    real_b = (torch.rand(1, 3, size, size) * 2 - 1).to(dev)

    def calculate_nce_loss(src, tgt, flipped):
        feat_q = net_g(tgt, nce_layers, encode_only=True)
        if flipped:
            feat_q = [torch.flip(fq, [3]) for fq in feat_q]
        feat_k = net_g(src, nce_layers, encode_only=True)
        feat_k_pool, sample_ids = net_f(feat_k, opt.num_patches, None)
        feat_q_pool, _ = net_f(feat_q, opt.num_patches, sample_ids)
        total = 0.0
        for f_q, f_k, crit in zip(feat_q_pool, feat_k_pool, crit_nce):
            total += (crit(f_q, f_k) * opt.lambda_NCE).mean()
        return total / len(nce_layers)

    def set_requires_grad(net, flag):
        for p in net.parameters():
            p.requires_grad = flag

    times = []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        with autocast():  # CUTModel.forward
            real = torch.cat((real_a, real_b), dim=0) if opt.nce_idt else real_a
            flipped = opt.flip_equivariance and np.random.random() < 0.5
            if flipped:
                real = torch.flip(real, [3])
            fake = net_g(real)
            fake_b = fake[:real_a.size(0)]
            idt_b = fake[real_a.size(0):] if opt.nce_idt else None
        set_requires_grad(net_d, True)
        opt_d.zero_grad()
        with autocast():  # compute_D_loss
            loss_d = (crit_gan(net_d(fake_b.detach()), False).mean() + crit_gan(net_d(real_b), True).mean()) * 0.5
        loss_d.backward()
        opt_d.step()
        set_requires_grad(net_d, False)
        opt_g.zero_grad()
        opt_f.zero_grad()
        with autocast():  # compute_G_loss
            loss_g_gan = crit_gan(net_d(fake_b), True).mean() * opt.lambda_GAN
            loss_nce = calculate_nce_loss(real_a, fake_b, flipped)
            if opt.nce_idt:
                loss_nce = (loss_nce + calculate_nce_loss(real_b, idt_b, flipped)) * 0.5
            loss_g = loss_g_gan + loss_nce
        loss_g.backward()
        opt_g.step()
        opt_f.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def run_case(case, warmup, repeats, device="cpu", precision="fp32", cut_ref=CUT_REF_DEFAULT):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from make_fixtures import ResnetGenerator, NLayerDiscriminator, init_weights

    what, blocks, size, train = CASES[case] if case in CASES else CUT_CASES[case]
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = autocast_for(dev, precision)
    times = []
    if case in CUT_CASES:
        times = run_cut_case(case, warmup, repeats, dev, autocast, sync, cut_ref)
    elif train:
        g_a, g_b = (init_weights(ResnetGenerator(3, 3, ngf=64, n_blocks=blocks)).to(dev) for _ in range(2))
        d_a, d_b = (init_weights(NLayerDiscriminator(3, ndf=64, n_layers=3)).to(dev) for _ in range(2))
        opt_g = torch.optim.Adam(itertools.chain(g_a.parameters(), g_b.parameters()), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(itertools.chain(d_a.parameters(), d_b.parameters()), lr=2e-4, betas=(0.5, 0.999))
        mse, l1 = torch.nn.MSELoss(), torch.nn.L1Loss()
        real_a = (torch.rand(1, 3, size, size) * 2 - 1).to(dev)
        real_b = (torch.rand(1, 3, size, size) * 2 - 1).to(dev)
        gan = lambda p, real: mse(p, torch.full_like(p, 1.0 if real else 0.0))
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            with autocast():
                fake_b = g_a(real_a); rec_a = g_b(fake_b)
                fake_a = g_b(real_b); rec_b = g_a(fake_a)
            for p in itertools.chain(d_a.parameters(), d_b.parameters()):
                p.requires_grad_(False)
            opt_g.zero_grad()
            with autocast():
                loss_g = (l1(g_a(real_b), real_b) * 5 + l1(g_b(real_a), real_a) * 5 + gan(d_a(fake_b), True) + gan(d_b(fake_a), True)
                          + l1(rec_a, real_a) * 10 + l1(rec_b, real_b) * 10)
            loss_g.backward()
            opt_g.step()
            for p in itertools.chain(d_a.parameters(), d_b.parameters()):
                p.requires_grad_(True)
            opt_d.zero_grad()
            # The pool returns the current fakes while it fills, as in cyclestudio's benchmark.
            with autocast():
                loss_d = 0.5 * (gan(d_a(real_b), True) + gan(d_a(fake_b.detach()), False)) + 0.5 * (gan(d_b(real_a), True) + gan(d_b(fake_a.detach()), False))
            loss_d.backward()
            opt_d.step()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    else:
        g = init_weights(ResnetGenerator(3, 3, ngf=64, n_blocks=blocks)).eval().to(dev)
        x = (torch.rand(1, 3, size, size) * 2 - 1).to(dev)
        with torch.no_grad():
            for i in range(warmup + repeats):
                sync()
                t0 = time.perf_counter()
                with autocast():
                    g(x)
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    times_sorted = sorted(times)
    n = len(times_sorted)
    median = times_sorted[n // 2] if n % 2 else 0.5 * (times_sorted[n // 2 - 1] + times_sorted[n // 2])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    version = torch.__version__ if precision == "fp32" else f"{torch.__version__} {precision} autocast"
    out = {"id": case, "what": what, "seconds": times, "median_s": median, "peak_rss_mib": rss, "torch": version,
           "threads": torch.get_num_threads(), "precision": precision}
    if cuda:
        mib = 1024.0 * 1024.0
        free, total = torch.cuda.mem_get_info(dev)
        out["device_memory"] = {"peak_used_mib": torch.cuda.max_memory_allocated(dev) / mib,
                                "peak_reserved_mib": torch.cuda.max_memory_reserved(dev) / mib,
                                "device_used_mib": (total - free) / mib}
        out["device"] = torch.cuda.get_device_name(dev)
        out["cudnn"] = torch.backends.cudnn.enabled
        out["tf32_conv"] = torch.backends.cudnn.allow_tf32
        out["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="fp32, or bf16: forward passes and losses under torch.autocast(dtype=torch.bfloat16)")
    ap.add_argument("--cut-ref", default=CUT_REF_DEFAULT,
                    help="checkout of taesungp/contrastive-unpaired-translation for the CUT cases (default $CUT_REF or /tmp/cut-ref)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps(run_case(a.one, a.warmup, a.repeats, a.device, a.precision, a.cut_ref)))
        return
    cases = a.cases.split(",")
    unknown = [c for c in cases if c not in CASES and c not in CUT_CASES]
    if unknown:
        sys.exit(f"unknown case(s): {', '.join(unknown)} (known: {', '.join([*CASES, *CUT_CASES])})")
    failed = []
    for case in cases:
        if case in CUT_CASES:
            why = cut_ref_missing(a.cut_ref)
            if why:
                sys.stderr.write(f"skipping {case}: {why}\n")
                continue
        out = subprocess.run([sys.executable, __file__, "--one", case, "--warmup", str(a.warmup), "--repeats", str(a.repeats),
                              "--threads", str(a.threads), "--device", a.device, "--precision", a.precision,
                              "--cut-ref", a.cut_ref], capture_output=True, text=True)
        if out.returncode != 0 or not out.stdout.strip():
            # The other cases may still run; say why this one did not.
            sys.stderr.write(f"case {case} failed:\n{out.stderr}")
            failed.append(case)
            continue
        print(out.stdout.strip().splitlines()[-1], flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
