"""``joules stream NAME --source -``: JSONL in on stdin, one JSONL line out per message, no broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import JOULES, run_joules


def test_stdin_to_stdout_one_line_per_message(spam_home: Path) -> None:
    lines = [
        json.dumps({"id": "a", "text": "WINNER!! You have won a free prize, call now"}),
        json.dumps({"id": 7, "text": "see you at lunch"}),
        "",  # blank: not a message
        "not json",
        json.dumps({"id": "c"}),
        json.dumps({"id": "d", "text": "x" * 300}),  # over --max-text-bytes 200
        json.dumps({"id": "e", "text": "   "}),
        json.dumps([1, 2]),
        json.dumps({"id": "f", "text": "ok \udc80"}),  # a lone surrogate escape is not text
        json.dumps({"id": "g", "text": "word " * 39}),  # long but within the limit: truncated by tokens
    ]
    proc = subprocess.run(
        [*JOULES, "stream", "spam", "--source", "-", "--max-text-bytes", "200", "--batch-size", "4"],
        input=("\n".join(lines) + "\n").encode(),
        capture_output=True,
        env={**os.environ, "JOULES_HOME": str(spam_home)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["source_id"] for r in out] == [1, 2, 4, 5, 6, 7, 8, 9, 10], "one line per message, in order"
    verdicts = {r["source_id"]: r for r in out if "label" in r}
    dead = {r["source_id"]: r for r in out if "reason" in r}
    assert sorted(verdicts) == [1, 2, 10] and sorted(dead) == [4, 5, 6, 7, 8, 9]
    assert verdicts[2]["id"] == 7 and verdicts[1]["model"] == "spam:1"
    assert set(verdicts[1]["probabilities"]) == {"ham", "spam"} and verdicts[1]["action"]
    assert "malformed JSON" in dead[4]["reason"] and dead[4]["original"] == "not json"
    assert dead[5]["reason"] == "missing field 'text'" and dead[5]["id"] == "c"
    assert dead[6]["reason"] == "field 'text' is 300 bytes, over the limit of 200 (max_text_bytes)"
    assert dead[7]["reason"] == "field 'text' is empty or only whitespace"
    assert "expected a JSON object" in dead[8]["reason"]
    assert dead[9]["reason"] == "field 'text' is not valid UTF-8 text"
    # The same answers as `joules predict`: one Predictor behind every mode.
    one = json.loads(run_joules("predict", "spam", "see you at lunch", "--json", home=spam_home, check=True).stdout)
    p = one["predictions"][0]
    assert verdicts[2]["label"] == p["label"] and verdicts[2]["action"] == p["action"]
    assert abs(verdicts[2]["probabilities"]["spam"] - p["probabilities"]["spam"]) < 1e-5
    assert "3 verdicts, 6 dead letters" in proc.stderr.decode()


def test_sigterm_judges_every_line_already_read(spam_home: Path, tmp_path: Path) -> None:
    """A pipe that stays open: SIGTERM makes the consumer answer what it has read, then exit 0."""
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*JOULES, "stream", "spam", "--source", "-", "--batch-size", "8"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "JOULES_HOME": str(spam_home)},
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for i in range(30):
            proc.stdin.write((json.dumps({"id": i, "text": f"message number {i}"}) + "\n").encode())
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())  # the consumer is up and judging
        assert first["source_id"] == 1
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()  # until the consumer exits, though stdin stays open
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-2000:]
    ids = [1] + [json.loads(line)["source_id"] for line in rest.decode().splitlines()]
    # Every line the consumer read was answered once, in order; lines it never read stay in the pipe.
    assert ids == list(range(1, len(ids) + 1))
    assert "SIGTERM" in log.read_text()
