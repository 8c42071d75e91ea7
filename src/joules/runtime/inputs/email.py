"""A raw RFC 822 message -> the text an e-mail model reads.

The stdlib ``email`` package parses the message; text/plain
and text/html parts are decoded with their declared charsets (falling back to
UTF-8, then cp1252, so a mislabelled part still reads), HTML becomes text with
``html.parser``, attachments and other types are skipped. What the model reads
is ``From``, ``Subject`` and body text, in that order, as chosen by
``preprocess.reads``.

The parser runs with ``policy.compat32``, not ``policy.default``: the default
policy's structured header parser takes time quadratic in a Content-Type
field's length (a 24 kB ``Content-Type: text/html ; ; ; ...`` in the
SpamAssassin corpus took 4 s, a 1 kB one 0.1 s), while compat32 reads the same
corpus twice as fast into exactly the same texts. Headers are decoded here
(RFC 2047 encoded words, charsets) from their raw values.

Hostile messages cost little: only the first ``max_bytes`` are parsed and the
part markers in them are counted *before* parsing (the stdlib parser spends
about 0.4 ms per MIME part and recurses per nesting level, so 40,000 parts in
1 MB take 20 s and 3,000 nested ones overflow the stack); no more than
``max_parts`` parts are visited.

Refused, with the reason: a message with no header field before its first
blank line (not an e-mail), and one with no text at all after decoding.
"""

from __future__ import annotations

import binascii
import html as html_module
import re
from dataclasses import dataclass
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any

from joules.bundle.inputs import DEFAULT_EMAIL_MAX_BYTES, DEFAULT_EMAIL_MAX_PARTS, EMAIL_PARTS, EMAIL_READS
from joules.errors import InputError

# RFC 5322 section 2.2: a field name is printable US-ASCII except the colon.
_HEADER_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
# Lines that open a MIME part or declare one: multipart delimiters ("--boundary") and Content-Type fields
# (message/rfc822 nests by headers alone, without delimiters).
_PART_MARKER = re.compile(rb"^(?:--|content-type[ \t]*:)", re.IGNORECASE | re.MULTILINE)
# Even compat32 re-slices a Content-* field once per parameter while reading it: fields are cut to this many
# bytes, far past any real one, so a field of a million ";" costs nothing.
_CONTENT_FIELD = re.compile(rb"^content-[!-9;-~]*[ \t]*:", re.IGNORECASE | re.MULTILINE)
_CONTENT_FIELD_BYTES = 1000
# Markers allowed per visited part: an opening and a closing delimiter and a Content-Type, with slack.
_MARKERS_PER_PART = 4
_BLOCK_TAGS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption"),
        *("figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav"),
        *("ol", "p", "pre", "section", "table", "td", "th", "tr", "ul"),
    }
)
_SKIPPED_TAGS = frozenset(["script", "style", "head", "title", "noscript", "template"])
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


@dataclass(frozen=True, kw_only=True)
class EmailText:
    """What was read from one message."""

    sender: str
    subject: str
    body: str
    parts: int  # text parts read into the body
    attachments: int  # parts skipped as attachments
    truncated: bool  # the message was longer than max_bytes; only its start was read

    def model_text(self, reads: tuple[str, ...] | list[str] = EMAIL_READS) -> str:
        """The one text the model reads: ``From: ...``, ``Subject: ...`` lines, then the body."""
        lines = []
        if "from" in reads and self.sender:
            lines.append(f"From: {self.sender}")
        if "subject" in reads and self.subject:
            lines.append(f"Subject: {self.subject}")
        if "body" in reads and self.body:
            lines.append(self.body)
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class EmailConverter:
    """Raw messages (``str`` or ``bytes``) -> :class:`EmailText` or the model's text; InputError with the reason."""

    reads: tuple[str, ...] = EMAIL_READS
    parts: tuple[str, ...] = EMAIL_PARTS
    max_bytes: int = DEFAULT_EMAIL_MAX_BYTES
    max_parts: int = DEFAULT_EMAIL_MAX_PARTS

    @classmethod
    def from_spec(cls, pre: Any) -> EmailConverter:
        """From a bundle's ``Preprocess`` of kind ``email``."""
        return cls(reads=tuple(pre.reads), parts=tuple(pre.parts), max_bytes=pre.max_bytes, max_parts=pre.max_parts)

    def admit(self, raw: Any) -> str:
        """One raw message -> the text the model reads."""
        return self.read(raw).model_text(self.reads)

    def read(self, raw: Any) -> EmailText:
        data = _as_bytes(raw)
        truncated = len(data) > self.max_bytes
        data = _bound_parts(data[: self.max_bytes], self.max_parts * _MARKERS_PER_PART)
        data = _cap_content_fields(data)
        _check_has_header(data)
        try:
            msg = BytesParser(policy=policy.compat32).parsebytes(data)
        except RecursionError:
            raise InputError("the e-mail nests MIME parts too deeply to read") from None
        body, n_text, n_attach = self._body(msg)
        sender = _header(msg, "from")
        subject = _header(msg, "subject")
        if not subject and not body:
            raise InputError(
                "the e-mail has no text: no subject and no readable "
                f"{' or '.join(self.parts)} part (attachments are not read)"
            )
        return EmailText(
            sender=sender, subject=subject, body=body, parts=n_text, attachments=n_attach, truncated=truncated
        )

    def _body(self, msg: Message) -> tuple[str, int, int]:
        """Body text of the message's readable parts, depth first, at most ``max_parts`` visited."""
        texts: list[str] = []
        attachments = 0
        stack: list[Message] = [msg]
        visited = 0
        while stack and visited < self.max_parts:
            part = stack.pop()
            visited += 1
            if part.is_multipart():
                children = [c for c in part.get_payload() if isinstance(c, Message)]
                if part.get_content_type() == "multipart/alternative":
                    children = self._preferred(children)
                stack.extend(reversed(children))
                continue
            ctype = part.get_content_type()
            if part.get_content_disposition() == "attachment":
                attachments += 1
                continue
            if ctype not in self.parts:
                continue
            text = _decode_payload(part)
            if ctype == "text/html":
                text = html_to_text(text)
            text = _tidy(text)
            if text:
                texts.append(text)
        return "\n".join(texts), len(texts), attachments

    def _preferred(self, alternatives: list[Message]) -> list[Message]:
        """Of the alternatives, the one of the most preferred type; all of them when none is a readable leaf."""
        for wanted in self.parts:
            for alt in alternatives:
                if alt.get_content_type() == wanted:
                    return [alt]
        return alternatives


