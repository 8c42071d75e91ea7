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
from joules.runtime.limits import MAX_TEXT_BYTES
from joules.runtime.options import RuntimeOptions

MIB = 1 << 20


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
    max_connections: int = 2048  # beyond this uvicorn answers 503 before reading the request
    threads: int = 0  # ONNX Runtime intra-op threads per instance; 0: the cores shared among instances
    # ONNX Runtime's pool threads spin this long for more work before they sleep; 0: never spin.
    # Bounded, spinning costs no CPU per request and saves the wake-ups (docs/benchmarks.md).
    spin_us: int = 100
    providers: tuple[str, ...] | None = None
    access_log: bool = False
    max_text_bytes: int = MAX_TEXT_BYTES  # admission's bound on one text, as in every mode

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
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if not 0 <= self.spin_us <= 1_000_000:
            raise ConfigError(f"spin_us must be in [0, 1000000] (0: never spin), got {self.spin_us}")
        if not isinstance(self.max_text_bytes, int) or self.max_text_bytes < 1:
            raise ConfigError(f"max_text_bytes must be a whole number >= 1, got {self.max_text_bytes!r}")
        if self.rules_file is not None and not Path(self.rules_file).is_file():
            raise ConfigError(f"rule file {str(self.rules_file)!r} does not exist")
        if self.api_key_env is not None:
            self.api_key()  # fail at startup, not at the first request

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

    def intra_op_threads(self) -> int:
        """Threads per model call: the given number, else the cores shared among instances."""
        if self.threads:
            return self.threads
        if self.batching.instances == 1:
            return 0  # ONNX Runtime's default: one per physical core
        return max(1, (os.cpu_count() or 1) // self.batching.instances)
