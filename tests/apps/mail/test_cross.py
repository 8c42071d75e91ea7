from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from joules.apps.mail.cross import cross_evaluate
from joules.bundle import SplitDataset
from joules.registry import Registry
from joules.settings import Settings


def test_each_detector_on_the_others_data(tmp_path: Path, mail_home: Path, tiny_bundle_dir: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(mail_home, home)
    reg = Registry(Settings(home=home))
    reg.register(tiny_bundle_dir, "spam", stage="production")
    out = cross_evaluate(reg)
    assert set(out) == {"sms_model", "email_model"}
    sms_test = SplitDataset.read(reg.load("spam").path / "dataset.jsonl")["test"]
    email_test = SplitDataset.read(reg.load("spam-email").path / "dataset.jsonl")["test"]
    for model in out.values():
        assert model["on_sms"]["n"] == len(sms_test) and model["on_email"]["n"] == len(email_test)
        assert 0 <= model["on_sms"]["f1"] <= 1 and 0 <= model["on_email"]["f1"] <= 1
    # Each model on its own data is what its bundle recorded at training.
    assert out["email_model"]["on_email"]["f1"] == reg.get("spam-email").metrics["test"]["f1"]
    assert out["sms_model"]["on_sms"]["f1"] == reg.get("spam").metrics["test"]["f1"]


def test_a_missing_model_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from joules.apps.mail.cross import main

    monkeypatch.setenv("JOULES_HOME", str(tmp_path / "empty"))
    assert main(["--sms", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cross: error: ") and "nope" in err and "\n" not in err
