#!/usr/bin/env python3
"""Generate the CUT/FastCUT parity fixtures for cyclestudio's Rust tests (tests/cut_parity.rs).

Unlike tools/make_fixtures.py, the networks are not rebuilt here: the script imports the
reference implementation itself, taesungp/contrastive-unpaired-translation (models/networks.py,
models/cut_model.py, models/patchnce.py), from a checkout OUTSIDE this repository whose path is
given with --ref. Nothing of it is copied into the repository; only the tensors it computes are.

    git clone https://github.com/taesungp/contrastive-unpaired-translation /tmp/cut-ref
    python3 tools/make_cut_fixtures.py --ref /tmp/cut-ref            # writes tests/fixtures/cut_*
    python3 tools/make_cut_fixtures.py --ref /tmp/cut-ref --check    # also lists every tensor

Everything runs on the CPU, single threaded and deterministic, with one torch.manual_seed per
fixture. Weights are stored under cyclestudio's key names (see `ours_*` below). Random choices
of the reference (np.random.permutation for patch ids, np.random.random for FastCUT's flip) are
replaced by given values that are stored too, so the Rust side can replay them.

Files (all float32; scalars have shape [1]; patch ids are stored as float32 integers):
  cut_blur.safetensors       x, down (blur_down(x)), up (blur_up(x)) for an odd-sized x
  cut_generator.safetensors  w.* (anti-aliased resnet_6blocks, ngf 4), input, output, feat.<layer>
  cut_G.pth                  that generator's state dict as the reference saves it (import)
  cut_patchgan.safetensors   w.* (anti-aliased basic PatchGAN, ndf 4), input, output
  cut_patchnce.safetensors   feat_q.i, feat_k.i, ids.i, w.* (F heads), lambda, tau, loss,
                             grad.feat_q.i, grad.w.* (batch 2)
  cut_step.safetensors       one CUT step (batch 2): init.{G,D,F}.*, real_A, real_B, ids.nce.i,
                             ids.idt.i, flip, loss_*, final.{G,D,F}.*
  fastcut_step.safetensors   one FastCUT step (batch 2, flipped): the same without ids.idt
"""

import argparse
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures")

NGF, NDF, BLOCKS, NC, PATCHES, SIZE = 4, 4, 6, 16, 16, 32
NCE_LAYERS = [0, 4, 8, 12, 16]


def f32(t):
    return t.detach().to(torch.float32).clone().contiguous()


def scalar(t):
    return f32(torch.as_tensor(t)).reshape(1)


def save(name, tensors):
    path = os.path.join(OUT_DIR, name)
    save_file({k: f32(v) for k, v in tensors.items()}, path)
    print(f"wrote {os.path.relpath(path, ROOT)} ({len(tensors)} tensors, {os.path.getsize(path)} bytes)")


def uniform(*shape):
    return torch.rand(*shape) * 2 - 1


# Our key names, in the order of the reference's Conv2d / Linear modules.
def ours_generator():
    names = ["stem", "down.0", "down.1"]
    for i in range(BLOCKS):
        names += [f"blocks.{i}.conv1", f"blocks.{i}.conv2"]
    return names + ["up.0", "up.1", "head"]


def ours_patchgan(n_layers=3):
    return [f"layers.{i}" for i in range(n_layers + 2)]


def ours_f(n):
    return [f"mlp.{i}.fc{j}" for i in range(n) for j in (1, 2)]


def param_modules(net):
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def to_ours(net, names):
    mods = param_modules(net)
    assert len(mods) == len(names), (len(mods), len(names))
    out = {}
    for m, n in zip(mods, names):
        # Copies: the optimisers update the parameters in place.
        out[n + ".weight"] = f32(m.weight)
        out[n + ".bias"] = f32(m.bias)
    return out


def grads_ours(net, names):
    mods = param_modules(net)
    out = {}
    for m, n in zip(mods, names):
        for p in ("weight", "bias"):
            g = getattr(m, p).grad
            out[f"{n}.{p}"] = f32(g) if g is not None else torch.zeros_like(getattr(m, p))
    return out


def make_g(networks):
    return networks.define_G(3, 3, NGF, "resnet_6blocks", "instance", False, "xavier", 0.02, False, False, [], None)


