"""Builds a picture of translations next to their inputs and truths: one row per image,
input | translation | truth, each scaled to a common height. Used for bench/*_examples.jpg.

    python3 tools/make_examples.py OUT.jpg INPUT_DIR TRANSLATED_DIR TRUTH_DIR NAME [NAME ...]

Each NAME is a file stem found in all three folders (any image extension). Needs Pillow.
"""
import glob
import sys

from PIL import Image


def find(folder, stem):
    hits = sorted(glob.glob(f"{folder}/{stem}.*"))
    if not hits:
        sys.exit(f"no image named {stem}.* in {folder}")
    return Image.open(hits[0]).convert("RGB")


def main():
    out, inputs, translated, truth, *names = sys.argv[1:]
    height = 200
    rows = []
    for stem in names:
        row = [find(d, stem) for d in (inputs, translated, truth)]
        rows.append([im.resize((im.width * height // im.height, height), Image.LANCZOS) for im in row])
    width = max(sum(im.width for im in row) for row in rows)
    sheet = Image.new("RGB", (width, height * len(rows)), "white")
    for r, row in enumerate(rows):
        x = 0
        for im in row:
            sheet.paste(im, (x, r * height))
            x += im.width
    sheet.save(out, quality=88)


if __name__ == "__main__":
    main()
