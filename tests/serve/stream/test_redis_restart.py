"""Redis restarting EMPTY under a running consumer (no persistence: stream, group and dedupe keys gone)."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.stream.conftest import RedisServer, wait_until
from tests.serve.stream.helpers import entries, start_consumer, stop, texts


class RestartableRedis:
    """A redis-server on a fixed port that the test stops and starts again with an empty data directory."""

    def __init__(self, port: int, root: Path) -> None:
        import redis

        self.port, self.root = port, root
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(port=port)
        self.starts = 0

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None, "redis-server is not installed (apt-get install redis-server)"
        data = self.root / f"redis-{self.starts}"  # a new, empty directory each time
        data.mkdir()
        self.starts += 1
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (data / "redis.log").open("wb") as log:
            self.proc = subprocess.Popen([*args, "--dir", str(data)], stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            import redis

            try:
                return bool(self.client.ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_until(up, 20, "redis-server to answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM without --save: nothing is written
            self.proc.wait(timeout=30)

    def server(self) -> RedisServer:
        return RedisServer(port=self.port, client=self.client)


@pytest.fixture()
def restartable(tmp_path: Path, free_port: int) -> Iterator[RestartableRedis]:
    r = RestartableRedis(free_port, tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.client.close()
        r.stop()


def test_a_consumer_survives_redis_restarting_empty(
    spam_home: Path, restartable: RestartableRedis, tmp_path: Path
) -> None:
    r = restartable.client
    backlog = texts(3000)
    pipe = r.pipeline(transaction=False)
    for i, t in enumerate(backlog):
        pipe.xadd("mail", {"id": f"m{i}", "text": t})
    pipe.execute()
    c = start_consumer(spam_home, restartable.server(), "c1", tmp_path, "--batch-size", "16", "--report-every-s", "0.5")

    def reports() -> int:
        return c.log.read_text(errors="replace").count(" msg/s")

    try:
        wait_until(lambda: r.xlen("verdicts") >= 100, 180, f"the first verdicts\n{c.tail()}")
        # Restart while the consumer is still working through the backlog.
        restartable.stop()
        wait_until(lambda: "broker unavailable" in c.tail(), 60, f"the consumer to notice\n{c.tail()}")
        restartable.start()
        assert r.exists("mail", "verdicts") == 0  # restarted empty
        # The consumer reconnects, reports (its backlog, of a stream not there yet) and waits for messages.
        seen = reports()
        wait_until(lambda: c.proc.poll() is not None or reports() >= seen + 3, 120, f"reports\n{c.tail()}")
        assert c.proc.poll() is None, f"the consumer exited after Redis restarted empty:\n{c.tail()}"
        new = texts(200, seed=11)
        for i, t in enumerate(new):
            r.xadd("mail", {"id": f"n{i}", "text": t})

        def judged() -> Counter[str]:
            return Counter(f["id"] for _, f in entries(restartable.server(), "verdicts") if f["id"].startswith("n"))

        wait_until(lambda: len(judged()) >= 200, 180, f"the new messages to be judged\n{c.tail()}", interval=0.2)
        assert c.proc.poll() is None, f"the consumer exited after Redis restarted empty:\n{c.tail()}"
        counts = judged()
        assert len(counts) == 200 and max(counts.values()) == 1, counts.most_common(3)
        assert "creating it again" in c.tail()
    finally:
        assert stop(c) == 0, c.tail()
