from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.decide import RuleSet
from joules.errors import InputError
from joules.meter import EnergyMeter
from joules.meter.counters import detect_counters
from joules.runtime import Predictor, RuntimeOptions

TEXTS = [
    "ok",
    "Had your mobile 11 months or more? U R entitled to Update to the latest colour mobiles with camera for Free!",
    "Are we meeting for lunch tomorrow?",
    "URGENT! Your Mobile No. was awarded 2000 Bonus Caller Prize on 5/9/03 This is our final try to contact U!",
    "k",
    "I'll be home soon, don't wait up " * 20,  # longer than max_length: truncated
]


@pytest.fixture(scope="module")
def predictor(tiny_bundle_dir: Path) -> Predictor:
    return Predictor(Bundle.load(tiny_bundle_dir))


def test_grouped_batch_equals_one_by_one(predictor: Predictor) -> None:
    together = predictor.predict_texts(TEXTS)
    alone = np.concatenate([predictor.predict_texts([t]).probabilities for t in TEXTS])
    np.testing.assert_allclose(together.probabilities, alone, atol=1e-5)
    assert together.labels == [predictor.predict_texts([t]).labels[0] for t in TEXTS]
    assert np.allclose(together.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_rows_are_grouped_by_length_into_sub_batches(tiny_bundle_dir: Path) -> None:
    p = Predictor(Bundle.load(tiny_bundle_dir), options=RuntimeOptions(max_batch_size=2))
    result = p.predict_texts(TEXTS)
    assert result.calls >= 3, "6 rows, at most 2 per call"
    ref = Predictor(Bundle.load(tiny_bundle_dir)).predict_texts(TEXTS)
    np.testing.assert_allclose(result.probabilities, ref.probabilities, atol=1e-5)
    assert result.tokens[-1] == 128, "texts are truncated at the bundle's max length"
    assert result.tokens[0] < 10, "no fixed padding to 128 (the MiniLM tokenizer.json pads by default)"


def test_results_carry_labels_actions_and_energy(tiny_bundle_dir: Path) -> None:
    # No energy counters: modelled on every host, RAPL or not, so the formula below is the one used.
    predictor = Predictor(Bundle.load(tiny_bundle_dir), meter=EnergyMeter(counters=[]))
    result = predictor.predict_texts(TEXTS)
    assert set(result.labels) <= {"ham", "spam"}
    assert set(result.actions) <= {"move_to_spam", "flag_for_review", "deliver_to_inbox"}
    rec = result.records()[0]
    assert set(rec) == {"label", "probabilities", "action"} and set(rec["probabilities"]) == {"ham", "spam"}
    m = result.measurement
    assert m.wall_s > 0 and m.cpu_s >= 0
    assert m.energy_j == pytest.approx(m.cpu_s * predictor.meter.watts_per_core + m.static_j)
    assert m.static_j > 0 and m.method == "modelled"
    assert predictor.stats.rows >= len(TEXTS)


def test_the_default_meter_measures_where_the_host_has_counters(predictor: Predictor) -> None:
    """RAPL (or NVML) readable: measured; otherwise modelled. The label follows the host."""
    has_cpu_counter = any(c.kind == "cpu" for c in detect_counters())
    m = predictor.predict_texts(TEXTS).measurement
    assert m.method == ("measured" if has_cpu_counter else "modelled") and m.energy_j > 0


def test_rules_override(tiny_bundle_dir: Path) -> None:
    rules = RuleSet.from_text(
        "rules:\n  - when: spam >= 0.0\n    action: everything\ndefault: never\n", ("ham", "spam")
    )
    p = Predictor(Bundle.load(tiny_bundle_dir), rules=rules)
    assert p.predict_texts(TEXTS).actions == ["everything"] * len(TEXTS)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "empty batch"),
        ("just a string", "expected a list of texts"),
        (["fine", 5], "text 1 must be a string, got int"),
        ([None], "text 0 must be a string, got NoneType"),
        ([{"txt": "x"}], "instance 0 has no 'text' field"),
    ],
)
def test_clear_errors(predictor: Predictor, inputs: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        predictor.predict(inputs)


def test_instances_with_a_text_field(predictor: Predictor) -> None:
    a = predictor.predict([{"text": "hello"}, {"text": "WIN NOW"}])
    b = predictor.predict(["hello", "WIN NOW"])
    np.testing.assert_allclose(a.probabilities, b.probabilities)


def test_tensor_models_check_names_shapes_and_rows(tmp_path: Path) -> None:
    from joules.bundle import BundleSpec
    from tests.helpers import numeric_onnx

    numeric_onnx(tmp_path / "model.onnx")
    BundleSpec.from_dict(
        {
            "name": "lin",
            "task": "classification",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
            "preprocess": {"kind": "tensors"},
            "postprocess": {"output": "logits", "labels": ["a", "b", "c"]},
        }
    ).write(tmp_path)
    p = Predictor(Bundle.load(tmp_path), options=RuntimeOptions(max_batch_size=3))
    out = p.predict({"x": np.ones((7, 4))})
    assert out.probabilities.shape == (7, 3) and out.calls == 3 and out.actions == [None] * 7
    with pytest.raises(InputError, match="missing \\['x'\\], unknown \\['y'\\]"):
        p.predict({"y": np.ones((1, 4))})
    with pytest.raises(InputError, match="dimension 1 must be 4"):
        p.predict({"x": np.ones((2, 5))})
    with pytest.raises(InputError, match="2 dimensions"):
        p.predict({"x": np.ones(4)})
    with pytest.raises(InputError, match="cannot be read as float32"):
        p.predict({"x": [["a", "b", "c", "d"]]})
    with pytest.raises(InputError, match="takes tensors"):
        p.predict(["text"])


def test_importing_joules_and_serving_never_imports_torch(tiny_bundle_dir: Path) -> None:
    code = (
        "import sys, joules, joules.cli.main, joules.serve.batch\n"
        "from joules.runtime import Predictor\nfrom joules.bundle import Bundle\n"
        f"Predictor(Bundle.load({str(tiny_bundle_dir)!r})).predict(['hi'])\n"
        "joules.cli.main.build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_spinning_is_off_unless_asked_and_then_bounded(tiny_bundle_dir: Path) -> None:
    from joules.errors import ConfigError
    from joules.runtime.executor import session_options
    from joules.serve.online import ServeConfig

    off = session_options(RuntimeOptions())
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # `joules serve` (--spin-us 100): pool threads spin 100 us for work, then sleep.
    served = ServeConfig().runtime_options()
    so = session_options(served)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.get_session_config_entry("session.intra_op.spin_duration_us") == "100"
    assert ServeConfig(spin_us=0).runtime_options().allow_spinning is False
    p = Predictor(Bundle.load(tiny_bundle_dir), options=served)
    assert p.predict_texts(["spin a little"]).labels
    with pytest.raises(ConfigError, match="spin_us"):
        ServeConfig(spin_us=-1)
    with pytest.raises(ConfigError, match="spin_duration_us"):
        RuntimeOptions(allow_spinning=True, spin_duration_us=0)
