#!/usr/bin/env python3
"""The PyTorch half of bench/compare_layers.sh: the layers of examples/layer_pairs.rs (the
reference's module layout: conv, InstanceNorm2d, ReLU/LeakyReLU, reflection padding), each alone,
forward (under bf16 autocast with `bf16`) and backward of the output's sum; prints the median
milliseconds per layer after two warm-ups, in the example's format.

    python3 bench/torch_layers.py [fp32|bf16] [SIZE] [REPEATS]      (ONLY=stem,block: those only)
"""
import os
import sys
import time

import torch
import torch.nn as nn

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
precision = sys.argv[1] if len(sys.argv) > 1 else "fp32"
s = int(sys.argv[2]) if len(sys.argv) > 2 else 128
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 20
norm = nn.InstanceNorm2d


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(256, 256, 3), norm(256), nn.ReLU(),
                                  nn.ReflectionPad2d(1), nn.Conv2d(256, 256, 3), norm(256))

    def forward(self, x):
        return x + self.body(x)


leaky = lambda: nn.LeakyReLU(0.2)
layers = [
    ("stem", (1, 3, s, s), False, nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), norm(64), nn.ReLU())),
    ("down0", (1, 64, s, s), True, nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1), norm(128), nn.ReLU())),
    ("down1", (1, 128, s // 2, s // 2), True, nn.Sequential(nn.Conv2d(128, 256, 3, 2, 1), norm(256), nn.ReLU())),
    ("block", (1, 256, s // 4, s // 4), True, Block()),
    ("up0", (1, 256, s // 4, s // 4), True, nn.Sequential(nn.ConvTranspose2d(256, 128, 3, 2, 1, 1), norm(128), nn.ReLU())),
    ("up1", (1, 128, s // 2, s // 2), True, nn.Sequential(nn.ConvTranspose2d(128, 64, 3, 2, 1, 1), norm(64), nn.ReLU())),
    ("head", (1, 64, s, s), True, nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 3, 7), nn.Tanh())),
    ("D0", (1, 3, s, s), False, nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), leaky())),
    ("D1", (1, 64, s // 2, s // 2), True, nn.Sequential(nn.Conv2d(64, 128, 4, 2, 1), norm(128), leaky())),
    ("D2", (1, 128, s // 4, s // 4), True, nn.Sequential(nn.Conv2d(128, 256, 4, 2, 1), norm(256), leaky())),
    ("D3", (1, 256, s // 8, s // 8), True, nn.Sequential(nn.Conv2d(256, 512, 4, 1, 1), norm(512), leaky())),
    ("D4", (1, 512, s // 8 - 1, s // 8 - 1), True, nn.Sequential(nn.Conv2d(512, 1, 4, 1, 1))),
]
only = os.environ.get("ONLY")
for name, shape, grad_in, module in layers:
    if only and name not in only.split(","):
        continue
    x = torch.randn(shape, requires_grad=grad_in)
    ms = []
    for i in range(repeats + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = module(x)
        y.float().sum().backward()
        if i >= 2:
            ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    print(f"{name:<8} {ms[len(ms) // 2]:9.2f} ms")
