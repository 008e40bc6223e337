"""advdim.alloc: glibc keeps freed memory in the heap, so training steps on large images stop faulting."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import resource, sys, torch
from advdim.alloc import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, stride=2),
                          torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10))
x, y = torch.randn(64, 1, 112, 112), torch.randint(0, 10, (64,))
def step():
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
step()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    res = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True,
                         env={"ADVDIM_MALLOC_TUNING": "1", "PATH": ""})
    return int(res.stdout.strip())


def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in() -> None:
    # Each step allocates activations of 64 x 16 x 112 x 112 floats (51 MB, above glibc's largest
    # default mmap threshold of 32 MiB): without the tuning each is mapped and faulted in again
    # (12544 pages of 4 KiB per tensor); with it they come back from the heap.
    off, on = _faults("off"), _faults("on")
    assert off > 3 * 12544, off
    assert on < off / 10, (on, off)
