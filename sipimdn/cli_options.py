"""Command line options shared by ``sipimdn listen``, ``send`` and ``demo``: argument types, TLS,
credentials and the user agent configuration they make."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import ssl
from collections.abc import Sequence
from typing import Any

from .auth import Credentials
from .config import ListenEndpoint, UserAgentConfig
from .errors import SipParseError
from .imdn.vocabulary import DispositionRequest
from .transport.dns import parse_nameserver
from .transport.flow import is_ip_literal
from .uri import Uri

#: Environment variable holding the digest password (the alternative to --password-file).
PASSWORD_ENV = "SIPIMDN_PASSWORD"

_NOTIFY_KINDS = ("positive-delivery", "negative-delivery", "display")


# -- shared option handling --------------------------------------------------------------------


def _endpoint(text: str) -> ListenEndpoint:
    try:
        return ListenEndpoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dns_server(text: str) -> str:
    """A name server as ``host:port`` (argparse ``type=``)."""
    try:
        parse_nameserver(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _notify(text: str) -> frozenset[DispositionRequest]:
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = kinds - set(_NOTIFY_KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown notification {sorted(unknown)} (use {','.join(_NOTIFY_KINDS)})"
        )
    return frozenset(DispositionRequest(kind) for kind in kinds)


def _uri(text: str) -> str:
    """A SIP or SIPS URI (argparse ``type=``); a missing scheme gets a suggestion."""
    try:
        uri = Uri.parse(text)
    except SipParseError as exc:
        bare = "@" in text and ":" not in text.split("@", 1)[0]
        suggestion = f"; did you mean sip:{text}?" if bare else ""
        raise argparse.ArgumentTypeError(f"{exc.reason}{suggestion}") from None
    if uri.scheme not in ("sip", "sips"):
        raise argparse.ArgumentTypeError(f"{text!r} is a {uri.scheme}: URI; give a sip: or sips: URI")
    return text


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse ``type=``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _delay(text: str) -> float:
    """Zero or more seconds (argparse ``type=``)."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return _seconds(text)


