"""The Prometheus exporter (sipimdn.metrics) and ``sipimdn listen --metrics-port``, scraped over 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request

import pytest
from test_cli_ua import ENV, _send, _stop, listener
from ua_helpers import ua_config

from sipimdn import IncomingMessage, UserAgent
from sipimdn.metrics import MetricsExporter

pytest.importorskip("prometheus_client")


def _samples(text: str) -> dict[str, float]:
    """``name{labels} value`` lines of the Prometheus text format, by name with labels."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def _http(port: int, head: bytes) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return status_line.decode(), rest.partition(b"\r\n\r\n")[2]


async def test_the_exporter_serves_the_stats_after_a_loopback_exchange() -> None:
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def show(message: IncomingMessage) -> None:
            await message.mark_displayed()

        for n in range(2):
            sent = await alice.send_message(bob.aor, f"m{n}", notify={"positive-delivery", "display"})
            assert await sent.await_disposition("displayed", timeout=5) == "displayed"
        async with MetricsExporter(alice, port=0) as exporter, MetricsExporter(
            bob, port=0, aor_label=True
        ) as labelled:
            status, body = await _http(exporter.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == "HTTP/1.1 200 OK"
            samples = _samples(body.decode())
            assert samples["sipimdn_messages_sent_total"] == 2
            assert samples["sipimdn_notifications_accepted_total"] == 4
            assert samples["sipimdn_notifications_rejected_total"] == 0
            assert samples["sipimdn_open_connections"] == 0  # a gauge: no _total
            assert "sipimdn_tracked_messages" in samples and "sipimdn_store_write_max_seconds" in samples
            # (prometheus_client versions differ on whether the TYPE line keeps the _total suffix)
            assert re.search(r"^# TYPE sipimdn_timeouts(_total)? counter$", body.decode(), re.MULTILINE)
            _, labelled_body = await _http(labelled.port, b"GET /metrics HTTP/1.0\r\n\r\n")
            key = f'sipimdn_notifications_sent_total{{aor="{bob.aor}"}}'
            assert _samples(labelled_body.decode())[key] == 4
            assert (await _http(exporter.port, b"GET / HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 404 Not Found"
            posted = await _http(exporter.port, b"POST /metrics HTTP/1.1\r\n\r\n")
            assert posted[0] == "HTTP/1.1 405 Method Not Allowed"
            # A head that never ends is cut at 8 KiB, not buffered without bound.
            assert (await _http(exporter.port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)) == ("", b"")
    # A closed user agent is scraped as empty, not as an error.
    assert b"sipimdn_messages_sent" not in exporter.render()


def test_listen_serves_metrics_on_the_port_asked() -> None:
    with listener("--metrics-port", "0") as (proc, listening):
        url = listening["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        result = _send(listening["aor"], "--notify", "positive-delivery")
        assert result.returncode == 0, result.stdout + result.stderr
        with urllib.request.urlopen(url, timeout=5) as response:
            samples = _samples(response.read().decode())
        code, _ = _stop(proc)
    assert code == 0
    assert samples["sipimdn_messages_received_total"] == 1
    assert samples["sipimdn_notifications_sent_total"] == 1


def test_listen_without_prometheus_client_says_how_to_install_it() -> None:
    # The extra missing: one usage line, no traceback.
    code = (
        "import sys; sys.modules['prometheus_client'] = None; from sipimdn.cli import main; "
        "sys.exit(main(['listen', '--aor', 'sip:bob@127.0.0.1:0', '--listen', 'udp:127.0.0.1:0',"
        " '--metrics-port', '0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=ENV, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sipimdn listen: error: --metrics-port: Prometheus metrics need prometheus_client:"
        " pip install 'sipimdn[metrics]'"
    )
