"""Errors of streaming, under the one ``JoulesError`` hierarchy."""

from __future__ import annotations

from joules.errors import JoulesError


class StreamError(JoulesError):
    """A stream cannot be consumed or written as configured (wrong key type, refused command...)."""


class BrokerUnavailableError(StreamError):
    """The broker cannot be reached right now; the consumer retries instead of stopping."""
