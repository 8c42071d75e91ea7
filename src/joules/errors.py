"""One error hierarchy for joules.

Every message says what was wrong, the value received and how to fix it. The
CLI prints ``str(error)`` without a traceback; the HTTP edge maps each class to
a status code once (see ``serve/online``).
"""

from __future__ import annotations


class JoulesError(Exception):
    """Base of every error joules raises on purpose."""


class ConfigError(JoulesError):
    """A setting, flag or option has a value joules cannot use."""


class InvalidNameError(JoulesError):
    """A model name or reference is not valid."""


class BundleError(JoulesError):
    """A bundle directory or its joules.yaml is not valid."""


class UnsafeFileError(BundleError):
    """A file that could run code when loaded (a pickle) was found."""


class RegistryError(JoulesError):
    """A registry operation could not be done."""


class ModelNotFoundError(RegistryError):
    """No such model or version in the registry."""


class IntegrityError(RegistryError):
    """A registered file does not match the sha256 recorded for it."""


class RuleError(JoulesError):
    """A rule file is not valid; the message names the line."""


class InputError(JoulesError):
    """A prediction request is malformed (wrong field, type or shape)."""


class ParameterError(InputError):
    """One request parameter has a value joules cannot use (or does not support); ``param`` names it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class OutputError(JoulesError):
    """A model's output cannot become a label or an action (it is not finite); the message names the row."""


class DataError(JoulesError):
    """A data file (dataset, batch input) cannot be read."""


class MissingExtraError(JoulesError):
    """An optional dependency is needed; the message names the extra to install."""


# -- runtime: dynamic batching ---------------------------------------------------------------------


class QueueFullError(JoulesError):
    """The request queue is full: the server is overloaded; retry later."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(JoulesError):
    """A request was not answered before its deadline."""


class BatcherClosedError(JoulesError):
    """The batcher no longer takes requests (its model is being unloaded or the server stops)."""


class EngineUnavailableError(JoulesError):
    """A model engine can no longer run (a tensor-parallel rank died); requests fail fast until it is back."""


class RankTimeoutError(EngineUnavailableError):
    """A tensor-parallel peer did not reach a collective in time (it died, or hangs)."""


# -- the HTTP edge ---------------------------------------------------------------------------------


class UnauthorizedError(JoulesError):
    """No API key, or a wrong one."""


class PayloadTooLargeError(JoulesError):
    """The request body is over the limit."""


class UnsupportedMediaError(JoulesError):
    """A Content-Encoding the server cannot decode."""


class MalformedRequestError(JoulesError):
    """The bytes a client sent are not a valid HTTP/1.1 request."""


class HeaderTooLargeError(JoulesError):
    """A request's line and headers are over the size or count limit."""


class TooManyHeadersError(HeaderTooLargeError):
    """Raised inside the HTTP parser when a head has more header fields than allowed, to stop parsing."""


class RequestTimeoutError(JoulesError):
    """A request's headers or body did not arrive within the time allowed."""


class ModelLoadError(JoulesError):
    """A model version could not be loaded; the message says which and why."""


class RepositoryControlError(JoulesError):
    """Loading or unloading models through the HTTP repository API is not enabled on this server."""


class ModelNotReadyError(JoulesError):
    """The model is known but not loaded (loading, unloaded, or its load failed)."""


class ClientClosedError(JoulesError):
    """The client went away before its answer was ready (logged as 499, never sent)."""


# -- streaming -------------------------------------------------------------------------------------


class StreamError(JoulesError):
    """A stream cannot be consumed or written as configured (wrong key type, refused command...)."""


class BrokerUnavailableError(StreamError):
    """The broker cannot be reached right now; the consumer retries instead of stopping."""


# -- optimize --------------------------------------------------------------------------------------


class OptimizeError(JoulesError):
    """An optimization pass or run could not be done."""


class PassSkipped(OptimizeError):
    """A pass does not apply to this model (or cannot run here); the message says why."""


class PassFailed(OptimizeError):
    """A pass raised an unexpected error (a bug or a broken input, not "does not apply"): reported as failed."""


# -- bench -----------------------------------------------------------------------------------------


class BenchError(JoulesError):
    """A benchmark could not be run or its target failed (the message says which and how to fix it)."""


class HttpError(BenchError):
    """A load generator request failed: transport error or non-2xx status (the message says which)."""


class QueryError(BenchError):
    """One benchmark query failed (the message says why)."""


def require(module: str, extra: str) -> None:
    """Raise MissingExtraError unless ``module`` can be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"this needs the Python package {module!r}, which is not installed; "
            f"install joules with the {extra!r} extra: pip install 'joules[{extra}]'"
        )
