"""``joules serve --engine ray``: the online server's ASGI app, one per Ray Serve replica.

Each replica runs the whole app of ``serve/online/app.py`` (V2, /v1, metadata,
repository, /metrics) with its own ModelRepository: its own dynamic batcher
per model and its own promotion poller, so a promoted version is swapped in on
every replica as in one process, without a failed request. Ray Serve's HTTP
proxy listens on ``--host``/``--port`` and spreads requests over the
replicas. A replica reports itself started only once its models are loaded
(its constructor waits for the app's first load), so the proxy never routes a
request to a replica that would answer 503 "not ready".

What differs from ``joules serve``: ``/metrics`` is the answering replica's own
(counters per replica, not summed: Ray's proxy picks the replica); the limits
on headers and slow clients (``connection.py``) are uvicorn's in Ray's proxy,
not joules'; the API key, body limit and every status code are the app's, as
in one process.

SIGTERM or SIGINT: ``serve.shutdown()`` lets every replica drain (up to
``--drain-timeout-s``) and close its batchers, then the local Ray joules started
is stopped, and the command exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

from joules.errors import ConfigError, ModelLoadError
from joules.serve.online.config import ServeConfig
from joules.serve.ray.cluster import RayPlace, cluster_cpus, ray_session
from joules.settings import Settings

log = logging.getLogger(__name__)
APP_NAME = "joules"


@dataclass(frozen=True, kw_only=True)
class RayServeOptions:
    """``replicas`` fixed, or ``autoscale`` (min, max) replicas by Ray Serve's autoscaler."""

    place: RayPlace = dataclasses.field(default_factory=RayPlace)
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    # Requests one replica takes at once: its dynamic batcher needs many in flight to form batches
    # (Ray Serve's default, 5, would cap a batch at 5 rows).
    max_ongoing_requests: int = 256
    target_ongoing_requests: float = 32.0  # per replica, what the autoscaler aims for

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if not 1 <= lo <= hi:
                raise ConfigError(f"--autoscale MIN,MAX needs 1 <= MIN <= MAX, got {lo},{hi}")
        if self.max_ongoing_requests < 1:
            raise ConfigError(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")

    @property
    def most_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas


def parse_autoscale(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--autoscale takes MIN,MAX replicas (e.g. 1,4), got {text!r}") from None
    return lo, hi


class JoulesReplica:
    """One Ray Serve replica: the online app, loaded before the replica is reported started."""

    async def __init__(self, config: ServeConfig, settings: Settings) -> None:  # type: ignore[misc]  # Ray awaits it
        from joules.registry import Registry
        from joules.serve.online.app import create_app

        failures: list[BaseException] = []
        self.joules_app = create_app(config, Registry(settings), on_fatal=failures.append)
        self.joules_lifespan = _Lifespan(self.joules_app)
        await self.joules_lifespan.startup()
        await self.joules_app.state.server.wait_loaded()
        if failures:
            raise RuntimeError(f"the replica could not load its models: {failures[0]}")

    def __serve_build_asgi_app__(self) -> Any:
        return _Started(self.joules_app)

    async def __del__(self) -> None:
        if hasattr(self, "joules_lifespan"):  # absent when the constructor failed
            await self.joules_lifespan.shutdown()  # drains and closes the batchers


class _Started:
    """The app for Ray's wrapper, whose lifespan this replica already ran: Ray's startup and shutdown
    messages are answered here, everything else goes to the app.

    ``/v2/health/ready`` is 503 until Ray Serve has the whole application running (every replica asked
    for is up): Ray's proxy routes to the first replica as soon as it starts, and a client that saw
    "ready" must find every replica there.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.all_up = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v2/health/ready" and not self.all_up:
            self.all_up = await asyncio.to_thread(_application_running)
            if not self.all_up:
                await _not_ready(send)
                return
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _application_running() -> bool:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    return app is not None and app.status == "RUNNING"  # ApplicationStatus is a str enum


async def _not_ready(send: Any) -> None:
    body = json.dumps({"error": "not ready: Ray Serve is still starting the replicas"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Lifespan:
    """The app's lifespan, run by the replica itself (so it can wait for the models) through uvicorn's."""

    def __init__(self, app: Any) -> None:
        from uvicorn import Config
        from uvicorn.lifespan.on import LifespanOn

        self.on = LifespanOn(Config(app, lifespan="on", log_config=None, access_log=False))

    async def startup(self) -> None:
        await self.on.startup()
        if self.on.should_exit:
            raise RuntimeError("the app's startup failed; see the replica's log")

    async def shutdown(self) -> None:
        await self.on.shutdown()


def _deployment(config: ServeConfig, settings: Settings, options: RayServeOptions, cpus: int) -> Any:
    from ray import serve

    share = cpus / options.most_replicas
    # ONNX Runtime threads per replica: the node's cores shared among the replicas, unless --threads says.
    threads = config.threads or max(1, int(share) // max(1, config.batching.instances))
    replica_config = dataclasses.replace(config, threads=threads)
    scaling: dict[str, Any] = (
        {
            "autoscaling_config": {
                "min_replicas": options.autoscale[0],
                "max_replicas": options.autoscale[1],
                "target_ongoing_requests": options.target_ongoing_requests,
            }
        }
        if options.autoscale
        else {"num_replicas": options.replicas}
    )
    cls = serve.deployment(
        name="Joules",
        max_ongoing_requests=options.max_ongoing_requests,
        graceful_shutdown_timeout_s=config.drain_timeout_s,
        ray_actor_options={"num_cpus": min(1.0, share)},
        **scaling,
    )(serve.ingress(None)(JoulesReplica))
    return cls.bind(replica_config, settings)


def run_ray_server(config: ServeConfig, settings: Settings, options: RayServeOptions) -> int:
    """Serve on Ray Serve until SIGTERM/SIGINT; 0 after a graceful stop."""
    from joules.registry import Registry

    registry = Registry(settings)
    for name in config.models:
        registry.get(name)  # an unknown or unpromoted model is a clear error before Ray starts
    stop = threading.Event()
    extra = (config.api_key_env,) if config.api_key_env else ()
    previous: dict[int, Any] = {}
    try:
        with ray_session(options.place, home=str(settings.home.resolve()), env_names=extra) as ray:
            from ray import serve

            # After ray.init, which installs its own SIGTERM handler (a crash report, then death).
            previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
            serve.start(http_options={"host": config.host, "port": config.port})
            try:
                app = _deployment(config, settings, options, cluster_cpus(ray))
                try:
                    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
                except RuntimeError as e:  # Ray Serve's word for replicas that failed to start
                    raise ModelLoadError(f"Ray Serve could not start the replicas ({e}); see the log above") from e
                scale = f"{options.autoscale[0]}..{options.autoscale[1]}" if options.autoscale else options.replicas
                print(f"ready: Ray Serve, {scale} replica(s), at http://{config.host}:{config.port}", flush=True)
                while not stop.wait(0.5):  # a timed wait: the signal handler runs between waits
                    pass
                print("stopping: draining the replicas", flush=True)
            finally:
                serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
