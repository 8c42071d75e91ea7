"""`joules bench --url` against a real `joules serve` process (the tiny spam model): the load it
reports is the load the server saw, and the server's cost counters are what bench reads."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from joules.bench.loadgen import parse_counters
from tests.helpers import run_joules
from tests.serve.online.conftest import ServerProcess, Starter, sms


@pytest.fixture()
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sms(50)))
    return path


def test_cost_headers_and_counters_are_what_bench_reads(spam_home: Path, start_server: Starter) -> None:
    server = start_server(spam_home, "spam")
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "a longer message"]}]}
    seen = 0.0
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            r = client.post("/v2/models/spam/infer", json=body)
            assert r.status_code == 200
            energy = float(r.headers["x-joules-energy-j"])
            assert energy > 0 and float(r.headers["x-joules-cost-usd"]) > 0 and float(r.headers["x-joules-co2-g"]) > 0
            seen += energy
        text = client.get("/metrics").text
    counters = parse_counters(text)
    assert set(counters) == {"joules_energy_joules_total", "joules_cost_usd_total", "joules_co2_grams_total"}
    assert counters["joules_energy_joules_total"] == pytest.approx(seen, rel=1e-3), "headers add up to the counter"


def _served(server: ServerProcess) -> tuple[float, float, float]:
    """Requests answered 200, their summed server-side duration (s), and energy counted, so far."""
    return (
        server.metric("joules_requests_total", model="spam", status="200"),
        server.metric("joules_request_duration_seconds_sum", model="spam"),
        server.metric("joules_energy_joules_total", model="spam"),
    )


@pytest.mark.parametrize("load", [["--scenario", "server", "--qps", "20"], ["--scenario", "single-stream"]])
def test_bench_url_drives_a_real_server(
    spam_home: Path, start_server: Starter, texts: Path, tmp_path: Path, load: list[str]
) -> None:
    server = start_server(spam_home, "spam")
    before = _served(server)
    proc = run_joules(
        "bench", "spam", "--url", server.url, *load, "--duration", "3", "--warmup", "0",
        "--data", str(texts), "--server-pid", str(server.proc.pid), "--out", str(tmp_path / "report"), "--json",
        home=spam_home, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    after = _served(server)
    assert d["errors"] == 0 and d["samples"] > 10, d
    # No warm-up: every query bench timed is a request the server answered, and no other.
    assert after[0] - before[0] == d["samples"], "the server answered exactly the queries bench counted"
    lat = d["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # What bench measures from outside contains what the server measured inside, request by request.
    server_mean_ms = 1000 * (after[1] - before[1]) / d["samples"]
    assert lat["mean"] >= server_mean_ms, (lat, server_mean_ms)
    reported = d["system"]["reported_per_1000"]
    assert reported["energy_j"] == pytest.approx(1000 * (after[2] - before[2]) / d["samples"], rel=1e-3)
    assert reported["usd"] > 0 and reported["co2_g"] > 0
    assert d["system"]["cpu_ms_per_query"] > 0, "--server-pid: the server's CPU time over the run"
    calls = d["system"]["model_calls"]
    # Every query bench counted is one row of one of the server's model calls (its /metrics), and no other.
    assert 1 <= calls <= d["samples"] and d["system"]["rows_per_call"] == round(d["samples"] / calls, 2), d["system"]
    assert d["loadgen"]["cpu_s"] > 0 and d["loadgen"]["cpu_ms_per_query"] > 0
    if d["scenario"] == "server":
        assert d["qps_target"] == 20 and d["throughput_msg_s"] == d["qps_achieved"] > 0
    assert (tmp_path / "report" / "latency.png").is_file() and (tmp_path / "report" / "result.json").is_file()


@pytest.mark.slow  # a search of several 2 s runs; the search logic itself is tested fast in test_stats.py
def test_find_max_qps_against_a_real_server(
    spam_home: Path, start_server: Starter, texts: Path, tmp_path: Path
) -> None:
    server = start_server(spam_home, "spam")
    proc = run_joules(
        "bench", "spam", "--url", server.url, "--scenario", "server", "--find-max-qps", "--p99-ms", "100",
        "--duration", "2", "--warmup", "0.3", "--data", str(texts), "--out", str(tmp_path / "r"), "--json",
        home=spam_home, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    passed = [p for p in d["search"] if p["passed"]]
    failed = [p for p in d["search"] if not p["passed"]]
    assert passed and failed, f"the search found both sides: {d['search']}"
    assert d["max_qps"] == pytest.approx(max(p["qps"] for p in passed), abs=0.01)
    assert all(p["p99_ms"] <= 100 and p["errors"] == 0 for p in passed)
    assert all(p["p99_ms"] > 100 or p["errors"] or p["qps_achieved"] < 0.9 * p["qps"] for p in failed)
    assert d["latency_ms"]["p99"] <= 100, "the reported run is the best passing one"
    assert (tmp_path / "r" / "throughput_vs_p99.png").is_file()
