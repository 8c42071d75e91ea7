"""Importing causal language models as text-generation bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from joules.bundle import Bundle, Task
from joules.bundle.generation import decoder_graph_io
from joules.errors import BundleError, UnsafeFileError
from joules.imports import import_model
from joules.registry import Registry
from joules.settings import Settings
from tests.helpers import run_joules


def test_import_writes_a_text_generation_bundle_with_parity_in_its_lineage(tiny_llm_bundle: Path) -> None:
    bundle = Bundle.load(tiny_llm_bundle)
    spec = bundle.spec
    assert spec.task is Task.TEXT_GENERATION
    gen = spec.generation
    assert gen is not None and gen.num_layers == 2 and gen.num_kv_heads == 2 and gen.head_dim == 16
    assert gen.eos_token_ids == (2,) and gen.chat_template == "chat_template.jinja"
    parity = spec.lineage[-1]["parity"]
    assert parity["max_abs_logit_gap"] < 1e-3 and parity["greedy_identical"] is True
    assert set(parity["gaps"]) == {"prefill", "batched_decode", "chunked_prefill"}
    # The weights under their Hugging Face names, for the tensor-parallel engine.
    from safetensors import safe_open

    weights = bundle.file("weights")
    assert weights is not None and bundle.file("weights_config") is not None
    with safe_open(str(weights), "np") as f:
        assert "model.layers.0.self_attn.q_proj.weight" in set(f.keys())
    # The graph has the decoder interface and keeps its weights out of model.onnx.
    import onnx

    graph = onnx.load(str(bundle.model_path), load_external_data=False)
    want_in, want_out = decoder_graph_io(2)
    assert sorted(i.name for i in graph.graph.input) == sorted(want_in)
    assert sorted(o.name for o in graph.graph.output) == sorted(want_out)
    assert (tiny_llm_bundle / "model.onnx.data").stat().st_size > bundle.model_path.stat().st_size


def test_spec_round_trips_and_is_checked(tiny_llm_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_llm_bundle, tmp_path / "b"))
    data = yaml.safe_load((copy / "joules.yaml").read_text())
    data["generation"]["eos_token_ids"] = [10_000]
    (copy / "joules.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match="eos_token_ids"):
        Bundle.load(copy)
    data["generation"]["eos_token_ids"] = [2]
    data["generation"]["num_layers"] = 3  # the graph has two
    (copy / "joules.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match="interface of 3 layers"):
        Bundle.load(copy)
    data["generation"]["num_layers"] = 2
    data["rules"] = {"rules": [], "default": "x"}
    (copy / "joules.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(BundleError, match="decision rules"):
        Bundle.load(copy)


def test_registry_and_cli_import(tiny_llm_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = run_joules("import", str(tiny_llm_dir), "--name", "chat", "--promote", "--json", home=home, check=True)
    info = json.loads(proc.stdout)
    assert info["task"] == "text-generation" and info["stage"] == "production"
    mv = Registry(Settings(home=home)).get("chat")
    assert Bundle.load(mv.path).spec.generation is not None


def test_a_pickle_in_the_directory_is_refused_unopened(tiny_llm_dir: Path, tmp_path: Path) -> None:
    src = Path(shutil.copytree(tiny_llm_dir, tmp_path / "src"))
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsafeFileError):
        import_model(src, "chat", Registry(Settings(home=tmp_path / "home")))


def test_unsupported_architecture_is_a_clear_error(tiny_llm_dir: Path, tmp_path: Path) -> None:
    src = Path(shutil.copytree(tiny_llm_dir, tmp_path / "src"))
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "gpt2"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="model_type 'gpt2'"):
        import_model(src, "chat", Registry(Settings(home=tmp_path / "home")))


def test_rules_are_refused_for_a_generator(tiny_llm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="decision rules"):
        import_model(tiny_llm_dir, "chat", Registry(Settings(home=tmp_path / "home")), rules={"default": "x"})


def test_greedy_parity_holds_back_end_of_sequence_like_the_reference(tiny_llm_dir: Path, tmp_path: Path) -> None:
    """The reference decodes exactly 32 tokens (transformers holds every end-of-sequence id back); the ONNX side
    must hold them back too. Here the end-of-sequence token is the one greedy decoding picks first: without the
    same rule the two continuations part at token 0 and the import is refused."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from joules.imports.causal_lm import PARITY_TEXTS, import_causal_lm_dir

    src = Path(shutil.copytree(tiny_llm_dir, tmp_path / "src"))
    ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(PARITY_TEXTS[0], add_special_tokens=False).ids
    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    with torch.no_grad():
        first = int(np.argmax(model(torch.tensor([ids])).logits[0, -1].numpy()))
    for name in ("config.json", "generation_config.json"):
        if (src / name).exists():
            data = json.loads((src / name).read_text())
            data["eos_token_id"] = first
            (src / name).write_text(json.dumps(data))
    bundle = import_causal_lm_dir(src, tmp_path / "out")
    parity = bundle.spec.lineage[-1]["parity"]
    assert parity["greedy_identical"] is True and parity["greedy_agree_tokens"] == 32
