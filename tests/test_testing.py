"""sipimdn.testing: the loopback pair, the recorders and waits, the pytest plugin, and the example
test users copy (examples/test_with_sipimdn_testing.py), run by pytest as a user would run it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _peers import needs_ipv6

from sipimdn.config import ListenEndpoint
from sipimdn.errors import LocalProtocolError, TransportError
from sipimdn.events import DispositionChanged, DispositionState, NotificationSent
from sipimdn.testing import (
    UnexpectedDisposition,
    WaitTimeout,
    loopback_config,
    record_dispositions,
    record_messages,
    record_notifications,
    throwaway_tls,
    ua_pair,
    wait_disposition,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "test_with_sipimdn_testing.py"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _run_pytest(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-v", *args],
        cwd=where, env=env, capture_output=True, text=True, timeout=180, check=False,
    )


# -- the example and the plugin, as a user's test run ----------------------------------------------


def test_example_and_plugin_pass_in_a_projects_strict_mode_test_run(tmp_path: Path) -> None:
    # A project of its own (not this repository's pyproject, whose asyncio_mode is auto): strict
    # mode is pytest-asyncio's default, and unknown markers are errors.
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "addopts = --strict-markers\n"
    )
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["sipimdn.testing.pytest_plugin"]\n')
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    (tmp_path / "test_marker.py").write_text(
        "import pytest\n"
        "from sipimdn.testing import UaPair, record_messages\n\n"
        "@pytest.mark.asyncio\n"
        '@pytest.mark.sipimdn_pair("tcp", bob={"handler_deadline": 0.5})\n'
        "async def test_marker_options(sipimdn_pair: UaPair) -> None:\n"
        "    alice, bob = sipimdn_pair\n"
        '    assert alice.aor.endswith(";transport=tcp") and bob.aor.endswith(";transport=tcp")\n'
        "    assert bob.config.handler_deadline == 0.5 and alice.config.handler_deadline == 2.0\n"
        "    inbox = record_messages(bob)\n"
        "    await alice.send_message(bob.aor, 'x')\n"
        "    assert (await inbox.next()).transport == 'tcp'\n\n"
        "@pytest.mark.asyncio\n"
        '@pytest.mark.parametrize("sipimdn_pair", [{"transport": "tcp", "names": ("carol", "dave")}],'
        " indirect=True)\n"
        '@pytest.mark.sipimdn_pair("udp")\n'
        "async def test_parameter_wins_over_marker(sipimdn_pair: UaPair) -> None:\n"
        '    assert sipimdn_pair.alice.aor.startswith("sip:carol@")\n'
        '    assert sipimdn_pair.bob.aor.endswith(";transport=tcp")\n'
    )
    result = _run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every test of the example ran (TLS too: trustme is in the test extra), none skipped.
    assert "7 passed" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "[tls] PASSED" in result.stdout


def test_import_needs_neither_pytest_nor_trustme() -> None:
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys, sipimdn.testing; print(sorted(m for m in ('pytest', 'trustme', 'pytest_asyncio') "
         "if m in sys.modules))"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- the pair and the helpers ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_round_trip_with_delivery_notification(transport: str) -> None:
    async with ua_pair(transport) as (alice, bob):  # type: ignore[arg-type]
        inbox = record_messages(bob)
        dispositions = record_dispositions(alice)
        owed = record_notifications(bob)
        sent = await alice.send_message(bob.aor, "hello", notify={"positive-delivery"})

        message = await inbox.next()
        assert (message.text, message.sender, message.message_id) == ("hello", alice.aor, sent.message_id)
        assert message.transport == transport
        assert await wait_disposition(sent, "delivered") is DispositionState.DELIVERED
        delivered = await dispositions.next(
            where=lambda e: isinstance(e, DispositionChanged) and e.state is DispositionState.DELIVERED
        )
        assert isinstance(delivered, DispositionChanged) and delivered.message_id == sent.message_id
        # What went back, seen from bob: the delivery notification, answered 200 by alice.
        notification = await owed.next()
        assert isinstance(notification, NotificationSent)
        outcome = (notification.kind, notification.status, notification.sip_status)
        assert outcome == ("delivery", "delivered", 200)
        assert inbox.unread == [] and inbox.received == [message]


async def test_next_times_out_with_a_clear_error() -> None:
    async with ua_pair() as (alice, bob):
        inbox = record_messages(bob)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WaitTimeout) as caught:
            await inbox.next(timeout=0.2)
        assert 0.2 <= loop.time() - started < 2.0
        assert isinstance(caught.value, TimeoutError)
        assert str(caught.value) == f"{bob.aor}: no message within 0.2 s (0 received in all)"

        # Filtered: what arrived but did not match is named, and stays unread.
        await alice.send_message(bob.aor, "not this one")
        await inbox.next(where=lambda m: True)  # it arrived...
        await alice.send_message(bob.aor, "nor this one")
        expected = (r"no matching message within 0\.1 s \(2 received in all; "
                    r"unread ones that did not match: text/plain 'nor this one' from")
        with pytest.raises(WaitTimeout, match=expected):
            await inbox.next(where=lambda m: m.text == "the one", timeout=0.1)
        assert [m.text for m in inbox.unread] == ["nor this one"]
        assert (await inbox.next()).text == "nor this one"


async def test_assert_nothing() -> None:
    async with ua_pair() as (alice, bob):
        inbox = record_messages(bob)
        await inbox.assert_nothing(within=0.05)
        await alice.send_message(bob.aor, "surprise")
        expected = r"expected no message within 0\.3 s, got text/plain 'surprise'"
        with pytest.raises(AssertionError, match=expected):
            await inbox.assert_nothing(within=0.3)
        assert [m.text for m in inbox.unread] == ["surprise"]  # not read by the check


async def test_wait_disposition_errors() -> None:
    async with ua_pair() as (alice, bob):
        record_messages(bob, answer=(486, "Busy Here"))
        refused = await alice.send_message(bob.aor, "are you there?", notify={"positive-delivery"})
        response = await refused.final_response()
        assert (response.status_code, response.reason) == (486, "Busy Here")
        with pytest.raises(UnexpectedDisposition, match=r"ended 'failed'; 'delivered' was awaited") as caught:
            await wait_disposition(refused, "delivered")
        assert isinstance(caught.value, AssertionError) and caught.value.sent is refused
        assert await wait_disposition(refused, "failed") is DispositionState.FAILED

    async with ua_pair() as (alice, bob):
        record_messages(bob)  # answers 200 (a user agent without an on_message handler answers 480)
        # Display asked for, never marked displayed: the state stops at accepted.
        sent = await alice.send_message(bob.aor, "read me", notify={"display"})
        with pytest.raises(WaitTimeout, match=r"still 'accepted' after 0\.3 s, waiting for 'displayed' "
                                              r"\(notifications requested: \['display'\]\)"):
            await wait_disposition(sent, "displayed", timeout=0.3)


async def test_both_closed_when_the_block_raises() -> None:
    fds = _open_fds()
    with pytest.raises(RuntimeError, match=r"^boom$"):
        async with ua_pair() as (alice, bob):
            ports = [ep.port for ua in (alice, bob) for ep in ua.endpoints if ep.transport == "udp"]
            raise RuntimeError("boom")
    for ua in (alice, bob):
        with pytest.raises(LocalProtocolError, match="not running"):
            ua.endpoints  # noqa: B018
    for port in ports:  # the ports are free again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))
    assert _open_fds() == fds


async def test_first_closed_when_the_second_cannot_start() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        fds = _open_fds()
        with pytest.raises(TransportError):
            async with ua_pair(bob={"listen": (ListenEndpoint("udp", "127.0.0.1", port),)}):
                pytest.fail("the pair must not start")
        assert _open_fds() == fds


async def test_config_overrides_per_side(tmp_path: Path) -> None:
    store = tmp_path / "bob.sqlite"
    async with ua_pair(alice={"display_name": "Alice A."},
                       bob={"handler_deadline": 0.5, "store_path": str(store)}) as (alice, bob):
        assert alice.config.display_name == "Alice A." and bob.config.display_name == "Bob"
        assert bob.config.handler_deadline == 0.5 and alice.config.handler_deadline == 2.0
        record_messages(bob)
        sent = await alice.send_message(bob.aor, "kept", notify={"positive-delivery"})
        await wait_disposition(sent, "delivered")
    assert store.stat().st_size > 0  # bob used the SQLite file it was given, not a memory store
    with pytest.raises(TypeError, match=r"^bob: unknown UserAgentConfig field\(s\) handler_dedline$"):
        async with ua_pair(bob={"handler_dedline": 1}):
            pytest.fail("the pair must not start")
    with pytest.raises(ValueError, match="transport must be"):
        loopback_config("carol", "sctp")  # type: ignore[arg-type]


@needs_ipv6
async def test_ipv6_pair() -> None:
    async with ua_pair(host="::1") as (alice, bob):
        assert bob.aor.startswith("sip:bob@[::1]:")
        inbox = record_messages(bob)
        sent = await alice.send_message(bob.aor, "over IPv6", notify={"positive-delivery"})
        assert (await inbox.next()).source[0] == "::1"
        await wait_disposition(sent, "delivered")


async def test_tls_without_trustme(monkeypatch: pytest.MonkeyPatch) -> None:
    contexts = throwaway_tls()  # made while trustme is still importable
    monkeypatch.setitem(sys.modules, "trustme", None)  # now `import trustme` fails
    with pytest.raises(ImportError, match=r"trustme, which is not installed: pip install trustme"):
        async with ua_pair("tls"):
            pytest.fail("the pair must not start")
    # Contexts of one's own need no trustme.
    async with ua_pair("tls", tls=contexts) as (alice, bob):
        assert bob.aor.startswith("sips:")
        inbox = record_messages(bob)
        await alice.send_message(bob.aor, "secret")
        assert (await inbox.next()).transport == "tls"
