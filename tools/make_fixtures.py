#!/usr/bin/env python3
"""Generate the numerical reference fixtures for cyclestudio's Rust tests.

The networks below are rebuilt here so that their module layout (and thus
their ``state_dict`` keys) is the one of the PyTorch reference,
pytorch-CycleGAN-and-pix2pix (models/networks.py, models/cycle_gan_model.py,
util/image_pool.py), with ``--norm instance`` (InstanceNorm2d, affine=False,
track_running_stats=False, hence conv bias=True), ``--no_dropout`` and
``--init_type normal --init_gain 0.02``.

Everything runs on the CPU, single threaded, with deterministic algorithms and
one ``torch.manual_seed`` per fixture, so re-running the script rewrites
identical tensors.  See tools/README.md for the contents of every file.

Usage (from the repository root):

    python3 tools/make_fixtures.py            # writes tests/fixtures/*
    python3 tools/make_fixtures.py --check    # also reload and list every file
"""

import argparse
import collections
import functools
import itertools
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures")

# The reference's get_norm_layer('instance').
NORM = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
USE_BIAS = True  # reference: use_bias = (norm_layer.func == nn.InstanceNorm2d)


# ---------------------------------------------------------------------------
# Networks (same layout as the reference; inplace flags kept as in the
# reference because they matter for the U-Net skip connections, see below).
# ---------------------------------------------------------------------------


