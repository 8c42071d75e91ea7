"""Which rank holds which part of the model, and whether a rank fits its memory cap (no torch).

Megatron-LM's split (Shoeybi et al. 2019, arXiv:1909.08053, section 3):
q/k/v and gate/up are split by output (whole heads, whole neurons), o and
down by input, so each rank's attention and MLP end in a partial sum that one
all-reduce completes. Heads go in whole KV groups (a query head must sit with
its key/value head), unequally when the ranks do not divide the groups: 3 KV
groups on 2 ranks are 2 + 1. The embedding and the LM head are split by
vocabulary rows (``vocab_parallel``, the default: each rank holds 1/N of the
largest matrix, at the cost of one more all-reduce per step and a gather of the
logits) or replicated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from joules.errors import ConfigError
from joules.parallel.llama import LlamaShape
from joules.parallel.memory import format_size

# What a rank holds besides weights, KV cache and step activations, as RLIMIT_DATA counts it (VmData):
# the interpreter, torch's libraries' writable data and allocator pools, gloo's threads and their
# stacks. Measured (benchmarks/parallel/memory.py; torch 2.13 CPU, 3 ranks of the 3.3 GB model):
# VmData - weights - KV cache = 252 MiB after loading; the rest is margin.
RUNTIME_BYTES = 320 << 20
DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2}


def split_evenly(total: int, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of ``total`` items over ``parts``, the first ``total % parts`` one larger."""
    base, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


@dataclass(frozen=True, kw_only=True)
class RankShard:
    rank: int
    kv_heads: tuple[int, int]  # KV heads [k0, k1)
    heads: tuple[int, int]  # query heads [k0 * group, k1 * group)
    ffn: tuple[int, int]  # MLP neurons
    vocab: tuple[int, int]  # embedding / LM head rows held (all of them when replicated)
    lm_head: bool  # whether this rank computes logits (all ranks when vocab-parallel, rank 0 otherwise)

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def num_heads(self) -> int:
        return self.heads[1] - self.heads[0]

    @property
    def ffn_size(self) -> int:
        return self.ffn[1] - self.ffn[0]

    @property
    def vocab_size(self) -> int:
        return self.vocab[1] - self.vocab[0]


@dataclass(frozen=True, kw_only=True)
class ShardPlan:
    shape: LlamaShape
    world_size: int
    vocab_parallel: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise ConfigError(f"--tensor-parallel must be a whole number >= 1, got {self.world_size!r}")
        if self.world_size > self.shape.num_kv_heads:
            raise ConfigError(
                f"--tensor-parallel {self.world_size} is more ranks than the model's {self.shape.num_kv_heads} "
                f"key/value heads (each rank holds whole KV groups); use --tensor-parallel "
                f"{self.shape.num_kv_heads} or fewer"
            )

    @property
    def shards(self) -> tuple[RankShard, ...]:
        s, n = self.shape, self.world_size
        groups = split_evenly(s.num_kv_heads, n)
        ffn = split_evenly(s.intermediate_size, n)
        vocab = split_evenly(s.vocab_size, n) if self.vocab_parallel else [(0, s.vocab_size)] * n
        return tuple(
            RankShard(
                rank=r,
                kv_heads=groups[r],
                heads=(groups[r][0] * s.group_size, groups[r][1] * s.group_size),
                ffn=ffn[r],
                vocab=vocab[r],
                lm_head=self.vocab_parallel or r == 0,
            )
            for r in range(n)
        )

    @property
    def vocab_chunk(self) -> int:
        """The largest vocabulary share: every rank's logits are padded to it for the gather."""
        return max(sh.vocab_size for sh in self.shards)

    def weight_elements(self, rank: int) -> int:
        s, sh = self.shape, self.shards[rank]
        d, h = s.head_dim, s.hidden_size
        per_layer = (sh.num_heads + 2 * sh.num_kv_heads) * d * h + h * sh.num_heads * d + 3 * sh.ffn_size * h + 2 * h
        embed = sh.vocab_size * h
        head = sh.vocab_size * h if (sh.lm_head and not s.tie_word_embeddings) else 0
        return s.num_layers * per_layer + h + embed + head

    def kv_bytes(self, rank: int, budget: Budget) -> int:
        s = self.shape
        per_token = 2 * s.num_layers * self.shards[rank].num_kv_heads * s.head_dim * budget.itemsize
        return per_token * budget.num_slots * budget.max_model_len

    def step_bytes(self, rank: int, budget: Budget) -> int:
        """Activations of the largest forward: hidden states, MLP, one chunk's attention scores, logits.

        The decoder cuts steps at ``max_step_tokens`` tokens and ``max_logit_rows``
        rows of logits; rank 0 also holds the gathered rows and their copy for the pipe.
        """
        s, sh, t, rows = self.shape, self.shards[rank], budget.max_step_tokens, budget.max_logit_rows
        hidden = t * (10 * s.hidden_size + 3 * sh.ffn_size + (sh.num_heads + 2 * sh.num_kv_heads) * s.head_dim)
        scores = sh.num_heads * t * budget.max_model_len
        logits = rows * self.vocab_chunk * (self.world_size if sh.lm_head else 0)
        if rank == 0:
            logits += 2 * rows * s.vocab_size
        return (hidden + scores + logits) * budget.itemsize

    def rank_bytes(self, rank: int, budget: Budget) -> dict[str, int]:
        """What ``rank`` reserves, by part, and the total the cap must hold."""
        parts = {
            "weights": self.weight_elements(rank) * budget.itemsize,
            "kv_cache": self.kv_bytes(rank, budget),
            "activations": self.step_bytes(rank, budget),
            "runtime": RUNTIME_BYTES,
        }
        parts["total"] = sum(parts.values())
        return parts

    def largest_rank(self, budget: Budget) -> dict[str, int]:
        return max((self.rank_bytes(r, budget) for r in range(self.world_size)), key=lambda p: p["total"])


