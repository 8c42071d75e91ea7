"""``joules batch`` over what users have: folders of .eml files or images, an mbox, a CSV of image paths,
feature tables by column name; unreadable or refused items are error rows with their reason."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from joules.errors import DataError
from joules.registry import Registry
from joules.runtime import Predictor
from joules.serve.batch import BatchConfig, run_batch
from joules.settings import Settings
from tests.helpers import run_joules
from tests.runtime.inputs.samples import jpeg_with_size, png_bomb
from tests.serve.inputs_models import BROKEN_MAIL, FEATURES, MAIL, make_inputs_home, png, tab_expected


@pytest.fixture(scope="module")
def inputs_home(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path) -> tuple[Path, Any]:
    work = tmp_path_factory.mktemp("inputs-batch")
    wb = make_inputs_home(work / "home", tiny_bundle_dir, work)
    return work / "home", wb


def batch(home: Path, model: str, source: Path, out: Path, *extra: str) -> dict[str, Any]:
    proc = run_joules("batch", model, str(source), "-o", str(out), "--no-progress", "--json", *extra, home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def read_out(out: Path) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    errs = [json.loads(line) for line in Path(str(out) + ".errors.jsonl").read_text(encoding="utf-8").splitlines()]
    return rows, errs


def test_folder_of_eml_files_and_an_mbox(inputs_home: tuple[Path, Any], tmp_path: Path) -> None:
    home, _ = inputs_home
    mail = tmp_path / "mail"
    mail.mkdir()
    for i in range(3):
        (mail / f"m{i}.eml").write_bytes(MAIL.replace(b"lunch", f"lunch {i}".encode()))
    (mail / "garbage.eml").write_bytes(BROKEN_MAIL)
    (mail / "notes.txt").write_text("not read: not an .eml file")
    (mail / "sub").mkdir()
    (mail / "sub" / "deep.eml").write_bytes(MAIL)  # subfolders are not read
    summary = batch(home, "mail", mail, tmp_path / "out.csv")
    assert (summary["rows"], summary["scored"], summary["errors"]) == (4, 3, 1)
    rows, errs = read_out(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["m0.eml", "m1.eml", "m2.eml"]
    assert {r["label"] for r in rows} <= {"ham", "spam"}
    assert errs[0]["id"] == "garbage.eml" and errs[0]["reason"].startswith("not an e-mail: no header field")
    # the same messages in an mbox: ids NAME:N
    box = tmp_path / "box.mbox"
    box.write_bytes(b"".join(b"From a@example.com Mon Jan  1 00:00:00 2024\n" + MAIL + b"\n" for _ in range(2)))
    batch(home, "mail", box, tmp_path / "box.jsonl")
    out = [json.loads(line) for line in (tmp_path / "box.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == ["box.mbox:1", "box.mbox:2"]
    assert out[0]["label"] == rows[0]["label"] or out[0]["prob_spam"] >= 0  # scored, not refused


def test_folder_of_images_with_bombs_and_a_truncated_file(inputs_home: tuple[Path, Any], tmp_path: Path) -> None:
    home, _ = inputs_home
    imgs = tmp_path / "png"
    imgs.mkdir()
    (imgs / "a-light.png").write_bytes(png(230, side=40))
    (imgs / "b-dark.png").write_bytes(png(15, side=7))
    (imgs / "c-truncated.png").write_bytes(png(230)[:30])
    (imgs / "d-bomb.png").write_bytes(png_bomb(30_000, 30_000))
    (imgs / "e-bomb.jpg").write_bytes(jpeg_with_size(40_000, 30_000))
    summary = batch(home, "img", imgs, tmp_path / "out.csv")
    assert (summary["scored"], summary["errors"]) == (2, 3)
    rows, errs = read_out(tmp_path / "out.csv")
    assert [(r["id"], r["label"]) for r in rows] == [("a-light.png", "light"), ("b-dark.png", "dark")]
    reasons = {e["id"]: e["reason"] for e in errs}
    assert "truncated" in reasons["c-truncated.png"]
    assert "900,000,000 pixels, over the limit" in reasons["d-bomb.png"]
    assert "over the limit" in reasons["e-bomb.jpg"]


def test_csv_of_image_paths(inputs_home: tuple[Path, Any], tmp_path: Path) -> None:
    home, _ = inputs_home
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "l.png").write_bytes(png(240))
    (tmp_path / "abs.png").write_bytes(png(5))
    paths = tmp_path / "paths.csv"
    paths.write_text(f"path,note\npics/l.png,x\n{tmp_path / 'abs.png'},y\n,empty\npics/missing.png,z\n")
    batch(home, "img", paths, tmp_path / "out.csv")
    rows, errs = read_out(tmp_path / "out.csv")
    assert [(r["id"], r["label"]) for r in rows] == [("pics/l.png", "light"), (str(tmp_path / "abs.png"), "dark")]
    assert [e["row"] for e in errs] == [2, 3]
    assert "empty" in errs[0]["reason"] and "cannot read pics/missing.png" in errs[1]["reason"]


def test_tabular_columns_by_name_in_csv_jsonl_and_parquet(inputs_home: tuple[Path, Any], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    home, (w, b) = inputs_home
    x = np.random.default_rng(3).normal(size=(6, 4)).round(4)
    want = tab_expected(w, b, x)
    cols = ["note", *reversed(FEATURES), "id"]  # another order than the model's, and extra columns
    with (tmp_path / "t.csv").open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(cols)
        for i, row in enumerate(x):
            cells = dict(zip(FEATURES, (str(v) for v in row), strict=True))
            if i == 4:
                cells["c"] = "abc"
            wr.writerow(["n", *(cells[c] for c in reversed(FEATURES)), f"r{i}"])
    batch(home, "tab", tmp_path / "t.csv", tmp_path / "out.csv")
    rows, errs = read_out(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3", "r5"]
    assert [r["label"] for r in rows] == [want[i] for i in (0, 1, 2, 3, 5)]
    assert errs == [{"row": 4, "line": 6, "id": "r4", "reason": "feature 'c': 'abc' is not a number"}]
    with (tmp_path / "t.jsonl").open("w") as f:
        for i, row in enumerate(x):
            obj: dict[str, Any] = {"id": i, **dict(zip(FEATURES, row.tolist(), strict=True))}
            if i == 1:
                del obj["a"]
            f.write(json.dumps(obj) + "\n")
    batch(home, "tab", tmp_path / "t.jsonl", tmp_path / "out2.csv")
    rows, errs = read_out(tmp_path / "out2.csv")
    assert [r["label"] for r in rows] == [want[i] for i in (0, 2, 3, 4, 5)]
    assert errs[0]["reason"] == "feature 'a' is missing"
    table = pa.table({"id": list(range(6)), **{f: x[:, i] for i, f in enumerate(reversed(FEATURES))}})
    table = pa.table({"id": list(range(6)), **{f: x[:, FEATURES.index(f)] for f in reversed(FEATURES)}})
    pq.write_table(table, tmp_path / "t.parquet")
    batch(home, "tab", tmp_path / "t.parquet", tmp_path / "out3.csv")
    rows, errs = read_out(tmp_path / "out3.csv")
    assert [r["label"] for r in rows] == want and errs == []


def test_an_item_job_resumes_where_it_stopped(inputs_home: tuple[Path, Any], tmp_path: Path) -> None:
    home, _ = inputs_home
    imgs = tmp_path / "png"
    imgs.mkdir()
    for i in range(5):
        (imgs / f"{i}.png").write_bytes(png(250 if i % 2 else 10))
    (imgs / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    predictor = Predictor(Registry(Settings(home=home)).load("img"), version=1)
    real = predictor.predict_rows
    calls = {"n": 0}

    def crash_on_third(rows: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill between checkpoints
        return real(rows, **kw)

    predictor.predict_rows = crash_on_third  # type: ignore[method-assign]
    cfg = BatchConfig(input=imgs, output=tmp_path / "out.csv", chunk_rows=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_batch(predictor, cfg)
    predictor.predict_rows = real  # type: ignore[method-assign]
    summary = run_batch(predictor, cfg)
    assert summary.resumed_from == 4 and summary.rows == 5
    rows, errs = read_out(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["0.png", "1.png", "3.png", "4.png"]
    assert [r["label"] for r in rows] == ["dark", "light", "light", "dark"]
    assert [e["id"] for e in errs] == ["2.png"]
    # a folder that changed under an unfinished job is refused, not mixed
    cfg2 = BatchConfig(input=imgs, output=tmp_path / "out2.csv", chunk_rows=2, progress=False)
    calls["n"] = 0
    predictor.predict_rows = crash_on_third  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run_batch(predictor, cfg2)
    predictor.predict_rows = real  # type: ignore[method-assign]
    (imgs / "5.png").write_bytes(png(0))
    with pytest.raises(DataError, match="different or changed input"):
        run_batch(predictor, cfg2)


def test_a_folder_for_a_model_that_reads_no_files_is_refused(inputs_home: tuple[Path, Any], tmp_path: Path) -> None:
    home, _ = inputs_home
    proc = run_joules("batch", "tab", str(tmp_path), "-o", str(tmp_path / "o.csv"), home=home)
    assert proc.returncode == 2 and "input kind is tabular" in proc.stderr
    proc = run_joules("batch", "img", str(tmp_path), "-o", "o.csv", "--input-format", "mbox", home=home)
    assert proc.returncode == 2 and "this model takes image" in proc.stderr
