"""Items of a batch job that are files: a folder of .eml files, an mbox, a folder of images, a CSV of image paths.

Each reader yields one :class:`Item` per message or image, in a stable order
(file names sorted; mbox and CSV in file order), with the item's id (its file
name; ``NAME:N`` for the N-th message of an mbox, 1-based; the path as written
in a CSV) and either its raw bytes or the reason it could not be read. A file
that cannot be read is an item with an error, never the end of the job, so a
batch job turns it into an error row and goes on. What the bytes mean (an
e-mail, a PNG) is the input kind's business, not the reader's.
"""

from __future__ import annotations

import csv
import hashlib
import mailbox
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joules.errors import DataError
from joules.serve.batch.io import Row

EMAIL_SUFFIXES = (".eml",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Largest image file read: far past any photo joules' pixel limit lets through, small enough that a stray
# video or disk image in the folder does not fill memory.
DEFAULT_MAX_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class Item:
    id: str
    value: bytes | None  # the raw bytes, or None when the item could not be read
    error: str | None = None  # why it could not be read


def read_file(path: Path, item_id: str, max_bytes: int | None, *, cut: bool = False) -> Item:
    """One file's bytes. Over ``max_bytes``: an error, or with ``cut`` its first ``max_bytes`` + 1 bytes
    (the reader of an e-mail parses only its start, and the extra byte tells it the message was longer)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            return Item(item_id, None, f"{item_id} is not a regular file")
        if max_bytes is not None and size > max_bytes and not cut:
            return Item(item_id, None, f"{item_id} is {size:,} bytes, over the limit of {max_bytes:,}")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1 if max_bytes is not None else -1)
    except OSError as e:
        return Item(item_id, None, f"cannot read {item_id}: {e.strerror or e}")
    return Item(item_id, data)


def _folder(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{str(folder)!r} is not a folder")
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise DataError(f"cannot list {str(folder)!r}: {e.strerror or e}") from e
    return [folder / n for n in names if n.lower().endswith(suffixes) and not n.startswith(".")]


def email_folder(folder: Path, *, max_bytes: int | None = None) -> Iterator[Item]:
    """Every ``*.eml`` file in ``folder`` (not its subfolders), by name; at most ``max_bytes`` + 1 of each read."""
    for path in _folder(folder, EMAIL_SUFFIXES):
        yield read_file(path, path.name, max_bytes, cut=True)


def image_folder(folder: Path, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Item]:
    """Every ``*.png``, ``*.jpg`` and ``*.jpeg`` file in ``folder`` (not its subfolders), by name."""
    for path in _folder(folder, IMAGE_SUFFIXES):
        yield read_file(path, path.name, max_bytes)


def mbox_messages(path: Path, *, max_bytes: int | None = None) -> Iterator[Item]:
    """Every message of an mbox file, as its bytes without the ``From `` separator line; ids ``NAME:N``."""
    if not path.is_file():
        raise DataError(f"{str(path)!r} is not an mbox file")
    try:
        box = mailbox.mbox(path, create=False)
        keys = box.keys()  # scans the file once for "From " lines
    except (OSError, mailbox.Error) as e:
        raise DataError(f"cannot read the mbox {str(path)!r}: {e}") from e
    try:
        for n, key in enumerate(keys, 1):
            item_id = f"{path.name}:{n}"
            try:
                data = box.get_bytes(key)
            except (OSError, KeyError, mailbox.Error) as e:
                yield Item(item_id, None, f"cannot read {item_id}: {e}")
                continue
            yield Item(item_id, data if max_bytes is None else data[: max_bytes + 1])
    finally:
        box.close()


def image_paths_csv(path: Path, *, column: str = "path", max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Item]:
    """The images a CSV names in ``column`` (relative paths are relative to the CSV's folder); id: the path
    as written."""
    try:
        f = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read {str(path)!r}: {e.strerror or e}") from e
    with f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise DataError(f"{str(path)!r} has no {column!r} column (columns: {reader.fieldnames or []})")
        try:
            for row in reader:
                written = (row.get(column) or "").strip()
                if not written:
                    yield Item(f"row {reader.line_num}", None, f"row {reader.line_num}: the {column!r} cell is empty")
                    continue
                target = Path(written)
                yield read_file(target if target.is_absolute() else path.parent / target, written, max_bytes)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{str(path)!r}: not a readable CSV at line {reader.line_num}: {e}") from e


# -- items as a batch job's rows ----------------------------------------------------------------------

# Input formats whose rows are files (or mbox messages), read by this module rather than io.py.
ITEM_FORMATS = ("emails", "images", "mbox", "image-paths")
MBOX_SUFFIXES = (".mbox", ".mbx")
# Rows per checkpoint of an item job at most: each row holds a whole file (up to 64 MiB for an image, the
# first 1 MiB of a message) until its chunk is scored, so chunks stay small whatever the scoring rate.
MAX_ITEM_CHUNK = 64


def item_format(path: Path, given: str | None, kind: str, *, fields: int = 1) -> str | None:
    """The item format of a batch input for a model of input ``kind``, or None when it is a table (io.py).

    A folder is read as ``emails`` (an e-mail model) or ``images`` (an image model); a ``.mbox`` file as
    ``mbox``; a CSV given to an image model as ``image-paths`` (the images it names). ``given``
    (--input-format) overrides the guess.
    """
    if given is not None:
        if given in ITEM_FORMATS:
            _check_kind(given, kind)
            return given
        if path.is_dir():
            raise DataError(f"{str(path)!r} is a folder; --input-format {given} reads a file")
        return None
    if path.is_dir():
        if kind == "email":
            return "emails"
        if kind == "image":
            return "images"
        raise DataError(
            f"{str(path)!r} is a folder: a folder is read as .eml files by an e-mail model or as images by an "
            f"image model, but this model's input kind is {kind}; give a CSV, JSONL or Parquet file"
        )
    if path.suffix.lower() in MBOX_SUFFIXES:
        _check_kind("mbox", kind)
        return "mbox"
    if kind == "image" and path.suffix.lower() in (".csv", ".txt"):
        return "image-paths"
    return None


def _check_kind(fmt: str, kind: str) -> None:
    want = "email" if fmt in ("emails", "mbox") else "image"
    if kind != want:
        raise DataError(
            f"input format {fmt} holds {'e-mail' if want == 'email' else 'images'}; this model takes {kind}"
        )


def item_fingerprint(path: Path, fmt: str, column: str = "path") -> dict[str, Any]:
    """What the checkpoint records of an item input, to refuse resuming over a changed one: for a folder, the
    names, sizes and modification times of the files it reads (the order of its rows); for a file, its own."""
    if fmt not in ("emails", "images"):
        st = path.stat()
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256()
    files = _folder(path, EMAIL_SUFFIXES if fmt == "emails" else IMAGE_SUFFIXES)
    for p in files:
        try:
            st = p.stat()
            digest.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"{p.name}\0?\n".encode("utf-8", "surrogateescape"))
    return {"path": str(path.resolve()), "files": len(files), "sha256": digest.hexdigest()}


def read_item_rows(
    path: Path, fmt: str, field: str, *, skip: int = 0, column: str = "path", max_bytes: int | None = None
) -> Iterator[Row]:
    """A batch job's rows from items: ``{field: bytes}`` or the reason the item could not be read.

    Rows before ``skip`` (done by an earlier run) are passed over without reading their files.
    """
    items: Iterator[Item]
    if fmt == "emails":
        paths = _folder(path, EMAIL_SUFFIXES)
        items = (read_file(p, p.name, max_bytes, cut=True) for p in paths[skip:])
        start = min(skip, len(paths))
    elif fmt == "images":
        paths = _folder(path, IMAGE_SUFFIXES)
        limit = DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes
        items = (read_file(p, p.name, limit) for p in paths[skip:])
        start = min(skip, len(paths))
    elif fmt == "mbox":
        items, start = _skipped(mbox_messages(path, max_bytes=max_bytes), skip)
    elif fmt == "image-paths":
        limit = DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes
        items, start = _skipped(image_paths_csv(path, column=column, max_bytes=limit), skip)
    else:
        raise DataError(f"unknown item format {fmt!r}; item formats are {list(ITEM_FORMATS)}")
    for index, item in enumerate(items, start):
        if item.error is not None:
            yield Row(index, item.id, None, item.error)
        else:
            yield Row(index, item.id, {field: item.value})


def _skipped(items: Iterator[Item], skip: int) -> tuple[Iterator[Item], int]:
    """``items`` after the first ``skip`` (they are still read: an mbox or a CSV is read in order)."""
    done = 0
    for _ in range(skip):
        if next(items, None) is None:
            break
        done += 1
    return items, done
