"""``joules optimize`` on a text-generation model: weight-only int8/int4 under a generation budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.optimize.decoder import DecoderOptimizeConfig, optimize_decoder
from joules.optimize.passes.weight_only import WeightOnlyQuant
from joules.registry import Registry, Stage
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation.decoder import StepSequence
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config
from joules.settings import load_settings
from tests.helpers import greedy_tokens, run_joules


def _logits(model: Path, bundle: Bundle, ids: list[int]) -> np.ndarray:
    assert bundle.spec.generation is not None
    dec = OnnxDecoder(model, decoder_config(bundle.spec.generation, 64), 2, RuntimeOptions(intra_op_threads=1))
    try:
        return dec.step([StepSequence(slot=0, start=0, tokens=np.array(ids), all_logits=True)])[0]
    finally:
        dec.close()


@pytest.mark.parametrize(
    ("bits", "symmetric", "tol"), [(8, True, 0.05), (8, False, 0.05), (4, True, 0.6), (4, False, 0.6)]
)
def test_weight_only_passes_stay_close_to_float32(
    tiny_llm_bundle: Path, tmp_path: Path, bits: int, symmetric: bool, tol: float
) -> None:
    bundle = Bundle.load(tiny_llm_bundle)
    ids = [5, 17, 42, 99, 3, 250, 7, 8]
    want = _logits(bundle.model_path, bundle, ids)
    info = WeightOnlyQuant(bits=bits, symmetric=symmetric).write(bundle.model_path, tmp_path / "model.onnx")
    assert info["matrices"] == 2 * 4 + 1  # q|k|v, o, gate|up, down per layer, and the tied head
    got = _logits(tmp_path / "model.onnx", bundle, ids)
    spread = float(want.max() - want.min())
    assert float(np.abs(got - want).max()) < tol * spread
    assert not np.array_equal(got, want)  # the weights did change
    # Row-wise quantization keeps batch invariance: a row alone equals the same row in a batch.
    alone = _logits(tmp_path / "model.onnx", bundle, ids[:3])
    assert np.array_equal(alone, got[:3])


class _Broken:
    """An injected fault: int4, then every block's scale shuffled among the blocks (finite, but wrong)."""

    def write(self, src: Path, dst: Path) -> dict[str, Any]:
        import onnx
        from onnx import numpy_helper

        info = WeightOnlyQuant(bits=4).write(src, dst)
        model = onnx.load(str(dst), load_external_data=True)
        rng = np.random.default_rng(0)
        for t in model.graph.initializer:
            if t.name.endswith(".scales"):
                t.CopyFrom(numpy_helper.from_array(rng.permutation(numpy_helper.to_array(t)), t.name))
        onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
        return info


class _Infinite(_Broken):
    """An injected fault that overflows: every scale 1e38, so the logits are not finite."""

    def write(self, src: Path, dst: Path) -> dict[str, Any]:
        import onnx
        from onnx import numpy_helper

        info = WeightOnlyQuant(bits=8).write(src, dst)
        model = onnx.load(str(dst), load_external_data=True)
        for t in model.graph.initializer:
            if t.name.endswith(".scales"):
                t.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(t), 1e38), t.name))
        onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
        return info


