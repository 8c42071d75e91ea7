"""MLServer custom runtime; adaptive batching from model-settings.json (max_batch_size, max_batch_time)."""

from __future__ import annotations

import os
import sys

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run.py copies spam_model.py beside it
from spam_model import SpamModel


class SpamRuntime(MLModel):
    async def load(self) -> bool:
        self.model = SpamModel()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        labels = self.model.predict(texts)
        return InferenceResponse(model_name=self.name, outputs=[StringCodec.encode_output("label", labels)])
