"""Tokens to text as they come: incremental detokenizing and stop strings.

Byte-level tokenizers split a multi-byte character (an emoji, a CJK
character) across tokens. ``tokenizers``' ``DecodeStream`` keeps the bytes of
an unfinished character and returns nothing until the character is whole, so
a streamed chunk never holds half a character.

A stop string can also arrive across tokens ("Par" + "is"). ``TextStream``
therefore holds back the end of the text that could still begin a stop
string; when a stop string appears the completion is cut exactly before it,
and what was held back and is not part of it is released.
"""

from __future__ import annotations

from typing import Any


class TextStream:
    """One sequence's completion text, released in chunks that never split a character or a stop string."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._decode = DecodeStream(skip_special_tokens=True)
        self._stop = stop
        self._longest = max((len(s) for s in stop), default=0)
        self.text = ""  # everything decoded so far (up to a stop string, once found)
        self.sent = 0  # characters of ``text`` already released
        self.stopped_by: str | None = None

    def add(self, token: int) -> str:
        """Take the next token; return the text now safe to release ("" when nothing is)."""
        if self.stopped_by is not None:
            return ""
        piece = self._decode.step(self._tokenizer, token) or ""
        if not piece:
            return ""
        before = len(self.text)
        self.text += piece
        if self._stop:
            # Only a match that ends in the new piece is new: search from where it could start.
            begin = max(0, before - self._longest + 1)
            hits = [(i, s) for s in self._stop if (i := self.text.find(s, begin)) >= 0]
            if hits:
                at, s = min(hits)
                self.text = self.text[:at]
                self.stopped_by = s
                return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def flush(self) -> str:
        """At the end of the completion: release what was held back."""
        return self._release(len(self.text))

    def _held(self) -> int:
        """Length of the longest end of the text that is the beginning of a stop string."""
        held = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        chunk = self.text[self.sent : upto]
        self.sent = upto
        return chunk
