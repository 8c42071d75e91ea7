"""Generative models in the online server: the OpenAI API (with the official client), SSE framing, the OIP
generate extension, errors in OpenAI's shape, cost headers, /metrics, disconnects and a full queue.

Real `joules serve` processes on a tiny random Llama (tests/llm.py) beside the spam classifier.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve.chat_models import chat_home, slow_llm_bundle
from tests.serve.online.conftest import ServerProcess

Q = [{"role": "user", "content": "The capital of France is"}]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_llm_bundle: Path, trained_home: Path
) -> Iterator[ServerProcess]:
    """`joules serve spam chat`: a classifier and a generator in one server."""
    root = tmp_path_factory.mktemp("gen-server")
    home = chat_home(root, tiny_llm_bundle, spam_home=trained_home)
    s = ServerProcess(home, ["spam", "chat"], root / "server.log")
    try:
        yield s.wait_ready()
    finally:
        s.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def sse(lines: Iterator[str]) -> list[str]:
    """The data payloads of an SSE body, checking the framing: every event is one `data: ` line then a blank."""
    out, blank_expected = [], False
    for line in lines:
        if blank_expected:
            assert line == "", f"an event's data line is not followed by a blank line: {line!r}"
            blank_expected = False
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        out.append(line[len("data: ") :])
        blank_expected = True
    return out


def strict(text: str) -> object:
    def refuse(c: str) -> None:
        raise AssertionError(f"non-strict JSON constant {c} in {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def test_models_list_has_openai_shape_and_the_old_key(server: ServerProcess, client: openai.OpenAI) -> None:
    body = httpx.get(server.url + "/v1/models").json()
    assert body["object"] == "list" and {m["id"] for m in body["data"]} == {"chat", "spam"}
    assert {m["name"] for m in body["models"]} == {"chat", "spam"}
    assert sorted(m.id for m in client.models.list().data) == ["chat", "spam"]


def test_chat_with_the_openai_client_streamed_and_not(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="chat", messages=Q, max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=Q,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [r.choices[0].finish_reason]
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_completions_max_tokens_seed_stop_and_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(model="chat", prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2)
    ch = r.choices[0]
    assert r.usage is not None and r.usage.completion_tokens == 5 and ch.finish_reason == "length"
    assert ch.logprobs is not None and len(ch.logprobs.tokens or []) == 5
    assert all(len(t) <= 2 for t in ch.logprobs.top_logprobs or [])
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="chat", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == ch.text
    a, b = (
        client.completions.create(model="chat", prompt="Once", max_tokens=20, temperature=1.0, seed=7).choices[0].text
        for _ in range(2)
    )
    assert a == b
    full = client.completions.create(model="chat", prompt="Once", max_tokens=20, temperature=0).choices[0].text
    cut = full.strip()[:2] if full.strip() else None
    if cut:
        stopped = client.completions.create(model="chat", prompt="Once", max_tokens=20, temperature=0, stop=[cut])
        assert cut not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="chat", messages=Q, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for x in content:
        assert len(x.top_logprobs) == 3 and x.logprob <= 0
        assert x.token == x.top_logprobs[0].token  # greedy: the chosen token is the most likely one


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"seed": "x"}, "seed"),
        ({"stop": 5}, "stop"),
    ],
)
def test_bad_parameters_are_400_in_openai_shape(server: ServerProcess, extra: dict[str, object], param: str) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "chat", "messages": Q, **extra}, timeout=30)
    assert r.status_code == 400, r.text
    err = strict(r.text)["error"]  # type: ignore[index]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["message"]


def test_bad_parameters_raise_the_clients_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=Q, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=Q, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "cat " * 3000}])


def test_malformed_bodies_are_400_never_500(server: ServerProcess) -> None:
    for body in (
        b"{",
        b"[]",
        b'{"messages": []}',
        b'{"model": "chat"}',
        b'{"model": "chat", "messages": "hi"}',
        b'{"model": "chat", "messages": [{"role": "robot", "content": "x"}]}',
    ):
        r = httpx.post(server.url + "/v1/chat/completions", content=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert "error" in strict(r.text)  # type: ignore[operator]
    r = httpx.post(server.url + "/v1/completions", json={"model": "chat", "prompt": ["a", "b"]}, timeout=30)
    assert r.status_code == 400 and strict(r.text)["error"]["param"] == "prompt"  # type: ignore[index]


def test_wrong_kind_of_model_is_a_clear_400(server: ServerProcess) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "spam", "messages": Q}, timeout=30)
    assert r.status_code == 400 and "text-generation" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/models/chat:predict", json={"instances": [{"text": "hello"}]}, timeout=30)
    assert r.status_code == 400 and "/v1/chat/completions" in r.json()["error"]
    r = httpx.post(
        server.url + "/v2/models/chat/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
        timeout=30,
    )
    assert r.status_code == 400
    # The classifier still answers beside the generator.
    r = httpx.post(
        server.url + "/v1/models/spam:predict", json={"instances": [{"text": "WIN a prize now"}]}, timeout=30
    )
    assert r.status_code == 200


def test_sse_framing_and_done(server: ServerProcess) -> None:
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"model": "chat", "messages": Q, "max_tokens": 6, "temperature": 0, "stream": True},
        timeout=60,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = sse(r.iter_lines())
    assert data[-1] == "[DONE]"
    events = [strict(d) for d in data[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)  # type: ignore[index]
    last = events[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")  # type: ignore[index]
    assert last["joules_cost"]["energy_j"] > 0  # type: ignore[index]


def test_cost_headers_and_body(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "chat", "messages": Q, "max_tokens": 4, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200
    body = strict(r.text)
    assert float(r.headers["X-Joules-Energy-J"]) > 0 and float(r.headers["X-Joules-Cost-USD"]) > 0
    assert float(r.headers["X-Joules-CO2-g"]) > 0
    assert body["joules_cost"]["energy_j"] == pytest.approx(float(r.headers["X-Joules-Energy-J"]), rel=1e-5)  # type: ignore[index]


def test_oip_generate_and_generate_stream(server: ServerProcess) -> None:
    req = {"text_input": "Once upon a time", "parameters": {"max_tokens": 6, "temperature": 0}}
    r = httpx.post(server.url + "/v2/models/chat/generate", json=req, timeout=60)
    assert r.status_code == 200, r.text
    whole = strict(r.text)
    assert whole["model_name"] == "chat" and isinstance(whole["text_output"], str)  # type: ignore[index]
    assert whole["usage"]["completion_tokens"] == 6 and "X-Joules-Energy-J" in r.headers  # type: ignore[index]
    with httpx.stream("POST", server.url + "/v2/models/chat/generate_stream", json=req, timeout=60) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [strict(d) for d in sse(s.iter_lines())]
    assert "".join(e["text_output"] for e in events) == whole["text_output"]  # type: ignore[index]
    assert events[-1]["finish_reason"] == "length"  # type: ignore[index]
    meta = httpx.get(server.url + "/v2/models/chat", timeout=10).json()
    assert meta["inputs"][0]["name"] == "text_input"
    assert httpx.get(server.url + "/v2/models/chat/ready", timeout=10).json()["ready"] is True
    bad = httpx.post(server.url + "/v2/models/chat/generate", json={"text_input": 5}, timeout=10)
    assert bad.status_code == 400 and "text_input" in bad.json()["error"]


def test_llm_metrics_present_and_moving(server: ServerProcess, client: openai.OpenAI) -> None:
    before = server.metric("joules_llm_tokens_total", kind="completion")
    ttft = server.metric("joules_llm_time_to_first_token_seconds_count", model="chat")
    client.completions.create(model="chat", prompt="Once", max_tokens=7, temperature=0)
    assert server.metric("joules_llm_tokens_total", kind="completion") == before + 7
    assert server.metric("joules_llm_time_to_first_token_seconds_count", model="chat") == ttft + 1
    assert server.metric("joules_llm_inter_token_latency_seconds_count", model="chat") > 0
    assert server.metric("joules_llm_tokens_total", kind="prompt") > 0
    names = {n for n, _ in server.metrics()}
    for name in ("joules_llm_running_sequences", "joules_llm_waiting_sequences", "joules_llm_kv_cache_usage_ratio"):
        assert name in names
    assert server.metric("joules_energy_joules_total", model="chat") > 0


@pytest.fixture(scope="module")
def slow_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """A server on a slower random Llama with one running sequence and no waiting room."""
    root = tmp_path_factory.mktemp("gen-slow")
    home = chat_home(root, slow_llm_bundle(root))
    s = ServerProcess(home, ["chat", "--max-num-seqs", "1", "--max-waiting-seqs", "0", "--threads", "1"], root / "log")
    try:
        yield s.wait_ready()
    finally:
        s.stop(signal.SIGKILL)


LONG = {"model": "chat", "prompt": "Once", "max_tokens": 480, "temperature": 0, "ignore_eos": True, "stream": True}


def test_disconnect_frees_the_slot_and_stops_the_work(slow_server: ServerProcess) -> None:
    s = slow_server
    energy = s.metric("joules_energy_joules_total", model="chat")
    with httpx.stream("POST", s.url + "/v1/completions", json=LONG, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert s.metric("joules_llm_running_sequences") == 1
    # The client is gone: its sequence leaves within a step, and no more tokens are computed for it.
    for _ in range(100):
        if s.metric("joules_llm_running_sequences") == 0:
            break
        threading.Event().wait(0.05)  # polling a state, bounded
    assert s.metric("joules_llm_running_sequences") == 0
    done = s.metric("joules_llm_tokens_total", kind="completion")
    threading.Event().wait(0.5)
    assert s.metric("joules_llm_tokens_total", kind="completion") == done
    assert done < LONG["max_tokens"]  # type: ignore[operator]
    # The tokens computed before the client left are priced: the aborted completion's cost is counted.
    for _ in range(100):
        if s.metric("joules_energy_joules_total", model="chat") > energy:
            break
        threading.Event().wait(0.05)  # polling a counter, bounded
    assert s.metric("joules_energy_joules_total", model="chat") > energy


def test_a_full_queue_is_503_with_retry_after(slow_server: ServerProcess) -> None:
    s = slow_server
    with httpx.stream("POST", s.url + "/v1/completions", json=LONG, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(4):  # a few tokens in: the one slot is taken
            next(lines)
        refused = httpx.post(s.url + "/v1/chat/completions", json={"model": "chat", "messages": Q}, timeout=30)
        assert refused.status_code in (429, 503) and refused.headers.get("Retry-After")
        err = strict(refused.text)["error"]  # type: ignore[index]
        assert err["code"] == "overloaded" and "retry" in err["message"]
        oip = httpx.post(s.url + "/v2/models/chat/generate", json={"text_input": "x"}, timeout=30)
        assert oip.status_code in (429, 503) and "error" in oip.json()


def test_an_engine_that_cannot_run_makes_the_server_unready(tiny_llm_bundle: Path, tmp_path: Path) -> None:
    """Readiness asks the engine: once it cannot run, ready is 503 and requests fail fast with 503."""
    from starlette.testclient import TestClient

    from joules.registry import Registry
    from joules.serve.online import ServeConfig, create_app
    from joules.settings import Settings

    home = chat_home(tmp_path, tiny_llm_bundle)
    config = ServeConfig(models=("chat",), max_num_seqs=2, max_num_batched_tokens=24, prefix_cache_slots=1)
    app = create_app(config, Registry(Settings(home=home)))
    with TestClient(app) as c:
        for _ in range(600):
            if c.get("/v2/health/ready").status_code == 200:
                break
            threading.Event().wait(0.05)  # polling the server's loading, bounded
        assert c.get("/v2/models/chat/ready").json()["ready"] is True
        # The served engine runs the server's limits (--max-num-seqs, --max-num-batched-tokens, --prefix-cache-slots).
        ec = app.state.server.repo.get("chat").engine.config
        assert (ec.max_num_seqs, ec.max_num_batched_tokens, ec.prefix_cache_slots) == (2, 24, 1)
        app.state.server.repo.get("chat").engine.close()  # as a decoder failure or a dead rank leaves it
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/chat/ready").status_code == 503
        r = c.post("/v1/chat/completions", json={"model": "chat", "messages": Q, "max_tokens": 2})
        assert r.status_code == 503 and r.headers.get("Retry-After") and "shut down" in r.json()["error"]["message"]
        assert c.post("/v2/models/chat/generate", json={"text_input": "x"}).status_code == 503
