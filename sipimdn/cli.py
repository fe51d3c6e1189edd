"""The ``sipimdn`` command line: ``python -m sipimdn <subcommand> ...``.

Subcommands come from a registry so each layer can contribute its own:
``SUBCOMMAND_MODULES`` lists modules with a ``register(subparsers)`` function
that adds subparsers, each with ``set_defaults(func=...)`` where ``func``
takes the parsed namespace and returns the exit status. ``parse`` (this
module) pretty-prints a SIP message from a file.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .errors import SipParseError
from .headers import NameAddr, Via, canonical_name, header_key
from .message import REASON_PHRASES, Message, Request, Response
from .parser import KeepAliveReceived, StreamFramer, parse_message
from .uri import Uri

__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main", "register"]

#: Modules whose ``register(subparsers)`` adds more subcommands (listen, send, demo).
SUBCOMMAND_MODULES: tuple[str, ...] = ("sipimdn.cli_ua",)

# -- parse ------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped, for a terminal."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode() for ch in text
    )


def _uri_fields(uri: Uri) -> str:
    parts = [f"scheme={uri.scheme}"]
    if uri.opaque is not None:
        parts.append(f"opaque={uri.opaque}")
    else:
        if uri.user is not None:
            parts.append(f"user={uri.user!r}")
        if uri.password is not None:
            parts.append("password=(set)")  # never echoed
        if uri.host:
            parts.append(f"host={uri.host}")
        if uri.port is not None:
            parts.append(f"port={uri.port}")
    for name, value in uri.params.items():
        parts.append(f";{name}" if value is None else f";{name}={value}")
    for name, value in uri.headers.items():
        parts.append(f"?{name}={value!r}")
    return " ".join(parts)


def _name_addr_fields(value: NameAddr) -> str:
    parts = []
    if value.display_name is not None:
        parts.append(f"display={value.display_name!r}")
    parts.append(f"uri=<{_uri_fields(value.uri)}>")
    for name, param in value.params.items():
        parts.append(name if param is None else f"{name}={param}")
    return " ".join(parts)


def _via_fields(via: Via) -> str:
    parts = [f"transport={via.transport}", f"host={via.host}"]
    if via.port is not None:
        parts.append(f"port={via.port}")
    for name, param in via.params.items():
        parts.append(f"{name}" if param is None else f"{name}={param}")
    return " ".join(parts)


def _typed_lines(message: Message, key: str, consumed: set[str]) -> list[str]:
    """Typed views of the header ``key`` (printed once per key)."""
    if key in consumed:
        return []
    consumed.add(key)
    if key == "via":
        return [_via_fields(v) for v in message.vias]
    if key in ("from", "to"):
        return [_name_addr_fields(message.from_ if key == "from" else message.to)]
    if key in ("contact", "route", "record-route"):
        values = {"contact": message.contact, "route": message.route, "record-route": message.record_route}[
            key
        ]
        return [_name_addr_fields(v) for v in values]
    if key == "cseq":
        return [f"number={message.cseq.number} method={message.cseq.method}"]
    if key == "content-type" and message.content_type is not None:
        ct = message.content_type
        return [" ".join([f"mime={ct.mime}", *(f"{k}={v}" for k, v in ct.params.items())])]
    if key == "max-forwards":
        return [f"hops={message.max_forwards}"]
    if key == "expires":
        return [f"seconds={message.expires}"]
    return []


def format_message(message: Request | Response) -> str:
    """A human-readable description of a parsed message."""
    out: list[str] = []
    if isinstance(message, Request):
        out.append(_printable(f"Request  {message.method} {message.uri}"))
        out.append(_printable(f"  Request-URI: {_uri_fields(message.uri)}"))
    else:
        out.append(_printable(f"Response {message.status_code} {message.reason}"))
    out.append(f"Headers ({len(message.headers)}):")
    consumed: set[str] = set()
    for name, value in message.headers.items():
        key = header_key(name)
        spelled = "" if name == canonical_name(name) else f"  [as {name!r}]"
        out.append(_printable(f"  {canonical_name(name)}: {value}{spelled}"))
        out.extend(_printable(f"      -> {line}") for line in _typed_lines(message, key, consumed))
    ct = message.content_type
    kind = f" ({ct.mime})" if ct is not None else ""
    out.append(f"Body: {len(message.body)} bytes{kind}")
    return "\n".join(out)


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as handle:
        return handle.read()


def _report_error(exc: SipParseError, stream: TextIO) -> int:
    reason = REASON_PHRASES.get(exc.status_code, "")
    print(f"error: {exc.reason}", file=stream)
    print(f"status: {exc.status_code} {reason}".rstrip(), file=stream)
    return 1


def run_parse(args: argparse.Namespace) -> int:
    """The ``parse`` subcommand: print each message in the file, or why it is bad."""
    try:
        data = _read(args.file)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        if args.stream:
            framer = StreamFramer()
            framer.feed(data)
            count = 0
            for event in framer:
                if isinstance(event, KeepAliveReceived):
                    print(f"Keep-alive (line end {event.run}{', ping' if event.is_ping else ''})")
                    continue
                event.validate()
                count += 1
                print(f"--- message {count}")
                print(format_message(event))
            if framer.buffered:
                print(f"error: {framer.buffered} bytes left over: an incomplete message", file=sys.stderr)
                return 1
            return 0
        message = parse_message(data)
        message.validate()
    except SipParseError as exc:
        return _report_error(exc, sys.stderr)
    print(format_message(message))
    if args.body and message.body:
        print(message.body.decode("utf-8", "replace"))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``parse`` subcommand."""
    parse = subparsers.add_parser(
        "parse",
        help="pretty-print a SIP message read from a file",
        description="Parse a SIP message (one datagram, or a TCP stream with --stream) and print it; "
        "exit 1 with the reason and the SIP status a server would answer if it is malformed.",
    )
    parse.add_argument("file", help="file holding the raw message ('-' for standard input)")
    parse.add_argument("--stream", action="store_true", help="read the file as a TCP/TLS stream of messages")
    parse.add_argument("--body", action="store_true", help="also print the body as UTF-8 text")
    parse.set_defaults(func=run_parse)


# -- the command line -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="sipimdn", description="sipimdn: SIP MESSAGE with CPIM and IMDN")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(subparsers)
    unavailable: list[str] = []
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            # A layer that does not import must not take `parse` down with it;
            # say so in --help instead.
            unavailable.append(f"{module_name}: {exc}")
            continue
        module.register(subparsers)
    if unavailable:
        parser.epilog = "unavailable subcommand modules: " + "; ".join(unavailable)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
