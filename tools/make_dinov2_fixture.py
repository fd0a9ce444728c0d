#!/usr/bin/env python3
"""Parity fixture for FD-DINOv2 (src/eval/fd_dinov2.rs, tests/fd_dinov2.rs).

Writes tests/fixtures/dinov2_small_random.safetensors: one file that is both a loadable weights
file and the expected values.

* The weights: timm's DINOv2 ViT (`VisionTransformer` as `vit_small_patch14_dinov2` builds it:
  patch 14, LayerScale (`init_values`), LayerNorm eps 1e-6, exact-erf GELU, qkv bias, no head,
  `img_size` 518 so `pos_embed` has 37×37+1 positions like the real timm / torch.hub
  checkpoints) made tiny so the file can be committed: embed_dim 48, 3 heads, depth 2
  (ViT-S/14 itself is 22M parameters, 88 MB in f32). Every tensor is redrawn at random (seeded,
  `pretrained=False`) with scales that make every part of the network matter (timm's
  `init_values=1e-5` layer scales would make the blocks invisible). The timm `state_dict` key
  names are kept. The head count cannot be read from the shapes, so the file's metadata says
  `num_heads` (the Rust loader reads it; real checkpoints have none and use 64-wide heads).
* `fixture.image.{i}`: 6 deterministic RGB images, uint8 [h, w, 3], of sizes that exercise the
  resize both ways (down, up, identity, mixed).
* `fixture.resized.{0,3}`: images 0 and 3 after the reference resize, uint8 [224, 224, 3];
  `fixture.resized_hash`: [6] int64, a weighted sum of each image's resize (see `resized_hash`).
* `fixture.features`: [6, 48] f32, the reference features of the 6 images.
* `fixture.pos_embed_224` / `fixture.features_224`: a 16×16+1 position embedding (what timm
  builds with `img_size=224`; used as is, no interpolation) and the features with it.
* `fixture.fd`: [1] f64, the Fréchet distance between the features of images 0–2 and 3–5 as
  dgm-eval computes it (`compute_FD_with_reps`: np.mean, np.cov, scipy.linalg.sqrtm), checked
  here against the eigenvalue form (`compute_efficient_FD_with_reps`).

The reference is dgm-eval (layer6ai-labs/dgm-eval, Stein et al. 2023), `--model dinov2`:

* preprocessing (`dgm_eval/models/dinov2.py`, `DINOv2Encoder.transform`, default
  `clean_resize=False`): PIL image `.convert('RGB')`, `torchvision.transforms.Resize((224, 224),
  BICUBIC)` (PIL's antialiased bicubic on the uint8 image), `ToTensor()` (/255),
  `Normalize(ImageNet mean, std)`. Done here with torchvision itself.
* the network: `torch.hub.load('facebookresearch/dinov2', 'dinov2_vit*14')`, whose forward is
  the class token after the final norm (`x_norm_clstoken`, head = Identity). Its 518-sized
  position embedding is resized for the 224 input by `interpolate_pos_encoding`: bicubic
  (`F.interpolate`, A = -0.75, align_corners=False, no antialias) with
  `scale_factor = (16 + 0.1) / 37` (the hub models' `interpolate_offset=0.1`), the class
  position kept. torch.hub is not used here (it downloads code): `reference_features` below
  runs the timm modules in the hub's order with that interpolation, and is checked against
  timm's own `forward_features` where the two coincide (no interpolation needed).

Regenerate from the repo root (CPU only, deterministic; ~5 s):

    pip install timm scipy          # torch 2.15.0 (see tools/README.md), torchvision, safetensors
    python3 tools/make_dinov2_fixture.py            # two runs write byte-identical files

A full-size check (not committed: ViT-S/14 is 90 MB), random or with real timm weights:

    python3 tools/make_dinov2_fixture.py --arch vit_small_patch14_dinov2 --out /tmp/vits.safetensors \
        [--weights model.safetensors]
    FD_DINOV2_PARITY=/tmp/vits.safetensors cargo test --release --test fd_dinov2 -- --ignored

Generated with torch 2.15.0+cu132, torchvision 0.29.2, timm 1.0.31, Pillow 12, scipy 1.17.1,
numpy 2.4, safetensors 0.8.0, Python 3.11.7.
"""

import argparse
import math
import os
import warnings

import numpy as np
import scipy.linalg
import timm
import torch
import torch.nn.functional as F
import torchvision.transforms as TF
from PIL import Image
from safetensors.torch import load_file, save_file

