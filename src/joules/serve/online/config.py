"""What ``joules serve`` was asked to do: one frozen, validated configuration.

``joules serve`` with no flags runs exactly ``ServeConfig()``: its flags take
their defaults from these fields (``cli/serve.py``). Light to import (no
ONNX Runtime, no registry), so the CLI can read them when it builds its parser.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from joules.errors import ConfigError
from joules.runtime.batching import BatchingConfig
from joules.runtime.limits import (
    MAX_MODEL_LEN,
    MAX_NUM_BATCHED_TOKENS,
    MAX_NUM_SEQS,
    MAX_TEXT_BYTES,
    PREFIX_CACHE_SLOTS,
    check_step_budget,
    check_whole_numbers,
)
from joules.runtime.options import RuntimeOptions
from joules.serve.engines import ParallelOptions

MIB = 1 << 20
KIB = 1 << 10
MODEL_CONTROL = ("none", "explicit")


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """What one connection may send before the app sees a request (enforced in ``connection.py``)."""

    max_header_kb: float = 64.0  # request line + headers; nginx's default buffers hold 4 x 8 KiB, Node's 16 KiB
    max_headers: int = 100  # header fields per request (Apache's LimitRequestFields default)
    header_timeout_s: float = 10.0  # from a request's first byte (or the connection's opening) to its blank line
    body_timeout_s: float = 30.0  # from the end of the headers to the last byte of the declared body
    keep_alive_s: float = 5.0  # an idle connection between requests is closed after this (uvicorn's default)

    def __post_init__(self) -> None:
        if not 1 <= self.max_header_kb <= 16 * 1024:
            raise ConfigError(f"max_header_kb must be in [1, 16384] KiB, got {self.max_header_kb}")
        if not 1 <= self.max_headers <= 10_000:
            raise ConfigError(f"max_headers must be in [1, 10000], got {self.max_headers}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            value = getattr(self, name)
            if not 0.1 <= value <= 3600:
                raise ConfigError(f"{name} must be in [0.1, 3600] seconds, got {value}")

    @property
    def max_header_bytes(self) -> int:
        return int(self.max_header_kb * KIB)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    models: tuple[str, ...] = ()  # empty: every production model, and new ones as they are promoted
    host: str = "127.0.0.1"
    port: int = 8000
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    timeout_ms: float = 1000.0  # deadline of a request, from its arrival
    rules_file: Path | None = None
    api_key_env: str | None = None  # the environment variable holding the API key
    max_body_mb: float = 1.0
    max_instances: int = 256  # rows in one request
    cache_size: int = 0  # response cache entries per model version; 0: off
    poll_interval_s: float = 2.0  # how often the registry is asked for a new production version
    drain_timeout_s: float = 30.0  # graceful shutdown: how long in-flight requests may take
    max_connections: int = 2048  # beyond this a request is answered 503 (health probes excepted)
    # Bounds on what a client may send before the app sees it (HttpLimits says why each default).
    max_header_kb: float = HttpLimits.max_header_kb
    max_headers: int = HttpLimits.max_headers
    header_timeout_s: float = HttpLimits.header_timeout_s
    body_timeout_s: float = HttpLimits.body_timeout_s
    keep_alive_s: float = HttpLimits.keep_alive_s
    # Load and unload through POST /v2/repository/models/...: "none" (the default) refuses them
    # with 403; "explicit" allows them (Triton's explicit model control mode), behind the API key.
    model_control: str = "none"
    threads: int = 0  # ONNX Runtime intra-op threads per instance; 0: the cores shared among instances
    # ONNX Runtime's pool threads spin this long for more work before they sleep; 0: never spin.
    # Bounded, spinning costs no CPU per request and saves the wake-ups (docs/benchmarks.md).
    spin_us: int = 100
    providers: tuple[str, ...] | None = None
    access_log: bool = False
    max_text_bytes: int = MAX_TEXT_BYTES  # admission's bound on one text, as in every mode
    # Generative models (text-generation bundles): their engine's limits and how they are split.
    parallel: ParallelOptions = field(default_factory=ParallelOptions)
    max_model_len: int = MAX_MODEL_LEN  # longest prompt + completion (the model's context when that is shorter)
    max_num_seqs: int = MAX_NUM_SEQS  # sequences decoded together (continuous batching)
    max_waiting_seqs: int = 256  # completions queued beyond the running ones; past it, 503 + Retry-After
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS  # tokens per engine step: decodes, then prompt chunks
    prefix_cache_slots: int = PREFIX_CACHE_SLOTS  # computed prompts kept for reuse (0: no prefix caching)
    batch_invariant: bool = False  # True: a sequence's logits never depend on the batch (one product layout)

    def __post_init__(self) -> None:
        from joules.registry.names import validate_name  # the registry is loaded only when serving

        object.__setattr__(self, "models", tuple(self.models))
        for name in self.models:
            validate_name(name)
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"a model is named twice: {list(self.models)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if not 1 <= self.timeout_ms <= 3_600_000:
            raise ConfigError(f"timeout_ms must be in [1, 3600000], got {self.timeout_ms}")
        if not 0 < self.max_body_mb <= 1024:
            raise ConfigError(f"max_body_mb must be in (0, 1024], got {self.max_body_mb}")
        if not 1 <= self.max_instances <= 1_000_000:
            raise ConfigError(f"max_instances must be in [1, 1000000], got {self.max_instances}")
        if self.cache_size < 0:
            raise ConfigError(f"cache_size must be >= 0 (0 turns the cache off), got {self.cache_size}")
        if not 0.05 <= self.poll_interval_s <= 3600:
            raise ConfigError(f"poll_interval_s must be in [0.05, 3600], got {self.poll_interval_s}")
        if not 0 <= self.drain_timeout_s <= 3600:
            raise ConfigError(f"drain_timeout_s must be in [0, 3600], got {self.drain_timeout_s}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {self.max_connections}")
        self.http_limits()  # raises on a bad limit
        if self.model_control not in MODEL_CONTROL:
            raise ConfigError(f"model_control must be one of {list(MODEL_CONTROL)}, got {self.model_control!r}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if not 0 <= self.spin_us <= 1_000_000:
            raise ConfigError(f"spin_us must be in [0, 1000000] (0: never spin), got {self.spin_us}")
        if not isinstance(self.max_text_bytes, int) or self.max_text_bytes < 1:
            raise ConfigError(f"max_text_bytes must be a whole number >= 1, got {self.max_text_bytes!r}")
        check_whole_numbers(
            self,
            (
                ("max_model_len", 2),
                ("max_num_seqs", 1),
                ("max_waiting_seqs", 0),
                ("max_num_batched_tokens", 1),
                ("prefix_cache_slots", 0),
            ),
        )
        check_step_budget(self.max_num_batched_tokens, self.max_num_seqs)
        if self.rules_file is not None and not Path(self.rules_file).is_file():
            raise ConfigError(f"rule file {str(self.rules_file)!r} does not exist")
        if self.api_key_env is not None:
            self.api_key()  # fail at startup, not at the first request

    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            max_header_kb=self.max_header_kb,
            max_headers=self.max_headers,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keep_alive_s=self.keep_alive_s,
        )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000.0

    def api_key(self) -> str | None:
        """The API key from ``api_key_env``, or None when no key is required."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key.strip():
            raise ConfigError(
                f"--api-key-env {self.api_key_env}: the environment variable {self.api_key_env} is unset or empty; "
                f"export {self.api_key_env}=<a long random key> before starting the server"
            )
        return key.strip()

    def runtime_options(self) -> RuntimeOptions:
        """How every served model runs (the benchmarks' in-process baseline uses the same)."""
        return RuntimeOptions(
            providers=self.providers,
            intra_op_threads=self.intra_op_threads(),
            allow_spinning=self.spin_us > 0,
            spin_duration_us=self.spin_us or None,
            mem_pattern=False,  # patterns are cached per input shape: useless and growing with varying shapes
            max_batch_size=self.batching.max_batch_size,
            max_batch_tokens=self.batching.max_batch_tokens,
            max_text_bytes=self.max_text_bytes,
            warmup=True,
        )

    def generation_options(self) -> RuntimeOptions:
        """How a generative model's decoder runs: one step is many small operators, so pool threads spin."""
        return RuntimeOptions(
            providers=self.providers,
            intra_op_threads=self.threads,
            allow_spinning=self.spin_us > 0,
            spin_duration_us=self.spin_us or None,
        )

    def intra_op_threads(self) -> int:
        """Threads per model call: the given number, else the cores shared among instances."""
        if self.threads:
            return self.threads
        if self.batching.instances == 1:
            return 0  # ONNX Runtime's default: one per physical core
        return max(1, (os.cpu_count() or 1) // self.batching.instances)
