from __future__ import annotations

import pytest

from joules.errors import InvalidNameError
from joules.registry import ModelRef, parse_ref, validate_name


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "", "n" * 200, "tab\there", "nl\n", "..", ".hidden", "a b", "x:y:z", "é", "a\\b"]
)
def test_bad_names_are_refused_with_what_a_valid_name_is(bad: str) -> None:
    with pytest.raises(InvalidNameError, match="a model name is 1 to 64 characters"):
        validate_name(bad)


@pytest.mark.parametrize("good", ["spam", "spam-distilled_v2", "a", "A.b-c_d", "n" * 64])
def test_good_names(good: str) -> None:
    assert validate_name(good) == good


def test_refs() -> None:
    assert parse_ref("spam") == ModelRef("spam", None)
    assert parse_ref("spam:3") == ModelRef("spam", 3)
    assert str(parse_ref("spam:3")) == "spam:3"
    for bad in ("spam:", "spam:0", "spam:-1", "spam:x", "spam:1.5", "../x:1"):
        with pytest.raises(InvalidNameError):
            parse_ref(bad)
