"""README: "Errors are one line on stderr (exit code 2) that says what was wrong, the value and how
to fix it". One user error per command, each through the real `joules` process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import run_joules


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, trained_home: Path) -> Path:
    """A copy of the trained home (spam:1 in production); every command below fails before writing."""
    h = tmp_path_factory.mktemp("user-errors") / "home"
    shutil.copytree(trained_home, h)
    return h


# (arguments, what the one error line must say); {tmp} is a scratch directory, {csv} a valid input.
CASES = [
    (["predict", "nope", "hi"], "no model named 'nope'"),
    (["predict", "spam", "hi", "--rules", "{tmp}/missing.yaml"], "cannot read rule file"),
    (["predict", "spam", "hi", "--threads", "-1"], "got intra=-1"),
    (["models", "show", "spam:99"], "has no version 99"),
    (["models", "promote", "spam", "99"], "has no version 99"),
    (["batch", "spam", "{tmp}/missing.csv", "-o", "{tmp}/out.csv"], "does not exist"),
    (["batch", "spam", "{csv}", "-o", "{tmp}/out.csv", "--text-column", "body"], "no 'body' column"),
    (["train", "spam", "--epochs", "0"], "epochs must be >= 1, got 0"),
    (["import", "{tmp}/missing.onnx", "--name", "x"], "nothing to import"),
    (["serve", "spam", "--port", "70000"], "got 70000"),
    (["stream", "spam", "--source", "bogus://x"], "'bogus://x' is not a Redis stream URL"),
    (["publish", "{tmp}/missing.jsonl", "--to", "redis://127.0.0.1:1/s"], "does not exist"),
    (["optimize", "spam", "--budget-minutes", "0"], "--budget-minutes must be > 0"),
    (["bench", "spam", "--scenario", "server"], "exactly one of --qps"),
    (["bench", "spam", "--scenario", "single-stream", "--url", "ftp://x"], "got 'ftp://x'"),
    (["cost", "spam", "--per-day", "-5"], "--per-day must be >= 0, got -5"),
]


@pytest.mark.parametrize(("args", "says"), CASES, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(CASES)])
def test_a_user_error_is_one_line_and_exit_code_2(home: Path, tmp_path: Path, args: list[str], says: str) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n1,hello\n")
    argv = [a.format(tmp=tmp_path, csv=csv) for a in args]
    proc = run_joules(*argv, home=home, timeout=300)
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("joules: error:")]
    assert proc.returncode == 2, (argv, proc.returncode, proc.stderr[-2000:])
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line, last: {proc.stderr[-2000:]}"
    assert says in errors[0] and "Traceback" not in proc.stderr, errors[0]
    assert proc.stdout == "", "nothing on stdout when the command fails"


@pytest.mark.parametrize("args", [["batch"], ["serve", "--port", "x"], ["bench", "spam"], ["frobnicate"]])
def test_bad_arguments_exit_2(home: Path, args: list[str]) -> None:
    proc = run_joules(*args, home=home, timeout=120)
    assert proc.returncode == 2 and ": error:" in proc.stderr.strip().splitlines()[-1], proc.stderr
