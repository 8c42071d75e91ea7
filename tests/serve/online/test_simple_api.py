"""The /v1 JSON API, the OpenAPI document and /metrics, against a real server."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.online.conftest import ServerProcess, sms


def predict(server: ServerProcess, body: object) -> httpx.Response:
    return httpx.post(server.url + "/v1/models/spam:predict", json=body, timeout=30)


def test_predictions_follow_instances_and_agree_with_v2(spam_server: ServerProcess) -> None:
    texts = sms(5)
    r = predict(spam_server, {"instances": [{"text": t} for t in texts]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "spam" and body["version"] == 1 and len(body["predictions"]) == 5
    for p in body["predictions"]:
        assert set(p) == {"label", "probabilities", "action"}
        assert set(p["probabilities"]) == {"ham", "spam"} and p["label"] == max(
            p["probabilities"], key=p["probabilities"].get
        )
    v2 = httpx.post(
        spam_server.url + "/v2/models/spam/infer",
        json={"inputs": [{"name": "text", "shape": [5], "datatype": "BYTES", "data": texts}]},
        timeout=30,
    ).json()
    probs = next(o for o in v2["outputs"] if o["name"] == "probabilities")["data"]
    assert probs[1::2] == pytest.approx([p["probabilities"]["spam"] for p in body["predictions"]], abs=1e-6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [{"txt": "x"}]}, "instances[0]: unknown field 'txt'"),
        ({"instances": [{"text": 5}]}, "instances[0]: field 'text' must be a string, got int"),
        ({"instances": [{"text": " "}]}, "instances[0]: field 'text' is empty or only whitespace"),
        ({"instances": [{"text": "ok"}, {}]}, "instances[1]: missing field 'text'"),
        ({"instances": []}, "'instances' is empty"),
        ({"instances": [{"text": "x"}], "extra": 1}, "unknown field 'extra'"),
        ({"inputs": [{"text": "x"}]}, "unknown field 'inputs'"),
        ({"instances": "x"}, "instances"),
        ({"instances": ["x"]}, "instances.0"),
        ({"instances": [{"text": "x"}] * 257}, "at most 256"),
        ([1, 2], "body"),
    ],
)
def test_bad_input_is_400_naming_the_field(spam_server: ServerProcess, body: object, message: str) -> None:
    r = predict(spam_server, body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_not_json_and_unknown_model(spam_server: ServerProcess) -> None:
    r = httpx.post(spam_server.url + "/v1/models/spam:predict", content=b"\x00\xff", timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(spam_server.url + "/v1/models/ghost:predict", json={"instances": [{"text": "x"}]}, timeout=10)
    assert r.status_code == 404 and "ghost" in r.json()["error"]
    r = httpx.post(spam_server.url + "/v1/models/a%20b:predict", json={"instances": [{"text": "x"}]}, timeout=10)
    assert r.status_code == 400


def test_model_listing(spam_server: ServerProcess) -> None:
    listing = httpx.get(spam_server.url + "/v1/models", timeout=10).json()
    assert [m["name"] for m in listing["models"]] == ["spam"]
    one = httpx.get(spam_server.url + "/v1/models/spam", timeout=10).json()
    assert one["ready"] is True and one["labels"] == ["ham", "spam"]


def test_openapi_describes_both_apis_and_docs_page(spam_server: ServerProcess) -> None:
    doc = httpx.get(spam_server.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/models/{model}:predict" in doc["paths"] and "/v2/models/{model}/infer" in doc["paths"]
    schemas = doc["components"]["schemas"]
    assert schemas["InferenceRequest"]["additionalProperties"] is False
    assert "instances" in schemas["PredictRequest"]["properties"]
    page = httpx.get(spam_server.url + "/docs", timeout=10)
    assert page.status_code == 200 and "/openapi.json" in page.text


def test_metrics_count_requests_by_model_version_and_status(spam_server: ServerProcess) -> None:
    before = spam_server.metric("joules_requests_total", model="spam", version="1", status="200")
    bad_before = spam_server.metric("joules_requests_total", model="spam", version="1", status="400")
    predict(spam_server, {"instances": [{"text": "hello"}]})
    predict(spam_server, {"instances": [{"txt": "hello"}]})
    assert spam_server.metric("joules_requests_total", model="spam", version="1", status="200") == before + 1
    assert spam_server.metric("joules_requests_total", model="spam", version="1", status="400") == bad_before + 1
    names = {name for name, _ in spam_server.metrics()}
    for family in (
        "joules_request_duration_seconds_bucket",
        "joules_queue_duration_seconds_bucket",
        "joules_compute_duration_seconds_bucket",
        "joules_batch_size_bucket",
        "joules_queue_depth",
        "joules_inflight_requests",
        "joules_energy_joules_total",
    ):
        assert family in names, family
    buckets = sorted(
        float(dict(lab)["le"]) for (n, lab), _ in spam_server.metrics().items() if n == "joules_batch_size_bucket"
    )
    assert buckets == [1, 2, 4, 8, 16, 32, float("inf")]
    assert spam_server.metric("joules_energy_joules_total", model="spam") > 0
    # Unknown model names are not labels: a client cannot grow the number of series.
    httpx.post(spam_server.url + "/v1/models/made-up-name:predict", json={"instances": []}, timeout=10)
    assert not any(dict(lab).get("model") == "made-up-name" for _, lab in spam_server.metrics())
