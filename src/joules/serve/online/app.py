"""The ASGI application: routes of the Open Inference Protocol V2 and the simple API.

Every route turns errors into ``{"error": ...}`` through the one status table in
``errors.py``. The inference routes share one path: find the served model,
read and decode the body, admit each row (``runtime/admission.py``: a refused
row is a 400 with the reason every mode gives), run the rows through the
model's DynamicBatcher (with the request's deadline, cancelled if the client
goes away), refuse an answer with a row whose model output is not finite (422),
encode the answer with its cost (``X-Joules-*`` headers; V2 ``parameters``,
/v1 ``cost``), and count it in /metrics. Every body is strict JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from joules import __version__
from joules.errors import BatcherClosedError, OutputError, RepositoryControlError
from joules.meter import CostModel
from joules.registry import Registry
from joules.serve.online import openai_api, protocol_v1, protocol_v2
from joules.serve.online.config import ServeConfig
from joules.serve.online.edge import EdgeMiddleware, read_body, unless_disconnected
from joules.serve.online.errors import error_response, status_of
from joules.serve.online.generation import ServedGenerator, generator_metadata, oip_generate
from joules.serve.online.handler import Answer, Job
from joules.serve.online.metrics import CONTENT_TYPE, ServerMetrics
from joules.serve.online.openapi import DOCS_HTML, openapi_document
from joules.serve.online.repository import ModelRepository, ServedModel
from joules.serve.online.schemas import RepositoryIndexRequest, RepositoryLoadRequest, parse

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "generate"]
PLATFORM = "onnxruntime_onnx"


class OnlineServer:
    """The state behind the routes: configuration, prices, repository, metrics."""

    def __init__(self, config: ServeConfig, registry: Registry, *, on_fatal: Callable[[BaseException], None]) -> None:
        self.config = config
        # The registry's settings: config.yaml < JOULES_* environment < `joules serve` flags.
        self.settings = registry.settings
        self.prices = CostModel.from_settings(self.settings)
        self.metrics = ServerMetrics(
            max_batch_size=config.batching.max_batch_size,
            states=lambda: self.repo.states(),
            llm_states=lambda: self.repo.llm_states(),
        )
        self.repo = ModelRepository(registry, config, self.metrics, self.prices)
        self.on_fatal = on_fatal
        self.stopping = False
        self._loader: asyncio.Task[None] | None = None

    # -- lifespan ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # Load in the background: the server answers /v2/health/live (and ready: 503) meanwhile.
        self._loader = asyncio.get_running_loop().create_task(self._load())
        try:
            yield
        finally:
            self.stopping = True
            self._loader.cancel()
            await asyncio.gather(self._loader, return_exceptions=True)
            await self.repo.close()

    async def wait_loaded(self) -> None:
        """Wait for the first load, started by the lifespan, to end (``on_fatal`` has heard of a failure): for a
        host that must not route requests to a server before its models are in (Ray Serve replicas)."""
        if self._loader is not None:
            await asyncio.shield(self._loader)

    async def _load(self) -> None:
        try:
            await self.repo.start()
        except Exception as e:
            self.on_fatal(e)
            return
        # What is alive now (modules, models, the app) lives as long as the server: keep it out of
        # the cyclic collector's way, so that a full collection costs microseconds, not milliseconds.
        gc.freeze()
        if self.config.model_control == "explicit" and self.config.api_key_env is None:
            log.warning(
                "--model-control explicit without --api-key-env: anyone who can reach this server can unload its models"
            )
        url = f"http://{self.config.host}:{self.config.port}"
        models = self.repo.models()
        log.info("pricing: %s", _pricing(self.settings.pricing()))
        classifiers = [m for m in models if isinstance(m, ServedModel)]
        if classifiers:
            log.info("energy: %s", classifiers[0].predictor.meter.how)
        for m in models:
            if isinstance(m, ServedGenerator):
                log.info(
                    "ready: %s (text generation) at %s/v1/chat/completions, %s/v1/completions and "
                    "%s/v2/models/%s/generate",
                    m.ref,
                    url,
                    url,
                    url,
                    m.name,
                )
                continue
            kind = m.signature.kind
            log.info(
                "ready: %s (%s) at %s/v1/models/%s:predict and %s/v2/models/%s/infer",
                m.ref,
                kind,
                url,
                m.name,
                url,
                m.name,
            )

    # -- inference --------------------------------------------------------------------------------

    async def infer(
        self,
        request: Request,
        name: str,
        version: str | None,
        decode: Callable[[bytes, ServedModel], tuple[Job, float | None]],
        encode: Callable[[ServedModel, Answer], Response],
    ) -> Response:
        started = time.perf_counter()
        arrived = time.monotonic()
        labels = ("", "")
        self.metrics.inflight.inc()
        try:
            served = self.repo.classifier(name, version)
            labels = (served.name, str(served.version))
            served.batcher.admit()  # refuse a full queue before reading the body: those bytes would be wasted
            body = await read_body(request, self.config.max_body_bytes)
            job, client_timeout = decode(body, served)
            timeout = self.config.timeout_s if client_timeout is None else min(client_timeout, self.config.timeout_s)
            answer = await unless_disconnected(request, self._run(served, name, version, job, arrived + timeout))
            response = encode(served, answer)
        except Exception as e:
            response = error_response(e)
        finally:
            self.metrics.inflight.dec()
        self.metrics.requests.labels(*labels, str(response.status_code)).inc()
        if labels[0]:
            self.metrics.request_duration.labels(*labels).observe(time.perf_counter() - started)
        return response

    async def _run(self, served: ServedModel, name: str, version: str | None, job: Job, deadline: float) -> Answer:
        try:
            return await served.infer(job, deadline)
        except BatcherClosedError:
            if version is not None:
                raise
            # Swapped out between lookup and queueing: the new version takes it.
            return await self.repo.classifier(name, None).infer(job, deadline)

    async def v2_infer(self, request: Request) -> Response:
        name, version = request.path_params["model"], request.path_params.get("version")
        max_rows = self.config.max_instances
        header_length = request.headers.get(protocol_v2.HEADER_LENGTH)
        decoded: dict[str, protocol_v2.V2Request] = {}

        def decode(body: bytes, served: ServedModel) -> tuple[Job, float | None]:
            req = protocol_v2.decode_request(
                body, header_length, served.signature, served.predictor.admit, max_rows=max_rows
            )
            decoded["req"] = req
            return req.job, req.timeout_s

        def encode(served: ServedModel, answer: Answer) -> Response:
            _check_rows(answer, "row {}")
            body, headers = protocol_v2.encode_response(
                served.name, served.version, answer, decoded["req"], served.labels
            )
            return Response(body, headers=headers | answer.cost.headers())

        return await self.infer(request, name, version, decode, encode)

    async def v1_predict(self, request: Request) -> Response:
        max_rows = self.config.max_instances

        def decode(body: bytes, served: ServedModel) -> tuple[Job, float | None]:
            job = protocol_v1.decode_request(body, served.signature, served.predictor.admit, max_rows=max_rows)
            return job, None

        def encode(served: ServedModel, answer: Answer) -> Response:
            _check_rows(answer, "instances[{}]")
            body = protocol_v1.encode_response(served.name, served.version, answer)
            return Response(body, media_type="application/json", headers=answer.cost.headers())

        return await self.infer(request, request.path_params["model"], None, decode, encode)

    async def generate(
        self,
        request: Request,
        name: str,
        version: str | None,
        handle: Callable[[ServedGenerator], Awaitable[Response]],
        on_error: Callable[[BaseException], Response],
    ) -> Response:
        """The one path of every generation route: find the model, run ``handle``, count the answer.

        A streamed answer is counted when its response starts; its tokens and cost are counted as they come.
        """
        started = time.perf_counter()
        labels = ("", "")
        self.metrics.inflight.inc()
        try:
            served = self.repo.generator(name, version)
            labels = (served.name, str(served.version))
            response = await handle(served)
        except Exception as e:
            response = on_error(e)
        finally:
            self.metrics.inflight.dec()
        self.metrics.requests.labels(*labels, str(response.status_code)).inc()
        if labels[0]:
            self.metrics.request_duration.labels(*labels).observe(time.perf_counter() - started)
        return response

    @staticmethod
    def error_response(error: BaseException) -> Response:
        return error_response(error)

    async def v2_generate(self, request: Request) -> Response:
        return await oip_generate(self, request, stream=False)

    async def v2_generate_stream(self, request: Request) -> Response:
        return await oip_generate(self, request, stream=True)

    async def v1_chat_completions(self, request: Request) -> Response:
        return await openai_api.chat_completions(self, request)

    async def v1_completions(self, request: Request) -> Response:
        return await openai_api.completions(self, request)

    # -- health and metadata ------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.repo.ready and not self.stopping  # a generative model's engine that failed: not ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "joules", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> Response:
        m = self.repo.get(request.path_params["model"], request.path_params.get("version"))
        if isinstance(m, ServedGenerator):
            return JSONResponse(generator_metadata(m))
        sig = m.signature
        return JSONResponse(
            {
                "name": m.name,
                "versions": [str(m.version)],
                "platform": PLATFORM,
                "inputs": [t.metadata() for t in sig.inputs],
                "outputs": [t.metadata() for t in sig.outputs],
            }
        )

    async def model_ready(self, request: Request) -> Response:
        m = self.repo.get(request.path_params["model"], request.path_params.get("version"))
        ok = m.healthy and not self.stopping
        return JSONResponse({"name": m.name, "ready": ok}, status_code=200 if ok else 503)

    async def model_config(self, request: Request) -> Response:
        """Triton's model configuration (tritonclient.get_model_config, perf_analyzer)."""
        m = self.repo.classifier(request.path_params["model"], request.path_params.get("version"))
        b = self.config.batching

        def tensors(infos: Any) -> list[dict[str, Any]]:
            return [
                {"name": t.name, "data_type": f"TYPE_{_TRITON_TYPE[t.datatype]}", "dims": list(t.shape)} for t in infos
            ]

        return JSONResponse(
            {
                "name": m.name,
                "platform": PLATFORM,
                "backend": "onnxruntime",
                "version_policy": {"specific": {"versions": [m.version]}},
                "max_batch_size": 0,  # the row dimension is part of each tensor's dims (-1)
                "input": tensors(m.signature.inputs),
                "output": tensors(m.signature.outputs),
                "dynamic_batching": {
                    "max_queue_delay_microseconds": int(b.max_queue_delay_ms * 1000),
                    "preferred_batch_size": [b.max_batch_size],
                    "default_queue_policy": {
                        "max_queue_size": b.max_queue,
                        "default_timeout_microseconds": int(self.config.timeout_ms * 1000),
                    },
                },
                "instance_group": [{"count": b.instances, "kind": "KIND_CPU"}],
                "labels": list(m.labels),
            }
        )

    async def v1_models(self, request: Request) -> Response:
        # OpenAI's list shape (object, data) beside the "models" key existing clients read.
        statuses = [self._v1_status(m) for m in self.repo.models()]
        return JSONResponse({"object": "list", "data": statuses, "models": statuses})

    async def v1_model(self, request: Request) -> Response:
        return JSONResponse(self._v1_status(self.repo.get(request.path_params["model"])))

    def _v1_status(self, m: ServedModel | ServedGenerator) -> dict[str, Any]:
        # OpenAI's model object (id, object, created, owned_by) and joules' status in one.
        head = {"id": m.name, "object": "model", "created": int(m.loaded_at), "owned_by": "joules"}
        if isinstance(m, ServedGenerator):
            return {**head, "name": m.name, "version": m.version, "ready": m.healthy, "task": m.kind}
        return {
            **head,
            "name": m.name,
            "version": m.version,
            "ready": True,
            "task": m.predictor.bundle.spec.task,
            "inputs": [t.metadata() for t in m.signature.inputs],
            "labels": list(m.labels),
        }

    # -- repository extension -----------------------------------------------------------------------

    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request, self.config.max_body_bytes)
        req = parse(RepositoryIndexRequest, body) if body.strip() else RepositoryIndexRequest()
        rows = self.repo.index()
        if req.ready:
            rows = [r for r in rows if r["state"] == "READY"]
        return JSONResponse(rows)

    def _check_model_control(self, verb: str) -> None:
        if self.config.model_control != "explicit":
            raise RepositoryControlError(
                f"this server does not {verb} models on request: repository control is off "
                "(start it with --model-control explicit to allow POST /v2/repository/models/NAME/load and /unload)"
            )

    async def repository_load(self, request: Request) -> Response:
        self._check_model_control("load")
        body = await read_body(request, self.config.max_body_bytes)
        if body.strip():
            parse(RepositoryLoadRequest, body)
        m = await self.repo.load(request.path_params["model"])
        return JSONResponse({"name": m.name, "version": str(m.version), "state": "READY"})

    async def repository_unload(self, request: Request) -> Response:
        self._check_model_control("unload")
        body = await read_body(request, self.config.max_body_bytes)
        if body.strip():
            parse(RepositoryLoadRequest, body)
        await self.repo.unload(request.path_params["model"])
        return JSONResponse({"name": request.path_params["model"], "state": "UNLOADED"})

    # -- operations ---------------------------------------------------------------------------------

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(__version__, self.config.api_key_env is not None))

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_HTML)

    async def root(self, request: Request) -> Response:
        return JSONResponse(
            {
                "name": "joules",
                "version": __version__,
                "models": [m.ref for m in self.repo.models()],
                "docs": "/docs",
                "openapi": "/openapi.json",
                "metrics": "/metrics",
            }
        )


