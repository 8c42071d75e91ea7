"""``TensorParallelDecoder``: the Decoder contract, run by N rank processes (no torch in the caller).

The caller (the process holding the engine) starts ranks 0..L-1 on this
machine as ``python -m joules.parallel.worker`` subprocesses; ranks L..N-1, if
any, are started on other machines with ``joules worker`` against the same
``--master-addr/--master-port``. Only rank 0 talks to the caller, through two
pipes: each step's inputs go in, the logits come back. The caller never
blocks on a pipe without also watching the ranks it started: a rank that
exits turns the current and every later call into ``EngineUnavailableError``
within ``poll_s``, and the rest of the group is killed (it cannot compute
without it).

A step larger than ``max_step_tokens`` is cut into several forwards (a long
prompt's chunks in order), which bounds each rank's activation memory and
keeps the per-rank budget of ``plan.check_fits`` honest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from joules.errors import ConfigError, EngineUnavailableError, InputError, require
from joules.parallel import protocol as P
from joules.parallel.llama import LlamaShape
from joules.parallel.memory import format_size, parse_size
from joules.parallel.plan import DTYPE_SIZES, Budget, ShardPlan, check_fits, slots_that_fit
from joules.parallel.shm import SHM_DIR, create_shm, shm_available
from joules.parallel.weights import WeightIndex
from joules.runtime.generation.decoder import DecoderConfig, StepSequence

log = logging.getLogger("joules.parallel")
TRANSPORTS = ("auto", "shm", "gloo")
DEFAULT_SLOTS = 8


@dataclass(frozen=True, kw_only=True)
class ParallelOptions:
    """How the group is laid out and what each rank may use."""

    tp: int = 1
    num_slots: int | None = None  # None: DEFAULT_SLOTS, or fewer if the memory cap holds fewer
    max_model_len: int | None = None  # default: min(2048, the model's max_position_embeddings)
    max_worker_memory: int | str | None = None  # bytes per rank, or "2200M"
    master_addr: str | None = None  # None: every rank on this machine, on 127.0.0.1
    master_port: int | None = None  # None: a free port
    local_ranks: int | None = None  # ranks started here (0..local_ranks-1); default all, or 1 with master_addr
    transport: str = "auto"  # auto: shared memory when every rank is here (x86-64), else torch.distributed
    vocab_parallel: bool = True  # embedding and LM head split by vocabulary rows (else replicated)
    dtype: str = "float32"  # weights, activations and KV cache
    threads_per_rank: int | None = None  # default: this machine's cores / local ranks (at least 1)
    max_step_tokens: int = 512  # tokens per forward: a longer step is cut into several
    max_logit_rows: int = 64  # rows of logits per forward (all_logits chunks are cut to it)
    chunk_bytes: int = 2 << 20  # shared-memory slot per rank per buffer
    spin_us: float = 20.0  # shared memory: how long a waiting rank spins before sleeping on a futex
    load_timeout_s: float = 900.0
    step_timeout_s: float = 600.0
    collective_timeout_s: float = 300.0
    keepalive_s: float = 30.0
    poll_s: float = 0.2
    env: dict[str, str] = field(default_factory=dict)  # extra environment for local ranks

    def __post_init__(self) -> None:
        for name in ("tp", "num_slots", "max_step_tokens", "max_logit_rows", "chunk_bytes"):
            v = getattr(self, name)
            if name == "num_slots" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")
        if self.max_worker_memory is not None:
            object.__setattr__(self, "max_worker_memory", parse_size(self.max_worker_memory))
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"transport {self.transport!r} is not one of {list(TRANSPORTS)}")
        if self.dtype not in DTYPE_SIZES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {list(DTYPE_SIZES)}")
        local = self.local_ranks
        if local is not None and not 1 <= local <= self.tp:
            raise ConfigError(f"local_ranks must be between 1 and --tensor-parallel ({self.tp}), got {local!r}")
        if self.transport == "shm" and self.ranks_here < self.tp:
            raise ConfigError(
                "the shared-memory transport needs every rank on this machine; use transport 'gloo' with "
                "ranks on other machines"
            )

    @property
    def ranks_here(self) -> int:
        if self.local_ranks is not None:
            return self.local_ranks
        return self.tp if self.master_addr is None else 1


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def _reap(procs: list[subprocess.Popen[bytes]], fds: tuple[int, ...], shm: Path | None) -> None:
    """Kill what a decoder dropped without ``close()`` started (its finalizer: it must not hold the decoder)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    if shm is not None:
        shm.unlink(missing_ok=True)


