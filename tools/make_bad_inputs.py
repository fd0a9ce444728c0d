"""Writes the odd-but-valid image files the reliability tests feed to cyclestudio, which the
`image` crate cannot encode itself: a CMYK JPEG and a palette PNG with transparency.
Run from the repo root: python3 tools/make_bad_inputs.py (needs Pillow)."""
from PIL import Image

out = "tests/fixtures/bad_inputs/"
cmyk = Image.new("CMYK", (23, 17))
for x in range(23):
    for y in range(17):
        cmyk.putpixel((x, y), (x * 10, y * 12, 40, 10))
cmyk.save(out + "cmyk.jpg", quality=90)

pal = Image.new("P", (19, 13))
pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
for x in range(19):
    for y in range(13):
        pal.putpixel((x, y), (x + y) % 4)
pal.info["transparency"] = 0
pal.save(out + "palette_transparent.png", transparency=0)
print("wrote", out + "cmyk.jpg", out + "palette_transparent.png")
