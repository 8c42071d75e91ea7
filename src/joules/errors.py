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


class DataError(JoulesError):
    """A data file (dataset, batch input) cannot be read."""


class MissingExtraError(JoulesError):
    """An optional dependency is needed; the message names the extra to install."""


def require(module: str, extra: str) -> None:
    """Raise MissingExtraError unless ``module`` can be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"this needs the Python package {module!r}, which is not installed; "
            f"install joules with the {extra!r} extra: pip install 'joules[{extra}]'"
        )
