from __future__ import annotations

import pytest

from joules.errors import ConfigError
from joules.serve.stream import RedisEndpoint, StreamConfig, plan_endpoints
from joules.serve.stream.config import EndpointKind


def test_redis_urls_name_server_and_stream() -> None:
    e = RedisEndpoint.parse("redis://10.0.0.5:6380/mail")
    assert (e.connection_url, e.stream, str(e)) == ("redis://10.0.0.5:6380/0", "mail", "redis://10.0.0.5:6380/mail")
    e = RedisEndpoint.parse("rediss://user:secret@cache.example:7000/in/box%201?db=3")
    assert e.stream == "in/box 1" and e.connection_url == "rediss://user:secret@cache.example:7000/3"
    assert "secret" not in str(e), "logs and errors never show the password"
    assert RedisEndpoint.parse("redis://localhost/s").connection_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://localhost:6379/s", "not a Redis stream URL"),
        ("redis://localhost:6379", "names no stream"),
        ("redis://localhost:6379/", "names no stream"),
        ("redis://localhost:notaport/s", "invalid port"),
        ("redis://localhost/s?db=x", "database number"),
        ("redis://localhost/s?timeout=3", "unknown URL options"),
    ],
)
def test_bad_redis_urls_say_what_to_write(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        RedisEndpoint.parse(url)


def test_plan_pairs_sources_with_sinks() -> None:
    assert plan_endpoints("-", None).kind is EndpointKind.STDIO
    assert plan_endpoints("-", "-").kind is EndpointKind.STDIO
    plan = plan_endpoints("redis://h:1/mail", "redis://h:1/verdicts")
    assert plan.kind is EndpointKind.REDIS
    assert plan.dead is not None and plan.dead.stream == "mail:dead" and plan.dead.same_server(plan.source)  # type: ignore[arg-type]
    for source, sink, fragment in [
        ("-", "redis://h:1/v", "writes verdicts as JSONL to stdout"),
        ("redis://h:1/mail", None, "needs a --sink"),
        ("redis://h:1/mail", "-", "goes with --source -"),
        ("redis://h:1/mail", "redis://h:1/mail", "the source stream itself"),
        ("redis://h:1/mail", "redis://h:1/mail:dead", "dead-letter stream"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            plan_endpoints(source, sink)
    # The same stream name on another server is another stream.
    assert plan_endpoints("redis://h:1/mail", "redis://h:2/mail").sink.stream == "mail"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"max_wait_ms": -1}, "--max-wait-ms"),
        ({"claim_idle_ms": 10}, "--claim-idle-ms"),
        ({"max_attempts": 0}, "--max-attempts"),
        ({"max_text_bytes": 0}, "--max-text-bytes"),
        ({"sink_maxlen": 0}, "--sink-maxlen"),
        ({"group": " "}, "--group"),
        ({"start": "yesterday"}, "--start"),
        ({"dedupe_ttl_s": 10, "claim_idle_ms": 30_000}, "must be longer than --claim-idle-ms"),
    ],
)
def test_stream_config_rejects_values_it_cannot_use(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        StreamConfig(**{"group": "g", "consumer": "c", **changes})


def test_stream_config_accepts_ids_and_dollar() -> None:
    for start in ("0", "$", "1700000000000-0", "1700000000000"):
        assert StreamConfig(group="g", consumer="c", start=start).start == start
