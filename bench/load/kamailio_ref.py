"""Kamailio answering MESSAGE statelessly (bench/kamailio_stateless.cfg), as a responder process."""

from __future__ import annotations

import glob
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .common import BENCH_DIR, LOOPBACK, SERVER_CPU, ServerProcess, free_port, pinned

CONFIG = BENCH_DIR / "kamailio_stateless.cfg"


def kamailio_binary() -> str | None:
    """Path of ``kamailio``, or None."""
    return shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)


def _module_path() -> str:
    for candidate in (
        sorted(glob.glob("/usr/lib/x86_64-linux-gnu/kamailio/modules"))
        + sorted(glob.glob("/usr/lib/*/kamailio/modules"))
        + ["/usr/lib/kamailio/modules"]
    ):
        if Path(candidate, "sl.so").exists():
            return candidate
    raise RuntimeError("Kamailio modules (sl.so) not found")


def render(udp_port: int, tcp_port: int, tls: tuple[int, str, str] | None, workdir: Path) -> Path:
    """Write the configuration with its placeholders filled; returns its path."""
    text = CONFIG.read_text()
    tls_module = ""
    tls_listen = ""
    if tls is not None:
        port, cert, key = tls
        tls_listen = f"listen=tls:{LOOPBACK}:{port}"
        tls_module = (
            'loadmodule "tls.so"\n'
            f'modparam("tls", "certificate", "{cert}")\n'
            f'modparam("tls", "private_key", "{key}")\n'
            'modparam("tls", "verify_certificate", 0)\n'
            'modparam("tls", "require_certificate", 0)\n'
            'modparam("tls", "tls_method", "TLSv1.2+")'
        )
    values = {
        "ENABLE_TLS": "yes" if tls is not None else "no",
        "UDP_PORT": str(udp_port),
        "TCP_PORT": str(tcp_port),
        "TLS_LISTEN": tls_listen,
        "TLS_MODULE": tls_module,
        "MODULE_PATH": _module_path(),
    }
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    path = workdir / "kamailio.cfg"
    path.write_text(text)
    return path


def start(binary: str, workdir: Path, tls: tuple[str, str] | None = None) -> ServerProcess:
    """Run Kamailio in the foreground in its own process group, pinned like the other responders.

    ``tls`` is (certificate, key) PEM paths to listen on TLS too. Waits until it answers
    OPTIONS over UDP (and accepts TCP connections).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    udp_port = free_port()
    tcp_port = free_port((socket.SOCK_STREAM,))
    tls_port = free_port((socket.SOCK_STREAM,)) if tls is not None else None
    config = render(udp_port, tcp_port, (tls_port, *tls) if tls is not None and tls_port else None, workdir)
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, timeout=30, check=False)
    if check.returncode != 0:
        raise RuntimeError("kamailio config check failed:\n" + check.stderr.decode(errors="replace")[-3000:])
    rundir = workdir / "run"
    rundir.mkdir(exist_ok=True)
    log_path = workdir / "kamailio.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        pinned(
            [binary, "-f", str(config), "-DD", "-E", "-Y", str(rundir), "-m", "64", "-M", "8"], SERVER_CPU
        ),
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True,
    )  # fmt: skip
    server = ServerProcess(
        name="kamailio",
        process=process,
        info={"udp": udp_port, "tcp": tcp_port, "tls": tls_port},
        log_path=log_path,
        _log=log,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if _answers(udp_port):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("kamailio did not answer OPTIONS:\n" + log_path.read_text(errors="replace")[-3000:])


def _answers(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.3)
    try:
        probe.bind((LOOPBACK, 0))
        local = probe.getsockname()[1]
        probe.sendto(
            (
                f"OPTIONS sip:{LOOPBACK}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {LOOPBACK}:{local};branch=z9hG4bKbenchprobe\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:k@127.0.0.1>\r\n"
                "Call-ID: bench-probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            (LOOPBACK, port),
        )
        data = probe.recv(4096)
        return data.startswith(b"SIP/2.0 200")
    except OSError:
        return False
    finally:
        probe.close()
