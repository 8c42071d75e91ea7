"""Decision rules: turn a model's outputs into an action.

A rule set is ordered; the first rule whose condition holds wins, and the
default applies when none does::

    rules:
      - when: spam >= 0.90
        action: move_to_spam
      - when: spam >= 0.50
        action: flag_for_review
    default: deliver_to_inbox

A condition is one or more comparisons joined by ``and``. The names it may use
are the model's class labels (the probability of that class), ``confidence``
(the highest probability) and ``label`` (the predicted class, compared with
``==`` or ``!=``). The rule set is checked when it is loaded: unknown names,
bad operators, rules that can never match (alone, or because earlier rules
already take every case they would) and a missing default are reported with
their line.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from joules.errors import RuleError

OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_COMPARISON = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*([<>=!]+)\s*(.+?)\s*$")
LABEL, CONFIDENCE = "label", "confidence"
# More representative points than this and the never-matches check is skipped.
_MAX_COVERAGE_POINTS = 200_000


@dataclass(frozen=True)
class Comparison:
    name: str
    op: str
    value: float | str

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.value}"


@dataclass(frozen=True)
class Rule:
    when: tuple[Comparison, ...]
    action: str
    line: int

    @property
    def condition(self) -> str:
        return " and ".join(str(c) for c in self.when)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    default: str
    labels: tuple[str, ...]
    source: str = "<rules>"

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, labels: Sequence[str]) -> RuleSet:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise RuleError(f"cannot read rule file {str(p)!r}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise RuleError(f"rule file {str(p)!r} is not UTF-8 text: {e}") from e
        return cls.from_text(text, labels, source=str(p))

    @classmethod
    def from_text(cls, text: str, labels: Sequence[str], source: str = "<rules>") -> RuleSet:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            raise RuleError(f"{source}: not valid YAML: {e}") from e
        if node is None:
            raise RuleError(f"{source}:1: the rule set is empty; it needs 'rules' and 'default'")
        return cls.from_node(node, labels, source)

    @classmethod
    def from_node(cls, node: yaml.Node, labels: Sequence[str], source: str = "<rules>") -> RuleSet:
        """Build from a YAML node (keeps real line numbers when embedded in joules.yaml)."""
        labels = tuple(labels)
        if not isinstance(node, yaml.MappingNode):
            raise RuleError(f"{_where(source, node)}: a rule set is a mapping with 'rules' and 'default'")
        fields = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        unknown = sorted(set(fields) - {"rules", "default"})
        if unknown:
            raise RuleError(f"{_where(source, node)}: unknown keys {unknown}; a rule set has 'rules' and 'default'")
        default = fields.get("default")
        if default is None:
            raise RuleError(
                f"{_where(source, node)}: the rule set has no default action; add 'default: <action>' "
                "for messages no rule matches"
            )
        if not isinstance(default, yaml.ScalarNode) or not str(default.value).strip():
            raise RuleError(f"{_where(source, default)}: 'default' must be an action name")
        rules_node = fields.get("rules")
        rules: list[Rule] = []
        if rules_node is not None:
            if not isinstance(rules_node, yaml.SequenceNode):
                raise RuleError(f"{_where(source, rules_node)}: 'rules' must be a list of {{when, action}}")
            rules = [_parse_rule(item, labels, source) for item in rules_node.value]
        ruleset = cls(tuple(rules), str(default.value).strip(), labels, source)
        ruleset._check_reachable()
        return ruleset

    @classmethod
    def from_dict(cls, data: dict[str, Any], labels: Sequence[str], source: str = "<rules>") -> RuleSet:
        return cls.from_text(yaml.safe_dump(data, sort_keys=False), labels, source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": [{"when": r.condition, "action": r.action} for r in self.rules],
            "default": self.default,
        }

    @property
    def actions(self) -> list[str]:
        return list(dict.fromkeys([*(r.action for r in self.rules), self.default]))

    # -- evaluation ------------------------------------------------------------------------------

    def decide(self, probabilities: np.ndarray) -> list[str]:
        """One action per row of ``probabilities`` ([N, C], columns in label order)."""
        probs = np.asarray(probabilities)
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise RuleError(
                f"rules expect probabilities of shape [N, {len(self.labels)}] for labels "
                f"{list(self.labels)}, got shape {list(probs.shape)}"
            )
        n = probs.shape[0]
        chosen = np.full(n, -1, dtype=np.int64)
        for i, rule in enumerate(self.rules):
            mask = chosen < 0
            if not mask.any():
                break
            for c in rule.when:
                mask &= _evaluate(c, probs, self.labels)
            chosen[mask] = i
        names = [r.action for r in self.rules]
        return [names[c] if c >= 0 else self.default for c in chosen.tolist()]

    # -- checks ----------------------------------------------------------------------------------

    def _check_reachable(self) -> None:
        grid = _grid(self.rules, self.labels)
        regions = [_region(r, grid) for r in self.rules]
        for i, (rule, region) in enumerate(zip(self.rules, regions, strict=True)):
            if any(not s for s in region.values()):
                raise RuleError(
                    f"{self.source}:{rule.line}: rule '{rule.condition}' -> {rule.action} can never match "
                    "(probabilities and confidence lie in [0, 1], and its comparisons exclude each other)"
                )
            covering = _covered_by(region, regions[:i])
            if covering:
                earlier = ", ".join(f"line {self.rules[j].line} ('{self.rules[j].condition}')" for j in covering)
                raise RuleError(
                    f"{self.source}:{rule.line}: rule '{rule.condition}' -> {rule.action} can never match: "
                    f"earlier rules at {earlier} already match every case it would; reorder or remove it"
                )


def _where(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"


def _parse_rule(item: yaml.Node, labels: tuple[str, ...], source: str) -> Rule:
    where = _where(source, item)
    if not isinstance(item, yaml.MappingNode):
        raise RuleError(
            f"{where}: each rule is a mapping with 'when' and 'action', e.g. {{when: spam >= 0.9, action: block}}"
        )
    fields = {k.value: v for k, v in item.value if isinstance(k, yaml.ScalarNode)}
    unknown = sorted(set(fields) - {"when", "action"})
    if unknown:
        raise RuleError(f"{where}: unknown keys {unknown} in a rule; a rule has 'when' and 'action'")
    for key in ("when", "action"):
        if key not in fields or not isinstance(fields[key], yaml.ScalarNode) or not str(fields[key].value).strip():
            raise RuleError(f"{where}: the rule needs a non-empty '{key}'")
    when_node = fields["when"]
    line = when_node.start_mark.line + 1
    parts = re.split(r"\s+and\s+", str(when_node.value).strip())
    comparisons = tuple(_parse_comparison(p, labels, f"{source}:{line}") for p in parts)
    return Rule(comparisons, str(fields["action"].value).strip(), item.start_mark.line + 1)


def _parse_comparison(text: str, labels: tuple[str, ...], where: str) -> Comparison:
    m = _COMPARISON.match(text)
    if not m:
        raise RuleError(
            f"{where}: cannot read the condition {text!r}; write '<output> <operator> <value>', e.g. 'spam >= 0.9'"
        )
    name, op, raw = m.groups()
    if op not in OPERATORS:
        raise RuleError(f"{where}: bad operator {op!r} in {text!r}; use one of {', '.join(OPERATORS)}")
    outputs = [*labels, CONFIDENCE, LABEL]
    if name not in outputs:
        raise RuleError(f"{where}: unknown output {name!r} in {text!r}; this model's outputs are {', '.join(outputs)}")
    if name == LABEL:
        if op not in ("==", "!="):
            raise RuleError(f"{where}: 'label' is compared with == or !=, not {op!r}")
        value = raw.strip("'\"")
        if value not in labels:
            raise RuleError(f"{where}: label {value!r} in {text!r} is not one of {list(labels)}")
        return Comparison(name, op, value)
    try:
        number = float(raw)
    except ValueError:
        raise RuleError(
            f"{where}: {raw!r} in {text!r} is not a number; probabilities are compared with numbers in [0, 1]"
        ) from None
    if not math.isfinite(number):
        raise RuleError(f"{where}: {raw!r} in {text!r} is not a finite number")
    return Comparison(name, op, number)


def _evaluate(c: Comparison, probs: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    fn = OPERATORS[c.op]
    if c.name == LABEL:
        predicted = probs.argmax(axis=1)
        return np.asarray(fn(predicted, labels.index(str(c.value))))
    column = probs.max(axis=1) if c.name == CONFIDENCE else probs[:, labels.index(c.name)]
    return np.asarray(fn(column, c.value))


# -- coverage: which values of each output a rule accepts ------------------------------------------
# Every threshold in the rule set is a point of the grid, and so is the midpoint
# between each pair of neighbours. A comparison's truth is constant between
# neighbouring thresholds, so checking the grid points is exact. A rule's
# region is a product (a conjunction of one-variable comparisons), so it is one
# set of grid points per variable.

Region = dict[str, set[Any]]


def _grid(rules: Sequence[Rule], labels: tuple[str, ...]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for v in [*labels, CONFIDENCE]:
        bounds = {0.0, 1.0} | {
            float(c.value)
            for r in rules
            for c in r.when
            if c.name == v and isinstance(c.value, float) and 0.0 <= c.value <= 1.0
        }
        s = sorted(bounds)
        grid[v] = s + [(a + z) / 2 for a, z in itertools.pairwise(s)]
    grid[LABEL] = list(labels)
    return grid


def _region(rule: Rule, grid: dict[str, list[Any]]) -> Region:
    region: Region = {v: set(points) for v, points in grid.items()}
    for c in rule.when:
        fn = OPERATORS[c.op]
        region[c.name] = {x for x in region[c.name] if fn(x, c.value)}
    return region


def _covered_by(region: Region, earlier: list[Region]) -> list[int] | None:
    """Indices of earlier rules that together match every point of ``region``, or None."""
    if not earlier:
        return None
    keys = list(region)
    if math.prod(len(region[k]) for k in keys) > _MAX_COVERAGE_POINTS:
        return None
    used: set[int] = set()
    for point in itertools.product(*(sorted(region[k], key=str) for k in keys)):
        hit = next(
            (j for j, reg in enumerate(earlier) if all(x in reg[k] for k, x in zip(keys, point, strict=True))),
            None,
        )
        if hit is None:
            return None
        used.add(hit)
    return sorted(used)