def make_d(networks):
    return networks.define_D(3, NDF, "basic", 3, "instance", "xavier", 0.02, False, [], None)


def fixture_blur(networks):
    torch.manual_seed(2001)
    x = uniform(2, 3, 9, 10)
    save("cut_blur.safetensors", {"x": x, "down": networks.Downsample(3)(x), "up": networks.Upsample(3)(x)})


def fixture_generator(networks):
    torch.manual_seed(2002)
    g = make_g(networks).eval()
    x = uniform(1, 3, 16, 20)
    # Layer 2 (the stem's norm) is asked for alone: when the reference goes on past it, its
    # in-place ReLU (layer 3) overwrites the returned tensor with the ReLU's output.
    layers = [0, 1, 3, 4, 7, 8, 11, 12, 16, 17]
    with torch.no_grad():
        y = g(x)
        feats = g(x, list(layers), encode_only=True)
        (norm,) = g(x, [2], encode_only=True)
    t = {"w." + k: v for k, v in to_ours(g, ours_generator()).items()}
    t["input"], t["output"], t["feat.2"] = x, y, norm
    for layer, f in zip(layers, feats):
        t[f"feat.{layer}"] = f
    save("cut_generator.safetensors", t)
    # The same generator as the reference saves it (latest_net_G.pth: its own keys, blur
    # filters included), for `cyclestudio import`.
    torch.save(g.state_dict(), os.path.join(OUT_DIR, "cut_G.pth"))


def fixture_patchgan(networks):
    torch.manual_seed(2003)
    d = make_d(networks).eval()
    x = uniform(1, 3, SIZE, SIZE)
    with torch.no_grad():
        y = d(x)
    t = {"w." + k: v for k, v in to_ours(d, ours_patchgan()).items()}
    t["input"], t["output"] = x, y
    save("cut_patchgan.safetensors", t)


def fixture_patchnce(networks, PatchNCELoss):
    torch.manual_seed(2004)
    B, T, lam = 2, 0.07, 2.0
    chans, hw = [8, 16], [(6, 7), (8, 8)]
    feat_q = [uniform(B, c, h, w).requires_grad_() for c, (h, w) in zip(chans, hw)]
    feat_k = [uniform(B, c, h, w) for c, (h, w) in zip(chans, hw)]
    ids = [torch.randperm(h * w)[:PATCHES] for (h, w) in hw]
    f = networks.define_F(3, "mlp_sample", "instance", False, "xavier", 0.02, False, [], SimpleNamespace(netF_nc=NC))
    f.create_mlp(feat_k)
    opt = SimpleNamespace(nce_includes_all_negatives_from_minibatch=False, batch_size=B, nce_T=T)
    crit = PatchNCELoss(opt)
    k_pool, _ = f(feat_k, PATCHES, ids)
    q_pool, _ = f(feat_q, PATCHES, ids)
    loss = sum((crit(q, k) * lam).mean() for q, k in zip(q_pool, k_pool)) / len(chans)
    loss.backward()
    t = {"loss": scalar(loss), "lambda": scalar(lam), "tau": scalar(T)}
    for i in range(len(chans)):
        t[f"feat_q.{i}"], t[f"feat_k.{i}"], t[f"ids.{i}"] = feat_q[i], feat_k[i], ids[i].float()
        t[f"grad.feat_q.{i}"] = feat_q[i].grad
    t.update({"w." + k: v for k, v in to_ours(f, ours_f(len(chans))).items()})
    t.update({"grad.w." + k: v for k, v in grads_ours(f, ours_f(len(chans))).items()})
    save("cut_patchnce.safetensors", t)


