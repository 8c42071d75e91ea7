"""Who runs in the next step (nano-vllm's ``scheduler.py`` and ``block_manager.py``, for KV slots).

Each step has a token budget (``max_num_batched_tokens``). Running decodes
go first, one token each, so a stream is never held up by anything but one
step; prompts then take what is left in chunks (chunked prefill), the oldest
first; waiting requests are admitted, oldest first, while a slot, the token
budget and the KV budget allow.

KV memory is bounded by ``kv_cache_tokens``: every running sequence holds its
prompt and completion so far, every prefix cache entry its prefix. When
decoding would pass the bound, cached prefixes are dropped first, then the
newest running sequence is preempted: its slot is freed and it goes back to
the head of the queue with its completion so far, which is recomputed when it
is admitted again (vLLM's RECOMPUTE policy; with batch-invariant numerics the
recomputed cache is the one it had, so its text does not change).

Slots: running sequences occupy the lowest slots; when one leaves, the one in
the highest slot moves into the hole (``copy_slot``), so decodes stay one
contiguous run of slots: one graph call. Prefix cache entries live in slots
above ``max_num_seqs``: when a prompt has been computed its keys and values
are copied there, and a later prompt that starts with the same tokens (a
shared system prompt) copies them into its own slot instead of computing them.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from joules.runtime.generation.decoder import Decoder
from joules.runtime.generation.sequence import Sequence, Status
from joules.runtime.limits import (
    MAX_MODEL_LEN,
    MAX_NUM_BATCHED_TOKENS,
    MAX_NUM_SEQS,
    PREFIX_CACHE_SLOTS,
    check_step_budget,
    check_whole_numbers,
)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """The engine's limits. Defaults suit SmolLM2-135M on a small CPU machine (docs/generate.md)."""

    max_model_len: int = MAX_MODEL_LEN  # longest prompt + completion
    max_num_seqs: int = MAX_NUM_SEQS  # sequences running at once (KV slots)
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS  # tokens per step: decodes first, then prompt chunks
    max_waiting: int = 256  # requests queued beyond the running ones; past it, QueueFullError
    kv_cache_bytes: int = 2 << 30  # keys and values of running sequences and cached prefixes
    prefix_cache_slots: int = PREFIX_CACHE_SLOTS  # prompts kept for reuse (0: no prefix caching)
    min_prefix_tokens: int = 16  # shorter shared prefixes are recomputed
    retry_after_s: int = 1  # what a refused request is told
    # True: one layout of the products for every call, so a row's logits never depend on its neighbours;
    # False: batched decode steps run a faster layout that can differ by rounding (runtime/generation/columns.py).
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        check_whole_numbers(
            self,
            (
                ("max_model_len", 2),
                ("max_num_seqs", 1),
                ("max_num_batched_tokens", 1),
                ("max_waiting", 0),
                ("kv_cache_bytes", 1),
                ("prefix_cache_slots", 0),
                ("min_prefix_tokens", 1),
                ("retry_after_s", 1),
            ),
        )
        check_step_budget(self.max_num_batched_tokens, self.max_num_seqs)

    @property
    def num_slots(self) -> int:
        return self.max_num_seqs + self.prefix_cache_slots

    def kv_cache_tokens(self, bytes_per_token: int) -> int:
        return max(1, self.kv_cache_bytes // max(1, bytes_per_token))


@dataclass(eq=False)
class _Entry:
    tokens: np.ndarray
    used: int


class PrefixCache:
    """Computed prompt prefixes kept in their own slots, reused by prompts that start the same way."""

    def __init__(self, slots: Iterable[int], min_tokens: int) -> None:
        self.slots = list(slots)
        self.min_tokens = min_tokens
        self.entries: dict[int, _Entry] = {}
        self._clock = itertools.count()
        self.hits = 0
        self.hit_tokens = 0

    @property
    def tokens_held(self) -> int:
        return sum(len(e.tokens) for e in self.entries.values())

    def lookup(self, ids: list[int]) -> tuple[int | None, int]:
        """(slot, n): the entry sharing the longest prefix with ``ids``; n < len(ids) (one token is left to run)."""
        if not self.entries or len(ids) <= self.min_tokens:
            return None, 0
        query = np.asarray(ids, dtype=np.int64)
        best_slot, best = None, 0
        for slot, e in self.entries.items():
            m = min(len(e.tokens), len(query) - 1)
            diff = np.flatnonzero(e.tokens[:m] != query[:m])
            n = int(diff[0]) if len(diff) else m
            if n > best:
                best_slot, best = slot, n
        if best_slot is None or best < self.min_tokens:
            return None, 0
        self.entries[best_slot].used = next(self._clock)
        self.hits += 1
        self.hit_tokens += best
        return best_slot, best

    def store(self, decoder: Decoder, src: int, ids: list[int]) -> None:
        """Keep the first ``len(ids)`` positions of slot ``src`` for prompts starting with ``ids``."""
        if not self.slots or len(ids) < self.min_tokens:
            return
        query = np.asarray(ids, dtype=np.int64)
        for e in self.entries.values():
            if len(e.tokens) >= len(query) and np.array_equal(e.tokens[: len(query)], query):
                e.used = next(self._clock)  # already held
                return
        free = [s for s in self.slots if s not in self.entries]
        slot = free[0] if free else min(self.entries, key=lambda s: self.entries[s].used)
        decoder.copy_slot(src, slot, len(query))
        self.entries[slot] = _Entry(tokens=query, used=next(self._clock))

    def evict_one(self, decoder: Decoder) -> bool:
        if not self.entries:
            return False
        slot = min(self.entries, key=lambda s: self.entries[s].used)
        del self.entries[slot]
        release = getattr(decoder, "release_slot", None)
        if release is not None:
            release(slot)
        return True


@dataclass(frozen=True)
class Scheduled:
    seq: Sequence
    start: int
    n: int


class Scheduler:
    """The waiting queue, the running set, their slots and the plan of each step. Used by the engine's thread only."""

    def __init__(self, config: EngineConfig, decoder: Decoder, kv_cache_tokens: int) -> None:
        self.config = config
        self.decoder = decoder
        self.kv_cache_tokens = kv_cache_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._free: list[int] = list(range(config.max_num_seqs))
        heapq.heapify(self._free)
        self.by_slot: dict[int, Sequence] = {}
        self.prefix = PrefixCache(range(config.max_num_seqs, config.num_slots), config.min_prefix_tokens)
        self.preemptions = 0

    # -- state ----------------------------------------------------------------------------------------

    @property
    def kv_tokens_used(self) -> int:
        return sum(s.length for s in self.running) + self.prefix.tokens_held

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- plan -----------------------------------------------------------------------------------------

    def schedule(self) -> list[Scheduled]:
        """The next step: decodes, then prompt chunks, then new admissions, within the budgets."""
        self._make_room()
        plan: list[Scheduled] = []
        budget = self.config.max_num_batched_tokens
        for s in self.running:
            if s.pending == 1:
                plan.append(Scheduled(s, s.computed, 1))
                budget -= 1
        for s in sorted((s for s in self.running if s.pending > 1), key=lambda s: s.number):
            if budget <= 0:
                break
            n = min(s.pending, budget)
            plan.append(Scheduled(s, s.computed, n))
            budget -= n
        while self.waiting and budget > 0 and self._free:
            s = self.waiting[0]
            if self.kv_tokens_used + s.length > self.kv_cache_tokens:
                if not self.prefix.evict_one(self.decoder):
                    break
                continue
            self.waiting.popleft()
            self._admit(s)
            n = min(s.pending, budget)
            plan.append(Scheduled(s, s.computed, n))
            budget -= n
        return plan

    def _make_room(self) -> None:
        """Keep the running sequences' next step within the KV budget: drop cached prefixes, then preempt."""
        while self.kv_tokens_used > self.kv_cache_tokens:
            if self.prefix.evict_one(self.decoder):
                continue
            if len(self.running) <= 1:
                return  # one sequence always fits: submit refuses prompts over the budget
            victim = max(self.running, key=lambda s: s.number)
            self.preempt(victim)

    def _admit(self, s: Sequence) -> None:
        slot = heapq.heappop(self._free)
        s.slot = slot
        s.status = Status.RUNNING
        s.computed = 0
        self.by_slot[slot] = s
        self.running.append(s)
        src, n = self.prefix.lookup(s.prompt_ids + s.output_ids)
        if src is not None:
            self.decoder.copy_slot(src, slot, n)
            s.computed = n
            if s.preemptions == 0:
                s.cached_tokens = n

    # -- leaving --------------------------------------------------------------------------------------

    def preempt(self, s: Sequence) -> None:
        """Free ``s``'s slot and put it first in line; its cache is recomputed when it runs again."""
        self._leave(s)
        s.status = Status.WAITING
        s.computed = 0
        s.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(s)

    def finish(self, s: Sequence) -> None:
        if s.status is Status.RUNNING:
            self._leave(s)
        elif s.status is Status.WAITING and s in self.waiting:
            self.waiting.remove(s)
        s.status = Status.FINISHED

    def prompt_done(self, s: Sequence) -> None:
        """``s``'s prompt has just been computed: offer it to the prefix cache."""
        if s.slot is not None and self.config.prefix_cache_slots and not s.extra.get("prefix_offered"):
            s.extra["prefix_offered"] = True
            self.prefix.store(self.decoder, s.slot, s.prompt_ids)

    def _leave(self, s: Sequence) -> None:
        slot = s.slot
        if slot is None:
            return
        self.running.remove(s)
        del self.by_slot[slot]
        s.slot = None
        # Keep the running sequences packed at the bottom: the one in the highest slot fills the hole.
        top = max(self.by_slot, default=-1)
        if top > slot:
            mover = self.by_slot.pop(top)
            self.decoder.copy_slot(top, slot, mover.computed)
            mover.slot = slot
            self.by_slot[slot] = mover
            slot = top
        release = getattr(self.decoder, "release_slot", None)
        if release is not None:
            release(slot)
        heapq.heappush(self._free, slot)
