from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from joules.decide import RuleSet
from joules.errors import RuleError

LABELS = ("ham", "spam")
SPAM_RULES = """\
rules:
  - when: spam >= 0.90
    action: move_to_spam
  - when: spam >= 0.50
    action: flag_for_review
default: deliver_to_inbox
"""


def probs(*spam: float) -> np.ndarray:
    s = np.array(spam, dtype=np.float32)
    return np.stack([1 - s, s], axis=1)


def test_first_match_wins() -> None:
    rs = RuleSet.from_text(SPAM_RULES, LABELS)
    assert rs.decide(probs(0.95, 0.9, 0.89, 0.5, 0.49, 0.0)) == [
        "move_to_spam",
        "move_to_spam",
        "flag_for_review",
        "flag_for_review",
        "deliver_to_inbox",
        "deliver_to_inbox",
    ]
    assert rs.actions == ["move_to_spam", "flag_for_review", "deliver_to_inbox"]


def test_label_and_confidence_conditions() -> None:
    text = """\
rules:
  - when: label == spam and confidence >= 0.8
    action: block
  - when: label != ham
    action: review
default: allow
"""
    rs = RuleSet.from_text(text, LABELS)
    assert rs.decide(probs(0.9, 0.6, 0.1)) == ["block", "review", "allow"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (SPAM_RULES.replace("spam >= 0.90", "spma >= 0.90"), 2, ["unknown output 'spma'", "ham, spam"]),
        (SPAM_RULES.replace(">= 0.90", "=> 0.90"), 2, ["bad operator '=>'"]),
        (SPAM_RULES.replace("0.50", "high"), 4, ["'high'", "not a number"]),
        (SPAM_RULES.replace("default: deliver_to_inbox\n", ""), 1, ["no default action"]),
        (SPAM_RULES.replace("0.90", "0.40"), 4, ["can never match", "line 2"]),
        (SPAM_RULES.replace("spam >= 0.90", "spam > 1.0"), 2, ["can never match"]),
        (SPAM_RULES.replace("spam >= 0.90", "spam >= 0.9 and spam < 0.1"), 2, ["can never match"]),
        (SPAM_RULES.replace("spam >= 0.50", "label == eggs"), 4, ["'eggs'"]),
        (SPAM_RULES.replace("    action: move_to_spam\n", ""), 2, ["needs a non-empty 'action'"]),
        (SPAM_RULES.replace("when:", "wen:", 1), 2, ["unknown keys ['wen']"]),
    ],
)
def test_errors_name_the_line(text: str, line: int, words: list[str]) -> None:
    with pytest.raises(RuleError) as e:
        RuleSet.from_text(text, LABELS, source="rules.yaml")
    message = str(e.value)
    assert message.startswith(f"rules.yaml:{line}:"), message
    for w in words:
        assert w in message, message


def test_rule_covered_by_two_earlier_rules_is_reported() -> None:
    text = """\
rules:
  - when: spam >= 0.5
    action: a
  - when: spam < 0.5
    action: b
  - when: confidence >= 0.9
    action: c
default: d
"""
    with pytest.raises(RuleError, match=r"rules.yaml:6: .*line 2 .*line 4"):
        RuleSet.from_text(text, LABELS, source="rules.yaml")


def test_yaml_errors_and_empty_files() -> None:
    with pytest.raises(RuleError, match="not valid YAML"):
        RuleSet.from_text("rules: [", LABELS)
    with pytest.raises(RuleError, match="empty"):
        RuleSet.from_text("", LABELS)


def test_missing_rule_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuleError, match="cannot read rule file"):
        RuleSet.from_file(tmp_path / "nope.yaml", LABELS)


def _reference(thresholds: list[tuple[float, str]], default: str, spam: float) -> str:
    for t, action in thresholds:
        if spam >= t:
            return action
    return default


thresholds = st.lists(st.floats(0.0, 1.0, allow_nan=False, width=32), min_size=1, max_size=5, unique=True)


@settings(max_examples=200, deadline=None)
@given(ts=thresholds, scores=st.lists(st.floats(0.0, 1.0, allow_nan=False, width=32), min_size=1, max_size=50))
def test_evaluation_matches_a_plain_loop(ts: list[float], scores: list[float]) -> None:
    # Descending thresholds never shadow each other, so every such rule set is valid.
    ordered = [(t, f"a{i}") for i, t in enumerate(sorted(ts, reverse=True))]
    body = "".join(f"  - when: spam >= {t!r}\n    action: {a}\n" for t, a in ordered)
    rs = RuleSet.from_text(f"rules:\n{body}default: none\n", LABELS)
    p = probs(*scores)
    got = rs.decide(p)
    assert got == [_reference(ordered, "none", float(s)) for s in p[:, 1]]


@settings(max_examples=100, deadline=None)
@given(ts=thresholds)
def test_ascending_thresholds_are_always_rejected(ts: list[float]) -> None:
    # An ascending list: the first rule (lowest threshold) takes everything the later ones would.
    if len(ts) < 2:
        return
    ordered = sorted(ts)
    body = "".join(f"  - when: spam >= {t!r}\n    action: a{i}\n" for i, t in enumerate(ordered))
    with pytest.raises(RuleError, match="can never match"):
        RuleSet.from_text(f"rules:\n{body}default: none\n", LABELS)


def test_decide_checks_shape() -> None:
    rs = RuleSet.from_text(SPAM_RULES, LABELS)
    with pytest.raises(RuleError, match="shape"):
        rs.decide(np.zeros((3, 3)))
