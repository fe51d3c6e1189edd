"""Digest access authentication for SIP user agent clients.

RFC 3261 §22 (SIP's use of Digest), RFC 7616 (HTTP Digest: SHA-256, SHA-512-256,
userhash), RFC 8760 (SIP's algorithm list; the topmost supported challenge is answered)
and RFC 2617 §3.2.2.1 (the legacy computation when a challenge has no qop).

Sans-IO: this module works on header *value strings* and never touches the
network or the clock. The moving parts are:

* :func:`parse_challenges` reads one ``WWW-Authenticate`` or
  ``Proxy-Authenticate`` value (which may hold several challenges) and raises
  :class:`~sipimdn.errors.RemoteProtocolError` on anything malformed.
* :func:`digest_response` / :func:`build_authorization` compute an answer.
* :class:`Authenticator` holds the configured :class:`Credentials` (per realm)
  and the nonces learned from earlier challenges, so later requests go out
  authenticated up front; :meth:`Authenticator.start` opens an
  :class:`AuthAttempt` for one request, which answers its 401/407 responses and
  refuses to loop.

What the caller (the user agent) does with the headers an attempt returns
(RFC 3261 §22.2, §22.3, §8.1.3.5): build the retry with the *same* Call-ID,
From (and tag), To, Request-URI and body, the CSeq number incremented by one,
a *new* Via branch (a new client transaction), and the returned headers
replacing any ``Authorization`` / ``Proxy-Authorization`` of the previous
attempt.

Secrets (passwords, and the HA1 derived from them) never appear in reprs,
exception messages or logs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from sipimdn._tokens import token_hex
from sipimdn.errors import AuthenticationFailed, LocalProtocolError, RemoteProtocolError

__all__ = [
    "ALGORITHMS",
    "AUTHORIZATION",
    "PROXY_AUTHENTICATE",
    "PROXY_AUTHORIZATION",
    "WWW_AUTHENTICATE",
    "AuthAttempt",
    "Authenticator",
    "Challenge",
    "Credentials",
    "DigestChallenge",
    "build_authorization",
    "challenge_header_for",
    "digest_challenges",
    "digest_response",
    "parse_challenges",
    "select_challenge",
]

WWW_AUTHENTICATE = "WWW-Authenticate"
PROXY_AUTHENTICATE = "Proxy-Authenticate"
AUTHORIZATION = "Authorization"
PROXY_AUTHORIZATION = "Proxy-Authorization"

# ---------------------------------------------------------------------------
# Grammar (RFC 3261 §25.1, with RFC 7235 §2.1 for token68)
# ---------------------------------------------------------------------------

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
# Leniency: HTTP's tchar (RFC 7230 §3.2.6) also allows "#$&^|"; servers that
# share code with HTTP stacks send them, so they are accepted too.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~#$&^|]+"

# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext        = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair   = "\" (%x00-09 / %x0B-0C / %x0E-7F)
# CR and LF never reach this point (folding is undone first, bare ones are
# rejected), so "anything but DQUOTE, backslash, CR, LF" is qdtext.
_QUOTED = r'"((?:[^"\\\r\n]|\\[^\r\n])*)"'

# token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="  (RFC 7235)
_TOKEN68 = r"[A-Za-z0-9\-._~+/]+=*"

# LWS = [*WSP CRLF] 1*WSP ; folding is replaced by one SP before scanning.
_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_WS_RE = re.compile(r"[ \t]*")
_TOKEN_RE = re.compile(_TOKEN)
# auth-param = auth-param-name EQUAL ( token / quoted-string ) ; EQUAL = SWS "=" SWS
_PARAM_RE = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*(?:{_QUOTED}|({_TOKEN}))")
_PARAM_START_RE = re.compile(rf"{_TOKEN}[ \t]*=")
_TOKEN68_RE = re.compile(rf"({_TOKEN68})[ \t]*(?=,|$)")
_UNESCAPE_RE = re.compile(r"\\(.)")
_BAD_CHARS_RE = re.compile(r"[\x00\r\n]")

# Header values we build go through this check: a CR, LF or NUL in a username
# or URI would let the value break out of its header line.
_UNSAFE_OUT_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge from a ``WWW-Authenticate`` / ``Proxy-Authenticate`` value."""

    scheme: str
    """The auth-scheme as received (compare case-insensitively)."""
    params: tuple[tuple[str, str], ...]
    """The auth-params in order: names lower-cased, values unquoted and unescaped."""
    token68: str | None = None
    """The token68 form some non-Digest schemes use instead of parameters."""

    def get(self, name: str) -> str | None:
        """Return the value of parameter ``name`` (case-insensitive), or None."""
        key = name.lower()
        for param_name, value in self.params:
            if param_name == key:
                return value
        return None

    @property
    def is_digest(self) -> bool:
        """True for the Digest scheme."""
        return self.scheme.lower() == "digest"


