"""The spam model as every peer serves it: the same tokenizer.json, model.onnx and ONNX Runtime settings as joules.

Session options match `joules serve`'s (ServeConfig.runtime_options()): graph optimization
"all", intra-op threads 0 (one per physical core), inter-op 1, pool threads spinning
SPAM_SPIN_US microseconds (100, as `joules serve --spin-us`; 0: never) before they sleep,
memory pattern and CPU arena on. Texts are tokenized without padding and each batch is padded to
its longest row, truncated at the bundle's max_length (128), as joules' Predictor does. Only numpy, tokenizers
and onnxruntime: nothing from joules is imported, so each peer's venv is independent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

BUNDLE = Path(os.environ.get("SPAM_BUNDLE", ""))
MAX_LENGTH = 128
LABELS = ("ham", "spam")


class SpamModel:
    def __init__(self, bundle: Path = BUNDLE) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(os.environ.get("SPAM_THREADS", "0"))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        spin_us = int(os.environ.get("SPAM_SPIN_US", "100"))
        for pool in ("intra_op", "inter_op"):
            so.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spin_us else "0")
            if spin_us:
                so.add_session_config_entry(f"session.{pool}.spin_duration_us", str(spin_us))
        self.session = ort.InferenceSession(str(bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=MAX_LENGTH)
        self.pad = self.tok.token_to_id("[PAD]") or 0
        self.predict(["warm up", "warm up a batch of two"])

    def predict(self, texts: list[str]) -> list[str]:
        enc = self.tok.encode_batch(texts)
        n, length = len(enc), max(len(e.ids) for e in enc)
        arrays = {
            "input_ids": np.full((n, length), self.pad, dtype=np.int64),
            "attention_mask": np.zeros((n, length), dtype=np.int64),
            "token_type_ids": np.zeros((n, length), dtype=np.int64),
        }
        for i, e in enumerate(enc):
            k = len(e.ids)
            arrays["input_ids"][i, :k] = e.ids
            arrays["attention_mask"][i, :k] = e.attention_mask
            arrays["token_type_ids"][i, :k] = e.type_ids
        logits = self.session.run(None, {k: arrays[k] for k in self.inputs})[0]
        return [LABELS[i] for i in np.asarray(logits).argmax(axis=1).tolist()]


def v2_text(body: dict) -> str:
    """The one text of a V2 infer request with a BYTES input ``text`` of shape [1]."""
    return body["inputs"][0]["data"][0]


def v2_response(label: str) -> dict:
    return {"model_name": "spam", "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1], "data": [label]}]}


def dumps(obj: dict) -> bytes:
    return json.dumps(obj).encode()
