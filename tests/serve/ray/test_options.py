"""The Ray options: pool sizing on a small machine, validation, the flags' refusals (no Ray started)."""

from __future__ import annotations

import pytest

from joules.errors import ConfigError
from joules.serve.ray.batch import RayBatchOptions, pool_size
from joules.serve.ray.cluster import RayPlace, job_env
from joules.serve.ray.online import RayServeOptions, parse_autoscale


def test_pool_leaves_a_cpu_for_ray_datas_tasks() -> None:
    assert pool_size(2, None) == (1, 2)  # 2 cores: one actor, two ONNX Runtime threads
    assert pool_size(8, None) == (7, 1)
    assert pool_size(1, None) == (1, 1)
    assert pool_size(8, 2) == (2, 4)


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
