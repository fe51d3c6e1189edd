"""The ``sipimdn`` command line: ``python -m sipimdn <subcommand> ...``.

Subcommands come from a registry so each layer can contribute its own:
``SUBCOMMAND_MODULES`` lists modules with a ``register(subparsers)`` function
that adds subparsers, each with ``set_defaults(func=...)`` where ``func``
takes the parsed namespace and returns the exit status. ``parse`` (this
module) pretty-prints a SIP message from a file.

Every subcommand takes ``-v`` (INFO logging on standard error) and ``-vv``
(DEBUG), each line with its level and logger name. An expected failure (a
:class:`~sipimdn.errors.SipError` or an ``OSError`` such as a port in use) is
one line on standard error, ``sipimdn COMMAND: error: ...``, with a hint where
one helps, and exit status 1; usage errors exit 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import ssl
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TextIO

from . import __version__
from .errors import (
    AuthenticationFailed,
    ProtocolError,
    SipError,
    SipParseError,
    StoreError,
    TransactionTimeout,
)
from .headers import NameAddr, Via, canonical_name, header_key
from .message import REASON_PHRASES, Message, Request, Response
from .parser import KeepAliveReceived, StreamFramer, parse_message
from .uri import Uri

__all__ = [
    "LOG_FORMAT",
    "SUBCOMMAND_MODULES",
    "build_parser",
    "error_text",
    "explain",
    "logging_to_stderr",
    "main",
    "register",
    "version",
]

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


def version() -> str:
    """The installed distribution's version (package metadata), else ``sipimdn.__version__``."""
    try:
        return importlib.metadata.version("sipimdn")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return __version__


#: Format of the log lines ``-v``/``-vv`` print on standard error.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def logging_to_stderr(verbosity: int, *, stream: TextIO | None = None) -> Iterator[None]:
    """While inside, print sipimdn's log records on ``stream`` (standard error): WARNING and up
    by default, INFO with ``verbosity`` 1, DEBUG with 2 or more; other libraries' from WARNING.

    The ``sipimdn.wire`` logger (whole messages) is kept out: ``--trace`` shows it.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package, wire = logging.getLogger("sipimdn"), logging.getLogger("sipimdn.wire")
    saved = package.level, wire.level, wire.propagate
    root = logging.getLogger()
    root.addHandler(handler)
    package.setLevel(level)
    wire.propagate = False
    if wire.level == logging.NOTSET:
        wire.setLevel(logging.WARNING)  # -vv must not pay for formatting every message
    try:
        yield
    finally:
        root.removeHandler(handler)
        package.setLevel(saved[0])
        wire.setLevel(saved[1])
        wire.propagate = saved[2]


def _errno_text(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text}: {exc.filename}" if exc.filename else text


def _hint(exc: BaseException, text: str) -> str | None:
    lowered = text.lower()
    if "handshake" in lowered or isinstance(exc, ssl.SSLError):
        if "certificate verify failed" in lowered or "certificate_verify_failed" in lowered:
            if "mismatch" in lowered:
                return "the certificate does not name that host: use the name it carries in --to"
            return "the peer's certificate is not trusted: give the CA that signed it with --ca FILE"
        return "check --ca (the CA of the peer's certificate) and that the peer speaks TLS on that port"
    if "address already in use" in lowered:
        return "another program uses that port: pick another in --listen (port 0 takes any free one)"
    if "cannot assign requested address" in lowered:
        return "that address is not one of this machine's: use one it has (127.0.0.1 for loopback)"
    if "permission denied" in lowered and "bind" in lowered:
        return "ports below 1024 need root: use a higher port in --listen"
    if "connection refused" in lowered or "econnrefused" in lowered:
        return "nothing listens there: check the host and port in --to, and --transport"
    if isinstance(exc, TransactionTimeout):
        return "nobody answered: check the host and port in --to and that the peer runs"
    if isinstance(exc, AuthenticationFailed):
        return "check --username and the password (--password-file or $SIPIMDN_PASSWORD)"
    if isinstance(exc, StoreError):
        return "check that the --store path is writable and not used by another process"
    return None


def explain(exc: BaseException) -> tuple[str, str | None]:
    """An expected failure as (one line saying what went wrong, a hint or None).

    Protocol errors are given by their reason alone (the SIP status they carry is for peers).
    """
    if isinstance(exc, ProtocolError):
        text = exc.reason
    elif isinstance(exc, OSError):
        text = _errno_text(exc)
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())  # one line, whatever the message held
    return text, _hint(exc, text)


def error_text(exc: BaseException) -> str:
    """:func:`explain` as one line: what went wrong, then ``; hint: ...`` when one helps."""
    text, hint = explain(exc)
    return f"{text}; hint: {hint}" if hint else text


def _add_verbosity(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="log on standard error: -v INFO, -vv DEBUG (level and logger name on each line)",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``PROG: error: MESSAGE (see PROG --help)``, exit status 2.

    Subcommand parsers are of the same class (argparse makes them with the parent's).
    """

    def error(self, message: str) -> NoReturn:
        """Print the one line and exit 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand registered."""
    parser = _Parser(prog="sipimdn", description="sipimdn: SIP MESSAGE with CPIM and IMDN")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _add_verbosity(parser, default=0)
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
    for subparser in subparsers.choices.values():
        # After the subcommand too (`sipimdn send -v ...`); SUPPRESS keeps a -v given before it.
        _add_verbosity(subparser, default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (1 for failures, 2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with logging_to_stderr(args.verbose):
            return func(args)
    except KeyboardInterrupt:
        return 130
    except (SipError, OSError) as exc:
        print(f"sipimdn {args.command}: error: {error_text(exc)}", file=sys.stderr, flush=True)
        return 1