@pytest.fixture()
def chat_registry(tiny_llm_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("JOULES_HOME", str(tmp_path / "home"))
    registry = Registry(load_settings())
    registry.register(tiny_llm_bundle, "chat", stage=Stage.PRODUCTION)
    return registry


def _strict(text: str) -> Any:
    def refuse(c: str) -> None:
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


def test_a_broken_variant_is_rejected_by_the_budget(
    chat_registry: Registry, tiny_llm_bundle: Path, tiny_llm_dir: Path
) -> None:
    config = DecoderOptimizeConfig(
        variants=("int8", "broken", "overflow"), min_agreement=0.9, max_ppl_increase=0.05, rounds=1
    )
    report = optimize_decoder(
        "chat", config, registry=chat_registry, passes={"broken": _Broken(), "overflow": _Infinite()}
    )
    v = {r["name"]: r for r in report["variants"]}
    assert list(v) == ["float32", "int8", "broken", "overflow"]
    assert v["float32"]["agreement"] == 1.0 and v["float32"]["first_divergence"] == 32
    assert v["float32"]["perplexity"] == pytest.approx(_pytorch_perplexity(tiny_llm_bundle, tiny_llm_dir), rel=1e-3)
    assert v["int8"]["agreement"] >= 0.9, v["int8"]
    assert v["int8"]["perplexity"] == pytest.approx(v["float32"]["perplexity"], rel=0.05)
    assert v["broken"]["agreement"] < 0.9 and v["broken"]["verdict"].startswith("over budget"), v["broken"]
    assert v["overflow"]["perplexity"] is None and v["overflow"]["verdict"].startswith("over budget")
    for r in v.values():  # every bundle was served by the engine in a fresh process, 16 streams x 16 tokens
        # (none from the overflowing one: a non-finite logit never becomes a token)
        assert r["extra"]["served_tokens"] == (0 if r["name"] == "overflow" else 16 * 16), r
        assert r["peak_rss_mb"] and r["peak_rss_mb"] > 0 and r["tokens_per_s_1"] > 0 and r["tokens_per_s_16"] > 0
    assert report["winner"] in ("float32", "int8")
    paths = report["paths"]
    assert Path(paths["json"]).name == "report.json" and Path(paths["json"]).parent.name.startswith("optimize-chat-1-")
    assert _strict(Path(paths["json"]).read_text())["variants"][3]["perplexity"] is None
    md = Path(paths["markdown"]).read_text()
    assert "| broken |" in md and "Alice" in md
    versions = [mv.version for mv in chat_registry.list("chat")]
    assert versions == ([1, 2] if report["chosen"] else [1])  # nothing over budget is kept
    assert not list(chat_registry.home.glob(".optimize-*"))


def test_the_chosen_variant_is_served_by_the_engine_unchanged(chat_registry: Registry) -> None:
    # A loose budget and the smallest model as objective, so the 4-bit variant of the random tiny model
    # wins whatever the speed of this machine.
    config = DecoderOptimizeConfig(
        variants=("int4",), min_agreement=0.0, max_ppl_increase=10.0, rounds=1, objective="size", memory_probe=False
    )
    report = optimize_decoder("chat", config, registry=chat_registry)
    assert report["chosen"] is not None and report["chosen"]["variant"] == "int4"
    assert report["chosen"]["stage"] == "none"  # registered, not promoted
    mv = chat_registry.get(f"chat:{report['chosen']['version']}")
    bundle = Bundle.load(mv.path)
    assert bundle.spec.lineage[-1]["pass"] == "weight-only int4"
    assert bundle.spec.lineage[-1]["operator"] == "com.microsoft MatMulNBits"
    assert bundle.spec.lineage[-1]["metrics"]["agreement"] == report["variants"][1]["agreement"]
    assert "weights" not in bundle.spec.files  # the float32 safetensors stay with the original
    assert len(greedy_tokens(mv.path)) == 4  # the engine serves it


def test_unknown_pass_is_a_config_error(chat_registry: Registry) -> None:
    from joules.errors import ConfigError

    with pytest.raises(ConfigError, match="int3"):
        optimize_decoder("chat", DecoderOptimizeConfig(variants=("int3",)), registry=chat_registry)


def test_optimize_cli_on_a_generator(tiny_llm_bundle: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_joules("import", str(tiny_llm_bundle), "--name", "chat", "--promote", home=home, check=True)
    proc = run_joules("optimize", "chat", "--passes", "int8", "--min-agreement", "0.5", "--json", home=home, check=True)
    report = _strict(proc.stdout)
    assert [v["name"] for v in report["variants"]] == ["float32", "int8"]
    assert Path(report["paths"]["markdown"]).is_file()
    bad = run_joules("optimize", "chat", "--passes", "int3", home=home)
    assert bad.returncode == 2 and "int3" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _pytorch_perplexity(bundle_dir: Path, hf_dir: Path) -> float:
    """exp(mean cross-entropy) of the judge's held-out tokens as PyTorch computes it for the same model."""
    import torch
    from transformers import AutoModelForCausalLM

    from joules.optimize.decoder import _Judge

    held_out = _Judge(Bundle.load(bundle_dir), threads=1).held_out
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    ids = torch.tensor([held_out])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss  # mean NLL of tokens 1.. given those before
    return float(torch.exp(loss))


def test_the_judges_perplexity_is_pytorchs_on_the_held_out_text(tiny_llm_bundle: Path, tiny_llm_dir: Path) -> None:
    """The budget's perplexity is exp(mean cross-entropy) as PyTorch computes it for the same model and text."""
    from joules.optimize.decoder import _Judge

    judge = _Judge(Bundle.load(tiny_llm_bundle), threads=1)
    assert len(judge.held_out) > 16  # the passage, tokenized, not an empty text
    dec = judge.open(Bundle.load(tiny_llm_bundle).model_path)
    try:
        ours = judge.perplexity(dec)
    finally:
        dec.close()
    assert ours == pytest.approx(_pytorch_perplexity(tiny_llm_bundle, tiny_llm_dir), rel=1e-4)
