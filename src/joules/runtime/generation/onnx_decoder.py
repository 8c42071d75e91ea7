"""The ``Decoder`` of a text-generation bundle, run by ONNX Runtime in this process.

The KV cache is a pool of slots per layer, ``[slots, kv_heads, max_len,
head_dim]`` for keys and the same for values, allocated once as anonymous
memory: pages are only committed when a position is first written, so a pool
sized for 64 sequences of 2,048 tokens costs what its sequences use. The graph
(bundle/generation.py) reads and writes the cache in place: a call over rows
``a .. a+k-1`` is given the pool's slots ``a .. a+k-1`` as one contiguous view,
bound through IOBinding as both past and present, so no step copies the cache.

One step is one or more graph calls. Single-token sequences (decodes) are
batched into calls over runs of consecutive slots; a gap of a few slots inside
a run is filled with a harmless dummy row (it writes one position just past
the slot's valid cache, which is garbage by contract) rather than splitting the
call. Sequences with several new tokens (prompt chunks) run one per call, so
a 2,000-token prompt chunked by the engine never pads anybody else's row.

Calls of 8 to 16 tokens (batched decode steps) run a second session whose
float32 products are laid out for few rows (columns.py): products about 1.5x
faster at 16 rows, for a second copy of the float32 weights.

With ``batch_invariant`` (no column session), fp32 arithmetic here is
batch-invariant: ONNX Runtime's MLAS GEMM gives a row the same bits whatever
the number of rows beside it, and attention is computed per row, so a
sequence's logits do not depend on its neighbours or on how its prompt was
chunked (tests/runtime/generation check this). Without it, a sequence's logits
inside a batched decode step can differ from its logits alone by rounding
(columns.py says why and how much).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from joules.bundle.generation import (
    INPUT_IDS,
    LOGITS,
    LOGITS_INDEX,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    GenerationSpec,
    past_names,
    present_names,
)
from joules.errors import ConfigError, EngineUnavailableError
from joules.runtime.executor import RuntimeOptions, choose_providers, session_options
from joules.runtime.generation.columns import COLUMN_MAX_TOKENS, COLUMN_MIN_TOKENS, column_graph
from joules.runtime.generation.decoder import DecoderConfig, StepSequence

log = logging.getLogger(__name__)

# A decode call over a run of slots takes up to this many dummy rows per real row rather than splitting.
GAP_TOLERANCE = 0.25
# IOBindings kept with their cache views bound, one per (first slot, rows) a call used lately.
BINDINGS_KEPT = 32


class KVPool:
    """Keys and values of every layer for ``num_slots`` slots of ``max_len`` positions, in lazily committed pages."""

    def __init__(self, config: DecoderConfig, num_slots: int) -> None:
        self.config = config
        self.num_slots = num_slots
        self.slot_shape = (config.num_kv_heads, config.max_model_len, config.head_dim)
        itemsize = np.dtype(config.dtype).itemsize
        self.slot_bytes = int(np.prod(self.slot_shape)) * itemsize
        nbytes = self.slot_bytes * num_slots
        # One anonymous mapping per tensor: untouched pages cost nothing, and release() hands pages back.
        self._maps = [mmap.mmap(-1, nbytes) for _ in range(2 * config.num_layers)]
        self.arrays = [np.frombuffer(m, dtype=config.dtype).reshape(num_slots, *self.slot_shape) for m in self._maps]
        self.keys = self.arrays[0::2]
        self.values = self.arrays[1::2]

    @property
    def reserved_bytes(self) -> int:
        return self.slot_bytes * self.num_slots * len(self.arrays)

    def copy(self, src: int, dst: int, length: int) -> None:
        if length <= 0 or src == dst:
            return
        for a in self.arrays:
            a[dst, :, :length] = a[src, :, :length]

    def release(self, slot: int) -> None:
        """Give a slot's pages back to the operating system (they read as zeros when touched again)."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = self.slot_bytes * slot
        page = mmap.PAGESIZE
        begin = -(-start // page) * page
        end = ((start + self.slot_bytes) // page) * page
        if end > begin:
            for m in self._maps:
                m.madvise(mmap.MADV_DONTNEED, begin, end - begin)

    def close(self) -> None:
        self.keys = self.values = self.arrays = []
        for m in self._maps:
            # A view still held elsewhere keeps its mapping alive until it is collected.
            with contextlib.suppress(BufferError):
                m.close()
        self._maps = []


def decoder_config(spec: GenerationSpec, max_model_len: int) -> DecoderConfig:
    if max_model_len > spec.context_length:
        raise ConfigError(
            f"max_model_len {max_model_len} is longer than the model's context ({spec.context_length} tokens); "
            f"use --max-model-len {spec.context_length} or less"
        )
    return DecoderConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_model_len=max_model_len,
    )


class OnnxDecoder:
    """Runs a text-generation bundle's decoder graph over a pool of KV slots (see the module doc)."""

    def __init__(
        self,
        model_path: Path,
        config: DecoderConfig,
        num_slots: int,
        options: RuntimeOptions | None = None,
        *,
        batch_invariant: bool = False,
    ) -> None:
        if num_slots < 1:
            raise ConfigError(f"num_slots must be >= 1, got {num_slots}")
        self.config = config
        self.num_slots = num_slots
        options = options or RuntimeOptions()
        providers = choose_providers(options)
        self.session = ort.InferenceSession(str(model_path), session_options(options), providers=providers)
        # The column layout is for MLAS (CPU; other providers have their own kernels) and for decode steps of
        # COLUMN_MIN_TOKENS rows or more: a pool with fewer slots (`joules generate`, `joules chat`) never has one.
        self.columns: Any = None
        self._column_values: list[Any] = []
        if not batch_invariant and num_slots >= COLUMN_MIN_TOKENS and providers == ["CPUExecutionProvider"]:
            began = time.perf_counter()
            graph = column_graph(model_path)
            if graph is not None:
                self.columns, self._column_values = graph.session(session_options(options), providers)
                log.info(
                    "%s: decode steps of %d-%d rows run the column layout (%d MB of transposed weights, built in "
                    "%.1f s; --batch-invariant turns it off)",
                    model_path,
                    COLUMN_MIN_TOKENS,
                    COLUMN_MAX_TOKENS,
                    sum(a.nbytes for a in graph.arrays) >> 20,
                    time.perf_counter() - began,
                )
        # Calls run by each layout (step_profile.py and the tests read it).
        self.calls = {"rows": 0, "columns": 0}
        self.pool = KVPool(config, num_slots)
        # The length last written to each slot: where a dummy row may write without harm.
        self.lengths = np.zeros(num_slots, dtype=np.int64)
        self._names = [(*past_names(i), *present_names(i)) for i in range(config.num_layers)]
        # Binding 2 x layers cache views costs about as much Python as the rest of a step; the views of a run
        # of slots never move (the pool is mapped once), so each run's binding is made once and reused.
        # (layout, first slot, rows) -> (the IOBinding, the OrtValues bound in it, kept alive as long as it is)
        self._bindings: OrderedDict[tuple[str, int, int], tuple[Any, list[Any]]] = OrderedDict()
        self._closed = False

    # -- the Decoder protocol ------------------------------------------------------------------------

    def step(self, seqs: Sequence[StepSequence]) -> list[np.ndarray]:
        if self._closed:
            raise EngineUnavailableError("the decoder is closed; the engine was shut down")
        out: list[np.ndarray | None] = [None] * len(seqs)
        singles: list[int] = []
        for k, s in enumerate(seqs):
            n = len(s.tokens)
            if not 0 <= s.slot < self.num_slots:
                raise ConfigError(f"slot {s.slot} is outside the pool [0, {self.num_slots})")
            if n < 1 or s.start < 0 or s.start + n > self.config.max_model_len:
                raise ConfigError(
                    f"slot {s.slot}: positions {s.start}..{s.start + n - 1} do not fit max_model_len "
                    f"{self.config.max_model_len}"
                )
            if n == 1 and not s.all_logits:
                singles.append(k)
            else:
                out[k] = self._run_rows(s.slot, [s], all_logits=s.all_logits)[0]
        for run in self._runs(sorted(singles, key=lambda k: seqs[k].slot), seqs):
            first = seqs[run[0]].slot
            last = seqs[run[-1]].slot
            rows: list[StepSequence | None] = [None] * (last - first + 1)
            for k in run:
                rows[seqs[k].slot - first] = seqs[k]
            logits = self._run_rows(first, rows, all_logits=False)
            for k in run:
                out[k] = logits[seqs[k].slot - first]
        return [x for x in out if x is not None]

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        for s in (src, dst):
            if not 0 <= s < self.num_slots:
                raise ConfigError(f"slot {s} is outside the pool [0, {self.num_slots})")
        if not 0 <= length <= self.config.max_model_len:
            raise ConfigError(f"copy length {length} is outside [0, {self.config.max_model_len}]")
        self.pool.copy(src, dst, length)
        self.lengths[dst] = length

    def release_slot(self, slot: int) -> None:
        """The slot's cache is no longer needed: return its memory (optional part of the protocol)."""
        self.pool.release(slot)
        self.lengths[slot] = 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bindings.clear()
        self.pool.close()
        del self.session
        self.columns = None
        self._column_values = []

    # -- calls ---------------------------------------------------------------------------------------

    def _runs(self, order: list[int], seqs: Sequence[StepSequence]) -> list[list[int]]:
        """Cut single-token sequences (sorted by slot) into runs worth one call each."""
        runs: list[list[int]] = []
        for k in order:
            slot = seqs[k].slot
            if runs:
                run = runs[-1]
                first = seqs[run[0]].slot
                prev = seqs[run[-1]].slot
                if slot == prev:
                    raise ConfigError(f"two sequences in one step share slot {slot}")
                span = slot - first + 1
                dummies = span - (len(run) + 1)
                gap_ok = all(self.lengths[g] < self.config.max_model_len for g in range(prev + 1, slot))
                if gap_ok and dummies <= GAP_TOLERANCE * (len(run) + 1):
                    run.append(k)
                    continue
            runs.append([k])
        return runs

    def _layout(self, tokens: int) -> tuple[str, Any]:
        """The session for a call of ``tokens`` tokens: the column layout for a few, else the bundle's graph."""
        if self.columns is not None and COLUMN_MIN_TOKENS <= tokens <= COLUMN_MAX_TOKENS:
            return "columns", self.columns
        return "rows", self.session

    def _binding(self, layout: str, session: Any, first: int, batch: int) -> Any:
        """An IOBinding with slots ``first .. first + batch - 1``'s cache bound as past and present, reused."""
        key = (layout, first, batch)
        kept = self._bindings.get(key)
        if kept is not None:
            self._bindings.move_to_end(key)
            return kept[0]
        io = session.io_binding()
        views: list[Any] = []
        for layer, (pk, pv, ok, ov) in enumerate(self._names):
            k = ort.OrtValue.ortvalue_from_numpy(self.pool.keys[layer][first : first + batch])
            v = ort.OrtValue.ortvalue_from_numpy(self.pool.values[layer][first : first + batch])
            io.bind_ortvalue_input(pk, k)
            io.bind_ortvalue_input(pv, v)
            io.bind_ortvalue_output(ok, k)
            io.bind_ortvalue_output(ov, v)
            views.extend((k, v))
        self._bindings[key] = (io, views)
        if len(self._bindings) > BINDINGS_KEPT:
            self._bindings.popitem(last=False)
        return io

    def _run_rows(self, first: int, rows: Sequence[StepSequence | None], *, all_logits: bool) -> list[np.ndarray]:
        """One graph call over slots ``first .. first + len(rows) - 1``; None rows are dummies."""
        batch = len(rows)
        width = max(len(r.tokens) for r in rows if r is not None)
        ids = np.zeros((batch, width), dtype=np.int64)
        seqlens = np.empty(batch, dtype=np.int32)
        picks: list[int] = []
        for b, r in enumerate(rows):
            if r is None:
                # Write one position just past what the slot holds: garbage there is allowed.
                seqlens[b] = self.lengths[first + b]
                continue
            n = len(r.tokens)
            if n != width:
                raise ConfigError("rows of one call must have the same number of new tokens")
            ids[b] = r.tokens
            seqlens[b] = r.start + n - 1
            if all_logits:
                picks.extend(range(b * width, b * width + n))
            else:
                picks.append(b * width + n - 1)
        index = np.asarray(picks, dtype=np.int64)
        logits = np.empty((len(picks), self.config.vocab_size), dtype=np.float32)
        layout, session = self._layout(batch * width)
        io = self._binding(layout, session, first, batch)
        io.bind_cpu_input(INPUT_IDS, ids)
        io.bind_cpu_input(SEQLENS_K, seqlens)
        io.bind_cpu_input(TOTAL_SEQUENCE_LENGTH, np.array(int(seqlens.max()) + 1, dtype=np.int32))
        io.bind_cpu_input(LOGITS_INDEX, index)
        io.bind_output(LOGITS, "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        try:
            session.run_with_iobinding(io)
        except (RuntimeError, ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException) as e:
            raise EngineUnavailableError(f"the decoder graph failed: {e}") from e
        self.calls[layout] += 1
        for b, r in enumerate(rows):
            if r is not None:
                self.lengths[first + b] = r.start + len(r.tokens)
        if all_logits:
            return [logits]
        out: list[np.ndarray] = []
        j = 0
        for r in rows:
            if r is not None:
                out.append(logits[j])
                j += 1
            else:
                out.append(logits[0])  # placeholder for a dummy row; never read
        return out
