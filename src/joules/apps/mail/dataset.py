"""The SpamAssassin public corpus: read the .eml files straight from the tarball,
turn each into the text the model reads, de-duplicate by body, split.

Some messages appear in more than one group or differ only in their headers
(the corpus README says so): 6,046 files hold fewer distinct bodies. Without
de-duplication before the split, copies land on both sides of it and the test
score flatters the model.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from joules.apps.spam.dataset import split_messages
from joules.bundle import SplitDataset
from joules.errors import DataError, InputError
from joules.runtime.inputs import EmailConverter

LABELS = ["ham", "spam"]
# Group directories of the corpus and their labels (data/spamassassin_public_corpus/README.md).
GROUPS = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham", "spam-1": "spam", "spam-2": "spam"}
CORPUS_FILE = "spamassassin_public_corpus.tar.gz"
_WORDS = re.compile(r"\W+")


def _default_data() -> Path:
    env = os.environ.get("JOULES_MAIL_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for root in [Path.cwd(), *here.parents]:
        candidate = root / "data" / "spamassassin_public_corpus" / CORPUS_FILE
        if candidate.is_file():
            return candidate
    return Path("data/spamassassin_public_corpus") / CORPUS_FILE


DEFAULT_DATA = _default_data()


@dataclass(frozen=True)
class Mail:
    id: str  # group/file name inside the tarball
    label: str
    text: str  # what the model reads
    body: str


@dataclass(frozen=True)
class Corpus:
    mails: list[Mail]  # distinct bodies, in tarball order
    files: int  # .eml files read
    duplicates: int  # dropped: the body of an earlier message with the same label
    conflicts: int  # dropped: bodies that appear under both labels (every copy)
    unreadable: dict[str, str]  # id -> reason, messages the converter refused

    def rows(self) -> list[tuple[str, str]]:
        return [(m.label, m.text) for m in self.mails]


def _body_key(mail: Mail) -> str:
    # Case, punctuation and spacing differences (re-wrapped copies) do not make a new message.
    return _WORDS.sub(" ", (mail.body or mail.text).lower()).strip()


def load_corpus(path: Path | None = None, converter: EmailConverter | None = None) -> Corpus:
    """Every message of the corpus tarball read with ``converter``, de-duplicated by body."""
    path = Path(path or DEFAULT_DATA)
    if not path.is_file():
        raise DataError(
            f"SpamAssassin corpus not found at {str(path)!r}; pass --data PATH to {CORPUS_FILE}, "
            "or run from the project checkout, which ships data/spamassassin_public_corpus"
        )
    converter = converter or EmailConverter()
    mails: list[Mail] = []
    unreadable: dict[str, str] = {}
    files = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or not member.name.endswith(".eml") or len(parts) < 2:
                    continue
                label = GROUPS.get(parts[-2])
                if label is None:
                    raise DataError(f"{path}: {member.name} is in no known group {sorted(GROUPS)}")
                f = tar.extractfile(member)
                if f is None:
                    continue
                files += 1
                mid = "/".join(parts[-2:])
                try:
                    e = converter.read(f.read())
                except InputError as err:
                    unreadable[mid] = str(err)
                    continue
                mails.append(Mail(mid, label, e.model_text(converter.reads), e.body))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read the corpus tarball {str(path)!r}: {e}") from e
    if not mails:
        raise DataError(f"{path}: no readable .eml files")
    labels_of: dict[str, set[str]] = {}
    for m in mails:
        labels_of.setdefault(_body_key(m), set()).add(m.label)
    seen: set[str] = set()
    kept: list[Mail] = []
    duplicates = conflicts = 0
    for m in mails:
        key = _body_key(m)
        if len(labels_of[key]) > 1:
            conflicts += 1
        elif key in seen:
            duplicates += 1
        else:
            seen.add(key)
            kept.append(m)
    return Corpus(kept, files, duplicates, conflicts, unreadable)


def split_corpus(corpus: Corpus, seed: int = 0) -> SplitDataset:
    """Stratified 60/20/20 split of the distinct messages, as the SMS detector's."""
    return split_messages(corpus.rows(), seed=seed)
