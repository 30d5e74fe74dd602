"""allocator.retain_freed_memory, checked against glibc's own bookkeeping (mallinfo2) in a fresh interpreter each."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc only (elsewhere retain_freed_memory is a no-op)")

# Allocates and frees a 256 MiB block; prints whether retain applied and glibc's mmap / free-heap bytes around it.
PROBE = """
import ctypes, json, numpy as np
from HepatoblastomaSegLib.allocator import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = retain_freed_memory()
before = libc.mallinfo2()
block = np.ones(256 * 2**20, dtype=np.uint8)
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(json.dumps({"applied": applied, "mmapped_during": during.hblkhd - before.hblkhd,
                  "heap_free_after": after.fordblks}))
"""
BLOCK = 256 * 2**20


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_large_blocks_come_from_the_heap_and_stay_there_once_freed():
    result = probe()
    assert result["applied"] is True
    assert result["mmapped_during"] < BLOCK  # glibc would mmap a block this size; now the heap serves it
    assert result["heap_free_after"] >= BLOCK  # freed, but kept for the next allocation (not trimmed)


def test_without_the_call_glibc_maps_large_blocks_itself():
    # Control for the test above: the same probe with the user's own glibc setting, which retain must not override.
    result = probe(MALLOC_MMAP_MAX_="65536")
    assert result["applied"] is False
    assert result["mmapped_during"] >= BLOCK
    assert result["heap_free_after"] < BLOCK
