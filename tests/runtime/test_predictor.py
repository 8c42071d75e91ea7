from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.decide import RuleSet
from joules.errors import BundleError, InputError
from joules.meter import EnergyMeter
from joules.meter.counters import detect_counters
from joules.runtime import Prediction, Predictor, RuntimeOptions, isolate
from joules.runtime.preprocess import cut_text

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
    rec = result.rows()[0].to_dict()
    assert set(rec) == {"label", "probabilities", "action"} and set(rec["probabilities"]) == {"ham", "spam"}
    rows = result.rows()
    assert all(r.cost.energy_j > 0 and r.cost.usd > 0 and r.cost.co2_g > 0 for r in rows)
    assert sum(r.cost.energy_j for r in rows) == pytest.approx(result.measurement.energy_j)
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
        (["fine", 5], "row 1: field 'text' must be a string, got int"),
        ([None], "row 0: missing field 'text'"),
        ([{"txt": "x"}], "row 0: missing field 'text'"),
        (["fine", "   "], "row 1: field 'text' is empty or only whitespace"),
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
    with pytest.raises(InputError, match=r"row 0: field 'x' has shape \[5\]; the model takes \[4\]"):
        p.predict({"x": np.ones((2, 5))})
    with pytest.raises(InputError, match=r"has shape \[\]"):
        p.predict({"x": np.ones(4)})
    with pytest.raises(InputError, match="field 'x' must hold numbers"):
        p.predict({"x": [["a", "b", "c", "d"]]})
    with pytest.raises(InputError, match="row 1: field 'x' holds a value that is not finite"):
        p.predict({"x": [[1, 2, 3, 4], [1, np.nan, 3, 4]]})
    with pytest.raises(InputError, match="not finite"):
        p.predict({"x": [[1e39, 2, 3, 4]]})  # float32 overflow
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


def _linear(tmp_path: Path, w: np.ndarray, **preprocess: object) -> Predictor:
    """x [N, 2] @ w [2, 2] -> softmax: a model whose output overflows when x is large."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from joules.bundle import BundleSpec

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    BundleSpec.from_dict(
        {
            "name": "lin",
            "task": "classification",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 2]}],
            "preprocess": {"kind": "tensors", **preprocess},
            "postprocess": {"output": "logits", "labels": ["no", "yes"]},
            "rules": {"rules": [{"when": "yes >= 0.5", "action": "act"}], "default": "wait"},
        }
    ).write(tmp_path)
    return Predictor(Bundle.load(tmp_path))


def test_a_non_finite_output_never_becomes_a_label_or_an_action(tmp_path: Path) -> None:
    p = _linear(tmp_path, np.array([[1.0, -1.0], [1.0, -1.0]]))
    rows = p.predict_values([p.admit({"x": [1, 2]}), p.admit({"x": [3e38, 3e38]}), p.admit({"x": [0, -1]})])
    ok, bad, other = rows
    assert isinstance(ok, Prediction) and ok.label == "no" and ok.action == "wait"
    assert isinstance(bad, Prediction) and bad.error == "model output is not finite"
    assert bad.label is None and bad.action is None and bad.probabilities is None
    assert bad.cost.energy_j > 0, "the row still used the model: it pays its share"
    assert isinstance(other, Prediction) and other.label == "yes" and other.action == "act"


def test_non_finite_inputs_are_refused_unless_the_bundle_allows_them(tmp_path: Path) -> None:
    strict = _linear(tmp_path / "a", np.eye(2))
    for value in ([float("nan"), 1], [float("inf"), 1], [1e39, 1], "[NaN, 1]", b"[1, Infinity]"):
        with pytest.raises(InputError, match="field 'x' holds a value that is not finite"):
            strict.admit({"x": value})
    lenient = _linear(tmp_path / "b", np.eye(2), allow_non_finite=True)
    assert np.isnan(lenient.admit({"x": [float("nan"), 1]})["x"][0])


def test_a_row_that_makes_the_model_fail_is_isolated(tiny_bundle_dir: Path) -> None:
    """One failing row costs its own answer, not its neighbours' (split down to it)."""
    p = Predictor(Bundle.load(tiny_bundle_dir), options=RuntimeOptions(max_batch_size=8))
    poison = "poison pill"
    real = p._call

    def call(feeds: dict[str, np.ndarray]) -> np.ndarray:
        if (feeds["input_ids"] == p.text.tokenizer.token_to_id("poison")).any():  # type: ignore[union-attr]
            raise RuntimeError("the model cannot take this row")
        return real(feeds)

    p._call = call  # type: ignore[method-assign]
    texts = [f"hello number {i}" for i in range(7)]
    texts.insert(3, poison)
    rows = p.predict_values([p.admit({"text": t}) for t in texts])
    assert isinstance(rows[3], RuntimeError)
    assert all(isinstance(r, Prediction) and r.label for i, r in enumerate(rows) if i != 3)


