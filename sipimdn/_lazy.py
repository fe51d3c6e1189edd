"""Names a package re-exports from submodules it imports only when first used (PEP 562).

The sans-IO cores must import without asyncio, sqlite3 or socket, yet ``sipimdn`` and some
subpackages also re-export asyncio adapters (the user agent, the transport manager, the SQLite
store). Such a package lists those names in a table ``{name: submodule}`` and defines::

    if not TYPE_CHECKING:

        def __getattr__(name: str) -> object:
            return _lazy.load(__name__, globals(), LAZY, name)

    def __dir__() -> list[str]:
        return _lazy.names(globals(), LAZY)

with the same names imported under ``if TYPE_CHECKING:`` so type checkers and IDEs see them.
``__getattr__`` is hidden from type checkers: were it seen, any misspelt name would type-check.
The first access imports the submodule and caches the value in the package's namespace, so
later accesses are plain attribute reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping

__all__ = ["load", "names"]


def load(package: str, namespace: MutableMapping[str, object], table: Mapping[str, str], name: str) -> object:
    """The value of ``name`` from the submodule ``table`` maps it to, cached in ``namespace``.

    Raises AttributeError (as a missing module attribute does) for a name not in ``table``.
    """
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, package), name)
    namespace[name] = value
    return value


def names(namespace: Mapping[str, object], table: Mapping[str, str]) -> list[str]:
    """What ``dir(package)`` lists: the names already bound and the lazy ones."""
    return sorted({*namespace, *table})
