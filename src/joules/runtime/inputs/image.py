"""PNG or JPEG bytes -> a normalized array in the model's layout.

Decoding is the costly, dangerous step: a PNG of 30,000 x 30,000 black pixels
is a few hundred kB on disk and 2.7 GB once decoded. So the pixel count is
checked from the file's header before anything is decoded: first by reading
the PNG IHDR chunk or the JPEG SOF segment here (no Pillow involved), then
from what ``Image.open`` read (it parses the header only; ``load`` is never
called before the check). joules' limit (``preprocess.max_pixels``, default
25 megapixels) is far below Pillow's own guard (a warning at 89.5 MP, an
error at twice that), and Pillow's DecompressionBombError or -Warning (the
latter raised under ``-W error``) become the same refusal.

Then: EXIF orientation applied, converted to grayscale or RGB, resized
(``crop``: shorter side to the model's size, then the centre; ``stretch``:
straight to size) with Pillow's antialiased bilinear filter, scaled to
[0, 1], normalized with the spec's mean and std, laid out NCHW or NHWC.
A JPEG is decoded at a reduced scale when it is much larger than needed
(``draft``), so a 25 MP photo costs a fraction of its full decode.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from joules.bundle.inputs import DEFAULT_MAX_PIXELS
from joules.errors import InputError, require

FORMATS = ("PNG", "JPEG")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (ITU T.81 table B.1): SOF0-3, 5-7, 9-11, 13-15 carry the frame's height and width.
_JPEG_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])


@dataclass(frozen=True, kw_only=True)
class ImageConverter:
    """Image bytes -> one float array [C, H, W] or [H, W, C]; batches -> ``{input: [N, ...]}``."""

    input: str
    size: tuple[int, int]  # (height, width)
    layout: str = "NCHW"
    channels: int = 3
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: str = "crop"
    dtype: str = "float32"

    @classmethod
    def from_spec(cls, pre: Any) -> ImageConverter:
        """From a bundle's ``Preprocess`` of kind ``image``."""
        return cls(
            input=pre.input,
            size=(pre.size[0], pre.size[1]),
            layout=pre.layout,
            channels=pre.channels,
            mean=tuple(pre.mean),
            std=tuple(pre.std),
            max_pixels=pre.max_pixels,
            resize=pre.resize,
            dtype=pre.dtype,
        )

    def admit(self, value: Any) -> np.ndarray:
        """Image bytes (or ``{"b64": "..."}``) -> the normalized array of one image."""
        data = image_bytes(value)
        dims = header_size(data)
        if dims is not None:
            self._check_pixels(*dims)
        image = self._decode(data)
        x: np.ndarray = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        if x.ndim == 2:
            x = x[:, :, None]
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def batch(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Admitted images -> the model's feeds."""
        if not images:
            raise InputError("empty batch: send at least one image")
        return {self.input: np.stack(images)}

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise InputError(
                f"the image is {width:,} x {height:,} = {width * height:,} pixels, over the limit of "
                f"{self.max_pixels:,} (preprocess.max_pixels); send a smaller image"
            )
        if width < 1 or height < 1:
            raise InputError(f"the image is {width} x {height} pixels: it has no pixels")

    def _decode(self, data: bytes) -> Any:
        require("PIL", "image")
        from PIL import Image, ImageOps, UnidentifiedImageError

        mode = "L" if self.channels == 1 else "RGB"
        h, w = self.size
        try:
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as im:
                # Image.open read the header only: check Pillow's view of the size before any pixel is decoded.
                self._check_pixels(*im.size)
                if im.format == "JPEG":
                    im.draft(mode, (w, h))  # decode at 1/2, 1/4 or 1/8 scale when that still covers the target
                upright = ImageOps.exif_transpose(im).convert(mode)
                return self._resized(upright, Image.Resampling.BILINEAR)
        except UnidentifiedImageError:
            if data.startswith((_PNG_SIGNATURE, b"\xff\xd8")):
                raise InputError("the image cannot be decoded (truncated or corrupt): incomplete header") from None
            raise InputError(f"the image is not a {' or '.join(FORMATS)} file (it starts with {data[:8]!r})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise InputError(f"the image has too many pixels to decode safely: {e}") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            # Pillow reports a truncated or corrupt file as OSError ("image file is truncated") or SyntaxError.
            raise InputError(f"the image cannot be decoded (truncated or corrupt): {e}") from None

    def _resized(self, im: Any, resample: Any) -> Any:
        h, w = self.size
        if self.resize == "stretch" or im.size == (w, h):
            return im.resize((w, h), resample) if im.size != (w, h) else im
        # Shorter side to the target, then the centre (torchvision's Resize + CenterCrop).
        scale = max(w / im.width, h / im.height)
        sw, sh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
        im = im.resize((sw, sh), resample)
        left, top = (sw - w) // 2, (sh - h) // 2
        return im.crop((left, top, left + w, top + h))


def image_bytes(value: Any) -> bytes:
    """The file's bytes from raw bytes or ``{"b64": "..."}`` (JSON's way to carry them)."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, Mapping) and set(value) == {"b64"}:
        b64 = value["b64"]
        if not isinstance(b64, str | bytes):
            raise InputError(f"image.b64 must be a base64 string, got {type(b64).__name__}")
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputError(f"image.b64 is not valid base64: {e}") from None
    else:
        raise InputError(
            f'an image must be the file\'s bytes or {{"b64": "<base64 of the file>"}}, got {type(value).__name__}'
        )
    if not data:
        raise InputError("the image is empty (0 bytes)")
    return data


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None when the header is not one of those."""
    if data.startswith(_PNG_SIGNATURE):
        # The first chunk must be IHDR: length (4), type (4), width (4), height (4), big-endian (PNG spec 11.2.2).
        if len(data) >= 24 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        if marker == 0xDA or length < 2:  # start of scan before any frame header: not a JPEG we can size
            return None
        i += 2 + length
    return None
