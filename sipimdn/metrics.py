"""Prometheus metrics of a :class:`~sipimdn.ua.UserAgent`, served over HTTP (optional).

Needs ``prometheus_client`` (``pip install 'sipimdn[metrics]'``), imported
only when an exporter is made: ``import sipimdn.metrics`` alone costs
nothing. The numbers are those of ``ua.stats()``
(:class:`~sipimdn.ua.UserAgentStats`), read when Prometheus scrapes::

    async with UserAgent(config) as ua, MetricsExporter(ua, port=9464) as exporter:
        ...  # GET http://127.0.0.1:9464/metrics

``sipimdn listen --metrics-port N`` does the same. The server runs on the
event loop (an :func:`asyncio.start_server`, no thread), answers ``GET
/metrics`` (any other path: 404; other methods: 405), reads at most 8 KiB of
request head within 5 s, and closes each connection after one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ua import UserAgent

__all__ = ["COUNTERS", "MetricsExporter", "require_prometheus_client"]

_log = logging.getLogger("sipimdn.metrics")

#: Stats fields exported as Prometheus counters (``sipimdn_<name>_total``); the others are gauges.
COUNTERS = frozenset(
    {
        "messages_sent",
        "messages_received",
        "duplicates_received",
        "notifications_sent",
        "notifications_received",
        "notifications_accepted",
        "notifications_rejected",
        "retransmissions",
        "timeouts",
        "transport_errors",
        "records_lost",
        "store_writes",
        "store_failures",
        "store_write_seconds",
        "working_set_evictions",
        "working_set_reads",
    }
)

_MAX_HEAD = 8192
_READ_TIMEOUT = 5.0


def require_prometheus_client() -> Any:
    """Import ``prometheus_client``, or raise ImportError saying how to install it."""
    try:
        import prometheus_client  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError as exc:
        raise ImportError(
            "Prometheus metrics need prometheus_client: pip install 'sipimdn[metrics]'"
        ) from exc
    return prometheus_client


class _StatsCollector:
    """A custom collector reading ``ua.stats()`` at each scrape (prometheus_client's Collector protocol)."""

    def __init__(self, ua: UserAgent, aor_label: bool) -> None:
        self._ua = ua
        self._aor_label = aor_label

    def describe(self) -> list[Any]:
        return []  # no registration-time check: collect() reads a live user agent

    def collect(self) -> Iterator[Any]:
        require_prometheus_client()
        from prometheus_client import core  # noqa: PLC0415 - present: checked when the exporter was made
        try:
            stats = self._ua.stats()
        except Exception:  # not running (closed, not started): nothing to report
            return
        labels = ["aor"] if self._aor_label else []
        values = [self._ua.aor] if self._aor_label else []
        for field in fields(stats):
            value = getattr(stats, field.name)
            name = f"sipimdn_{field.name}"
            help_text = f"sipimdn user agent: {field.name.replace('_', ' ')}"
            family: core.CounterMetricFamily | core.GaugeMetricFamily
            if field.name in COUNTERS:
                family = core.CounterMetricFamily(name, help_text, labels=labels)
            else:
                family = core.GaugeMetricFamily(name, help_text, labels=labels)
            family.add_metric(values, float(value))
            yield family


class MetricsExporter:
    """Serves ``ua``'s stats in the Prometheus text format on ``host:port`` (``/metrics``).

    ``port=0`` picks a free port (see :attr:`port` once started). ``aor_label``
    adds the user agent's AOR as a label (for several user agents in one
    Prometheus job). Use ``async with`` or :meth:`start`/:meth:`close`.
    """

    def __init__(self, ua: UserAgent, *, port: int, host: str = "127.0.0.1", aor_label: bool = False) -> None:
        client = require_prometheus_client()
        self._generate = client.generate_latest
        self._content_type: str = client.CONTENT_TYPE_LATEST
        self._registry = client.CollectorRegistry(auto_describe=False)
        self._registry.register(_StatsCollector(ua, aor_label))
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> MetricsExporter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen; raises OSError when the port cannot be bound."""
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=_MAX_HEAD)
        self._port = int(self._server.sockets[0].getsockname()[1])
        _log.info("serving Prometheus metrics on http://%s:%d/metrics", self._host, self._port)

    @property
    def port(self) -> int:
        """The port listened on (the bound one after :meth:`start` with port 0)."""
        return self._port

    def render(self) -> bytes:
        """The current metrics in the Prometheus text format (what a scrape gets)."""
        return bytes(self._generate(self._registry))

    async def close(self) -> None:
        """Stop listening and close the connections being served."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        try:
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        except ValueError:
            method, target = "", ""
        if method != "GET":
            status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain; charset=utf-8"
        elif target.split("?", 1)[0] != "/metrics":
            status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain; charset=utf-8"
        else:
            status, body, ctype = "200 OK", self.render(), self._content_type
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
