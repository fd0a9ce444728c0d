#!/usr/bin/env python3
"""PyTorch's bf16 autocast outputs for the parity fixtures (tests/bf16.rs).

For each network fixture written by make_fixtures.py (resnet_3to3, resnet_1to3, unet, patchgan),
rebuilds the network with the fixture's weights and runs its input through it under
`torch.autocast('cpu', dtype=torch.bfloat16)` — the one line a PyTorch user adds for bf16 — and
writes the outputs, as f32, to tests/fixtures/bf16_autocast.safetensors under "<fixture>.output".
The Rust test compares our bf16 forward with these and with the fp32 outputs.

Usage (from the repository root, with torch and safetensors installed):

    python3 tools/make_bf16_fixtures.py
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_fixtures import NLayerDiscriminator, ResnetGenerator, UnetGenerator, setup  # noqa: E402

FIXTURES = {
    "resnet_3to3": lambda: ResnetGenerator(3, 3, ngf=8, n_blocks=2),
    "resnet_1to3": lambda: ResnetGenerator(1, 3, ngf=8, n_blocks=2),
    "unet": lambda: UnetGenerator(3, 3, num_downs=5, ngf=4),
    "patchgan": lambda: NLayerDiscriminator(3, ndf=8, n_layers=3),
}


def main():
    setup()
    out = {}
    for name, make in FIXTURES.items():
        fx = load_file(os.path.join(ROOT, "tests", "fixtures", f"{name}.safetensors"))
        net = make().eval()
        net.load_state_dict({k[2:]: v for k, v in fx.items() if k.startswith("w.")})
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(fx["input"].clone())
        out[f"{name}.output"] = y.float().contiguous()
        err = ((y.float() - fx["output"]).abs().max() / fx["output"].abs().max().clamp(min=1)).item()
        print(f"{name}: output {str(y.dtype)}, relative error from fp32 {err:.2e}")
    path = os.path.join(ROOT, "tests", "fixtures", "bf16_autocast.safetensors")
    save_file(out, path)
    print(f"wrote {os.path.relpath(path, ROOT)} (torch {torch.__version__})")


if __name__ == "__main__":
    sys.exit(main())
