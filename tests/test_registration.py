"""The sans-IO REGISTER client, driven by hand with a fake clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.auth import Authenticator, Credentials, parse_challenges
from sipimdn.errors import LocalProtocolError
from sipimdn.registration import (
    RegisterRequest,
    RegistrationClient,
    RegistrationExpired,
    RegistrationFailed,
    RegistrationSettings,
    RegistrationSucceeded,
    RegState,
    Unregistered,
)

CONTACT = "sip:alice@192.0.2.10:5070;transport=tcp"
OTHER = "sip:alice@198.51.100.7:5060"
INSTANCE = "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"


def make(**overrides: object) -> RegistrationClient:
    values: dict[str, object] = {"aor": "sip:alice@example.com", "contacts": (CONTACT,), "expires": 600}
    values.update(overrides)
    auth = Authenticator([Credentials("alice", "pw", realm="example.com")])
    return RegistrationClient(
        RegistrationSettings(**values),  # type: ignore[arg-type]
        authenticator=auth,
        call_id="cid-1",
        rng=random.Random(7),
    )


def header(request: RegisterRequest, name: str) -> list[str]:
    return [value for key, value in request.headers if key == name]


def sent_one(reg: RegistrationClient) -> RegisterRequest:
    (request,) = reg.requests_to_send()
    return request


def reply(
    reg: RegistrationClient,
    request: RegisterRequest,
    status: int,
    extra: list[tuple[str, str]] | None = None,
    now: float = 0.0,
) -> None:
    headers = [("Call-ID", request.call_id), ("CSeq", f"{request.cseq} REGISTER")] + (extra or [])
    reg.handle_response(status, headers, now)


def state(reg: RegistrationClient) -> RegState:
    """The state, read through a call so mypy does not keep an earlier assert's narrowing."""
    return reg.state


def events(reg: RegistrationClient) -> list[object]:
    out: list[object] = []
    while (event := reg.next_event()) is not None:
        out.append(event)
    return out


def test_first_register_has_the_rfc3261_and_rfc5626_headers() -> None:
    reg = make(instance_id=INSTANCE, outbound=True, contacts=(CONTACT, OTHER), display_name="Alice")
    reg.register(now=100.0)
    request = sent_one(reg)
    assert request.request_uri == "sip:example.com"
    assert header(request, "To") == ['"Alice" <sip:alice@example.com>']
    assert header(request, "From")[0].startswith('"Alice" <sip:alice@example.com>;tag=')
    assert header(request, "Call-ID") == ["cid-1"] and header(request, "CSeq") == ["1 REGISTER"]
    assert header(request, "Contact") == [
        f'<{CONTACT}>;+sip.instance="<{INSTANCE}>";reg-id=1',
        f'<{OTHER}>;+sip.instance="<{INSTANCE}>";reg-id=2',
    ]
    assert header(request, "Expires") == ["600"]
    assert header(request, "Supported") == ["outbound, path"]
    assert reg.state is RegState.REGISTERING and reg.get_timer() is None


def test_granted_expiry_from_our_contact_then_refresh_keeps_call_id() -> None:
    reg = make()
    reg.register(now=0.0)
    first = sent_one(reg)
    # The registrar lists another device's binding too; ours is matched by URI (host case ignored).
    reply(reg, first, 200, [
        ("Contact", f"<{OTHER}>;expires=3000, <sip:alice@192.0.2.10:5070;transport=TCP>;expires=300"),
        ("Expires", "900"),
    ])
    (event,) = events(reg)
    assert event == RegistrationSucceeded("sip:alice@example.com", 300, 268.0, refreshed=False)
    assert reg.state is RegState.REGISTERED and reg.granted == 300 and reg.registered
    assert reg.get_timer() == 268.0
    reg.handle_timer(267.9)
    assert reg.requests_to_send() == []
    reg.handle_timer(268.0)
    refresh = sent_one(reg)
    assert state(reg) is RegState.REFRESHING
    assert refresh.call_id == first.call_id and refresh.cseq == first.cseq + 1
    assert header(refresh, "From") == header(first, "From")
    reply(reg, refresh, 200, [("m", f"<{CONTACT}>;expires=60")], now=268.0)
    (event,) = events(reg)
    assert isinstance(event, RegistrationSucceeded) and event.refreshed and event.expires == 60
    assert event.refresh_at == 268.0 + 60 - 30  # half the grant when that is below the margin


