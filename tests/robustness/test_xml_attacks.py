"""Hostile message/imdn+xml documents (RFC 5438 §14 security; XML hardening): refused quickly, memory bounded.

Each attack goes through ``imdn.parse_notification`` (what the user agent calls on every IMDN it
receives) and must end in ``ImdnError`` within a time bound, with a bounded peak of resident
memory (tests/memory_probe.py: the kernel's count, which sees libxml2's allocations, unlike
tracemalloc). The external-entity tests also prove no file was read and no connection was made,
and the expansion tests check the refusal happened before any expansion (the error names the
DOCTYPE) rather than after.
"""

from __future__ import annotations

import socket
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree
from memory_probe import peak_rss

from sipimdn import cpim, imdn
from sipimdn.errors import ImdnError

NS = "urn:ietf:params:xml:ns:imdn"
# Generous for a loaded 2-core CI machine; a real expansion takes seconds to minutes.
TIME_BOUND = 0.5
MEMORY_BOUND = 8 * 1024 * 1024  # resident bytes; the worst attack here peaks near 3 MB


def body(inner: str = "", *, doctype: str = "", message_id: str = "34jk324j") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}'
            f'<imdn xmlns="{NS}"><message-id>{message_id}</message-id>'
            f"<datetime>2008-04-04T12:16:49-05:00</datetime>{inner}"
            "<delivery-notification><status><delivered/></status></delivery-notification></imdn>").encode()


@dataclass
class Cost:
    seconds: float = 0.0
    peak: int = 0


@contextmanager
def measured() -> Iterator[Cost]:
    cost = Cost()
    with peak_rss() as memory:
        began = time.perf_counter()
        try:
            yield cost
        finally:
            cost.seconds = time.perf_counter() - began
    cost.peak = memory.growth


def refused(data: bytes, parse: Callable[[bytes], object] = imdn.parse_notification) -> ImdnError:
    """Parse ``data``; it must be refused with ImdnError, fast and in bounded memory."""
    with measured() as cost, pytest.raises(ImdnError) as info:
        parse(data)
    assert cost.seconds < TIME_BOUND, f"took {cost.seconds:.3f} s"
    assert cost.peak < MEMORY_BOUND, f"peak RSS grew by {cost.peak} bytes"
    assert 400 <= info.value.status_code < 500
    return info.value


def test_the_memory_measure_sees_libxml2() -> None:
    """Control: a tree built by libxml2 (about 40 MB, outside Python's allocator) shows in the
    measure, so the bound above can fail."""
    document = b"<r>" + b"<e a='1'>x</e>" * 100_000 + b"</r>"
    with measured() as cost:
        tree = etree.fromstring(document, etree.XMLParser(huge_tree=True))
        assert len(tree) == 100_000
        del tree
    assert cost.peak > 2 * MEMORY_BOUND, f"an lxml tree of 100k elements showed {cost.peak} bytes"


def test_the_baseline_document_parses() -> None:
    """The attacks below differ from a valid document only by the attack."""
    assert imdn.parse_notification(body()).message_id == "34jk324j"


def test_billion_laughs() -> None:
    levels = ['<!ENTITY lol0 "lol">']
    levels += [f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)]
    doctype = "<!DOCTYPE imdn [" + "".join(levels) + "]>\n"
    error = refused(body("", doctype=doctype, message_id="&lol9;"))
    assert "DOCTYPE" in error.reason  # refused before any expansion


def test_quadratic_blowup() -> None:
    # One 50 kB entity referenced 1,000 times: 50 MB if expanded (no nesting, so libxml2's
    # amplification guard alone would not catch it as early).
    doctype = f'<!DOCTYPE imdn [<!ENTITY a "{"x" * 50_000}">]>\n'
    data = body("", doctype=doctype, message_id="&a;" * 1000)
    error = refused(data)
    assert error.status_code in (400, 413)


def test_quadratic_blowup_under_the_size_cap() -> None:
    doctype = f'<!DOCTYPE imdn [<!ENTITY a "{"x" * 20_000}">]>\n'
    data = body("", doctype=doctype, message_id="&a;" * 2000)
    assert len(data) < 64 * 1024
    assert "DOCTYPE" in refused(data).reason


def test_external_entity_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    doctype = f'<!DOCTYPE imdn [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
    error = refused(body("", doctype=doctype, message_id="&xxe;"))
    assert "TOP-SECRET" not in str(error)


