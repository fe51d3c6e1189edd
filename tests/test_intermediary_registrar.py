"""The minimal registrar: bindings, expiry, removal, malformed REGISTERs."""

from __future__ import annotations

import pytest

from sipimdn.dialog.factory import build_request
from sipimdn.errors import RemoteProtocolError
from sipimdn.intermediary import Registrar
from sipimdn.message import Request

AOR = "sip:bob@sipimdn.test"


def register(contact: str | None, *, expires: str | None = None, aor: str = AOR) -> Request:
    headers = [("Expires", expires)] if expires is not None else []
    request = build_request("REGISTER", "sip:sipimdn.test", aor, aor, headers=headers)
    if contact is not None:
        request.headers.add("Contact", contact)
    return request


def test_binding_lookup_newest_first_and_expiry() -> None:
    registrar = Registrar(default_expires=60, max_expires=120)
    result = registrar.register(register("<sip:bob@127.0.0.1:5070>"), 0.0)
    assert [b.contact for b in result.added] == ["sip:bob@127.0.0.1:5070"]
    assert result.headers == (("Contact", "<sip:bob@127.0.0.1:5070>;expires=60"),)
    registrar.register(register("<sip:bob@127.0.0.1:5080>;expires=1000"), 1.0)  # capped at 120
    assert registrar.lookup("sip:bob@SIPIMDN.test:5060", 2.0) == [
        "sip:bob@127.0.0.1:5080",
        "sip:bob@127.0.0.1:5070",
    ]
    assert registrar.lookup(AOR, 60.0) == ["sip:bob@127.0.0.1:5080"]
    assert registrar.lookup(AOR, 121.0) == []
    assert registrar.bindings(121.0) == []


def test_expires_zero_and_wildcard_remove() -> None:
    registrar = Registrar()
    registrar.register(register("<sip:bob@127.0.0.1:5070>, <sip:bob@127.0.0.1:5071>"), 0.0)
    result = registrar.register(register("<sip:bob@127.0.0.1:5070>;expires=0"), 1.0)
    assert result.added == ()
    assert registrar.lookup(AOR, 1.0) == ["sip:bob@127.0.0.1:5071"]
    registrar.register(register("*", expires="0"), 2.0)
    assert registrar.lookup(AOR, 2.0) == []
    # A REGISTER without Contact is a query: it lists the bindings.
    registrar.register(register("<sip:bob@127.0.0.1:5072>"), 3.0)
    assert len(registrar.register(register(None), 4.0).headers) == 1


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (register("*"), 400),  # wildcard needs Expires: 0
        (register("<sip:bob@127.0.0.1:5070>;expires=abc"), 400),
        (register("<sip:bob@127.0.0.1:5070>", expires="x1"), 400),
    ],
)
def test_malformed_register_is_a_remote_error(request_: Request, status: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Registrar().register(request_, 0.0)
    assert info.value.status_code == status


def test_too_brief_is_423() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Registrar(min_expires=30, default_expires=60).register(register("<sip:b@h>;expires=5"), 0.0)
    assert info.value.status_code == 423


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        Registrar(min_expires=100, default_expires=60)
