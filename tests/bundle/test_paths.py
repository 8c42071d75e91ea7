"""Every file a bundle names must be inside it: joules.yaml paths and ONNX external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from joules.bundle import Bundle, BundleSpec
from joules.errors import BundleError
from joules.registry import Registry
from joules.runtime import Predictor
from joules.settings import Settings
from tests.helpers import numeric_onnx, run_joules


def tensor_bundle(root: Path, **spec: object) -> Path:
    """A valid tensor bundle at ``root`` (x [N, 4] -> logits [N, 2]); ``spec`` overrides joules.yaml fields."""
    root.mkdir(parents=True)
    numeric_onnx(root / "model.onnx", features=4, classes=2)
    data = {
        "name": "lin",
        "task": "classification",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "preprocess": {"kind": "tensors"},
        "postprocess": {"output": "logits", "labels": ["low", "high"]},
        **spec,
    }
    BundleSpec.from_dict(data).write(root)
    return root


def external_data(model_file: Path, location: str) -> None:
    """Mark the weight ``w`` of ``model_file`` as stored in ``location`` (its bytes written there if inside)."""
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(model_file))
    w = next(t for t in model.graph.initializer if t.name == "w")
    raw = onnx.numpy_helper.to_array(w).tobytes()
    set_external_data(w, location=location, offset=0, length=len(raw))
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(model, str(model_file))
    target = (model_file.parent / location).resolve()
    if target.is_relative_to(model_file.parent.resolve()):
        target.write_bytes(raw)


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("model", "/etc/hostname", "absolute path"),
        ("model", "../outside/model.onnx", "leads outside the bundle"),
        ("preprocess", {"kind": "text", "tokenizer": "/etc/passwd"}, "absolute path"),
        ("files", {"dataset": "../../etc/passwd"}, "leads outside the bundle"),
        ("files", {"dataset": "~/notes.txt"}, "absolute path"),
    ],
)
def test_a_path_outside_the_bundle_is_refused(tmp_path: Path, field: str, value: object, why: str) -> None:
    (tmp_path / "outside").mkdir()
    numeric_onnx(tmp_path / "outside" / "model.onnx")
    bundle = tensor_bundle(tmp_path / "b", **{field: value})
    with pytest.raises(BundleError, match=why) as e:
        Bundle.load(bundle)
    assert "inside the bundle" in str(e.value)


def test_a_symlinked_model_leading_outside_is_refused(tmp_path: Path) -> None:
    bundle = tensor_bundle(tmp_path / "b")
    numeric_onnx(tmp_path / "real.onnx")
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to(tmp_path / "real.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(bundle)


def test_external_data_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = tensor_bundle(tmp_path / "b")
    external_data(bundle / "model.onnx", "../../../../etc/passwd")
    with pytest.raises(BundleError, match=r"external data of 'model.onnx' '.*etc/passwd' leads outside the bundle"):
        Bundle.load(bundle)
    proc = run_joules("import", str(bundle), "--name", "ext", home=tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    assert "outside the bundle" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "home" / "models" / "ext").exists()


def test_external_data_inside_the_bundle_is_registered_checked_and_served(tmp_path: Path) -> None:
    bundle = tensor_bundle(tmp_path / "b")
    external_data(bundle / "model.onnx", "weights.data")
    registry = Registry(Settings(home=tmp_path / "home"))
    mv = registry.register(bundle, "ext")
    assert "weights.data" in mv.checksums  # covered by the registry's sha256 check
    predictor = Predictor(registry.load("ext:1"))
    x = np.ones((2, 4), np.float32)
    assert predictor.predict_tensors({"x": x}).probabilities.shape == (2, 2)


def test_missing_external_data_is_refused(tmp_path: Path) -> None:
    bundle = tensor_bundle(tmp_path / "b")
    external_data(bundle / "model.onnx", "weights.data")
    (bundle / "weights.data").unlink()
    with pytest.raises(BundleError, match=r"weights\.data.*missing"):
        Bundle.load(bundle)


def test_import_of_a_bundle_whose_model_is_outside_says_why(tmp_path: Path) -> None:
    bundle = tensor_bundle(tmp_path / "b")
    (tmp_path / "elsewhere").mkdir()
    (bundle / "model.onnx").rename(tmp_path / "elsewhere" / "model.onnx")
    spec = yaml.safe_load((bundle / "joules.yaml").read_text())
    spec["model"] = str(tmp_path / "elsewhere" / "model.onnx")
    (bundle / "joules.yaml").write_text(yaml.safe_dump(spec))
    proc = run_joules("import", str(bundle), "--name", "esc", home=tmp_path / "home")
    assert proc.returncode == 2
    assert "absolute path, outside the bundle" in proc.stderr and "Traceback" not in proc.stderr


def test_onnx_runtime_failing_to_load_a_model_is_a_bundle_error(tmp_path: Path) -> None:
    from joules.runtime import OnnxExecutor, RuntimeOptions

    (tmp_path / "model.onnx").write_bytes(b"\x08\x07 this is not a graph")
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        OnnxExecutor(tmp_path / "model.onnx", RuntimeOptions())