def _check_rows(answer: Answer, where: str) -> None:
    """A row without a label (its model output is not finite) makes the request a 422 naming the row
    as the request named it (``where``: ``instances[{}]`` or ``row {}``)."""
    for i, row in enumerate(answer.rows):
        if row.error is not None:
            raise OutputError(f"{where.format(i)}: {row.error}; no label or action is given for it")


def _pricing(p: dict[str, Any]) -> str:
    """One line for the startup log: the figures every response is priced with, and where they came from."""
    given = [f"{k} from {v}" for k, v in p["origin"].items() if v != "default"]
    return (
        f"${p['price_per_hour']:g}/h for {p['vcpus']} vCPU, grid {p['grid_g_per_kwh']:g} gCO2e/kWh "
        f"({p['region']}), {p['watts_per_core']:g} W per busy thread, {p['static_watts']:g} W static"
        + (f" ({'; '.join(given)})" if given else " (defaults)")
    )


_TRITON_TYPE = {
    "BYTES": "STRING",
    **{t: t for t in ("BOOL", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")},
}


def _guard(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Map any error of a non-inference route through the status table."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as e:
            return error_response(e)

    return guarded


async def _http_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def create_app(
    config: ServeConfig, registry: Registry, *, on_fatal: Callable[[BaseException], None] | None = None
) -> Starlette:
    def fatal(e: BaseException) -> None:
        log.error("cannot start serving: %s", e)

    server = OnlineServer(config, registry, on_fatal=on_fatal or fatal)
    s = server
    m = "/v2/models/{model}"
    mv = "/v2/models/{model}/versions/{version}"
    routes = [
        # Inference first: Starlette tries routes in order, and these carry the traffic.
        Route("/v1/models/{model}:predict", s.v1_predict, methods=["POST"]),
        Route(m + "/infer", s.v2_infer, methods=["POST"]),
        Route(mv + "/infer", s.v2_infer, methods=["POST"]),
        Route("/v1/chat/completions", s.v1_chat_completions, methods=["POST"]),
        Route("/v1/completions", s.v1_completions, methods=["POST"]),
        Route(m + "/generate", s.v2_generate, methods=["POST"]),
        Route(m + "/generate_stream", s.v2_generate_stream, methods=["POST"]),
        Route("/", _guard(s.root), methods=["GET"], include_in_schema=False),
        Route("/v2/health/live", s.live, methods=["GET"]),
        Route("/v2/health/ready", s.ready, methods=["GET"]),
        Route("/v2", s.server_metadata, methods=["GET"]),
        Route(m, _guard(s.model_metadata), methods=["GET"]),
        Route(mv, _guard(s.model_metadata), methods=["GET"]),
        Route(m + "/ready", _guard(s.model_ready), methods=["GET"]),
        Route(mv + "/ready", _guard(s.model_ready), methods=["GET"]),
        Route(m + "/config", _guard(s.model_config), methods=["GET"]),
        Route(mv + "/config", _guard(s.model_config), methods=["GET"]),
        Route("/v2/repository/index", _guard(s.repository_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", _guard(s.repository_load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", _guard(s.repository_unload), methods=["POST"]),
        Route("/v1/models", _guard(s.v1_models), methods=["GET"]),
        Route("/v1/models/{model}", _guard(s.v1_model), methods=["GET"]),
        Route("/metrics", s.prometheus, methods=["GET"]),
        Route("/openapi.json", s.openapi, methods=["GET"]),
        Route("/docs", s.docs, methods=["GET"]),
    ]

    def refused(status: int) -> None:
        server.metrics.requests.labels("", "", str(status)).inc()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(EdgeMiddleware, api_key=config.api_key(), max_body=config.max_body_bytes, on_refused=refused)
        ],
        exception_handlers={HTTPException: _http_error, Exception: _http_error},
        lifespan=server.lifespan,
    )
    app.state.server = server
    return app


__all__ = ["OnlineServer", "create_app", "status_of"]
