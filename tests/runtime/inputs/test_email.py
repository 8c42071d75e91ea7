"""E-mail converter: MIME, charsets, HTML, attachments, refusals, hostile messages, the real corpus."""

from __future__ import annotations

import base64
import tarfile
from pathlib import Path

import pytest

from joules.errors import InputError
from joules.runtime.inputs import EmailConverter, html_to_text

CORPUS = Path(__file__).resolve().parents[3] / "data/spamassassin_public_corpus/spamassassin_public_corpus.tar.gz"
READ = EmailConverter()

ALTERNATIVE = b"""From: "Ann Example" <ann@example.com>
To: bob@example.com
Subject: Lunch
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="XX"

--XX
Content-Type: text/plain; charset=utf-8

Lunch at noon?
--XX
Content-Type: text/html; charset=utf-8

<p>Lunch at <b>noon</b>? (html copy)</p>
--XX--
"""


def test_alternative_reads_the_preferred_part_once() -> None:
    e = READ.read(ALTERNATIVE)
    assert e.sender == '"Ann Example" <ann@example.com>'
    assert e.subject == "Lunch"
    assert e.body == "Lunch at noon?"
    assert READ.admit(ALTERNATIVE) == 'From: "Ann Example" <ann@example.com>\nSubject: Lunch\nLunch at noon?'


def test_html_preference_and_html_to_text() -> None:
    html_first = EmailConverter(parts=("text/html", "text/plain"))
    assert html_first.read(ALTERNATIVE).body == "Lunch at noon? (html copy)"
    text = html_to_text(
        "<html><head><title>t</title><style>p{color:red}</style></head>"
        "<body><script>var x = 1;</script><p>Win&nbsp;&amp; <i>save</i></p><p>now&#33;</p></body></html>"
    )
    assert "var x" not in text and "color" not in text
    assert text.split() == ["Win", "&", "save", "now!"]


def test_charsets_transfer_encodings_and_encoded_words() -> None:
    subject = "=?utf-8?b?" + base64.b64encode("Café ☕".encode()).decode() + "?="
    raw = (
        f"From: =?iso-8859-1?q?Ren=E9?= <rene@example.com>\nSubject: {subject}\n"
        "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
        "caf=E9 cr=E8me\n"
        "--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + base64.b64encode("naïve ünïcode".encode()).decode()
        + "\n--b\nContent-Type: text/plain; charset=x-no-such-charset\n\nplain ascii\n--b--\n"
    ).encode()
    e = READ.read(raw)
    assert e.sender == "René <rene@example.com>"
    assert e.subject == "Café ☕"
    assert e.body.split("\n") == ["café crème", "naïve ünïcode", "plain ascii"]
    assert e.parts == 3


def test_mislabelled_charset_falls_back() -> None:
    raw = b"From: a@example.com\nSubject: s\nContent-Type: text/plain; charset=us-ascii\n\nprix: 10\xe9\n"
    assert READ.read(raw).body == "prix: 10é"  # not ASCII, not UTF-8: read as cp1252


def test_attachments_and_other_types_are_skipped() -> None:
    raw = (
        b"From: a@example.com\nSubject: report\nContent-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\nsee attached\n"
        b"--b\nContent-Type: text/plain\nContent-Disposition: attachment; filename=notes.txt\n\nSECRET NOTES\n"
        b"--b\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--b--\n"
    )
    e = READ.read(raw)
    assert e.body == "see attached"
    assert e.attachments == 1


def test_a_string_message_reads_like_its_bytes() -> None:
    raw = "From: a@example.com\nSubject: Olá\nContent-Type: text/plain; charset=utf-8\n\nçà et là\n".encode()
    as_latin1 = raw.decode("latin-1")  # how a client that cannot know the charset sends bytes as JSON text
    assert READ.read(as_latin1) == READ.read(raw)
    assert READ.read(raw.decode("utf-8")).body == "çà et là"


def test_mbox_from_line_is_allowed() -> None:
    assert READ.read(b"From someone@example.com Mon Jan 1 00:00:00 2024\nSubject: hi\n\nbody\n").body == "body"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        "",
        b"\xff\xfe\x00\x9c" * 750,  # binary garbage, no line breaks
        b"just some words\n\nand a body\n",
        b"\nSubject: after a blank line\n\nbody\n",
        b"From nobody\n",  # an mbox line and nothing else
    ],
)
def test_no_header_before_the_first_blank_line_is_refused(raw: bytes | str) -> None:
    with pytest.raises(InputError, match="not an e-mail: no header field"):
        READ.read(raw)


