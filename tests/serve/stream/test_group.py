"""``joules stream --consumers N``: N consumer processes of one group from one command; one SIGKILLed
mid-stream, every message still gets exactly one outcome."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

from joules.serve.stream.group import member_argv
from tests.serve.stream.conftest import RedisServer, wait_until
from tests.serve.stream.helpers import entries, pending, start_consumer, stop, texts

GOOD = 8000


def test_member_argv_gives_each_consumer_its_name_and_metrics_port() -> None:
    argv = ["stream", "spam", "--source", "redis://h/s", "--consumers", "3", "--consumer=c", "--metrics-port", "9100"]
    assert member_argv(argv, 2) == (
        "stream",
        "spam",
        "--source",
        "redis://h/s",
        "--consumer",
        "c-2",
        "--metrics-port",
        "9102",
    )
    assert member_argv(["stream", "spam", "--consumers=2"], 0) == ("stream", "spam")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_three_consumers_one_killed_one_outcome_per_message(
    spam_home: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    r = redis_server.client
    pipe = r.pipeline(transaction=False)
    for i, t in enumerate(texts(GOOD, seed=3)):
        pipe.xadd("mail", {"id": f"m{i}", "text": t})
        if i % 500 == 7:
            pipe.xadd("mail", {"id": f"bad{i}", "body": "no text field"})
    pipe.execute()
    total = r.xlen("mail")
    group = start_consumer(
        spam_home, redis_server, "c", tmp_path, "--consumers", "3", "--batch-size", "16", "--claim-idle-ms", "1000"
    )
    try:

        def members_holding() -> list[str] | None:
            if group.proc.poll() is not None:
                raise AssertionError(f"the group exited early:\n{group.tail()}")
            if not any(g["name"] == b"g" for g in r.xinfo_groups("mail")):
                return None  # the consumers have not created the group yet
            held = {row["name"].decode(): row["pending"] for row in r.xinfo_consumers("mail", "g")}
            return sorted(held) if len(held) == 3 and held.get("c-1") and r.xlen("verdicts") < GOOD - 1000 else None

        what = f"three consumers, c-1 holding entries mid-stream (log: {group.log})"
        assert wait_until(lambda: members_holding(), 300, what, interval=0.01) == [
            "c-0",
            "c-1",
            "c-2",
        ]
        kids = children(group.proc.pid)
        assert len(kids) == 3
        victim = next(k for k in kids if b"c-1\0" in Path(f"/proc/{k}/cmdline").read_bytes())
        subprocess.run(["kill", "-9", str(victim)], check=True)

        def settled() -> bool:
            return r.xlen("verdicts") + r.xlen("mail:dead") >= total and pending(redis_server, "mail", "g") == 0

        wait_until(settled, 300, f"every message settled\n{group.tail()}", interval=0.2)
    finally:
        rc = stop(group)
    assert rc == 1 and "consumer 1" in group.tail(), group.tail()  # the group says one of its consumers died
    verdicts = entries(redis_server, "verdicts")
    counts = collections.Counter(f["source_id"] for _, f in verdicts)
    assert len(verdicts) == GOOD and len(counts) == GOOD, "exactly one verdict per good message"
    dead = entries(redis_server, "mail:dead")
    assert len(dead) == total - GOOD and len({f["source_id"] for _, f in dead}) == len(dead)
    assert len(children(group.proc.pid)) == 0
