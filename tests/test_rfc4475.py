"""RFC 4475 (SIP torture test messages), the syntax-related ones.

The messages live in tests/data/rfc4475/<name>.sip, one file each, written
from RFC 4475 §3 with CRLF line ends and the <hex> escapes expanded. §3.1.1
(valid) must parse, validate and round-trip; §3.1.2 (invalid) must raise
``SipParseError`` with the status a server should answer. From §3.2-3.4 we
keep the messages that a parser sees: the well-formed ones must parse (their
problems belong to higher layers) and the three about syntax (insuf, multi01,
mcl01) must be rejected.

Where we differ from RFC 4475's verdict, the case says so and why (baddate).
mpart01's binary part is our own bytes (the RFC's CMS blob could not be
copied octet for octet); its structure, CRs, LFs and NULs inside the body
are kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipimdn import Request, Response, SipParseError, StreamFramer, parse_message

DATA = Path(__file__).parent / "data" / "rfc4475"


def load(name: str) -> bytes:
    return (DATA / f"{name}.sip").read_bytes()


# name -> (RFC 4475 section, what it exercises)
VALID = {
    "wsinv": ("3.1.1.1", "short tortuous INVITE: folding, odd whitespace, compact forms"),
    "intmeth": ("3.1.1.2", "wide range of valid characters"),
    "esc01": ("3.1.1.3", "valid use of the % escaping mechanism"),
    "escnull": ("3.1.1.4", "escaped nulls in URIs"),
    "esc02": ("3.1.1.5", "use of % when it is not an escape"),
    "lwsdisp": ("3.1.1.6", "no LWS between display name and <"),
    "longreq": ("3.1.1.7", "long values in header fields"),
    "dblreq": ("3.1.1.8", "extra trailing octets in a UDP datagram"),
    "semiuri": ("3.1.1.9", "semicolon-separated parameters in URI user part"),
    "transports": ("3.1.1.10", "varied and unknown transport types"),
    "mpart01": ("3.1.1.11", "multipart MIME message with a binary part"),
    "unreason": ("3.1.1.12", "unusual reason phrase"),
    "noreason": ("3.1.1.13", "empty reason phrase"),
    # §3.2-§3.4: well-formed; what is wrong with them is for higher layers.
    "badbranch": ("3.2.1", "missing transaction identifier (branch is just the cookie)"),
    "unkscm": ("3.3.2", "Request-URI with unknown scheme"),
    "novelsc": ("3.3.3", "Request-URI with known but atypical scheme"),
    "unksm2": ("3.3.4", "unknown URI schemes in header fields"),
    "bext01": ("3.3.5", "Proxy-Require and Require"),
    "invut": ("3.3.6", "unknown content type"),
    "regaut01": ("3.3.7", "unknown authorization scheme"),
    "bcast": ("3.3.10", "200 OK with broadcast Via sent-by"),
    "zeromf": ("3.3.11", "Max-Forwards of zero"),
    "cparam01": ("3.3.12", "REGISTER with a contact header parameter"),
    "cparam02": ("3.3.13", "REGISTER with a URL parameter"),
    "regescrt": ("3.3.14", "REGISTER with a URL-escaped header"),
    "sdp01": ("3.3.15", "unacceptable Accept offering"),
    "inv2543": ("3.4.1", "INVITE with RFC 2543 syntax"),
}

# name -> (RFC 4475 section, status, stage, fragment of the reason)
# stage "parse": parse_message raises; "validate": parse_message succeeds
# (framing is fine) and Message.validate() raises.
INVALID = {
    "badinv01": ("3.1.2.1", 400, "validate", "bad parameter in Via"),
    "clerr": ("3.1.2.2", 400, "parse", "shorter than Content-Length"),
    "ncl": ("3.1.2.3", 400, "parse", "bad Content-Length"),
    "scalar02": ("3.1.2.4", 400, "validate", "CSeq number out of range"),
    "scalarlg": ("3.1.2.5", 400, "validate", "CSeq number out of range"),
    "quotbal": ("3.1.2.6", 400, "validate", "unterminated quoted display name"),
    "ltgtruri": ("3.1.2.7", 400, "parse", "invalid URI"),
    "lwsruri": ("3.1.2.8", 400, "parse", "bad request line"),
    "lwsstart": ("3.1.2.9", 400, "parse", "bad request line"),
    "trws": ("3.1.2.10", 400, "parse", "bad request line"),
    "escruri": ("3.1.2.11", 400, "parse", "Request-URI with a headers component"),
    "regbadct": ("3.1.2.13", 400, "validate", "bad address"),
    "badaspec": ("3.1.2.14", 400, "validate", "invalid URI"),
    "baddn": ("3.1.2.15", 400, "validate", "bad display name"),
    "badvers": ("3.1.2.16", 505, "parse", "unsupported SIP version"),
    "mismatch01": ("3.1.2.17", 400, "validate", "does not match request method"),
    "mismatch02": ("3.1.2.18", 400, "validate", "does not match request method"),
    "bigcode": ("3.1.2.19", 400, "parse", "bad status line"),
    "insuf": ("3.3.1", 400, "validate", "missing From"),
    "multi01": ("3.3.8", 400, "validate", "more than one"),
    "mcl01": ("3.3.9", 400, "parse", "conflicting Content-Length"),
}

# Valid messages whose wire form legitimately changes when written back.
CHANGED_ON_WRITE = {
    "dblreq": "the surplus octets after the body are discarded (RFC 3261 §18.3)",
    "inv2543": "a Content-Length is added (RFC 2543 allowed it to be absent over UDP)",
}


def test_every_file_is_classified() -> None:
    files = {p.stem for p in DATA.glob("*.sip")}
    assert files == set(VALID) | set(INVALID) | {"baddate"}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_messages_parse_validate_and_round_trip(name: str) -> None:
    data = load(name)
    message = parse_message(data)
    message.validate()
    wire = message.to_bytes()
    if name in CHANGED_ON_WRITE:
        assert wire != data
    else:
        assert wire == data, "untouched headers must be written back byte for byte"
    again = parse_message(wire)
    again.validate()
    assert again.to_bytes() == wire
    assert list(again.headers.items())[: len(message.headers)] == list(message.headers.items())
    assert again.body == message.body
    if isinstance(message, Request):
        assert isinstance(again, Request)
        assert (again.method, again.uri) == (message.method, message.uri)
    else:
        assert isinstance(message, Response) and isinstance(again, Response)
        assert (again.status_code, again.reason) == (message.status_code, message.reason)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_messages_through_the_stream_framer(name: str) -> None:
    wire = parse_message(load(name)).to_bytes()  # always carries Content-Length
    framer = StreamFramer()
    framer.feed(wire + wire)
    events = list(framer)
    assert len(events) == 2
    for event in events:
        assert isinstance(event, (Request, Response))
        assert event.to_bytes() == wire


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_messages_raise_with_status(name: str) -> None:
    _section, status, stage, fragment = INVALID[name]
    data = load(name)
    if stage == "parse":
        with pytest.raises(SipParseError) as info:
            parse_message(data)
    else:
        message = parse_message(data)  # framing is fine: a server can answer it
        with pytest.raises(SipParseError) as info:
            message.validate()
    assert info.value.status_code == status
    assert fragment in info.value.reason


def test_baddate_is_accepted_deliberately() -> None:
    """RFC 4475 §3.1.2.12 lists a Date in EST as invalid.

    We differ on purpose: sipimdn does not interpret Date, and the RFC itself
    says an element should not reject the request unless the Date matters to
    its processing. The header is kept verbatim for the application.
    """
    message = parse_message(load("baddate"))
    message.validate()
    assert message.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


# -- what the valid messages must mean ------------------------------------------


def test_wsinv_meaning() -> None:
    msg = parse_message(load("wsinv"))
    assert isinstance(msg, Request)
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert dict(msg.route[0].uri.params) == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    contact = msg.contact[0]
    assert contact.display_name == 'Quoted string ""'
    assert dict(contact.params) == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(msg.body) == 150


def test_intmeth_meaning() -> None:
    msg = parse_message(load("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.params["fromparam''~+*_!.-%"] == "работающий"
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes_meaning() -> None:
    esc01 = parse_message(load("esc01"))
    assert isinstance(esc01, Request)
    assert esc01.uri.user == "sips:user@example.com" and esc01.uri.host == "example.net"
    assert esc01.to.uri.user == "user"
    assert esc01.from_.uri.user == "I have spaces"
    assert dict(esc01.contact[0].uri.params) == {"lr": None, "name": "value%41"}
    escnull = parse_message(load("escnull"))
    assert escnull.to.uri.user == "null-\x00-null"
    assert [c.uri.user for c in escnull.contact] == ["\x00", "\x00\x00"]
    esc02 = parse_message(load("esc02"))
    assert isinstance(esc02, Request) and esc02.method == "RE%47IST%45R"
    assert esc02.to.display_name == "%Z%45"
    assert esc02.top_via.branch == "z9hG4bK209%fzsnel234"
    # C%6Fntact is a different (unknown) header, not a third Contact
    assert [c.uri.user for c in esc02.contact] == ["alias1", "alias3"]
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_other_valid_meanings() -> None:
    assert parse_message(load("lwsdisp")).from_.display_name == "caller"
    longreq = parse_message(load("longreq"))
    assert len(longreq.vias) == 34
    assert longreq.vias[-1].received == "192.0.2.5"
    dblreq = parse_message(load("dblreq"))
    assert isinstance(dblreq, Request) and dblreq.method == "REGISTER" and dblreq.body == b""
    semiuri = parse_message(load("semiuri"))
    assert isinstance(semiuri, Request)
    assert semiuri.uri.user == "user;par=u@example.net" and dict(semiuri.uri.params) == {}
    assert len(semiuri.headers.get_all("Accept")) == 6
    transports = parse_message(load("transports"))
    assert [v.transport for v in transports.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    unreason = parse_message(load("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    noreason = parse_message(load("noreason"))
    assert isinstance(noreason, Response) and (noreason.status_code, noreason.reason) == (100, "")
    mpart = parse_message(load("mpart01"))
    assert mpart.content_type is not None and mpart.content_type.params["boundary"] == "7a9cbec02ceef655"
    assert b"\x00" in mpart.body and mpart.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_unknown_schemes_are_kept_opaque() -> None:
    unkscm = parse_message(load("unkscm"))
    assert isinstance(unkscm, Request)
    assert (unkscm.uri.scheme, unkscm.uri.opaque) == ("nobodyknowsthisscheme", "totallyopaquecontent")
    novelsc = parse_message(load("novelsc"))
    assert isinstance(novelsc, Request) and novelsc.uri.scheme == "soap.beep"
    unksm2 = parse_message(load("unksm2"))
    assert unksm2.to.uri.scheme == "isbn" and unksm2.from_.uri.scheme == "http"
    assert unksm2.contact[0].uri.opaque == "John_Smith"


def test_scalar02_every_overlarge_scalar_is_an_error_on_its_own() -> None:
    """§3.1.2.4: the CSeq makes the request invalid; the RFC lets an element
    choose for Max-Forwards > 255 and Expires > 2**32-1, and we reject both
    rather than guess (absent / a default expiry)."""
    msg = parse_message(load("scalar02"))
    with pytest.raises(SipParseError, match="Max-Forwards"):
        _ = msg.max_forwards
    with pytest.raises(SipParseError, match="Expires"):
        _ = msg.expires
    assert parse_message(
        load("scalar02").replace(b"Expires: 1" + b"0" * 100, b"Expires: 4294967295")
    ).expires == (2**32 - 1)
