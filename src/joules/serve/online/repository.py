"""The models a server holds, and how they change without dropping a request.

A served model is one registry version: its Predictor (metered with the
server's settings), its DynamicBatcher and its response cache. The repository
polls the registry for each watched model's production version (a cheap
query); when it changes, the new version is loaded and warmed on a worker
thread beside the old one, then swapped in with one assignment on the event
loop. Requests already queued or running on the old version finish there;
the old batcher is drained and closed afterwards. A version that fails to load
is logged and skipped (the old one keeps serving) until the production version
changes again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum

from joules.bundle import Bundle
from joules.decide import RuleSet
from joules.errors import InputError, JoulesError, ModelLoadError, ModelNotFoundError, ModelNotReadyError
from joules.meter import Cost, CostModel, EnergyMeter
from joules.registry import Registry, validate_name
from joules.registry.names import parse_version
from joules.runtime import Predictor
from joules.runtime.batching import DynamicBatcher
from joules.serve.online.cache import ResponseCache, Row
from joules.serve.online.config import ServeConfig
from joules.serve.online.generation import ServedGenerator
from joules.serve.online.handler import Answer, Job, ModelRunner
from joules.serve.online.metrics import LlmState, ModelState, ServerMetrics
from joules.serve.online.signature import Signature

log = logging.getLogger(__name__)


class State(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADED = "UNLOADED"


@dataclass
class ModelStatus:
    state: State
    version: int | None = None
    reason: str | None = None
    failed_version: int | None = None  # a version that failed to load: not retried until production changes


class ServedModel:
    """One loaded model version: Predictor + DynamicBatcher (+ response cache)."""

    kind = "classifier"
    healthy = True

    def __init__(
        self, name: str, predictor: Predictor, config: ServeConfig, metrics: ServerMetrics, prices: CostModel
    ) -> None:
        self.name = name
        self.version = int(predictor.version or 0)
        self.predictor = predictor
        self.signature = Signature.of(predictor)
        self.labels = self.signature.labels
        self.loaded_at = time.time()
        v = str(self.version)
        runner = ModelRunner(
            predictor,
            max_batch_size=config.batching.max_batch_size,
            max_batch_tokens=config.batching.max_batch_tokens,
            on_call=metrics.call_observer(name, v, prices),
        )
        self.batcher: DynamicBatcher[Job, Answer] = DynamicBatcher(
            runner, config.batching, name=f"{name}:{v}", on_dispatch=metrics.queue_observer(name, v)
        )
        self.cache = ResponseCache(config.cache_size) if config.cache_size else None
        self._hits = metrics.cache_hits.labels(name, v)
        self._misses = metrics.cache_misses.labels(name, v)
        # A request answered wholly from the cache caused no model call: it costs nothing (see docs/cost.md).
        meter = predictor.meter
        self._cached = Cost(method=meter.method, how=f"answered from the response cache: no model call ({meter.how})")

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def start(self) -> None:
        self.batcher.start()

    async def close(self, drain_s: float = 0.0) -> None:
        """Drain the batcher (its queued and running requests finish) and close it."""
        await self.batcher.close()

    async def infer(self, job: Job, deadline: float | None) -> Answer:
        if self.cache is None:
            return await self.batcher.submit(job, rows=job.rows, deadline=deadline)
        keys = job.row_keys()
        found: list[Row | None] = [self.cache.get(k) for k in keys]
        missing = [i for i, r in enumerate(found) if r is None]
        self._hits.inc(len(keys) - len(missing))
        self._misses.inc(len(missing))
        cost = self._cached
        if missing:
            sub = job if len(missing) == len(keys) else job.take(missing)
            out = await self.batcher.submit(sub, rows=sub.rows, deadline=deadline)
            for j, i in enumerate(missing):
                row = out.rows[j]
                self.cache.put(keys[i], row)
                found[i] = row
            cost = out.cost  # the rows found in the cache add nothing
        return Answer([r for r in found if r is not None], cost)

    def state(self) -> ModelState:
        return ModelState(
            self.name,
            str(self.version),
            self.batcher.depth,
            self.batcher.running,
            len(self.cache) if self.cache is not None else None,
        )


Served = ServedModel | ServedGenerator

# A retired generative version's streams may run for minutes: they get this long to finish.
GENERATION_DRAIN_S = 600.0
# The first completion that tells a generative model's load apart from a broken one (and warms it).
WARMUP_TOKENS = 2


class ModelRepository:
    def __init__(self, registry: Registry, config: ServeConfig, metrics: ServerMetrics, prices: CostModel) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.prices = prices
        self._models: dict[str, Served] = {}
        self._status: dict[str, ModelStatus] = {}
        self._watch: set[str] = set(config.models)
        self._discover = not config.models  # serve every production model, including new ones
        self._unloaded: set[str] = set()  # explicitly unloaded: not rediscovered
        self._locks: dict[str, asyncio.Lock] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.started = False

    # -- lookups (event loop, no awaits) ----------------------------------------------------------

    def classifier(self, name: str, version: str | None = None) -> ServedModel:
        """The served model for :predict and /infer: a text-generation model there is a 400."""
        model = self.get(name, version)
        if not isinstance(model, ServedModel):
            raise InputError(
                f"model {name!r} generates text: use POST /v1/chat/completions, /v1/completions or "
                f"/v2/models/{name}/generate, not :predict or /infer"
            )
        return model

    def generator(self, name: str, version: str | None = None) -> ServedGenerator:
        """The served text-generation model ``name``: a classifier there is a 400."""
        model = self.get(name, version)
        if not isinstance(model, ServedGenerator):
            raise InputError(
                f"model {name!r} is a {model.predictor.bundle.spec.task} model, not a text-generation one: "
                f"use POST /v1/models/{name}:predict or /v2/models/{name}/infer"
            )
        model.check_healthy()
        return model

    def get(self, name: str, version: str | None = None) -> Served:
        """The served model ``name`` (and ``version``, when given), or a 400/404/503 error."""
        model = self._models.get(name)
        if model is None:
            validate_name(name)
            status = self._status.get(name)
            if status is not None:
                reason = f": {status.reason}" if status.reason else ""
                raise ModelNotReadyError(f"model {name!r} is not ready ({status.state.lower()}{reason})")
            served = sorted(self._models) or "none"
            raise ModelNotFoundError(f"no model named {name!r} is served here (served: {served})")
        if version is not None and parse_version(version, f"{name}/versions/{version}") != model.version:
            raise ModelNotFoundError(
                f"version {version} of {name!r} is not loaded; the served version is {model.version} "
                f"(a server holds each model's production version)"
            )
        return model

    def models(self) -> list[Served]:
        return [self._models[n] for n in sorted(self._models)]

    def states(self) -> list[ModelState]:
        return [m.state() for m in self.models()]

    def llm_states(self) -> list[LlmState]:
        out = []
        for m in self.models():
            if isinstance(m, ServedGenerator):
                s = m.stats()
                out.append(
                    LlmState(
                        m.name,
                        str(m.version),
                        s.running,
                        s.waiting,
                        s.kv_cache_usage,
                        s.prompt_tokens,
                        s.completion_tokens,
                        s.preemptions,
                    )
                )
        return out

    def index(self) -> list[dict[str, str | None]]:
        out = []
        for name in sorted(set(self._status) | set(self._models)):
            status = self._status.get(name, ModelStatus(State.READY))
            model = self._models.get(name)
            version = model.version if model is not None else status.version
            out.append(
                {
                    "name": name,
                    "version": None if version is None else str(version),
                    "state": str(State.READY if model is not None else status.state),
                    "reason": status.reason,
                }
            )
        return out

    @property
    def ready(self) -> bool:
        """Started, and every model this server is meant to serve is loaded (one unloaded through the
        repository API counts as not loaded until it is loaded again)."""
        return (
            self.started
            and all(n in self._models for n in self._watch | self._unloaded)
            and all(m.healthy for m in self._models.values())
        )

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every watched model (raising if one cannot be), then watch the registry."""
        if self._discover:
            self._watch = {m.name for m in await asyncio.to_thread(self.registry.production_models)}
            if not self._watch:
                raise ModelNotFoundError(
                    "no production models to serve; train one (joules train spam), import one with --promote, "
                    "or name a model: joules serve NAME"
                )
        for name in sorted(self._watch):
            await self._ensure(name, strict=True)
        self.started = True
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="registry-poller")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        models = list(self._models.values())
        self._models.clear()
        await asyncio.gather(*(m.close() for m in models), *self._closing)

    async def load(self, name: str) -> Served:
        """Serve ``name``'s production version (the repository extension's explicit load)."""
        validate_name(name)
        model = await self._ensure(name, strict=True)
        assert model is not None  # strict: raised otherwise
        self._unloaded.discard(name)
        return model

    async def unload(self, name: str) -> None:
        validate_name(name)
        async with self._lock(name):
            if name not in self._models and name not in self._status:
                raise ModelNotFoundError(f"no model named {name!r} is served here")
            self._watch.discard(name)
            self._unloaded.add(name)
            model = self._models.pop(name, None)
            self._status[name] = ModelStatus(State.UNLOADED, reason="unloaded through the repository API")
        if model is not None:
            log.info("unloading %s", model.ref)
            await model.close()

    # -- loading and swapping ---------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _ensure(self, name: str, *, strict: bool = False) -> Served | None:
        """Make the served version of ``name`` its production version; ``strict`` raises on failure."""
        async with self._lock(name):
            current = self._models.get(name)
            if strict:
                version = (await asyncio.to_thread(self.registry.get, name)).version
            else:
                found = await asyncio.to_thread(self.registry.production_version, name)
                if found is None:
                    return current  # demoted without a successor: keep serving what we have
                version = found
            if current is not None and current.version == version:
                return current
            status = self._status.get(name)
            if not strict and status is not None and status.failed_version == version:
                return current
            if not strict and name not in self._watch:
                return current  # unloaded while we waited for the lock
            self._status[name] = ModelStatus(State.LOADING, version)
            log.info("loading %s:%d%s", name, version, f" beside {current.ref}" if current else "")
            try:
                model = await asyncio.to_thread(self._build, name, version)
            # A load can fail in any library it goes through (ONNX Runtime, tokenizers, numpy...): whatever
            # it raises is logged, counted and recorded with its reason; the old version keeps serving.
            except Exception as e:
                self.metrics.model_loads.labels(name, "failed").inc()
                reason = str(e).strip() if isinstance(e, JoulesError) else f"{type(e).__name__}: {str(e).strip()}"
                self._status[name] = ModelStatus(
                    State.UNAVAILABLE, version, f"version {version} failed to load: {reason}", failed_version=version
                )
                log.error(
                    "could not load %s:%d (%s)%s",
                    name,
                    version,
                    reason,
                    "; still serving " + current.ref if current else "",
                    exc_info=None if isinstance(e, JoulesError) else e,
                )
                if strict:
                    raise ModelLoadError(f"{name}:{version} could not be loaded: {reason}") from e
                return current
            if not strict and name not in self._watch:  # unloaded while loading
                await model.close()
                return current
            self._watch.add(name)
            model.start()
            self._models[name] = model  # the switch: new requests go to the new version from here on
            self._status[name] = ModelStatus(State.READY, version)
            self.metrics.model_loads.labels(name, "loaded").inc()
            log.info("serving %s%s", model.ref, f" (was {current.ref})" if current else "")
            if current is not None:
                self._retire(current)
            return model

    def _retire(self, old: Served) -> None:
        """Drain the old version in the background: its queued and running requests finish there."""
        task = asyncio.get_running_loop().create_task(old.close(GENERATION_DRAIN_S), name=f"retire-{old.ref}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _build(self, name: str, version: int) -> Served:
        """On a worker thread: verify, load and warm a version (the old one keeps serving)."""
        cfg = self.config
        bundle = self.registry.load(f"{name}:{version}")
        if bundle.spec.generation is not None:
            return self._build_generator(name, version, bundle)
        rules = RuleSet.from_file(cfg.rules_file, bundle.spec.labels) if cfg.rules_file else None
        predictor = Predictor(
            bundle,
            rules=rules,
            options=cfg.runtime_options(),
            meter=EnergyMeter.from_settings(self.registry.settings),
            prices=self.prices,
            version=version,
        )
        return ServedModel(name, predictor, cfg, self.metrics, self.prices)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                names = set(self._watch)
                if self._discover:
                    found = await asyncio.to_thread(self.registry.production_models)
                    new = {m.name for m in found} - self._unloaded - names
                    self._watch |= new
                    names |= new
                for name in sorted(names):
                    await self._ensure(name)
                self.metrics.registry_polls.inc()
            # The poller must outlive any failure (a registry briefly unreadable or locked, a bug): it is
            # logged and counted, and the next poll tries again.
            except Exception as e:
                self.metrics.registry_poll_errors.inc()
                if isinstance(e, JoulesError | OSError):
                    log.warning("registry poll failed: %s", e)
                else:
                    log.error("registry poll failed; polling goes on", exc_info=e)

    def _build_generator(self, name: str, version: int, bundle: Bundle) -> ServedGenerator:
        """A text-generation version: its engine through the one seam every mode shares, warmed by a
        two-token completion (a model that cannot generate fails its load here, not on a client)."""
        from joules.runtime.generation import EngineConfig, GenerationRequest, SamplingParams
        from joules.serve.engines import open_generation_engine

        cfg = self.config
        spec = bundle.spec.generation
        assert spec is not None  # checked by the caller
        config = EngineConfig(
            max_model_len=min(cfg.max_model_len, spec.context_length),
            max_num_seqs=cfg.max_num_seqs,
            max_waiting=cfg.max_waiting_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            prefix_cache_slots=cfg.prefix_cache_slots,
            batch_invariant=cfg.batch_invariant,
        )
        engine = open_generation_engine(
            bundle,
            config,
            parallel=cfg.parallel,
            options=cfg.generation_options(),
            settings=self.registry.settings,
            name=name,
            version=version,
        )
        try:
            first = spec.bos_token_id if spec.bos_token_id is not None else 0
            warm = engine.generate(
                GenerationRequest(
                    prompt_token_ids=[first],
                    params=SamplingParams(max_tokens=WARMUP_TOKENS, temperature=0.0, ignore_eos=True),
                )
            )
            if warm.finish_reason == "error":
                raise ModelLoadError(f"{name}:{version} could not generate: {warm.error}")
        except BaseException:
            engine.close()
            raise
        return ServedGenerator(name, version, engine, self.metrics)