def _source_dir(source: Any) -> Path:
    path = getattr(source, "path", source)  # a Bundle, or a directory
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"tensor-parallel source {str(path)!r} is not a directory with config.json and safetensors")
    return path


class _Rank:
    """A local rank process and the tail of its stderr."""

    def __init__(self, rank: int, proc: subprocess.Popen[bytes]) -> None:
        self.rank, self.proc = rank, proc
        self.tail: deque[str] = deque(maxlen=20)
        self.thread = threading.Thread(target=self._pump, name=f"joules-tp-rank{rank}-stderr", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            log.debug("rank %d: %s", self.rank, line)

    def why(self) -> str:
        code = self.proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        last = next((x for x in reversed(self.tail) if x.strip()), "")
        return f"tensor-parallel rank {self.rank} (pid {self.proc.pid}) {how}" + (f": {last}" if last else "")


class TensorParallelDecoder:
    """The ``Decoder`` protocol over N rank processes; numpy in and out, like the ONNX decoder."""

    def __init__(self, source: Any, **options: Any) -> None:
        self.options = opts = ParallelOptions(**options)
        require("torch", "parallel")  # the ranks import it; this process never does
        self.source = _source_dir(source)
        self.shape = LlamaShape.read(self.source)
        self.index = WeightIndex.from_directory(self.source)
        self.plan = ShardPlan(shape=self.shape, world_size=opts.tp, vocab_parallel=opts.vocab_parallel)
        self.index.check(self.shape)  # every tensor named and shaped as config.json says, from the headers
        max_len = opts.max_model_len or min(2048, self.shape.max_position_embeddings)
        self.config = DecoderConfig(
            vocab_size=self.shape.vocab_size,
            hidden_size=self.shape.hidden_size,
            num_layers=self.shape.num_layers,
            num_heads=self.shape.num_heads,
            num_kv_heads=self.shape.num_kv_heads,
            head_dim=self.shape.head_dim,
            max_model_len=max_len,
            dtype=opts.dtype,
        )
        self.num_slots = self._fit(max_len)
        self.rank_stats: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ranks: list[_Rank] = []
        self._failure: str | None = None
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._start()

    # -- lifecycle ------------------------------------------------------------------------------------

    def _budget(self, max_len: int, num_slots: int) -> Budget:
        o = self.options
        return Budget(
            num_slots=num_slots,
            max_model_len=max_len,
            max_step_tokens=o.max_step_tokens,
            max_logit_rows=o.max_logit_rows,
            dtype=o.dtype,
        )

    def _fit(self, max_len: int) -> int:
        """The number of KV slots: as asked, else as many as fit the cap (at most DEFAULT_SLOTS); refuse past it."""
        o, cap = self.options, self.options.max_worker_memory
        slots = o.num_slots or DEFAULT_SLOTS
        if isinstance(cap, int):
            if o.num_slots is None:
                fit = slots_that_fit(
                    self.shape,
                    world_size=o.tp,
                    cap=cap,
                    budget=self._budget(max_len, 1),
                    vocab_parallel=o.vocab_parallel,
                )
                slots = max(1, min(slots, fit))
            check_fits(
                self.shape,
                world_size=o.tp,
                cap=cap,
                budget=self._budget(max_len, slots),
                vocab_parallel=o.vocab_parallel,
            )
        return slots

    def _transport(self) -> str:
        t = self.options.transport
        if t == "auto":
            alone = self.options.tp == 1
            return "shm" if not alone and self.options.ranks_here == self.options.tp and shm_available() else "gloo"
        return t

    def _start(self) -> None:
        opts = self.options
        addr = opts.master_addr or "127.0.0.1"
        port = opts.master_port or _free_port(addr)
        here = opts.ranks_here
        threads = opts.threads_per_rank or max(1, (os.cpu_count() or 1) // here)
        transport = self._transport()
        name = f"joules-tp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._shm = SHM_DIR / name if transport == "shm" else None
        group = {
            "fingerprint": self.index.fingerprint,
            "num_slots": self.num_slots,
            "max_model_len": self.config.max_model_len,
            "dtype": opts.dtype,
            "vocab_parallel": opts.vocab_parallel,
            "cap": opts.max_worker_memory,
            "transport": transport,
            "shm_path": str(self._shm) if self._shm else None,
            "chunk_bytes": opts.chunk_bytes,
            "spin_us": opts.spin_us,
            "collective_timeout_s": opts.collective_timeout_s,
            "keepalive_s": opts.keepalive_s,
        }
        if self._shm is not None:
            create_shm(self._shm, world_size=opts.tp, chunk_bytes=opts.chunk_bytes)
        to_rank0_r, self._to_rank0 = os.pipe()
        self._from_rank0, from_rank0_w = os.pipe()
        env = {
            **os.environ,
            "JOULES_TP_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            # Fewer malloc arenas: less reserved (RLIMIT_DATA-counted) memory per thread.
            "MALLOC_ARENA_MAX": "2",
            **opts.env,
        }
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._failure = None
        self._ranks = []
        try:
            for r in range(here):
                cmd = [
                    sys.executable,
                    "-m",
                    "joules.parallel.worker",
                    "--model",
                    str(self.source),
                    "--rank",
                    str(r),
                    "--world-size",
                    str(opts.tp),
                    "--master-addr",
                    addr,
                    "--master-port",
                    str(port),
                ]
                fds: tuple[int, ...] = ()
                if r == 0:
                    cmd += ["--control", f"{to_rank0_r},{from_rank0_w}", "--options", json.dumps(group)]
                    fds = (to_rank0_r, from_rank0_w)
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    pass_fds=fds,
                    env=env,
                    # Own session: a Ctrl-C meant for the server does not reach the ranks; the decoder stops them.
                    start_new_session=True,
                )
                self._ranks.append(_Rank(r, proc))
        except BaseException:
            self._kill_all()
            raise
        finally:
            os.close(to_rank0_r)
            os.close(from_rank0_w)
        self._finalizer = weakref.finalize(
            self, _reap, [r.proc for r in self._ranks], (self._to_rank0, self._from_rank0), self._shm
        )
        log.info(
            "tensor-parallel: %d ranks (%d here, transport %s, %d threads each), master %s:%d",
            opts.tp,
            here,
            transport,
            threads,
            addr,
            port,
        )
        try:
            status, body = self._receive(time.monotonic() + opts.load_timeout_s, "loading")
        except EngineUnavailableError:
            self.close()
            raise
        if status != P.STATUS_OK:
            self.close()
            raise EngineUnavailableError(f"the tensor-parallel group could not start: {body.decode()}")
        self.rank_stats = json.loads(body)
        if self._shm is not None:
            self._shm.unlink(missing_ok=True)  # every rank has it mapped: nothing is left behind if we die
        for s in self.rank_stats:
            m = s["memory"]
            log.info(
                "rank %d (pid %d): weights %s, KV %s, RssAnon %s, VmRSS %s%s",
                s["rank"],
                s["pid"],
                format_size(s["weight_bytes"]),
                format_size(s["kv_bytes"]),
                format_size(m["RssAnon"]),
                format_size(m["VmRSS"]),
                f", cap {format_size(s['cap']['limit'])} ({s['cap']['kind']})" if s["cap"] else "",
            )

    def restart(self) -> None:
        """Stop the group and start a new one with the same options (every KV slot is lost)."""
        self.close()
        self._closed = False
        self._start()

    def close(self) -> None:
        """Stop every rank (politely if idle, SIGKILL after a grace period) and release the pipes."""
        if self._closed:
            return
        self._closed = True
        polite = self._failure is None and self._lock.acquire(timeout=0.5)
        try:
            if polite:
                # A rank already gone or not reading is stopped below either way.
                with contextlib.suppress(OSError, EngineUnavailableError):
                    self._send(P.encode_op(P.OP_CLOSE), time.monotonic() + 2.0)
        finally:
            if polite:
                self._lock.release()
        deadline = time.monotonic() + (5.0 if polite else 0.0)
        for r in self._ranks:
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        self._kill_all()
        for fd in (self._to_rank0, self._from_rank0):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._shm is not None:
            self._shm.unlink(missing_ok=True)
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._failure is None:
            self._failure = "the tensor-parallel decoder was closed"

    def _kill_all(self) -> None:
        for r in self._ranks:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r.proc.pid, signal.SIGKILL)
        for r in self._ranks:
            r.proc.wait()
            r.thread.join(timeout=2.0)

    def __enter__(self) -> TensorParallelDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health ---------------------------------------------------------------------------------------

    def _check_ranks(self) -> None:
        if self._failure is not None:
            raise EngineUnavailableError(self._failure)
        for r in self._ranks:
            if r.proc.poll() is not None:
                r.thread.join(timeout=1.0)  # its last stderr line says why
                self._fail(r.why())

    def _fail(self, why: str) -> NoReturn:
        self._failure = why
        log.error("%s; stopping the tensor-parallel group", why)
        self._kill_all()
        raise EngineUnavailableError(why)

    @property
    def failure(self) -> str | None:
        """Why the group cannot compute (a call failed, a rank this process started has exited), or None."""
        if self._failure is not None:
            return self._failure
        if self._closed:
            return "the tensor-parallel decoder was closed"
        return next((r.why() for r in self._ranks if r.proc.poll() is not None), None)

    @property
    def healthy(self) -> bool:
        """Every rank this process started is running and no call has failed."""
        return self.failure is None

    @property
    def pids(self) -> list[int]:
        return [r.proc.pid for r in self._ranks]

    # -- pipes ----------------------------------------------------------------------------------------

    def _send(self, msg: bytes, deadline: float | None = None) -> None:
        """Write a request; a rank 0 that stops reading (stopped, hung) is caught like a silent one."""
        view = memoryview(np.int64(len(msg)).tobytes() + msg)
        while view:
            _, ready, _ = select.select([], [self._to_rank0], [], self.options.poll_s)
            if not ready:
                self._check_ranks()
                if deadline is not None and time.monotonic() > deadline:
                    self._fail("tensor-parallel rank 0 stopped reading its requests")
                continue
            view = view[os.write(self._to_rank0, view[: select.PIPE_BUF]) :]

    def _read(self, n: int, deadline: float, what: str) -> bytearray:
        out = bytearray(n)
        view, got = memoryview(out), 0
        while got < n:
            ready, _, _ = select.select([self._from_rank0], [], [], self.options.poll_s)
            if not ready:
                self._check_ranks()
                if time.monotonic() > deadline:
                    self._fail(f"the tensor-parallel group did not answer within its time limit ({what})")
                continue
            k = os.readv(self._from_rank0, [view[got:]])
            if k == 0:
                # The pipe closes as rank 0 dies, a moment before it can be reaped: wait for it to say how.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._ranks[0].proc.wait(timeout=1.0)
                self._check_ranks()
                self._fail("tensor-parallel rank 0 closed its pipe")
            got += k
        return out

    def _receive(self, deadline: float, what: str) -> tuple[int, bytes]:
        status, n = P.RESPONSE_HEAD.unpack(self._read(P.RESPONSE_HEAD.size, deadline, what))
        return status, bytes(self._read(n, deadline, what))

    def _call(self, msg: bytes, what: str) -> bytes:
        self._check_ranks()
        deadline = time.monotonic() + self.options.step_timeout_s
        try:
            self._send(msg, deadline)
        except BrokenPipeError:
            self._check_ranks()
            self._fail("tensor-parallel rank 0 is gone")
        status, body = self._receive(deadline, what)
        if status != P.STATUS_OK:
            self._fail(body.decode("utf-8", "replace"))
        return body

    # -- the Decoder protocol -------------------------------------------------------------------------

    def _validate(self, seqs: Sequence[StepSequence]) -> None:
        slots = set()
        for s in seqs:
            n = int(np.asarray(s.tokens).size)
            if not 0 <= s.slot < self.num_slots:
                raise InputError(f"KV slot {s.slot} is out of range: this decoder has slots 0..{self.num_slots - 1}")
            if s.slot in slots:
                raise InputError(f"KV slot {s.slot} appears twice in one step")
            slots.add(s.slot)
            if n < 1 or s.start < 0 or s.start + n > self.config.max_model_len:
                raise InputError(
                    f"slot {s.slot}: positions {s.start}..{s.start + n - 1} do not fit max_model_len "
                    f"{self.config.max_model_len} (or no tokens)"
                )
            tokens = np.asarray(s.tokens)
            if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
                raise InputError(f"slot {s.slot}: token ids must be in 0..{self.config.vocab_size - 1}")

    def step(self, seqs: Sequence[StepSequence]) -> list[np.ndarray]:
        if not seqs:
            return []
        self._validate(seqs)
        budget, row_budget = self.options.max_step_tokens, self.options.max_logit_rows
        vocab = self.config.vocab_size
        pieces: list[list[np.ndarray]] = [[] for _ in seqs]
        # Cut the step into forwards of at most ``budget`` tokens and ``row_budget`` logit rows; a sequence's
        # chunks stay in order (each forward appends to the slots what the previous one left).
        todo = [(i, 0) for i in range(len(seqs))]
        with self._lock:
            while todo:
                parts, toks, asked, nxt = [], [], [], []
                left, rows_left = budget, row_budget
                for i, off in todo:
                    s = seqs[i]
                    tokens = np.asarray(s.tokens, dtype=np.int64).reshape(-1)
                    n = min(left, tokens.size - off, rows_left if s.all_logits else left)
                    if n == 0 or (not s.all_logits and off + n == tokens.size and rows_left == 0):
                        nxt.append((i, off))
                        continue
                    last = off + n == tokens.size
                    mode = 2 if s.all_logits else (1 if last else 0)
                    parts.append((s.slot, s.start + off, n, mode))
                    toks.append(tokens[off : off + n])
                    asked.append((i, mode, n))
                    left -= n
                    rows_left -= n if mode == 2 else mode
                    if not last:
                        nxt.append((i, off + n))
                body = self._call(P.encode_step(parts, np.concatenate(toks)), "a step")
                rows = np.frombuffer(body, dtype=np.float32).reshape(-1, vocab)
                at = 0
                for i, mode, n in asked:
                    k = n if mode == 2 else (1 if mode == 1 else 0)
                    if k:
                        pieces[i].append(rows[at : at + k])
                    at += k
                todo = nxt
        out = []
        for s, got in zip(seqs, pieces, strict=True):
            out.append(np.concatenate(got) if s.all_logits else got[-1][0].copy())
        return out

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        for slot in (src, dst):
            if not 0 <= slot < self.num_slots:
                raise InputError(f"KV slot {slot} is out of range: this decoder has slots 0..{self.num_slots - 1}")
        if not 0 <= length <= self.config.max_model_len:
            raise InputError(f"copy length {length} is not in 0..{self.config.max_model_len}")
        with self._lock:
            self._call(P.encode_op(P.OP_COPY, src, dst, length), "a slot copy")

    def report(self) -> list[dict[str, Any]]:
        """Every rank's current memory (RssAnon, VmRSS, VmData...), weight and KV bytes, and cap."""
        with self._lock:
            self.rank_stats = json.loads(self._call(P.encode_op(P.OP_REPORT), "a memory report"))
        return self.rank_stats

    def describe(self) -> dict[str, Any]:
        """The group's layout, for logs and ``--json`` output."""
        return {
            "tp": self.options.tp,
            "options": {k: v for k, v in asdict(self.options).items() if k != "env"},
            "shards": [asdict(s) for s in self.plan.shards],
            "ranks": self.rank_stats,
        }
