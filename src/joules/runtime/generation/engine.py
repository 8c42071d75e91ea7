"""The generation engine: a loop on its own thread that steps every running sequence together.

Continuous batching at the iteration level (Orca, Yu et al., OSDI 2022): the
batch is re-formed every step, so a request that arrives joins at the next
step and one that finishes leaves at once. Each step the scheduler picks the
work (decodes first, then prompt chunks, see scheduler.py), the ``Decoder``
runs it, and each sequence that got its logits samples a token, which is
detokenized and sent to its caller as a ``GenerationDelta``.

Callers, from any thread:

- ``submit(request)`` inside an asyncio loop returns an async iterator of
  deltas (the server); closing it early aborts the request;
- ``stream(request)`` is the same as a blocking iterator; ``generate`` and
  ``generate_many`` gather whole results (CLI, batch jobs);
- ``abort(request_id)``: the sequence leaves before the next step and nothing
  more is computed for it;
- ``stats()`` for metrics; observers get every time-to-first-token and
  inter-token latency; ``close()`` stops the thread and frees the cache.

Every step is metered (``joules.meter``): its energy and CPU time are split
among the step's sequences by the tokens each put through the model, so each
completion ends with its own share, priced (``Cost``) in its last delta.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from joules.bundle.generation import GenerationSpec
from joules.errors import ConfigError, EngineUnavailableError, InputError, QueueFullError
from joules.meter import ZERO, CostModel, EnergyMeter, Measurement
from joules.runtime.generation.chat import render_chat
from joules.runtime.generation.decoder import Decoder, StepSequence
from joules.runtime.generation.request import (
    ABORT,
    ERROR,
    LENGTH,
    STOP,
    GenerationDelta,
    GenerationRequest,
    GenerationResult,
    Usage,
)
from joules.runtime.generation.sampling import apply_penalties, choose, logprob_of
from joules.runtime.generation.scheduler import EngineConfig, Scheduled, Scheduler
from joules.runtime.generation.sequence import Sequence as Seq
from joules.runtime.generation.sequence import Status
from joules.runtime.generation.text import TextStream

log = logging.getLogger(__name__)

_NO_IDS = np.zeros(0, dtype=np.int64)


class EngineObserver(Protocol):
    """Receives latency observations from the engine's thread (e.g. Prometheus histograms)."""

    def first_token(self, seconds: float) -> None: ...

    def inter_token(self, seconds: float) -> None: ...


@dataclass(frozen=True, kw_only=True)
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float  # KV tokens held / the KV budget, in [0, 1]
    kv_cache_tokens: int  # the budget
    prompt_tokens: int  # totals since the engine started
    completion_tokens: int
    requests_finished: int
    preemptions: int
    prefix_cache_hits: int
    prefix_cache_hit_tokens: int
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Counters:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished: int = 0
    steps: int = 0
    waiting: int = 0
    running: int = 0
    kv_used: int = 0


@dataclass
class _Inbox:
    new: list[Seq] = field(default_factory=list)
    aborts: set[str] = field(default_factory=set)