def _unescape(text: str) -> str:
    return _UNESCAPE_RE.sub(r"\1", text)


def parse_challenges(value: str) -> list[Challenge]:
    """Parse one ``WWW-Authenticate`` or ``Proxy-Authenticate`` header value.

    A value may carry several comma-separated challenges (RFC 7235 §4.1); a
    token that is not followed by ``=`` after a comma starts the next one.
    Unknown schemes and parameters are kept. Raises
    :class:`~sipimdn.errors.RemoteProtocolError` for malformed text, an empty
    value or a parameter repeated within one challenge.
    """
    text = _FOLD_RE.sub(" ", value)
    if _BAD_CHARS_RE.search(text):
        raise RemoteProtocolError("challenge contains CR, LF or NUL")
    challenges: list[Challenge] = []
    pos = 0
    end = len(text)

    def skip_ws(at: int) -> int:
        match = _WS_RE.match(text, at)
        assert match is not None  # "[ \t]*" always matches
        return match.end()

    def skip_list_separators(at: int) -> int:
        # #rule (RFC 7230 §7): empty list elements and extra commas are allowed.
        at = skip_ws(at)
        while at < end and text[at] == ",":
            at = skip_ws(at + 1)
        return at

    pos = skip_list_separators(pos)
    while pos < end:
        scheme_match = _TOKEN_RE.match(text, pos)
        if scheme_match is None:
            raise RemoteProtocolError(f"challenge: expected an auth-scheme at offset {pos}")
        scheme = scheme_match.group(0)
        pos = scheme_match.end()
        params: list[tuple[str, str]] = []
        seen: set[str] = set()
        token68: str | None = None
        if pos < end and text[pos] not in " \t,":
            raise RemoteProtocolError(f"challenge: unexpected character after scheme {scheme!r}")
        pos = skip_ws(pos)
        # token68 (RFC 7235) is only possible right after the scheme, and only as
        # the whole of the challenge: "abc==" is a token68, "abc=x" a parameter.
        # Digest itself never uses token68 (RFC 7616 §3.3), so "Digest realm=" is an error.
        t68 = None
        if pos < end and text[pos] != "," and scheme.lower() != "digest":
            t68 = _TOKEN68_RE.match(text, pos)
        if t68 is not None:
            token68 = t68.group(1)
            pos = t68.end()
        else:
            while pos < end:
                if text[pos] == ",":
                    nxt = skip_list_separators(pos)
                    if nxt >= end or not _PARAM_START_RE.match(text, nxt):
                        # Either the end, or a token without "=": the next challenge.
                        pos = nxt
                        break
                    pos = nxt
                elif params:
                    raise RemoteProtocolError(f"challenge: expected ',' at offset {pos}")
                param = _PARAM_RE.match(text, pos)
                if param is None:
                    raise RemoteProtocolError(f"challenge: malformed auth-param at offset {pos}")
                name = param.group(1).lower()
                if name in seen:
                    # RFC 7235 §2.1: each parameter name occurs once per challenge.
                    raise RemoteProtocolError(f"challenge: parameter {name!r} repeated")
                seen.add(name)
                raw = param.group(2)
                params.append((name, _unescape(raw) if raw is not None else param.group(3)))
                pos = skip_ws(param.end())
        challenges.append(Challenge(scheme=scheme, params=tuple(params), token68=token68))
        if token68 is not None:
            pos = skip_ws(pos)
            if pos < end and text[pos] != ",":
                raise RemoteProtocolError(f"challenge: expected ',' at offset {pos}")
        pos = skip_list_separators(pos)
    if not challenges:
        raise RemoteProtocolError("challenge header is empty")
    return challenges


# ---------------------------------------------------------------------------
# Algorithms (RFC 8760 §2.7, RFC 7616 §3.2)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str  # canonical spelling
    hash_name: str  # hashlib name
    session: bool  # the "-sess" variant: HA1 also covers nonce and cnonce
    strength: int  # higher is stronger