def fixture_step(name, seed, mode, batch, flip):
    import models.networks as networks
    from models.cut_model import CUTModel

    torch.manual_seed(seed)
    fast = mode == "fastcut"
    opt = SimpleNamespace(
        gpu_ids=[], isTrain=True, checkpoints_dir="/tmp", name="cut_fixture", preprocess="none",
        input_nc=3, output_nc=3, ngf=NGF, ndf=NDF, netG="resnet_6blocks", netD="basic", n_layers_D=3,
        normG="instance", normD="instance", no_dropout=True, init_type="xavier", init_gain=0.02,
        no_antialias=False, no_antialias_up=False, netF="mlp_sample", netF_nc=NC, gan_mode="lsgan",
        lr=2e-4, beta1=0.5, beta2=0.999, CUT_mode=mode, lambda_GAN=1.0, lambda_NCE=10.0 if fast else 1.0,
        nce_idt=not fast, nce_layers=",".join(map(str, NCE_LAYERS)), nce_includes_all_negatives_from_minibatch=False,
        nce_T=0.07, num_patches=PATCHES, flip_equivariance=fast, batch_size=batch, direction="AtoB",
    )
    model = CUTModel(opt)
    # data_dependent_initialize's effect: F's heads exist (created from the features' channels),
    # its Adam is made, all gradients are zero before the step.
    chans = [3, 2 * NGF, 4 * NGF, 4 * NGF, 4 * NGF]
    model.netF.create_mlp([torch.zeros(1, c, 1, 1) for c in chans])
    model.optimizer_F = torch.optim.Adam(model.netF.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2))
    model.optimizers.append(model.optimizer_F)
    nets = {"G": (model.netG, ours_generator()), "D": (model.netD, ours_patchgan()), "F": (model.netF, ours_f(len(chans)))}

    out = {}
    for n, (net, names) in nets.items():
        net.train()
        out.update({f"init.{n}.{k}": v for k, v in to_ours(net, names).items()})
    real_A, real_B = uniform(batch, 3, SIZE, SIZE), uniform(batch, 3, SIZE, SIZE)
    out["real_A"], out["real_B"] = real_A, real_B
    model.set_input({"A": real_A, "B": real_B, "A_paths": [], "B_paths": []})

    # Replay the reference's random draws: flip, then one permutation per NCE layer per
    # calculate_NCE_loss call (real_A/fake_B first, then real_B/idt_B).
    perms = []

    def permutation(n):
        p = torch.randperm(n).numpy()
        perms.append(p[:PATCHES])
        return p

    np.random.permutation = permutation
    np.random.random = lambda: 0.0 if flip else 0.9

    model.optimize_parameters()
    L = len(NCE_LAYERS)
    assert len(perms) == (2 * L if not fast else L), len(perms)
    for i in range(L):
        out[f"ids.nce.{i}"] = torch.from_numpy(perms[i]).float()
        if not fast:
            out[f"ids.idt.{i}"] = torch.from_numpy(perms[L + i]).float()
    out["flip"] = scalar(1.0 if flip else 0.0)
    losses = {"loss_G_GAN": model.loss_G_GAN, "loss_NCE": model.loss_NCE, "loss_G": model.loss_G, "loss_D": model.loss_D}
    if not fast:
        losses["loss_NCE_Y"] = model.loss_NCE_Y
    for k, v in losses.items():
        out[k] = scalar(v)
    print("  " + ", ".join(f"{k}={float(v):.6f}" for k, v in losses.items()))
    for n, (net, names) in nets.items():
        out.update({f"final.{n}.{k}": v for k, v in to_ours(net, names).items()})
    save(name, out)


def check_all():
    for name in sorted(os.listdir(OUT_DIR)):
        if name.startswith(("cut_", "fastcut_")):
            t = load_file(os.path.join(OUT_DIR, name))
            print(f"\n== {name}")
            for k in sorted(t):
                print(f"  {k:50s} {list(t[k].shape)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", required=True, help="checkout of taesungp/contrastive-unpaired-translation (outside this repository)")
    ap.add_argument("--check", action="store_true", help="list every tensor afterwards")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.ref))
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import models.networks as networks
    from models.patchnce import PatchNCELoss

    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"torch {torch.__version__}")
    fixture_blur(networks)
    fixture_generator(networks)
    fixture_patchgan(networks)
    fixture_patchnce(networks, PatchNCELoss)
    fixture_step("cut_step.safetensors", 2005, "cut", 2, False)
    # Batch 2, not 1: with batch 1 the reference's autograd gradient of the NCE terms on the
    # residual-block features (layers 12, 16) disagrees with finite differences of its own
    # forward pass (checked in float64), while batch 2 agrees; see tests/cut_parity.rs.
    fixture_step("fastcut_step.safetensors", 2006, "fastcut", 2, True)
    if args.check:
        check_all()


if __name__ == "__main__":
    sys.exit(main())