def test_expires_header_is_used_when_the_contact_has_no_param() -> None:
    reg = make()
    reg.register(now=10.0)
    reply(reg, sent_one(reg), 200, [("Contact", f"<{CONTACT}>"), ("Expires", "120")])
    (event,) = events(reg)
    assert isinstance(event, RegistrationSucceeded) and event.expires == 120


def test_a_2xx_binding_only_other_contacts_is_a_failure() -> None:
    reg = make()
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 200, [("Contact", f"<{OTHER}>;expires=3600")])
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.retry_at is None
    assert reg.state is RegState.FAILED and not reg.registered


def test_instance_id_matches_even_when_the_registrar_rewrote_the_uri() -> None:
    reg = make(instance_id=INSTANCE)
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 200, [
        ("Contact", f'<sip:alice@203.0.113.9:40000>;+sip.instance="<{INSTANCE}>";expires=45'),
    ])
    (event,) = events(reg)
    assert isinstance(event, RegistrationSucceeded) and event.expires == 45


def test_401_is_answered_once_and_a_second_401_fails_for_good() -> None:
    reg = make()
    reg.register(now=0.0)
    first = sent_one(reg)
    reply(reg, first, 401, [("WWW-Authenticate", 'Digest realm="example.com", nonce="n1", qop="auth"')])
    retry = sent_one(reg)
    assert retry.cseq == first.cseq + 1 and retry.call_id == first.call_id
    (auth_value,) = header(retry, "Authorization")
    (parsed,) = parse_challenges(auth_value)
    assert parsed.get("uri") == "sip:example.com" and parsed.get("nonce") == "n1"
    assert reg.state is RegState.REGISTERING and events(reg) == []
    reply(reg, retry, 401, [("WWW-Authenticate", 'Digest realm="example.com", nonce="n2", qop="auth"')])
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed)
    assert event.status_code == 401 and event.retry_at is None and "rejected" in event.reason
    assert state(reg) is RegState.FAILED and reg.requests_to_send() == []
    assert "pw" not in event.reason


def test_refresh_goes_authenticated_up_front_after_the_first_challenge() -> None:
    reg = make()
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 401, [("WWW-Authenticate", 'Digest realm="example.com", nonce="n1"')])
    reply(reg, sent_one(reg), 200, [("Contact", f"<{CONTACT}>;expires=100")])
    events(reg)
    reg.handle_timer(reg.get_timer() or 0.0)
    refresh = sent_one(reg)
    assert header(refresh, "Authorization")  # cached realm, nonce count 2


def test_challenge_without_an_authenticator_fails() -> None:
    reg = RegistrationClient(RegistrationSettings("sip:a@example.com", (CONTACT,)))
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 407, [("Proxy-Authenticate", 'Digest realm="x", nonce="n"')])
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.status_code == 407 and event.retry_at is None


def test_423_raises_expires_to_min_expires_and_retries() -> None:
    reg = make(expires=30)
    reg.register(now=0.0)
    first = sent_one(reg)
    reply(reg, first, 423, [("Min-Expires", "120")])
    retry = sent_one(reg)
    assert header(retry, "Expires") == ["120"] and retry.cseq == first.cseq + 1 and reg.expires == 120
    reply(reg, retry, 200, [("Contact", f"<{CONTACT}>;expires=120")])
    assert isinstance(events(reg)[0], RegistrationSucceeded)


@pytest.mark.parametrize("min_expires", [None, "30", "10", "soon"])
def test_423_without_a_larger_min_expires_gives_up(min_expires: str | None) -> None:
    reg = make(expires=30)
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 423, [("Min-Expires", min_expires)] if min_expires else [])
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.status_code == 423 and event.retry_at is None


def test_423_rounds_are_bounded() -> None:
    reg = make(expires=30)
    reg.register(now=0.0)
    for minimum in (40, 50, 60):
        reply(reg, sent_one(reg), 423, [("Min-Expires", str(minimum))])
    reply(reg, sent_one(reg), 423, [("Min-Expires", "70")])
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.retry_at is None


