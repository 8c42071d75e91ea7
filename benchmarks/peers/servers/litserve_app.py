"""LitServe: LitAPI with server-side batching (max_batch_size, batch_timeout), route /v2/models/spam/infer."""

from __future__ import annotations

import os
import sys

import litserve as ls

sys.path.insert(0, os.path.dirname(__file__))
from spam_model import SpamModel, v2_response, v2_text

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))
WAIT_S = float(os.environ.get("PEER_WAIT_MS", "5")) / 1000


class SpamAPI(ls.LitAPI):
    def setup(self, device):
        self.model = SpamModel()

    def decode_request(self, request):
        return v2_text(request)

    def predict(self, texts):
        return self.model.predict(list(texts))

    def encode_response(self, label):
        return v2_response(label)


if __name__ == "__main__":
    api = SpamAPI(max_batch_size=MAX_BATCH, batch_timeout=WAIT_S, api_path="/v2/models/spam/infer")
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(port=int(sys.argv[1]), generate_client_file=False)
