"""The Ray options: pool sizing on a small machine, validation, the flags' refusals (no Ray started)."""

from __future__ import annotations

import pytest

from joules.errors import ConfigError
from joules.meter import Cost
from joules.runtime import Prediction
from joules.serve.batch.job import model_failure_reason
from joules.serve.ray.batch import (
    RayBatchOptions,
    decode_fields,
    decode_result,
    encode_fields,
    encode_result,
    pool_size,
)
from joules.serve.ray.cluster import RayPlace, job_env
from joules.serve.ray.online import RayServeOptions, parse_autoscale


def test_pool_leaves_a_cpu_for_ray_datas_tasks() -> None:
    assert pool_size(2, None) == (1, 2)  # 2 cores: one actor, two ONNX Runtime threads
    assert pool_size(8, None) == (7, 1)
    assert pool_size(1, None) == (1, 1)
    assert pool_size(8, 2) == (2, 4)


def test_rows_and_results_travel_as_json_not_pickles() -> None:
    """What the driver sends an actor and gets back is JSON text that round-trips exactly: undecodable text
    (lone surrogates), raw bytes (an e-mail, an image), a NaN admission must still refuse; a scored row with its
    cost; a model failure as the failed row the local engine writes. A pickle header would fail ``json.loads``."""
    fields = {"text": "caf\udce9", "email": b"\xff\x00From: a", "x": float("nan"), "n": 3, "none": None}
    wire = encode_fields(fields)
    assert isinstance(wire, str) and not wire.startswith("\x80")
    back = decode_fields(wire)
    assert back["text"] == "caf\udce9" and back["email"] == b"\xff\x00From: a" and back["n"] == 3
    assert back["x"] != back["x"] and back["none"] is None
    p = Prediction(
        label="spam", probabilities={"ham": 0.25, "spam": 0.75}, action="move", cost=Cost(energy_j=0.5, how="m")
    )
    assert decode_result(encode_result(p)) == p
    failed = decode_result(encode_result(ValueError("shape (3,) vs (2,)")))
    assert failed.error == model_failure_reason(ValueError("shape (3,) vs (2,)")) and failed.cost.is_zero
    with pytest.raises(TypeError, match="object"):
        encode_fields({"x": object()})


@pytest.mark.parametrize(
    "make",
    [
        lambda: RayBatchOptions(actors=0),
        lambda: RayPlace(address=" "),
        lambda: RayPlace(object_store_bytes=1 << 20),
        lambda: RayServeOptions(replicas=0),
        lambda: RayServeOptions(autoscale=(3, 2)),
        lambda: parse_autoscale("2"),
    ],
)
def test_bad_options_are_refused_with_the_fix(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]


def test_workers_get_the_home_and_the_named_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "secret")
    env = job_env("/abs/home", ("MY_KEY",))
    assert env["JOULES_HOME"] == "/abs/home" and env["MY_KEY"] == "secret"
    assert parse_autoscale("1,4") == (1, 4) and RayServeOptions(autoscale=(1, 4)).most_replicas == 4
