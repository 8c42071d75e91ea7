from __future__ import annotations

from pathlib import Path

import pytest

from joules.apps.mail import load_corpus, split_corpus
from joules.errors import DataError


def test_corpus_is_read_from_the_tarball_and_deduplicated(small_corpus: Path) -> None:
    c = load_corpus(small_corpus)
    assert c.files == 140 + 4
    ids = {m.id for m in c.mails}
    assert "easy-ham-2/copy.eml" not in ids  # a copy of a ham message with an extra header
    assert c.duplicates >= 1  # that copy, and the corpus' own (spam-1 and spam-2 share messages)
    assert c.conflicts == 2  # both copies of the body filed as ham and as spam
    assert not any("conflict" in i for i in ids)
    assert list(c.unreadable) == ["spam-2/garbage.eml"]
    assert "not an e-mail" in c.unreadable["spam-2/garbage.eml"]
    assert len(c.mails) + c.duplicates + c.conflicts + len(c.unreadable) == c.files
    assert len({m.body for m in c.mails}) == len(c.mails)
    assert {m.label for m in c.mails if m.id.startswith("spam-")} == {"spam"}
    assert all(m.text.startswith(("From: ", "Subject: ")) for m in c.mails)


def test_split_is_stratified_and_disjoint(small_corpus: Path) -> None:
    ds = split_corpus(load_corpus(small_corpus), seed=0)
    sizes = {k: len(v) for k, v in ds.splits.items()}
    n = sum(sizes.values())
    assert abs(sizes["train"] - 0.6 * n) <= 2 and abs(sizes["test"] - 0.2 * n) <= 2
    spam = [sum(lab == "spam" for lab in ds[s].labels) / len(ds[s]) for s in ("train", "test")]
    assert abs(spam[0] - spam[1]) < 0.05  # stratified
    texts = [set(ds[s].texts) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert split_corpus(load_corpus(small_corpus), seed=1)["test"].texts != ds["test"].texts


def test_missing_corpus_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SpamAssassin corpus not found"):
        load_corpus(tmp_path / "nope.tar.gz")
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot read the corpus tarball"):
        load_corpus(tmp_path / "bad.tar.gz")
