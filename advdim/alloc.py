"""Keep freed memory in the process heap (glibc): large tensors stop costing page faults each step.

glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with a fresh
``mmap`` and returns it to the system on ``free``; the next allocation of the same size then
faults in and zeroes every page again.  A training step on 112 x 112 images (batch 64, 16
channels) allocates activations of about 50 MB, and on the 2-core development machine spent more
time in the kernel than in torch: 1090 ms per step (407 ms user, 588 ms system) against 190 ms
once freed blocks stay in the heap (``benchmarks``/``docs/performance-empirical.md``).

:func:`keep_freed_memory` raises the mmap and trim thresholds with ``mallopt``: the heap keeps
its peak size instead of returning memory between steps.  It is called by the ``advdim``
command, by sweep workers and by the training and simulation entry points; it does nothing off
glibc, and ``ADVDIM_MALLOC_TUNING=0`` switches it off.

    >>> keep_freed_memory() in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they were set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("ADVDIM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl without mallopt)
        return _done
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
    return _done
