"""One fuzz target per peer-data parser, shared by the CI tests and ``bench/fuzz/run.py``.

Each target takes arbitrary bytes and checks the invariant of ``sipimdn.errors``: the input
parses, or the parser raises *its own* error type (a ``SipError`` subclass carrying a SIP
status). Any other exception escaping is a bug and propagates out of the target unchanged, so
a fuzzer reports it with its traceback. Hangs are caught by the caller's time budget.

The seed corpus is every real message under ``tests/data`` plus the documents the codecs
build, so mutation starts from inputs that reach deep into each parser.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sipimdn import cpim, imdn
from sipimdn.auth import DigestChallenge, parse_challenges, select_challenge
from sipimdn.errors import (
    CpimError,
    ImdnError,
    RemoteProtocolError,
    SipParseError,
)
from sipimdn.headers import AssertedIdentity
from sipimdn.parser import KeepAliveReceived, Limits, StreamFramer, parse_message
from sipimdn.uri import Uri

__all__ = ["SEEDS", "TARGETS", "FuzzTarget", "mutate", "run_framer"]

DATA = Path(__file__).resolve().parent.parent / "data"

# Small limits for the framer so the fuzzer also walks the limit branches (513/413).
SMALL_LIMITS = Limits(max_start_line=256, max_header_bytes=2048, max_headers=24, max_body=4096,
                      max_message=6144)


@dataclass(frozen=True)
class FuzzTarget:
    """A parser entry point under test."""

    #: Short name used on the command line and in the results table.
    name: str
    #: Feeds one input; raises ``error`` (allowed) or anything else (a bug).
    run: Callable[[bytes], None]
    #: The module's documented error type (a remote protocol error carrying a SIP status).
    error: type[RemoteProtocolError]
    #: Valid (or nearly valid) inputs that mutations start from.
    seeds: tuple[bytes, ...]
    #: Longest input worth generating (the byte-by-byte framer run is quadratic-ish in cost).
    max_len: int = 8192


def _text(data: bytes) -> str:
    # Parsers behind the SIP parser see str decoded from UTF-8 with replacement.
    return data.decode("utf-8", "replace")


def _parse_sip(data: bytes) -> None:
    message = parse_message(data)
    message.to_bytes()  # a parsed message must serialise again


def run_framer(chunks: list[bytes],
               limits: Limits | None = None) -> tuple[list[object], SipParseError | None]:
    """Feed ``chunks`` in order; return the events (as comparable values) and the error, if any."""
    framer = StreamFramer(limits)
    events: list[object] = []
    for chunk in chunks:
        try:
            framer.feed(chunk)
            while (event := framer.next_event()) is not None:
                if isinstance(event, KeepAliveReceived):
                    events.append(("keepalive", event.run))
                else:
                    events.append(event.to_bytes())
        except SipParseError as exc:
            return events, exc
    return events, None


class FramerMismatch(AssertionError):
    """Whole and byte-by-byte feeding disagreed: a framing bug."""


def _framer(data: bytes) -> None:
    for limits in (None, SMALL_LIMITS):
        whole = run_framer([data], limits)
        bytewise = run_framer([data[i : i + 1] for i in range(len(data))], limits)
        outcome_whole = (whole[0], None if whole[1] is None else (whole[1].status_code, whole[1].reason))
        outcome_bytes = (bytewise[0], None if bytewise[1] is None else (bytewise[1].status_code,
                                                                        bytewise[1].reason))
        if outcome_whole != outcome_bytes:
            raise FramerMismatch(f"whole {outcome_whole!r} != byte by byte {outcome_bytes!r}")
        if whole[1] is not None:
            raise whole[1]


def _uri(data: bytes) -> None:
    uri = Uri.parse(_text(data))
    # Printing and re-reading a parsed URI must give an equal URI (§19.1.4 equality).
    again = Uri.parse(str(uri))
    if again != uri:
        raise AssertionError(f"URI round trip changed it: {uri!s} -> {again!s}")


def _asserted(data: bytes) -> None:
    # One P-Asserted-Identity header field per line (RFC 3325 §9.1), as a request would carry them.
    identity = AssertedIdentity.parse(_text(data).split("\n"))
    if identity is not None:
        again = AssertedIdentity.parse([str(identity)])
        if again is None or [Uri.parse(u) for u in again.uris] != [Uri.parse(u) for u in identity.uris]:
            raise AssertionError(f"P-Asserted-Identity round trip changed it: {identity!s} -> {again!s}")


def _cpim(data: bytes) -> None:
    try:
        cpim.parse(data)
    except CpimError:
        # The RFC examples print the outer Content-Type block too (RFC 3862 §6).
        cpim.parse(data, outer_mime=True)


def _imdn_xml(data: bytes) -> None:
    notification = imdn.parse_notification(data)
    imdn.parse_notification(notification.to_xml())  # what we accept we can echo


def _multipart(data: bytes) -> None:
    # First line is the boundary, the rest the body: both come from the peer.
    boundary, _, body = data.partition(b"\n")
    for part in imdn.split_multipart(body, boundary.decode("latin-1")):
        part.content_type  # noqa: B018 - the property parses the part's Content-Type


def _digest(data: bytes) -> None:
    challenges = parse_challenges(_text(data))
    usable: list[DigestChallenge] = []
    for challenge in challenges:
        if challenge.is_digest:
            try:
                usable.append(DigestChallenge.from_challenge(challenge, proxy=False))
            except RemoteProtocolError:
                continue
    select_challenge(usable)


def _inflate(data: bytes) -> None:
    imdn.inflate(data, max_size=64 * 1024)


def _read_all(pattern: str) -> tuple[bytes, ...]:
    return tuple(p.read_bytes() for p in sorted(DATA.glob(pattern)))


def _seeds() -> dict[str, tuple[bytes, ...]]:
    sip = (*_read_all("rfc4475/*.sip"), (DATA / "message_cpim.sip").read_bytes())
    cpims = _read_all("cpim/*.cpim")
    xmls = _read_all("imdn/*.xml")
    multipart_ct, multipart_body = imdn.build_multipart(list(xmls))
    boundary = multipart_ct.split("boundary=", 1)[1].strip('"').encode()
    return {
        "sip": sip,
        "framer": tuple(m + m for m in sip[:8]) + sip,
        "uri": (b"sip:alice@example.com", b"sips:bob:pw@[::1]:5061;transport=tcp;lr?subject=hi%20there",
                b"sip:+1-212-555-1212:1234@gateway.com;user=phone", b"tel:+358-555-1234567;postd=pp22",
                b"im:fred@example.com", b"sip:%61lice@atlanta.com;maddr=239.255.255.1;ttl=15"),
        "asserted": (b'"Bob Smith" <sip:bob@ims.example.com>, <tel:+1-202-555-0123>',
                     b"sip:+12025550123@ims.example.com;user=phone\ntel:+12025550123;phone-context=x",
                     b"<sips:bob@[2001:db8::1]:5061>"),
        "cpim": cpims,
        "imdn": xmls,
        "multipart": (boundary + b"\n" + multipart_body,
                      b"b\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"),
        "digest": (b'Digest realm="atlanta.com", nonce="84a4cc6f3082121f32b42a2187831a9e", '
                   b'qop="auth,auth-int",'
                   b' algorithm=SHA-256, opaque="x", stale=FALSE',
                   b'Digest realm="a", nonce="n", algorithm=MD5, Basic realm="b", Bearer abc==',
                   b'Digest realm="r", nonce="n", userhash=true, algorithm=SHA-512-256-sess, qop=auth'),
    }


SEEDS = _seeds()
# A deflated IMDN is also a realistic input for the bounded inflate (RFC 5438 §8.4 / IMDN bodies).
_DEFLATED = tuple(zlib.compress(x) for x in SEEDS["imdn"])

TARGETS: dict[str, FuzzTarget] = {
    t.name: t
    for t in (
        FuzzTarget("sip", _parse_sip, SipParseError, SEEDS["sip"]),
        FuzzTarget("framer", _framer, SipParseError, SEEDS["framer"], max_len=2048),
        FuzzTarget("uri", _uri, SipParseError, SEEDS["uri"]),
        FuzzTarget("asserted", _asserted, SipParseError, SEEDS["asserted"]),
        FuzzTarget("cpim", _cpim, CpimError, SEEDS["cpim"]),
        FuzzTarget("imdn", _imdn_xml, ImdnError, SEEDS["imdn"]),
        FuzzTarget("multipart", _multipart, ImdnError, SEEDS["multipart"]),
        FuzzTarget("digest", _digest, RemoteProtocolError, SEEDS["digest"]),
        FuzzTarget("inflate", _inflate, ImdnError, _DEFLATED),
    )
}


def mutate(data: bytes, rng: random.Random, *, max_len: int = 8192) -> bytes:
    """A few random byte-level edits of ``data`` (flip, insert, delete, duplicate, splice of a
    interesting token), the classic dumb-fuzzer moves."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        move = rng.randrange(6)
        pos = rng.randint(0, len(buf))
        if move == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif move == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif move == 2 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        elif move == 3 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 64)]
        elif move == 4:
            buf[pos:pos] = rng.choice(_TOKENS)
        elif buf:
            buf[min(pos, len(buf) - 1)] = rng.choice(b"\r\n\t :;,<>\"\\=@%[]\x00\xff")
    return bytes(buf[:max_len])


# Tokens that move parsers across branches: line ends, separators, huge numbers, markup.
_TOKENS = (b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"Content-Length: 99999999999\r\n", b"l: 0\r\n",
           b"SIP/2.0", b"sip:", b"sips:", b"[::1]", b"%", b"%zz", b"\"", b"\\", b"<", b">", b";",
           b"=", b",", b"--", b"<!DOCTYPE x>", b"<![CDATA[", b"&amp;", b"&#0;", b"\xc3\x28",
           b"\xef\xbb\xbf", b"\x00", b"NS: imdn <urn:ietf:params:imdn>\r\n", b"\t", b" " * 40,
           b"4294967296", b"-1", b"Digest ", b"nonce=")
