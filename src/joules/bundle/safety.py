"""Refuse files that can run code when loaded.

A pickle (and every format built on it: joblib, torch's ``.bin``/``.pt``
checkpoints, which are zip files around a pickle) executes arbitrary code when
unpickled. joules recognises them by name and by their first bytes, never by
loading them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from joules.errors import UnsafeFileError

PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".dill", ".sav"}
SAFE_HINT = "joules loads only ONNX, JSON/YAML, tokenizer.json and safetensors files"


def _sniff(path: Path) -> str | None:
    """Why ``path`` looks like a pickle, from its first bytes only; None if it does not."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return None
    # Pickle protocol 2+ starts with PROTO (0x80) and the protocol number.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "it starts with a pickle header"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                # Only the directory of names is read, never a member.
                if any(n.endswith((".pkl", "data.pkl")) for n in z.namelist()):
                    return "it is a zip archive holding a pickle (a torch checkpoint)"
        except (zipfile.BadZipFile, OSError):
            return None
    return None


def check_safe(path: Path, *, root: Path | None = None) -> None:
    """Raise UnsafeFileError if ``path`` is a pickle-like file."""
    shown = path.relative_to(root) if root else path
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFileError(
            f"refusing {str(shown)!r}: '{path.suffix}' files are pickles that run code when loaded; "
            f"remove the file or convert its weights to safetensors ({SAFE_HINT})"
        )
    why = _sniff(path)
    if why:
        raise UnsafeFileError(
            f"refusing {str(shown)!r}: {why}, and pickles run code when loaded; "
            f"remove it or convert it to safetensors ({SAFE_HINT})"
        )


def scan_directory(root: Path) -> list[Path]:
    """Every regular file under ``root``; raise on the first pickle-like one or an escaping symlink."""
    files: list[Path] = []
    resolved_root = root.resolve()
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(resolved_root):
                raise UnsafeFileError(
                    f"refusing {str(path.relative_to(root))!r}: a symlink pointing outside the bundle"
                )
        if path.is_file():
            check_safe(path, root=root)
            files.append(path)
    return files