def _expires(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError("the binding lifetime must be between 1 and 2147483647 seconds")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is between 0 and 65535")
    return port


def _count(text: str) -> int:
    """A whole number, at least 1 (argparse ``type=``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _status(text: str) -> int:
    try:
        code = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a status code") from None
    if not 200 <= code <= 699:
        raise argparse.ArgumentTypeError("the status must be a final response code (200-699)")
    return code


def _tls_contexts(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    server: ssl.SSLContext | None = None
    client: ssl.SSLContext | None = None
    if args.key and not args.cert:
        raise _UsageError("--key needs --cert")
    try:
        if args.cert:
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server.load_cert_chain(args.cert, args.key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise _UsageError(f"cannot load --cert {args.cert}" + (f" / --key {args.key}" if args.key else "")
                          + f": {_load_error(exc)}") from None
    try:
        if args.ca:
            client = ssl.create_default_context(cafile=args.ca)
    except (OSError, ValueError) as exc:
        raise _UsageError(f"cannot load --ca {args.ca}: {_load_error(exc)}") from None
    return server, client


def _load_error(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not a PEM file of the right kind ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _add_common(parser: argparse.ArgumentParser, *, listen_default: str | None) -> None:
    parser.add_argument(
        "--aor", required=True, type=_uri, help="our address of record, e.g. sip:bob@127.0.0.1"
    )
    parser.add_argument("--display-name", default=None, help="display name for From")
    parser.add_argument(
        "--listen",
        action="append",
        type=_endpoint,
        default=None,
        help=f"transport:host:port to listen on, repeatable (default {listen_default or 'none'})",
    )
    parser.add_argument(
        "--store",
        default=":memory:",
        metavar="PATH|URL",
        help="notification state: a SQLite file, or a postgresql:// URL shared by several workers",
    )
    parser.add_argument("--cert", default=None, help="PEM certificate chain for TLS listening")
    parser.add_argument("--key", default=None, help="PEM private key for --cert")
    parser.add_argument("--ca", default=None, help="PEM CA bundle to verify TLS peers")
    parser.add_argument(
        "--proxy", default=None, type=_uri, help="outbound proxy URI: every request goes through it"
    )
    parser.add_argument(
        "--dns-server",
        action="append",
        type=_dns_server,
        default=None,
        metavar="HOST:PORT",
        help="name server for RFC 3263 location (NAPTR, SRV, A), repeatable; needs sipimdn[dns]",
    )
    parser.add_argument(
        "--register",
        action="store_true",
        help="register our contact with the registrar (the AOR's domain, through --proxy) while running",
    )
    parser.add_argument("--registrar", default=None, type=_uri, help="registrar URI (implies --register)")
    parser.add_argument(
        "--register-expires", type=_expires, default=3600, metavar="SECONDS",
        help="binding lifetime to ask for",
    )
    parser.add_argument("--username", default=None, help="digest user name for 401/407 challenges")
    parser.add_argument(
        "--password-file",
        type=_password_file,
        default=None,
        metavar="PATH",
        help=f"file whose first line is the digest password (or set ${PASSWORD_ENV})",
    )
    # Refused, not taken: see the module docstring. Hidden from --help.
    parser.add_argument("--password", action=_RefusePassword, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object per event and line")
    _add_trace(parser)


def _add_trace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print every SIP message sent and received, in full, on standard error "
        "(time, transport, direction, both ends: like SIPp's -trace_msg)",
    )


class _Password(str):
    """A password read from a file; its repr never shows it (argparse and tracebacks print reprs)."""

    def __repr__(self) -> str:
        return "<password>"


def _password_file(path: str) -> _Password:
    """The first line of ``path`` (argparse ``type=``): usage error if unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline().rstrip("\r\n")
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read password file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        # The message would quote the undecodable bytes, which are part of the secret.
        raise argparse.ArgumentTypeError(f"password file {path!r} is not UTF-8") from None
    if not line:
        raise argparse.ArgumentTypeError(f"password file {path!r} is empty")
    return _Password(line)


class _RefusePassword(argparse.Action):
    """``--password``: a usage error that does not echo the value."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parser.error(
            "--password is not accepted (visible to other users): "
            f"use --password-file PATH or ${PASSWORD_ENV}"
        )


class _UsageError(Exception):
    """A combination of options that cannot work: exit 2 with this message."""


def _credentials(args: argparse.Namespace) -> tuple[Credentials, ...]:
    password: str | None = args.password_file
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    if args.username is None:
        if args.password_file is not None:
            raise _UsageError("--password-file needs --username")
        return ()
    if password is None:
        raise _UsageError(f"--username needs a password: --password-file PATH or ${PASSWORD_ENV}")
    return (Credentials(args.username, password),)


def _reachable_aor(aor: str, listen: Sequence[ListenEndpoint]) -> str:
    """The AOR with the port we listen on, when it names one of our IP addresses without a port.

    Notifications come back to the AOR. Without a registrar, ``--aor
    sip:alice@127.0.0.1`` with ``--listen udp:127.0.0.1:0`` would send them to
    port 5060, where nobody listens; the listen port (0: the one bound) is
    what the user means.
    """
    try:
        uri = Uri.parse(aor)
    except SipParseError:
        return aor  # UserAgentConfig reports it
    if uri.port is not None or uri.scheme not in ("sip", "sips") or not is_ip_literal(uri.host):
        return aor
    wanted = "tls" if uri.secure else (uri.transport or "udp")
    for endpoint in listen:
        if endpoint.host == uri.host and endpoint.transport == wanted:
            return str(dataclasses.replace(uri, port=endpoint.port))
    return aor


def _config(args: argparse.Namespace, default_listen: str, **extra: Any) -> UserAgentConfig:
    listen = tuple(args.listen) if args.listen else (ListenEndpoint.parse(default_listen),)
    server, client = _tls_contexts(args)
    registers = args.register or args.registrar is not None
    try:
        return UserAgentConfig(
            # A registered AOR is a name at the registrar, not our address: keep it as given.
            aor=args.aor if registers else _reachable_aor(args.aor, listen),
            outbound_proxy=args.proxy,
            credentials=_credentials(args),
            register=registers,
            registrar=args.registrar,
            register_expires=args.register_expires,
            display_name=args.display_name,
            listen=listen,
            store_path=args.store,
            tls_server_context=server,
            tls_client_context=client,
            dns_servers=tuple(args.dns_server or ()),
            **extra,
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