def test_external_entity_network_makes_no_connection() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        for doctype in (
            f'<!DOCTYPE imdn [<!ENTITY xxe SYSTEM "http://127.0.0.1:{port}/x">]>\n',
            f'<!DOCTYPE imdn SYSTEM "http://127.0.0.1:{port}/dtd">\n',
            f'<!DOCTYPE imdn [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p"> %p;]>\n',
        ):
            refused(body("", doctype=doctype, message_id="&xxe;" if "xxe" in doctype else "a"))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


def test_xinclude_is_not_processed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    inner = f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file://{secret}" parse="text"/>'
    original = b"<message-id>34jk324j</message-id>"
    data = body("").replace(original, f"<message-id>{inner}</message-id>".encode())
    try:
        parsed = imdn.parse_notification(data)
    except ImdnError:
        return  # refused: fine
    assert "TOP-SECRET" not in parsed.message_id


@pytest.mark.parametrize("depth", [17, 100, 5_000])
def test_deep_nesting(depth: int) -> None:
    nested = "<x:e xmlns:x='urn:x'>" * depth + "</x:e>" * depth
    error = refused(body(nested))
    assert "deep" in error.reason or "nest" in error.reason or error.status_code == 413


def test_deep_nesting_past_the_size_cap() -> None:
    nested = "<e>" * 100_000 + "</e>" * 100_000
    assert refused(body(nested)).status_code == 413


@pytest.mark.parametrize("size", [60_000, 1_000_000])
def test_huge_attribute(size: int) -> None:
    inner = f'<x:e xmlns:x="urn:x" a="{"A" * size}"/>'
    data = body(inner)
    if len(data) <= 64 * 1024:
        # Under the cap it is only a large but harmless document: accepted or refused, bounded.
        with measured() as cost, suppress(ImdnError):
            imdn.parse_notification(data)
        assert cost.seconds < TIME_BOUND and cost.peak < MEMORY_BOUND
    else:
        assert refused(data).status_code == 413


def test_many_attributes() -> None:
    inner = "<x:e xmlns:x='urn:x' " + " ".join(f"a{i}='1'" for i in range(6_000)) + "/>"
    refused(body(inner))


def test_ten_megabyte_document() -> None:
    data = body("<x:e xmlns:x='urn:x'>" + "y" * (10 * 1024 * 1024) + "</x:e>")
    error = refused(data)
    assert error.status_code == 413


@pytest.mark.parametrize("data", [
    # DOCTYPE smuggled through another encoding: refused for not being UTF-8.
    b"\xff\xfe" + body(doctype='<!DOCTYPE imdn [<!ENTITY a "b">]>').decode().encode("utf-16-le"),
    body(doctype='<!DOCTYPE imdn [<!ENTITY a "b">]>').decode().encode("utf-16-be"),
    body().replace(b'encoding="UTF-8"', b'encoding="UTF-7"'),
    body().replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"'),
    # After a comment and a processing instruction, and with a UTF-8 BOM in front.
    b"\xef\xbb\xbf" + body(doctype='<!-- hi --><?pi x?><!DOCTYPE imdn [<!ENTITY a "b">]>'),
    # Unterminated: the parser must not wait for more.
    body()[:-20],
], ids=["utf16le-bom", "utf16be", "utf7-decl", "latin1-decl", "bom-comment-pi", "truncated"])
def test_smuggling_and_broken_documents(data: bytes) -> None:
    refused(data)


def test_deflated_bomb_through_recognise() -> None:
    """A 100 MB deflate bomb inside an IMDN (Content-Encoding: deflate) stops at the bound."""
    bomb = zlib.compress(b" " * (100 * 1024 * 1024), 9)
    assert len(bomb) < 200 * 1024
    message = cpim.build_message(
        [("From", "<im:bob@example.com>"), ("To", "<im:alice@example.com>"),
         ("NS", "imdn <urn:ietf:params:imdn>"), ("imdn.Message-ID", "d834jied93rf"),
         ("DateTime", "2008-04-04T12:16:49-05:00")],
        content_type="message/imdn+xml",
        body=bomb,
        mime_headers=[("Content-Disposition", "notification"), ("Content-Encoding", "deflate")],
    )
    parsed = cpim.parse(message.to_bytes())
    error = refused(parsed.to_bytes(), lambda _: imdn.recognise(parsed))
    assert error.status_code == 413
