"""``joules stream`` on Redis Streams: verdicts, dead letters, redelivery, retries, draining, metrics."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from joules.runtime import Predictor, load_predictor
from joules.serve.stream import StreamConfig, StreamConsumer, plan_endpoints
from joules.serve.stream.dedupe import Append, AppendOnce
from joules.serve.stream.service import open_endpoints
from tests.helpers import run_joules
from tests.serve.stream.conftest import RedisServer, wait_until
from tests.serve.stream.helpers import entries, pending, start_consumer, stop, summary_of, texts


def test_verdicts_dead_letters_metrics_and_sigterm(spam_home: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client
    metrics_port = unused_port()
    good = texts(300)
    rows = [{"id": f"m{i}", "text": t} for i, t in enumerate(good)]
    rows.append({"id": "long", "text": "free prize " * 2000})  # 22,000 bytes: within the limit, truncated by tokens
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in rows) + "[1, 2]\n")
    pub = run_joules("publish", str(inp), "--to", redis_server.url("mail"), "--json", home=spam_home, check=True)
    assert json.loads(pub.stdout)["published"] == 301 and json.loads(pub.stdout)["skipped"] == 1
    # Malformed messages, written by hand as a broken producer would.
    bad = {
        "no-text": {"id": "no-text", "body": "hi"},
        "bad-utf8": {"id": "bad-utf8", "text": b"caf\xe9 au lait"},
        "too-long": {"id": "too-long", "text": "x" * 70_000},
        "empty": {"id": "empty", "text": "  "},
        "bad-id": {"id": b"\xff\xfe", "text": "hello", "tag": "bad-id"},
    }
    bad_ids = {name: r.xadd("mail", fields).decode() for name, fields in bad.items()}
    total = 301 + len(bad)

    c = start_consumer(
        spam_home,
        redis_server,
        "c1",
        tmp_path,
        "--report-every-s",
        "0.2",
        "--metrics-port",
        str(metrics_port),
        "--max-text-bytes",
        "65536",
        "--json",
    )
    try:
        wait_until(
            lambda: r.xlen("verdicts") + r.xlen("mail:dead") >= total and pending(redis_server, "mail", "g") == 0,
            180,
            f"every message answered\n{c.tail()}",
        )
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'joules_stream_messages_total{outcome="verdict"} 301.0' in metrics
        assert 'joules_stream_messages_total{outcome="dead_letter"} 5.0' in metrics
        assert "joules_stream_e2e_latency_seconds_bucket" in metrics
        wait_until(lambda: "lag 0, pending 0" in c.log.read_text(), 30, "a progress line reporting lag and pending")
    finally:
        code = stop(c)
    assert code == 0, c.tail()

    verdicts = entries(redis_server, "verdicts")
    assert len(verdicts) == 301
    by_id = {f["id"]: f for _, f in verdicts}
    assert set(by_id) == {f"m{i}" for i in range(300)} | {"long"}
    v = by_id["m0"]
    assert set(v) == {"source_id", "id", "label", "action", "probabilities", "model"}
    assert v["model"] == "spam:1" and v["label"] in ("ham", "spam")
    assert abs(sum(json.loads(v["probabilities"]).values()) - 1) < 1e-4
    source_ids = {eid.decode(): decode_id(f) for eid, f in r.xrange("mail")}
    assert all(source_ids[f["source_id"]] == f["id"] for _, f in verdicts), "source_id names the entry judged"

    dead = {f["source_id"]: f for _, f in entries(redis_server, "mail:dead")}
    assert set(dead) == set(bad_ids.values()), "exactly the malformed messages, once each"
    reasons = {name: dead[eid]["reason"] for name, eid in bad_ids.items()}
    # Admission's reasons, word for word as batch and online give them (tests/serve/test_one_path.py).
    assert reasons["no-text"] == "missing field 'text'"
    assert reasons["bad-utf8"] == "field 'text' is not valid UTF-8 text"
    assert reasons["too-long"] == "field 'text' is 70,000 bytes, over the limit of 65,536 (max_text_bytes)"
    assert reasons["empty"] == "field 'text' is empty or only whitespace"
    assert reasons["bad-id"] == "field 'id' is not valid UTF-8 text"
    # The original fields travel with the reason, byte for byte.
    raw_dead = {f[b"source_id"].decode(): f for _, f in r.xrange("mail:dead")}
    assert raw_dead[bad_ids["bad-utf8"]][b"text"] == b"caf\xe9 au lait"
    assert raw_dead[bad_ids["no-text"]][b"body"] == b"hi" and dead[bad_ids["no-text"]]["deliveries"] == "1"

    s = summary_of(c)
    assert (s["verdicts"], s["dead_letters"], s["duplicates_skipped"]) == (301, 5, 0)
    assert s["pending"] == 0 and s["lag"] == 0 and s["energy_j"] > 0 and s["e2e_latency_ms"]["p50"] is not None
    assert all(s["cost"]["total"][k] > 0 for k in ("energy_j", "usd", "co2_g")), s["cost"]
    assert s["cost"]["predictions"] == 301
    assert r.xlen("mail") == total, "joules never trims the source"


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def decode_id(fields: dict[bytes, bytes]) -> str | None:
    raw = fields.get(b"id")
    return raw.decode("utf-8", "replace") if raw is not None else None


def test_append_once_is_idempotent_and_one_key_covers_both_streams(redis_server: RedisServer) -> None:
    r = redis_server.client
    writer = AppendOnce(r, ttl_s=60)
    first = writer.append(
        [Append(stream="v", dedupe_key="k1", fields={"a": "1"}), Append(stream="v", dedupe_key="k2", fields={"a": "2"})]
    )
    assert [x.new for x in first] == [True, True]
    again = writer.append(
        [
            Append(stream="v", dedupe_key="k1", fields={"a": "1"}),
            Append(stream="dead", dedupe_key="k2", fields={"reason": "late"}),  # answered already: no dead letter
            Append(stream="v", dedupe_key="k3", fields={"a": "3"}),
        ]
    )
    assert [x.new for x in again] == [False, False, True]
    assert again[0].entry_id == first[0].entry_id and again[1].stream == "v"
    assert r.xlen("v") == 3 and not r.exists("dead")
    assert 0 < r.ttl("k1") <= 60
    many = writer.append([Append(stream="t", dedupe_key=f"t{i}", fields={"i": i}, maxlen=10) for i in range(200)])
    assert all(x.new for x in many) and r.xlen("t") < 200, "--sink-maxlen trims (approximately)"


def _consumer_config(**changes: object) -> StreamConfig:
    base: dict = {"group": "g", "consumer": "c1", "batch_size": 16, "claim_idle_ms": 300, "report_every_s": 0}
    return StreamConfig(**{**base, **changes})


def test_redelivered_messages_get_exactly_one_verdict(spam_home: Path, redis_server: RedisServer) -> None:
    """A consumer that wrote verdicts and died before XACK: its successor claims the entries, writes nothing twice."""
    r = redis_server.client
    for i, t in enumerate(texts(100)):
        r.xadd("mail", {"id": f"m{i}", "text": t})
    plan = plan_endpoints(redis_server.url("mail"), redis_server.url("verdicts"))
    predictor = load_predictor("spam")
    # The ghost reads 40 messages and answers 25 of them, then "dies": no ack, no more reads.
    ghost_source, ghost_sink = open_endpoints(plan, _consumer_config(consumer="ghost", batch_size=40))
    ghost = StreamConsumer(predictor, ghost_source, ghost_sink, _consumer_config(consumer="ghost"))
    held = ghost_source.fetch(40, 0)
    outcomes, _, _ = ghost.judge(held[:25])
    ghost_sink.write(outcomes)
    ghost_source.close()
    assert r.xlen("verdicts") == 25 and pending(redis_server, "mail", "g", "ghost") == 40

    source, sink = open_endpoints(plan, _consumer_config())
    consumer = StreamConsumer(predictor, source, sink, _consumer_config())
    stop_event = threading.Event()
    t = threading.Thread(target=consumer.run, args=(stop_event,))
    t.start()
    try:
        wait_until(lambda: pending(redis_server, "mail", "g") == 0 and r.xlen("verdicts") >= 100, 120, "all answered")
    finally:
        stop_event.set()
        t.join(timeout=60)
        source.close()
    verdicts = entries(redis_server, "verdicts")
    assert len(verdicts) == 100 and len({f["source_id"] for _, f in verdicts}) == 100
    assert consumer.metrics.duplicates == 25 and consumer.metrics.verdicts == 75
    assert source.claimed == 40  # type: ignore[attr-defined]


def test_a_message_delivered_too_often_is_dead_lettered(
    spam_home: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Consumers that keep dying on a message (here: claiming it, then vanishing) stop at --max-attempts."""
    r = redis_server.client
    poison = r.xadd("mail", {"id": "poison", "text": "a message every consumer dies on"}).decode()
    tired = r.xadd("mail", {"id": "tired", "text": "delivered three times, still within the limit"}).decode()
    r.xgroup_create("mail", "g", id="0")
    r.xreadgroup("g", "dead1", {"mail": ">"})  # delivery 1 of both
    r.xclaim("mail", "g", "dead2", 0, [poison, tired])  # delivery 2
    r.xclaim("mail", "g", "dead3", 0, [poison])  # delivery 3 of poison
    c = start_consumer(spam_home, redis_server, "c1", tmp_path, "--claim-idle-ms", "200", "--max-attempts", "2")
    try:
        wait_until(lambda: pending(redis_server, "mail", "g") == 0, 120, f"both settled\n{c.tail()}")
    finally:
        assert stop(c) == 0, c.tail()
    dead = entries(redis_server, "mail:dead")
    verdicts = entries(redis_server, "verdicts")
    # poison: delivered 3 times before, 4th now > 2 -> dead; tired: 2 before, 3rd now > 2 -> dead as well.
    assert {f["source_id"] for _, f in dead} == {poison, tired} and not verdicts
    reason = next(f["reason"] for _, f in dead if f["source_id"] == poison)
    assert "not judged after 3 deliveries (--max-attempts 2)" in reason and "stopped before finishing" in reason


