"""Safetensors read by byte range, without mapping the file.

A safetensors file is an 8-byte little-endian header length, a JSON header
(``{name: {dtype, shape, data_offsets}}``) and the raw row-major tensors
(https://github.com/huggingface/safetensors#format). Reading the headers alone
gives every tensor's size before anything loads (the memory check), and a
rank's slice of a tensor is one ``pread`` for a block of rows or one per row
for a block of columns: the rank never holds, or maps, a whole tensor it
splits. ``pread`` goes through the page cache without mapping it into the
process, so the file's pages never count in the rank's resident memory; they
are dropped from the cache (``POSIX_FADV_DONTNEED``) once loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from joules.errors import BundleError
from joules.parallel.llama import LlamaShape

# safetensors dtype -> (itemsize, numpy dtype the raw bytes are read as). bfloat16 has no numpy dtype:
# its bytes are read as uint16 and reinterpreted by torch in the rank.
DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "uint16"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16")
MAX_HEADER = 100 << 20  # the reference implementation's limit too: a larger header is not a safetensors file
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True, kw_only=True)
class TensorEntry:
    """Where one tensor's bytes are: ``offset`` is absolute in ``file``."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def read_header(path: Path) -> tuple[dict[str, TensorEntry], bytes]:
    """Every tensor of one safetensors file, and the raw header bytes (for fingerprints)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise BundleError(f"{str(path)!r} is not a safetensors file: shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise BundleError(f"{str(path)!r}: safetensors header of {n} bytes is over the {MAX_HEADER} limit")
            raw = f.read(n)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise BundleError(f"cannot read the weights file {str(path)!r}: {e.strerror}") from e
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise BundleError(f"{str(path)!r}: the safetensors header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise BundleError(f"{str(path)!r}: the safetensors header is not a mapping")
    base = 8 + n
    out: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(x) for x in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{str(path)!r}: tensor {name!r} has a malformed header entry {info!r}") from e
        if dtype not in DTYPES:
            raise BundleError(f"{str(path)!r}: tensor {name!r} has dtype {dtype!r}, not one of {sorted(DTYPES)}")
        entry = TensorEntry(name=name, file=path, dtype=dtype, shape=shape, offset=base + int(begin))
        if int(end) - int(begin) != entry.nbytes or base + int(end) > size:
            raise BundleError(
                f"{str(path)!r}: tensor {name!r} ({dtype} {list(shape)}) spans bytes {begin}..{end}, "
                f"which does not match its shape or lies past the end of the file ({size} bytes)"
            )
        out[name] = entry
    return out, raw


@dataclass(frozen=True)
class WeightIndex:
    """Every tensor of a model directory's safetensors files, by name (headers only)."""

    tensors: dict[str, TensorEntry]
    fingerprint: str  # sha256 of the headers: two ranks on two machines check they hold the same weights

    @classmethod
    def from_directory(cls, directory: Path) -> WeightIndex:
        files = weight_files(directory)
        tensors: dict[str, TensorEntry] = {}
        h = hashlib.sha256()
        for path in files:
            entries, raw = read_header(path)
            h.update(path.name.encode() + b"\0" + raw)
            for name, entry in entries.items():
                if name in tensors:
                    raise BundleError(f"tensor {name!r} is in both {tensors[name].file.name!r} and {path.name!r}")
                tensors[name] = entry
        return cls(tensors, h.hexdigest())

    def __getitem__(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise BundleError(
                f"the weights have no tensor {name!r}; a Llama-architecture checkpoint with Hugging Face tensor "
                f"names is expected (found e.g. {sorted(self.tensors)[:4]})"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def check(self, shape: LlamaShape) -> None:
        """Every tensor ``shape`` needs is here with the shape it implies (BundleError naming the first that is not)."""
        s, d = shape, shape.head_dim
        want = {
            "q_proj": (s.num_heads * d, s.hidden_size),
            "k_proj": (s.num_kv_heads * d, s.hidden_size),
            "v_proj": (s.num_kv_heads * d, s.hidden_size),
            "o_proj": (s.hidden_size, s.num_heads * d),
            "gate_proj": (s.intermediate_size, s.hidden_size),
            "up_proj": (s.intermediate_size, s.hidden_size),
            "down_proj": (s.hidden_size, s.intermediate_size),
            "embed_tokens": (s.vocab_size, s.hidden_size),
            "lm_head": (s.vocab_size, s.hidden_size),
        }
        names = shape.required_tensors() + (["lm_head.weight"] if "lm_head.weight" in self.tensors else [])
        for name in names:
            entry = self[name]
            key = name.split(".")[-2]
            expected = want.get(key, (s.hidden_size,))
            if entry.shape != expected:
                raise BundleError(
                    f"tensor {name!r} has shape {list(entry.shape)}, but config.json implies {list(expected)}"
                )
            if entry.dtype not in FLOAT_DTYPES:
                raise BundleError(f"tensor {name!r} is {entry.dtype}; the decoder reads {sorted(FLOAT_DTYPES)}")
        if not s.tie_word_embeddings and "lm_head.weight" not in self.tensors:
            raise BundleError("config.json says the LM head is not tied, but the weights have no 'lm_head.weight'")

    def files(self) -> list[Path]:
        return sorted({e.file for e in self.tensors.values()})


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory: those its index names, else every ``*.safetensors``."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise BundleError(f"{str(index)!r} is not a safetensors index (no weight_map): {e}") from e
        files = [directory / n for n in names]
        for f in files:
            if f.parent != directory or not f.is_file():
                raise BundleError(f"{str(index)!r} names {f.name!r}, which is not a file beside it")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise BundleError(f"{str(directory)!r} has no *.safetensors weights (nor {INDEX_FILE})")
    return files


def _pread_into(fd: int, buf: memoryview, offset: int) -> None:
    while len(buf):
        n = os.preadv(fd, [buf], offset)
        if n <= 0:
            raise BundleError(f"the weights file ended early at byte {offset} (truncated after import?)")
        buf, offset = buf[n:], offset + n


class SliceReader:
    """Reads slices of tensors into caller-provided arrays, by ``pread`` (no mmap); closes its files on exit."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def __enter__(self) -> SliceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def read_rows(self, entry: TensorEntry, r0: int, r1: int, out: np.ndarray) -> None:
        """Rows ``r0:r1`` of ``entry`` (its first axis) into ``out``: one contiguous range."""
        row = entry.itemsize * (int(np.prod(entry.shape[1:], dtype=np.int64)) if len(entry.shape) > 1 else 1)
        _check_out(entry, out, (r1 - r0) * row)
        _pread_into(self._fd(entry.file), out.data.cast("B"), entry.offset + r0 * row)

    def read_cols(self, entry: TensorEntry, c0: int, c1: int, out: np.ndarray) -> None:
        """Columns ``c0:c1`` of the 2-D ``entry`` into ``out`` [rows, c1 - c0]: one ``pread`` per row."""
        rows, cols = entry.shape
        _check_out(entry, out, rows * (c1 - c0) * entry.itemsize)
        fd, item = self._fd(entry.file), entry.itemsize
        for i, view in enumerate(_rows(out)):
            _pread_into(fd, view, entry.offset + (i * cols + c0) * item)

    def close(self) -> None:
        for fd in self._fds.values():
            # The pages just read are cache, not ours to keep: let the kernel drop them now.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        self._fds.clear()


def _rows(out: np.ndarray) -> Iterator[memoryview]:
    for i in range(out.shape[0]):
        yield out[i].data.cast("B")


def _check_out(entry: TensorEntry, out: np.ndarray, nbytes: int) -> None:
    if not out.flags.c_contiguous or out.nbytes != nbytes or out.itemsize != entry.itemsize:
        raise ValueError(f"{entry.name}: output buffer of {out.nbytes} bytes does not fit a {nbytes}-byte slice")
