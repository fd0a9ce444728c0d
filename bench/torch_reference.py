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

    python3 bench/torch_reference.py [--cases train128,infer256] [--warmup 1] [--repeats 3] [--threads N] [--device cpu|cuda]
"""
import argparse
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
    "infer1024": ("translate 1024² (resnet_9blocks)", 9, 1024, False),
}


def run_case(case, warmup, repeats, device="cpu"):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from make_fixtures import ResnetGenerator, NLayerDiscriminator, init_weights

    what, blocks, size, train = CASES[case]
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    if train:
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
            fake_b = g_a(real_a); rec_a = g_b(fake_b)
            fake_a = g_b(real_b); rec_b = g_a(fake_a)
            for p in itertools.chain(d_a.parameters(), d_b.parameters()):
                p.requires_grad_(False)
            opt_g.zero_grad()
            loss_g = (l1(g_a(real_b), real_b) * 5 + l1(g_b(real_a), real_a) * 5 + gan(d_a(fake_b), True) + gan(d_b(fake_a), True)
                      + l1(rec_a, real_a) * 10 + l1(rec_b, real_b) * 10)
            loss_g.backward()
            opt_g.step()
            for p in itertools.chain(d_a.parameters(), d_b.parameters()):
                p.requires_grad_(True)
            opt_d.zero_grad()
            # The pool returns the current fakes while it fills, as in cyclestudio's benchmark.
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
                g(x)
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    times_sorted = sorted(times)
    n = len(times_sorted)
    median = times_sorted[n // 2] if n % 2 else 0.5 * (times_sorted[n // 2 - 1] + times_sorted[n // 2])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = {"id": case, "what": what, "seconds": times, "median_s": median, "peak_rss_mib": rss, "torch": torch.__version__,
           "threads": torch.get_num_threads()}
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
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps(run_case(a.one, a.warmup, a.repeats, a.device)))
        return
    failed = []
    for case in a.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", case, "--warmup", str(a.warmup), "--repeats", str(a.repeats),
                              "--threads", str(a.threads), "--device", a.device], capture_output=True, text=True)
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
