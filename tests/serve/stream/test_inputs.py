"""``joules stream`` (JSONL on stdin) on e-mail, tabular and image models: verdicts, and dead letters with the
reason every mode gives."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import JOULES
from tests.runtime.inputs.samples import png_bomb
from tests.serve.inputs_models import BROKEN_MAIL, MAIL, make_inputs_home, png, tab_expected


@pytest.fixture(scope="module")
def inputs_home(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> tuple[Path, Any]:
    work = tmp_path_factory.mktemp("inputs-stream")
    wb = make_inputs_home(work / "home", tiny_bundle_dir, work)
    return work / "home", wb


def stream(home: Path, model: str, messages: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    proc = subprocess.run(
        [*JOULES, "stream", model, "--source", "-"],
        input="".join(json.dumps(m) + "\n" for m in messages).encode(),
        capture_output=True,
        env={**os.environ, "JOULES_HOME": str(home)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(out) == len(messages)
    return {r["id"]: r for r in out}


def test_email_messages(inputs_home: tuple[Path, Any]) -> None:
    home, _ = inputs_home
    out = stream(
        home,
        "mail",
        [{"id": 1, "email": MAIL.decode()}, {"id": 2, "email": BROKEN_MAIL.decode("latin-1")}, {"id": 3}],
    )
    assert out[1]["label"] in ("ham", "spam")
    assert out[2]["reason"].startswith("not an e-mail: no header field")
    assert out[3]["reason"] == "missing field 'email'"


def test_tabular_fields(inputs_home: tuple[Path, Any]) -> None:
    home, (w, b) = inputs_home
    x = [[0.5, 1.0, -2.0, 3.0]]
    out = stream(
        home,
        "tab",
        [
            {"id": 1, "d": 3.0, "c": -2.0, "b": "1.0", "a": 0.5, "extra": "x"},
            {"id": 2, "a": 1, "b": 1, "c": "?", "d": 1},
        ],
    )
    assert out[1]["label"] == tab_expected(w, b, x)[0]
    assert out[2]["reason"] == "feature 'c': '?' is not a number"


def test_images_as_base64(inputs_home: tuple[Path, Any]) -> None:
    home, _ = inputs_home

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    light = png(240)
    out = stream(
        home,
        "img",
        [
            {"id": 1, "image": {"b64": b64(light)}},
            {"id": 2, "image": b64(png(3))},
            {"id": 3, "image": {"b64": b64(light[:40])}},
            {"id": 4, "image": {"b64": b64(png_bomb(10_000, 10_000))}},
        ],
    )
    assert (out[1]["label"], out[2]["label"]) == ("light", "dark")
    assert "truncated" in out[3]["reason"]
    assert "over the limit" in out[4]["reason"]
