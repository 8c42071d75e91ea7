"""Zero-downtime model updates: promotion under load, the repository API, a bad version."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import tritonclient.http as th

from joules.registry import Registry
from joules.settings import Settings
from tests.helpers import run_joules
from tests.serve.online.conftest import ServerProcess, Starter, sms


def register_copy(home: Path, bundle: Path) -> int:
    return Registry(Settings(home=home)).register(bundle, "spam").version


class Load:
    """Clients sending requests in a loop, alternating the two APIs, until stopped."""

    def __init__(self, server: ServerProcess, clients: int = 6) -> None:
        self.server = server
        self.answers: list[tuple[int, int | None]] = []  # (status, version)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]
        self.texts = sms(40)
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=60) as c:
            k = i
            while not self.stop.is_set():
                text = self.texts[k % len(self.texts)]
                k += 1
                try:
                    if k % 2:
                        r = c.post(self.server.url + "/v1/models/spam:predict", json={"instances": [{"text": text}]})
                        version = r.json().get("version") if r.status_code == 200 else None
                    else:
                        r = c.post(
                            self.server.url + "/v2/models/spam/infer",
                            json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]},
                        )
                        version = int(r.json()["model_version"]) if r.status_code == 200 else None
                    status = r.status_code
                except httpx.HTTPError:
                    status, version = -1, None
                with self.lock:
                    self.answers.append((status, version))

    def count(self, version: int) -> int:
        with self.lock:
            return sum(v == version for _, v in self.answers)

    def wait_for(self, version: int, n: int, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while self.count(version) < n:
            if time.monotonic() > end or self.stop.is_set():
                raise AssertionError(f"fewer than {n} answers from version {version}: {self.answers[-5:]}")
            time.sleep(0.05)  # polling the clients' progress, bounded above

    def finish(self) -> list[tuple[int, int | None]]:
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.answers


def test_promotion_under_load_fails_no_request(spam_home: Path, tiny_bundle_dir: Path, start_server: Starter) -> None:
    assert register_copy(spam_home, tiny_bundle_dir) == 2
    server = start_server(spam_home, "spam", "--poll-interval-s", "0.2")
    load = Load(server)
    try:
        load.wait_for(1, 30)
        run_joules("models", "promote", "spam", "2", home=spam_home, check=True)
        load.wait_for(2, 60)
    finally:
        answers = load.finish()
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed during the switch: {failed[:5]}"
    versions = [v for _, v in answers]
    assert versions.index(2) > 0 and set(versions) == {1, 2}
    assert max(i for i, v in enumerate(versions) if v == 1) < len(versions) - 1
    ready = {dict(lab)["version"] for (n, lab), v in server.metrics().items() if n == "joules_model_ready" and v == 1}
    assert ready == {"2"}
    assert "serving spam:2 (was spam:1)" in server.output()


def test_repository_api_unloads_and_loads(spam_home: Path, start_server: Starter) -> None:
    # No name: every production model; repository control is opt-in.
    server = start_server(spam_home, "--poll-interval-s", "0.1", "--model-control", "explicit")
    client = th.InferenceServerClient(server.url.removeprefix("http://"))
    client.unload_model("spam")
    assert not client.is_model_ready("spam") and not client.is_server_ready()
    r = httpx.post(server.url + "/v1/models/spam:predict", json={"instances": [{"text": "hi"}]}, timeout=30)
    assert r.status_code == 503 and "not ready" in r.json()["error"]
    assert client.get_model_repository_index()[0]["state"] == "UNLOADED"
    loads, polls = server.metric("joules_model_loads_total"), server.metric("joules_registry_polls_total")
    end = time.monotonic() + 60
    while server.metric("joules_registry_polls_total") < polls + 3:  # an unloaded model is not rediscovered
        assert time.monotonic() < end
        time.sleep(0.05)  # polling server state, bounded above
    assert not client.is_model_ready("spam") and server.metric("joules_model_loads_total") == loads
    client.load_model("spam")
    assert client.is_model_ready("spam")
    r = httpx.post(server.url + "/v1/models/spam:predict", json={"instances": [{"text": "hi"}]}, timeout=30)
    assert r.status_code == 200
    r = httpx.post(server.url + "/v2/repository/models/ghost/load", timeout=30)
    assert r.status_code == 404 and "ghost" in r.json()["error"]
    assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 200


def test_a_version_that_cannot_load_leaves_the_old_one_serving(
    spam_home: Path, tiny_bundle_dir: Path, start_server: Starter
) -> None:
    version = register_copy(spam_home, tiny_bundle_dir)
    server = start_server(spam_home, "spam", "--poll-interval-s", "0.2")
    (spam_home / "models" / "spam" / str(version) / "model.onnx").write_bytes(b"corrupted")
    run_joules("models", "promote", "spam", str(version), home=spam_home, check=True)
    end = time.monotonic() + 60
    while server.metric("joules_model_loads_total", model="spam", outcome="failed") < 1:
        assert time.monotonic() < end, server.output()[-2000:]
        time.sleep(0.05)  # polling server state, bounded above
    r = httpx.post(server.url + "/v1/models/spam:predict", json={"instances": [{"text": "hi"}]}, timeout=30)
    assert r.status_code == 200 and r.json()["version"] == 1
    index = httpx.post(server.url + "/v2/repository/index", timeout=10).json()
    assert "does not match its registered sha256" in index[0]["reason"]
    assert "Traceback" not in server.output()
