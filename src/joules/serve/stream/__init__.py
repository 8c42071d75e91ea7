"""Streaming inference: Redis Streams consumer groups, or JSONL on stdin/stdout with no broker.

Names are imported when first used, so the CLI can read ``StreamConfig``'s
defaults without loading the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "Backlog": "joules.serve.stream.base",
    "BrokerUnavailableError": "joules.errors",
    "EndpointPlan": "joules.serve.stream.config",
    "Message": "joules.serve.stream.messages",
    "Outcome": "joules.serve.stream.messages",
    "PublishConfig": "joules.serve.stream.publish",
    "PublishSummary": "joules.serve.stream.publish",
    "RedisEndpoint": "joules.serve.stream.config",
    "Sink": "joules.serve.stream.base",
    "Source": "joules.serve.stream.base",
    "StreamConfig": "joules.serve.stream.config",
    "StreamConsumer": "joules.serve.stream.consumer",
    "StreamError": "joules.errors",
    "StreamMetrics": "joules.serve.stream.metrics",
    "StreamOptions": "joules.serve.stream.service",
    "Written": "joules.serve.stream.messages",
    "dead_letter": "joules.serve.stream.messages",
    "default_consumer_name": "joules.serve.stream.config",
    "plan_endpoints": "joules.serve.stream.config",
    "publish_file": "joules.serve.stream.publish",
    "run_stream": "joules.serve.stream.service",
    "verdict": "joules.serve.stream.messages",
}
__all__ = [
    "Backlog",
    "BrokerUnavailableError",
    "EndpointPlan",
    "Message",
    "Outcome",
    "PublishConfig",
    "PublishSummary",
    "RedisEndpoint",
    "Sink",
    "Source",
    "StreamConfig",
    "StreamConsumer",
    "StreamError",
    "StreamMetrics",
    "StreamOptions",
    "Written",
    "dead_letter",
    "default_consumer_name",
    "plan_endpoints",
    "publish_file",
    "run_stream",
    "verdict",
]

if TYPE_CHECKING:
    from joules.errors import BrokerUnavailableError, StreamError
    from joules.serve.stream.base import Backlog, Sink, Source
    from joules.serve.stream.config import (
        EndpointPlan,
        RedisEndpoint,
        StreamConfig,
        default_consumer_name,
        plan_endpoints,
    )
    from joules.serve.stream.consumer import StreamConsumer
    from joules.serve.stream.messages import Message, Outcome, Written, dead_letter, verdict
    from joules.serve.stream.metrics import StreamMetrics
    from joules.serve.stream.publish import PublishConfig, PublishSummary, publish_file
    from joules.serve.stream.service import StreamOptions, run_stream


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'joules.serve.stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