_ALGORITHM_LIST = (
    _Algorithm("MD5", "md5", False, 1),
    _Algorithm("MD5-sess", "md5", True, 1),
    _Algorithm("SHA-256", "sha256", False, 2),
    _Algorithm("SHA-256-sess", "sha256", True, 2),
    _Algorithm("SHA-512-256", "sha512_256", False, 3),
    _Algorithm("SHA-512-256-sess", "sha512_256", True, 3),
)
_ALGORITHMS_BY_KEY = {alg.name.upper(): alg for alg in _ALGORITHM_LIST}

ALGORITHMS: tuple[str, ...] = tuple(alg.name for alg in _ALGORITHM_LIST)
"""Every algorithm this module can answer, weakest first."""

_SUPPORTED_QOP = ("auth", "auth-int")


def _algorithm(name: str) -> _Algorithm:
    try:
        return _ALGORITHMS_BY_KEY[name.upper()]
    except KeyError:
        raise LocalProtocolError(f"unsupported digest algorithm {name!r}") from None


def _hash(alg: _Algorithm, data: bytes) -> str:
    return hashlib.new(alg.hash_name, data).hexdigest()


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """A Digest challenge with the parameters this module understands picked out."""

    realm: str
    """The protection space (RFC 3261 §22.1: the realm string alone)."""
    nonce: str
    """The server nonce."""
    algorithm: str | None
    """The algorithm token as received, or None when absent (meaning MD5)."""
    qop: tuple[str, ...]
    """The offered qop values, lower-cased; empty for an RFC 2069 style challenge."""
    opaque: str | None
    """Echoed back unchanged when present."""
    stale: bool
    """True when the server says the previous nonce merely expired."""
    userhash: bool
    """True when the server supports a hashed username (RFC 7616 §3.4.4)."""
    proxy: bool
    """True for a Proxy-Authenticate challenge (answered with Proxy-Authorization)."""
    params: tuple[tuple[str, str], ...] = ()
    """Every parameter as received, unknown ones included."""

    @classmethod
    def from_challenge(cls, challenge: Challenge, *, proxy: bool) -> DigestChallenge:
        """Check a parsed Digest challenge; raises RemoteProtocolError if unusable."""
        if not challenge.is_digest:
            raise RemoteProtocolError(f"not a Digest challenge: {challenge.scheme!r}")
        realm = challenge.get("realm")
        nonce = challenge.get("nonce")
        if realm is None:
            raise RemoteProtocolError("Digest challenge without realm")
        if not nonce:
            raise RemoteProtocolError("Digest challenge without nonce")
        qop_text = challenge.get("qop")
        qop: tuple[str, ...] = ()
        if qop_text is not None:
            qop = tuple(part.strip().lower() for part in qop_text.split(",") if part.strip())
        return cls(
            realm=realm,
            nonce=nonce,
            algorithm=challenge.get("algorithm"),
            qop=qop,
            opaque=challenge.get("opaque"),
            stale=(challenge.get("stale") or "").lower() == "true",
            userhash=(challenge.get("userhash") or "").lower() == "true",
            proxy=proxy,
            params=challenge.params,
        )

    @property
    def supported(self) -> bool:
        """True if this module can answer it (known algorithm and qop)."""
        if (self.algorithm or "MD5").upper() not in _ALGORITHMS_BY_KEY:
            return False
        return not self.qop or any(q in _SUPPORTED_QOP for q in self.qop)

    @property
    def strength(self) -> int:
        """Rank of the algorithm (0 when unsupported); higher is stronger."""
        alg = _ALGORITHMS_BY_KEY.get((self.algorithm or "MD5").upper())
        return alg.strength if alg is not None and self.supported else 0


def challenge_header_for(status_code: int) -> str:
    """The header carrying the challenges of a 401 or 407 response."""
    if status_code == 401:
        return WWW_AUTHENTICATE
    if status_code == 407:
        return PROXY_AUTHENTICATE
    raise LocalProtocolError(f"status {status_code} carries no authentication challenge")


def digest_challenges(values: Iterable[str], *, proxy: bool) -> list[DigestChallenge]:
    """Parse every header line of one kind and return its valid Digest challenges.

    Non-Digest schemes are dropped (RFC 3261 §22.1: Basic is deprecated and never used). A syntax
    error in any line raises RemoteProtocolError; a Digest challenge missing
    its realm or nonce is dropped, so one broken challenge next to a good one
    does not stop authentication.
    """
    found: list[DigestChallenge] = []
    for value in values:
        for challenge in parse_challenges(value):
            if not challenge.is_digest:
                continue
            try:
                found.append(DigestChallenge.from_challenge(challenge, proxy=proxy))
            except RemoteProtocolError:
                continue
    return found


