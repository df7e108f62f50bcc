import subprocess
import sys

import pytest

# Allocate, touch and free a 40 MiB block ten times, as a training loop does with its batches,
# and count the page faults that costs.
PROBE = """
import ctypes, resource, sys
from landmark_core.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 40 << 20
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_allocator_reuses_freed_blocks_instead_of_faulting_in_fresh_pages():
    applied, tuned = _page_faults("tuned")
    _, default = _page_faults("default")
    assert applied
    assert default > 50_000  # glibc maps each 40 MiB block afresh: ~10,240 zero-filled pages every time
    assert tuned < 1_000  # the freed block is reused, already paged in

