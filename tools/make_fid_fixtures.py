#!/usr/bin/env python3
"""Fixtures for cyclestudio's FID/KID: pytorch-fid's own Inception and maths, torch-fidelity's KID.

The network is pytorch-fid's ``InceptionV3([3])`` (``use_fid_inception=True``) built by
pytorch-fid itself: ``fid_inception_v3()`` constructs torchvision's Inception v3 with the FID
blocks and loads its weights through ``load_state_dict_from_url``, which is patched here to hand
it *synthetic* weights instead of downloading the 95 MB file. The synthetic weights are a formula
of each tensor's name and element index (``synthetic_value`` below, the same as
``cyclestudio::eval::inception::synthetic_value``), so the Rust test rebuilds the full-size
network without any weight file being committed, and the comparison covers every layer of the
real architecture.

Writes to tests/fixtures/fid/:

* ``img_*.png``: three small images of odd sizes (one grey, one with alpha, one 299×299);
* ``inception_features.safetensors``: pytorch-fid's pool3 features of each (read as pytorch-fid's
  ``ImagePathDataset`` reads them: ``Image.open(p).convert('RGB')``, ``ToTensor``; the model
  resizes to 299 bilinearly and scales to [-1, 1]);
* ``fid_sets.safetensors``: fixed feature sets and ``calculate_frechet_distance`` of their
  ``np.mean`` / ``np.cov`` statistics;
* ``kid_sets.safetensors``: fixed feature sets and torch-fidelity's ``kid_features_to_metric``;
* ``weights_subset.pth`` / ``weights_subset_legacy.pth``: a few synthetic tensors with the
  standard state-dict keys, in the zip and the legacy (pre-1.6) ``torch.save`` formats.

Usage (repo root): ``python3 tools/make_fid_fixtures.py [--full-pth PATH]``; ``--full-pth`` also
writes the whole synthetic state dict as a legacy-format .pth (≈95 MB, not committed) for a
local end-to-end check of the loader. Needs torch, torchvision, pytorch-fid 0.3.0,
torch-fidelity 0.4.0, scipy, numpy, Pillow, safetensors.
"""

import argparse
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import pytorch_fid.inception as pfi
from pytorch_fid.fid_score import calculate_frechet_distance
import torchvision.transforms.functional as TF
from torch_fidelity.metric_kid import kid_features_to_metric, KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "fid")
M64 = (1 << 64) - 1


def synthetic_value(name, shape):
    """Element values of the synthetic tensor `name` (see inception.rs `synthetic_value`)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(h) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24) - 0.5
    if name.endswith("conv.weight"):
        fan_in = int(np.prod(shape[1:]))
        v = u * np.sqrt(24.0 / fan_in)
    elif name.endswith("running_var"):
        v = 1.0 + u
    elif name.endswith("bn.weight"):
        v = 1.0 + 0.5 * u
    else:
        v = 0.2 * u
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def skeleton_state_dict():
    """Names and shapes of fid_inception_v3()'s state dict (its construction, without loading)."""
    inc = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inc.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    inc.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    inc.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    inc.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    inc.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    inc.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    inc.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    inc.Mixed_7b = pfi.FIDInceptionE_1(1280)
    inc.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return inc.state_dict()


def synthetic_state_dict():
    sd = {}
    for k, v in skeleton_state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = v
        else:
            sd[k] = synthetic_value(k, tuple(v.shape))
    return sd


def fid_model(sd):
    """pytorch-fid's own InceptionV3([3]), its weights loaded from `sd` instead of the URL."""
    pfi.load_state_dict_from_url = lambda *a, **k: sd
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return model.eval()


def formula_features(n, seed, p, d=2048):
    i = np.arange(n * d, dtype=np.int64)
    x = ((i * 7919 + seed) % p).astype(np.float32) / np.float32(p)
    return (x * x).reshape(n, d)


