"""Peak memory of a block as the kernel counts it, libxml2's allocations included.

``tracemalloc`` sees only Python's allocator: a 100 MB lxml tree shows a peak of a few hundred
bytes. ``ru_maxrss`` is the peak of the whole process so far: once an earlier test peaked
higher, it reads 0 growth. This resets the process's peak resident set size (Linux
``/proc/self/clear_refs``, value 5) and reads ``VmHWM`` after the block, so what any allocator
touched inside the block shows. Freed heap is given back first (``malloc_trim``), so a block
cannot hide its allocations in memory an earlier test left resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _peers import skip_unless_ci

__all__ = ["PeakRss", "peak_rss"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PeakRss:
    """Growth of the peak resident set size over a block, in bytes."""

    growth: int = 0


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB$", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise AssertionError(f"no {field} in {_STATUS}")
    return int(match.group(1))


def _give_back_free_heap() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is not None:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):  # glibc
            libc.malloc_trim(0)


def _reset_peak() -> None:
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
    except OSError as exc:
        skip_unless_ci(f"cannot reset the peak RSS ({_CLEAR_REFS}: {exc})")


@contextmanager
def peak_rss() -> Iterator[PeakRss]:
    """Measure how far the resident set size peaked above its level at the start of the block."""
    result = PeakRss()
    _give_back_free_heap()
    _reset_peak()
    start = _status_kib("VmRSS")
    try:
        yield result
    finally:
        result.growth = max(0, _status_kib("VmHWM") - start) * 1024
