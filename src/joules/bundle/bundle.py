"""A bundle: the directory that is registered, optimized and served as one unit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from joules.bundle.generation import decoder_graph_io
from joules.bundle.graph import read_graph
from joules.bundle.inputs import ARRAY_KINDS, array_shape
from joules.bundle.paths import external_data_locations, resolve_inside
from joules.bundle.safety import scan_directory
from joules.bundle.spec import SPEC_FILE, TOKENIZER_INPUTS, BundleSpec
from joules.errors import BundleError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    spec: BundleSpec

    @classmethod
    def load(cls, path: str | Path, *, check_model: bool = True) -> Bundle:
        """Read and validate a bundle directory. Pickles anywhere in it are refused."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle {str(root)!r} is not a directory")
        scan_directory(root)
        spec = BundleSpec.read(root)
        bundle = cls(root, spec)
        bundle.validate(check_model=check_model)
        return bundle

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model_path(self) -> Path:
        return self.path / self.spec.model

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.spec.preprocess.tokenizer

    def file(self, role: str) -> Path | None:
        """The file playing ``role`` (e.g. "dataset", "weights_config"), if the bundle has one."""
        rel = self.spec.files.get(role)
        return self.path / rel if rel else None

    def named_files(self) -> list[tuple[str, str]]:
        """(what, path) for every file ``joules.yaml`` names: each must be inside the bundle. A new spec
        field that names a file belongs here."""
        spec = self.spec
        named = [("model file", spec.model), ("tokenizer file", spec.preprocess.tokenizer)]
        return named + [(f"the {role} file", rel) for role, rel in spec.files.items()]

    def validate(self, *, check_model: bool = True) -> None:
        spec = self.spec
        for what, rel in self.named_files():
            resolve_inside(self.path, rel, what)
        if not self.model_path.is_file():
            raise BundleError(f"bundle {str(self.path)!r}: model file {spec.model!r} is missing")
        if spec.preprocess.tokenized and not self.tokenizer_path.is_file():
            raise BundleError(f"bundle {str(self.path)!r}: tokenizer file {spec.preprocess.tokenizer!r} is missing")
        for role, rel in spec.files.items():
            if not (self.path / rel).is_file():
                raise BundleError(f"bundle {str(self.path)!r}: the {role} file {rel!r} named in {SPEC_FILE} is missing")
        template = spec.generation.chat_template if spec.generation is not None else None
        if template is not None and not (self.path / template).is_file():
            raise BundleError(
                f"bundle {str(self.path)!r}: the chat template {template!r} named in {SPEC_FILE} is missing"
            )
        if spec.generation is not None and spec.generation.weights_only:
            for role in ("weights_config", "weights"):
                if role not in spec.files:
                    raise BundleError(
                        f"bundle {str(self.path)!r}: a weights-only bundle names its {role} file in {SPEC_FILE} files"
                    )
        elif check_model:
            if spec.generation is not None:
                self._check_decoder_graph(spec.generation.num_layers)
            else:
                self._check_graph()

    def _check_decoder_graph(self, num_layers: int) -> None:
        """A text-generation graph has the decoder interface of bundle/generation.py for its layer count."""
        model = read_graph(self.model_path)
        initializers = {i.name for i in model.graph.initializer}
        got_in = sorted(i.name for i in model.graph.input if i.name not in initializers)
        got_out = sorted(o.name for o in model.graph.output)
        want_in, want_out = decoder_graph_io(num_layers)
        if got_in != sorted(want_in) or got_out != sorted(want_out):
            raise BundleError(
                f"bundle {str(self.path)!r}: the decoder graph does not have the interface of "
                f"{num_layers} layers (inputs {sorted(set(want_in) ^ set(got_in))[:6]}, "
                f"outputs {sorted(set(want_out) ^ set(got_out))[:6]} differ); re-import the model"
            )

    def _check_graph(self) -> None:
        """The ONNX graph's inputs and outputs agree with joules.yaml (reads the graph, not the weights)."""
        model = read_graph(self.model_path)
        model_dir = Path(self.spec.model).parent
        for location in external_data_locations(model):
            # ONNX Runtime reads external data relative to the model file's directory.
            rel = str(model_dir / location) if location and not Path(location).is_absolute() else location
            if not resolve_inside(self.path, rel, f"the external data of {self.spec.model!r}").is_file():
                raise BundleError(
                    f"bundle {str(self.path)!r}: {rel!r}, the external data of {self.spec.model!r}, is missing"
                )
        initializers = {i.name for i in model.graph.initializer}
        graph_inputs = [i.name for i in model.graph.input if i.name not in initializers]
        outputs = [o.name for o in model.graph.output]
        declared = [i.name for i in self.spec.inputs]
        if sorted(graph_inputs) != sorted(declared):
            raise BundleError(
                f"bundle {str(self.path)!r}: {SPEC_FILE} declares inputs {declared} but the graph takes {graph_inputs}"
            )
        if self.spec.postprocess.output not in outputs:
            raise BundleError(
                f"bundle {str(self.path)!r}: postprocess.output {self.spec.postprocess.output!r} "
                f"is not a graph output; outputs are {outputs}"
            )
        if self.spec.preprocess.tokenized:
            unknown = [n for n in graph_inputs if n not in TOKENIZER_INPUTS]
            if unknown:
                raise BundleError(
                    f"bundle {str(self.path)!r}: a text model's inputs must come from the tokenizer "
                    f"({list(TOKENIZER_INPUTS)}); {unknown} cannot be fed"
                )
        elif self.spec.preprocess.kind in ARRAY_KINDS:
            self._check_array_input(model, graph_inputs)

    def _check_array_input(self, model: Any, graph_inputs: list[str]) -> None:
        """A tabular or image model has one graph input, the one ``preprocess.input`` names, of a fitting shape."""
        pre = self.spec.preprocess
        if graph_inputs != [pre.input]:
            raise BundleError(
                f"bundle {str(self.path)!r}: preprocess.input is {pre.input!r} but the graph takes {graph_inputs}; "
                f"a {pre.kind} model has exactly one input and preprocess.input names it"
            )
        node = next(i for i in model.graph.input if i.name == pre.input)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in node.type.tensor_type.shape.dim]
        expected = array_shape(pre)
        if len(dims) != len(expected) + 1 or any(
            d is not None and d != e for d, e in zip(dims[1:], expected, strict=False)
        ):
            shown = ["N" if d is None else d for d in dims]
            raise BundleError(
                f"bundle {str(self.path)!r}: graph input {pre.input!r} has shape {shown}, but preprocess "
                f"({pre.kind}) makes rows of shape [N, {', '.join(map(str, expected))}]"
            )

    def files(self) -> list[Path]:
        """Every file of the bundle, relative to its directory, sorted."""
        return sorted(p.relative_to(self.path) for p in self.path.rglob("*") if p.is_file())

    def checksums(self) -> dict[str, str]:
        return {str(rel): sha256_file(self.path / rel) for rel in self.files()}

    def size_bytes(self) -> int:
        return sum((self.path / rel).stat().st_size for rel in self.files())

    def with_spec(self, **changes: Any) -> Bundle:
        """The same directory with spec fields changed in memory (call ``save`` to write)."""
        return Bundle(self.path, replace(self.spec, **changes))

    def save(self) -> None:
        self.spec.write(self.path)
