"""Command-line values checked once, before any work: input sizes, output folders and the memory a
run needs.  A bad value is an :class:`~advdim.errors.AdvdimError` with a one-line message.

This module imports nothing heavy (no torch, numpy or SymPy): ``advdim --help`` and
``advdim theory`` load it.

    >>> parse_sizes("16,8,32")
    (8, 16, 32)
    >>> parse_sizes("8,8")
    Traceback (most recent call last):
    ...
    advdim.errors.AdvdimError: --sizes lists 8 twice ('8,8'): give each size once
    >>> size_text(720 * 10**9), size_text(1.5 * 10**9), size_text(2 * 10**14)
    ('720 GB', '1.5 GB', '200,000 GB')
"""

from __future__ import annotations

import os
from pathlib import Path

from advdim.errors import AdvdimError

__all__ = ["available_memory", "check_fits", "check_out_folder", "make_out_folder", "parse_sizes", "size_text"]


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------
def parse_sizes(text: str, option: str = "--sizes") -> tuple[int, ...]:
    """``"16,8,32"`` -> ``(8, 16, 32)``: positive integers separated by commas, each once, sorted.

    Empty entries (``"8,16,"``) are skipped; an empty list, a non-integer, a value below 1 or a
    repeated value is refused.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise AdvdimError(f"{option} is empty: give positive integers separated by commas, e.g. 8,16,32")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise AdvdimError(f"{option} must be positive integers separated by commas, got {text!r}") from None
    bad = [v for v in values if v < 1]
    if bad:
        raise AdvdimError(f"{option} must be positive integers separated by commas, got {text!r} "
                          f"({bad[0]} is not positive)")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise AdvdimError(f"{option} lists {twice} twice ({text!r}): give each size once")
    return tuple(sorted(values))


# ---------------------------------------------------------------------------------------------
# Output folders
# ---------------------------------------------------------------------------------------------
def check_out_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be the output folder; creates nothing.

    It must be an existing folder, or a path whose nearest existing parent is a folder this
    process may write in.
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise AdvdimError(f"{option} {str(path)!r} exists and is not a folder: give a new or an existing folder")
        return p
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise AdvdimError(f"{option} {str(path)!r} cannot be created: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AdvdimError(f"{option} {str(path)!r} cannot be created: no permission to write in {str(parent)!r}")
    return p


def make_out_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents) once the work is done: the checks of
    :func:`check_out_folder`, then ``mkdir``."""
    p = check_out_folder(path, option)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AdvdimError(f"cannot create the {option} folder {str(path)!r}: {e.strerror}") from None
    return p


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
_NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """What the process's memory cgroup (v2, else v1) still allows; None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read_int(limit_file)
        if limit is not None and limit < _NO_LIMIT:
            return max(0, limit - (_read_int(usage_file) or 0))
    return None


def available_memory(device: str = "cpu") -> tuple[int, str]:
    """Bytes a computation on ``device`` may still use, and where they are, in words.

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (the physical memory elsewhere), capped by the
    memory cgroup's remaining room; CUDA: the free memory ``torch.cuda.mem_get_info`` reports.
    """
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), "the GPU has"
    have = _meminfo_available()
    if have is None:
        try:
            have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            have = _NO_LIMIT
    room = _cgroup_room()
    if room is not None:
        have = min(have, room)
    return int(have), "this machine has"


def size_text(n_bytes: float) -> str:
    """Bytes in GB (MB below 1 GB): two significant digits below 10, whole numbers above."""
    value, unit = (n_bytes / 1e9, "GB") if n_bytes >= 1e9 else (n_bytes / 1e6, "MB")
    return f"{value:.2g} {unit}" if value < 10 else f"{value:,.0f} {unit}"


#: added to every estimate on a CUDA device: cuDNN's work areas, which do not grow with the batch
#: (up to 0.7 GB above the counted tensors for one 5 x 5 convolution of 32 channels, on an H200)
CUDA_WORKSPACE = 2 * 10**9


def check_fits(need: float, what: str, device: str = "cpu", advice: str = "use smaller --sizes") -> None:
    """Refuse, before any work, a computation estimated to need ``need`` bytes on ``device``
    (plus :data:`CUDA_WORKSPACE` on a GPU).

    The message reads ``"<what> needs about 720 GB (estimate) and this machine has 23 GB available:
    use smaller --sizes"``.
    """
    have, where = available_memory(device)
    if str(device).startswith("cuda"):
        need += CUDA_WORKSPACE
    if need > have:
        raise AdvdimError(f"{what} needs about {size_text(need)} (estimate) and {where} {size_text(have)} "
                          f"available: {advice}")
