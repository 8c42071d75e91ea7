"""Streaming inference: Redis Streams consumer groups, or JSONL on stdin/stdout with no broker."""

from joules.errors import BrokerUnavailableError, StreamError
from joules.serve.stream.base import Backlog, Sink, Source
from joules.serve.stream.config import EndpointPlan, RedisEndpoint, StreamConfig, default_consumer_name, plan_endpoints
from joules.serve.stream.consumer import StreamConsumer
from joules.serve.stream.messages import DeadLetter, Message, Verdict, Written
from joules.serve.stream.metrics import StreamMetrics
from joules.serve.stream.publish import PublishConfig, PublishSummary, publish_file
from joules.serve.stream.service import StreamOptions, run_stream

__all__ = [
    "Backlog",
    "BrokerUnavailableError",
    "DeadLetter",
    "EndpointPlan",
    "Message",
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
    "Verdict",
    "Written",
    "default_consumer_name",
    "plan_endpoints",
    "publish_file",
    "run_stream",
]
