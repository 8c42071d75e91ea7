"""Input kinds' converters: a raw request value -> what the model reads (or InputError with the reason).

Each converter is built from a bundle's ``preprocess`` settings (``from_spec``)
and has ``admit(raw) -> converted`` (one value; InputError names what is
wrong) and, for the array kinds, ``batch(converted) -> feeds``. They use numpy
and the stdlib; Pillow is imported only when an image is decoded.

| kind | converter | admit takes | admit gives |
|---|---|---|---|
| email | EmailConverter | a raw RFC 822 message (str or bytes) | the text the model reads |
| tabular | TabularConverter | a mapping column -> value | float32 vector [F] |
| image | ImageConverter | PNG/JPEG bytes or {"b64": ...} | float array [C, H, W] or [H, W, C] |
"""

from joules.runtime.inputs.email import EmailConverter, EmailText, html_to_text
from joules.runtime.inputs.image import ImageConverter, header_size, image_bytes
from joules.runtime.inputs.tabular import TabularConverter

__all__ = [
    "EmailConverter",
    "EmailText",
    "ImageConverter",
    "TabularConverter",
    "header_size",
    "html_to_text",
    "image_bytes",
]