def make_images():
    rng = np.random.RandomState(7)
    imgs = {}
    yy, xx = np.mgrid[0:131, 0:97]
    rgb = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 13.0), (xx * yy) % 256], -1)
    rgb = np.clip(rgb + rng.randint(-20, 21, rgb.shape), 0, 255).astype(np.uint8)
    imgs["img_0"] = Image.fromarray(rgb, "RGB")  # 97×131
    yy, xx = np.mgrid[0:61, 0:300]
    grey = np.clip(128 + 90 * np.sin(xx / 17.0 + yy / 5.0) + rng.randint(-30, 31, xx.shape), 0, 255).astype(np.uint8)
    imgs["img_1"] = Image.fromarray(grey, "L")  # 300×61, grey
    yy, xx = np.mgrid[0:299, 0:299]
    rgba = np.stack([(xx + yy) % 256, (3 * xx) % 256, 255 - (yy * 2) % 256, 128 + (xx % 128)], -1).astype(np.uint8)
    imgs["img_2"] = Image.fromarray(rgba, "RGBA")  # 299×299 with alpha
    return imgs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full-pth", help="also write the whole synthetic state dict here (legacy format)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    sd = synthetic_state_dict()
    model = fid_model(sd)

    feats = {}
    for name, img in make_images().items():
        path = os.path.join(OUT, name + ".png")
        img.save(path, optimize=True)
        # pytorch-fid's ImagePathDataset: Image.open(path).convert('RGB') then ToTensor.
        x = TF.to_tensor(Image.open(path).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            f = model(x)[0].squeeze(3).squeeze(2)[0]
        feats[name] = f.contiguous()
    save_file(feats, os.path.join(OUT, "inception_features.safetensors"))

    rng = np.random.RandomState(11)
    fid_sets = {}
    cases = [("big", 300, 250, 64), ("small", 40, 50, 64)]
    for tag, n1, n2, d in cases:
        mix = rng.randn(d, d) / np.sqrt(d)
        a = (rng.randn(n1, d) @ mix).astype(np.float32)
        b = (rng.randn(n2, d) @ (mix + 0.3 * rng.randn(d, d) / np.sqrt(d)) + 0.2).astype(np.float32)
        mu1, s1 = np.mean(a, axis=0), np.cov(a, rowvar=False)
        mu2, s2 = np.mean(b, axis=0), np.cov(b, rowvar=False)
        try:
            value = calculate_frechet_distance(mu1, s1, mu2, s2)
        except ValueError as e:  # pytorch-fid refuses some rank-deficient cases
            print(f"fid {tag}: pytorch-fid refuses: {e}")
            continue
        fid_sets[f"{tag}_a"] = torch.from_numpy(a)
        fid_sets[f"{tag}_b"] = torch.from_numpy(b)
        fid_sets[f"{tag}_fid"] = torch.tensor([float(value)], dtype=torch.float64)
        print(f"fid {tag}: {value:.6f}")
    # Full-length (2048-d) sets from a formula the Rust test recomputes (so only the values are
    # stored): ((i·7919 + seed) mod p / p)², rank-deficient and ill-conditioned on purpose.
    formula = []
    for n1, n2, p in [(500, 600, 100003), (2100, 2100, 1013)]:
        a, b = formula_features(n1, 1, p), formula_features(n2, 5, p)
        value = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        formula.append([n1, n2, p, float(value)])
        print(f"fid formula {n1}/{n2}/{p}: {value:.6f}")
    fid_sets["formula"] = torch.tensor(formula, dtype=torch.float64)
    save_file(fid_sets, os.path.join(OUT, "fid_sets.safetensors"))

    kid_sets = {}
    for tag, n1, n2, d, subsets, size in [("sub", 120, 100, 64, 10, 50), ("whole", 30, 30, 2048, 3, 30)]:
        a = (rng.randn(n1, d) * 0.5 + 0.1).astype(np.float32)
        b = (rng.randn(n2, d) * 0.6).astype(np.float32)
        kw = dict(kid_subsets=subsets, kid_subset_size=size, verbose=False, rng_seed=2020)
        out = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), **kw)
        kid_sets[f"{tag}_a"] = torch.from_numpy(a)
        kid_sets[f"{tag}_b"] = torch.from_numpy(b)
        kid_sets[f"{tag}_kid"] = torch.tensor([out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD], subsets, size], dtype=torch.float64)
        print(f"kid {tag}: {out}")
    save_file(kid_sets, os.path.join(OUT, "kid_sets.safetensors"))

    subset = {k: v for k, v in sd.items() if k.startswith("Conv2d_1a_3x3.") or k.startswith("Mixed_7c.branch_pool.bn.")}
    subset = {k: v for k, v in subset.items() if not k.endswith("num_batches_tracked")}
    torch.save(subset, os.path.join(OUT, "weights_subset.pth"))
    torch.save(subset, os.path.join(OUT, "weights_subset_legacy.pth"), _use_new_zipfile_serialization=False)
    if args.full_pth:
        torch.save(sd, args.full_pth, _use_new_zipfile_serialization=False)
        print("wrote", args.full_pth)


if __name__ == "__main__":
    main()
