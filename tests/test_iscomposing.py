"""is-composing (RFC 3994): the codec, the CPIM helper and both state machines on a fake clock."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn import cpim
from sipimdn.errors import IsComposingError, LocalProtocolError
from sipimdn.iscomposing import (
    CONTENT_TYPE,
    DEFAULT_GRACE,
    DEFAULT_REFRESH,
    XML_NS,
    ChangeCause,
    ComposingReceiver,
    ComposingSender,
    ComposingState,
    ComposingStateChanged,
    IsComposing,
    build_iscomposing,
    composing_from_content,
    composing_from_cpim,
    is_composing_type,
    parse_iscomposing,
)

# The shapes of RFC 3994 §5's examples: an active indication with refresh, an idle one with lastactive.
ACTIVE_DOC = b"""<?xml version="1.0" encoding="UTF-8"?>
<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <state>active</state>
  <contenttype>text/plain</contenttype>
  <refresh>90</refresh>
</isComposing>
"""
IDLE_DOC = b"""<?xml version="1.0" encoding="UTF-8"?>
<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">
  <state>idle</state>
  <lastactive>2003-01-27T10:43:00Z</lastactive>
  <contenttype>audio</contenttype>
</isComposing>
"""
# What liblinphone sends (no contenttype, refresh 60).
LINPHONE_DOC = (
    b'<?xml version="1.0" encoding="UTF-8"?><isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing" '
    b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><state>active</state><refresh>60</refresh>'
    b"</isComposing>"
)


def _doc(inner: str) -> bytes:
    return f'<isComposing xmlns="{XML_NS}">{inner}</isComposing>'.encode()


# -- codec ----------------------------------------------------------------------------------------


def test_parse_active_and_idle_examples() -> None:
    active = parse_iscomposing(ACTIVE_DOC)
    assert active == IsComposing(ComposingState.ACTIVE, None, "text/plain", 90)
    idle = parse_iscomposing(IDLE_DOC)
    assert idle.state is ComposingState.IDLE
    assert idle.last_active == dt.datetime(2003, 1, 27, 10, 43, tzinfo=dt.UTC)
    assert idle.content_type == "audio"
    assert idle.refresh is None
    assert parse_iscomposing(LINPHONE_DOC) == IsComposing(ComposingState.ACTIVE, refresh=60)


def test_build_round_trips() -> None:
    when = dt.datetime(2026, 5, 1, 12, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    for doc in (
        IsComposing(ComposingState.ACTIVE, content_type="text/plain", refresh=120),
        IsComposing(ComposingState.IDLE, last_active=when, content_type="audio"),
        IsComposing(ComposingState.IDLE, last_active=dt.datetime(2026, 5, 1, tzinfo=dt.UTC)),
        IsComposing(ComposingState.ACTIVE),
    ):
        data = build_iscomposing(
            doc.state, last_active=doc.last_active, content_type=doc.content_type, refresh=doc.refresh
        )
        assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
        assert parse_iscomposing(data) == doc
        assert doc.to_xml() == data
    assert b"<lastactive>2026-05-01T00:00:00Z</lastactive>" in build_iscomposing(
        "idle", last_active=dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    )


def test_extension_elements_are_kept_and_rebuilt() -> None:
    data = _doc('<state>active</state><refresh>60</refresh><x:mood xmlns:x="urn:example:x">busy</x:mood>')
    doc = parse_iscomposing(data)
    assert doc.extensions == (b'<x:mood xmlns:x="urn:example:x">busy</x:mood>',)
    again = parse_iscomposing(doc.to_xml())
    assert again == doc


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_doc("<refresh>60</refresh>"), "schema"),  # state is mandatory
        (_doc("<state>typing</state>"), "active or idle"),
        (_doc("<state>active</state><refresh>0</refresh>"), "schema"),
        (_doc("<state>active</state><refresh>-5</refresh>"), "schema"),
        (_doc("<state>active</state><refresh>99999999999</refresh>"), "10 digits"),
        (_doc("<state>idle</state><lastactive>yesterday</lastactive>"), "schema"),
        (_doc("<state>idle</state><lastactive>99999-01-01T00:00:00Z</lastactive>"), "date-time"),
        (_doc("<refresh>60</refresh><state>active</state>"), "schema"),  # order is fixed
        (_doc("<state>active</state><state>idle</state>"), "schema"),
        (_doc("<state>active</state><unknown/>"), "schema"),  # no-namespace is not ##other
        (_doc("<state>active</state><contenttype>" + "a" * 300 + "</contenttype>"), "longer"),
        (b'<isComposing xmlns="urn:other"><state>active</state></isComposing>', "root element"),
        (b"<isComposing><state>active</state></isComposing>", "root element"),
        (b"not xml at all", "UTF-8"),
        (b"<isComposing", "well-formed"),
        (b'<!DOCTYPE isComposing [<!ENTITY a "aaaa">]>' + _doc("<state>&a;</state>"), "DOCTYPE"),
        ('<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"/>'.encode("utf-16"), "UTF-8"),
    ],
)
def test_bad_documents_raise_400(data: bytes, fragment: str) -> None:
    with pytest.raises(IsComposingError) as info:
        parse_iscomposing(data)
    assert info.value.status_code == 400
    assert fragment in info.value.reason


def test_oversize_document_is_413() -> None:
    data = _doc("<state>active</state>" + "<!--" + "x" * 9000 + "-->")
    with pytest.raises(IsComposingError) as info:
        parse_iscomposing(data)
    assert info.value.status_code == 413


def test_deep_nesting_is_refused() -> None:
    deep = '<x:a xmlns:x="urn:example:x">' * 20 + "</x:a>" * 20
    with pytest.raises(IsComposingError, match="nesting"):
        parse_iscomposing(_doc("<state>active</state>" + deep))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"state": "typing"},
        {"state": "active", "refresh": 0},
        {"state": "active", "refresh": True},
        {"state": "active", "content_type": "text/plain; charset=utf-8"},
        {"state": "active", "content_type": ""},
        {"state": "active", "extensions": (b"<plain/>",)},
        {"state": "active", "extensions": (f'<s xmlns="{XML_NS}"/>'.encode(),)},
        {"state": "active", "extensions": (b"<broken",)},
    ],
)
def test_build_refuses_bad_values(kwargs: dict[str, object]) -> None:
    state = kwargs.pop("state")
    with pytest.raises(LocalProtocolError):
        build_iscomposing(state, **kwargs)  # type: ignore[arg-type]


def test_content_type_recognition() -> None:
    assert is_composing_type("application/im-iscomposing+xml")
    assert is_composing_type("Application/IM-isComposing+XML; charset=utf-8")
    assert not is_composing_type("text/plain")
    assert not is_composing_type("garbage")
    assert not is_composing_type(None)
    assert composing_from_content("text/plain", b"hello") is None
    expected = IsComposing(ComposingState.ACTIVE, refresh=60)
    assert composing_from_content(CONTENT_TYPE, LINPHONE_DOC) == expected
    with pytest.raises(IsComposingError):
        composing_from_content(CONTENT_TYPE, b"<nope/>")


def test_wrapped_in_cpim_as_liblinphone_sends_it() -> None:
    wrapped = cpim.build_message(
        [
            ("From", "<sip:alice@example.com>"),
            ("To", "<sip:bob@example.com>"),
            ("DateTime", "2026-05-01T12:00:00Z"),
        ],
        content_type=CONTENT_TYPE,
        body=LINPHONE_DOC,
    ).to_bytes()
    message = cpim.parse(wrapped)
    assert composing_from_content(message.content_type, message.decoded_body()) == IsComposing(
        ComposingState.ACTIVE, refresh=60
    )
    assert composing_from_cpim(message) == IsComposing(ComposingState.ACTIVE, refresh=60)
    text = cpim.parse(
        cpim.build_message(
            [("From", "<sip:alice@example.com>")], content_type="text/plain", body=b"hi"
        ).to_bytes()
    )
    assert composing_from_cpim(text) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_bytes_parse_or_raise_typed_error(data: bytes) -> None:
    try:
        doc = parse_iscomposing(data)
    except IsComposingError as exc:
        assert exc.status_code in (400, 413)
    else:
        assert isinstance(doc.state, ComposingState)


_PIECES = st.sampled_from(
    [
        "<state>active</state>",
        "<state>idle</state>",
        "<state> active </state>",
        "<refresh>60</refresh>",
        "<refresh>0</refresh>",
        "<lastactive>2026-01-01T00:00:00Z</lastactive>",
        "<lastactive>x</lastactive>",
        "<contenttype>text/plain</contenttype>",
        '<e:x xmlns:e="urn:e"/>',
        "<state/>",
        "&amp;",
        "<",
        "]]>",
        "<![CDATA[active]]>",
        "<?pi x?>",
        "<!-- c -->",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=8))
def test_fuzz_structured_documents(pieces: list[str]) -> None:
    try:
        doc = parse_iscomposing(_doc("".join(pieces)))
    except IsComposingError as exc:
        assert exc.status_code == 400
    else:
        assert parse_iscomposing(doc.to_xml()) == doc


# -- receiver -------------------------------------------------------------------------------------


def _drain(receiver: ComposingReceiver) -> list[ComposingStateChanged]:
    events = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
    return events


def test_receiver_active_then_times_out_after_refresh() -> None:
    rx = ComposingReceiver(grace=0)
    rx.receive("sip:alice@a", IsComposing(ComposingState.ACTIVE, content_type="text/plain", refresh=90), 10.0)
    [event] = _drain(rx)
    assert event == ComposingStateChanged(
        "sip:alice@a", ComposingState.ACTIVE, "text/plain", 90, None, ChangeCause.INDICATION
    )
    assert rx.get_timer() == 100.0
    rx.handle_timer(99.9)
    assert _drain(rx) == []
    rx.handle_timer(100.0)
    [idle] = _drain(rx)
    assert (idle.state, idle.cause) == (ComposingState.IDLE, ChangeCause.TIMEOUT)
    assert idle.content_type == "text/plain"
    assert rx.get_timer() is None
    assert rx.state_of("sip:alice@a") is ComposingState.IDLE


def test_receiver_default_refresh_is_120_s_and_refresh_renews_silently() -> None:
    rx = ComposingReceiver()
    rx.receive("a", IsComposing(ComposingState.ACTIVE), 0.0)
    assert rx.get_timer() == DEFAULT_REFRESH + DEFAULT_GRACE
    rx.receive("a", IsComposing(ComposingState.ACTIVE), 100.0)  # a refresh: no event
    assert [e.cause for e in _drain(rx)] == [ChangeCause.INDICATION]
    assert rx.get_timer() == 220.0 + DEFAULT_GRACE
    rx.handle_timer(200.0)
    assert _drain(rx) == []
    rx.receive("a", IsComposing(ComposingState.ACTIVE, content_type="audio"), 210.0)  # content type changed
    assert [(e.state, e.content_type) for e in _drain(rx)] == [(ComposingState.ACTIVE, "audio")]


def test_receiver_idle_indication_and_message_end_active() -> None:
    rx = ComposingReceiver()
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rx.receive("a", IsComposing(ComposingState.ACTIVE), 0.0)
    rx.receive("a", IsComposing(ComposingState.IDLE, last_active=when), 5.0)
    events = _drain(rx)
    assert [(e.state, e.cause, e.last_active) for e in events] == [
        (ComposingState.ACTIVE, ChangeCause.INDICATION, None),
        (ComposingState.IDLE, ChangeCause.INDICATION, when),
    ]
    rx.receive("a", IsComposing(ComposingState.IDLE), 6.0)  # already idle: nothing
    rx.message_received("a", 7.0)  # not active: nothing
    assert _drain(rx) == []
    rx.receive("b", IsComposing(ComposingState.ACTIVE), 8.0)
    rx.message_received("b", 9.0)
    last = _drain(rx)[-1]
    assert (last.sender, last.state, last.cause) == ("b", ComposingState.IDLE, ChangeCause.MESSAGE)
    assert rx.get_timer() is None


def test_receiver_caps_refresh_and_senders() -> None:
    rx = ComposingReceiver(max_refresh=600, max_senders=3, grace=0)
    rx.receive("long", IsComposing(ComposingState.ACTIVE, refresh=10**9), 0.0)
    assert rx.get_timer() == 600.0
    for i, name in enumerate(("s1", "s2", "s3")):
        rx.receive(name, IsComposing(ComposingState.ACTIVE, refresh=60 + i), 1.0)
    events = _drain(rx)
    assert ("long", ChangeCause.LIMIT) not in [(e.sender, e.cause) for e in events]
    idled = [(e.sender, e.cause) for e in events if e.state is ComposingState.IDLE]
    assert idled == [("s1", ChangeCause.LIMIT)]
    assert sorted(rx.active_senders()) == ["long", "s2", "s3"]


def test_receiver_many_refreshes_keep_heap_bounded() -> None:
    rx = ComposingReceiver(grace=0)
    for i in range(5000):
        rx.receive("a", IsComposing(ComposingState.ACTIVE, refresh=60), float(i))
    assert rx.get_timer() == 4999.0 + 60
    rx.handle_timer(10_000.0)
    assert [e.cause for e in _drain(rx)] == [ChangeCause.INDICATION, ChangeCause.TIMEOUT]


# -- sender ---------------------------------------------------------------------------------------


def _sent(tx: ComposingSender) -> list[IsComposing]:
    out = []
    while (doc := tx.next_indication()) is not None:
        out.append(doc)
    return out


def _wall(now: float) -> dt.datetime:
    return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=now)


def test_sender_first_keystroke_sends_active_then_idle_after_15_s() -> None:
    tx = ComposingSender(wall_time=_wall)
    assert tx.get_timer() is None
    tx.keystroke(0.0)
    assert _sent(tx) == [IsComposing(ComposingState.ACTIVE, content_type="text/plain", refresh=120)]
    tx.keystroke(5.0)
    tx.keystroke(10.0)
    assert _sent(tx) == []
    assert tx.get_timer() == 25.0
    tx.handle_timer(24.9)
    assert _sent(tx) == []
    tx.handle_timer(25.0)
    assert _sent(tx) == [IsComposing(ComposingState.IDLE, last_active=_wall(10.0), content_type="text/plain")]
    assert tx.state is ComposingState.IDLE
    assert tx.get_timer() is None


def test_sender_refreshes_while_active() -> None:
    tx = ComposingSender(refresh=60, idle_timeout=15)
    now = 0.0
    tx.keystroke(now)
    sent = _sent(tx)
    # Typing every 10 s for 200 s: a refresh every 60 s, nothing else.
    while now < 200:
        now += 10
        tx.keystroke(now)
        timer = tx.get_timer()
        assert timer is not None
        if timer <= now:
            tx.handle_timer(now)
        sent += _sent(tx)
    assert [d.state for d in sent] == [ComposingState.ACTIVE] * 4  # t=0, 60, 120, 180
    assert all(d.refresh == 60 for d in sent)


def test_sender_suppresses_idle_when_message_sent() -> None:
    tx = ComposingSender()
    tx.keystroke(0.0)
    _sent(tx)
    tx.message_sent(3.0)
    assert _sent(tx) == []
    assert tx.get_timer() is None
    tx.handle_timer(100.0)
    assert _sent(tx) == []
    tx.keystroke(101.0)  # a new draft: active again
    assert [d.state for d in _sent(tx)] == [ComposingState.ACTIVE]


def test_sender_stop_announces_idle_and_drops_unsent_active() -> None:
    tx = ComposingSender(content_type=None)
    tx.keystroke(0.0)
    tx.stop(1.0)
    assert _sent(tx) == [IsComposing(ComposingState.IDLE)]
    tx.stop(2.0)
    assert _sent(tx) == []


def test_sender_refuses_refresh_below_rfc_minimum() -> None:
    with pytest.raises(LocalProtocolError, match="RFC 3994"):
        ComposingSender(refresh=30)
    with pytest.raises(LocalProtocolError):
        ComposingSender(idle_timeout=0)


def test_sender_and_receiver_together_on_one_clock() -> None:
    tx, rx = ComposingSender(refresh=60), ComposingReceiver()
    now = 0.0

    def pump() -> None:
        while (doc := tx.next_indication()) is not None:
            rx.receive("alice", parse_iscomposing(doc.to_xml()), now)

    tx.keystroke(now)
    pump()
    # The user keeps typing for five minutes: the receiver never times out.
    while now < 300:
        now += 5
        tx.keystroke(now)
        for machine in (tx, rx):
            timer = machine.get_timer()
            if timer is not None and timer <= now:
                machine.handle_timer(now)
        pump()
    assert rx.state_of("alice") is ComposingState.ACTIVE
    tx.message_sent(now)
    rx.message_received("alice", now)
    pump()
    events = _drain(rx)
    assert [(e.state, e.cause) for e in events] == [
        (ComposingState.ACTIVE, ChangeCause.INDICATION),
        (ComposingState.IDLE, ChangeCause.MESSAGE),
    ]
