"""The sans-IO boundary: the protocol cores import no asyncio, sqlite3 or socket.

Each check runs in a fresh interpreter, since this test process has long since loaded the
asyncio side. The SIP core, the transaction layer, the CPIM and IMDN codecs, the IMDN tracker,
the registration client and digest authentication are sans-IO; ``import sipimdn`` keeps every
public name but imports the user agent (and its configuration, which needs ssl) only on first use.
And layers use each other's public names: no module imports a private name of another subpackage.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

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
    "sipimdn.message._base",
    "sipimdn.message._request",
    "sipimdn.message._response",
    "sipimdn.message._rows",
    "sipimdn.parser",
    "sipimdn.trust",
    # transactions and the request factory
    "sipimdn.dialog",
    "sipimdn.dialog.events",
    "sipimdn.dialog.factory",
    "sipimdn.dialog.layer",
    "sipimdn.dialog.transaction",
    "sipimdn.transport.flow",
    "sipimdn.transport.locate",
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
    "sipimdn.imdn.tracker.dispatch",
    "sipimdn.store.base",
    "sipimdn.store.memory",
    "sipimdn.events",
    # is-composing (RFC 3994)
    "sipimdn.iscomposing",
    "sipimdn.iscomposing.codec",
    "sipimdn.iscomposing.state",
    # registration and authentication
    "sipimdn.registration",
    "sipimdn.auth",
    # the intermediary's cores (RFC 5438 §8)
    "sipimdn.intermediary",
    "sipimdn.intermediary.exploder",
    "sipimdn.intermediary.forward",
    "sipimdn.intermediary.registrar",
    "sipimdn.intermediary.rewrite",
    "sipimdn.intermediary.store",
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
    assert loaded["asyncio"]
    # The store it opens (SQLite or PostgreSQL, see open_store) is imported when it starts.
    assert not loaded["sqlite3"]


@pytest.mark.parametrize("package", ["sipimdn", "sipimdn.transport", "sipimdn.store", "sipimdn.intermediary"])
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
    from sipimdn.intermediary.service import Intermediary
    from sipimdn.store.sqlite import SqliteStore
    from sipimdn.transport.manager import TransportManager
    from sipimdn.ua import UserAgent

    assert sipimdn.UserAgent is UserAgent
    assert sipimdn.UserAgentConfig is UserAgentConfig
    assert importlib.import_module("sipimdn.store").SqliteStore is SqliteStore
    assert importlib.import_module("sipimdn.transport").TransportManager is TransportManager
    assert importlib.import_module("sipimdn.intermediary").Intermediary is Intermediary


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        sipimdn.NoSuchThing  # noqa: B018
    with pytest.raises(ImportError):
        exec("from sipimdn import NoSuchThing")


# -- layers use each other's public names -------------------------------------------------------

PACKAGE_ROOT = Path(sipimdn.__file__).parent


def _private_imports() -> list[str]:
    """``from X import _name`` (or from a ``_module``) outside the package that owns the name.

    A private name belongs to the package that defines it: ``sipimdn.cpim.message._header_lines``
    and ``sipimdn.cpim._grammar`` to ``sipimdn.cpim`` (only its modules may import them),
    ``sipimdn._abnf`` to ``sipimdn`` (any module of the project may).
    """
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        importer = parts[:-1]  # the package the importing module is in (for __init__, itself)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                module = [*importer[: len(importer) - node.level + 1], *(node.module or "").split(".")]
            else:
                module = (node.module or "").split(".")
            module = [part for part in module if part]
            if module[:1] != ["sipimdn"]:
                continue
            for alias in node.names:
                target = [*module, alias.name]
                private = next((i for i, part in enumerate(target) if _is_private(part)), None)
                if private is None:
                    continue
                owner = target[:private]
                if not _is_package(owner):
                    owner = owner[:-1]  # a private name in a module belongs to the module's package
                if importer[: len(owner)] != owner:
                    found.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno} {'.'.join(target)}")
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_package(dotted: list[str]) -> bool:
    return (PACKAGE_ROOT.parent.joinpath(*dotted) / "__init__.py").exists()


def test_no_layer_imports_another_packages_private_names() -> None:
    assert _private_imports() == []
