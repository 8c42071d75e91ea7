"""Model names and references (``NAME`` or ``NAME:VERSION``).

A name becomes a directory under ``$JOULES_HOME/models``, so it is checked
wherever it enters, before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from joules.errors import InvalidNameError

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
VALID_NAME = (
    f"a model name is 1 to {MAX_NAME_LENGTH} characters: letters, digits, '.', '_' and '-', "
    "starting with a letter or digit (for example spam or spam-distilled_v2)"
)


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid model name, else raise InvalidNameError."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"invalid model name {name!r}: the name is empty; {VALID_NAME}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"invalid model name {name[:20]!r}... ({len(name)} characters, at most {MAX_NAME_LENGTH}); {VALID_NAME}"
        )
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidNameError(f"invalid model name {name!r}; {VALID_NAME}")
    return name


@dataclass(frozen=True)
class ModelRef:
    """A model name and, optionally, a version; no version means the production one."""

    name: str
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


def parse_ref(ref: str) -> ModelRef:
    """Parse ``NAME`` or ``NAME:VERSION``."""
    if not isinstance(ref, str):
        raise InvalidNameError(f"invalid model reference {ref!r}: expected NAME or NAME:VERSION")
    name, sep, version = ref.partition(":")
    validate_name(name)
    if not sep:
        return ModelRef(name)
    return ModelRef(name, parse_version(version, ref))


def parse_version(version: str | int, ref: object = None) -> int:
    where = f" in {ref!r}" if ref is not None else ""
    try:
        v = int(version)
    except (TypeError, ValueError):
        raise InvalidNameError(
            f"invalid version {version!r}{where}: a version is a positive whole number, as in spam:3"
        ) from None
    if v < 1 or str(version).strip() != str(v):
        raise InvalidNameError(
            f"invalid version {version!r}{where}: a version is a positive whole number, as in spam:3"
        )
    return v
