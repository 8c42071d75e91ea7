"""A small SpamAssassin tarball made from real messages of the shipped corpus (fast to read and train on)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from joules.apps.mail.train import train_spam_email
from joules.registry import Registry
from joules.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "data/spamassassin_public_corpus/spamassassin_public_corpus.tar.gz"
PER_GROUP = {"easy-ham-1": 60, "hard-ham-1": 20, "spam-1": 30, "spam-2": 30}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """140 real messages, plus: an exact copy of one ham (a duplicate), one body filed as both ham and spam
    (a conflict), and an unreadable file."""
    out = tmp_path_factory.mktemp("mail") / "small.tar.gz"
    taken: dict[str, list[tuple[str, bytes]]] = {g: [] for g in PER_GROUP}
    with tarfile.open(CORPUS) as src:
        for m in src:
            group = m.name.split("/")[-2] if m.isfile() else ""
            if group in taken and len(taken[group]) < PER_GROUP[group]:
                f = src.extractfile(m)
                assert f is not None
                taken[group].append((m.name.split("/")[-1], f.read()))
    with tarfile.open(out, "w:gz") as tar:
        for group, files in taken.items():
            for fname, data in files:
                _add(tar, f"spamassassin_public_corpus/{group}/{fname}", data)
        ham = taken["easy-ham-1"][0][1]
        _add(tar, "spamassassin_public_corpus/easy-ham-2/copy.eml", ham.replace(b"Subject:", b"X-Copy: 1\nSubject:", 1))
        conflict = b"From: a@example.com\nSubject: both\n\nthis exact body is filed under both labels\n"
        _add(tar, "spamassassin_public_corpus/easy-ham-2/conflict.eml", conflict)
        _add(tar, "spamassassin_public_corpus/spam-2/conflict.eml", conflict)
        _add(tar, "spamassassin_public_corpus/spam-2/garbage.eml", b"\xff\xfe\x00\x9c" * 100)
    return out


@pytest.fixture(scope="session")
def mail_home(  # the e-mail detector, tiny, trained for real on the small corpus
    tmp_path_factory: pytest.TempPathFactory, small_corpus: Path, tiny_hf_dir: Path
) -> Path:
    home = tmp_path_factory.mktemp("mail-home")
    train_spam_email(
        registry=Registry(Settings(home=home)),
        data=small_corpus,
        base_dir=tiny_hf_dir,
        epochs=1,
        max_length=64,
        learning_rate=2e-3,
        progress=False,
    )
    return home
