"""Configuration of the connection limits: defaults, derived shares, validation, source keys."""

from __future__ import annotations

import pytest

from sipimdn.config import UserAgentConfig
from sipimdn.transport.base import TransportConfig
from sipimdn.transport.manager import _source_of
from sipimdn.ua._wire import make_stack


def test_defaults_and_shares() -> None:
    config = TransportConfig()
    assert (config.max_connections, config.max_connections_per_source) == (256, 32)
    assert (config.outbound_reserve, config.inbound_share) == (32, 224)
    assert config.stalled_connection_after == 5.0
    assert TransportConfig(max_connections=8).outbound_reserve == 1
    assert TransportConfig(max_connections=1).inbound_share == 1  # too small to reserve anything
    assert TransportConfig(max_connections=10, outbound_connection_reserve=0).inbound_share == 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections_per_source": 0}, "max_connections_per_source"),
        ({"outbound_connection_reserve": -1}, "outbound_connection_reserve"),
        ({"max_connections": 4, "outbound_connection_reserve": 4}, "outbound_connection_reserve"),
        ({"stalled_connection_after": 0}, "stalled_connection_after"),
    ],
)
def test_nonsense_is_refused_by_both_configs(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TransportConfig(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        UserAgentConfig(aor="sip:bob@127.0.0.1:0", **fields)  # type: ignore[arg-type]


def test_user_agent_config_reaches_the_transport() -> None:
    config = UserAgentConfig(aor="sip:bob@127.0.0.1:0", max_connections=64, max_connections_per_source=4,
                             outbound_connection_reserve=16, stalled_connection_after=2.5)
    transport = make_stack(config).transports.config
    assert (transport.max_connections, transport.max_connections_per_source) == (64, 4)
    assert (transport.outbound_reserve, transport.stalled_connection_after) == (16, 2.5)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # one host's /64 is one source
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_source_keys(address: str, key: str) -> None:
    assert _source_of(address) == key