def test_transport_failure_backs_off_exponentially_with_jitter() -> None:
    reg = make(retry_base=10.0, retry_max=35.0)
    reg.register(now=0.0)
    sent_one(reg)
    reg.handle_failure(now=5.0, reason="connection refused")
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.status_code is None
    assert event.retry_at is not None and 5.0 + 5.0 <= event.retry_at <= 5.0 + 10.0
    assert reg.state is RegState.BACKOFF and reg.get_timer() == event.retry_at
    waits = [event.retry_at - 5.0]
    now = event.retry_at
    for _ in range(3):
        reg.handle_timer(now)
        sent_one(reg)
        reg.handle_failure(now)
        (failed,) = events(reg)
        assert isinstance(failed, RegistrationFailed) and failed.retry_at is not None
        waits.append(failed.retry_at - now)
        now = failed.retry_at
    caps = [10.0, 20.0, 35.0, 35.0]
    assert all(cap / 2 <= wait <= cap for wait, cap in zip(waits, caps, strict=True))


def test_503_retry_after_is_honoured_and_a_success_resets_the_backoff() -> None:
    reg = make(retry_base=1.0)
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 503, [("Retry-After", "120")])
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.retry_at == 120.0
    reg.handle_timer(120.0)
    request = sent_one(reg)
    reply(reg, request, 200, [("Contact", f"<{CONTACT}>;expires=600")], now=120.0)
    assert isinstance(events(reg)[0], RegistrationSucceeded)


def test_permanent_failure_status_stops_and_register_restarts() -> None:
    reg = make()
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 403)
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.status_code == 403 and event.retry_at is None
    assert reg.get_timer() is None
    reg.register(now=1.0)
    assert reg.state is RegState.REGISTERING and sent_one(reg).cseq == 2


def test_binding_lapses_while_backing_off_then_registers_again() -> None:
    reg = make(retry_base=400.0, retry_max=400.0)
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 200, [("Contact", f"<{CONTACT}>;expires=100")])
    events(reg)
    reg.handle_timer(50.0)  # refresh at 100 - min(50, 32) = 68? no: not yet
    assert reg.requests_to_send() == []
    reg.handle_timer(68.0)
    sent_one(reg)
    reg.handle_failure(68.0)
    (failed,) = events(reg)
    assert isinstance(failed, RegistrationFailed) and failed.retry_at is not None and failed.retry_at > 100
    assert reg.get_timer() == 100.0  # the binding's end comes first
    reg.handle_timer(100.0)
    assert events(reg) == [RegistrationExpired("sip:alice@example.com")]
    assert reg.state is RegState.BACKOFF and not reg.registered
    reg.handle_timer(failed.retry_at)
    request = sent_one(reg)
    reply(reg, request, 200, [("Contact", f"<{CONTACT}>;expires=100")], now=failed.retry_at)
    (event,) = events(reg)
    assert isinstance(event, RegistrationSucceeded) and not event.refreshed


def test_binding_lapses_while_the_refresh_is_in_flight() -> None:
    reg = make()
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 200, [("Contact", f"<{CONTACT}>;expires=100")])
    events(reg)
    reg.handle_timer(68.0)
    refresh = sent_one(reg)
    reg.handle_timer(100.0)
    assert events(reg) == [RegistrationExpired("sip:alice@example.com")]
    assert reg.state is RegState.REGISTERING
    reply(reg, refresh, 200, [("Contact", f"<{CONTACT}>;expires=100")], now=100.5)
    assert isinstance(events(reg)[0], RegistrationSucceeded) and state(reg) is RegState.REGISTERED


def test_unregister_sends_expires_zero_and_reports_confirmation() -> None:
    reg = make(instance_id=INSTANCE)
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 200, [("Contact", f"<{CONTACT}>;expires=100")])
    events(reg)
    reg.unregister(now=10.0)
    request = sent_one(reg)
    assert header(request, "Expires") == ["0"] and request.expires == 0
    assert header(request, "Contact") == [f'<{CONTACT}>;+sip.instance="<{INSTANCE}>";expires=0']
    assert reg.get_timer() is None and reg.state is RegState.UNREGISTERING
    reply(reg, request, 200)
    assert events(reg) == [Unregistered("sip:alice@example.com", confirmed=True)]
    assert state(reg) is RegState.IDLE and not reg.registered and reg.granted is None