OUT = os.path.join("tests", "fixtures", "dinov2_small_random.safetensors")
EMBED_DIM, NUM_HEADS, DEPTH = 48, 3, 2
PATCH, INPUT = 14, 224
# (width, height): down both ways, up both ways, identity | down w / up h, up, down both.
SIZES = [(256, 256), (131, 97), (224, 224), (300, 150), (48, 64), (240, 200)]
SET_A, SET_B = [0, 1, 2], [3, 4, 5]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def build_model(arch=None, weights=None):
    """The tiny fixture model, or with `arch` a full-size timm DINOv2 (random, or `weights`)."""
    torch.manual_seed(20231)
    if arch is not None:
        m = timm.create_model(arch, pretrained=False)
        if weights is not None:
            m.load_state_dict(load_file(weights))
            return m.eval()
    else:
        m = timm.create_model(
            "vit_small_patch14_dinov2", pretrained=False, embed_dim=EMBED_DIM, num_heads=NUM_HEADS, depth=DEPTH
        )
        assert m.pos_embed.shape == (1, 37 * 37 + 1, EMBED_DIM)
    g = torch.Generator().manual_seed(7)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("gamma"):  # layer scale
                p.copy_(0.5 + 0.25 * randn(p.shape))
            elif ("norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * randn(p.shape))
            elif name.endswith("bias"):
                p.copy_(0.1 * randn(p.shape))
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * randn(p.shape))
            elif name.endswith("weight"):
                fan_in = p[0].numel()
                p.copy_(randn(p.shape) / math.sqrt(fan_in))
            else:
                raise SystemExit(f"unexpected parameter {name}")
    return m.eval()


def hub_pos_embed(pos_embed, w, h):
    """The position embedding for a w×h input as torch.hub's DINOv2 resizes it (see above)."""
    n = pos_embed.shape[1] - 1
    w0, h0 = w // PATCH, h // PATCH
    if w0 * h0 == n and w == h:
        return pos_embed
    m = int(math.sqrt(n))
    assert m * m == n
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((w0 + 0.1) / m, (h0 + 0.1) / m), mode="bicubic", antialias=False)
    assert grid.shape[-2:] == (w0, h0)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], grid], dim=1)


def reference_features(m, x, pos_embed=None):
    """torch.hub DINOv2's forward (x_norm_clstoken) with timm's modules."""
    pos_embed = m.pos_embed if pos_embed is None else pos_embed
    b, _, h, w = x.shape
    t = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([m.cls_token.expand(b, -1, -1), t], dim=1)
    t = t + hub_pos_embed(pos_embed, w, h)
    for blk in m.blocks:
        t = blk(t)
    return m.norm(t)[:, 0]


