"""Every answered request carries its cost (headers, V2 parameters, /v1 cost), /metrics adds the
same figures up, and the pricing settings change them as documented: against real servers."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as th

from joules.grid import grid_intensity
from joules.meter import HEADER_CO2, HEADER_ENERGY, HEADER_METHOD, HEADER_USD
from tests.helpers import run_joules
from tests.serve.online.conftest import ServerProcess, Starter, sms

KEYS = {"energy_j", "cost_usd", "co2_g", "energy_method"}
COUNTERS = {
    "energy_j": "joules_energy_joules_total",
    "cost_usd": "joules_cost_usd_total",
    "co2_g": "joules_co2_grams_total",
}
HEADERS = {"energy_j": HEADER_ENERGY, "cost_usd": HEADER_USD, "co2_g": HEADER_CO2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_home: Path) -> Iterator[ServerProcess]:
    # A long deadline: a request that timed out would have its share counted but never reported.
    log = tmp_path_factory.mktemp("cost-log") / "server.log"
    proc = ServerProcess(module_home, ["spam", "--timeout-ms", "120000"], log)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop(signal.SIGKILL)


def v1(server: ServerProcess, texts: list[str]) -> httpx.Response:
    r = httpx.post(server.url + "/v1/models/spam:predict", json={"instances": [{"text": t} for t in texts]}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def v2(server: ServerProcess, texts: list[str]) -> httpx.Response:
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    r = httpx.post(server.url + "/v2/models/spam/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r


def from_headers(r: httpx.Response) -> dict[str, Any]:
    """The cost headers as numbers; each must be present and parse."""
    for h in (*HEADERS.values(), HEADER_METHOD):
        assert h in r.headers, f"{h} missing from {dict(r.headers)}"
    out: dict[str, Any] = {k: float(r.headers[h]) for k, h in HEADERS.items()}
    out["energy_method"] = r.headers[HEADER_METHOD]
    return out


def agrees(exact: dict[str, Any], headers: dict[str, Any]) -> None:
    """Body figures (full precision) and header figures (%.6g) are the same numbers."""
    assert set(exact) == KEYS
    assert exact["energy_method"] == headers["energy_method"] in {"measured", "modelled"}
    for k in HEADERS:
        assert isinstance(exact[k], float)
        assert headers[k] == pytest.approx(exact[k], rel=1e-5), k


def counters(server: ServerProcess) -> dict[str, float]:
    return {k: server.metric(name, model="spam", version="1") for k, name in COUNTERS.items()}


def test_v1_response_carries_its_cost(server: ServerProcess) -> None:
    r = v1(server, sms(3))
    headers = from_headers(r)
    assert all(headers[k] > 0 for k in HEADERS), headers
    body = r.json()
    assert body["model"] == "spam" and body["version"] == 1 and len(body["predictions"]) == 3
    assert all(set(p) == {"label", "probabilities", "action"} for p in body["predictions"])
    agrees(body["cost"], headers)


def test_v2_response_carries_its_cost_in_headers_and_parameters(server: ServerProcess) -> None:
    r = v2(server, sms(2, offset=10))
    headers = from_headers(r)
    assert all(headers[k] > 0 for k in HEADERS), headers
    agrees(r.json()["parameters"], headers)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_reads_the_cost_parameters(server: ServerProcess, binary: bool) -> None:
    client = th.InferenceServerClient(server.url.removeprefix("http://"))
    inp = th.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(np.array(sms(2, offset=20), dtype=object), binary_data=binary)
    outputs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label", "action")]
    result = client.infer("spam", [inp], outputs=outputs)
    params = result.get_response()["parameters"]
    assert set(params) == KEYS and params["energy_method"] in {"measured", "modelled"}
    assert params["energy_j"] > 0 and params["cost_usd"] > 0 and params["co2_g"] > 0
    assert result.as_numpy("probabilities").shape == (2, 2)


def test_metrics_add_up_the_per_response_figures(server: ServerProcess) -> None:
    before = counters(server)
    exact: list[dict[str, Any]] = []
    texts = sms(12, offset=30)
    for i in range(4):  # one at a time, both APIs
        exact.append(v1(server, texts[i : i + 2]).json()["cost"])
        exact.append(v2(server, [texts[i + 4]]).json()["parameters"])
    # Concurrent callers of the same texts: batched together, the duplicate rows computed once and shared.
    burst = [texts[8 + i % 2 : 10 + i % 2] for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        exact.extend(r.json()["cost"] for r in pool.map(lambda t: v1(server, t), burst))
    after = counters(server)
    for k in COUNTERS:
        reported = sum(c[k] for c in exact)
        assert reported > 0
        assert after[k] - before[k] == pytest.approx(reported, rel=1e-6, abs=1e-15), k


def test_pricing_follows_flags_over_environment_over_config(spam_home: Path, start_server: Starter) -> None:
    # config.yaml: region de, $1/h; the environment: $2/h (wins over the file); flags: region fr (wins over
    # the file), 4 vCPUs, 2 W per busy thread and no static power, so modelled energy is CPU-seconds x 2 W.
    (spam_home / "config.yaml").write_text("region: de\nprice_per_hour: 1.0\n")
    srv = start_server(
        spam_home,
        "spam",
        "--region",
        "fr",
        "--vcpus",
        "4",
        "--watts-per-core",
        "2",
        "--static-watts",
        "0",
        "--cache-size",
        "16",
        "--timeout-ms",
        "120000",
        env={"JOULES_PRICE_PER_HOUR": "2.0"},
    )
    text = sms(1, offset=60)
    c = v2(srv, text).json()["parameters"]
    assert c["energy_j"] > 0
    # CO2 = kWh x the grid's intensity: France's, not Germany's.
    assert c["co2_g"] / c["energy_j"] == pytest.approx(grid_intensity("fr") / 3.6e6, rel=1e-9)
    assert grid_intensity("fr") != grid_intensity("de")
    if c["energy_method"] == "modelled":
        # usd = $2/h x cpu_s / (4 x 3600) and energy = cpu_s x 2 W, so usd / energy = 2 / (4 x 3600 x 2).
        assert c["cost_usd"] / c["energy_j"] == pytest.approx(2.0 / (4 * 3600 * 2.0), rel=1e-9)
    else:  # RAPL energy is not proportional to the CPU-seconds the dollars are spread over
        assert c["cost_usd"] > 0
    assert "price_per_hour from environment JOULES_PRICE_PER_HOUR" in srv.output()

    # Answered from the response cache: no model call, so no energy, no dollars, nothing counted.
    before = counters(srv)
    again = v2(srv, text)
    headers = from_headers(again)
    assert headers["energy_j"] == headers["cost_usd"] == headers["co2_g"] == 0
    agrees(again.json()["parameters"], headers)
    assert counters(srv) == before


def test_unknown_region_is_refused_before_serving(spam_home: Path, free_port: int) -> None:
    proc = run_joules("serve", "spam", "--port", str(free_port), "--region", "atlantis", home=spam_home, timeout=120)
    assert proc.returncode != 0
    assert "atlantis" in proc.stderr
