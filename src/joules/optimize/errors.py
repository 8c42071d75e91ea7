"""Errors of the optimize package.

They extend the one ``JoulesError`` hierarchy; they live here rather than in
``joules/errors.py`` only because that module belongs to another area (see the
report that came with this package): move them there when convenient.
"""

from __future__ import annotations

from joules.errors import JoulesError


class OptimizeError(JoulesError):
    """An optimization pass or run could not be done."""


class PassSkipped(OptimizeError):
    """A pass does not apply to this model (or cannot run here); the message says why."""
