"""`joules batch` over a text-generation model: prompts and chats, error rows, and a kill -9 then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import JOULES, run_joules
from tests.serve.chat_models import chat_home


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_llm_bundle: Path) -> Path:
    return chat_home(tmp_path_factory.mktemp("batch-chat"), tiny_llm_bundle)


def write_jsonl(path: Path, rows: list[object]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_batch_chat_rows_errors_and_cost(home: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    write_jsonl(
        inp,
        [
            {"id": "p0", "prompt": "Once upon a time"},
            {"id": "m1", "messages": [{"role": "user", "content": "Bonjour, café?"}]},
            {"id": "none"},
            "{not json",
            {"id": "long", "prompt": "cat " * 800},
            {"id": "p5", "prompt": "The capital of France is"},
        ],
    )
    r = run_joules("batch", "chat", str(inp), "-o", str(out), "--max-tokens", "6", "--json", "--no-progress", home=home)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rows"] == 6 and summary["completed"] == 3 and summary["errors"] == 3
    rows = read_jsonl(out)
    assert [x["id"] for x in rows] == ["p0", "m1", "p5"]
    for x in rows:
        assert isinstance(x["text"], str) and x["finish_reason"] in ("stop", "length")
        assert x["prompt_tokens"] > 0 and 0 < x["completion_tokens"] <= 6 and x["energy_j"] > 0 and x["usd"] > 0
    errors = read_jsonl(Path(str(out) + ".errors.jsonl"))
    assert [e["row"] for e in errors] == [2, 3, 4]
    assert "prompt" in errors[0]["reason"] and "JSON" in errors[1]["reason"] and "context" in errors[2]["reason"]
    assert summary["cost"]["per_1m_completion_tokens"]["energy_j"] > 0


def test_batch_chat_is_greedy_and_matches_the_engine_alone(home: Path, tmp_path: Path) -> None:
    """Rows share the running batch; greedy output is each prompt's own (what `joules generate` gives: a
    prompt is one user message through the chat template, or plain text with --raw)."""
    prompts = ["Once upon a time", "The capital of", "Héllo wörld", "def fibonacci(n):"]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"id": i, "prompt": p} for i, p in enumerate(prompts)])
    r = run_joules("batch", "chat", str(inp), "-o", str(out), "--max-tokens", "10", "--no-progress", home=home)
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(out)
    alone = run_joules("generate", "chat", prompts[2], "--json", "--max-tokens", "10", "--temperature", "0", home=home)
    assert alone.returncode == 0, alone.stderr
    assert rows[2]["text"] == json.loads(alone.stdout)["text"]
    raw_out = tmp_path / "raw.jsonl"
    r = run_joules("batch", "chat", str(inp), "-o", str(raw_out), "--max-tokens", "10", "--raw", home=home)
    assert r.returncode == 0, r.stderr
    raw_alone = run_joules(
        "generate", "chat", prompts[2], "--raw", "--json", "--max-tokens", "10", "--temperature", "0", home=home
    )
    assert read_jsonl(raw_out)[2]["text"] == json.loads(raw_alone.stdout)["text"] != rows[2]["text"]


def test_batch_chat_survives_kill_9_and_resumes_exactly_once(home: Path, tmp_path: Path) -> None:
    n = 160
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, [{"id": f"r{i}", "prompt": f"Story number {i}: once upon a time"} for i in range(n)])
    flags = ["--max-tokens", "24", "--chunk-rows", "4", "--no-progress"]
    whole = tmp_path / "whole.jsonl"
    assert run_joules("batch", "chat", str(inp), "-o", str(whole), *flags, home=home).returncode == 0

    out = tmp_path / "out.jsonl"
    ckpt = Path(str(out) + ".checkpoint.json")
    env = {**os.environ, "JOULES_HOME": str(home)}
    proc = subprocess.Popen(
        [*JOULES, "batch", "chat", str(inp), "-o", str(out), *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and proc.poll() is None:
            if ckpt.exists() and json.loads(ckpt.read_text() or "{}").get("rows_done", 0) >= 8:
                break
            time.sleep(0.01)  # polling a file's state, bounded by the deadline above
        assert proc.poll() is None, "the job ended before it could be killed mid-way"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    r = run_joules("batch", "chat", str(inp), "-o", str(out), *flags, "--json", home=home)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["resumed_from"] >= 8 and summary["rows"] == n
    rows = read_jsonl(out)
    assert [x["id"] for x in rows] == [f"r{i}" for i in range(n)]  # each row once, in input order
    assert [x["text"] for x in rows] == [x["text"] for x in read_jsonl(whole)]  # greedy: as if never killed
    resumed = run_joules("batch", "chat", str(inp), "-o", str(out), *flags, home=home)
    assert resumed.returncode == 2 and "already exists" in resumed.stderr
