"""Ray Serve: one replica, @serve.batch (max_batch_size, batch_wait_timeout_s), route /v2/models/spam/infer."""

from __future__ import annotations

import os
import sys
import time

from ray import serve
from starlette.requests import Request

sys.path.insert(0, os.path.dirname(__file__))
from spam_model import SpamModel, v2_response, v2_text

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))
WAIT_S = float(os.environ.get("PEER_WAIT_MS", "5")) / 1000


@serve.deployment(num_replicas=1, max_ongoing_requests=1024)
class Spam:
    def __init__(self) -> None:
        self.model = SpamModel()

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S)
    async def predict(self, texts: list[str]) -> list[str]:
        return self.model.predict(texts)

    async def __call__(self, request: Request) -> dict:
        return v2_response(await self.predict(v2_text(await request.json())))


if __name__ == "__main__":
    import ray

    # "local": a Ray of its own; with no address ray.init joins the cluster named in
    # /tmp/ray/ray_current_cluster, which a crashed or killed `ray start` leaves behind.
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Spam.bind(), route_prefix="/v2/models/spam/infer")
    while True:
        time.sleep(3600)
