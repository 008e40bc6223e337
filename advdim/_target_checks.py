"""``advdim verify --target TARGET``: the checks that apply to a user's architecture, in the same report.

- **theory**: the law the theory gives the target (its predicted slopes and why there is none);
- **simulate**: the Monte Carlo at initialisation, judged against that law or, without one, against
  the paper's ``d^(1/q - 1/2)`` (an inconsistent row fails): a spec target (a family, member, spec
  text, ``file.py:NAME`` returning a spec) through :func:`advdim.simulate.study`, an ``nn.Module``
  factory (``file.py:NAME`` taking ``input_shape``; ``--input-shape`` gives its base shape) through
  :func:`advdim.measure.measure`: the same statistics either way;
- **empirical** (with ``--trained``): the dimension experiment on the target
  (:mod:`advdim.empirical._dimension`): init and trained slopes of ``E||d_x L||_1`` against
  ``sqrt(d)`` in words, reported (the theory backs no prediction after training).
"""

from __future__ import annotations

import math
from typing import Any

from advdim.checks import Budget, Check, Part, Scale
from advdim.errors import AdvdimError
from advdim.verdict import Verdict

#: per scale: input sides of a spec target, its units (weight draws) and inputs per unit
SPEC_PLAN = {Scale.TINY: ((8, 16), 8, 2), Scale.DEFAULT: ((8, 16, 32), 64, 4), Scale.PAPER: ((8, 16, 32, 64), 400, 8)}
#: per scale: size factors of a factory target, its draws and inputs per draw
FACTORY_PLAN = {Scale.TINY: ((1, 2), 4, 4), Scale.DEFAULT: ((1, 2, 4), 16, 16), Scale.PAPER: ((1, 2, 4, 8), 64, 32)}


def _factory(target: str) -> Any:
    from advdim.empirical._models import _factory as find

    return find(target)


def _sides(target: Any, wanted: tuple[int, ...]) -> tuple[int, ...]:
    """The sides of ``wanted`` at which the target is valid (a fixed spec: its own side only)."""
    valid = tuple(s for s in wanted if s in set(target.valid_sizes(wanted)))
    if len(valid) < 2:
        raise AdvdimError(f"{target.text} is valid at sides {list(valid)} of {list(wanted)} only: a slope needs two")
    return valid


def _theory(target: str, input_shape: tuple[int, int, int] | None) -> Check:
    def run(budget: Budget) -> list[Verdict]:
        from advdim.arch import resolve_target
        from advdim.theory import predict

        if _factory(target) is not None:
            return [Verdict(f"{target}: the law of the traced module", "Thm 4-5, Cor 6", None, None, None, None,
                            "an nn.Module factory: its law is predicted on the traced specs in the simulate part "
                            "(advdim measure); see that part's rows")]
        arch = resolve_target(target)
        sides = _sides(arch, SPEC_PLAN[budget.scale][0])
        pred = predict(arch, sides, symmetry=False)
        if not pred.has_law:
            return [Verdict(f"{target}: a law for E||d_x f||_q", "Thm 4-5, Cor 6", None, None, None, None,
                            f"no law: {pred.reasons.get('law', 'the theory gives none')}")]
        return [Verdict(f"{target}: predicted slope of E||d_x f||_{q} in d", "Thm 4-5, Cor 6", slope, None, None,
                        None, f"finite-d law over sides {list(sides)}; hypotheses {dict(pred.hypotheses)}")
                for q, slope in pred.predicted_slope.items() if slope is not None]

    return Check(f"theory-target:{target}", Part.THEORY, run)


def _simulate(target: str, input_shape: tuple[int, int, int] | None) -> Check:
    def run(budget: Budget) -> list[Verdict]:
        factory = _factory(target)
        if factory is not None:
            import torch

            from advdim.build import resolve_device
            from advdim.measure import MeasureConfig, measure

            if input_shape is None:
                raise AdvdimError(f"{target} builds an nn.Module: give its base --input-shape C,H,W")
            factors, draws, inputs = FACTORY_PLAN[budget.scale]
            cfg = MeasureConfig(input_shape, factors, (1.0, 2.0, math.inf), inputs, budget.seed, draws=draws, steps=3)
            torch.manual_seed(budget.seed)
            got = measure(factory, cfg, resolve_device(budget.device), target, progress=False)
            return [v for v in got.verdicts if "vulnerability" not in v.claim]
        from advdim.arch import resolve_target
        from advdim.simulate import study

        arch = resolve_target(target)
        sides, nets, inputs = SPEC_PLAN[budget.scale]
        res = study(arch, _sides(arch, sides), None, nets, inputs, budget.seed, budget.device,
                    plant_exponent=budget.plant_exponent, draws=1, workers=budget.workers,
                    scheduler=budget.scheduler, progress=False)
        return res.verdicts(consistency_fails=True)

    return Check(f"simulate-target:{target}", Part.SIMULATE, run)


def _trained(target: str) -> Check:
    def run(budget: Budget) -> list[Verdict]:
        from pathlib import Path

        from advdim.empirical._experiments import run_experiment

        out = Path(budget.out_dir or ".").parent / "dimension"
        summary = run_experiment("dimension", "small", out, workers=budget.workers, progress=False, arch=target)
        verdicts = []
        for line in summary["trends"]:
            if "at init" in line:
                verdicts.append(Verdict(f"{target}: E||d_x L||_1 against sqrt(d), init vs trained", "Section 4.2",
                                        None, None, None, None, f"reported: {line}",
                                        {"plots": [p for p in summary["plots"] if p.endswith(".png")]}))
        return verdicts

    return Check(f"empirical-dimension-target:{target}", Part.EMPIRICAL, run)


def target_checks(target: str, input_shape: tuple[int, int, int] | None = None, trained: bool = False
                  ) -> list[Check]:
    """The checks of ``verify --target`` (theory, simulate, and empirical with ``trained``)."""
    checks = [_theory(target, input_shape), _simulate(target, input_shape)]
    return checks + ([_trained(target)] if trained else [])


def check_target(target: str, input_shape: tuple[int, int, int] | None) -> None:
    """Resolve the target before any work (one line when it cannot be)."""
    if _factory(target) is not None:
        if input_shape is None:
            raise AdvdimError(f"{target} builds an nn.Module: give its base --input-shape C,H,W")
        return
    from advdim.arch import resolve_target

    resolve_target(target)
