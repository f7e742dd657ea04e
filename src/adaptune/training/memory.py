"""Process memory settings for training (``training.trim_memory``).

glibc's allocator serves most of a CPU training step's tensors from its heaps, and it keeps what they free:
memory at the top of a heap goes back to the OS only when more than ``M_TRIM_THRESHOLD`` is free there, and
blocks of at least ``M_MMAP_THRESHOLD`` get a mapping of their own that is unmapped when freed. Both thresholds
start at 128 KiB and grow with the largest block freed (up to 32/64 MiB), so after a few steps the
activations of a whole forward pass (many blocks of a few MiB) live in the heaps, the freed ones stay resident,
and the peak resident memory grows to the high-water mark of the heaps, fragmentation included, rather than
following the live tensors.

:func:`trim_freed_memory` fixes both thresholds (which also stops their growth): freed heap tops go back at once,
and blocks from ``mmap_threshold`` up are mapped and unmapped. It costs page faults when the memory is used
again. It is process-wide and stays set after training. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from typing import Any

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks from this size up get their own mapping (glibc's initial threshold is 128 KiB, then it grows).
MMAP_THRESHOLD = 256 * 1024


def _glibc() -> Any | None:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def trim_freed_memory(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Return freed memory to the OS as soon as it is freed (see the module); False where it cannot
    (not glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, 0) == 1
    mapped = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return bool(trimmed and mapped)
