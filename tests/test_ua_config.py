"""UserAgentConfig and ListenEndpoint parsing."""

from __future__ import annotations

import ssl

import pytest

from sipimdn.config import DisplayPrivacy, ListenEndpoint, UserAgentConfig


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:127.0.0.1:5070", ListenEndpoint("udp", "127.0.0.1", 5070)),
        ("TCP:127.0.0.1:0", ListenEndpoint("tcp", "127.0.0.1", 0)),
        ("tls:127.0.0.1", ListenEndpoint("tls", "127.0.0.1", 5061)),
        ("udp:127.0.0.1", ListenEndpoint("udp", "127.0.0.1", 5060)),
        ("udp:[::1]:5070", ListenEndpoint("udp", "::1", 5070)),
        ("tcp:[::1]", ListenEndpoint("tcp", "::1", 5060)),
        ("udp:::1", ListenEndpoint("udp", "::1", 5060)),
    ],
)
def test_listen_endpoint_parses(text: str, expected: ListenEndpoint) -> None:
    assert ListenEndpoint.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:5070",
        "sctp:127.0.0.1:5070",
        "udp:",
        "udp:127.0.0.1:",
        "udp:127.0.0.1:50x",
        "udp:127.0.0.1:70000",
        "udp:[::1",
        "udp:[::1]x",
        "udp:localhost:5060",
    ],
)
def test_listen_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ListenEndpoint.parse(text)


def test_listen_endpoint_str_round_trips() -> None:
    for text in ("udp:127.0.0.1:5070", "tls:[::1]:5061"):
        assert str(ListenEndpoint.parse(text)) == text
    assert ListenEndpoint.parse("udp:[::1]:1").is_ipv6
    assert not ListenEndpoint.parse("udp:127.0.0.1:1").is_ipv6


def test_config_defaults_are_loopback_udp_in_memory() -> None:
    config = UserAgentConfig(aor="sip:alice@127.0.0.1")
    assert config.listen == (ListenEndpoint("udp", "127.0.0.1", 0),)
    assert config.store_path == ":memory:"
    assert config.auto_delivery is True
    assert config.display_privacy is DisplayPrivacy.SEND
    assert 200 <= config.deadline_status <= 699


def test_config_tls_listen_requires_context() -> None:
    tls = (ListenEndpoint.parse("tls:127.0.0.1:0"),)
    with pytest.raises(ValueError, match="tls_server_context"):
        UserAgentConfig(aor="sip:a@127.0.0.1", listen=tls)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert UserAgentConfig(aor="sip:a@127.0.0.1", listen=tls, tls_server_context=context).listen == tls


@pytest.mark.parametrize(
    "changes",
    [
        {"aor": "alice"},
        {"listen": ()},
        {"t1": 0},
        {"t2": 0.1},
        {"handler_deadline": -1},
        {"deadline_status": 180},
        {"deadline_status": 408},
        {"close_grace": -1},
        {"max_body_bytes": 0},
        {"imdn_max_attempts": 0},
        {"dedup_ttl": 0},
    ],
)
def test_config_rejects_nonsense(changes: dict[str, object]) -> None:
    arguments: dict[str, object] = {"aor": "sip:alice@127.0.0.1", **changes}
    with pytest.raises(ValueError):
        UserAgentConfig(**arguments)  # type: ignore[arg-type]
