"""BentoML: a service whose batchable API (adaptive batching: max_batch_size, max_latency_ms) takes V2 `inputs`."""

from __future__ import annotations

import os
import sys

import bentoml

sys.path.insert(0, os.path.dirname(__file__))
from spam_model import SpamModel

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))


@bentoml.service(workers=1, traffic={"timeout": 60})
class Spam:
    def __init__(self) -> None:
        self.model = SpamModel()

    @bentoml.api(route="/v2/models/spam/infer", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=1000)
    def infer(self, inputs: list[dict]) -> list[dict]:
        # One V2 input tensor per request; the batch is the requests' inputs joined.
        labels = self.model.predict([i["data"][0] for i in inputs])
        return [{"name": "label", "datatype": "BYTES", "shape": [1], "data": [lab]} for lab in labels]
