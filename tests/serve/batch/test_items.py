"""Batch items from files: .eml folders, mboxes, image folders, CSVs of image paths; unreadable items as errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from joules.errors import DataError
from joules.serve.batch.items import email_folder, image_folder, image_paths_csv, mbox_messages
from tests.runtime.inputs.samples import png


def test_email_folder_in_name_order_with_unreadable_items(tmp_path: Path) -> None:
    (tmp_path / "b.eml").write_bytes(b"From: b@x\nSubject: b\n\nbody b\n")
    (tmp_path / "a.eml").write_bytes(b"From: a@x\nSubject: a\n\nbody a\n")
    (tmp_path / "notes.txt").write_text("not an eml")
    (tmp_path / ".hidden.eml").write_text("skipped")
    (tmp_path / "dir.eml").mkdir()
    (tmp_path / "gone.eml").symlink_to(tmp_path / "nowhere")
    items = list(email_folder(tmp_path))
    assert [i.id for i in items] == ["a.eml", "b.eml", "dir.eml", "gone.eml"]
    assert items[0].value == b"From: a@x\nSubject: a\n\nbody a\n" and items[0].error is None
    assert items[2].value is None and "not a regular file" in (items[2].error or "")
    assert items[3].value is None and "cannot read gone.eml" in (items[3].error or "")


def test_email_folder_reads_only_the_start_of_a_huge_message(tmp_path: Path) -> None:
    (tmp_path / "big.eml").write_bytes(b"From: a@x\n\n" + b"x" * 10_000)
    (item,) = email_folder(tmp_path, max_bytes=100)
    assert item.value is not None and len(item.value) == 101


def test_mbox(tmp_path: Path) -> None:
    box = tmp_path / "inbox.mbox"
    box.write_bytes(
        b"From a@x Mon Jan  1 00:00:00 2024\nFrom: a@x\nSubject: one\n\nfirst\n\n"
        b"From b@x Mon Jan  1 00:00:01 2024\nFrom: b@x\nSubject: two\n\n>From the archive\nsecond\n"
    )
    items = list(mbox_messages(box))
    assert [i.id for i in items] == ["inbox.mbox:1", "inbox.mbox:2"]
    assert items[0].value is not None and items[0].value.startswith(b"From: a@x\nSubject: one")
    assert items[1].value is not None and b"second" in items[1].value
    with pytest.raises(DataError, match="is not an mbox file"):
        list(mbox_messages(tmp_path / "missing.mbox"))


def test_image_folder_and_size_limit(tmp_path: Path) -> None:
    (tmp_path / "one.PNG").write_bytes(png(8, 8))
    (tmp_path / "two.jpg").write_bytes(b"\xff\xd8 not really")
    (tmp_path / "big.png").write_bytes(b"\x00" * 2000)
    (tmp_path / "readme.md").write_text("skipped")
    items = list(image_folder(tmp_path, max_bytes=1000))
    assert [i.id for i in items] == ["big.png", "one.PNG", "two.jpg"]
    assert items[0].value is None and items[0].error == "big.png is 2,000 bytes, over the limit of 1,000"
    assert items[1].value == png(8, 8)
    with pytest.raises(DataError, match="is not a folder"):
        list(image_folder(tmp_path / "one.PNG"))


def test_csv_of_image_paths(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png(4, 4))
    absolute = tmp_path / "b.png"
    absolute.write_bytes(png(5, 5))
    (tmp_path / "list.csv").write_text(f"path,truth\nimgs/a.png,1\n{absolute},2\n,3\nimgs/missing.png,4\n")
    items = list(image_paths_csv(tmp_path / "list.csv"))
    assert [i.id for i in items] == ["imgs/a.png", str(absolute), "row 4", "imgs/missing.png"]
    assert items[0].value == png(4, 4) and items[1].value == png(5, 5)
    assert items[2].error == "row 4: the 'path' cell is empty"
    assert items[3].value is None and "cannot read imgs/missing.png" in (items[3].error or "")
    with pytest.raises(DataError, match="has no 'file' column"):
        list(image_paths_csv(tmp_path / "list.csv", column="file"))