def select_challenge(challenges: Sequence[DigestChallenge]) -> DigestChallenge | None:
    """Pick the challenge to answer among those of one realm: the topmost one we support.

    RFC 8760 §2.4: a server lists its challenges most preferred first and the
    UAC answers the topmost one whose algorithm (and qop) it supports; the
    others are ignored. The server's order is its policy (it may put MD5 first
    for a reason of its own), so we do not second-guess it by strength.
    None if nothing is supported.
    """
    for challenge in challenges:
        if challenge.strength > 0:
            return challenge
    return None


# ---------------------------------------------------------------------------
# Computation (RFC 7616 §3.4.1-§3.4.4, RFC 2617 §3.2.2.1)
# ---------------------------------------------------------------------------


def digest_response(
    *,
    algorithm: str | None,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: int = 1,
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """Compute the ``response`` value, lower-case hex.

    ``qop`` None selects the RFC 2617 legacy form ``KD(H(A1), nonce ":" H(A2))``.
    For ``auth-int`` the body is hashed into A2 (an empty body hashes as H("")).
    Strings are encoded as UTF-8 (SIP's charset).
    """
    alg = _algorithm(algorithm or "MD5")
    ha1 = _hash(alg, f"{username}:{realm}:{password}".encode())
    if alg.session:
        ha1 = _hash(alg, f"{ha1}:{nonce}:{cnonce}".encode())
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 = f"{a2}:{_hash(alg, body)}"
    elif qop not in (None, "auth"):
        raise LocalProtocolError(f"unsupported qop {qop!r}")
    ha2 = _hash(alg, a2.encode())
    if qop is None:
        return _hash(alg, f"{ha1}:{nonce}:{ha2}".encode())
    return _hash(alg, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}".encode())


def _quote(value: str) -> str:
    if _UNSAFE_OUT_RE.search(value):
        raise LocalProtocolError("control character in a Digest parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _choose_qop(challenge: DigestChallenge, prefer_auth_int: bool) -> str | None:
    if not challenge.qop:
        return None
    if prefer_auth_int and "auth-int" in challenge.qop:
        return "auth-int"
    if "auth" in challenge.qop:
        return "auth"
    if "auth-int" in challenge.qop:
        return "auth-int"
    raise LocalProtocolError(f"no supported qop in {challenge.qop!r}")


def build_authorization(
    challenge: DigestChallenge,
    credentials: Credentials,
    *,
    method: str,
    uri: str,
    body: bytes = b"",
    nc: int = 1,
    cnonce: str | None = None,
    prefer_auth_int: bool = False,
) -> str:
    """Build the ``Authorization`` / ``Proxy-Authorization`` value answering ``challenge``.

    ``uri`` is the Request-URI as sent (RFC 3261 §22.4: the digest-uri is the
    Request-URI and is always quoted). ``cnonce`` defaults to 128 bits from
    the operating system's CSPRNG (``sipimdn._tokens``). ``nc`` is the nonce count for this use of the nonce.
    """
    alg = _algorithm(challenge.algorithm or "MD5")
    qop = _choose_qop(challenge, prefer_auth_int)
    if cnonce is None:
        cnonce = token_hex(16)
    response = digest_response(
        algorithm=alg.name,
        username=credentials.username,
        password=credentials.password,
        realm=challenge.realm,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        body=body,
    )
    username = credentials.username
    if challenge.userhash:
        # RFC 7616 §3.4.4: username := H(username ":" realm); A1 keeps the clear name.
        username = _hash(alg, f"{username}:{challenge.realm}".encode())
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
    ]
    if challenge.algorithm is not None:
        # Echo the server's token; when it sent none, stay silent (RFC 2617 clients).
        parts.append(f"algorithm={challenge.algorithm}")
    if qop is not None or alg.session:
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop is not None:
        # qop and nc are tokens, never quoted (RFC 7616 §3.4).
        parts.append(f"qop={qop}")
        parts.append(f"nc={nc:08x}")
    if challenge.userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)


