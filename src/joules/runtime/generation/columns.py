"""The decoder's float32 products in a second layout, for batched decode steps of 8 to 16 rows.

ONNX Runtime multiplies ``x [M, K] @ W [K, N]`` with MLAS, which packs ``W``
once at load and then runs its kernel over ``x`` 12 rows at a time (AVX-512).
At ``M = 16`` that is a full pass and a third of a pass, and the products are
bound by neither memory nor arithmetic: a 16-row step of SmolLM2 spends
about 25 ms in them against 16 ms to read the weights once. Written the
other way round, ``y^T [N, M] = W^T [N, K] @ x^T``, the kernel walks the
weights 12 rows at a time against one 16-column panel of ``x``: every weight
is read once and every multiply lands. Measured here (2 cores, AVX-512):
products about 1.5x faster at 12-16 rows; slower for one row (the packed
layout streams a single row at full bandwidth), below 8 rows (the panel is
mostly padding), at 17-32 (two passes over the weights) and for big prompt
chunks. So the engine keeps both: the bundle's graph for every other call,
and this one for calls of ``COLUMN_MIN_TOKENS..COLUMN_MAX_TOKENS`` tokens.

The column graph is built in memory from the bundle's graph at load: every
``MatMul`` with a float32 weight becomes ``FusedMatMul(W^T, x, transB=1)``
(ONNX Runtime's contrib operator) and a ``Transpose``; the tied output head
``Gemm(x, E, transB=1)`` uses ``E [V, K]`` as it is; a gated MLP stays
transposed between its two products; activations stay ``[tokens, width]``
(reshaped for GroupQueryAttention only). The transposed weights are handed
to ONNX Runtime as shared initializers (``SessionOptions.add_initializer``:
read in place, not copied), so the float32 weights are held twice (the
price: about 450 MB for SmolLM2).

Numerics: both layouts do the same multiply-adds per output in the same order
within a block of K, but MLAS splits K into blocks of 256 in the packed layout
and not in this one, so a product over K > 256 can differ in its last bits
between the layouts. A sequence decoded alone (one row, packed layout) and
inside a batch (column layout) can then see logits that differ by rounding
(SmolLM2: up to 8e-5 on logits of 10-20), as on vLLM's default kernels;
greedy tokens only differ at a near tie. ``EngineConfig.batch_invariant``
turns this layout off and keeps every row's bits independent of its
neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from joules.bundle.generation import INPUT_IDS, MS_DOMAIN, is_tied_head

# Calls of COLUMN_MIN_TOKENS..COLUMN_MAX_TOKENS tokens run in the column layout: MLAS' kernel takes the
# activations in one panel of 16 columns, so fewer than 8 pay mostly for padding and 17-32 take two passes
# over the weights. Measured on SmolLM2 (docs/benchmarks.md), 2 rows 0.8x, 4-6 0.9x, 8 1.09x, 12 1.07-1.10x,
# 16 1.15-1.19x, 24 0.87-0.95x, 32 1.08x the speed of the bundle's layout for a whole decode step.
COLUMN_MIN_TOKENS = 8
COLUMN_MAX_TOKENS = 16


@dataclass
class ColumnGraph:
    """The serialized column graph and the transposed weights its session reads in place."""

    model: bytes
    folder: Path  # where the graph's external data lives (the bundle's directory)
    names: list[str] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)

    def session(self, so: Any, providers: list[str]) -> tuple[Any, list[Any]]:
        """An ONNX Runtime session of this graph with SessionOptions ``so``, and the OrtValues it reads in
        place (keep them alive as long as the session)."""
        import onnxruntime as ort

        # The graph is loaded from memory: its external data is found in the bundle's directory.
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.folder))
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        for name, value in zip(self.names, values, strict=True):
            # A shared initializer: ONNX Runtime reads the array in place instead of the graph's data.
            so.add_initializer(name, value)
        return ort.InferenceSession(self.model, so, providers=providers), values


def column_graph(model_path: Path) -> ColumnGraph | None:
    """The column layout of the decoder graph at ``model_path``; None when it has no float32 product to turn."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    base = str(model_path.parent)
    protos = {t.name: t for t in graph.initializer}

    def float_matrix(name: str) -> bool:
        t = protos.get(name)
        return t is not None and t.data_type == TensorProto.FLOAT and len(t.dims) == 2

    def is_head(node: Any) -> bool:
        return is_tied_head(node) and float_matrix(node.input[1])

    if not any((n.op_type == "MatMul" and float_matrix(n.input[1])) or is_head(n) for n in graph.node):
        return None

    out = ColumnGraph(model=b"", folder=model_path.parent)
    nodes: list[Any] = [helper.make_node("Shape", [INPUT_IDS], ["columns.bs"])]
    consts: dict[str, np.ndarray] = {}
    stubs: list[Any] = []

    def out_shape(n: int) -> str:
        """[batch, sequence, n] for a product's output, from the graph's input ids."""
        name = f"columns.shape{n}"
        if f"columns.n{n}" not in consts:
            consts[f"columns.n{n}"] = np.array([n], np.int64)
            nodes.append(helper.make_node("Concat", ["columns.bs", f"columns.n{n}"], [name], axis=0))
        return name

    def flat(k: int) -> str:
        name = f"columns.flat{k}"
        consts.setdefault(name, np.array([-1, k], np.int64))
        return name

    replaced: set[str] = set()

    def transposed(name: str) -> tuple[str, int, int]:
        """The name of weight ``name`` transposed (made once), with its K and N."""
        src = protos[name]
        k, n = (int(d) for d in src.dims)
        wt = name + ".T"
        if name not in replaced:
            out.names.append(wt)
            out.arrays.append(np.ascontiguousarray(numpy_helper.to_array(src, base).T))
            # The graph keeps an initializer of that name and shape for ONNX Runtime to check; its data (the
            # untransposed weight's bytes, never read: the session is given the array) is the original's.
            stub = TensorProto()
            stub.CopyFrom(src)
            stub.name = wt
            del stub.dims[:]
            stub.dims.extend([n, k])
            stubs.append(stub)
            replaced.add(name)
        return wt, k, n

    # Activations stay [tokens, width] from the embedding on (no Reshape around every product): an
    # original value's 2-D version is flat_of[name]; it is given its [batch, sequence, width] shape back
    # under its own name only for an operator that wants it (GroupQueryAttention).
    flat_of: dict[str, str] = {}
    width: dict[str, int] = {}
    present = {i.name for i in graph.input} | set(protos)

    def rows2(x: str, k: int) -> str:
        if x not in flat_of:
            flat_of[x], width[x] = x + ".x2", k
            nodes.append(helper.make_node("Reshape", [x, flat(k)], [x + ".x2"]))
        return flat_of[x]

    def rows3(x: str) -> str:
        """``x`` under its own name, shaped [batch, sequence, width]: every activation of a joules decoder
        graph ahead of the output head has that shape (bundle/generation.py)."""
        if x not in present:
            nodes.append(helper.make_node("Reshape", [flat_of[x], out_shape(width[x])], [x]))
            present.add(x)
        return x

    def flat_output(y: str, n: int) -> str:
        flat_of[y], width[y] = y + ".flat", n
        return y + ".flat"

    def row_wise(node: Any) -> bool:
        """An operator that gives the same result on [tokens, width] as on [batch, sequence, width]."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "SkipSimplifiedLayerNormalization":
            ok = not any(node.output[1:3])
        elif node.op_type == "SimplifiedLayerNormalization":
            ok = attrs.get("axis", -1) == -1 and not any(node.output[1:])
        else:
            ok = node.op_type in ELEMENTWISE
        # Every other input flat too, and constants no more than a vector (broadcast along the last axis).
        activations = [i for i in node.input if i and i not in protos]
        constants = [protos[i] for i in node.input if i in protos]
        return (
            ok
            and bool(activations)
            and all(i in flat_of for i in activations)
            and all(len(t.dims) <= 1 for t in constants)
        )

    # A gated MLP (gate_up product -> Split -> SiLU(gate) * up -> down product) stays in the column layout
    # between its two products: the elementwise part does not care, and two Transposes go.
    mlp = gated_mlps(graph.node, float_matrix, {o.name for o in graph.output})
    for index, node in enumerate(graph.node):
        role = mlp.get(index)
        if role == "up":
            wt, k, _ = transposed(node.input[1])
            x2, y = rows2(node.input[0], k), node.output[0]
            nodes.append(helper.make_node("FusedMatMul", [wt, x2], [y + ".T"], domain=MS_DOMAIN, transB=1, alpha=1.0))
        elif role == "between":
            moved = helper.make_node(
                node.op_type,
                [i + ".T" if i in mlp.tensors else i for i in node.input],
                [o + ".T" for o in node.output],
                domain=node.domain,
            )
            moved.attribute.extend(a for a in node.attribute if not (node.op_type == "Split" and a.name == "axis"))
            if node.op_type == "Split":
                moved.attribute.append(helper.make_attribute("axis", 0))
            nodes.append(moved)
        elif role == "down":
            wt, _, n = transposed(node.input[1])
            y = node.output[0]
            nodes += [
                helper.make_node("MatMul", [wt, node.input[0] + ".T"], [y + ".yT"]),
                helper.make_node("Transpose", [y + ".yT"], [flat_output(y, n)], perm=[1, 0]),
            ]
        elif node.op_type == "MatMul" and float_matrix(node.input[1]):
            wt, k, n = transposed(node.input[1])
            x2, y = rows2(node.input[0], k), node.output[0]
            nodes += [
                helper.make_node("FusedMatMul", [wt, x2], [y + ".yT"], domain=MS_DOMAIN, transB=1, alpha=1.0),
                helper.make_node("Transpose", [y + ".yT"], [flat_output(y, n)], perm=[1, 0]),
            ]
        elif is_head(node):
            x, y = node.input[0] if node.input[0] in present else flat_of[node.input[0]], node.output[0]
            nodes += [
                helper.make_node("FusedMatMul", [node.input[1], x], [y + ".yT"], domain=MS_DOMAIN, transB=1, alpha=1.0),
                helper.make_node("Transpose", [y + ".yT"], [y], perm=[1, 0]),
            ]
            present.add(y)
        elif row_wise(node):
            first = next(i for i in node.input if i in flat_of)
            moved = helper.make_node(
                node.op_type,
                [flat_of.get(i, i) for i in node.input],
                [flat_output(o, width[first]) if o else "" for o in node.output],
                domain=node.domain,
            )
            moved.attribute.extend(node.attribute)
            nodes.append(moved)
        elif is_flattening(node, protos, numpy_helper) and node.input[0] in flat_of:
            # Reshape(x, [-1, width]): x is that already.
            nodes.append(helper.make_node("Reshape", [flat_of[node.input[0]], node.input[1]], list(node.output)))
            present.update(node.output)
        else:
            for i in node.input:
                if i in flat_of:
                    rows3(i)
            nodes.append(node)
            present.update(node.output)
            if node.op_type == "Gather" and node.input[1] == INPUT_IDS and float_matrix(node.input[0]):
                rows2(node.output[0], int(protos[node.input[0]].dims[1]))  # the embedding: flat from here on
    for o in graph.output:
        if o.name in flat_of:
            rows3(o.name)

    kept = [t for t in graph.initializer if t.name not in replaced]
    added = [numpy_helper.from_array(a, name) for name, a in consts.items()]
    del graph.initializer[:]
    graph.initializer.extend(kept + stubs + added)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    out.model = model.SerializeToString()
    return out


# Operators that work value by value, so they give the same result on a transposed tensor.
ELEMENTWISE = frozenset({"QuickGelu", "Sigmoid", "Mul", "Add", "Sub", "Div", "Relu", "Tanh", "Erf", "Gelu"})


class MlpRoles(dict[int, str]):
    """Node index -> "up" | "between" | "down" for the gated MLPs found; ``tensors``: the values between."""

    tensors: set[str]


def gated_mlps(nodes: Any, float_matrix: Any, graph_outputs: set[str]) -> MlpRoles:
    """The gated MLPs of a graph: a product whose only reader is a Split on the last axis, whose halves only
    go through elementwise operators into one product (see ``column_graph``)."""
    from onnx import helper

    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            readers.setdefault(name, []).append(i)
    roles = MlpRoles()
    roles.tensors = set()
    for i, up in enumerate(nodes):
        if up.op_type != "MatMul" or not float_matrix(up.input[1]):
            continue
        first = readers.get(up.output[0], [])
        if len(first) != 1 or nodes[first[0]].op_type != "Split":
            continue
        split = nodes[first[0]]
        axis = next((helper.get_attribute_value(a) for a in split.attribute if a.name == "axis"), 0)
        if axis != -1 or split.input[0] != up.output[0]:
            continue
        between, inside = {first[0]}, set(split.output)
        grew = True
        while grew:  # take in every elementwise node all of whose inputs are inside, until none is left
            grew = False
            for name in list(inside):
                for j in readers.get(name, []):
                    n = nodes[j]
                    if j not in between and n.op_type in ELEMENTWISE and all(x in inside for x in n.input):
                        between.add(j)
                        inside.update(n.output)
                        grew = True
        # Every value inside is read only inside, but for one product that takes the MLP's result.
        outside = {j for name in inside for j in readers.get(name, []) if j not in between}
        down = outside.pop() if len(outside) == 1 else None
        ok = down is not None and nodes[down].op_type == "MatMul" and float_matrix(nodes[down].input[1])
        ok = ok and nodes[down].input[0] in inside and nodes[down].input[1] not in inside
        ok = ok and not (inside | {up.output[0]}) & graph_outputs
        if ok and down is not None:
            roles[i] = "up"
            roles.update(dict.fromkeys(between, "between"))
            roles[down] = "down"
            roles.tensors |= inside | {up.output[0]}
    return roles


def is_flattening(node: Any, protos: dict[str, Any], numpy_helper: Any) -> bool:
    """A Reshape to ``[-1, width]`` by a constant shape."""
    if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in protos:
        return False
    shape = numpy_helper.to_array(protos[node.input[1]])
    return shape.ndim == 1 and len(shape) == 2 and int(shape[0]) == -1