class Engine:
    """Continuous-batching generation over one ``Decoder`` (see the module doc)."""

    def __init__(
        self,
        decoder: Decoder,
        tokenizer: Any,
        spec: GenerationSpec,
        config: EngineConfig | None = None,
        *,
        chat_template: str | None = None,
        meter: EnergyMeter | None = None,
        cost_model: CostModel | None = None,
        name: str = "model",
        version: int | None = None,
    ) -> None:
        self.config = config or EngineConfig(max_model_len=decoder.config.max_model_len)
        if self.config.max_model_len != decoder.config.max_model_len:
            raise ConfigError(
                f"engine max_model_len {self.config.max_model_len} != decoder's {decoder.config.max_model_len}"
            )
        if decoder.num_slots < self.config.num_slots:
            raise ConfigError(f"the decoder has {decoder.num_slots} slots; the engine needs {self.config.num_slots}")
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.spec = spec
        self.chat_template = chat_template
        self.meter = meter
        self.cost_model = cost_model
        self.name = name
        self.version = version
        self.eos = frozenset(spec.eos_token_ids)
        self.kv_cache_tokens = self.config.kv_cache_tokens(decoder.config.kv_bytes_per_token)
        self._scheduler = Scheduler(self.config, decoder, self.kv_cache_tokens)
        self._cond = threading.Condition()
        self._inbox = _Inbox()
        self._numbers = itertools.count()
        self._counters = _Counters()
        self._observers: list[EngineObserver] = []
        self._closed = False
        self._broken: str | None = None
        self._stopping = False  # restart(): the loop ends without closing the engine
        self._thread = threading.Thread(target=self._loop, name=f"joules-engine-{name}", daemon=True)
        self._thread.start()

    # -- text in ------------------------------------------------------------------------------------

    def token_name(self, token: int | None) -> str:
        return "" if token is None else (self.tokenizer.id_to_token(token) or "")

    def render(self, messages: Any, *, add_generation_prompt: bool = True) -> str:
        """The prompt text of a chat under the model's template."""
        if self.chat_template is None:
            raise InputError(f"model {self.name!r} has no chat template; send a plain prompt instead of messages")
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.token_name(self.spec.bos_token_id),
            eos_token=self.token_name(self.spec.eos_token_ids[0]),
        )

    def encode(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids (chat template applied to messages)."""
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.spec.vocab_size for t in ids):
                raise InputError(f"prompt_token_ids must be token ids in [0, {self.spec.vocab_size})")
        elif request.messages is not None:
            text = self.render(request.messages, add_generation_prompt=request.add_generation_prompt)
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        else:
            ids = self.tokenizer.encode(request.prompt or "", add_special_tokens=True).ids
        if not ids and self.spec.bos_token_id is not None:
            ids = [self.spec.bos_token_id]
        if not ids:
            raise InputError("the prompt is empty: give some text")
        return ids

    def _sequence(self, request: GenerationRequest, sink: Callable[[GenerationDelta], None]) -> Seq:
        ids = self.encode(request)
        limit = self.config.max_model_len
        room = limit - len(ids)
        want = request.params.max_tokens
        if room < 1 or (want is not None and want > room):
            asked = f" + {want} to generate" if want is not None else ""
            raise InputError(
                f"this model's context holds {limit} tokens; the prompt has {len(ids)}{asked}; "
                "shorten the prompt or lower max_tokens"
            )
        if len(ids) + 1 > self.kv_cache_tokens:
            raise InputError(
                f"the prompt has {len(ids)} tokens; the KV cache holds {self.kv_cache_tokens}: shorten the prompt"
            )
        return Seq(
            request=request,
            prompt_ids=ids,
            max_tokens=want if want is not None else room,
            sink=sink,
            text=TextStream(self.tokenizer, request.params.stop),
            rng=request.params.rng(),
            number=next(self._numbers),
            seen=set(ids),
        )

    def start(self, request: GenerationRequest, sink: Callable[[GenerationDelta], None]) -> None:
        """Queue ``request``; ``sink(delta)`` is called from the engine's thread, in order, until the last delta.

        The low-level form of ``submit`` and ``stream``: ``sink`` must be quick and must not raise.
        Raises InputError (a bad request), QueueFullError (retry later) or EngineUnavailableError at once.
        """
        self._enqueue(request, sink)

    def _enqueue(self, request: GenerationRequest, sink: Callable[[GenerationDelta], None]) -> Seq:
        seq = self._sequence(request, sink)  # tokenizing happens in the caller's thread
        with self._cond:
            reason = self.unhealthy_reason
            if reason is not None:
                raise EngineUnavailableError(reason)
            if self._counters.waiting + len(self._inbox.new) >= self.config.max_waiting + self._free_capacity():
                raise QueueFullError(
                    f"{self.name!r} has {self.config.max_waiting} requests waiting; retry in "
                    f"{self.config.retry_after_s} s",
                    retry_after_s=self.config.retry_after_s,
                )
            self._inbox.new.append(seq)
            self._cond.notify()
        return seq

    def _free_capacity(self) -> int:
        """Slots a new request could take at once (those are not waiting)."""
        return max(0, self.config.max_num_seqs - self._counters.running)

    # -- the callers' API ---------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue ``request``; iterate the returned stream in the running asyncio loop. Raises at once on refusal."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[GenerationDelta] = asyncio.Queue()

        def sink(d: GenerationDelta) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, d)
            except RuntimeError:  # the caller's loop is closed: nobody is listening any more
                if not d.finished:
                    self.abort(request.id)

        self._enqueue(request, sink)
        return GenerationStream(self, request.id, q)

    def stream(self, request: GenerationRequest) -> DeltaIterator:
        """Queue ``request`` and yield its deltas as they come (blocking); ``close()`` before the end aborts it."""
        q: queue.SimpleQueue[GenerationDelta] = queue.SimpleQueue()
        self._enqueue(request, q.put)
        return DeltaIterator(self, request.id, q)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return GenerationResult.gather(list(self.stream(request)))

    def generate_many(
        self, requests: Sequence[GenerationRequest], *, on_result: Callable[[GenerationResult], None] | None = None
    ) -> list[GenerationResult]:
        """All of ``requests`` through the running batch together; results in the order given.

        Requests past the waiting queue's bound are held back and submitted as others finish.
        """
        q: queue.SimpleQueue[GenerationDelta] = queue.SimpleQueue()
        deltas: dict[str, list[GenerationDelta]] = {r.id: [] for r in requests}
        if len(deltas) != len(requests):
            raise InputError("generate_many: request ids must be distinct")
        results: dict[str, GenerationResult] = {}
        pending = list(requests)
        active = 0
        try:
            while pending or active:
                while pending and active < self.config.max_waiting + self.config.max_num_seqs:
                    try:
                        self._enqueue(pending[0], q.put)
                    except QueueFullError as e:
                        if active:
                            break  # others' requests fill the queue: wait for one of ours to finish
                        time.sleep(e.retry_after_s)
                        continue
                    pending.pop(0)
                    active += 1
                d = q.get()
                deltas[d.request_id].append(d)
                if d.finished:
                    active -= 1
                    results[d.request_id] = GenerationResult.gather(deltas.pop(d.request_id))
                    if on_result is not None:
                        on_result(results[d.request_id])
        finally:
            for rid in deltas:
                self.abort(rid)
        return [results[r.id] for r in requests]

    def abort(self, request_id: str) -> None:
        """Stop ``request_id``: it leaves before the next step; its last delta has finish_reason "abort"."""
        with self._cond:
            self._inbox.aborts.add(request_id)
            self._cond.notify()

    def add_observer(self, observer: EngineObserver) -> None:
        self._observers.append(observer)

    def stats(self) -> EngineStats:
        c = self._counters
        prefix = self._scheduler.prefix
        return EngineStats(
            running=c.running,
            waiting=c.waiting + len(self._inbox.new),
            kv_cache_usage=min(1.0, c.kv_used / self.kv_cache_tokens),
            kv_cache_tokens=self.kv_cache_tokens,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            requests_finished=c.finished,
            preemptions=self._scheduler.preemptions,
            prefix_cache_hits=prefix.hits,
            prefix_cache_hit_tokens=prefix.hit_tokens,
            steps=c.steps,
        )

    # -- health ---------------------------------------------------------------------------------------

    @property
    def unhealthy_reason(self) -> str | None:
        """Why the engine cannot run requests now (shut down, its decoder failed, a tensor-parallel rank died,
        restarting), or None while it can."""
        if self._closed:
            return f"the {self.name!r} engine is shut down"
        why = self._broken
        if why is None and not getattr(self.decoder, "healthy", True):  # a rank that died while the engine was idle
            why = getattr(self.decoder, "failure", None) or "its decoder stopped"
        if why is None and not self._thread.is_alive():
            why = "its loop stopped"
        return None if why is None else f"the {self.name!r} engine cannot run: {why}"

    @property
    def healthy(self) -> bool:
        """True while the engine can run requests: readiness follows this (False: every request gets 503)."""
        return self.unhealthy_reason is None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def restartable(self) -> bool:
        return callable(getattr(self.decoder, "restart", None))

    def restart(self, reason: str = "the engine is restarting") -> None:
        """Stop the loop, end every request with an error, restart the decoder and run again.

        For decoders that can start over (a tensor-parallel group: ``joules.parallel.supervisor`` calls this
        when a rank died). Raises EngineUnavailableError if the decoder cannot restart (the engine stays
        unhealthy) or the engine is closed.
        """
        restart = getattr(self.decoder, "restart", None)
        if not callable(restart):
            raise EngineUnavailableError(f"the {self.name!r} engine's decoder cannot be restarted")
        with self._cond:
            if self._closed:
                raise EngineUnavailableError(f"the {self.name!r} engine is shut down")
            self._broken = self._broken or reason
            self._stopping = True
            self._cond.notify()
        self._thread.join()  # it ends every request it held with the error above
        self._fail_all(self._broken)
        restart()  # raises if the group cannot start: _broken stays set
        with self._cond:
            if self._closed:  # closed while the decoder restarted: stop what the restart started
                self.decoder.close()
                return
            self._scheduler = Scheduler(self.config, self.decoder, self.kv_cache_tokens)
            self._counters.running = self._counters.waiting = self._counters.kv_used = 0
            self._stopping = False
            self._broken = None
            self._thread = threading.Thread(target=self._loop, name=f"joules-engine-{self.name}", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the loop (requests still in flight end with finish_reason "abort") and free the cache."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        self.decoder.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        sched = self._scheduler
        while True:
            with self._cond:
                while (
                    not self._closed
                    and not self._stopping
                    and not self._inbox.new
                    and not self._inbox.aborts
                    and not sched.has_work()
                ):
                    self._cond.wait()
                if self._closed or self._stopping:
                    break
                new, self._inbox.new = self._inbox.new, []
                aborts, self._inbox.aborts = self._inbox.aborts, set()
                self._counters.waiting += len(new)  # still counted against the queue's bound
            for s in new:
                sched.waiting.append(s)
            if aborts:
                for s in [*sched.running, *sched.waiting]:
                    if s.id in aborts:
                        s.aborted = True
                        self._finish(s, ABORT)
            try:
                self._step()
            except Exception as e:  # the decoder cannot go on: every request is told, none hangs
                if isinstance(e, EngineUnavailableError):  # expected (a rank died): its message says it all
                    log.error("engine %s stopped: %s", self.name, e)
                else:
                    log.exception("engine %s stopped", self.name)
                with self._cond:
                    self._broken = str(e) if isinstance(e, EngineUnavailableError) else f"{type(e).__name__}: {e}"
                self._fail_all(self._broken)
                return
            finally:
                self._publish_counts()
        self._fail_all(None if self._closed else self._broken)

    def _publish_counts(self) -> None:
        sched = self._scheduler
        with self._cond:
            self._counters.waiting = len(sched.waiting)
            self._counters.running = len(sched.running)
            self._counters.kv_used = sum(s.length for s in sched.running)

    def _fail_all(self, error: str | None) -> None:
        sched = self._scheduler
        for s in [*sched.running, *sched.waiting]:
            self._finish(s, ERROR if error else ABORT, error=error)
        with self._cond:
            late, self._inbox.new = self._inbox.new, []
        for s in late:
            self._finish(s, ERROR if error else ABORT, error=error)

    def _step(self) -> None:
        plan = self._scheduler.schedule()
        if not plan:
            return
        token = self.meter.start() if self.meter is not None else None
        try:
            logits = self.decoder.step(
                [StepSequence(slot=p.seq.slot or 0, start=p.start, tokens=p.seq.tokens(p.start, p.n)) for p in plan]
            )
            now = time.perf_counter()
            outputs = [self._advance(p, row, now) for p, row in zip(plan, logits, strict=True)]
        finally:
            measurement = self.meter.stop(token) if self.meter is not None and token is not None else ZERO
        self._counters.steps += 1
        self._charge(plan, measurement)
        for seq, delta, finish in outputs:
            if finish is not None:
                self._finish(seq, finish, delta=delta)
            elif delta is not None:
                self._deliver(seq, delta)

    def _deliver(self, s: Seq, delta: GenerationDelta) -> None:
        try:
            s.sink(delta)
        except Exception:  # a caller's sink failed: that request is dropped, the others go on
            log.exception("delivering request %s's output failed; aborting it", s.id)
            if not delta.finished:
                self.abort(s.id)

    def _charge(self, plan: list[Scheduled], m: Measurement) -> None:
        """Each sequence's share of the step (its tokens over the step's), priced when it finishes."""
        if m.is_zero:
            return
        total = sum(p.n for p in plan)  # every scheduled sequence has n >= 1 tokens
        for p in plan:
            p.seq.charges.append((m, p.n / total))

    def _advance(self, p: Scheduled, row: np.ndarray, now: float) -> tuple[Seq, GenerationDelta | None, str | None]:
        """Record the step for one sequence; sample when its logits are for a new token."""
        s = p.seq
        s.computed = p.start + p.n
        if s.computed < s.length:
            return s, None, None  # a prompt chunk; more to come
        if not s.extra.get("prompt_counted"):
            s.extra["prompt_counted"] = True
            self._counters.prompt_tokens += len(s.prompt_ids)
            self._scheduler.prompt_done(s)
        params = s.params
        # A finite sum means every logit is finite (NaN and infinities never sum to a finite number); only a
        # non-finite sum (or a finite overflow) needs the element-wise check.
        if not np.isfinite(row.sum()) and not np.isfinite(row).all():
            return s, None, ERROR
        seen = np.fromiter(s.seen, np.int64, len(s.seen)) if params.repetition_penalty != 1.0 else _NO_IDS
        penalised = apply_penalties(row, params, seen, s.counts)
        if len(s.output_ids) < params.min_tokens:
            banned = [t for t in (*self.eos, *params.stop_token_ids) if t < len(penalised)]
            penalised = penalised.copy() if penalised is row else penalised
            penalised[banned] = -np.inf
        token = choose(penalised, params, s.rng)
        s.append(token)
        self._counters.completion_tokens += 1
        self._observe(s, now)
        lp = (logprob_of(row, token, params.top_logprobs),) if params.logprobs else None
        finish: str | None = None
        stop_reason: str | int | None = None
        text = ""
        if token in self.eos and not params.ignore_eos:
            finish = STOP
        elif token in params.stop_token_ids:
            finish, stop_reason = STOP, token
        else:
            text = s.text.add(token)
            if s.text.stopped_by is not None:
                finish, stop_reason = STOP, s.text.stopped_by
        if finish is None and (len(s.output_ids) >= s.max_tokens or s.length >= self.config.max_model_len):
            finish = LENGTH
        delta = GenerationDelta(request_id=s.id, text=text, token_ids=(token,), logprobs=lp, stop_reason=stop_reason)
        return s, delta, finish

    def _observe(self, s: Seq, now: float) -> None:
        if not self._observers:
            s.last_token_at = now
            return
        for obs in self._observers:
            try:
                if s.last_token_at is None:
                    obs.first_token(now - s.arrived)
                else:
                    obs.inter_token(now - s.last_token_at)
            except Exception:  # an observer's failure must not stop generation
                log.exception("engine observer failed")
        s.last_token_at = now

    def _finish(self, s: Seq, reason: str, *, delta: GenerationDelta | None = None, error: str | None = None) -> None:
        if s.status is Status.FINISHED:
            return
        self._scheduler.finish(s)
        self._counters.finished += 1
        if reason == ERROR and error is None:
            error = (
                f"the model produced non-finite logits (NaN or infinity) at completion token {len(s.output_ids) + 1}"
            )
        cost = self.cost_model.price(Measurement.of_shares(s.charges)) if self.cost_model is not None else None
        tail = s.text.flush() if reason in (STOP, LENGTH) else ""
        base = delta or GenerationDelta(request_id=s.id)
        self._deliver(
            s,
            GenerationDelta(
                request_id=s.id,
                text=base.text + tail,
                token_ids=base.token_ids,
                logprobs=base.logprobs,
                finish_reason=reason,
                usage=Usage(
                    prompt_tokens=len(s.prompt_ids),
                    completion_tokens=len(s.output_ids),
                    cached_tokens=s.cached_tokens,
                ),
                cost=cost,
                error=error,
                stop_reason=base.stop_reason,
            ),
        )


class DeltaIterator(Iterator[GenerationDelta]):
    """The deltas of one request, blocking; ``close()`` (or dropping it) before the last one aborts it."""

    def __init__(self, engine: Engine, request_id: str, q: queue.SimpleQueue[GenerationDelta]) -> None:
        self.engine = engine
        self.request_id = request_id
        self._queue = q
        self._done = False

    def __iter__(self) -> DeltaIterator:
        return self

    def __next__(self) -> GenerationDelta:
        if self._done:
            raise StopIteration
        d = self._queue.get()
        if d.finished:
            self._done = True
        return d

    def close(self) -> None:
        if not self._done:
            self._done = True
            self.engine.abort(self.request_id)

    def __enter__(self) -> DeltaIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class GenerationStream(AsyncIterator[GenerationDelta]):
    """The deltas of one submitted request, for ``async for``; ``aclose()`` (or cancellation) aborts it.

    ``on_last`` (when set) receives the request's last delta exactly once, whether the consumer read it or
    left early: an aborted request's last delta (finish_reason "abort", with the cost of the tokens computed
    before it left) is read from the queue by a task of its own, so a client that goes away mid-stream is
    still priced.
    """

    ABANDONED_WAIT_S = 30.0  # how long a left stream waits for the engine's "abort" delta

    def __init__(self, engine: Engine, request_id: str, q: asyncio.Queue[GenerationDelta]) -> None:
        self.engine = engine
        self.request_id = request_id
        self._queue = q
        self._done = False
        self.on_last: Callable[[GenerationDelta], None] | None = None
        self._drain: asyncio.Task[None] | None = None

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._done:
            raise StopAsyncIteration
        try:
            d = await self._queue.get()
        except asyncio.CancelledError:
            self._abandon()
            raise
        if d.finished:
            self._done = True
            self._last(d)
        return d

    async def aclose(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        if self._done:
            return
        self._done = True
        self.engine.abort(self.request_id)
        if self.on_last is not None:
            self._drain = asyncio.get_running_loop().create_task(self._read_last())

    async def _read_last(self) -> None:
        try:
            async with asyncio.timeout(self.ABANDONED_WAIT_S):
                while not (d := await self._queue.get()).finished:
                    pass
        except TimeoutError:
            log.warning("request %s: no last delta %.0f s after it was aborted", self.request_id, self.ABANDONED_WAIT_S)
            return
        self._last(d)

    def _last(self, d: GenerationDelta) -> None:
        if self.on_last is not None:
            try:
                self.on_last(d)
            except Exception:  # counting a cost must not fail the request that produced it
                log.exception("request %s: on_last failed", self.request_id)

    async def result(self) -> GenerationResult:
        """Gather the whole completion."""
        return GenerationResult.gather([d async for d in self])
