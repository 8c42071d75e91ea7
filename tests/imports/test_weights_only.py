"""``joules import DIR --weights-only``: headers checked, files registered, no weights loaded, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from joules.bundle import Task
from joules.errors import BundleError
from joules.imports import import_model
from joules.registry import Registry
from joules.settings import Settings
from tests.conftest import minilm_dir
from tests.helpers import run_joules
from tests.parallel.llama import make_tiny_llama


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = make_tiny_llama(tmp_path_factory.mktemp("wo") / "llama", tie_word_embeddings=True)
    shutil.copyfile(minilm_dir() / "tokenizer.json", d / "tokenizer.json")
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}"}))
    return d


def test_weights_only_import_registers_the_weights_as_they_are(tmp_path: Path, llama_dir: Path) -> None:
    home = tmp_path / "home"
    proc = run_joules("import", str(llama_dir), "--name", "big", "--weights-only", "--json", home=home, check=True)
    info = json.loads(proc.stdout)
    assert info["task"] == "text-generation"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(info["files"])
    assert "model.onnx" not in info["files"]
    assert info["lineage"][0]["kind"] == "huggingface-weights-only"
    bundle = Registry(Settings(home=home)).load("big:1")
    gen = bundle.spec.generation
    assert bundle.spec.task is Task.TEXT_GENERATION and gen is not None and gen.weights_only
    assert (gen.num_layers, gen.num_heads, gen.num_kv_heads, gen.eos_token_ids) == (2, 6, 3, (2,))
    assert gen.chat_template == "chat_template.jinja"
    assert (bundle.path / "model.safetensors").read_bytes() == (llama_dir / "model.safetensors").read_bytes()


def test_weights_only_import_never_imports_torch(tmp_path: Path, llama_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from joules.imports import import_model; "
        "from joules.registry import Registry; from joules.settings import Settings; "
        f"import_model(Path({str(llama_dir)!r}), 'big', Registry(Settings(home=Path({str(tmp_path)!r}))), "
        "weights_only=True); "
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path: Path, llama_dir: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(llama_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["intermediate_size"] = 64  # the weights say 100
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"mlp.gate_proj.weight.*shape \[100, 96\].*\[64, 96\]"):
        import_model(bad, "bad", Registry(Settings(home=tmp_path / "h")), weights_only=True)


def test_a_classifier_is_not_a_causal_lm(tmp_path: Path, tiny_hf_dir: Path) -> None:
    proc = run_joules("import", str(tiny_hf_dir), "--name", "x", "--weights-only", home=tmp_path / "h")
    assert proc.returncode == 2
    assert "not a Llama causal LM" in proc.stderr and proc.stderr.count("\n") == 1


def test_rules_do_not_apply(tmp_path: Path, llama_dir: Path) -> None:
    with pytest.raises(BundleError, match="--rules and --spec do not apply"):
        import_model(llama_dir, "big", Registry(Settings(home=tmp_path)), weights_only=True, rules={"rules": []})
