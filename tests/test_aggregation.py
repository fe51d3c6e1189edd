"""Aggregated IMDNs (RFC 5438 §8.3) and bounded deflate inflation (liblinphone deflates its IMDNs)."""

from __future__ import annotations

import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn import imdn
from sipimdn.errors import ImdnError, LocalProtocolError

DOC_A = imdn.build_notification(message_id="a", datetime="d", kind="delivery", status="delivered")
DOC_B = imdn.build_notification(message_id="b", datetime="d", kind="display", status="displayed")


def test_build_always_writes_the_closing_delimiter() -> None:
    content_type, body = imdn.build_multipart([DOC_A, DOC_B], boundary="imdn-boundary")
    assert content_type == 'multipart/mixed; boundary="imdn-boundary"'
    assert body.startswith(b"--imdn-boundary\r\nContent-Type: message/imdn+xml\r\n\r\n")
    assert body.endswith(b"\r\n--imdn-boundary--\r\n")
    parts = imdn.split_multipart(body, "imdn-boundary")
    assert [p.body for p in parts] == [DOC_A, DOC_B]
    assert all(p.content_type == "message/imdn+xml" for p in parts)


def test_generated_boundary_is_random_and_valid() -> None:
    first, _ = imdn.build_multipart([DOC_A])
    second, _ = imdn.build_multipart([DOC_A])
    assert first != second


def test_split_accepts_a_missing_closing_delimiter() -> None:
    """RFC 5438 §8.3 example as printed (errata EID 3850): ends with ``--imdn-boundary``."""
    body = (
        b"--x\r\nContent-type: message/imdn+xml\r\n\r\n"
        + DOC_A
        + b"\r\n--x\r\nContent-type: message/imdn+xml\r\n\r\n"
        + DOC_B
        + b"--x\r\n"
    )
    # The second part runs into "--x" without a CRLF: only a delimiter at a line start counts.
    parts = imdn.split_multipart(body, "x")
    assert [p.body for p in parts] == [DOC_A, DOC_B + b"--x"]
    truncated = b"--x\r\nContent-Type: message/imdn+xml\r\n\r\n" + DOC_A + b"\r\n--x\r\n\r\nlast part\r\n"
    parts = imdn.split_multipart(truncated, "x")
    assert [p.body for p in parts] == [DOC_A, b"last part"]
    assert parts[1].content_type == "text/plain"  # no Content-Type: RFC 2045 default
    only_open = b"--x\r\nContent-Type: message/imdn+xml\r\n\r\n" + DOC_A
    assert [p.body for p in imdn.split_multipart(only_open, "x")] == [DOC_A]


def test_split_preamble_epilogue_lf_and_transport_padding() -> None:
    body = (
        b"preamble to ignore\n--b \t\nContent-Type: message/imdn+xml\n\n"
        + DOC_A
        + b"\n--b--  \nepilogue\n--b\nnot a part\n"
    )
    parts = imdn.split_multipart(body, "b")
    assert [p.body for p in parts] == [DOC_A]


def test_split_does_not_match_boundary_prefixes_mid_line() -> None:
    body = b"--b\r\n\r\nline with --b inside\r\n--bb not a delimiter\r\n--b--"
    (part,) = imdn.split_multipart(body, "b")
    assert part.body == b"line with --b inside\r\n--bb not a delimiter"


@pytest.mark.parametrize(
    ("body", "boundary", "reason"),
    [
        (b"no delimiter at all", "b", "no boundary delimiter"),
        (b"--b\r\n", "", "bad multipart boundary"),
        (b"--b\r\n", "b" * 71, "bad multipart boundary"),
        (b"--b\r\n continuation first\r\n\r\nx", "b", "continuation"),
    ],
)
def test_split_refusals(body: bytes, boundary: str, reason: str) -> None:
    with pytest.raises(ImdnError, match=reason):
        imdn.split_multipart(body, boundary)


def test_split_part_limit() -> None:
    body = b"".join(b"--b\r\n\r\nx\r\n" for _ in range(5)) + b"--b--"
    assert len(imdn.split_multipart(body, "b")) == 5
    with pytest.raises(ImdnError, match="more than 4 parts") as info:
        imdn.split_multipart(body, "b", max_parts=4)
    assert info.value.status_code == 413


def test_build_refusals() -> None:
    with pytest.raises(LocalProtocolError, match="at least one"):
        imdn.build_multipart([])
    with pytest.raises(LocalProtocolError, match="boundary"):
        imdn.build_multipart([DOC_A], boundary="bad\r\nboundary")
    with pytest.raises(LocalProtocolError, match="contains the multipart boundary"):
        imdn.build_multipart([b"x--imdn-b y"], boundary="imdn-b")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=6))
def test_split_inverts_build(documents: list[bytes]) -> None:
    boundary = "imdn-QQ"
    documents = [d.replace(b"--" + boundary.encode(), b"") for d in documents]
    _, body = imdn.build_multipart(documents, boundary=boundary)
    assert [p.body for p in imdn.split_multipart(body, boundary)] == documents


# -- inflate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [False, True])
def test_inflate_zlib_and_raw(raw: bool) -> None:
    packed = zlib.compress(DOC_A)[2:-4] if raw else zlib.compress(DOC_A)
    assert imdn.inflate(packed) == DOC_A


def test_inflate_bound_is_exact() -> None:
    data = b"x" * 1000
    assert imdn.inflate(zlib.compress(data), max_size=1000) == data
    with pytest.raises(ImdnError, match="larger than 999") as info:
        imdn.inflate(zlib.compress(data), max_size=999)
    assert info.value.status_code == 413


def test_inflate_bomb_refused_fast() -> None:
    bomb = zlib.compress(b"\0" * (32 * 1024 * 1024), 9)  # ~32 KB that would inflate to 32 MB
    started = time.perf_counter()
    with pytest.raises(ImdnError, match="larger than"):
        imdn.inflate(bomb)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("data", [b"", b"not deflate at all", zlib.compress(DOC_A)[:-8]])
def test_inflate_refuses_garbage_and_truncation(data: bytes) -> None:
    with pytest.raises(ImdnError, match="deflate"):
        imdn.inflate(data)
