"""IMDN CPIM headers (RFC 5438 §6, §10): typed access, Disposition-Notification,
Message-ID generation, and refusals."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn import cpim, imdn
from sipimdn.cpim import grammar
from sipimdn.errors import ImdnError, LocalProtocolError

DR = imdn.DispositionRequest
TAIL = b"\r\nContent-Type: text/plain\r\n\r\nhi"


def message(*lines: str, prefix: str = "imdn") -> cpim.CpimMessage:
    head = f"From: <im:a@example.com>\r\nNS: {prefix} <urn:ietf:params:imdn>\r\n"
    return cpim.parse((head + "".join(line + "\r\n" for line in lines)).encode() + TAIL)


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        (
            "positive-delivery, negative-delivery, display",
            ["positive-delivery", "negative-delivery", "display"],
        ),
        ("positive-delivery,display", ["positive-delivery", "display"]),  # seen from real peers
        ("processing  ,  display", ["processing", "display"]),  # COMMA = *SP "," *SP
        ("display", ["display"]),
        ("", []),  # the RFC 5438 §10 grammar allows an empty value: nothing requested
        ("   ", []),
    ],
)
def test_disposition_notification_values(value: str, tokens: list[str]) -> None:
    assert [r.token for r in imdn.parse_disposition_notification(value)] == tokens


def test_unknown_tokens_and_parameters_are_kept() -> None:
    """RFC 5438 §10 notify-req = (... / Token) *(SEMI Ext-param); §7.2: unknown values are ignored."""
    reqs = imdn.parse_disposition_notification('display ; x=1;y="a b", x-custom;ttl=30, positive-delivery')
    assert reqs == (
        imdn.NotifyRequest("display", (("x", "1"), ("y", '"a b"'))),
        imdn.NotifyRequest("x-custom", (("ttl", "30"),)),
        imdn.NotifyRequest("positive-delivery"),
    )
    assert [r.known for r in reqs] == [DR.DISPLAY, None, DR.POSITIVE_DELIVERY]
    assert (
        imdn.format_disposition_notification(reqs)
        == 'display;x=1;y="a b", x-custom;ttl=30, positive-delivery'
    )
    assert imdn.parse_disposition_notification(imdn.format_disposition_notification(reqs)) == reqs


@pytest.mark.parametrize("value", ["display,", ",display", "display;", "dis play", "display;x", "display;=1"])
def test_malformed_disposition_notification(value: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        imdn.parse_disposition_notification(value)
    with pytest.raises(ImdnError, match="malformed"):
        imdn.imdn_headers(message(f"imdn.Disposition-Notification: {value}"))


def test_format_refuses_bad_values() -> None:
    with pytest.raises(LocalProtocolError):
        imdn.format_disposition_notification(["bad value"])
    assert (
        imdn.format_disposition_notification([DR.DISPLAY, "negative-delivery"])
        == "display, negative-delivery"
    )


def test_typed_access_with_any_prefix() -> None:
    """RFC 5438 §6.1: every IMDN header found by URN under an unusual prefix."""
    msg = message(
        "z.Message-ID: Ab-_09",
        "z.Disposition-Notification: negative-delivery",
        "z.Disposition-Notification: processing",
        "z.Original-To: Bob <sip:bob@example.com>",
        "z.IMDN-Record-Route: <sip:newest.example.com>",
        "z.IMDN-Record-Route: Server <sip:older.example.com>",
        "z.IMDN-Route: <sip:route.example.com>",
        prefix="z",
    )
    headers = imdn.imdn_headers(msg)
    assert headers.message_id == "Ab-_09"
    assert headers.requested == {DR.NEGATIVE_DELIVERY, DR.PROCESSING}
    assert headers.original_to == cpim.CpimAddress("sip:bob@example.com", "Bob")
    assert [r.uri for r in headers.record_routes] == ["sip:newest.example.com", "sip:older.example.com"]
    assert [r.uri for r in headers.routes] == ["sip:route.example.com"]


@pytest.mark.parametrize("value", ["abc@host", "a/b=", "<x>"])
def test_non_token_message_id_tolerated_on_receive(value: str) -> None:
    """RFC 5438 §6.3 wants a Token: ``abc@host`` or standard base64 are not Tokens; we accept them from peers
    (lenient on receive) and can still echo them in an IMDN, but never generate them."""
    msg = message(f"imdn.Message-ID: {value}")
    assert imdn.imdn_headers(msg).message_id == value
    note = imdn.make_notification(message_id=value, datetime="d", kind="delivery", status="delivered")
    assert imdn.parse_notification(note.to_xml()).message_id == value
    with pytest.raises(LocalProtocolError, match="CPIM Token"):
        imdn.build_im(from_="im:a@x", to="im:b@x", body=b"", now=0, message_id=value)


def test_absent_headers() -> None:
    headers = imdn.imdn_headers(message())
    assert headers == imdn.ImdnHeaders(None, None, None, (), ())
    assert headers.requested == frozenset()
    empty = imdn.imdn_headers(message("imdn.Disposition-Notification: "))
    assert empty.disposition_notification == ()
    assert empty.requested == frozenset()


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (["imdn.Message-ID: a", "imdn.Message-ID: b"], "more than one IMDN Message-ID"),
        (["imdn.Message-ID: "], "empty or holds spaces"),
        (["imdn.Message-ID: a b"], "empty or holds spaces"),
        (["imdn.Original-To: sip:bob@example.com"], "Original-To"),
        (["imdn.Original-To: <sip:a@x>", "imdn.Original-To: <sip:b@x>"], "more than one Original-To"),
        (["imdn.IMDN-Record-Route: nowhere"], "IMDN-Record-Route"),
        (["imdn.IMDN-Route: <>"], "IMDN-Route"),
    ],
)
def test_refusals(lines: list[str], reason: str) -> None:
    with pytest.raises(ImdnError, match=reason) as info:
        imdn.imdn_headers(message(*lines))
    assert info.value.status_code == 400


def test_message_id_generator() -> None:
    """RFC 5438 §6.3: >= 128 bits from secrets, URL-safe, a valid CPIM Token."""
    ids = {imdn.new_message_id() for _ in range(2000)}
    assert len(ids) == 2000
    for mid in list(ids)[:200]:
        assert grammar.TOKEN_RE.fullmatch(mid)
        assert grammar.NAME_RE.fullmatch(mid)  # not even a "." in it
        assert len(base64.urlsafe_b64decode(mid + "==")) * 8 >= 128


notify_tokens = st.sampled_from(["positive-delivery", "negative-delivery", "display", "processing", "x-ext"])
ext_params = st.lists(
    st.tuples(
        st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.from_regex(r"[A-Za-z0-9.]{1,8}", fullmatch=True)
    ),
    max_size=2,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(notify_tokens, ext_params), max_size=5))
def test_disposition_notification_round_trip(items: list[tuple[str, list[tuple[str, str]]]]) -> None:
    reqs = tuple(imdn.NotifyRequest(t, tuple(p)) for t, p in items)
    assert imdn.parse_disposition_notification(imdn.format_disposition_notification(reqs)) == reqs


# -- imdn_headers against a plain reading (differential) ---------------------------------------


def _plain_reading(msg: cpim.CpimMessage) -> object:
    """The IMDN headers read one by one through the message's namespace access."""
    ns = imdn.IMDN_NS
    try:
        ids = msg.get_all(ns, "Message-ID")
        if len(ids) > 1:
            raise ImdnError("more than one IMDN Message-ID header")
        message_id = ids[0].value.rstrip(" ") if ids else None
        if message_id is not None and grammar.LENIENT_TOKEN_RE.fullmatch(message_id) is None:
            raise ImdnError(f"IMDN Message-ID is empty or holds spaces: {message_id!r}")
        dn = msg.get_all(ns, "Disposition-Notification")
        disposition = None
        if dn:
            try:
                disposition = tuple(r for h in dn for r in imdn.parse_disposition_notification(h.value))
            except ValueError as exc:
                raise ImdnError(str(exc)) from None
        originals = msg.get_all(ns, "Original-To")
        if len(originals) > 1:
            raise ImdnError("more than one Original-To header (RFC 5438 §6.4)")

        def address(h: cpim.CpimHeader) -> cpim.CpimAddress:
            try:
                return cpim.parse_address(h.value)
            except ValueError as exc:
                raise ImdnError(f"{h.full_name}: {exc}") from None

        known = frozenset(r.known for r in disposition or () if r.known is not None)
        return (
            message_id,
            disposition,
            address(originals[0]) if originals else None,
            tuple(address(h) for h in msg.get_all(ns, "IMDN-Record-Route")),
            tuple(address(h) for h in msg.get_all(ns, "IMDN-Route")),
            known,
        )
    except ImdnError as exc:
        return ("refused", exc.reason)


