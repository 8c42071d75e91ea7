"""``joules generate`` and ``joules chat`` as a user runs them, on the tiny Llama."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import JOULES, run_joules


@pytest.fixture(scope="module")
def chat_home(tmp_path_factory: pytest.TempPathFactory, tiny_llm_bundle: Path) -> Path:
    home = tmp_path_factory.mktemp("chat-home")
    run_joules("import", str(tiny_llm_bundle), "--name", "chat", "--promote", home=home, check=True)
    return home


def test_generate_streams_the_greedy_completion(chat_home: Path) -> None:
    args = ["generate", "chat", "Héllo", "--max-tokens", "12", "--temperature", "0", "--max-model-len", "128"]
    proc = run_joules(*args, home=chat_home, check=True)
    again = run_joules(*args, "--json", home=chat_home, check=True)
    result = json.loads(again.stdout)
    assert proc.stdout == result["text"] + "\n"
    assert result["usage"]["completion_tokens"] <= 12 and result["finish_reason"] in ("stop", "length")
    assert result["cost"]["energy_j"] > 0 and "tokens" in proc.stderr


def test_generate_raw_and_seeded(chat_home: Path) -> None:
    args = ["generate", "chat", "The capital of France is", "--raw", "--max-tokens", "10", "--seed", "5", "--json"]
    a = json.loads(run_joules(*args, "--temperature", "1", home=chat_home, check=True).stdout)
    b = json.loads(run_joules(*args, "--temperature", "1", home=chat_home, check=True).stdout)
    assert a["text"] == b["text"]
    assert a["usage"]["prompt_tokens"] < 12  # no chat template around a raw prompt


def test_user_errors_are_one_line_and_exit_2(chat_home: Path) -> None:
    for args in (
        ["generate", "nope", "hi"],
        ["generate", "chat", "hi", "--temperature", "-1"],
        ["generate", "chat", "hi", "--max-tokens", "0"],
        ["generate", "chat", "word " * 400, "--max-model-len", "64"],
    ):
        proc = run_joules(*args, home=chat_home)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [x for x in proc.stderr.splitlines() if x.startswith("joules: error")]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_chat_keeps_the_conversation_until_exit(chat_home: Path) -> None:
    env = {**os.environ, "JOULES_HOME": str(chat_home)}
    proc = subprocess.run(
        [*JOULES, "chat", "chat", "--temperature", "0", "--max-tokens", "6", "--max-model-len", "256"],
        input="Héllo\nThe capital of France is\n/exit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") == 3  # two turns answered, then /exit
    eof = subprocess.run(
        [*JOULES, "chat", "chat", "--max-tokens", "4", "--max-model-len", "128"],
        input="hi\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert eof.returncode == 0, eof.stderr