def fails_on(predictor: Predictor, marker: str) -> Predictor:
    """The real Predictor, except that a model call fails (as a broken runtime would) when it holds
    a text containing ``marker``. No real runtime fails on demand; this fails before calling it."""
    real = predictor.run
    tokenizer = predictor.text.tokenizer  # type: ignore[union-attr]

    def run(units: Sequence[Any], *, record: bool = True) -> Any:
        if any(marker in tokenizer.decode(u.ids) for u in units):
            raise RuntimeError("onnxruntime: out of memory (simulated)")
        return real(units, record=record)

    predictor.run = run  # type: ignore[method-assign]
    return predictor


def test_runtime_failures_are_retried_then_dead_lettered(spam_home: Path, redis_server: RedisServer) -> None:
    r = redis_server.client
    ids = [r.xadd("mail", {"id": f"m{i}", "text": t}).decode() for i, t in enumerate(texts(20))]
    poison = r.xadd("mail", {"id": "boom", "text": "BOOM this one breaks the runtime"}).decode()
    plan = plan_endpoints(redis_server.url("mail"), redis_server.url("verdicts"))
    cfg = _consumer_config(max_attempts=2, batch_size=64)
    source, sink = open_endpoints(plan, cfg)
    consumer = StreamConsumer(fails_on(load_predictor("spam"), "boom"), source, sink, cfg)
    stop_event = threading.Event()
    t = threading.Thread(target=consumer.run, args=(stop_event,))
    t.start()
    try:
        wait_until(lambda: r.xlen("mail:dead") == 1 and pending(redis_server, "mail", "g") == 0, 120, "the retry")
    finally:
        stop_event.set()
        t.join(timeout=60)
        source.close()
    verdicts = entries(redis_server, "verdicts")
    assert sorted(f["source_id"] for _, f in verdicts) == sorted(ids), (
        "the batch's other messages were judged (the failing call split down to the one message)"
    )
    ((_, dead),) = entries(redis_server, "mail:dead")
    assert dead["source_id"] == poison and dead["deliveries"] == "2"
    assert dead["reason"] == "judging failed on attempt 2 of 2: RuntimeError: onnxruntime: out of memory (simulated)"
    assert consumer.metrics.retries == 1
    assert not r.keys("mail:error:*"), "the recorded failure is dropped once the message is settled"


