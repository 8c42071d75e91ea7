"""Small ONNX graph utilities shared by the passes: op counts, sample inputs, parity runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from joules.bundle import Bundle

# Used when a text model comes without a dataset: short, long, spam-like, ham-like.
FALLBACK_TEXTS = [
    "Hi",
    "Are we still on for lunch tomorrow? Let me know.",
    "WINNER!! As a valued customer you have been selected to receive a 900 prize reward! Call 09061701461 now.",
    "ok see you there",
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 to receive entry",
]


def load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def save(model: Any, path: Path) -> None:
    import onnx

    onnx.save(model, str(path))


def op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def parameter_count(model: Any) -> int:
    """Elements in the graph's initializers (weights), whatever their type."""
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer))


def _constant(model: Any, name: str, producers: dict[str, Any], inits: dict[str, Any]) -> np.ndarray | None:
    from onnx import numpy_helper

    if name in inits:
        return np.asarray(numpy_helper.to_array(inits[name]))
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return np.asarray(numpy_helper.to_array(a.t))
    return None


def explicit_head_counts(model: Any) -> int:
    """Write the number of heads into attention reshapes exported as ``view(..., -1, head_size)``.

    transformers 5 reshapes Q, K and V to ``(batch, seq, -1, head_size)``; ONNX
    Runtime's attention fusion reads the head count from that shape constant
    (``FusionAttention.get_num_heads_and_hidden_size_from_concat``) and gives up
    on -1 unless one global count is passed in, which is wrong for a model whose
    layers were pruned to different head counts. The count is the projection's
    output width (its bias or weight) divided by the head size. Returns how
    many reshapes were rewritten.
    """
    from onnx import numpy_helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        concat = producers.get(node.input[1])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads = _constant(model, concat.input[2], producers, inits)
        size = _constant(model, concat.input[3], producers, inits)
        if heads is None or size is None or heads.size != 1 or size.size != 1:
            continue
        if int(heads.reshape(-1)[0]) != -1 or int(size.reshape(-1)[0]) <= 0:
            continue
        width = _output_width(node.input[0], producers, inits)
        head_size = int(size.reshape(-1)[0])
        if width is None or width % head_size:
            continue
        name = f"{concat.name or concat.output[0]}/joules_heads"
        graph.initializer.append(numpy_helper.from_array(np.array([width // head_size], dtype=np.int64), name))
        concat.input[2] = name
        rewritten += 1
    return rewritten


def _output_width(tensor: str, producers: dict[str, Any], inits: dict[str, Any]) -> int | None:
    """Last dimension of a linear layer's output: from its bias (Add) or weight (MatMul)."""
    node = producers.get(tensor)
    if node is None:
        return None
    if node.op_type == "Add":
        for i in node.input:
            if i in inits and len(inits[i].dims) == 1:
                return int(inits[i].dims[0])
        for i in node.input:
            width = _output_width(i, producers, inits)
            if width is not None:
                return width
    if node.op_type == "MatMul" and node.input[1] in inits:
        return int(inits[node.input[1]].dims[-1])
    return None


def sample_feeds(
    bundle: Bundle,
    texts: list[str] | None = None,
    *,
    rows: int = 32,
    batch: int = 16,
    seed: int = 0,
    same_length: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Input batches for parity checks: tokenized texts for text models, seeded random tensors otherwise.

    ``same_length`` pads every batch to the longest row of the sample (ONNX
    Runtime's histogram calibrators stack the batches, so their shapes must agree).
    """
    from joules.runtime.executor import ORT_TYPES
    from joules.runtime.preprocess import TextPreprocessor

    if bundle.spec.preprocess.tokenized:
        pool = texts or FALLBACK_TEXTS
        rng = np.random.default_rng(seed)
        chosen = [pool[i] for i in rng.permutation(len(pool))[:rows]]
        names = [i.name for i in bundle.spec.inputs]
        pre = TextPreprocessor.from_spec(bundle.tokenizer_path, bundle.spec.preprocess, names)
        enc = pre.encode(chosen)
        order = np.argsort([len(e.ids) for e in enc], kind="stable")
        batches = [pre.batch([enc[i] for i in order[s : s + batch]], {}) for s in range(0, len(order), batch)]
        if same_length:
            longest = max(len(e.ids) for e in enc)
            pads = {"input_ids": pre.pad_id, "attention_mask": 0, "token_type_ids": 0}
            batches = [
                {
                    k: np.pad(v, ((0, 0), (0, longest - v.shape[1])), constant_values=pads.get(k, 0))
                    for k, v in b.items()
                }
                for b in batches
            ]
        return batches
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for meta in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (rows if k == 0 else 1) for k, d in enumerate(meta.shape)]
        dtype = ORT_TYPES.get(meta.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[meta.name] = rng.normal(size=shape).astype(dtype)
        else:
            feeds[meta.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return [feeds]


def run_output(model_path: Path, feeds: list[dict[str, np.ndarray]], output: str) -> np.ndarray:
    """``output`` of the model for every batch in ``feeds``, concatenated along rows."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    parts = [session.run([output], {k: v for k, v in f.items() if k in wanted})[0] for f in feeds]
    return np.concatenate([np.asarray(p, dtype=np.float32).reshape(len(p), -1) for p in parts])
