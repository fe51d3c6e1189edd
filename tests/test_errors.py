from __future__ import annotations

import pytest

from sipimdn import (
    CpimError,
    ImdnError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SipParseError,
)


def test_parse_error_carries_status_and_reason() -> None:
    err = SipParseError("Content-Length larger than the datagram", 400)
    assert err.status_code == 400
    assert err.reason == "Content-Length larger than the datagram"
    assert "Content-Length" in str(err) and "400" in str(err)
    assert isinstance(err, RemoteProtocolError)
    assert not isinstance(err, LocalProtocolError)


@pytest.mark.parametrize("cls", [CpimError, ImdnError, SipParseError])
def test_codec_errors_are_remote_protocol_errors_with_default_400(cls: type[ProtocolError]) -> None:
    err = cls("bad")
    assert isinstance(err, RemoteProtocolError)
    assert err.status_code == 400


def test_status_override() -> None:
    assert SipParseError("too big", 513).status_code == 513
    # the class default is untouched by an instance override
    assert SipParseError("x").status_code == 400
