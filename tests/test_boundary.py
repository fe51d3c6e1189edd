"""The sans-IO boundary: the protocol cores import no asyncio, sqlite3 or socket.

Each check runs in a fresh interpreter, since this test process has long since loaded the
asyncio side. The SIP core, the transaction layer, the CPIM and IMDN codecs, the IMDN tracker,
the registration client and digest authentication are sans-IO; ``import sipimdn`` keeps every
public name but imports the user agent (and its configuration, which needs ssl) only on first use.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import sipimdn

# Never loaded by any module below, nor by the package __init__s they run first.
FORBIDDEN = ("asyncio", "sqlite3", "socket", "ssl")

SANS_IO_MODULES = [
    # the SIP core
    "sipimdn._abnf",
    "sipimdn.errors",
    "sipimdn.uri",
    "sipimdn.headers",
    "sipimdn.message",
    "sipimdn.parser",
    # transactions and the request factory
    "sipimdn.dialog",
    "sipimdn.dialog.events",
    "sipimdn.dialog.factory",
    "sipimdn.dialog.layer",
    "sipimdn.dialog.transaction",
    "sipimdn.transport.flow",
    # message/cpim and IMDN
    "sipimdn.cpim",
    "sipimdn.cpim.build",
    "sipimdn.cpim.grammar",
    "sipimdn.cpim.message",
    "sipimdn.cpim.values",
    "sipimdn.imdn",
    "sipimdn.imdn.aggregation",
    "sipimdn.imdn.document",
    "sipimdn.imdn.headers",
    "sipimdn.imdn.message",
    "sipimdn.imdn.tracker",
    "sipimdn.store.base",
    "sipimdn.store.memory",
    "sipimdn.events",
    # registration and authentication
    "sipimdn.registration",
    "sipimdn.auth",
]


def loaded_after(statement: str) -> dict[str, bool]:
    """Which of FORBIDDEN (and lxml) a fresh interpreter holds after running ``statement``."""
    probe = (
        f"import sys\n{statement}\n"
        "import json\n"
        f"print(json.dumps({{name: name in sys.modules for name in {[*FORBIDDEN, 'lxml']!r}}}))\n"
    )
    command = [sys.executable, "-c", probe]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, bool] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", SANS_IO_MODULES)
def test_sans_io_module_imports_no_io(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert [name for name in FORBIDDEN if loaded[name]] == []


@pytest.mark.parametrize(
    "statement",
    [
        "from sipimdn import parse_message",
        "import sipimdn",
        "from sipimdn import Request, Response, Uri, Headers, StreamFramer, SipParseError",
    ],
)
def test_the_package_root_is_sans_io(statement: str) -> None:
    loaded = loaded_after(statement)
    assert [name for name in FORBIDDEN if loaded[name]] == []
    assert not loaded["lxml"]  # the IMDN codecs are not loaded for the SIP core either


def test_the_sip_core_loads_without_the_imdn_codecs() -> None:
    assert loaded_after("import sipimdn.uri") == dict.fromkeys([*FORBIDDEN, "lxml"], False)


def test_the_user_agent_loads_on_first_use() -> None:
    loaded = loaded_after("import sipimdn\nsipimdn.UserAgent")
    assert loaded["asyncio"] and loaded["sqlite3"]


@pytest.mark.parametrize("package", ["sipimdn", "sipimdn.transport", "sipimdn.store"])
def test_every_public_name_is_there(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert value is not None, name
        assert name in dir(module)
        # Cached: the second read is a plain attribute of the package.
        assert vars(module)[name] is value


def test_lazy_names_are_the_real_objects() -> None:
    from sipimdn.config import UserAgentConfig
    from sipimdn.store.sqlite import SqliteStore
    from sipimdn.transport.manager import TransportManager
    from sipimdn.ua import UserAgent

    assert sipimdn.UserAgent is UserAgent
    assert sipimdn.UserAgentConfig is UserAgentConfig
    assert importlib.import_module("sipimdn.store").SqliteStore is SqliteStore
    assert importlib.import_module("sipimdn.transport").TransportManager is TransportManager


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        sipimdn.NoSuchThing  # noqa: B018
    with pytest.raises(ImportError):
        exec("from sipimdn import NoSuchThing")
