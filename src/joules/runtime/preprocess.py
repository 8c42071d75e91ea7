"""Text to model inputs with Hugging Face ``tokenizers``.

Texts are encoded without padding, so the Predictor can group rows of similar
length and pad each group only to its own longest row.

A model reads at most ``max_length`` tokens, but a tokenizer normalizes and
splits the whole text before truncating: a 1 MB text costs seconds of CPU for
128 tokens. So a long text is cut first, at a whitespace before a character
bound that ``max_length`` tokens rarely exceed (``max_length`` x the longest
token string in the vocabulary). Splitting at whitespace keeps every word
before the cut whole, so the cut text's tokens are the whole text's first
tokens; if the cut text gives fewer than ``max_length`` tokens (a text of
mostly spaces or control characters), the bound was too small for it and the
text is tokenized again with a bound four times wider, until the tokens fill
``max_length`` or the whole text is used. The tokens a model sees are thus the
whole text's first ``max_length`` tokens, at a cost bounded by the cut.

With ``tail_tokens`` t > 0 (``preprocess.tail_tokens``), a text too long for
``max_length`` gives its first tokens and its last t, the special tokens
around them as the tokenizer adds them: the end of a message (a signature, a
footer, an unsubscribe link) is read too. The end is cut from the text the
same way, at a whitespace after a character bound, and its first token is
never kept, so a word split by the cut never reaches the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from joules.bundle.spec import TOKENIZER_INPUTS
from joules.errors import BundleError

# Characters a cut may end before: the whitespace every pre-tokenizer joules meets (BERT,
# Metaspace, ByteLevel) splits words at. Other Unicode spaces are left out on purpose: BERT's
# normalizer deletes some of them (control characters), which would join the words around them.
_CUT_AT = (" ", "\n", "\t", "\r")
WIDEN = 4  # how much wider each retry's bound is


class TextPreprocessor:
    def __init__(self, tokenizer_path: Path, max_length: int, input_names: Sequence[str], tail_tokens: int = 0) -> None:
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
        longest = max((len(t) for t in self.tokenizer.get_vocab(with_added_tokens=True)), default=1)
        self.longest = max(1, longest)
        self.cut_chars = max_length * self.longest
        # Content tokens: max_length less the special tokens the post-processor adds ([CLS] and [SEP]).
        content = max_length - self.tokenizer.num_special_tokens_to_add(False)
        if isinstance(tail_tokens, bool) or not isinstance(tail_tokens, int) or not 0 <= tail_tokens < content:
            raise BundleError(
                f"tail_tokens must be a whole number in [0, {content}) for max_length {max_length}, got {tail_tokens!r}"
            )
        self.tail_tokens = tail_tokens
        self.head_tokens = content - tail_tokens
        self._raw: Tokenizer | None = None
        if tail_tokens:
            self._raw = Tokenizer.from_str(self.tokenizer.to_str())
            self._raw.no_truncation()

    @classmethod
    def from_spec(cls, tokenizer_path: Path, pre: Any, input_names: Sequence[str]) -> TextPreprocessor:
        """For a bundle's ``Preprocess`` (kind text or email)."""
        return cls(tokenizer_path, pre.max_length, input_names, tail_tokens=pre.tail_tokens or 0)

    def _pad_id(self) -> int:
        for token in ("[PAD]", "<pad>", "<PAD>"):
            tid = self.tokenizer.token_to_id(token)
            if tid is not None:
                return int(tid)
        return 0

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        bound = self.cut_chars
        cut = [t if len(t) <= bound else cut_text(t, bound) for t in texts]
        encodings: list[Encoding] = self.tokenizer.encode_batch(cut)
        for i, (text, part) in enumerate(zip(texts, cut, strict=True)):
            if part is not text and len(encodings[i].ids) < self.max_length:
                encodings[i] = self._encode_wider(text, bound * WIDEN)
            if self._raw is not None and len(encodings[i].ids) >= self.max_length:
                encodings[i] = self._head_and_tail(text)
        return encodings

    def _head_and_tail(self, text: str) -> Encoding:
        """The first ``head_tokens`` and the last ``tail_tokens`` content tokens of a long text, post-processed."""
        assert self._raw is not None
        head = self._piece(text, self.head_tokens, from_end=False)
        head.truncate(self.head_tokens)
        tail = self._piece(text, self.tail_tokens + 1, from_end=True)
        tail.truncate(self.tail_tokens, direction="left")
        return self.tokenizer.post_process(Encoding.merge([head, tail], growing_offsets=True))

    def _piece(self, text: str, need: int, *, from_end: bool) -> Encoding:
        """Content tokens of a piece of ``text`` from its start or end holding at least ``need`` of them."""
        assert self._raw is not None
        bound = need * self.longest
        while len(text) > bound:
            e = self._raw.encode(cut_tail(text, bound) if from_end else cut_text(text, bound), add_special_tokens=False)
            if len(e.ids) >= need:
                return e
            bound *= WIDEN
        return self._raw.encode(text, add_special_tokens=False)

    def _encode_wider(self, text: str, bound: int) -> Encoding:
        while len(text) > bound:
            e = self.tokenizer.encode(cut_text(text, bound))
            if len(e.ids) >= self.max_length:
                return e
            bound *= WIDEN
        return self.tokenizer.encode(text)

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


def cut_tail(text: str, bound: int) -> str:
    """``text`` from the first whitespace in its last ``bound`` characters; "" if there is none (a word may
    be longer than the bound, and a part of it tokenizes differently from the whole)."""
    tail = text[-bound:]
    at = min((i for i in (tail.find(c) for c in _CUT_AT) if i >= 0), default=-1)
    return tail[at + 1 :] if at >= 0 else ""


def cut_text(text: str, bound: int) -> str:
    """``text`` up to the last whitespace before character ``bound`` (at ``bound`` if there is none)."""
    head = text[:bound]
    at = max(head.rfind(c) for c in _CUT_AT)
    return head[:at] if at > 0 else head
