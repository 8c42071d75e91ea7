"""Small real models of the input kinds e-mail, tabular and image, registered in a JOULES_HOME for tests.

- ``mail``: the tiny trained spam model (a text model) served as kind ``email``: raw messages in;
- ``tab``: a linear classifier over named features ``a, b, c, d`` (graph input ``x`` [N, 4]);
- ``img``: an 8 x 8 grayscale classifier, ``light`` when the mean pixel is over one half, else ``dark``.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np

from joules.bundle import Bundle, BundleSpec, Preprocess
from joules.registry import Registry, Stage
from joules.settings import Settings
from tests.helpers import numeric_onnx

FEATURES = ["a", "b", "c", "d"]
TAB_LABELS = ["l0", "l1", "l2"]
IMG_LABELS = ["dark", "light"]
MAIL = (
    b"From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nSubject: lunch tomorrow\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nShall we meet at noon by the station?\r\n"
)
BROKEN_MAIL = b"\xff\xfe\x00\x9c" * 100  # no header field before the first blank line


def image_onnx(path: Path) -> None:
    """``image`` [N, 1, 8, 8] -> ``logits`` [N, 2] = 10 * (mean - 0.5) * [-1, 1]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((64, 2), dtype=np.float32)
    w[:, 0], w[:, 1] = -10.0 / 64, 10.0 / 64
    b = np.array([5.0, -5.0], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
        ],
        "brightness",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def png(value: int, side: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), value).save(buf, "PNG")
    return buf.getvalue()


def _spec(out: Path, d: dict[str, object]) -> None:
    BundleSpec.from_dict(d).write(out)


def tab_bundle(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """The tabular bundle ``tab`` written at ``out``; returns its (w, b)."""
    out.mkdir()
    w, b = numeric_onnx(out / "model.onnx", features=len(FEATURES), classes=len(TAB_LABELS))
    _spec(
        out,
        {
            "name": "tab",
            "task": "classification",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", len(FEATURES)]}],
            "preprocess": {"kind": "tabular", "input": "x", "features": FEATURES},
            "postprocess": {"output": "logits", "labels": TAB_LABELS},
        },
    )
    return w, b


def img_bundle(out: Path) -> None:
    """The image bundle ``img`` written at ``out``."""
    out.mkdir()
    image_onnx(out / "model.onnx")
    _spec(
        out,
        {
            "name": "img",
            "task": "classification",
            "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}],
            "preprocess": {"kind": "image", "input": "image", "size": 8, "channels": 1, "resize": "stretch"},
            "postprocess": {"output": "logits", "labels": IMG_LABELS},
        },
    )


def make_inputs_home(home: Path, tiny_bundle_dir: Path, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """Register ``mail``, ``tab`` and ``img`` (production) in ``home``; return the tabular model's (w, b)."""
    reg = Registry(Settings(home=home))
    mail = work / "mail"
    shutil.copytree(tiny_bundle_dir, mail)
    bundle = Bundle.load(mail)
    pre = bundle.spec.preprocess
    bundle.with_spec(preprocess=Preprocess(kind="email", tokenizer=pre.tokenizer, max_length=pre.max_length)).save()
    reg.register(mail, "mail", stage=Stage.PRODUCTION)
    w, b = tab_bundle(work / "tab")
    reg.register(work / "tab", "tab", stage=Stage.PRODUCTION)
    img_bundle(work / "img")
    reg.register(work / "img", "img", stage=Stage.PRODUCTION)
    return w, b


def tab_expected(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> list[str]:
    return [TAB_LABELS[i] for i in (np.asarray(x, dtype=np.float32) @ w + b).argmax(axis=1)]
