"""``python -m sipimdn parse``: pretty-printing and error reporting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sipimdn.cli import build_parser, main

DATA = Path(__file__).parent / "data"


def test_parse_prints_start_line_headers_typed_values_and_body(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", str(DATA / "message_cpim.sip")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Request  MESSAGE sip:bob@biloxi.example.com\n")
    assert "  Via: SIP/2.0/TCP 192.0.2.10:50601;branch=z9hG4bK776sgdkse;rport\n" in out
    assert "-> transport=TCP host=192.0.2.10 port=50601 branch=z9hG4bK776sgdkse rport\n" in out
    assert "-> display='Alice' uri=<scheme=sip user='alice' host=atlanta.example.com> tag=49583" in out
    assert "-> number=1 method=MESSAGE" in out
    assert out.rstrip().endswith("Body: 601 bytes (message/cpim)")


def test_parse_shows_canonical_names_for_compact_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = (
        b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>;tag=2\r\n"
    )
    raw += b"i: x\r\nCSeq: 1 MESSAGE\r\nl: 0\r\n\r\n"
    path = tmp_path / "resp.sip"
    path.write_bytes(raw)
    assert main(["parse", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Response 200 OK" in out
    assert "  Call-ID: x  [as 'i']" in out
    assert "  Content-Length: 0  [as 'l']" in out


@pytest.mark.parametrize(
    ("raw", "reason", "status"),
    [
        (b"MESSAGE sip:a@b SIP/3.0\r\n\r\n", "unsupported SIP version", "505 Version Not Supported"),
        (
            (DATA / "message_cpim.sip").read_bytes().replace(b"CSeq: 1 MESSAGE", b"CSeq: x"),
            "bad CSeq",
            "400 Bad Request",
        ),
        (b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", "missing From", "400 Bad Request"),
    ],
)
def test_parse_errors_exit_1_with_reason_and_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes, reason: str, status: str
) -> None:
    path = tmp_path / "bad.sip"
    path.write_bytes(raw)
    assert main(["parse", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {reason}")
    assert f"status: {status}" in err


def test_parse_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = (DATA / "message_cpim.sip").read_bytes()
    path = tmp_path / "stream.bin"
    path.write_bytes(b"\r\n\r\n" + one + one)
    assert main(["parse", "--stream", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Keep-alive (line end 2, ping)" in out
    assert out.count("Request  MESSAGE") == 2
    path.write_bytes(one[:-10])
    assert main(["parse", "--stream", str(path)]) == 1
    assert "incomplete message" in capsys.readouterr().err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", "/nonexistent/file.sip"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_registry_has_parse_and_usage_errors_exit_2() -> None:
    parser = build_parser()
    args = parser.parse_args(["parse", "x"])
    assert args.func.__name__ == "run_parse"
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sipimdn", "parse", str(DATA / "message_cpim.sip")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Request  MESSAGE" in result.stdout


def test_control_characters_are_escaped_for_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", str(DATA / "rfc4475" / "intmeth.sip")]) == 0
    out = capsys.readouterr().out
    assert "\x00" not in out and "\x07" not in out
    assert '"BEL:\\\\x07 NUL:\\\\x00 DEL:\\\\x7f"' in out
    assert "password=(set)" in out and "работающий" in out
