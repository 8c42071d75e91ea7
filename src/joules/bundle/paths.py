"""Every file a bundle names must be inside the bundle.

A bundle is registered, checksummed and served as one directory: the registry
records the sha256 of each file in it and checks them before every load. A
path in ``joules.yaml`` (the model, the tokenizer, a file role) or in the ONNX
graph (an external-data location) that leads outside the directory would be
read without that check, and would not travel with the bundle. Such paths are
refused, with the reason, when the bundle is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from joules.errors import BundleError

HINT = "every file a bundle names must be inside the bundle: copy it in and name it relative to the bundle directory"


def resolve_inside(root: Path, rel: Any, what: str) -> Path:
    """``root / rel``, if ``rel`` is a relative path that stays inside ``root`` (symlinks followed)."""
    if not isinstance(rel, str) or not rel.strip():
        raise BundleError(f"bundle {str(root)!r}: {what} must be a file name inside the bundle, got {rel!r}")
    path = Path(rel)
    if path.is_absolute() or rel.startswith("~"):
        raise BundleError(
            f"bundle {str(root)!r}: {what} {rel!r} is an absolute path, outside the bundle (its checksums "
            f"cover only the files inside it); {HINT}"
        )
    base = root.resolve()
    target = (base / path).resolve()
    if not target.is_relative_to(base):
        raise BundleError(
            f"bundle {str(root)!r}: {what} {rel!r} leads outside the bundle (to {str(target)!r}), where its "
            f"checksums do not reach; {HINT}"
        )
    return root / path


def external_data_locations(model: Any) -> Iterator[str]:
    """The ``location`` of every tensor of an ONNX ``ModelProto`` whose data is stored in another file."""
    for tensor in _tensors(model.graph, model):
        if tensor.data_location == 1:  # onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data:
                if entry.key == "location":
                    yield entry.value


def _tensors(graph: Any, model: Any | None = None) -> Iterator[Any]:
    """Every TensorProto of ``graph``: initializers, sparse ones, node attributes and subgraphs (and, at the
    top level, the nodes of the model's local functions)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    nodes = list(graph.node)
    if model is not None:
        nodes += [n for f in model.functions for n in f.node]
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices
            for s in a.sparse_tensors:
                yield s.values
                yield s.indices
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)