def _as_bytes(raw: Any) -> bytes:
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        # A message sent as text was usually decoded from bytes as Latin-1 (it always succeeds), which this
        # undoes exactly; text beyond Latin-1 was decoded properly, so UTF-8 brings back its bytes.
        try:
            return raw.encode("latin-1")
        except UnicodeEncodeError:
            return raw.encode("utf-8", "replace")
    raise InputError(f"an e-mail must be the raw message as a string or bytes, got {type(raw).__name__}")


def _bound_parts(data: bytes, max_markers: int) -> bytes:
    """Cut ``data`` before its ``max_markers + 1``-th part marker, so the parser never sees more parts."""
    for n, m in enumerate(_PART_MARKER.finditer(data), 1):
        if n > max_markers:
            return data[: m.start()]
    return data


def _cap_content_fields(data: bytes, limit: int = _CONTENT_FIELD_BYTES) -> bytes:
    """Every Content-* header field (folded lines included) cut to ``limit`` bytes; everything else as it was."""
    if not _CONTENT_FIELD.search(data):
        return data
    out: list[bytes] = []
    budget = -1  # bytes left in the Content-* field being copied; -1: not in one
    for line in data.splitlines(keepends=True):
        if _CONTENT_FIELD.match(line):
            budget = limit
        elif budget < 0 or line[:1] not in (b" ", b"\t"):
            budget = -1
            out.append(line)
            continue
        body = line.rstrip(b"\r\n")
        if budget > 0:
            out.append(body[:budget] + line[len(body) :])
        budget = max(0, budget - len(body))
    return b"".join(out)


def _check_has_header(data: bytes) -> None:
    start = 0
    if data.startswith(b"From "):  # an mbox "From " line precedes the headers
        start = data.find(b"\n") + 1 if b"\n" in data else len(data)
    if not _HEADER_FIELD.match(data, start):
        first = data[start : start + 40]
        raise InputError(
            "not an e-mail: no header field (such as 'From: a@example.com') before the first blank line; "
            f"it starts with {first!r}"
        )


def _charset_decode(data: bytes, charset: str | None) -> str:
    """Bytes -> text: the declared charset, else UTF-8, else cp1252 (what most 'iso-8859-1' mail really is)."""
    for cs in (charset, "utf-8"):
        if not cs:
            continue
        try:
            return data.decode(cs)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("cp1252", "replace")


def _decode_payload(part: Message) -> str:
    """A leaf part's text: transfer encoding undone, then its charset."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return _charset_decode(payload, part.get_content_charset())


def _header(msg: Message, name: str) -> str:
    """A header's text from its raw value, RFC 2047 encoded words decoded (with charset fallbacks)."""
    raw = next((v for k, v in msg.raw_items() if k.lower() == name), None)
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raw = str(raw)
    # Header bytes that are not ASCII arrive as surrogate escapes (the parser's way of keeping bytes in str).
    raw = _charset_decode(raw.encode("utf-8", "surrogateescape"), None)
    try:
        chunks = decode_header(raw)
    except (HeaderParseError, binascii.Error, ValueError):
        return _tidy_line(raw)  # an encoded word that does not decode: keep the header as written
    out = []
    for chunk, charset in chunks:
        out.append(_charset_decode(chunk, charset) if isinstance(chunk, bytes) else chunk)
    # decode_header drops the spaces between an encoded word and plain text; join as RFC 2047 intends.
    return _tidy_line(" ".join(out) if len(out) > 1 else "".join(out))


def _tidy_line(text: str) -> str:
    return _SPACES.sub(" ", text.replace("\r", " ").replace("\n", " ")).strip()


def _tidy(text: str) -> str:
    """Spaces collapsed, lines stripped, runs of blank lines made one."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(data)


_TAG = re.compile(r"<[^>]*>")
_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def html_to_text(html: str) -> str:
    """The visible text of an HTML document (scripts, styles and the head left out; blocks on their own lines)."""
    parser = _TextOfHtml()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError:
        # CPython's _markupbase raises AssertionError on some malformed declarations ("<![foo["): read the
        # document again without a parser, as text between tags.
        return html_module.unescape(_TAG.sub(" ", _SCRIPT_OR_STYLE.sub(" ", html)))
    return "".join(parser.out)
