"""Choosing the next token from a row of logits: penalties, temperature, top-k, top-p, seeds, logprobs.

The order is the one ``transformers`` and vLLM apply: repetition penalty
(CTRL, Keskar et al. 2019: a seen token's positive logit divided by the
penalty, a negative one multiplied), OpenAI's frequency and presence
penalties (``logit - frequency * count - presence * [count > 0]`` over the
completion's tokens), then temperature, top-k and top-p (nucleus sampling,
Holtzman et al. 2019: the smallest set of most likely tokens whose
probability reaches p). Temperature 0 is greedy (argmax, the lowest id on a
tie). Each request draws from its own ``numpy.random.Generator`` (PCG64),
seeded when the request gives a seed, so a seeded request samples the same
tokens alone or inside a busy batch.

Logprobs are those of the model's own distribution (log-softmax of the raw
logits, before penalties and temperature), as vLLM reports them by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from joules.errors import InputError

MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_STOP = 16
# top-p looks at this many best tokens first; only when they hold less than p is the whole row sorted.
TOP_P_CANDIDATES = 1024


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one request picks its tokens and when it stops. Checked on construction (InputError, HTTP 400)."""

    max_tokens: int | None = None  # None: until the context is full
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: all tokens
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    min_tokens: int = 0  # stop tokens and strings do not end the completion before this many tokens

    def __post_init__(self) -> None:
        def number(name: str, low: float, high: float) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
                raise InputError(f"{name} must be a number in [{low:g}, {high:g}], got {v!r}")
            return float(v)

        def whole(name: str, low: int, high: int | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
                bound = f"[{low}, {high}]" if high is not None else f">= {low}"
                raise InputError(f"{name} must be a whole number {bound}, got {v!r}")

        object.__setattr__(self, "temperature", number("temperature", 0.0, 2.0))
        top_p = number("top_p", 0.0, 1.0)
        if top_p <= 0.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        object.__setattr__(self, "top_p", top_p)
        object.__setattr__(self, "repetition_penalty", number("repetition_penalty", 0.01, 10.0))
        if self.repetition_penalty <= 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        object.__setattr__(self, "frequency_penalty", number("frequency_penalty", -2.0, 2.0))
        object.__setattr__(self, "presence_penalty", number("presence_penalty", -2.0, 2.0))
        if self.max_tokens is not None:
            whole("max_tokens", 1)
        whole("top_k", 0)
        whole("top_logprobs", 0, MAX_TOP_LOGPROBS)
        whole("min_tokens", 0)
        if self.seed is not None:
            whole("seed", -(2**63), 2**64 - 1)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if len(stop) > MAX_STOP or any(not isinstance(s, str) or not s for s in stop):
            raise InputError(f"stop must be up to {MAX_STOP} non-empty strings, got {self.stop!r:.200}")
        object.__setattr__(self, "stop", stop)
        ids = tuple(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ids):
            raise InputError(f"stop_token_ids must be token ids (whole numbers >= 0), got {self.stop_token_ids!r}")
        object.__setattr__(self, "stop_token_ids", ids)
        if self.top_logprobs and not self.logprobs:
            raise InputError("top_logprobs needs logprobs: true")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def rng(self) -> np.random.Generator:
        """This request's own random stream: seeded, or from the operating system's entropy."""
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng(self.seed % 2**64)


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the most likely tokens and their logprobs, best first


def log_softmax_at(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log softmax(logits)[ids], computed in float64 for the normaliser."""
    m = float(np.max(logits))
    lse = m + math.log(float(np.sum(np.exp((logits - m).astype(np.float64)))))
    return logits[ids].astype(np.float64) - lse


def apply_penalties(
    logits: np.ndarray, params: SamplingParams, seen: np.ndarray, output_counts: dict[int, int]
) -> np.ndarray:
    """``logits`` with the repetition, frequency and presence penalties applied (a copy when any applies)."""
    rep = params.repetition_penalty
    freq, pres = params.frequency_penalty, params.presence_penalty
    if rep == 1.0 and freq == 0.0 and pres == 0.0:
        return logits
    out = logits.copy()
    if rep != 1.0 and len(seen):
        vals = out[seen]
        out[seen] = np.where(vals > 0, vals / rep, vals * rep)
    if (freq != 0.0 or pres != 0.0) and output_counts:
        ids = np.fromiter(output_counts.keys(), dtype=np.int64, count=len(output_counts))
        counts = np.fromiter(output_counts.values(), dtype=np.float32, count=len(output_counts))
        out[ids] -= freq * counts + pres
    return out


def choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token id from a row of (penalised) logits."""
    if params.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    k = params.top_k if 0 < params.top_k < len(scaled) else 0
    if k or params.top_p < 1.0:
        n = k or min(TOP_P_CANDIDATES, len(scaled))
        cand = np.argpartition(-scaled, n - 1)[:n] if n < len(scaled) else np.arange(len(scaled))
        # Best first; ties by id so the order does not depend on argpartition's.
        cand = cand[np.lexsort((cand, -scaled[cand]))]
        # top-k renormalises over the k kept; top-p alone measures mass under the whole row.
        probs = _softmax(scaled, cand) if k else _softmax(scaled, None)[cand]
        if params.top_p < 1.0:
            cum = np.cumsum(probs)
            if not k and cum[-1] < params.top_p and n < len(scaled):
                full = _softmax(scaled, None)
                cand = np.lexsort((np.arange(len(scaled)), -scaled))  # the candidates held too little: sort all
                probs = full[cand]
                cum = np.cumsum(probs)
            keep = min(int(np.searchsorted(cum, params.top_p)) + 1, len(cand))
            cand, probs = cand[:keep], probs[:keep]
        probs = probs / probs.sum()
    else:
        cand = None
        probs = _softmax(scaled, None)
    r = rng.random()
    i = min(int(np.searchsorted(np.cumsum(probs), r, side="right")), len(probs) - 1)
    return int(cand[i]) if cand is not None else i


def _softmax(scaled: np.ndarray, over: np.ndarray | None) -> np.ndarray:
    """Probabilities of the whole row (over=None), or of the row renormalised over ``over`` when given."""
    m = float(np.max(scaled))
    if over is None:
        e = np.exp(scaled - m)
        return e / e.sum()
    e = np.exp(scaled[over] - m)
    return e / e.sum()


def logprob_of(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """The chosen token's logprob and the ``top`` best tokens', from the model's raw logits."""
    if top:
        best = np.argpartition(-logits, top - 1)[:top] if top < len(logits) else np.arange(len(logits))
        best = best[np.lexsort((best, -logits[best]))]
        ids = np.concatenate([[token], best])
    else:
        ids = np.array([token])
    lp = log_softmax_at(logits, ids)
    pairs = tuple((int(i), float(v)) for i, v in zip(ids[1:], lp[1:], strict=True))
    return TokenLogprob(token_id=token, logprob=float(lp[0]), top=pairs)
