"""The network a training run trains: whatever a user names, built at the run's input size.

Every target :func:`advdim.arch.resolve_target` takes (a family with its defaults, a member, spec
text, a user family ``file.py:NAME`` / ``module:NAME`` returning a spec) is built by
:func:`advdim.build.build` with the run's init and seed; an ``nn.Module`` factory with an
``input_shape`` parameter (the one ``advdim measure`` takes) is called with ``(C, size, size)``
after ``torch.manual_seed(seed)`` and keeps its own initialisation.  A target read from the user's
code carries the hash of its source file (:func:`arch_source`), which the run's store key holds, so a
resumed run never mixes two versions of the file.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advdim.arch import Conv, Spec, load_object, resolve, resolve_target
from advdim.build import Init, build
from advdim.errors import AdvdimError

_SOURCE_RE = re.compile(r"^[^:>()]+:[A-Za-z_][A-Za-z0-9_]*$")


def from_user_code(arch: str) -> bool:
    """Whether ``arch`` names an object in the user's code (``file.py:NAME`` or ``module:NAME``)."""
    return bool(_SOURCE_RE.match(arch.strip()))


@functools.lru_cache(maxsize=32)
def arch_source(arch: str) -> str | None:
    """SHA-256 (16 hex digits) of the source file behind a user's target; None for built-in text."""
    if not from_user_code(arch):
        return None
    from advdim.simulate import source_hash

    return str(source_hash(load_object(arch.strip())))


@dataclass(frozen=True)
class Built:
    """A model to train and what is known of it: its spec (None for a factory's module)."""

    model: nn.Module
    spec: Spec | None
    n_classes: int


def _factory(arch: str) -> Any:
    """The user's ``nn.Module`` factory named by ``arch``, or None when ``arch`` names a spec rule."""
    if not from_user_code(arch):
        return None
    from advdim.models import takes_input_shape

    obj = load_object(arch.strip())
    return obj if callable(obj) and takes_input_shape(obj) else None


def build_model(arch: str, size: int, channels: int, init: Init, seed: int, device: torch.device,
                batchnorm: bool = False, with_batchnorm: Any = None) -> Built:
    """The network ``arch`` at input ``(channels, size, size)`` (see the module docstring).

    Args:
        batchnorm, with_batchnorm: insert a batch norm after every conv (``with_batchnorm(spec)``);
            a factory's module has no spec to insert it into (refused).
    """
    factory = _factory(arch)
    if factory is not None:
        if batchnorm:
            raise AdvdimError(f"--batchnorm inserts layers into a spec; {arch} builds its own module")
        if init is not Init.HE:
            raise AdvdimError(f"--init applies to specs; {arch} initialises its own weights")
        from advdim.models import check_batch, make_model

        torch.manual_seed(seed)  # the factory's own init draws from torch's global generator
        model = make_model(factory, (channels, size, size)).to(device)
        x = torch.zeros(1, channels, size, size, device=device, dtype=next(model.parameters()).dtype)
        logits = check_batch(model, x, f"{arch} at input {channels}x{size}x{size}")
        return Built(model, None, int(logits.shape[1]))
    if from_user_code(arch):
        spec = resolve_target(arch.strip()).spec(size, channels)
    else:
        spec = resolve(arch, size, channels)
    if batchnorm:
        if not any(isinstance(layer, Conv) for layer in spec.layers):
            raise AdvdimError(f"batchnorm puts a batch norm after every conv, but {arch} has no conv")
        spec = with_batchnorm(spec)
    return Built(build(spec, init, seed=seed, device=device), spec, spec.n_classes)