@dataclass(frozen=True, kw_only=True)
class Budget:
    """What a rank must make room for besides its weights."""

    num_slots: int
    max_model_len: int
    max_step_tokens: int
    max_logit_rows: int
    dtype: str = "float32"

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]


def slots_that_fit(shape: LlamaShape, *, world_size: int, cap: int, budget: Budget, vocab_parallel: bool) -> int:
    """How many KV slots of ``budget.max_model_len`` fit every rank under ``cap`` (0 if none)."""
    plan = ShardPlan(shape=shape, world_size=world_size, vocab_parallel=vocab_parallel)
    one = replace(budget, num_slots=1)
    spare = min(cap - (plan.rank_bytes(r, one)["total"] - plan.kv_bytes(r, one)) for r in range(world_size))
    per_slot = max(plan.kv_bytes(r, one) for r in range(world_size))
    return max(0, spare // per_slot)


def check_fits(shape: LlamaShape, *, world_size: int, cap: int, budget: Budget, vocab_parallel: bool) -> None:
    """Raise ConfigError, naming the sizes and a ``--tensor-parallel N`` that fits, if a rank would pass ``cap``."""

    def worst(n: int) -> dict[str, int]:
        return ShardPlan(shape=shape, world_size=n, vocab_parallel=vocab_parallel).largest_rank(budget)

    need = worst(world_size)
    if need["total"] <= cap:
        return
    detail = ", ".join(f"{k.replace('_', ' ')} {format_size(v)}" for k, v in need.items() if k != "total")
    what = "unsplit" if world_size == 1 else f"split {world_size} ways"
    msg = (
        f"the model does not fit the per-rank memory cap of {format_size(cap)} {what}: its largest rank needs "
        f"{format_size(need['total'])} ({detail}; {budget.num_slots} KV slots of {budget.max_model_len} tokens)"
    )
    for n in range(world_size + 1, shape.num_kv_heads + 1):
        other = worst(n)
        if other["total"] <= cap:
            raise ConfigError(
                f"{msg}; use --tensor-parallel {n} (each rank then needs {format_size(other['total'])}, "
                f"weights {format_size(other['weights'])})"
            )
    raise ConfigError(
        f"{msg}; even --tensor-parallel {shape.num_kv_heads} (one KV head per rank) needs "
        f"{format_size(worst(shape.num_kv_heads)['total'])} per rank: raise --max-worker-memory, or lower the "
        "number of KV slots or --max-model-len"
    )
