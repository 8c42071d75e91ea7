"""Image converter: decode, resize, normalize, layout; bombs refused from the header; broken files refused."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from joules.bundle import Preprocess
from joules.errors import InputError
from joules.runtime.inputs import ImageConverter, header_size
from tests.runtime.inputs.samples import jpeg_with_size, png, png_bomb

ROOT = Path(__file__).resolve().parents[3]


def gray(size: tuple[int, int] = (8, 8), **kw: object) -> ImageConverter:
    return ImageConverter(input="image", size=size, channels=1, mean=(0.0,), std=(1.0,), **kw)  # type: ignore[arg-type]


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def test_nearest_upscale_comes_back_to_the_original_pixels() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    for factor in (1, 4, 12):
        big = Image.fromarray(small).resize((8 * factor, 8 * factor), Image.Resampling.NEAREST)
        x = gray().admit(encode(big))
        assert x.shape == (1, 8, 8) and x.dtype == np.float32
        # Antialiased bilinear over constant blocks: the block value, up to edge blending.
        assert np.abs(x[0] * 255 - small).mean() < (1 if factor == 1 else 40)


def test_layout_channels_and_normalization() -> None:
    data = png(20, 10, "RGB", (255, 0, 51))
    nchw = ImageConverter(input="x", size=(4, 6), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).admit(data)
    assert nchw.shape == (3, 4, 6)
    np.testing.assert_allclose(nchw[:, 0, 0], [1.0, -1.0, 51 / 255 * 2 - 1], atol=1e-6)
    nhwc = ImageConverter(input="x", size=(4, 6), layout="NHWC").admit(data)
    assert nhwc.shape == (4, 6, 3)
    np.testing.assert_allclose(nhwc[0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    g = gray(size=(5, 5)).admit(data)  # RGB file, grayscale model
    assert g.shape == (1, 5, 5)


def test_crop_keeps_the_centre_stretch_keeps_everything() -> None:
    im = Image.new("L", (30, 10), 0)
    im.paste(255, (10, 0, 20, 10))  # white centre third
    data = encode(im)
    crop = gray(size=(10, 10)).admit(data)[0]
    assert crop.min() > 0.9  # only the white centre is left
    stretch = gray(size=(10, 10), resize="stretch").admit(data)[0]
    assert stretch[:, 0].max() < 0.1 and stretch[:, 5].min() > 0.9


def test_jpeg_rgba_and_palette_files() -> None:
    assert gray().admit(encode(Image.new("RGB", (64, 48), (10, 20, 30)), "JPEG")).shape == (1, 8, 8)
    assert gray().admit(png(9, 9, "RGBA", (0, 0, 0, 0))).shape == (1, 8, 8)
    assert gray().admit(encode(Image.new("P", (9, 9), 3))).shape == (1, 8, 8)


def test_base64_value() -> None:
    data = png(8, 8)
    assert gray().admit({"b64": base64.b64encode(data).decode()}).shape == (1, 8, 8)
    with pytest.raises(InputError, match="not valid base64"):
        gray().admit({"b64": "***"})
    with pytest.raises(InputError, match=r'bytes or \{"b64"'):
        gray().admit("image.png")
    with pytest.raises(InputError, match="empty"):
        gray().admit(b"")


def test_truncated_and_foreign_files_are_refused() -> None:
    data = png(32, 32, "RGB", (1, 2, 3))
    noisy = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    for cut in (noisy[: len(noisy) // 2], data[:40]):
        with pytest.raises(InputError, match="cannot be decoded"):
            gray().admit(cut)
    with pytest.raises(InputError, match="not a PNG or JPEG"):
        gray().admit(encode(Image.new("L", (8, 8)), "BMP"))
    with pytest.raises(InputError, match="not a PNG or JPEG"):
        gray().admit(b"GIF89a not really")


def test_header_size_reads_png_and_jpeg() -> None:
    assert header_size(png(31, 17)) == (31, 17)
    assert header_size(encode(Image.new("RGB", (33, 21)), "JPEG")) == (33, 21)
    assert header_size(jpeg_with_size(40_000, 30_000)) == (40_000, 30_000)
    assert header_size(b"\x89PNG\r\n\x1a\n") is None
    assert header_size(b"\xff\xd8\xff") is None
    assert header_size(b"plain text") is None


@pytest.mark.parametrize(
    ("data", "pixels"),
    [
        (png_bomb(30_000, 30_000), "900,000,000"),
        (png_bomb(10_000, 10_000), "100,000,000"),  # Pillow itself only warns at this size
        (jpeg_with_size(60_000, 60_000), "3,600,000,000"),
        (jpeg_with_size(6_000, 5_000), "30,000,000"),  # under Pillow's limits, over joules'
    ],
)
def test_pixel_bombs_are_refused_from_the_header(data: bytes, pixels: str) -> None:
    assert len(data) < 1_000_000
    with pytest.raises(InputError, match=f"= {pixels} pixels, over the limit of 25,000,000"):
        gray().admit(data)


def test_the_limit_is_a_setting() -> None:
    with pytest.raises(InputError, match="over the limit of 100"):
        gray(max_pixels=100).admit(png(11, 10))
    assert gray(max_pixels=110).admit(png(11, 10)).shape == (1, 8, 8)


def test_pillows_own_guard_is_an_input_error_too() -> None:
    # With joules' limit lifted, Pillow's DecompressionBombError (over 2 x 89.5 MP) still refuses, at open.
    with pytest.raises(InputError, match="too many pixels to decode safely"):
        gray(max_pixels=10**12).admit(png_bomb(30_000, 30_000))


def test_refusing_bombs_allocates_nothing(tmp_path: Path) -> None:
    """A fresh process refuses a 900 MP PNG and a 3.6 GP JPEG; its peak memory stays that of its imports."""
    (tmp_path / "bomb.png").write_bytes(png_bomb(30_000, 30_000))
    (tmp_path / "bomb.jpg").write_bytes(jpeg_with_size(60_000, 60_000))
    code = f"""
import resource, sys
from pathlib import Path
from joules.errors import InputError
from joules.runtime.inputs import ImageConverter
c = ImageConverter(input="x", size=(8, 8), channels=1, mean=(0.0,), std=(1.0,), max_pixels=10**12)
import PIL.Image, PIL.PngImagePlugin, PIL.JpegImagePlugin, numpy
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name in ("bomb.png", "bomb.jpg"):
    try:
        c.admit(Path({str(tmp_path)!r}, name).read_bytes())
        sys.exit(name + " accepted")
    except InputError:
        pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout.strip()) < 50, out.stdout  # MiB over the imports; decoding would take 900+


def test_from_spec() -> None:
    pre = Preprocess(kind="image", input="image", size=8, channels=1, mean=0.5, std=0.25)
    c = ImageConverter.from_spec(pre)
    assert c.size == (8, 8) and c.mean == (0.5,) and c.std == (0.25,)
    np.testing.assert_allclose(c.admit(png(8, 8, "L", 255)), 2.0)