class ResnetBlock(nn.Module):
    """Residual block: x + conv_block(x), reflect padding, no dropout."""

    def __init__(self, dim):
        super().__init__()
        layers = [
            nn.ReflectionPad2d(1),                                   # conv_block.0
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=USE_BIAS),  # .1
            NORM(dim),                                               # .2
            nn.ReLU(True),                                           # .3
            nn.ReflectionPad2d(1),                                   # .4
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=USE_BIAS),  # .5
            NORM(dim),                                               # .6
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, n_blocks=6):
        super().__init__()
        layers = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=USE_BIAS),
            NORM(ngf),
            nn.ReLU(True),
        ]
        n_down = 2
        for i in range(n_down):
            mult = 2 ** i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2,
                          padding=1, bias=USE_BIAS),
                NORM(ngf * mult * 2),
                nn.ReLU(True),
            ]
        mult = 2 ** n_down
        for _ in range(n_blocks):
            layers.append(ResnetBlock(ngf * mult))
        for i in range(n_down):
            mult = 2 ** (n_down - i)
            layers += [
                nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3,
                                   stride=2, padding=1, output_padding=1,
                                   bias=USE_BIAS),
                NORM(int(ngf * mult / 2)),
                nn.ReLU(True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),  # default bias=True
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    """X ---------------- identity ----------------- X
         |-- downsampling -- |submodule| -- upsampling --|

    NOTE on the reference's inplace ops (kept as they are): in every
    non-outermost block the first layer is ``nn.LeakyReLU(0.2, inplace=True)``,
    which overwrites ``x`` before ``torch.cat([x, self.model(x)], 1)`` reads
    it, so the skip half of the concatenation is really LeakyReLU_0.2(x).
    This is invisible in the result: the only consumer of the concatenation is
    the parent block's ``nn.ReLU`` (uprelu), and ReLU(LeakyReLU(x)) == ReLU(x).
    A re-implementation may therefore concatenate the plain ``x``.
    """

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None,
                 outermost=False, innermost=False):
        super().__init__()
        self.outermost = outermost
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2,
                             padding=1, bias=USE_BIAS)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = NORM(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = NORM(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4,
                                        stride=2, padding=1)  # default bias=True
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4,
                                        stride=2, padding=1, bias=USE_BIAS)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4,
                                        stride=2, padding=1, bias=USE_BIAS)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64):
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
        block = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc,
                                        submodule=block, outermost=True)
        self.model = block

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc, ndf=64, n_layers=3):
        super().__init__()
        kw, padw = 4, 1
        seq = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev = nf_mult
            nf_mult = min(2 ** n, 8)
            seq += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw,
                          stride=2, padding=padw, bias=USE_BIAS),
                NORM(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev = nf_mult
        nf_mult = min(2 ** n_layers, 8)
        seq += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1,
                      padding=padw, bias=USE_BIAS),
            NORM(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


def init_weights(net, gain=0.02):
    """Reference init_weights(init_type='normal'): N(0, gain) for every
    Conv*/Linear weight, bias 0.  Applied with net.apply (children first)."""

    def init_func(m):
        name = m.__class__.__name__
        if hasattr(m, "weight") and (name.find("Conv") != -1 or name.find("Linear") != -1):
            nn.init.normal_(m.weight.data, 0.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)

    net.apply(init_func)
    return net


class ImagePool:
    """Reference util/image_pool.ImagePool (without the random branch, which
    is never reached in these fixtures: for the first ``pool_size`` images the
    pool only stores them and hands the given images straight back)."""

    def __init__(self, pool_size):
        self.pool_size = pool_size
        self.num_imgs = 0
        self.images = []

    def query(self, images):
        if self.pool_size == 0:
            return images
        out = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if self.num_imgs < self.pool_size:
                self.num_imgs += 1
                self.images.append(image)
                out.append(image)
            else:
                raise RuntimeError("pool full: random branch not reproduced here")
        return torch.cat(out, 0)


class GANLoss:
    """Reference GANLoss('lsgan'): MSE against a 1.0 / 0.0 target tensor
    expanded to the prediction's shape."""

    def __init__(self):
        self.real_label = torch.tensor(1.0)
        self.fake_label = torch.tensor(0.0)
        self.loss = nn.MSELoss()

    def __call__(self, prediction, target_is_real):
        target = self.real_label if target_is_real else self.fake_label
        return self.loss(prediction, target.expand_as(prediction))


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def setup():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.enabled = False


def uniform(*shape):
    """Uniform in [-1, 1)."""
    return torch.rand(*shape, dtype=torch.float32) * 2.0 - 1.0


def prefixed(prefix, sd):
    return {prefix + k: v.detach().clone().contiguous() for k, v in sd.items()}


def f32(t):
    return t.detach().to(torch.float32).clone().contiguous()


def scalar(t):
    """Scalars are stored with shape [1]."""
    return f32(t).reshape(1)


def save(name, tensors):
    path = os.path.join(OUT_DIR, name)
    for k, v in tensors.items():
        assert v.dtype == torch.float32, (k, v.dtype)
        assert v.is_contiguous(), k
    save_file(tensors, path)
    print(f"wrote {os.path.relpath(path, ROOT)} ({len(tensors)} tensors)")


def eval_fixture(name, seed, make_net, in_shape):
    torch.manual_seed(seed)
    net = init_weights(make_net()).eval()
    x = uniform(*in_shape)
    with torch.no_grad():
        y = net(x.clone())  # clone: the reference's inplace ops never touch the caller's tensor
    t = prefixed("w.", net.state_dict())
    t["input"] = f32(x)
    t["output"] = f32(y)
    save(name, t)
    return net


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


def fixture_resnet():
    eval_fixture("resnet_3to3.safetensors", 1001,
                 lambda: ResnetGenerator(3, 3, ngf=8, n_blocks=2), (1, 3, 36, 44))
    eval_fixture("resnet_1to3.safetensors", 1002,
                 lambda: ResnetGenerator(1, 3, ngf=8, n_blocks=2), (1, 1, 36, 44))


def fixture_unet():
    eval_fixture("unet.safetensors", 1003,
                 lambda: UnetGenerator(3, 3, num_downs=5, ngf=4), (1, 3, 64, 64))


def fixture_patchgan():
    eval_fixture("patchgan.safetensors", 1004,
                 lambda: NLayerDiscriminator(3, ndf=8, n_layers=3), (1, 3, 64, 64))


def set_requires_grad(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def fixture_train_step():
    torch.manual_seed(1005)
    netG_A = init_weights(ResnetGenerator(3, 3, ngf=8, n_blocks=1))
    netG_B = init_weights(ResnetGenerator(3, 3, ngf=8, n_blocks=1))
    # Reference naming: netD_A judges domain-B images (real_B vs G_A's fake_B),
    # netD_B judges domain-A images (real_A vs G_B's fake_A).
    netD_A = init_weights(NLayerDiscriminator(3, ndf=4, n_layers=3))
    netD_B = init_weights(NLayerDiscriminator(3, ndf=4, n_layers=3))
    nets = {"G_A": netG_A, "G_B": netG_B, "D_A": netD_A, "D_B": netD_B}
    for n in nets.values():
        n.train()

    inputs = [(uniform(1, 3, 32, 32), uniform(1, 3, 32, 32)) for _ in range(2)]

    lambda_A = lambda_B = 10.0
    lambda_idt = 0.5
    criterionGAN = GANLoss()
    criterionCycle = nn.L1Loss()
    criterionIdt = nn.L1Loss()
    # Adam with the defaults of the installed torch on CPU (single-tensor
    # implementation, eps=1e-8, no weight decay, no amsgrad).
    optimizer_G = torch.optim.Adam(itertools.chain(netG_A.parameters(), netG_B.parameters()),
                                   lr=2e-4, betas=(0.5, 0.999))
    optimizer_D = torch.optim.Adam(itertools.chain(netD_A.parameters(), netD_B.parameters()),
                                   lr=2e-4, betas=(0.5, 0.999))
    # Pool size 50: during the first 50 queries the pool only stores each
    # image and returns it unchanged, so with two iterations the
    # discriminators always see the current (detached) fakes.
    fake_A_pool = ImagePool(50)
    fake_B_pool = ImagePool(50)

    out = {}
    for name, net in nets.items():
        out.update(prefixed(f"init.{name}.", net.state_dict()))

    for it, (real_A, real_B) in enumerate(inputs):
        p = f"iter{it}."
        out[p + "real_A"] = f32(real_A)
        out[p + "real_B"] = f32(real_B)

        # forward()
        fake_B = netG_A(real_A)
        rec_A = netG_B(fake_B)
        fake_A = netG_B(real_B)
        rec_B = netG_A(fake_A)

        # G_A and G_B
        set_requires_grad([netD_A, netD_B], False)
        optimizer_G.zero_grad()
        # backward_G()
        idt_A = netG_A(real_B)
        loss_idt_A = criterionIdt(idt_A, real_B) * lambda_B * lambda_idt
        idt_B = netG_B(real_A)
        loss_idt_B = criterionIdt(idt_B, real_A) * lambda_A * lambda_idt
        loss_G_A = criterionGAN(netD_A(fake_B), True)
        loss_G_B = criterionGAN(netD_B(fake_A), True)
        loss_cycle_A = criterionCycle(rec_A, real_A) * lambda_A
        loss_cycle_B = criterionCycle(rec_B, real_B) * lambda_B
        loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
        loss_G.backward()
        if it == 0:
            for name in ("G_A", "G_B"):
                for k, prm in nets[name].named_parameters():
                    out[f"grad0.{name}.{k}"] = f32(prm.grad)
        optimizer_G.step()

        # D_A and D_B
        set_requires_grad([netD_A, netD_B], True)
        optimizer_D.zero_grad()

        def backward_D_basic(netD, real, fake):
            loss_D_real = criterionGAN(netD(real), True)
            loss_D_fake = criterionGAN(netD(fake.detach()), False)
            loss_D = (loss_D_real + loss_D_fake) * 0.5
            loss_D.backward()
            return loss_D

        loss_D_A = backward_D_basic(netD_A, real_B, fake_B_pool.query(fake_B))
        loss_D_B = backward_D_basic(netD_B, real_A, fake_A_pool.query(fake_A))
        if it == 0:
            for name in ("D_A", "D_B"):
                for k, prm in nets[name].named_parameters():
                    out[f"grad0.{name}.{k}"] = f32(prm.grad)
        optimizer_D.step()

        losses = {
            "loss_G_A": loss_G_A, "loss_G_B": loss_G_B,
            "loss_cycle_A": loss_cycle_A, "loss_cycle_B": loss_cycle_B,
            "loss_idt_A": loss_idt_A, "loss_idt_B": loss_idt_B,
            "loss_G": loss_G, "loss_D_A": loss_D_A, "loss_D_B": loss_D_B,
        }
        for k, v in losses.items():
            out[p + k] = scalar(v)
        if it == 0:
            out[p + "fake_B"] = f32(fake_B)
            out[p + "rec_A"] = f32(rec_A)
            out[p + "fake_A"] = f32(fake_A)
            out[p + "rec_B"] = f32(rec_B)
            out[p + "idt_A"] = f32(idt_A)
            out[p + "idt_B"] = f32(idt_B)
        print(f"  iter{it}: " + ", ".join(f"{k}={v.item():.6f}" for k, v in losses.items()))

    for name, net in nets.items():
        out.update(prefixed(f"final.{name}.", net.state_dict()))
    save("train_step.safetensors", out)


def fixture_import():
    torch.manual_seed(1006)
    net = init_weights(ResnetGenerator(3, 3, ngf=8, n_blocks=2)).eval()
    x = uniform(1, 3, 36, 44)
    with torch.no_grad():
        y = net(x.clone())

    sd = net.state_dict()
    # Imitate a checkpoint from the era when the reference's InstanceNorm had
    # track_running_stats=True: running stats right after model.1.bias
    # (model.2 is the first InstanceNorm2d).  Keep the _metadata attribute
    # that torch's state_dict() carries, as real checkpoints have it.
    old = collections.OrderedDict()
    for k, v in sd.items():
        old[k] = v.detach().clone()
        if k == "model.1.bias":
            old["model.2.running_mean"] = torch.zeros(8)
            old["model.2.running_var"] = torch.ones(8)
            old["model.2.num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)
    old._metadata = sd._metadata
    path = os.path.join(OUT_DIR, "resnet_import.pth")
    torch.save(old, path)
    print(f"wrote {os.path.relpath(path, ROOT)} ({len(old)} entries)")

    # The extra keys do not change anything: loading the plain weights into a
    # fresh net reproduces the output exactly.
    check = ResnetGenerator(3, 3, ngf=8, n_blocks=2).eval()
    check.load_state_dict({k: v for k, v in old.items() if "running" not in k and "num_batches" not in k})
    with torch.no_grad():
        assert torch.equal(check(x.clone()), y)
    save("resnet_import_io.safetensors", {"input": f32(x), "output": f32(y)})


def fixture_cli_parity():
    """A reference-layout .pth and an 8-bit PNG whose sides are multiples of 4, with the
    reference's output for the whole image as it is (what its test.py computes): the CLI's
    import + translate --margin 0 must reproduce it."""
    from PIL import Image

    torch.manual_seed(1007)
    net = init_weights(ResnetGenerator(3, 3, ngf=16, n_blocks=1)).eval()
    h, w = 40, 52
    # Smooth structure plus noise, quantised to 8 bits like any real image.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, 1 - xx * yy])
    img = ((base * 0.7 + torch.rand(3, h, w) * 0.3) * 255).round().clamp(0, 255).to(torch.uint8)
    png = os.path.join(OUT_DIR, "cli_parity_input.png")
    Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB").save(png)
    x = img.float().unsqueeze(0) / 255 * 2 - 1
    with torch.no_grad():
        y = net(x)
    path = os.path.join(OUT_DIR, "cli_parity.pth")
    torch.save(net.state_dict(), path)
    save("cli_parity_output.safetensors", {"output": f32(y)})
    print(f"wrote {os.path.relpath(png, ROOT)}, {os.path.relpath(path, ROOT)}")


def fixture_not_a_generator():
    path = os.path.join(OUT_DIR, "not_a_generator.pth")
    torch.save({"foo.weight": torch.zeros(3, 3)}, path)
    print(f"wrote {os.path.relpath(path, ROOT)}")


def check_all():
    total = 0
    for name in sorted(os.listdir(OUT_DIR)):
        path = os.path.join(OUT_DIR, name)
        size = os.path.getsize(path)
        total += size
        print(f"\n== {name}  {size} bytes")
        if name.endswith(".safetensors"):
            t = load_file(path)
            for k in sorted(t):
                print(f"  {k:60s} {str(t[k].dtype):14s} {list(t[k].shape)}")
        elif name.endswith(".pth"):
            d = torch.load(path, weights_only=True)
            for k, v in d.items():
                print(f"  {k:60s} {str(v.dtype):14s} {list(v.shape)}")
    print(f"\ntotal {total} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="reload and list every fixture afterwards")
    ap.add_argument("--only", help="write only this fixture (e.g. cli_parity)")
    args = ap.parse_args()
    setup()
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"torch {torch.__version__}")
    fixtures = [fixture_resnet, fixture_unet, fixture_patchgan, fixture_train_step, fixture_import,
                fixture_cli_parity, fixture_not_a_generator]
    for fixture in fixtures:
        if args.only is None or fixture.__name__ == "fixture_" + args.only:
            fixture()
    if args.check:
        check_all()


if __name__ == "__main__":
    sys.exit(main())
