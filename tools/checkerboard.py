"""Measures checkerboard artefacts: periodic patterns of period 2 or 4 pixels, which stride-2
transposed convolutions print on their outputs. Such a pattern is stationary, so it shows as
sharp peaks in the image's spectrum at the lattice frequencies (k·W/4, l·H/4); natural content
has a smooth spectrum there. For each image and each channel (Y, Cb, Cr), the score of a lattice
point is the mean spectral power in a 5×5 bin square around it over the mean power in the ring
3–6 bins away (Hann-windowed FFT), in dB; the image's score is the mean over the 15 points.
About 0 dB means no peaks; a checkerboard of half a grey level already gives several dB. The
second score says how strong the pattern is: the RMS of the image's period-4 component, in grey
levels of 255 (below 1 is invisible).

    python3 tools/checkerboard.py DIR [DIR ...]      # mean, median and max per folder and channel
    python3 tools/checkerboard.py --selftest DIR     # the same photos with a faint checkerboard added

Needs numpy and Pillow.
"""
import glob
import os
import sys

import numpy as np
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def ycbcr(img):
    """[3, H, W] in [0, 1]: ITU-R 601 luma and the two colour-difference planes."""
    a = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([y, 0.5 * (b - y) / (1 - 0.114), 0.5 * (r - y) / (1 - 0.299)])


def lattice_peak_db(plane):
    h, w = plane.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((plane - plane.mean()) * window)) ** 2
    d = np.arange(-6, 7)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    centre = (abs(dy) <= 2) & (abs(dx) <= 2)
    ring = (np.maximum(abs(dy), abs(dx)) >= 3)
    scores = []
    for ky in range(4):
        for kx in range(4):
            if ky == 0 and kx == 0:
                continue
            fy, fx = round(ky * h / 4), round(kx * w / 4)
            patch = power[(fy + dy) % h, (fx + dx) % w]
            scores.append(10 * np.log10((patch[centre].mean() + 1e-30) / (patch[ring].mean() + 1e-30)))
    return float(np.mean(scores))


def periodic_amplitude(plane):
    """RMS, in 1/255 levels, of the part of the image that repeats every 4 pixels in both
    directions: the high-passed plane (minus its 4×4 box mean, which removes any period-4
    pattern from the low-pass) averaged over each of the 16 pixel phases (y mod 4, x mod 4)."""
    h, w = (plane.shape[0] - 3) // 4 * 4, (plane.shape[1] - 3) // 4 * 4
    c = np.pad(plane.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    box = (c[4:4 + h, 4:4 + w] - c[:h, 4:4 + w] - c[4:4 + h, :w] + c[:h, :w]) / 16
    high = plane[2:2 + h, 2:2 + w] - box
    phases = high.reshape(h // 4, 4, w // 4, 4).mean(axis=(0, 2))
    return float(np.sqrt(((phases - phases.mean()) ** 2).mean()) * 255)


def scores(planes):
    """Per channel: (lattice peak in dB, periodic amplitude in 1/255)."""
    return [(lattice_peak_db(p), periodic_amplitude(p)) for p in planes]


def images(folder):
    return sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(EXTENSIONS))


def report(label, per_image):
    a = np.array(per_image)  # [images, 3 channels, 2 scores]
    print(f"{label}: {len(a)} images")
    for c, name in enumerate(("Y", "Cb", "Cr")):
        peak, amp = a[:, c, 0], a[:, c, 1]
        print(f"  {name:2}  lattice peak mean {peak.mean():6.2f} dB  median {np.median(peak):6.2f}  max {peak.max():6.2f}"
              f"   |  periodic amplitude mean {amp.mean():5.2f}/255  max {amp.max():5.2f}/255")


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    if args[0] == "--selftest":
        for amplitude in (0.0, 0.5 / 255, 1 / 255, 2 / 255):
            per_image = []
            for path in images(args[1]):
                planes = ycbcr(Image.open(path))
                h, w = planes.shape[1:]
                yy, xx = np.mgrid[0:h, 0:w]
                pattern = amplitude * np.where((yy // 2 + xx // 2) % 2 == 0, 1.0, -1.0) * np.where((yy + xx) % 2 == 0, 1.0, 0.5)
                per_image.append(scores(planes + pattern))
            report(f"{args[1]} + checkerboard of amplitude {amplitude * 255:.1f}/255", per_image)
        return
    for folder in args:
        report(folder, [scores(ycbcr(Image.open(p))) for p in images(folder)])


if __name__ == "__main__":
    main()
