"""Units of a user's module factory: seeded weight draws of ``factory(input_shape=...)``.

A factory target is measured like any fixed spec (``advdim.simulate._study``): its units are
independent weight draws, one *cell* is one draw at one size, and the per-unit records go to the
same analysis (:func:`advdim.simulate._study.analyse`) and statistics (:mod:`advdim.stats`).
Unit ``u`` at size factor ``k`` is ``factory(input_shape=(C, kH, kW))`` built after
``torch.manual_seed(seed + u)`` (the factory's own initialisation draws from torch's global
generator), on its own ``inputs`` i.i.d. ``N(0, 1)`` inputs and uniform random labels.

The cell key names the factory by its canonical text and the hash of its source file, so a
resumed run never mixes two versions of a user's file.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KIND = FACTORY_KIND = "measure.cell"


def q_key(q: float) -> str:
    """The record key of a norm order: ``"1"``, ``"2"``, ``"inf"``, ``"1.5"``."""
    return "inf" if math.isinf(q) else f"{q:g}"


def source_hash(factory: Callable[..., Any]) -> str:
    """SHA-256 (16 hex digits) of the file that defines ``factory`` (its own source when there is no file)."""
    try:
        path = inspect.getsourcefile(factory)
        data = Path(path).read_bytes() if path else inspect.getsource(factory).encode()
    except (OSError, TypeError):
        data = repr(factory).encode()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class FactoryPlan:
    """What every cell of one factory study shares (its store key, less unit and size)."""

    target: str  # canonical text: MODULE:NAME or an absolute path.py:NAME
    source: str  # source_hash of the factory's file
    input_shape: tuple[int, int, int]
    qs: tuple[float, ...]
    inputs: int
    seed: int
    eps: float
    steps: int
    device: str

    def config(self, unit: int, factor: int) -> dict[str, Any]:
        c, h, w = self.input_shape
        return {"factory": self.target, "source": self.source, "shape": [c, h * factor, w * factor],
                "factor": factor, "unit": unit, "inputs": self.inputs, "seed": self.seed,
                "q": [q_key(q) for q in self.qs], "eps": self.eps, "steps": self.steps, "device": self.device}


#: factories handed over as objects (the in-process API): canonical text -> callable
REGISTERED: dict[str, Callable[..., Any]] = {}


def register_factory(text: str, factory: Callable[..., Any]) -> None:
    """Make ``factory`` the one cells named ``text`` call in this process (without importing it again)."""
    REGISTERED[text] = factory


@functools.lru_cache(maxsize=8)
def _loaded(text: str) -> Callable[..., Any]:
    from advdim.arch import load_object

    return load_object(text)


def _factory(text: str) -> Callable[..., Any]:
    return REGISTERED[text] if text in REGISTERED else _loaded(text)


def draw_model(factory: Callable[..., Any], shape: Sequence[int], seed: int, unit: int, device: Any) -> Any:
    """Unit ``unit``'s model for ``shape``: ``factory(input_shape=shape)`` after ``torch.manual_seed(seed + unit)``."""
    import torch

    from advdim.models import make_model

    torch.manual_seed(seed + unit)
    return make_model(factory, (int(shape[0]), int(shape[1]), int(shape[2]))).to(device)


def fingerprint(model: Any) -> list[float]:
    """Sum and sum of squares of every parameter (tells repeated weight draws apart)."""
    out: list[float] = []
    for p in model.parameters():
        v = p.detach().double()
        out += [float(v.sum()), float(v.square().sum())]
    return out


def run_factory_cell(config: dict[str, Any]) -> dict[str, Any]:
    """Sweep cell function: one unit (weight draw) of a factory at one size (module level: picklable).

    Returns ``d``, the number of inputs ``n``, per target (``logit``: ``f_0``; ``loss``: cross-entropy
    with uniform random labels) the mean over inputs of ``||g||_q`` per q key and of ``||g||_2^2``
    (``sq2``), the labels an ``l_inf`` PGD attack changed (``changed``) and the weights' fingerprint.
    """
    import torch

    from advdim.gradients import Target, input_gradient, lp_norm
    from advdim.models import check_batch, check_gradient, vulnerability

    factory = _factory(str(config["factory"]))
    device = torch.device(str(config["device"]))
    shape = [int(v) for v in config["shape"]]
    unit, n = int(config["unit"]), int(config["inputs"])
    model = draw_model(factory, shape, int(config["seed"]), unit, device)
    p0 = next(iter(model.parameters()), None)
    dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
    ss = np.random.SeedSequence([int(config["seed"]), unit, int(config["factor"]), 0xFAC7])
    gen = torch.Generator().manual_seed(int(ss.generate_state(1)[0]))
    x = torch.randn(n, *shape, generator=gen, dtype=torch.float64).to(device, dtype)
    where = f"d = {math.prod(shape)} (factor {config['factor']}, draw {unit})"
    logits = check_batch(model, x, where)
    labels = torch.randint(0, logits.shape[1], (n,), generator=gen).to(device)
    out: dict[str, Any] = {"d": math.prod(shape), "n": n, "fingerprint": fingerprint(model)}
    for target in (Target.LOGIT, Target.LOSS):
        g = input_gradient(model, x, target, 0, labels if target is Target.LOSS else None)

        check_gradient(g, target, where)
        g = g.double()
        rec = {key: float(lp_norm(g, key).mean()) for key in config["q"]}
        rec["sq2"] = float(g.reshape(n, -1).square().sum(dim=1).mean())
        out[target.value] = rec
    out["changed"] = vulnerability(model, x, float(config["eps"]), int(config["steps"]), logits.argmax(dim=1))[0]
    return out