@pytest.mark.parametrize("outcome", ["timeout", "500", "403"])
def test_unregister_ends_even_without_a_2xx(outcome: str) -> None:
    reg = make()
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 200, [("Contact", f"<{CONTACT}>;expires=100")])
    events(reg)
    reg.unregister(now=1.0)
    request = sent_one(reg)
    if outcome == "timeout":
        reg.handle_failure(33.0)
    else:
        reply(reg, request, int(outcome))
    assert events(reg) == [Unregistered("sip:alice@example.com", confirmed=False)]
    assert reg.state is RegState.IDLE and reg.get_timer() is None


def test_unregister_with_nothing_registered_is_immediate() -> None:
    reg = make()
    reg.unregister(now=0.0)
    assert reg.requests_to_send() == []
    assert events(reg) == [Unregistered("sip:alice@example.com", confirmed=False)]


def test_stray_and_provisional_responses_are_ignored() -> None:
    reg = make()
    reg.register(now=0.0)
    request = sent_one(reg)
    reg.handle_response(100, [("CSeq", f"{request.cseq} REGISTER")], 0.0)
    reg.handle_response(200, [("Call-ID", "cid-1"), ("CSeq", "99 REGISTER")], 0.0)
    reg.handle_response(200, [("Call-ID", "other"), ("CSeq", f"{request.cseq} REGISTER")], 0.0)
    reg.handle_response(200, [("Call-ID", "cid-1"), ("CSeq", f"{request.cseq} MESSAGE")], 0.0)
    assert reg.state is RegState.REGISTERING and events(reg) == []
    reg.handle_failure(0.0)
    events(reg)
    reply(reg, request, 200, [("Contact", f"<{CONTACT}>")])  # after the failure: nothing outstanding
    assert events(reg) == [] and state(reg) is RegState.BACKOFF


def test_api_misuse_and_bad_settings_are_local_errors() -> None:
    reg = make()
    reg.register(now=0.0)
    with pytest.raises(LocalProtocolError):
        reg.register(now=0.1)  # a REGISTER is already in flight
    with pytest.raises(LocalProtocolError):
        RegistrationSettings("sip:a@b", ())
    with pytest.raises(LocalProtocolError):
        RegistrationSettings("sip:a@b", (CONTACT,), expires=0)
    with pytest.raises(LocalProtocolError):
        RegistrationSettings("sip:a@b", (CONTACT,), outbound=True)
    with pytest.raises(LocalProtocolError):
        RegistrationSettings("sip:a@b", ("sip:x\r\nVia: evil",))


_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["register", "unregister", "ok", "401", "423", "503", "403", "fail", "timer"]),
        st.floats(min_value=0.0, max_value=500.0),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(_ACTIONS)
def test_any_sequence_of_inputs_keeps_the_invariants(actions: list[tuple[str, float]]) -> None:
    reg = make(retry_base=5.0, retry_max=60.0)
    now = 0.0
    last: RegisterRequest | None = None
    for action, step in actions:
        now += step
        try:
            if action == "register":
                reg.register(now)
            elif action == "unregister":
                reg.unregister(now)
            elif action == "timer":
                timer = reg.get_timer()
                if timer is not None:
                    now = max(now, timer)
                    reg.handle_timer(now)
            elif action == "fail":
                reg.handle_failure(now)
            elif last is not None:
                status = {"ok": 200, "401": 401, "423": 423, "503": 503, "403": 403}[action]
                extra = {
                    200: [("Contact", f"<{CONTACT}>;expires=120")],
                    401: [("WWW-Authenticate", f'Digest realm="example.com", nonce="{now}"')],
                    423: [("Min-Expires", "900")],
                    503: [],
                    403: [],
                }[status]
                reply(reg, last, status, extra, now)
        except LocalProtocolError:
            assert action in ("register",)  # only an API call made at the wrong time may be refused
        for request in reg.requests_to_send():
            assert last is None or request.cseq > last.cseq  # CSeq only grows
            assert request.call_id == "cid-1"
            last = request
        events(reg)
        timer = reg.get_timer()
        if reg.state in (RegState.REGISTERED, RegState.BACKOFF):
            assert timer is not None and timer >= 0
        if reg.state in (RegState.IDLE, RegState.FAILED):
            assert timer is None and not reg.registered


