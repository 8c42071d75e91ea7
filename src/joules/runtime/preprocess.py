"""Text to model inputs with Hugging Face ``tokenizers``.

Texts are encoded without padding, so the Predictor can group rows of similar
length and pad each group only to its own longest row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from joules.bundle.spec import TOKENIZER_INPUTS
from joules.errors import BundleError


class TextPreprocessor:
    def __init__(self, tokenizer_path: Path, max_length: int, input_names: Sequence[str]) -> None:
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(f"cannot load tokenizer {str(tokenizer_path)!r}: {e}") from e
        # all-MiniLM-L6-v2's tokenizer.json pads every text to 128 tokens; padding is ours to do.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.input_names = [n for n in input_names if n in TOKENIZER_INPUTS]
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        for token in ("[PAD]", "<pad>", "<PAD>"):
            tid = self.tokenizer.token_to_id(token)
            if tid is not None:
                return int(tid)
        return 0

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        return self.tokenizer.encode_batch(list(texts))

    def batch(self, encodings: Sequence[Encoding], dtypes: dict[str, type]) -> dict[str, np.ndarray]:
        """Pad ``encodings`` to their longest and build the model's input arrays."""
        n = len(encodings)
        length = max(len(e.ids) for e in encodings)
        arrays = {
            "input_ids": np.full((n, length), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((n, length), dtype=np.int64),
            "token_type_ids": np.zeros((n, length), dtype=np.int64),
        }
        for i, e in enumerate(encodings):
            k = len(e.ids)
            arrays["input_ids"][i, :k] = e.ids
            arrays["attention_mask"][i, :k] = e.attention_mask
            arrays["token_type_ids"][i, :k] = e.type_ids
        return {name: arrays[name].astype(dtypes.get(name, np.int64), copy=False) for name in self.input_names}