# ---------------------------------------------------------------------------
# Credentials, cache and per-request attempts
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password for one realm (or any realm when ``realm`` is None)."""

    username: str
    """The user name (clear; hashed on the wire only if the server asks for userhash)."""
    password: str = field(repr=False)
    """The secret. Excluded from repr so it cannot leak into logs."""
    realm: str | None = None
    """The realm these apply to; None makes them the fallback for any realm."""


@dataclass(slots=True)
class _Answered:
    nonce: str
    preemptive: bool
    stale_retry_used: bool = False


_MAX_CHALLENGES_PER_REQUEST = 4
"""Bound on rounds per request: preemptive + proxy + registrar + one stale, at most."""


class Authenticator:
    """Credentials per realm plus what earlier challenges taught us.

    One instance per account (registrar / outbound proxy). Remembers, per
    (proxy?, realm), the last challenge answered, and counts uses of each nonce
    (``nc``), so :meth:`start` can authenticate the next request up front.
    """

    def __init__(
        self,
        credentials: Credentials | Iterable[Credentials],
        *,
        prefer_auth_int: bool = False,
        cnonce_factory: Callable[[], str] | None = None,
    ) -> None:
        creds = [credentials] if isinstance(credentials, Credentials) else list(credentials)
        self._by_realm: dict[str | None, Credentials] = {}
        for cred in creds:
            self._by_realm.setdefault(cred.realm, cred)
        self._prefer_auth_int = prefer_auth_int
        self._cnonce_factory = cnonce_factory or (lambda: token_hex(16))
        # (proxy, realm) -> last challenge we answered: insertion order is kept so
        # preemptive headers come out in a stable order.
        self._cache: dict[tuple[bool, str], DigestChallenge] = {}
        self._nonce_counts: dict[str, int] = {}

    def __repr__(self) -> str:
        realms = sorted(repr(r) for r in self._by_realm)
        return f"<Authenticator realms=[{', '.join(realms)}] cached={len(self._cache)}>"

    def credentials_for(self, realm: str) -> Credentials | None:
        """The credentials for ``realm``: an exact match first, then the fallback."""
        return self._by_realm.get(realm) or self._by_realm.get(None)

    @property
    def known_realms(self) -> list[tuple[bool, str]]:
        """(proxy?, realm) pairs that will be answered up front on the next request."""
        return list(self._cache)

    def forget(self, realm: str | None = None) -> None:
        """Drop remembered challenges (all, or those of one realm)."""
        for key in [k for k in self._cache if realm is None or k[1] == realm]:
            nonce = self._cache.pop(key).nonce
            self._nonce_counts.pop(nonce, None)

    def start(self, method: str, uri: str, body: bytes = b"", *, preemptive: bool = True) -> AuthAttempt:
        """Open the authentication context of one request (and its retries).

        ``uri`` is the Request-URI as it will be sent. With ``preemptive`` the
        attempt's :attr:`AuthAttempt.headers` already answer the challenges
        remembered from earlier requests.
        """
        return AuthAttempt(self, method, uri, body, preemptive=preemptive)

    # -- used by AuthAttempt --------------------------------------------------

    def _remember(self, challenge: DigestChallenge) -> None:
        key = (challenge.proxy, challenge.realm)
        previous = self._cache.get(key)
        if previous is not None and previous.nonce != challenge.nonce:
            self._nonce_counts.pop(previous.nonce, None)
        self._cache[key] = challenge

    def _answer(self, challenge: DigestChallenge, method: str, uri: str, body: bytes) -> str:
        credentials = self.credentials_for(challenge.realm)
        if credentials is None:  # pragma: no cover - callers check first
            raise AuthenticationFailed(f"no credentials for realm {challenge.realm!r}")
        nc = self._nonce_counts.get(challenge.nonce, 0) + 1
        self._nonce_counts[challenge.nonce] = nc
        return build_authorization(
            challenge,
            credentials,
            method=method,
            uri=uri,
            body=body,
            nc=nc,
            cnonce=self._cnonce_factory(),
            prefer_auth_int=self._prefer_auth_int,
        )


class AuthAttempt:
    """Authentication of one request across its retries.

    ``headers`` holds the (name, value) pairs to put on the request being sent
    now. After a 401/407, :meth:`handle_challenge` computes the headers for the
    retry or raises :class:`~sipimdn.errors.AuthenticationFailed`; the rules:

    * a realm never answered (or answered only up front, from the cache) is
      answered once;
    * a realm answered before is answered again only if the new challenge says
      ``stale=true`` with a new nonce, and only once per request;
    * anything else (our credentials were just rejected, no credentials for any
      challenged realm, no supported algorithm, too many rounds) fails.
    """

    def __init__(
        self, authenticator: Authenticator, method: str, uri: str, body: bytes, *, preemptive: bool
    ) -> None:
        self._auth = authenticator
        self.method = method
        """The request method (A2)."""
        self.uri = uri
        """The Request-URI, used as digest-uri."""
        self._body = body
        self._answered: dict[tuple[bool, str], _Answered] = {}
        self._rounds = 0
        self.headers: list[tuple[str, str]] = []
        """The authorization headers for the request being sent now."""
        if preemptive:
            for key, challenge in authenticator._cache.items():
                self._answered[key] = _Answered(challenge.nonce, preemptive=True)
            self.headers = self._build_headers()

    @property
    def challenges_answered(self) -> int:
        """How many 401/407 responses this attempt has answered so far."""
        return self._rounds

    def handle_challenge(self, status_code: int, values: Sequence[str]) -> list[tuple[str, str]]:
        """Answer a 401 (``WWW-Authenticate`` values) or 407 (``Proxy-Authenticate`` values).

        ``values`` are all header lines of the matching header, in order.
        Returns the new full list of authorization headers for the retry (also
        stored in :attr:`headers`). Raises AuthenticationFailed when the
        request must not be retried.
        """
        header = challenge_header_for(status_code)
        proxy = header == PROXY_AUTHENTICATE
        if self._rounds >= _MAX_CHALLENGES_PER_REQUEST:
            raise AuthenticationFailed(f"authentication failed: {self._rounds} challenges for one request")
        try:
            challenges = digest_challenges(values, proxy=proxy)
        except RemoteProtocolError as exc:
            raise AuthenticationFailed(f"authentication failed: unreadable {header}: {exc.reason}") from exc
        if not challenges:
            raise AuthenticationFailed(f"authentication failed: no Digest challenge in the {status_code}")
        by_realm: dict[str, list[DigestChallenge]] = {}
        for challenge in challenges:
            by_realm.setdefault(challenge.realm, []).append(challenge)

        chosen: list[DigestChallenge] = []
        problems: list[str] = []
        for realm, group in by_realm.items():
            if self._auth.credentials_for(realm) is None:
                problems.append(f"no credentials for realm {realm!r}")
                continue
            best = select_challenge(group)
            if best is None:
                offered = ", ".join(sorted({c.algorithm or "MD5" for c in group}))
                problems.append(f"realm {realm!r}: no supported algorithm/qop among {offered}")
                continue
            previous = self._answered.get((proxy, realm))
            if previous is not None and not previous.preemptive:
                if best.stale and best.nonce != previous.nonce and not previous.stale_retry_used:
                    self._answered[(proxy, realm)] = _Answered(best.nonce, False, stale_retry_used=True)
                    self._auth._remember(best)
                    chosen.append(best)
                    continue
                # RFC 3261 §22.2: credentials the server just rejected are not sent again.
                raise AuthenticationFailed(f"authentication failed: credentials for realm {realm!r} rejected")
            self._answered[(proxy, realm)] = _Answered(best.nonce, False)
            self._auth._remember(best)
            chosen.append(best)
        if not chosen:
            raise AuthenticationFailed("authentication failed: " + "; ".join(problems))
        self._rounds += 1
        self.headers = self._build_headers()
        return list(self.headers)

    def handle_success(self, authentication_info: str | None) -> None:
        """Take note of a 2xx's ``Authentication-Info`` value (RFC 3261 §20.6, RFC 7616 §3.5).

        A ``nextnonce`` replaces the remembered nonce of the (single) realm this
        request answered with ``Authorization``, so the next request uses it up
        front with ``nc`` starting again at 1. A malformed value is ignored: the
        request already succeeded, and the old nonce still works until it expires.
        """
        if not authentication_info:
            return
        try:
            (info,) = parse_challenges("Info " + authentication_info)
        except (RemoteProtocolError, ValueError):
            return
        nextnonce = info.get("nextnonce")
        realms = [realm for proxy, realm in self._answered if not proxy]
        if not nextnonce or len(realms) != 1:
            return
        cached = self._auth._cache.get((False, realms[0]))
        if cached is not None and cached.nonce != nextnonce:
            self._auth._remember(replace(cached, nonce=nextnonce, stale=False))

    def _build_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        for key in self._answered:
            challenge = self._auth._cache.get(key)
            if challenge is None:
                continue
            name = PROXY_AUTHORIZATION if challenge.proxy else AUTHORIZATION
            headers.append((name, self._auth._answer(challenge, self.method, self.uri, self._body)))
        return headers
