"""training.trim_memory: freed memory goes back to the OS at once (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

#: Run in a fresh process (the allocator settings are process-wide): free half of 200 blocks of 1 MiB after
#: glibc's thresholds have grown past 1 MiB, print how many MB left the resident set.
FREE_HALF = """
import sys, torch
from adaptune.training.memory import trim_freed_memory
def resident(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "trim":
    assert trim_freed_memory()
grown = torch.ones(4 * 1024 * 1024); del grown  # a freed 16 MiB block raises glibc's dynamic thresholds
blocks = [torch.ones(256 * 1024) for _ in range(200)]
before = resident()
del blocks[::2]
print(round(before - resident()))
"""


def released_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FREE_HALF, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt exists only in glibc")
def test_freed_blocks_leave_the_resident_set() -> None:
    assert released_mb("default") < 20, "glibc keeps freed heap blocks resident by default"
    assert released_mb("trim") > 90, "with trim_freed_memory the 100 freed MiB go back to the OS"
