"""Errors at the HTTP edge and the one table that maps every error to a status.

Looked up by class along the exception's MRO, as starlette's
``_exception_handler.py`` does: the most specific entry wins. Anything not in
the table is a bug: it is logged with its traceback and answered 500 with a
plain message; a traceback never reaches the client.
"""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from joules.errors import (
    BatcherClosedError,
    BundleError,
    ClientClosedError,
    ConfigError,
    DeadlineExceededError,
    EngineUnavailableError,
    HeaderTooLargeError,
    InputError,
    IntegrityError,
    InvalidNameError,
    JoulesError,
    MalformedRequestError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    OutputError,
    PayloadTooLargeError,
    QueueFullError,
    RepositoryControlError,
    RequestTimeoutError,
    RuleError,
    UnauthorizedError,
    UnsupportedMediaError,
)

log = logging.getLogger(__name__)


STATUS: dict[type[BaseException], int] = {
    InputError: 400,
    InvalidNameError: 400,
    RuleError: 400,
    MalformedRequestError: 400,
    ModelLoadError: 400,  # as Triton answers a load that fails: the reason is in the message
    UnauthorizedError: 401,
    RepositoryControlError: 403,
    ModelNotFoundError: 404,
    RequestTimeoutError: 408,
    PayloadTooLargeError: 413,
    UnsupportedMediaError: 415,
    OutputError: 422,  # the request was well formed; the model's answer to it is unusable
    HeaderTooLargeError: 431,
    ClientClosedError: 499,
    ClientDisconnect: 499,  # gone while its body was being read
    QueueFullError: 503,
    BatcherClosedError: 503,
    ModelNotReadyError: 503,
    EngineUnavailableError: 503,
    DeadlineExceededError: 504,
    # A model that cannot be loaded or configured is the operator's problem, not the client's.
    BundleError: 500,
    IntegrityError: 500,
    ConfigError: 500,
    JoulesError: 500,
}


def status_of(error: BaseException) -> int:
    if isinstance(error, HTTPException):
        return error.status_code
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(error: BaseException) -> Response:
    """``{"error": message}`` with the status from the table (and Retry-After / WWW-Authenticate)."""
    status = status_of(error)
    headers: dict[str, str] = {}
    if isinstance(error, HTTPException):
        message = str(error.detail)
        headers.update(error.headers or {})
    elif isinstance(error, ClientDisconnect):
        message = "the client disconnected"
    elif isinstance(error, JoulesError):
        message = str(error)
        if status >= 500 and status not in (503, 504):
            log.error("%s: %s", type(error).__name__, error)
    else:
        log.error("unexpected error answering a request", exc_info=error)
        message = "internal error: the server could not answer this request; see the server log"
    if isinstance(error, QueueFullError):
        headers["Retry-After"] = str(error.retry_after_s)
    elif status == 503:
        headers["Retry-After"] = "1"
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = 'Bearer realm="joules"'
    body = json.dumps({"error": message}, allow_nan=False).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")
