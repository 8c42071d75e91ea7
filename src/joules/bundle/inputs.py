"""What each input kind needs from ``preprocess:`` in joules.yaml, and its checks.

One kind per bundle says what a request carries and how it becomes the
model's feeds:

| kind | a request carries | the model gets |
|---|---|---|
| ``text`` | a string (``text_field``) | token ids from ``tokenizer`` |
| ``tensors`` | the model inputs themselves | them, checked |
| ``email`` | a raw RFC 822 message (field ``email``) | sender, subject and body as one text, then tokens |
| ``tabular`` | named numeric ``features`` | one float tensor ``input`` [N, len(features)] |
| ``image`` | PNG or JPEG bytes (field ``image``) | one float tensor ``input`` in ``layout`` |

The settings sit flat under ``preprocess:`` (``features``, ``size``...); a
setting of another kind is refused rather than ignored, so a typo in the kind
cannot silently drop what the author wrote. Defaults are filled in here, so
the bundle records the exact settings it ran with.
"""

from __future__ import annotations

import math
from typing import Any

from joules.errors import BundleError

KINDS = ("text", "tensors", "email", "tabular", "image")
# Kinds whose model reads token ids made by the bundle's tokenizer.
TOKENIZED_KINDS = ("text", "email")
# Kinds that fill one float graph input named by ``preprocess.input``.
ARRAY_KINDS = ("tabular", "image")

MISSING_POLICIES = ("error", "fill", "nan")
FLOAT_DTYPES = ("float32", "float16", "float64")
LAYOUTS = ("NCHW", "NHWC")
RESIZE_MODES = ("crop", "stretch")
EMAIL_READS = ("from", "subject", "body")
EMAIL_PARTS = ("text/plain", "text/html")

# 25 megapixels: a 5,000 x 5,000 photo decodes to 75 MB of RGB; Pillow's own guard only warns at 89.5 MP
# (PIL.Image.MAX_IMAGE_PIXELS) and refuses at twice that, so joules refuses far earlier, from the header.
DEFAULT_MAX_PIXELS = 25_000_000
MAX_IMAGE_SIDE = 4096  # the model's input side, not the file's
# Bytes of a raw message that are parsed; the rest (in practice attachments, which are skipped anyway) is not read.
DEFAULT_EMAIL_MAX_BYTES = 1 << 20
# MIME parts visited per message: real mail has a handful; a hostile one may have thousands.
DEFAULT_EMAIL_MAX_PARTS = 100

# Settings that belong to one kind (or two), with the default each kind gets when the author leaves one out.
KIND_SETTINGS: dict[str, dict[str, Any]] = {
    # text and email: of the max_length tokens a long text gives the model, how many come from its end
    # (the rest from its start). 0 reads the start only. Mail ends in signatures, footers and unsubscribe
    # links, which say much about spam (docs/inputs.md, "The e-mail detector").
    "tail_tokens": {"text": 0, "email": 0},
    "features": {"tabular": None},
    "missing": {"tabular": "error"},
    "fill_value": {"tabular": None},
    "input": {"tabular": None, "image": None},
    "dtype": {"tabular": "float32", "image": "float32"},
    "size": {"image": None},
    "layout": {"image": "NCHW"},
    "channels": {"image": 3},
    "mean": {"image": None},
    "std": {"image": None},
    "max_pixels": {"image": DEFAULT_MAX_PIXELS},
    "resize": {"image": "crop"},
    "reads": {"email": list(EMAIL_READS)},
    "parts": {"email": list(EMAIL_PARTS)},
    "max_bytes": {"email": DEFAULT_EMAIL_MAX_BYTES},
    "max_parts": {"email": DEFAULT_EMAIL_MAX_PARTS},
}


