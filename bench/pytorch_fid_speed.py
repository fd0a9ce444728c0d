#!/usr/bin/env python3
"""pytorch-fid's Inception on the CPU, timed like `cyclestudio bench --cases inception8`.

pytorch-fid's own InceptionV3([3]) with the synthetic weights of tools/make_fid_fixtures.py (the
architecture and arithmetic are those of the real weights; no download), a batch of 8 random
images at 299², `torch.no_grad()`, eval mode, as pytorch-fid's get_activations runs it.

    python3 bench/pytorch_fid_speed.py [--threads 2] [--warmup 1] [--repeats 5]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from make_fid_fixtures import fid_model, synthetic_state_dict  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--warmup", type=int, default=1)
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--json", action="store_true", help="print only {\"median_s\": ...} (for bench/compare_fid.sh)")
args = ap.parse_args()
torch.set_num_threads(args.threads)
model = fid_model(synthetic_state_dict())
x = torch.rand(args.batch, 3, 299, 299)
times = []
with torch.no_grad():
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        model(x)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
med = statistics.median(times)
if args.json:
    print(json.dumps({"median_s": med, "seconds": times}))
    sys.exit(0)
print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}: runs {[round(t, 3) for t in times]} s, "
      f"median {med:.3f} s per batch = {med / args.batch:.4f} s per image")
