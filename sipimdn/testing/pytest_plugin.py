"""A pytest plugin giving the ``sipimdn_pair`` fixture: :func:`sipimdn.testing.ua_pair` per test.

Enable it in your top-level ``conftest.py`` (it needs pytest-asyncio, and works in its
``strict`` and ``auto`` modes)::

    pytest_plugins = ["sipimdn.testing.pytest_plugin"]

Then a test asks for the fixture; the user agents are closed after the test, whatever happens::

    @pytest.mark.asyncio
    async def test_hello(sipimdn_pair: UaPair) -> None:
        alice, bob = sipimdn_pair
        ...

Options go in a marker, as the arguments of :func:`~sipimdn.testing.ua_pair`::

    @pytest.mark.sipimdn_pair("tcp", bob={"handler_deadline": 0.5})

or come from indirect parametrization: a transport name, or a dict of arguments::

    @pytest.mark.parametrize("sipimdn_pair", ["udp", "tcp"], indirect=True)

The plugin is not registered as an entry point: having sipimdn installed changes nothing in
a test run that does not enable it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

try:
    import pytest_asyncio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sipimdn.testing.pytest_plugin needs pytest-asyncio: pip install pytest-asyncio",
        name="pytest_asyncio",
    ) from exc

from . import UaPair, ua_pair

__all__ = ["pytest_configure", "sipimdn_pair"]

_MARKER = "sipimdn_pair"


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``sipimdn_pair`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(transport='udp', **options): arguments of sipimdn.testing.ua_pair for the "
        f"{_MARKER} fixture",
    )


def _arguments(request: pytest.FixtureRequest) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    marker = request.node.get_closest_marker(_MARKER)
    if marker is not None:
        args = tuple(marker.args)
        kwargs.update(marker.kwargs)
    param = getattr(request, "param", None)
    if isinstance(param, str):
        args = (param,)
        kwargs.pop("transport", None)
    elif isinstance(param, Mapping):
        if "transport" in param:
            args = ()
        kwargs.update(param)
    elif param is not None:
        raise TypeError(f"{_MARKER}: parametrize it with a transport name or a dict of ua_pair "
                        f"arguments, not {param!r}")
    return args, kwargs


@pytest_asyncio.fixture
async def sipimdn_pair(request: pytest.FixtureRequest) -> AsyncIterator[UaPair]:
    """Two running user agents on loopback, ``(alice, bob)``; see :func:`sipimdn.testing.ua_pair`."""
    args, kwargs = _arguments(request)
    async with ua_pair(*args, **kwargs) as pair:
        yield pair
