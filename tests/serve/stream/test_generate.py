"""`joules stream` over a text-generation model: one completion per message, exactly once (JSONL and Redis)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import JOULES
from tests.serve.chat_models import chat_home
from tests.serve.stream.conftest import RedisServer, wait_until
from tests.serve.stream.helpers import entries, pending


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_llm_bundle: Path) -> Path:
    return chat_home(tmp_path_factory.mktemp("stream-chat"), tiny_llm_bundle)


def test_jsonl_one_completion_per_message(home: Path) -> None:
    lines = [
        json.dumps({"id": "a", "prompt": "Once upon a time"}),
        json.dumps({"id": "b", "messages": [{"role": "user", "content": "Привет"}]}),
        json.dumps({"id": "c", "text": "no prompt"}),
        "not json",
        json.dumps({"id": "d", "prompt": "cat " * 800}),
        json.dumps({"id": "e", "prompt": "The capital of"}),
    ]
    proc = subprocess.run(
        [*JOULES, "stream", "chat", "--source", "-", "--max-tokens", "5"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env={**os.environ, "JOULES_HOME": str(home)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [o["source_id"] for o in out] == [1, 2, 3, 4, 5, 6]  # each message exactly once, in order
    done = {o["id"]: o for o in out if "text" in o}
    assert sorted(done) == ["a", "b", "e"]
    for o in done.values():
        assert o["completion_tokens"] <= 5 and o["prompt_tokens"] > 0 and o["energy_j"] > 0 and o["model"] == "chat:1"
    dead = [o for o in out if "reason" in o]
    assert len(dead) == 3 and "context" in dead[2]["reason"]


def test_redis_completions_exactly_once(home: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    r = redis_server.client
    n = 24
    for i in range(n):
        r.xadd("prompts", {"id": f"p{i}", "prompt": f"Story {i}: once upon a time"})
    r.xadd("prompts", {"id": "chat", "messages": json.dumps([{"role": "user", "content": "hi"}])})
    r.xadd("prompts", {"id": "bad", "messages": "[not json"})
    log = tmp_path / "consumer.log"
    args = [
        *JOULES,
        "stream",
        "chat",
        "--source",
        redis_server.url("prompts"),
        "--sink",
        redis_server.url("completions"),
        "--group",
        "g",
        "--consumer",
        "c1",
        "--max-tokens",
        "6",
        "--batch-size",
        "8",
    ]
    with log.open("wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "JOULES_HOME": str(home)})
    try:
        wait_until(
            lambda: (
                r.xlen("completions") + r.xlen("prompts:dead") >= n + 2 and pending(redis_server, "prompts", "g") == 0
            ),
            120,
            "every prompt answered",
        )
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, log.read_text()[-2000:]
    got = entries(redis_server, "completions")
    ids = [f["id"] for _, f in got]
    assert sorted(ids) == sorted([f"p{i}" for i in range(n)] + ["chat"]) and len(set(ids)) == len(ids)
    for _, f in got:
        assert f["finish_reason"] in ("stop", "length") and int(f["completion_tokens"]) <= 6 and "text" in f
    dead = entries(redis_server, "prompts:dead")
    assert len(dead) == 1 and "messages" in dead[0][1]["reason"]