def make_image(i, w, h):
    rs = np.random.RandomState(100 + i)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rs.uniform(0.01, 0.2), rs.uniform(0.01, 0.2), rs.uniform(0, 6.3)
        img[..., c] = 128 + 80 * np.sin(fx * xx + ph) * np.cos(fy * yy - ph)
    # A few hard-edged rectangles and some noise: ringing and rounding in the resize show.
    for _ in range(4):
        x0, y0 = rs.randint(0, w), rs.randint(0, h)
        img[y0 : y0 + rs.randint(2, h // 2 + 3), x0 : x0 + rs.randint(2, w // 2 + 3)] = rs.randint(0, 256, 3)
    img += rs.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def resized_hash(a):
    """Σ value · (i mod 251 + 1) over the uint8 [h, w, 3] values in order (tests/fd_dinov2.rs)."""
    v = a.reshape(-1).astype(np.int64)
    return int((v * (np.arange(v.size, dtype=np.int64) % 251 + 1)).sum())


def dgm_eval_transform(pil):
    """dgm-eval's DINOv2Encoder.transform (clean_resize=False)."""
    image = TF.Compose([TF.Resize((INPUT, INPUT), TF.InterpolationMode.BICUBIC), TF.ToTensor()])(pil)
    return TF.Normalize(IMAGENET_MEAN, IMAGENET_STD)(image)


def fd_dgm_eval(r1, r2):
    """dgm-eval's compute_FD_with_reps (eps retry and imaginary check kept)."""
    mu1, s1 = np.mean(r1, axis=0), np.cov(r1, rowvar=False)
    mu2, s2 = np.mean(r2, axis=0), np.cov(r2, rowvar=False)
    diff = mu1 - mu2
    covmean, _ = scipy.linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off).dot(s2 + off))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def fd_eig(r1, r2):
    """dgm-eval's compute_efficient_FD_with_reps."""
    mu1, s1 = np.mean(r1, axis=0), np.cov(r1, rowvar=False)
    mu2, s2 = np.mean(r2, axis=0), np.cov(r2, rowvar=False)
    sqrt_trace = np.real(scipy.linalg.eigvals(s1 @ s2) ** 0.5).sum()
    return ((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * sqrt_trace


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", help="a full-size timm DINOv2 (e.g. vit_small_patch14_dinov2) instead of the tiny fixture; "
                    "for the ignored Rust test full_size_parity, not for committing")
    ap.add_argument("--weights", help="with --arch: its real weights (.safetensors, timm names) instead of random ones")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    m = build_model(args.arch, args.weights)
    out = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}

    images = [make_image(i, w, h) for i, (w, h) in enumerate(SIZES)]
    pils = [Image.fromarray(a, "RGB").convert("RGB") for a in images]
    x = torch.stack([dgm_eval_transform(p) for p in pils])
    assert x.shape == (len(images), 3, INPUT, INPUT) and x.dtype == torch.float32
    for i in (0, 3):
        resized = TF.Resize((INPUT, INPUT), TF.InterpolationMode.BICUBIC)(pils[i])
        out[f"fixture.resized.{i}"] = torch.from_numpy(np.array(resized)).contiguous()
        # The uint8 resize is the whole of the preprocessing before ToTensor/Normalize.
        again = TF.Normalize(IMAGENET_MEAN, IMAGENET_STD)(TF.ToTensor()(resized))
        assert torch.equal(again, x[i])
    for i, a in enumerate(images):
        out[f"fixture.image.{i}"] = torch.from_numpy(a).contiguous()
    # Every image's resize, checked exactly by a weighted sum (the full 224×224 only for 0 and 3).
    hashes = [resized_hash(np.array(TF.Resize((INPUT, INPUT), TF.InterpolationMode.BICUBIC)(p))) for p in pils]
    out["fixture.resized_hash"] = torch.tensor(hashes, dtype=torch.int64)

    with torch.no_grad():
        feats = reference_features(m, x)
        # Where no interpolation is needed the reference order is timm's own forward.
        x518 = torch.randn(2, 3, 518, 518, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(reference_features(m, x518), m.forward_features(x518)[:, 0], atol=1e-5, rtol=0)

        if args.arch is None:
            m224 = timm.create_model(
                "vit_small_patch14_dinov2", pretrained=False, embed_dim=EMBED_DIM, num_heads=NUM_HEADS, depth=DEPTH, img_size=INPUT
            )
        else:
            m224 = timm.create_model(args.arch, pretrained=False, img_size=INPUT)
        m224.eval()
        sd = dict(m.state_dict())
        sd["pos_embed"] = 0.5 * torch.randn(1, 16 * 16 + 1, m.embed_dim, generator=torch.Generator().manual_seed(11))
        m224.load_state_dict(sd)
        feats224 = reference_features(m, x, pos_embed=sd["pos_embed"])
        assert torch.allclose(feats224, m224.forward_features(x)[:, 0], atol=1e-5, rtol=0)
        # The interpolation matters for this fixture (it would not catch a wrong one otherwise).
        assert (feats224 - feats).abs().max() > 0.1

    out["fixture.features"] = feats.contiguous()
    out["fixture.pos_embed_224"] = sd["pos_embed"].contiguous()
    out["fixture.features_224"] = feats224.contiguous()

    reps = feats.double().numpy()
    with warnings.catch_warnings():  # sqrtm's `disp`, which dgm-eval passes, is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        fd = fd_dgm_eval(reps[SET_A], reps[SET_B])
    fd2 = fd_eig(reps[SET_A], reps[SET_B])
    assert abs(fd - fd2) <= 1e-6 * abs(fd), (fd, fd2)
    out["fixture.fd"] = torch.tensor([fd], dtype=torch.float64)

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    # One metadata entry at most: safetensors writes a map of several in a random order.
    save_file(out, args.out, metadata={"num_heads": str(NUM_HEADS)} if args.arch is None else None)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes); FD = {fd:.6f} (eigenvalue form {fd2:.6f})")
    print("feature scale", feats.abs().max().item(), "224-pos features scale", feats224.abs().max().item())


if __name__ == "__main__":
    main()