def test_lost_connections_cost_nothing(spam_home: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    """The broker drops the consumer's connections again and again: one verdict per message, no dead letter.

    Outcomes in hand are written again after reconnecting rather than read again, so an outage
    does not count as a delivery attempt against --max-attempts. The messages come in rounds,
    and each round's kill waits until the consumer has reconnected and judged part of that
    round, so every round drops a working connection however fast or slow the machine is.
    """
    r = redis_server.client
    rounds, per_round = 10, 80
    n = rounds * per_round
    all_texts = texts(n)
    c = start_consumer(spam_home, redis_server, "c1", tmp_path, "--batch-size", "16", "--claim-idle-ms", "500")
    kills = 0
    try:
        for k in range(rounds):
            answered_before = r.xlen("verdicts")
            for i in range(k * per_round, (k + 1) * per_round):
                r.xadd("mail", {"id": f"m{i}", "text": all_texts[i]})
            wait_until(
                lambda before=answered_before: r.xlen("verdicts") > before,
                180,
                f"round {k}: the consumer back at work\n{c.tail()}",
                interval=0.002,
            )
            # The consumer's connections, wherever it is in its loop (reading, judging, writing, acking).
            dropped = wait_until(
                lambda: r.client_kill_filter(_type="normal", skipme=True), 60, f"round {k}: a connection to drop"
            )
            kills += int(dropped)
        wait_until(
            lambda: r.xlen("verdicts") >= n and pending(redis_server, "mail", "g") == 0,
            180,
            f"all answered despite dropped connections\n{c.tail()}",
        )
    finally:
        assert stop(c) == 0, c.tail()
    assert kills >= rounds
    verdicts = entries(redis_server, "verdicts")
    assert len(verdicts) == n and len({f["source_id"] for _, f in verdicts}) == n
    assert r.xlen("mail:dead") == 0, entries(redis_server, "mail:dead")[:3]


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [("string", "is a Redis string, not a stream"), ("down", "cannot connect to redis")],
)
def test_unusable_broker_is_a_clear_error(
    spam_home: Path, redis_server: RedisServer, setup: str, fragment: str
) -> None:
    port = redis_server.port
    if setup == "string":
        redis_server.client.set("mail", "not a stream")
    else:
        port = unused_port()  # nothing listens there
    proc = run_joules(
        "stream",
        "spam",
        "--source",
        f"redis://127.0.0.1:{port}/mail",
        "--sink",
        f"redis://127.0.0.1:{port}/verdicts",
        home=spam_home,
        timeout=120,
    )
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_publish_csv_and_the_flags_it_refuses(spam_home: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text('msg_id,body,channel\nm1,hello there,sms\nm2,"free, prize",sms\n', encoding="utf-8")
    proc = run_joules("publish", str(inp), "--to", redis_server.url("mail"), "--rate", "500", "--json", home=spam_home)
    assert proc.returncode == 0, proc.stderr
    got = [f for _, f in entries(redis_server, "mail")]
    assert got == [
        {"msg_id": "m1", "body": "hello there", "channel": "sms"},
        {"msg_id": "m2", "body": "free, prize", "channel": "sms"},
    ]
    bad = run_joules("publish", str(tmp_path / "in.txt"), "--to", redis_server.url("mail"), home=spam_home)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    bad = run_joules("publish", str(inp), "--to", "redis://127.0.0.1/", home=spam_home)
    assert bad.returncode == 2 and "names no stream" in bad.stderr
    bad = run_joules("stream", "spam", "--source", redis_server.url("mail"), home=spam_home)
    assert bad.returncode == 2 and "needs a --sink" in bad.stderr


def test_idle_consumers_with_nothing_pending_are_pruned(
    spam_home: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from joules.serve.stream import redis_streams

    monkeypatch.setattr(redis_streams, "PRUNE_IDLE_MS", 0)  # then twice --claim-idle-ms: 200 ms
    monkeypatch.setattr(redis_streams, "PRUNE_EVERY_S", 0)
    r = redis_server.client
    r.xadd("mail", {"text": "held by a consumer that never comes back"})
    r.xgroup_create("mail", "g", id="0")
    r.xreadgroup("g", "holder", {"mail": ">"})
    r.xgroup_createconsumer("mail", "g", "gone")
    cfg = _consumer_config(claim_idle_ms=100)
    source, _sink = open_endpoints(plan_endpoints(redis_server.url("mail"), redis_server.url("v")), cfg)
    try:

        def names() -> set[bytes]:
            return {c["name"] for c in r.xinfo_consumers("mail", "g")}

        def pruned() -> bool:
            source._claim_due = float("inf")  # type: ignore[attr-defined]  # keep "holder" holding
            source.fetch(1, 0)
            return b"gone" not in names()

        wait_until(pruned, 30, "the idle consumer to be pruned")
        assert {b"holder", b"c1"} <= names(), "a consumer holding entries is never pruned"
    finally:
        source.close()


def test_a_full_broker_pauses_the_consumer_and_loses_nothing(
    spam_home: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis out of memory refuses writes (OOM): the consumer waits and retries, then carries on."""
    r = redis_server.client
    n = 3000
    for i, t in enumerate(texts(n)):
        r.xadd("mail", {"id": f"m{i}", "text": t})
    c = start_consumer(spam_home, redis_server, "c1", tmp_path, "--batch-size", "16", "--max-wait-ms", "0")
    try:
        wait_until(lambda: r.xlen("verdicts") >= 50, 120, f"the first verdicts\n{c.tail()}")
        r.config_set("maxmemory", "1")
        wait_until(lambda: "maxmemory" in c.log.read_text(), 60, f"the consumer to meet a full broker\n{c.tail()}")
        stalled = r.xlen("verdicts")
        r.config_set("maxmemory", "0")
        wait_until(
            lambda: r.xlen("verdicts") >= n and pending(redis_server, "mail", "g") == 0,
            120,
            f"all answered once memory was back\n{c.tail()}",
        )
    finally:
        assert stop(c) == 0, c.tail()
    assert stalled < n
    verdicts = entries(redis_server, "verdicts")
    assert len(verdicts) == n and len({f["source_id"] for _, f in verdicts}) == n
    assert r.xlen("mail:dead") == 0
