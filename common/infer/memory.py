"""Keep a long streaming process's memory flat.

The per-image arrays of a prediction loop (maps of a few hundred KiB, PNG buffers, tensors) are
freed and reallocated thousands of times; glibc keeps the freed pages inside its heaps, which
fragment, so RSS climbs for the first few hundred images. ``trim_heap`` hands free heap pages
back to the system (``malloc_trim``). Measured on the test-inference benchmark: peak RSS for
1,000 images is 1.12x that for 100 without it, 1.00x with a trim every 64 images, at no
measurable cost in speed. (Lowering glibc's mmap threshold instead also flattens RSS, but halves
the model's speed: every activation buffer then becomes a fresh mapping.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache


@cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def trim_heap() -> bool:
    """Return free heap memory to the system where the C library can; whether it could."""
    trim = _malloc_trim()
    return bool(trim is not None and trim(0) >= 0)
