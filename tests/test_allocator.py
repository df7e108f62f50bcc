import subprocess
import sys

import pytest

# Allocate, touch and free a 40 MiB block ten times, as a training loop does with its batches,
# and count the page faults that costs.
PROBE = """
import ctypes, resource, sys
from landmark_core.core.allocator import keep_freed_memory
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



# Ten 40 MiB blocks live at once, then freed (a run's batches and activations); resident MiB after the frees, and
# after the kept memory is released.
RELEASE_PROBE = """
import ctypes, os
from landmark_core.core.allocator import keep_freed_memory, release_freed_memory
assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
size = 40 << 20
blocks = [libc.malloc(size) for _ in range(10)]
for block in blocks:
    ctypes.memset(block, 1, size)
for block in blocks:
    libc.free(block)
kept = resident()
print(release_freed_memory(), kept, resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_memory_a_run_kept_for_reuse_goes_back_to_the_os_when_released():
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, check=True).stdout.split()
    released, kept, after = out[0] == "True", int(out[1]), int(out[2])
    assert kept > 350  # the thresholds keep the 400 MiB freed
    assert released
    assert after < kept - 350
