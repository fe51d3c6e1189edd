"""Hardened XML parsing for peer documents (IMDN, RFC 5438; is-composing, RFC 3994).

A parser of peer XML is an attack surface (entity bombs, external entities,
deep nesting, huge documents). The defences, in the order they run:

1. a size cap checked on the raw bytes, before any parsing;
2. UTF-8 only (RFC 5438 §11.1; is-composing documents are held to the
   same): a UTF-16/32 byte order mark or an XML declaration naming another
   encoding is refused, so the DOCTYPE scan below cannot be dodged by
   re-encoding;
3. any ``<!DOCTYPE`` is refused, so no entity is ever declared;
4. lxml/libxml2 with ``resolve_entities=False, no_network=True,
   load_dtd=False, huge_tree=False`` (libxml2's own limits stay on);
5. the element depth is bounded while walking the tree.
"""

from __future__ import annotations

import re
import threading

from lxml import etree

from .errors import ImdnError, RemoteProtocolError

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_SIZE", "make_parser", "parse_xml"]

MAX_DOCUMENT_SIZE = 64 * 1024
"""Default cap on one IMDN document in bytes (an IMDN is a few hundred bytes)."""

MAX_DEPTH = 16
"""Default cap on element nesting (the IMDN schema needs 4 plus extensions)."""


def make_parser() -> etree.XMLParser:
    """A parser with every expansion and fetch turned off (the settings are the defence)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


# lxml parser objects should not be shared between threads: keep one per thread.
_local = threading.local()


def _parser() -> etree.XMLParser:
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = make_parser()
    return parser


_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")
_XML_DECL_ENCODING_RE = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")


def parse_xml(
    data: bytes,
    *,
    max_size: int = MAX_DOCUMENT_SIZE,
    max_depth: int = MAX_DEPTH,
    error: type[RemoteProtocolError] = ImdnError,
) -> etree._Element:
    """Parse ``data`` as a standalone UTF-8 XML document and return its root element.

    Raises ``error`` (:class:`~sipimdn.errors.ImdnError` unless the caller's codec has its own
    type): status 413 when too large, else 400.
    """
    if len(data) > max_size:
        raise error(f"XML document larger than {max_size} bytes", 413)
    if data.startswith(_BOMS) or (len(data) >= 2 and (data[0] == 0 or data[1] == 0)):
        raise error("XML document is not UTF-8")
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is harmless
    if data.lstrip(b" \t\r\n")[:1] not in (b"<", b""):
        # Also catches EBCDIC and other encodings libxml2 would autodetect,
        # in which the byte scan for "<!DOCTYPE" below would see nothing.
        raise error("XML document does not start with '<' in UTF-8")
    decl = _XML_DECL_ENCODING_RE.match(data)
    if decl is not None and decl.group(1).lower() not in (b"utf-8", b"utf8"):
        raise error(f"XML encoding {decl.group(1).decode('ascii')!r} is not UTF-8")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise error("XML document has a DOCTYPE; DTDs and entities are refused")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise error(f"XML not well-formed: {exc}") from None
    except ValueError as exc:  # e.g. lxml refusing some inputs outright
        raise error(f"XML not parseable: {exc}") from None
    docinfo = root.getroottree().docinfo
    doctype: str | None = docinfo.doctype  # type: ignore[union-attr]
    if doctype:
        raise error("XML document has a DOCTYPE; DTDs and entities are refused")
    encoding: str | None = docinfo.encoding
    if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
        raise error(f"XML encoding {encoding!r} is not UTF-8")
    _check_depth(root, max_depth, error)
    return root


def _check_depth(root: etree._Element, max_depth: int, error: type[RemoteProtocolError]) -> None:
    # Nesting can never exceed the number of nodes: a notification has about
    # ten, so one C-level count settles the common case without the walk.
    if len(list(root.iter())) <= max_depth:
        return
    # Iterative walk: recursion would let the document choose our stack depth.
    stack: list[tuple[etree._Element, int]] = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > max_depth:
            raise error(f"XML nesting deeper than {max_depth} elements")
        stack.extend((child, depth + 1) for child in element)
