"""The registry of end-to-end checks that ``advdim verify`` runs.

Each layer registers its checks with :func:`register`; a check is a function of a
:class:`Budget` that returns :class:`~advdim.verdict.Verdict` records.  ``verify`` runs them,
prints one table and fails when any verdict fails.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from advdim.verdict import Verdict


class Part(enum.Enum):
    CORE = "core"
    THEORY = "theory"
    SIMULATE = "simulate"
    EMPIRICAL = "empirical"


class Scale(enum.Enum):
    TINY = "tiny"  # the test suite's budget
    DEFAULT = "default"  # a 2-core CPU in minutes
    PAPER = "paper"  # a GPU or a cluster


@dataclass(frozen=True)
class Budget:
    """What a check may spend, and where it may write.

    Attributes:
        scale: the size of the study (``TINY`` for the test suite).
        seed: seed of every random draw.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        plant_exponent: a deliberate error for the planted-false-claim test: checks that measure
            gradient norms multiply them by ``d ** plant_exponent`` (0 = no error; any other value
            must make the slope verdicts fail).
        out_dir: a folder where a check may write its own plot files (``None``: write none); the
            paths go into ``Verdict.extra["plots"]`` and the report embeds them.
        workers, scheduler: the executor of the checks' sweeps (:func:`advdim.sweep.run_sweep`):
            local worker processes, or the address of a Dask ``distributed`` scheduler.
    """

    scale: Scale = Scale.DEFAULT
    seed: int = 0
    device: str = "auto"
    plant_exponent: float = 0.0
    out_dir: str | None = None
    workers: int = 0
    scheduler: str | None = None


@dataclass(frozen=True)
class Check:
    name: str
    part: Part
    run: Callable[[Budget], list[Verdict]]


_REGISTRY: dict[str, Check] = {}
_MODULES = ("advdim._core_checks", "advdim.theory._checks", "advdim.simulate._checks",
            "advdim.empirical._checks")


def register(name: str, part: Part) -> Callable[[Callable[[Budget], list[Verdict]]], Callable[[Budget], list[Verdict]]]:
    """Decorator: register a check under ``name`` in ``part``."""

    def deco(fn: Callable[[Budget], list[Verdict]]) -> Callable[[Budget], list[Verdict]]:
        _REGISTRY[name] = Check(name, part, fn)
        return fn

    return deco


def all_checks() -> list[Check]:
    """Every registered check (importing the layers' check modules that exist)."""
    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    return list(_REGISTRY.values())
