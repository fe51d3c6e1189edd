"""Non-INVITE client and server transactions, driven by a fake clock (RFC 3261 §17, RFC 4320)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.dialog.transaction import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientTransaction,
    Deliver,
    Fail,
    Failure,
    Send,
    ServerTransaction,
    TimerConfig,
    TxInput,
    TxState,
)
from sipimdn.errors import LocalProtocolError

CFG = TimerConfig()


@dataclass(frozen=True)
class Resp:
    status_code: int
    tag: str = ""


REQ = "MESSAGE sip:bob@example.com"
TRYING_100 = Resp(100, "auto")


def client(reliable: bool = False, now: float = 0.0) -> ClientTransaction[str, Resp]:
    return ClientTransaction(REQ, reliable=reliable, now=now, config=CFG)


def server(reliable: bool = False, now: float = 0.0) -> ServerTransaction[str, Resp]:
    return ServerTransaction(REQ, reliable=reliable, now=now, config=CFG, make_trying=lambda _: TRYING_100)


AnyTx = ClientTransaction[str, Resp] | ServerTransaction[str, Resp]


def run_until(tx: AnyTx, end: float) -> list[tuple[float, object]]:
    """Advance a fake clock deadline by deadline up to ``end``; return (time, action) pairs."""
    out: list[tuple[float, object]] = []
    for _ in range(1000):
        at = tx.get_timer()
        if at is None or at > end:
            break
        tx.handle_timer(at)
        out.extend((at, action) for action in tx.pop_actions())
    return out


# -- timer arithmetic ---------------------------------------------------------------------------


def test_timer_defaults() -> None:
    assert (CFG.t1, CFG.t2, CFG.t4) == (0.5, 4.0, 5.0)
    assert CFG.timer_f == 32.0
    assert CFG.timer_k(reliable=False) == 5.0 and CFG.timer_k(reliable=True) == 0.0
    assert CFG.timer_j(reliable=False) == 32.0 and CFG.timer_j(reliable=True) == 0.0
    assert CFG.trying_delay == 3.5


def test_trying_delay_follows_t1_t2() -> None:
    # intervals 0.05, 0.1, ..., 3.2 are all below T2; the next one is capped at T2
    expected = 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2
    assert TimerConfig(t1=0.05, t2=4.0).trying_delay == pytest.approx(expected)
    assert TimerConfig(t1=1.0, t2=1.0).trying_delay == 0.0


@pytest.mark.parametrize("t1,t2,t4", [(0, 4, 5), (5, 4, 5), (0.5, 4, -1)])
def test_bad_timer_config(t1: float, t2: float, t4: float) -> None:
    with pytest.raises(LocalProtocolError):
        TimerConfig(t1=t1, t2=t2, t4=t4)


# -- client: behaviour ----------------------------------------------------------------------------


def test_client_udp_retransmit_schedule_then_timer_f() -> None:
    tx = client()
    assert tx.pop_actions() == [Send(REQ)]
    events = run_until(tx, 100)
    sends = [at for at, action in events if action == Send(REQ)]
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]  # plus the send at 0: 11
    assert events[-1] == (32.0, Fail(Failure.TIMEOUT))
    assert tx.state is TxState.TERMINATED and tx.get_timer() is None


def test_client_schedule_scales_with_t1() -> None:
    config = TimerConfig(t1=0.05, t2=0.4, t4=0.5)
    tx: ClientTransaction[str, Resp] = ClientTransaction(REQ, reliable=False, now=10.0, config=config)
    tx.pop_actions()
    events = run_until(tx, 100)
    sends = [round(at - 10, 6) for at, action in events if isinstance(action, Send)]
    assert sends[:5] == [0.05, 0.15, 0.35, 0.75, 1.15]
    last_at, last = events[-1]
    assert last_at == pytest.approx(13.2) and last == Fail(Failure.TIMEOUT)


def test_client_reliable_sends_once_and_times_out_at_f() -> None:
    tx = client(reliable=True)
    assert tx.pop_actions() == [Send(REQ)]
    assert tx.get_timer() == 32.0
    assert run_until(tx, 100) == [(32.0, Fail(Failure.TIMEOUT))]


def test_client_provisional_keeps_pending_e_then_uses_t2() -> None:
    tx = client()
    tx.pop_actions()
    tx.handle_timer(0.5)
    tx.pop_actions()
    tx.receive_response(Resp(100), 0.7)
    assert tx.pop_actions() == [Deliver(Resp(100))]
    assert tx.state is TxState.PROCEEDING
    events = run_until(tx, 14)
    # E was due at 1.5; after firing in Proceeding it is reset to T2 (§17.1.2.2)
    assert [at for at, action in events if isinstance(action, Send)] == [1.5, 5.5, 9.5, 13.5]


def test_client_final_completes_and_absorbs_retransmissions_until_k() -> None:
    tx = client()
    tx.pop_actions()
    tx.receive_response(Resp(200, "a"), 1.0)
    assert tx.pop_actions() == [Deliver(Resp(200, "a"))]
    assert tx.state is TxState.COMPLETED
    assert tx.get_timer() == 6.0  # K = T4 on UDP, and no more E
    tx.receive_response(Resp(200, "a"), 2.0)
    tx.receive_response(Resp(180), 2.1)
    tx.receive_response(Resp(500, "other fork"), 2.2)
    assert tx.pop_actions() == []
    assert run_until(tx, 100) == []
    assert tx.terminated


def test_client_final_on_reliable_terminates_at_once() -> None:
    tx = client(reliable=True)
    tx.pop_actions()
    tx.receive_response(Resp(404), 0.3)
    assert tx.pop_actions() == [Deliver(Resp(404))]
    assert tx.state is TxState.TERMINATED and tx.get_timer() is None


def test_client_late_responses_after_termination_are_ignored() -> None:
    tx = client()
    tx.pop_actions()
    run_until(tx, 100)
    tx.pop_actions()
    tx.receive_response(Resp(200), 40.0)
    tx.receive_response(Resp(100), 40.0)
    assert tx.pop_actions() == []
    assert tx.state is TxState.TERMINATED


@pytest.mark.parametrize("provisional", [False, True])
def test_client_transport_error(provisional: bool) -> None:
    tx = client()
    if provisional:
        tx.receive_response(Resp(100), 0.1)
    tx.pop_actions()
    tx.transport_error(0.2)
    assert tx.pop_actions() == [Fail(Failure.TRANSPORT)]
    assert tx.state is TxState.TERMINATED and tx.get_timer() is None


def test_client_small_timer_jitter_does_not_stretch_the_schedule() -> None:
    tx = client()
    tx.pop_actions()
    tx.handle_timer(0.53)  # E was due at 0.5
    assert tx.pop_actions() == [Send(REQ)] and tx.get_timer() == 1.5


def test_client_late_handle_timer_fires_each_due_timer_once() -> None:
    tx = client()
    tx.pop_actions()
    tx.handle_timer(31.9)  # a stalled loop: E once (not ten times), no F yet
    assert tx.pop_actions() == [Send(REQ)]
    assert tx.get_timer() == 32.0  # F is now earlier than the next E (32.9)
    tx.handle_timer(40.0)
    assert tx.pop_actions() == [Fail(Failure.TIMEOUT)]


# -- server: behaviour ----------------------------------------------------------------------------


def test_server_final_then_retransmissions_resend_it_until_j() -> None:
    tx = server()
    tx.receive_request(0.2)
    assert tx.pop_actions() == []  # duplicate absorbed, nothing to resend yet
    tx.respond(Resp(200), 0.4)
    assert tx.pop_actions() == [Send(Resp(200))]
    assert tx.state is TxState.COMPLETED and tx.get_timer() == pytest.approx(32.4)
    tx.receive_request(1.0)
    tx.receive_request(2.0)
    assert tx.pop_actions() == [Send(Resp(200)), Send(Resp(200))]
    tx.respond(Resp(500), 3.0)  # a second final is discarded
    assert tx.pop_actions() == []
    assert run_until(tx, 100) == []
    assert tx.terminated


def test_server_reliable_j_is_zero() -> None:
    tx = server(reliable=True)
    tx.respond(Resp(202), 0.1)
    assert tx.pop_actions() == [Send(Resp(202))]
    assert tx.terminated and tx.get_timer() is None


@pytest.mark.parametrize("reliable", [False, True])
def test_server_sends_100_only_after_rfc4320_delay(reliable: bool) -> None:
    tx = server(reliable=reliable, now=1.0)
    assert tx.get_timer() == 4.5
    tx.handle_timer(4.49)
    assert tx.pop_actions() == []
    tx.receive_request(4.0)
    assert tx.pop_actions() == []
    events = run_until(tx, 4.5)
    assert events == [(4.5, Send(TRYING_100))]
    assert tx.state is TxState.PROCEEDING
    tx.receive_request(5.0)
    assert tx.pop_actions() == [Send(TRYING_100)]
    tx.respond(Resp(200), 6.0)
    assert tx.pop_actions() == [Send(Resp(200))]
    tx.receive_request(7.0)
    assert tx.pop_actions() == ([] if reliable else [Send(Resp(200))])


def test_server_gives_up_silently_when_tu_never_answers() -> None:
    tx = server()
    events = run_until(tx, 100)
    assert events == [(3.5, Send(TRYING_100))]  # and no 408 ever (RFC 4320 §4.2)
    assert tx.terminated
    tx.respond(Resp(200), 40.0)  # too late: discarded
    assert tx.pop_actions() == []


@pytest.mark.parametrize("status", [100, 180, 408])
def test_server_refuses_provisional_and_408_from_tu(status: int) -> None:
    tx = server()
    with pytest.raises(LocalProtocolError):
        tx.respond(Resp(status), 0.1)
    assert tx.state is TxState.TRYING and tx.pop_actions() == []


def test_server_transport_error_after_sending() -> None:
    tx = server()
    tx.respond(Resp(200), 0.1)
    tx.pop_actions()
    tx.transport_error(0.2)
    assert tx.pop_actions() == [Fail(Failure.TRANSPORT)]
    assert tx.terminated


# -- every (state, input) pair ------------------------------------------------------------------

FINAL = Resp(200, "final")
ONE_XX = Resp(180)

# Expected (actions, next state) per pair, written from RFC 3261 Figures 6/8 and RFC 4320;
# a pair absent here must be refused with LocalProtocolError.
CLIENT_EXPECT: dict[tuple[TxState, TxInput], tuple[list[object], TxState]] = {
    (TxState.TRYING, TxInput.RECV_1XX): ([Deliver(ONE_XX)], TxState.PROCEEDING),
    (TxState.TRYING, TxInput.RECV_FINAL): ([Deliver(FINAL)], TxState.COMPLETED),
    (TxState.TRYING, TxInput.TIMER_E): ([Send(REQ)], TxState.TRYING),
    (TxState.TRYING, TxInput.TIMER_F): ([Fail(Failure.TIMEOUT)], TxState.TERMINATED),
    (TxState.TRYING, TxInput.TRANSPORT_ERROR): ([Fail(Failure.TRANSPORT)], TxState.TERMINATED),
    (TxState.PROCEEDING, TxInput.RECV_1XX): ([Deliver(ONE_XX)], TxState.PROCEEDING),
    (TxState.PROCEEDING, TxInput.RECV_FINAL): ([Deliver(FINAL)], TxState.COMPLETED),
    (TxState.PROCEEDING, TxInput.TIMER_E): ([Send(REQ)], TxState.PROCEEDING),
    (TxState.PROCEEDING, TxInput.TIMER_F): ([Fail(Failure.TIMEOUT)], TxState.TERMINATED),
    (TxState.PROCEEDING, TxInput.TRANSPORT_ERROR): ([Fail(Failure.TRANSPORT)], TxState.TERMINATED),
    (TxState.COMPLETED, TxInput.RECV_1XX): ([], TxState.COMPLETED),
    (TxState.COMPLETED, TxInput.RECV_FINAL): ([], TxState.COMPLETED),
    (TxState.COMPLETED, TxInput.TIMER_K): ([], TxState.TERMINATED),
    (TxState.COMPLETED, TxInput.TRANSPORT_ERROR): ([], TxState.COMPLETED),
    (TxState.TERMINATED, TxInput.RECV_1XX): ([], TxState.TERMINATED),
    (TxState.TERMINATED, TxInput.RECV_FINAL): ([], TxState.TERMINATED),
    (TxState.TERMINATED, TxInput.TRANSPORT_ERROR): ([], TxState.TERMINATED),
}

SERVER_EXPECT: dict[tuple[TxState, TxInput], tuple[list[object], TxState]] = {
    (TxState.TRYING, TxInput.RECV_REQUEST): ([], TxState.TRYING),
    (TxState.TRYING, TxInput.SEND_FINAL): ([Send(FINAL)], TxState.COMPLETED),
    (TxState.TRYING, TxInput.TIMER_TRYING): ([Send(TRYING_100)], TxState.PROCEEDING),
    (TxState.TRYING, TxInput.TIMER_GIVE_UP): ([], TxState.TERMINATED),
    (TxState.PROCEEDING, TxInput.RECV_REQUEST): ([Send(TRYING_100)], TxState.PROCEEDING),
    (TxState.PROCEEDING, TxInput.SEND_FINAL): ([Send(FINAL)], TxState.COMPLETED),
    (TxState.PROCEEDING, TxInput.TIMER_GIVE_UP): ([], TxState.TERMINATED),
    (TxState.PROCEEDING, TxInput.TRANSPORT_ERROR): ([Fail(Failure.TRANSPORT)], TxState.TERMINATED),
    (TxState.COMPLETED, TxInput.RECV_REQUEST): ([Send(Resp(202, "first"))], TxState.COMPLETED),
    (TxState.COMPLETED, TxInput.SEND_FINAL): ([], TxState.COMPLETED),
    (TxState.COMPLETED, TxInput.TIMER_J): ([], TxState.TERMINATED),
    (TxState.COMPLETED, TxInput.TRANSPORT_ERROR): ([Fail(Failure.TRANSPORT)], TxState.TERMINATED),
    (TxState.TERMINATED, TxInput.RECV_REQUEST): ([], TxState.TERMINATED),
    (TxState.TERMINATED, TxInput.SEND_FINAL): ([], TxState.TERMINATED),
    (TxState.TERMINATED, TxInput.TRANSPORT_ERROR): ([], TxState.TERMINATED),
}


def client_in(state: TxState) -> ClientTransaction[str, Resp]:
    """A UDP client transaction brought to ``state`` through its public API."""
    tx = client()
    if state is TxState.PROCEEDING:
        tx.receive_response(Resp(100), 0.1)
    elif state is TxState.COMPLETED:
        tx.receive_response(Resp(200), 0.1)
    elif state is TxState.TERMINATED:
        tx.transport_error(0.1)
    tx.pop_actions()
    assert tx.state is state
    return tx


def server_in(state: TxState) -> ServerTransaction[str, Resp]:
    """A UDP server transaction brought to ``state`` through its public API."""
    tx = server()
    if state is TxState.PROCEEDING:
        tx.handle_timer(CFG.trying_delay)
    elif state is TxState.COMPLETED:
        tx.respond(Resp(202, "first"), 0.1)
    elif state is TxState.TERMINATED:
        tx.handle_timer(CFG.timer_f)
    tx.pop_actions()
    assert tx.state is state
    return tx


@pytest.mark.parametrize("state", list(TxState))
@pytest.mark.parametrize("kind", list(TxInput))
def test_client_every_state_input_pair(state: TxState, kind: TxInput) -> None:
    tx = client_in(state)
    message = {TxInput.RECV_1XX: ONE_XX, TxInput.RECV_FINAL: FINAL}.get(kind)
    expected = CLIENT_EXPECT.get((state, kind))
    if expected is None:
        with pytest.raises(LocalProtocolError):
            tx._fire(kind, 1.0, message)
        assert tx.state is state
        return
    tx._fire(kind, 1.0, message)
    assert (tx.pop_actions(), tx.state) == expected


@pytest.mark.parametrize("state", list(TxState))
@pytest.mark.parametrize("kind", list(TxInput))
def test_server_every_state_input_pair(state: TxState, kind: TxInput) -> None:
    tx = server_in(state)
    expected = SERVER_EXPECT.get((state, kind))

    def fire() -> None:
        if kind is TxInput.SEND_FINAL:
            tx.respond(FINAL, 1.0)  # the public entry for this input
        else:
            tx._fire(kind, 1.0)
    if expected is None:
        with pytest.raises(LocalProtocolError):
            fire()
        assert tx.state is state
        return
    fire()
    assert (tx.pop_actions(), tx.state) == expected


# -- property tests over random input sequences ---------------------------------------------------

client_steps = st.lists(
    st.tuples(
        st.sampled_from(["1xx", "final", "timer", "transport", "wait"]),
        st.floats(min_value=0, max_value=6, allow_nan=False),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(reliable=st.booleans(), steps=client_steps)
def test_client_invariants(reliable: bool, steps: list[tuple[str, float]]) -> None:
    tx = client(reliable=reliable)
    actions: list[object] = list(tx.pop_actions())
    now = 0.0
    finals_in = 0
    for op, dt in steps:
        now += dt
        was = tx.state
        if op == "1xx":
            tx.receive_response(Resp(100), now)
        elif op == "final":
            finals_in += 1
            tx.receive_response(Resp(200 + finals_in), now)
        elif op == "transport":
            tx.transport_error(now)
        else:
            tx.handle_timer(now)
        new = tx.pop_actions()
        if was in (TxState.COMPLETED, TxState.TERMINATED):
            assert new == []  # nothing leaves or reaches the TU after the final
        actions.extend(new)
        deadline = tx.get_timer()
        assert deadline is None or deadline > now or op != "wait"
    delivered_finals = [a for a in actions if isinstance(a, Deliver) and a.message.status_code >= 200]
    fails = [a for a in actions if isinstance(a, Fail)]
    assert len(delivered_finals) + len(fails) <= 1
    sends = [a for a in actions if isinstance(a, Send)]
    assert len(sends) <= (1 if reliable else 11)
    if tx.state is TxState.TERMINATED:
        assert tx.get_timer() is None


server_steps = st.lists(
    st.tuples(
        st.sampled_from(["request", "final", "timer", "transport", "bad"]),
        st.floats(min_value=0, max_value=6, allow_nan=False),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(reliable=st.booleans(), steps=server_steps)
def test_server_invariants(reliable: bool, steps: list[tuple[str, float]]) -> None:
    tx = server(reliable=reliable)
    now = 0.0
    sent: list[tuple[float, Resp]] = []
    finals_from_tu = 0
    for op, dt in steps:
        now += dt
        if op == "request":
            tx.receive_request(now)
        elif op == "final":
            finals_from_tu += 1
            tx.respond(Resp(200 + finals_from_tu), now)
        elif op == "bad":
            with pytest.raises(LocalProtocolError):
                tx.respond(Resp(408), now)
        elif op == "transport":
            if tx.state is TxState.TRYING:
                with pytest.raises(LocalProtocolError):  # nothing was sent that could fail
                    tx.transport_error(now)
            else:
                tx.transport_error(now)
        else:
            tx.handle_timer(now)
        for action in tx.pop_actions():
            assert isinstance(action, Send | Fail)
            if isinstance(action, Send):
                assert isinstance(action.message, Resp)
                sent.append((now, action.message))
    provisional = [(at, r) for at, r in sent if r.status_code < 200]
    assert all(r == TRYING_100 and at >= CFG.trying_delay for at, r in provisional)
    finals = {r for _, r in sent if r.status_code >= 200}
    assert len(finals) <= 1  # only the first final is ever sent, and re-sent
    if finals:
        first_final_at = min(at for at, r in sent if r.status_code >= 200)
        assert all(at <= first_final_at for at, _ in provisional)


@settings(max_examples=300, deadline=None)
@given(kinds=st.lists(st.sampled_from(list(TxInput)), max_size=25), server_side=st.booleans())
def test_any_input_sequence_follows_the_table_or_is_refused(kinds: list[TxInput], server_side: bool) -> None:
    table = SERVER_TRANSITIONS if server_side else CLIENT_TRANSITIONS
    tx: AnyTx = server() if server_side else client()
    for step, kind in enumerate(kinds):
        before = tx.state
        allowed = (before, kind) in table
        try:
            if isinstance(tx, ServerTransaction):
                if kind is TxInput.SEND_FINAL:
                    tx.respond(Resp(200 + step), float(step))
                else:
                    tx._fire(kind, float(step))
            else:
                message = Resp(100) if kind is TxInput.RECV_1XX else Resp(200 + step)
                tx._fire(kind, float(step), message)
        except LocalProtocolError:
            assert not allowed and tx.state is before
            continue
        assert allowed
        expected = table[(before, kind)][1]
        # entering Completed on a reliable transport would chain K/J; these are UDP, so no chaining
        assert tx.state is expected
        if tx.state is TxState.TERMINATED:
            assert tx.get_timer() is None


@settings(max_examples=300, deadline=None)
@given(before=server_steps, after=server_steps)
def test_a_completed_server_transaction_rebuilt_from_its_response_and_deadline_behaves_alike(
    before: list[tuple[str, float]], after: list[tuple[str, float]],
) -> None:
    """``ServerTransaction.completed`` (what a layer keeping completed transactions in a compact
    form rebuilds them with) gives a transaction that takes every later input as the original does."""

    def apply(tx: ServerTransaction[str, Resp], op: str, now: float, n: int) -> object:
        try:
            if op == "request":
                tx.receive_request(now)
            elif op == "final":
                tx.respond(Resp(300 + n), now)
            elif op == "bad":
                tx.respond(Resp(100 + n % 2 * 308), now)  # 100 or 408: refused
            elif op == "transport":
                tx.transport_error(now)
            else:
                tx.handle_timer(now)
        except LocalProtocolError as exc:
            return str(exc)
        return tx.pop_actions(), tx.state, tx.get_timer(), tx.last_response, tx.request

    original = server()
    now = 0.0
    for n, (op, dt) in enumerate(before):  # any way into Completed: a 100 first or not, retransmissions
        if original.state is TxState.COMPLETED:
            break
        now += dt
        apply(original, op, now, n)
    if original.state is TxState.TERMINATED:  # ended before any answer: start another
        original = server(now=now)
    if original.state is not TxState.COMPLETED:
        original.respond(Resp(200), now)
    original.pop_actions()
    assert original.state is TxState.COMPLETED and original.timeout_at is not None
    assert original.last_response is not None
    rebuilt = ServerTransaction[str, Resp].completed(
        original.last_response, timeout_at=original.timeout_at, reliable=original.reliable, config=CFG)
    for n, (op, dt) in enumerate(after):
        now += dt * 4  # (reaching Timer J now and then)
        assert apply(rebuilt, op, now, n) == apply(original, op, now, n)
    assert rebuilt.state is original.state and rebuilt.get_timer() == original.get_timer()


@settings(max_examples=300, deadline=None)
@given(before=client_steps, after=client_steps)
def test_a_completed_client_transaction_rebuilt_from_its_deadline_behaves_alike(
    before: list[tuple[str, float]], after: list[tuple[str, float]],
) -> None:
    """``ClientTransaction.completed`` gives a transaction that takes every later input as the
    original does (what a layer keeping completed transactions in a compact form relies on)."""

    def apply(tx: ClientTransaction[str, Resp], op: str, now: float, n: int) -> object:
        if op == "1xx":
            tx.receive_response(Resp(100 + n), now)
        elif op == "final":
            tx.receive_response(Resp(200 + n), now)
        elif op == "transport":
            tx.transport_error(now)
        else:
            tx.handle_timer(now)
        return tx.pop_actions(), tx.state, tx.get_timer(), tx.request, tx.retransmissions

    original = client()
    now = 0.0
    for n, (op, dt) in enumerate(before):  # any way into Completed: retransmissions, 1xx first or not
        if original.state is TxState.COMPLETED:
            break
        now += dt
        apply(original, op, now, n)
    if original.state is TxState.TERMINATED:  # timed out or failed first: start another
        original = client(now=now)
    if original.state is not TxState.COMPLETED:
        original.receive_response(Resp(200), now)
    original.pop_actions()
    assert original.state is TxState.COMPLETED and original.timeout_at is not None
    rebuilt = ClientTransaction[str, Resp].completed(
        timeout_at=original.timeout_at, reliable=original.reliable, config=CFG,
        retransmissions=original.retransmissions)
    for n, (op, dt) in enumerate(after):
        now += dt
        assert apply(rebuilt, op, now, n) == apply(original, op, now, n)
    assert rebuilt.state is original.state and rebuilt.get_timer() == original.get_timer()
