"""``joules serve --engine ray``: two Ray Serve replicas answer tritonclient and /v1, follow a promotion under
load without a failed request, and SIGTERM stops them and exits 0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import tritonclient.http as th

from tests.helpers import run_joules
from tests.serve.online.conftest import Starter
from tests.serve.online.test_hot_swap import Load, register_copy
from tests.serve.ray.conftest import RayHead

SPAM = "WINNER!! You have won a 1000 prize. Call 09061701461 to claim now"
HAM = "Are we still on for lunch tomorrow?"


def serve_replicas() -> int:
    out = subprocess.run(["pgrep", "-f", "^ray::ServeReplica"], capture_output=True, text=True).stdout
    return len(out.split())


def test_two_replicas_answer_tritonclient_and_v1_and_follow_a_promotion(
    spam_home: Path, tiny_bundle_dir: Path, start_server: Starter, ray_head: RayHead
) -> None:
    assert register_copy(spam_home, tiny_bundle_dir) == 2
    server = start_server(
        spam_home,
        "spam",
        "--engine",
        "ray",
        "--address",
        ray_head.address,
        "--replicas",
        "2",
        "--poll-interval-s",
        "0.2",
    )
    assert serve_replicas() >= 2
    url = server.url.removeprefix("http://")
    client = th.InferenceServerClient(url)
    inp = th.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(np.array([SPAM, HAM], dtype=object))
    labels = [x.decode() for x in client.infer("spam", [inp]).as_numpy("label").tolist()]
    assert labels[0] == "spam" and labels[1] != "spam"
    assert client.is_server_ready() and client.get_model_metadata("spam")["name"] == "spam"

    load = Load(server, clients=8)
    try:
        load.wait_for(1, 30)
        run_joules("models", "promote", "spam", "2", home=spam_home, check=True)
        load.wait_for(2, 60)  # both replicas poll; answers come from either
    finally:
        answers = load.finish()
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed during the switch: {failed[:5]}"
    assert server.metric("joules_requests_total") > 0  # /metrics: the answering replica's own counters
    assert server.stop() == 0, server.output()[-3000:]
    assert "stopping: draining the replicas" in server.output()


def test_a_generative_model_on_ray_serve_streams_through_the_openai_client(
    tmp_path: Path, tiny_llm_bundle: Path, start_server: Starter, ray_head: RayHead
) -> None:
    """The generative endpoints on a Ray Serve replica: the official client's chat completion, streamed (SSE
    through Ray's proxy, chunk by chunk) and not, with usage; a bad request keeps its 400 and OpenAI's shape."""
    import openai

    from tests.serve.chat_models import chat_home

    home = chat_home(tmp_path, tiny_llm_bundle)
    server = start_server(home, "chat", "--engine", "ray", "--address", ray_head.address, "--replicas", "1")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    q = [{"role": "user", "content": "The capital of France is"}]
    r = client.chat.completions.create(model="chat", messages=q, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 8
    chunks = list(
        client.chat.completions.create(model="chat", messages=q, max_tokens=8, temperature=0, stream=True)  # type: ignore[arg-type]
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and streamed == r.choices[0].message.content  # greedy: the same text both ways
    try:
        client.chat.completions.create(model="chat", messages=q, max_tokens=-1)  # type: ignore[arg-type]
        raise AssertionError("max_tokens=-1 was accepted")
    except openai.BadRequestError as e:
        assert "max_tokens" in str(e)
