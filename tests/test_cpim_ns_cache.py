"""NS bindings are checked once per cached header line and applied on every parse."""

from __future__ import annotations

import pytest

from sipimdn import cpim
from sipimdn.errors import CpimError

_IMDN = "urn:ietf:params:imdn"


def _message(ns_line: str, header: str) -> bytes:
    return (
        f"From: <sip:a@example.com>\r\n{ns_line}\r\n{header}\r\n\r\n"
        "Content-Type: text/plain\r\n\r\nhi"
    ).encode()


def test_prefixed_binding_applies_on_every_parse() -> None:
    for _ in range(3):  # the NS line comes from the line cache after the first parse
        msg = cpim.parse(_message(f"NS: imdn <{_IMDN}>", "imdn.Message-ID: abc"))
        assert msg.value(_IMDN, "Message-ID") == "abc"
    # Another prefix bound to the same URI is its own line, its own binding.
    msg = cpim.parse(_message(f"NS: other <{_IMDN}>", "other.Message-ID: xyz"))
    assert msg.value(_IMDN, "Message-ID") == "xyz"
    assert msg.get(_IMDN, "Message-ID") is not None


def test_default_namespace_binding_applies_on_every_parse() -> None:
    for _ in range(2):
        msg = cpim.parse(_message("NS: <urn:example:ns>", "Thing: 1"))
        assert msg.value("urn:example:ns", "Thing") == "1"
        assert msg.value(cpim.CPIM_NS, "Thing") is None


@pytest.mark.parametrize("ns_line", ["NS: imdn urn:no:brackets", "NS: imdn <urn:x#frag>"])
def test_malformed_ns_is_refused_every_time(ns_line: str) -> None:
    for _ in range(2):
        with pytest.raises(CpimError):
            cpim.parse(_message(ns_line, "imdn.Message-ID: abc"))
