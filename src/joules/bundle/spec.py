"""``joules.yaml``: what a bundle is and how to run it.

Frozen keyword-only dataclasses; validation in ``__post_init__``. The YAML is
read with line numbers kept, so rule errors point at the right line of the
file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from joules.bundle.generation import GenerationSpec
from joules.bundle.inputs import KIND_SETTINGS, TOKENIZED_KINDS
from joules.bundle.inputs import resolve as resolve_kind
from joules.decide import RuleSet
from joules.errors import BundleError

SPEC_FILE = "joules.yaml"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16", "int64", "int32", "bool", "string")
DEFAULT_MAX_LENGTH = 128
# Tokenizer outputs and the model input names they feed (BERT family convention).
TOKENIZER_INPUTS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class Task(StrEnum):
    TEXT_CLASSIFICATION = "text-classification"
    CLASSIFICATION = "classification"  # numeric tensors in, classes out
    TEXT_GENERATION = "text-generation"  # a causal language model: text in, text out (generation.py)


class Activation(StrEnum):
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"  # the model already outputs probabilities


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BundleError(f"input {self.name!r}: dtype {self.dtype!r} is not one of {list(DTYPES)}")
        object.__setattr__(self, "shape", tuple(self.shape))


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How a request becomes the model's feeds: one input kind and its settings (see bundle/inputs.py).

    ``text``: tokenize a text field; ``tensors``: the request carries the model inputs; ``email``: a raw
    message read into one text, then tokenized; ``tabular``: named numeric features into one tensor;
    ``image``: PNG/JPEG bytes decoded into one tensor. Settings of other kinds must stay unset (None).
    """

    kind: str = "text"
    # text and email: the tokenizer and its token limit.
    tokenizer: str = "tokenizer.json"
    max_length: int = DEFAULT_MAX_LENGTH
    text_field: str = "text"
    tail_tokens: int | None = None  # text and email: tokens read from the end of a long text (bundle/inputs.py)
    # Admission refuses NaN and infinities in numeric inputs (a model cannot rank them); a model
    # built to take them (missing values as NaN, say) says so here.
    allow_non_finite: bool = False
    # tabular and image: the graph input they fill and its float dtype.
    input: str | None = None
    dtype: str | None = None
    # tabular
    features: list[str] | None = None
    missing: str | None = None  # error | fill | nan
    fill_value: float | None = None
    # image
    size: list[int] | None = None  # [height, width] (a number in YAML means square)
    layout: str | None = None  # NCHW | NHWC
    channels: int | None = None
    mean: list[float] | None = None  # on pixels scaled to [0, 1], per channel
    std: list[float] | None = None
    max_pixels: int | None = None
    resize: str | None = None  # crop | stretch
    # email
    reads: list[str] | None = None  # from, subject, body
    parts: list[str] | None = None  # text/plain, text/html in order of preference
    max_bytes: int | None = None
    max_parts: int | None = None

    def __post_init__(self) -> None:
        given = {name: getattr(self, name) for name in KIND_SETTINGS}
        for name, value in resolve_kind(self.kind, given).items():
            object.__setattr__(self, name, value)
        if not isinstance(self.max_length, int) or not 1 <= self.max_length <= 8192:
            raise BundleError(f"preprocess.max_length must be a whole number in [1, 8192], got {self.max_length!r}")
        if self.tokenized and self.tail_tokens and self.tail_tokens > self.max_length // 2:
            raise BundleError(
                f"preprocess.tail_tokens ({self.tail_tokens}) must be at most half of max_length ({self.max_length}): "
                "the start of a text is read too"
            )
        if not isinstance(self.allow_non_finite, bool):
            raise BundleError(f"preprocess.allow_non_finite must be true or false, got {self.allow_non_finite!r}")

    @property
    def tokenized(self) -> bool:
        """The model reads token ids made by the bundle's tokenizer."""
        return self.kind in TOKENIZED_KINDS

    def to_dict(self) -> dict[str, Any]:
        """The settings this kind uses (the others are None and left out of joules.yaml)."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if not self.allow_non_finite:
            d.pop("allow_non_finite")  # the default: joules.yaml files stay as they were written before
        if not self.tail_tokens:
            d.pop("tail_tokens", None)  # the default, likewise
        if not self.tokenized:
            for k in ("tokenizer", "max_length", "text_field"):
                d.pop(k, None)
        if self.kind == "email":
            d.pop("text_field", None)  # the request field of an e-mail model is "email"
        return d


@dataclass(frozen=True, kw_only=True)
class Postprocess:
    output: str
    labels: tuple[str, ...]
    activation: Activation = Activation.SOFTMAX
    positive_label: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "activation", Activation(self.activation))
        for x in self.labels:
            if not isinstance(x, str):
                # YAML reads bare no/yes/on/off/1 as booleans and numbers: refuse rather than guess.
                raise BundleError(
                    f"postprocess.labels must be strings, got {x!r} ({type(x).__name__}); quote it in YAML, e.g. '{x}'"
                )
        object.__setattr__(self, "labels", tuple(self.labels))
        if len(self.labels) < 1 or len(set(self.labels)) != len(self.labels):
            raise BundleError(f"postprocess.labels must be distinct class names, got {list(self.labels)}")
        if self.positive_label is not None and self.positive_label not in self.labels:
            raise BundleError(f"postprocess.positive_label {self.positive_label!r} is not one of {list(self.labels)}")

    @property
    def positive(self) -> str:
        """The class whose F1 is reported: the declared one, else the last label."""
        return self.positive_label or self.labels[-1]


@dataclass(frozen=True, kw_only=True)
class BundleSpec:
    name: str
    task: Task
    inputs: tuple[TensorSpec, ...]
    preprocess: Preprocess
    postprocess: Postprocess
    model: str = "model.onnx"
    rules: dict[str, Any] | None = None
    lineage: tuple[dict[str, Any], ...] = ()
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Optional files with a role: "weights" (config.json + model.safetensors for fine-tuning),
    # "dataset" (the split the metrics were measured on).
    files: dict[str, str] = field(default_factory=dict)
    # text-generation only: the decoder's shape, context length, special tokens, chat template.
    generation: GenerationSpec | None = None
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "lineage", tuple(self.lineage))
        if self.format != FORMAT_VERSION:
            raise BundleError(
                f"joules.yaml format {self.format!r} is not supported (this joules reads {FORMAT_VERSION})"
            )
        if self.task is Task.TEXT_CLASSIFICATION and not self.preprocess.tokenized:
            raise BundleError(
                f"a text-classification bundle needs a preprocess.kind that feeds its tokenizer "
                f"({' or '.join(TOKENIZED_KINDS)}), got {self.preprocess.kind!r}"
            )
        if self.task is Task.TEXT_GENERATION:
            if self.generation is None:
                raise BundleError("a text-generation bundle needs a generation section (see docs/generate.md)")
            if self.preprocess.kind != "text":
                raise BundleError("a text-generation bundle needs preprocess.kind: text (its tokenizer)")
            if self.rules is not None:
                raise BundleError("a text-generation bundle cannot carry decision rules: its output is text")
        elif self.generation is not None:
            raise BundleError(f"a {self.task} bundle cannot have a generation section (only text-generation)")

    @property
    def labels(self) -> tuple[str, ...]:
        return self.postprocess.labels

    def ruleset(self, source: str = SPEC_FILE) -> RuleSet | None:
        if self.rules is None:
            return None
        return RuleSet.from_dict(self.rules, self.labels, source)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["task"] = str(self.task)
        d["preprocess"] = self.preprocess.to_dict()
        d["postprocess"]["activation"] = str(self.postprocess.activation)
        d["postprocess"]["labels"] = list(self.postprocess.labels)
        d["inputs"] = [{**asdict(i), "shape": list(i.shape)} for i in self.inputs]
        d["lineage"] = list(self.lineage)
        d["generation"] = self.generation.to_dict() if self.generation is not None else None
        order = [
            "format",
            "name",
            "task",
            "model",
            "inputs",
            "preprocess",
            "postprocess",
            "rules",
            "files",
            "lineage",
            "metrics",
        ]
        if self.generation is not None:
            order.insert(order.index("rules"), "generation")
        return {k: d[k] for k in order}

    def write(self, directory: Path) -> Path:
        path = directory / SPEC_FILE
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = SPEC_FILE) -> BundleSpec:
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a mapping, got {type(data).__name__}")
        try:
            inputs = tuple(TensorSpec(**i) for i in data.get("inputs") or [])
            pre = Preprocess(**(data.get("preprocess") or {}))
            post = Postprocess(**data["postprocess"])
            gen = data.get("generation")
            generation = GenerationSpec.from_dict(gen) if gen is not None else None
            rest = {k: v for k, v in data.items() if k not in ("inputs", "preprocess", "postprocess", "generation")}
            return cls(inputs=inputs, preprocess=pre, postprocess=post, generation=generation, **rest)
        except KeyError as e:
            raise BundleError(f"{source}: missing required field {e.args[0]!r}") from e
        except TypeError as e:
            raise BundleError(f"{source}: {e}") from e
        except ValueError as e:
            raise BundleError(f"{source}: {e}") from e

    @classmethod
    def read(cls, directory: Path) -> BundleSpec:
        path = directory / SPEC_FILE
        if not path.is_file():
            raise BundleError(f"{str(directory)!r} is not a bundle: it has no {SPEC_FILE}")
        text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BundleError(f"{path}: not valid YAML: {e}") from e
        spec = cls.from_dict(data, str(path))
        if spec.rules is not None:
            # Re-parse the rules from the node so that errors carry joules.yaml line numbers.
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            if root is not None:
                node = next(v for k, v in root.value if getattr(k, "value", None) == "rules")
                RuleSet.from_node(node, spec.labels, str(path))
        return spec
