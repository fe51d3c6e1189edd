"""SIPp (a real, independent UAC) against SipStack under faults: -lost 10/30, and valid SIPp
traffic while the stack's port is flooded with garbage. Needs the ``sipp`` program (interop).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from _peers import require_binary
from interop.sipp import LOOPBACK, SippRunner
from robust_helpers import Recorder, listen, port_of
from test_floods import FLOODER

from sipimdn.stack import SipStack
from sipimdn.transport.flow import Transport

pytestmark = pytest.mark.interop


@pytest.fixture
def sipp(tmp_path: Path) -> SippRunner:
    return SippRunner(require_binary("sipp"), tmp_path)  # skips, or fails with CI=true


@pytest.mark.parametrize("lost", [10, 30])
async def test_sipp_lost_every_message_handed_up_exactly_once(sipp: SippRunner, lost: int) -> None:
    calls = 60
    async with SipStack(listen(Transport.UDP)) as stack:
        recorder = Recorder()
        stack.on_request(recorder)
        try:
            # 30 retransmissions capped at T2 = 1 s: at 30% loss each way a call fails with odds ~1e-9.
            # SIPp 3.6.1 stops at -max_retrans (default 7) whatever -max_non_invite_retrans says, so
            # both are given: with 7, about one run in four lost a call at 30%.
            result = await sipp.run_async(
                "uac", "uac_text.xml", calls=calls, rate=200, timeout=60, lost=lost,
                remote=(LOOPBACK, port_of(stack, Transport.UDP)),
                extra=["-max_retrans", "30", "-max_non_invite_retrans", "30", "-T2", "1000"])
        finally:
            sipp.stop_all()
        assert (result.successful, result.failed) == (calls, 0), result.describe()
        assert result.retransmissions > 0, result.describe()
        counts = Counter(r.request.call_id for r in recorder.seen)
        assert len(counts) == calls and set(counts.values()) == {1}


async def test_sipp_traffic_during_a_garbage_flood(
        sipp: SippRunner, record_property: Callable[[str, object], None]) -> None:
    calls = 300
    async with SipStack(listen(Transport.UDP)) as stack:
        recorder = Recorder()
        stack.on_request(recorder)
        port = port_of(stack, Transport.UDP)
        flooder = await asyncio.create_subprocess_exec(sys.executable, "-c", FLOODER, str(port), "4",
                                                       stdout=subprocess.PIPE)
        try:
            result = await sipp.run_async(
                "uac", "uac_text.xml", calls=calls, rate=100, timeout=60, remote=(LOOPBACK, port),
                extra=["-max_retrans", "10", "-max_non_invite_retrans", "10", "-T2", "1000"])
        finally:
            sipp.stop_all()
            stdout, _ = await flooder.communicate()
        share = result.successful / calls
        record_property("sipp_share_under_flood", share)
        print(f"\nSIPp under a {int(stdout):,}-datagram flood: {result.successful}/{calls} = {share:.1%}")
        assert share >= 0.95, result.describe()
        assert len({r.request.call_id for r in recorder.seen}) == len(recorder.seen)