def test_message_adapters_round_trip_through_the_sip_core() -> None:
    from sipimdn.message import Response
    from sipimdn.parser import parse_message

    reg = make(instance_id=INSTANCE)
    reg.register(now=0.0)
    request = sent_one(reg).to_request()
    request.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKx1")
    parsed = parse_message(request.to_bytes())
    assert parsed.method == "REGISTER" and str(parsed.uri) == "sip:example.com"  # type: ignore[union-attr]
    assert parsed.cseq.number == 1 and parsed.call_id == "cid-1"
    response = Response(200, "OK", [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKx1"),
        ("Call-ID", "cid-1"),
        ("CSeq", "1 REGISTER"),
        ("m", f'<{CONTACT}>;expires=77;+sip.instance="<{INSTANCE}>"'),
    ])
    reg.handle_response_message(parse_message(response.to_bytes()), now=0.0)  # type: ignore[arg-type]
    (event,) = events(reg)
    assert isinstance(event, RegistrationSucceeded) and event.expires == 77


_HEADER_NAMES = st.sampled_from(
    ["Contact", "m", "Expires", "Min-Expires", "Retry-After", "WWW-Authenticate", "CSeq", "Call-ID"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([200, 202, 401, 407, 423, 480, 503, 403, 606]),
    # Any value a header row can hold: a line break or NUL cannot be inside one (see below).
    st.lists(
        st.tuples(_HEADER_NAMES, st.text(st.characters(exclude_characters="\r\n\x00"), max_size=60)),
        max_size=6,
    ),
)
def test_any_response_headers_are_handled_without_crashing(
    status: int, junk: list[tuple[str, str]]
) -> None:
    reg = make()
    reg.register(now=0.0)
    request = sent_one(reg)
    reply(reg, request, status, junk)  # CSeq/Call-ID first, so the response matches
    events(reg)
    assert reg.state in set(RegState)
    assert (reg.get_timer() is None) == (reg.state in (RegState.FAILED, RegState.REGISTERING))


def test_a_pair_that_cannot_be_a_header_row_is_a_local_error() -> None:
    reg = make()
    reg.register(now=0.0)
    request = sent_one(reg)
    with pytest.raises(LocalProtocolError):
        reply(reg, request, 200, [("Contact", f"<{CONTACT}>\r\nVia: evil")])
    with pytest.raises(LocalProtocolError):
        reply(reg, request, 200, [("Bad Name", "x")])
    assert state(reg) is RegState.REGISTERING  # nothing consumed: the real answer still counts
    reply(reg, request, 200, [("Contact", f"<{CONTACT}>;expires=100")])
    assert state(reg) is RegState.REGISTERED


def test_unparsable_contact_settings_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        RegistrationSettings("sip:a@b", ("sip:alice@exa mple.com",))


def test_non_ascii_digits_are_not_numbers() -> None:
    reg = make()
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 200, [("Contact", f"<{CONTACT}>;expires=\u00b2"), ("Expires", "\u0663")])
    (event,) = events(reg)
    assert isinstance(event, RegistrationSucceeded) and event.expires == 600  # what we asked


def test_authentication_info_nextnonce_feeds_the_refresh() -> None:
    reg = make()
    reg.register(now=0.0)
    reply(reg, sent_one(reg), 401, [("WWW-Authenticate", 'Digest realm="example.com", nonce="n1"')])
    reply(reg, sent_one(reg), 200, [
        ("Contact", f"<{CONTACT}>;expires=100"), ("Authentication-Info", 'nextnonce="n7"'),
    ])
    events(reg)
    reg.handle_timer(reg.get_timer() or 0.0)
    (value,) = header(sent_one(reg), "Authorization")
    assert parse_challenges(value)[0].get("nonce") == "n7"
