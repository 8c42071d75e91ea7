"""``joules optimize`` on a text-generation model: weight-only int8/int4 under a generation budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from joules.bundle import Bundle
from joules.optimize.passes.weight_only import WeightOnlyQuant
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation.decoder import StepSequence
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config
from tests.helpers import run_joules


def _logits(model: Path, bundle: Bundle, ids: list[int]) -> np.ndarray:
    assert bundle.spec.generation is not None
    dec = OnnxDecoder(model, decoder_config(bundle.spec.generation, 64), 2, RuntimeOptions(intra_op_threads=1))
    try:
        return dec.step([StepSequence(slot=0, start=0, tokens=np.array(ids), all_logits=True)])[0]
    finally:
        dec.close()


def test_weight_only_passes_stay_close_to_float32(tiny_llm_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(tiny_llm_bundle)
    ids = [5, 17, 42, 99, 3, 250, 7, 8]
    want = _logits(bundle.model_path, bundle, ids)
    for bits, tol in ((8, 0.05), (4, 0.6)):
        out = tmp_path / f"q{bits}"
        out.mkdir()
        info = WeightOnlyQuant(bits=bits).write(bundle.model_path, out / "model.onnx")
        assert info["matrices"] == 2 * 4 + 1  # q|k|v, o, gate|up, down per layer, and the tied head
        got = _logits(out / "model.onnx", bundle, ids)
        spread = float(want.max() - want.min())
        assert float(np.abs(got - want).max()) < tol * spread, bits
        # Row-wise quantization keeps batch invariance: a row alone equals the same row in a batch.
        alone = _logits(out / "model.onnx", bundle, ids[:3])
        assert np.array_equal(alone, got[:3])


def test_optimize_cli_registers_the_fastest_variant_within_budget(tiny_llm_bundle: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_joules("import", str(tiny_llm_bundle), "--name", "chat", "--promote", home=home, check=True)
    proc = run_joules(
        "optimize",
        "chat",
        "--passes",
        "int8",
        "--min-agreement",
        "0.5",
        "--max-ppl-increase",
        "50",
        "--json",
        home=home,
        check=True,
    )
    report = json.loads(proc.stdout)
    names = [v["name"] for v in report["variants"]]
    assert names == ["float32", "int8"]
    base = report["variants"][0]
    assert base["agreement"] == 1.0 and base["perplexity"] > 1
    assert Path(report["paths"]["markdown"]).is_file()
    if report["chosen"]:
        assert report["chosen"]["variant"] == "int8"
        shown = json.loads(
            run_joules("models", "show", f"chat:{report['chosen']['version']}", "--json", home=home, check=True).stdout
        )
        assert shown["lineage"][-1]["pass"] == "weight-only int8"
        out = run_joules(
            "generate",
            f"chat:{report['chosen']['version']}",
            "Héllo",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--max-model-len",
            "64",
            home=home,
            check=True,
        )
        assert out.returncode == 0
