"""``joules stream``: build the source and sink a plan names, run the consumer until stopped.

SIGTERM or SIGINT asks the consumer to settle the batch in hand (write, ack)
and exit; a second one acts as usual (SIGINT interrupts, SIGTERM terminates),
which is safe too: whatever was not acked is delivered again.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from joules.errors import ConfigError
from joules.runtime import Predictor
from joules.serve.stream.base import Sink, Source
from joules.serve.stream.config import EndpointKind, EndpointPlan, StreamConfig
from joules.serve.stream.consumer import StreamConsumer
from joules.serve.stream.metrics import StreamMetrics

log = logging.getLogger("joules.stream")


@dataclass(frozen=True, kw_only=True)
class StreamOptions:
    """Process-level settings of a run, beside the consumer's ``StreamConfig``."""

    metrics_port: int | None = None  # serve Prometheus text at /metrics on this port
    metrics_host: str = "127.0.0.1"
    handle_signals: bool = True

    def __post_init__(self) -> None:
        if self.metrics_port is not None and not (0 < self.metrics_port < 65536):
            raise ConfigError(f"--metrics-port must be between 1 and 65535, got {self.metrics_port}")


def open_endpoints(
    plan: EndpointPlan, config: StreamConfig, *, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None
) -> tuple[Source, Sink]:
    if plan.kind is EndpointKind.STDIO:
        from joules.serve.stream.jsonl import JsonlSink, JsonlSource

        return JsonlSource(stdin or sys.stdin.buffer, config), JsonlSink(stdout or sys.stdout)
    from joules.serve.stream.redis_sink import RedisStreamSink
    from joules.serve.stream.redis_streams import RedisStreamSource, connect

    if plan.source is None or plan.sink is None or plan.dead is None:
        raise ConfigError("a Redis stream job needs a source and a sink stream; build the plan with plan_endpoints")
    name = f"joules-{config.consumer}"
    source_client = connect(plan.source, name=name)
    sink_client = source_client if plan.sink.same_server(plan.source) else connect(plan.sink, name=name)
    source = RedisStreamSource(source_client, plan.source, config)
    sink = RedisStreamSink(
        sink_client=sink_client,
        sink=plan.sink,
        dead_client=source_client,
        dead=plan.dead,
        source=plan.source,
        config=config,
    )
    source.open()
    return source, sink


@contextmanager
def stop_on_signals(stop: threading.Event, enabled: bool) -> Iterator[None]:
    """First SIGTERM/SIGINT sets ``stop``; the handlers are then restored, so a second one acts as usual."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        log.info(
            "%s: finishing the batch in hand, then exiting (send it again to stop at once)", signal.Signals(signum).name
        )
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_stream(
    predictor: Predictor,
    plan: EndpointPlan,
    config: StreamConfig,
    options: StreamOptions | None = None,
    *,
    stop: threading.Event | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> StreamMetrics:
    """Consume until ``stop`` is set (or a signal comes, or stdin ends); the metrics of the run."""

    def consumer(source: Source, sink: Sink, metrics: StreamMetrics) -> StreamConsumer:
        return StreamConsumer(predictor, source, sink, config, metrics)

    return serve_consumer(
        consumer, predictor.ref, plan, config, options, doing="judging", stop=stop, stdin=stdin, stdout=stdout
    )


def serve_consumer(
    consumer: Callable[[Source, Sink, StreamMetrics], StreamConsumer],
    ref: str,
    plan: EndpointPlan,
    config: StreamConfig,
    options: StreamOptions | None = None,
    *,
    doing: str,
    stop: threading.Event | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
) -> StreamMetrics:
    """Open the plan's endpoints, run ``consumer(source, sink, metrics)`` until ``stop`` is set (or a signal
    comes, or stdin ends), then close everything; the metrics of the run (``ref``: the model they name)."""
    options = options or StreamOptions()
    stop = stop or threading.Event()
    source, sink = open_endpoints(plan, config, stdin=stdin, stdout=stdout)
    metrics = StreamMetrics(model=ref, report_every_s=config.report_every_s)
    server = None
    try:
        if options.metrics_port is not None:
            server = metrics.serve_prometheus(options.metrics_port, options.metrics_host)
            log.info("metrics at http://%s:%d/metrics", options.metrics_host, options.metrics_port)
        log.info(
            "%s %s with %s into %s, batches of %d (or %d ms)",
            doing,
            source.description,
            ref,
            sink.description,
            config.batch_size,
            config.max_wait_ms,
        )
        with stop_on_signals(stop, options.handle_signals):
            consumer(source, sink, metrics).run(stop)
    finally:
        source.close()
        sink.close()
        if server is not None:
            server.shutdown()
    return metrics