def resolve(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    """Validated settings of ``kind``: ``given`` (None = not set) with defaults filled in.

    Raises BundleError naming the setting, the value and what would be accepted.
    """
    if kind not in KINDS:
        raise BundleError(f"preprocess.kind {kind!r} is not one of {list(KINDS)}")
    out: dict[str, Any] = {}
    for name, defaults in KIND_SETTINGS.items():
        value = given.get(name)
        if kind not in defaults:
            if value is not None:
                owners = " or ".join(defaults)
                raise BundleError(
                    f"preprocess.{name} applies to kind {owners}, not {kind!r}; remove it or set preprocess.kind"
                )
            out[name] = None
            continue
        out[name] = defaults[kind] if value is None else value
    if kind in TOKENIZED_KINDS:
        out["tail_tokens"] = _count("tail_tokens", out["tail_tokens"])
    if kind == "tabular":
        _tabular(out)
    elif kind == "image":
        _image(out)
    elif kind == "email":
        _email(out)
    if kind in ARRAY_KINDS:
        _graph_input(kind, out)
    return out


def _graph_input(kind: str, s: dict[str, Any]) -> None:
    if not isinstance(s["input"], str) or not s["input"]:
        raise BundleError(
            f"preprocess.input is required for kind {kind}: the name of the graph input it fills, got {s['input']!r}"
        )
    if s["dtype"] not in FLOAT_DTYPES:
        raise BundleError(f"preprocess.dtype {s['dtype']!r} is not one of {list(FLOAT_DTYPES)}")


def _tabular(s: dict[str, Any]) -> None:
    features = s["features"]
    if not isinstance(features, list | tuple) or not features:
        raise BundleError(
            "preprocess.features is required for kind tabular: the feature column names in the model's input order, "
            f"got {features!r}"
        )
    for f in features:
        if not isinstance(f, str) or not f.strip():
            raise BundleError(f"preprocess.features must be non-empty strings (quote numbers in YAML), got {f!r}")
    dupes = sorted({f for f in features if features.count(f) > 1})
    if dupes:
        raise BundleError(f"preprocess.features names {dupes} more than once; each column feeds one position")
    s["features"] = list(features)
    if s["missing"] not in MISSING_POLICIES:
        raise BundleError(f"preprocess.missing {s['missing']!r} is not one of {list(MISSING_POLICIES)}")
    if s["missing"] == "fill":
        fill = 0.0 if s["fill_value"] is None else s["fill_value"]
        if isinstance(fill, bool) or not isinstance(fill, int | float) or not math.isfinite(fill):
            raise BundleError(f"preprocess.fill_value must be a finite number, got {fill!r}")
        s["fill_value"] = float(fill)
    elif s["fill_value"] is not None:
        raise BundleError(f"preprocess.fill_value applies to missing: fill, not missing: {s['missing']}")


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BundleError(f"preprocess.{name} must be a whole number >= 0, got {value!r}")
    return value


def _positive_int(name: str, value: Any, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high is not None and value > high):
        bound = f" and at most {high:,}" if high is not None else ""
        raise BundleError(f"preprocess.{name} must be a whole number >= 1{bound}, got {value!r}")
    return value


def _image(s: dict[str, Any]) -> None:
    size = s["size"]
    if size is None:
        raise BundleError("preprocess.size is required for kind image: the model's input side, e.g. 224 or [224, 224]")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not isinstance(size, list | tuple) or len(size) != 2:
        raise BundleError(f"preprocess.size must be a number or [height, width], got {s['size']!r}")
    s["size"] = [_positive_int("size", v, MAX_IMAGE_SIDE) for v in size]
    if s["layout"] not in LAYOUTS:
        raise BundleError(f"preprocess.layout {s['layout']!r} is not one of {list(LAYOUTS)}")
    if s["channels"] not in (1, 3):
        raise BundleError(f"preprocess.channels must be 1 (grayscale) or 3 (RGB), got {s['channels']!r}")
    for name, default in (("mean", 0.0), ("std", 1.0)):
        v = s[name]
        if v is None:
            v = [default]
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list | tuple) or len(v) not in (1, s["channels"]):
            raise BundleError(
                f"preprocess.{name} must be one number or one per channel ({s['channels']}), got {s[name]!r}"
            )
        for x in v:
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise BundleError(f"preprocess.{name} values must be finite numbers, got {x!r}")
            if name == "std" and x <= 0:
                raise BundleError(f"preprocess.std values must be > 0, got {x!r}")
        s[name] = [float(x) for x in v] * (s["channels"] if len(v) == 1 else 1)
    s["max_pixels"] = _positive_int("max_pixels", s["max_pixels"])
    if s["resize"] not in RESIZE_MODES:
        raise BundleError(
            f"preprocess.resize {s['resize']!r} is not one of {list(RESIZE_MODES)} "
            "(crop: shorter side to size, then the centre; stretch: straight to size)"
        )


def _subset(name: str, value: Any, allowed: tuple[str, ...]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value or any(v not in allowed for v in value):
        raise BundleError(f"preprocess.{name} must be a non-empty list drawn from {list(allowed)}, got {value!r}")
    if len(set(value)) != len(value):
        raise BundleError(f"preprocess.{name} names an entry twice: {value!r}")
    return list(value)


def _email(s: dict[str, Any]) -> None:
    s["reads"] = _subset("reads", s["reads"], EMAIL_READS)
    s["parts"] = _subset("parts", s["parts"], EMAIL_PARTS)
    s["max_bytes"] = _positive_int("max_bytes", s["max_bytes"])
    s["max_parts"] = _positive_int("max_parts", s["max_parts"])


def array_shape(pre: Any) -> list[int]:
    """One row's shape for a tabular or image ``Preprocess`` (without the batch axis)."""
    if pre.kind == "tabular":
        return [len(pre.features)]
    h, w = pre.size
    return [pre.channels, h, w] if pre.layout == "NCHW" else [h, w, pre.channels]