_IMDN_LINES = st.sampled_from(
    [
        "imdn.Message-ID: a1",
        "imdn.Message-ID: abc@host",
        "imdn.Message-ID: ",
        "imdn.Disposition-Notification: positive-delivery, display",
        "imdn.Disposition-Notification: x-ext;v=1,negative-delivery",
        "imdn.Disposition-Notification: ",
        "imdn.Disposition-Notification: bad value!",
        "imdn.Original-To: <sip:o@example.com>",
        "imdn.Original-To: junk",
        "imdn.IMDN-Record-Route: <sip:r1@example.com>",
        "imdn.IMDN-Record-Route: Proxy <sip:r2@example.com>",
        "imdn.IMDN-Route: <sip:r3@example.com>",
        "imdn.IMDN-Route: nope",
        "other.Message-ID: not-imdn",
        "NS: other <urn:ietf:params:imdn>",
        "Subject: not imdn",
    ]
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_IMDN_LINES, max_size=7), prefix=st.sampled_from(["imdn", "zz"]))
def test_imdn_headers_agree_with_a_plain_reading(lines: list[str], prefix: str) -> None:
    msg = message(*lines, prefix=prefix)
    expected = _plain_reading(msg)
    try:
        headers = imdn.imdn_headers(msg)
    except ImdnError as exc:
        assert ("refused", exc.reason) == expected
        return
    assert (
        headers.message_id,
        headers.disposition_notification,
        headers.original_to,
        headers.record_routes,
        headers.routes,
        headers.requested,
    ) == expected
