"""Refuse files that can run code when loaded.

A pickle (and every format built on it: joblib, torch's ``.bin``/``.pt``
checkpoints, which are zip files around a pickle) executes arbitrary code when
unpickled. joules recognises them by name and by their first bytes, never by
loading them.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

from joules.errors import UnsafeFileError

PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".dill", ".sav"}
SAFE_HINT = "joules loads only ONNX, JSON/YAML, tokenizer.json and safetensors files"


SNIFF_BYTES = 1 << 16  # the head of a file (or of a zip member) that is decoded as pickle opcodes
MIN_OPCODES = 16  # a head this long that decodes whole, with no STOP yet, is the start of a large pickle
# Opcodes that import or call something: a stream that uses one and stops is a pickle whatever follows it.
CODE_OPCODES = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2", "EXT4"}
    | {"PERSID", "BINPERSID"}
)


# What pickletools says when a stream ends before its pickle does (the head of a longer file).
_TRUNCATED = ("pickle exhausted", "not enough data", "expected ", "no newline found")


def looks_like_pickle(head: bytes, *, size: int) -> bool:
    """Whether ``head``, the first bytes of a file of ``size`` bytes, is a pickle stream (any protocol).

    pickletools decodes opcodes and their arguments without executing anything;
    ``dis`` also checks what each opcode takes from the stack, the marks and the
    memo, as unpickling would. A pickle runs to STOP, at the end of the file or
    after an opcode that imports or calls something; a file longer than
    ``head`` may instead run validly to the end of ``head``. Text, JSON, YAML,
    ONNX, safetensors and GGUF fail within their first bytes: their first
    characters are no opcode, or what they would take from the stack is not there.
    """
    stream = io.BytesIO(head)
    try:
        pickletools.dis(stream, out=io.StringIO())
    except ValueError as e:
        # Stopped at the end of ``head``, everything before it valid: the start of a larger pickle.
        cut = size > len(head) and stream.tell() >= len(head) and str(e).startswith(_TRUNCATED)
        return cut and _count_opcodes(head) >= MIN_OPCODES
    names = [op.name for op, _, _ in pickletools.genops(io.BytesIO(head))]
    return len(names) > 1 and (stream.tell() == size or not CODE_OPCODES.isdisjoint(names))


def _count_opcodes(head: bytes) -> int:
    count = 0
    try:
        for _ in pickletools.genops(io.BytesIO(head)):
            count += 1
    except ValueError:
        pass  # the end of ``head``: counted up to there
    return count


def _sniff(path: Path) -> str | None:
    """Why ``path`` looks like a pickle, from its first bytes only; None if it does not."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return None
    if looks_like_pickle(head, size=size):
        return "it is a pickle (its first bytes decode as pickle opcodes)"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if info.is_dir():
                        continue
                    if info.filename.lower().endswith(tuple(PICKLE_SUFFIXES)):
                        return f"it is a zip archive holding {info.filename!r}, a pickle (a torch checkpoint)"
                    # Members are read (at most their first bytes), never unpickled.
                    with z.open(info) as member:
                        if looks_like_pickle(member.read(SNIFF_BYTES), size=info.file_size):
                            return f"it is a zip archive holding {info.filename!r}, a pickle (a torch checkpoint)"
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as e:
            # Encrypted or unsupported members, or a damaged archive: what it holds cannot be checked.
            return f"it is a zip archive whose members cannot be checked for pickles ({e})"
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
