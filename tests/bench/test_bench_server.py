"""joules bench --url against a real V2 server process with a known capacity; cost headers and counters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from joules.bench.loadgen import parse_counters
from tests.conftest import ROOT
from tests.helpers import run_joules

SERVICE_MS = 20.0  # capacity: 50 requests a second


@pytest.fixture()
def fake_server(free_port: int) -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.fake_v2_server", "--port", str(free_port), "--service-ms", str(SERVICE_MS)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{free_port}"
    deadline = time.monotonic() + 60
    while True:  # readiness check, not a fixed sleep
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"fake server did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    yield url, proc.pid
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": f"message number {i} " * (1 + i % 5)}) + "\n" for i in range(50)))
    return path


def test_cost_headers_parameters_and_counters(fake_server: tuple[str, int]) -> None:
    url, _ = fake_server
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "a longer message"]}]}
    seen = 0.0
    with httpx.Client(base_url=url) as client:
        for _ in range(3):
            r = client.post("/v2/models/fake/infer", json=body)
            assert r.status_code == 200
            energy = float(r.headers["x-joules-energy-j"])
            assert energy > 0 and float(r.headers["x-joules-cost-usd"]) > 0 and float(r.headers["x-joules-co2-g"]) > 0
            assert r.headers["x-joules-energy-method"] == "modelled"
            assert r.json()["parameters"]["energy_j"] == pytest.approx(energy, rel=1e-5)
            seen += energy
        text = client.get("/metrics").text
    assert 'joules_energy_joules_total{model="fake",version="1"}' in text
    counters = parse_counters(text)
    assert set(counters) == {"joules_energy_joules_total", "joules_cost_usd_total", "joules_co2_grams_total"}
    assert counters["joules_energy_joules_total"] == pytest.approx(seen, rel=1e-4), "headers add up to the counter"


def test_bench_server_scenario_over_http(fake_server: tuple[str, int], texts: Path, tmp_path: Path) -> None:
    url, pid = fake_server
    proc = run_joules(
        "bench", "fake", "--url", url, "--scenario", "server", "--qps", "10", "--duration", "2", "--warmup", "0.5",
        "--data", str(texts), "--server-pid", str(pid), "--out", str(tmp_path / "report"), "--json",
        home=tmp_path / "home", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["scenario"] == "server" and d["qps_target"] == 10 and d["errors"] == 0 and d["samples"] > 0
    lat = d["latency_ms"]
    assert SERVICE_MS * 0.9 <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert d["throughput_msg_s"] == d["qps_achieved"] > 0
    assert d["loadgen"]["cpu_s"] > 0 and d["loadgen"]["cpu_ms_per_query"] > 0
    assert d["system"]["cpu_ms_per_query"] >= 0 and d["system"]["reported_per_1000"]["energy_j"] > 0
    assert (tmp_path / "report" / "latency.png").is_file() and (tmp_path / "report" / "result.json").is_file()


@pytest.mark.slow  # about 30 s of load; the search logic itself is tested fast in test_stats.py
def test_find_max_qps_on_a_server_of_known_capacity(fake_server: tuple[str, int], texts: Path, tmp_path: Path) -> None:
    url, _ = fake_server
    capacity = 1000.0 / SERVICE_MS
    proc = run_joules(
        "bench", "fake", "--url", url, "--scenario", "server", "--find-max-qps", "--p99-ms", "300",
        "--duration", "2", "--warmup", "0.3", "--data", str(texts), "--out", str(tmp_path / "r"), "--json",
        home=tmp_path / "home", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    # A queue that serves 50/s cannot keep p99 within the bound above 50/s; the search must get
    # close from below (wide margin: a shared machine slows the fake's event loop too).
    assert d["max_qps"] is not None and 0.3 * capacity <= d["max_qps"] <= 1.15 * capacity, d["search"]
    assert any(not p["passed"] for p in d["search"]), "the search found the failing side"
    assert (tmp_path / "r" / "throughput_vs_p99.png").is_file()
