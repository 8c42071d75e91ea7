"""Dynamic batching under concurrent load, overload and the response cache, on a real server."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.online.conftest import Starter, sms


def run_clients(n: int, work) -> list:
    """``work(i)`` on ``n`` threads at once; returns what each returned, in order."""
    out: list = [None] * n
    barrier = threading.Barrier(n)

    def go(i: int) -> None:
        barrier.wait(60)
        out[i] = work(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("instances", ["1", "2"])
def test_concurrent_callers_share_model_calls_and_each_gets_its_own_answer(
    spam_home: Path, start_server: Starter, instances: str
) -> None:
    server = start_server(spam_home, "spam", "--max-batch-size", "16", "--instances", instances)
    texts = sms(96, offset=100)
    url = server.url + "/v1/models/spam:predict"
    # One at a time first: each alone in its model call.
    with httpx.Client(timeout=60) as c:
        alone = [c.post(url, json={"instances": [{"text": t}]}).json()["predictions"][0] for t in texts]
    calls_before = server.metric("joules_batch_size_count", model="spam")
    rows_before = server.metric("joules_batch_size_sum", model="spam")

    def client(i: int) -> list[tuple[int, dict]]:
        got = []
        with httpx.Client(timeout=60) as c:
            for k in range(i, len(texts), 24):
                r = c.post(url, json={"instances": [{"text": texts[k]}]})
                got.append((k, r.json()["predictions"][0] if r.status_code == 200 else r.status_code))
        return got

    answers = dict(pair for got in run_clients(24, client) for pair in got)
    assert sorted(answers) == list(range(len(texts)))
    for k, together in answers.items():
        assert isinstance(together, dict), (k, together)
        assert together["label"] == alone[k]["label"]
        np.testing.assert_allclose(
            list(together["probabilities"].values()), list(alone[k]["probabilities"].values()), atol=1e-5
        )
    calls = server.metric("joules_batch_size_count", model="spam") - calls_before
    rows = server.metric("joules_batch_size_sum", model="spam") - rows_before
    assert rows == len(texts)
    assert rows / calls > 1, f"no dynamic batching: {rows:.0f} rows in {calls:.0f} calls"
    assert server.metric("joules_queue_duration_seconds_count", model="spam") >= len(texts)


def test_overload_is_refused_with_503_and_the_server_recovers(spam_home: Path, start_server: Starter) -> None:
    server = start_server(spam_home, "spam", "--max-queue", "4", "--timeout-ms", "60000")
    url = server.url + "/v1/models/spam:predict"
    heavy = {"instances": [{"text": t * 8} for t in sms(64)]}  # long rows: every call takes a while

    def flood(i: int) -> list[tuple[int, str | None]]:
        got = []
        with httpx.Client(timeout=120) as c:
            for _ in range(3):
                r = c.post(url, json=heavy)
                got.append((r.status_code, r.headers.get("retry-after")))
        return got

    rss = []
    for _ in range(3):
        answers = [a for got in run_clients(48, flood) for a in got]
        codes = Counter(code for code, _ in answers)
        assert set(codes) <= {200, 503}, codes
        assert codes[503] > 0 and codes[200] > 0, codes
        assert all(retry is not None and int(retry) >= 1 for code, retry in answers if code == 503)
        r = httpx.post(url, json={"instances": [{"text": "are you coming tonight?"}]}, timeout=30)
        assert r.status_code == 200
        assert server.metric("joules_queue_depth", model="spam") == 0
        assert server.metric("joules_inflight_requests") == 0
        rss.append(server.rss_mb())
    # Memory is bounded: once two floods have warmed it up (which code paths and batch shapes the
    # first one reaches depends on the machine's speed), a third identical flood does not grow it.
    assert rss[2] < max(rss[:2]) * 1.15 + 30, rss


def test_response_cache_answers_repeats_without_a_model_call(spam_home: Path, start_server: Starter) -> None:
    server = start_server(spam_home, "spam", "--cache-size", "100")
    url = server.url + "/v1/models/spam:predict"
    texts = sms(3, offset=7)
    first = httpx.post(url, json={"instances": [{"text": t} for t in texts]}, timeout=30).json()
    rows = server.metric("joules_batch_size_sum", model="spam")
    again = httpx.post(
        url, json={"instances": [{"text": texts[2]}, {"text": "new one"}, {"text": texts[0]}]}, timeout=30
    )
    assert again.status_code == 200
    p = again.json()["predictions"]
    assert p[0] == first["predictions"][2] and p[2] == first["predictions"][0]
    assert server.metric("joules_batch_size_sum", model="spam") == rows + 1  # only "new one" was computed
    assert server.metric("joules_cache_hits_total", model="spam", version="1") == 2
    assert server.metric("joules_cache_misses_total", model="spam", version="1") == 4
    assert server.metric("joules_cache_entries", model="spam") == 4