def test_no_text_is_refused() -> None:
    with pytest.raises(InputError, match="has no text"):
        READ.read(b"From: a@example.com\nTo: b@example.com\n\n   \n")
    only_attachment = (
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: application/pdf\nContent-Disposition: attachment\n\nJVBERi0=\n--b--\n"
    )
    with pytest.raises(InputError, match="has no text"):
        READ.read(only_attachment)
    assert READ.read(b"From: a@example.com\nSubject: subject only\n\n").model_text() == (
        "From: a@example.com\nSubject: subject only"
    )


def test_wrong_types_are_refused() -> None:
    with pytest.raises(InputError, match="string or bytes, got int"):
        READ.read(42)


@pytest.mark.parametrize(
    "raw",
    [
        # a boundary that never appears
        b"From: a@b.c\nSubject: s\nContent-Type: multipart/mixed; boundary=nope\n\nbody text\n",
        # no boundary parameter at all
        b"From: a@b.c\nSubject: s\nContent-Type: multipart/mixed\n\nbody text\n",
        # broken base64, no closing delimiter
        b"From: a@b.c\nSubject: s\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Transfer-Encoding: base64\n\n!!!not base64***\n",
        # a broken encoded word and a broken address
        b"From: <<<@@>>> =?utf-8?b?###?=\nSubject: =?x-bad?q?=ZZ?=\n\nbody text\n",
        # a malformed HTML declaration that makes html.parser raise
        b"From: a@b.c\nSubject: s\nContent-Type: text/html\n\n<html><![foo[ x ]]> body text</html>\n",
    ],
)
def test_broken_mime_is_read_without_crashing(raw: bytes) -> None:
    e = READ.read(raw)
    assert e.subject or e.body


def test_many_parts_are_bounded() -> None:
    parts = b"".join(b"--b\nContent-Type: text/plain\n\npart %d\n" % i for i in range(40_000))
    raw = b"From: a@b.c\nSubject: s\nContent-Type: multipart/mixed; boundary=b\n\n" + parts + b"--b--\n"
    e = EmailConverter(max_parts=20).read(raw)
    assert e.parts == 19, "the multipart container and 19 text parts: 20 visited"
    assert e.body.startswith("part 0\npart 1")


def test_deep_nesting_is_bounded() -> None:
    raw = b"From: a@b.c\nSubject: nested\nContent-Type: multipart/mixed; boundary=b0\n\n"
    for i in range(1, 5000):
        raw += b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i - 1, i)
    raw += b"--b4999\nContent-Type: text/plain\n\ndeep text\n"
    e = READ.read(raw)  # the parser never sees 5,000 levels: no RecursionError
    assert e.subject == "nested"


def test_a_huge_content_type_field_is_cut() -> None:
    raw = b"From: a@b.c\nSubject: s\nContent-Type: text/plain" + b" ;" * 200_000 + b"\n\nthe body\n"
    assert READ.read(raw).body == "the body"


def test_only_max_bytes_are_read() -> None:
    raw = b"From: a@b.c\nSubject: s\n\n" + b"word " * 1000
    e = EmailConverter(max_bytes=100).read(raw)
    assert e.truncated and len(e.body) < 100
    assert not READ.read(raw).truncated


def test_reads_chooses_what_the_model_sees() -> None:
    conv = EmailConverter(reads=("subject", "body"))
    assert conv.admit(ALTERNATIVE) == "Subject: Lunch\nLunch at noon?"


def _corpus_messages(limit: int | None) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(CORPUS) as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".eml"):
                f = tar.extractfile(m)
                assert f is not None
                out.append((m.name, f.read()))
                if limit and len(out) >= limit:
                    break
    return out


def test_real_messages_are_read() -> None:
    for name, raw in _corpus_messages(300):
        e = READ.read(raw)
        assert e.subject or e.body, name


@pytest.mark.slow
def test_every_corpus_message_is_read() -> None:
    msgs = _corpus_messages(None)
    assert len(msgs) == 6046
    for name, raw in msgs:
        assert READ.read(raw).model_text(), name