def test_isolate_splits_down_to_the_failing_items() -> None:
    calls: list[list[int]] = []

    def call(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if 5 in items:
            raise ValueError("five")
        return [i * 10 for i in items]

    out = isolate(call, list(range(8)))
    assert out[:5] == [0, 10, 20, 30, 40] and out[6:] == [60, 70]
    assert isinstance(out[5], ValueError)
    assert len(calls) <= 1 + 2 * 3, "halves, not one call per item"


SMS_FILE = Path(__file__).resolve().parents[2] / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"


def test_long_texts_are_cut_before_tokenizing_without_changing_their_tokens(predictor: Predictor) -> None:
    pre = predictor.text
    assert pre is not None
    whole = pre.tokenizer  # truncation on: the first max_length tokens of the whole text
    sms = [line.split("\t", 1)[1].rstrip("\n") for line in SMS_FILE.open(encoding="utf-8")][:2000]
    long = [" ".join(sms[i : i + 60]) for i in range(0, 1200, 60)] + [
        "spam " * 200_000,  # 1 MB
        "x" * 50_000,  # one giant word
        " " * 100_000 + "hello there " * 10,  # the words start after the cut bound
        "\n\t ".join(["Émile's café, naïve résumé"] * 3000),
        "é" * 300 + " " + "word " * 2000,
    ]
    for text in [*sms, *long]:
        got = pre.encode([text])[0]
        assert got.ids == whole.encode(text).ids, text[:60]
    assert pre.cut_chars < 10_000, "the bound is a few thousand characters for 128 tokens"


def test_cut_text_ends_at_whitespace() -> None:
    assert cut_text("hello world again", 13) == "hello world"
    assert cut_text("abcdefgh", 4) == "abcd"


@pytest.mark.parametrize("tail", [1, 32])
def test_tail_tokens_read_the_start_and_the_end_of_a_long_text(tiny_bundle_dir: Path, tail: int) -> None:
    """With preprocess.tail_tokens, a long text gives its first tokens and its last ``tail``, exactly those of the
    whole text tokenized without any cut (the reference here), whatever the cut bounds meet."""
    from tokenizers import Tokenizer

    from joules.runtime.preprocess import TextPreprocessor

    path = tiny_bundle_dir / "tokenizer.json"
    pre = TextPreprocessor(path, 128, ["input_ids"], tail_tokens=tail)
    raw = Tokenizer.from_file(str(path))
    raw.no_padding()
    raw.no_truncation()
    sms = [line.split("\t", 1)[1].rstrip("\n") for line in SMS_FILE.open(encoding="utf-8")][:600]
    long = [" ".join(sms[i : i + 40]) for i in range(0, 600, 40)] + [
        "spam " * 200_000 + "unsubscribe here",  # 1 MB
        "start " * 200 + "x" * 50_000,  # ends in one giant word: a cut inside it would tokenize differently
        "hello there " * 100 + " " * 100_000,  # ends in spaces past the cut bound
        "\n\t ".join(["Émile's café, naïve résumé"] * 3000),
        "word " * 2000 + "é" * 300,
    ]
    for text in [*sms[:50], *long]:
        got = pre.encode([text])[0].ids
        ids = raw.encode(text, add_special_tokens=False).ids
        content = 128 - 2
        want = ids if len(ids) <= content else ids[: content - tail] + ids[-tail:]
        cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
        assert got == [cls, *want, sep], text[:60]
    with pytest.raises(BundleError, match="tail_tokens"):
        TextPreprocessor(path, 16, ["input_ids"], tail_tokens=14)


def test_tail_tokens_in_the_bundle_spec() -> None:
    from joules.bundle import Preprocess

    assert Preprocess(kind="email", max_length=128, tail_tokens=32).to_dict()["tail_tokens"] == 32
    assert "tail_tokens" not in Preprocess(kind="text").to_dict(), "the default is not written"
    assert Preprocess(kind="text").tail_tokens == 0
    with pytest.raises(BundleError, match="tail_tokens applies to kind"):
        Preprocess(kind="tensors", tail_tokens=4)
    with pytest.raises(BundleError, match=r"tail_tokens must be a whole number >= 0, got -1"):
        Preprocess(kind="text", tail_tokens=-1)
    with pytest.raises(BundleError, match="at most half of max_length"):
        Preprocess(kind="text", max_length=64, tail_tokens=40)
