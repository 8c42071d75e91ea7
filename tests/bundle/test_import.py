from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.registry import Registry
from joules.runtime import Predictor
from joules.settings import Settings
from tests.bundle.test_safety import Boom
from tests.helpers import numeric_onnx, run_joules


def test_huggingface_directory_is_exported_and_registered(tmp_path: Path, tiny_hf_dir: Path) -> None:
    home = tmp_path / "home"
    proc = run_joules("import", str(tiny_hf_dir), "--name", "tiny", "--json", home=home, check=True)
    info = json.loads(proc.stdout)
    assert info["name"] == "tiny" and info["version"] == 1
    assert info["lineage"][0]["kind"] == "huggingface"
    assert info["lineage"][0]["onnx_parity_max_abs"] <= 1e-4
    assert {"model.onnx", "tokenizer.json", "config.json", "model.safetensors"} <= set(info["files"])
    bundle = Registry(Settings(home=home)).load("tiny:1")
    assert bundle.spec.labels == ("ham", "spam")

    # ONNX and torch agree through the whole Predictor path (tokenizer, padding, grouping).
    import torch

    from joules.train import load_sequence_classifier
    from joules.train.finetune import predict_logits

    predictor = Predictor(bundle)
    texts = ["hello there", "WIN a FREE prize now, call 0800 123 456 to claim!!!", "ok", "see you at 5 then"]
    probs = predictor.predict_texts(texts).probabilities
    model = load_sequence_classifier(tiny_hf_dir)
    logits = predict_logits(model, predictor.text, texts)  # type: ignore[arg-type]
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_huggingface_directory_with_a_pickle_is_refused_unopened(tmp_path: Path, tiny_hf_dir: Path) -> None:
    hf = tmp_path / "hf"
    shutil.copytree(tiny_hf_dir, hf)
    sentinel = tmp_path / "PICKLE_WAS_OPENED"
    with (hf / "pytorch_model.bin").open("wb") as f:
        pickle.dump(Boom(sentinel), f)
    proc = run_joules("import", str(hf), "--name", "evil", home=tmp_path / "home")
    assert proc.returncode == 2
    assert "pytorch_model.bin" in proc.stderr and "Traceback" not in proc.stderr
    assert not sentinel.exists()
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "n" * 200, "tab\there"])
def test_import_with_a_bad_name_writes_nothing(tmp_path: Path, tiny_hf_dir: Path, bad: str) -> None:
    home = tmp_path / "home"
    proc = run_joules("import", str(tiny_hf_dir), "--name", bad, home=home)
    assert proc.returncode == 2
    assert "model name" in proc.stderr and "Traceback" not in proc.stderr
    assert not home.exists()


def test_onnx_file_with_a_spec_imports_a_numeric_model(tmp_path: Path) -> None:
    w, b = numeric_onnx(tmp_path / "linear.onnx")
    (tmp_path / "spec.yaml").write_text(
        "task: classification\npreprocess: {kind: tensors}\n"
        "postprocess: {output: logits, labels: [setosa, versicolor, virginica]}\n"
        "rules:\n  rules:\n    - when: virginica >= 0.5\n      action: alert\n  default: ignore\n"
    )
    home = tmp_path / "home"
    run_joules(
        "import",
        str(tmp_path / "linear.onnx"),
        "--spec",
        str(tmp_path / "spec.yaml"),
        "--name",
        "iris",
        "--promote",
        home=home,
        check=True,
    )
    bundle = Registry(Settings(home=home)).load("iris")
    assert [i.name for i in bundle.spec.inputs] == ["x"]
    predictor = Predictor(bundle)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    out = predictor.predict({"x": x})
    logits = x @ w + b
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(out.probabilities, expected, rtol=1e-5)
    assert out.actions == ["alert" if p[2] >= 0.5 else "ignore" for p in expected]


def test_onnx_file_needs_a_spec(tmp_path: Path) -> None:
    numeric_onnx(tmp_path / "linear.onnx")
    proc = run_joules("import", str(tmp_path / "linear.onnx"), "--name", "x", home=tmp_path / "home")
    assert proc.returncode == 2 and "--spec" in proc.stderr


def test_spec_that_disagrees_with_the_graph_is_refused(tmp_path: Path) -> None:
    numeric_onnx(tmp_path / "linear.onnx")
    (tmp_path / "spec.yaml").write_text(
        "task: classification\npreprocess: {kind: tensors}\npostprocess: {output: probs, labels: [a, b, c]}\n"
    )
    proc = run_joules(
        "import",
        str(tmp_path / "linear.onnx"),
        "--spec",
        str(tmp_path / "spec.yaml"),
        "--name",
        "x",
        home=tmp_path / "home",
    )
    assert proc.returncode == 2 and "'probs' is not a graph output" in proc.stderr


def test_bundle_directory_import_appends_lineage(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    home = tmp_path / "home"
    proc = run_joules("import", str(tiny_bundle_dir), "--name", "copy", "--json", home=home, check=True)
    info = json.loads(proc.stdout)
    assert [e["step"] for e in info["lineage"]] == ["train", "import"]
    assert Bundle.load(Path(info["path"])).spec.metrics == Bundle.load(tiny_bundle_dir).spec.metrics


def test_yaml_booleans_as_labels_are_refused(tmp_path: Path) -> None:
    numeric_onnx(tmp_path / "linear.onnx", classes=2)
    (tmp_path / "spec.yaml").write_text(
        "task: classification\npreprocess: {kind: tensors}\npostprocess: {output: logits, labels: [no, yes]}\n"
    )
    proc = run_joules(
        "import",
        str(tmp_path / "linear.onnx"),
        "--spec",
        str(tmp_path / "spec.yaml"),
        "--name",
        "x",
        home=tmp_path / "home",
    )
    assert proc.returncode == 2 and "labels must be strings, got False" in proc.stderr and "quote" in proc.stderr
