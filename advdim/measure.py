"""``advdim measure``: how the input gradients and the vulnerability of *your* model scale with
the input dimension, judged against the theory's prediction for that model where there is one.

The model comes from a factory (``MODULE:FACTORY``, where ``MODULE`` is an importable module or a
``.py`` file): a callable returning an ``nn.Module`` that maps ``(B, C, H, W)`` images to
``(B, K)`` logits.  There are two settings, chosen by the factory's signature:

- **per-size draws** (the factory takes ``input_shape``; the paper's setting): the factory is a
  target of the same study as ``advdim simulate``.  Its units are seeded weight draws
  (``factory(input_shape=(C, kH, kW))`` after ``torch.manual_seed(seed + draw)``), each on its own
  i.i.d. ``N(0, 1)`` inputs; the cells run through :func:`advdim.sweep.run_sweep` (progress bar,
  run store, ``--resume``, local workers), keyed by the factory's canonical text and the hash of
  its source file; the per-draw records go to the same analysis (:func:`advdim.simulate.analyse`)
  and statistics (:mod:`advdim.stats`): slopes over draws with ``t`` critical values on the
  effective number of draws, power, the prefactor ratio, q = inf judged where the theory's law is
  checked.  When the model is traced into a spec at every size (:mod:`advdim.trace`) and its
  initialisation recognised, the rows are **judged** against ``advdim.theory.predict`` on those
  specs; otherwise each row says whether the measured exponent is consistent with the paper's
  ``d^(1/q - 1/2)`` (a user's model is held to the paper's claim for almost any network: an
  inconsistent row fails, exit 1), or that the budget cannot tell.
- **up-sampled inputs** (the factory takes no argument, e.g. a trained model): one model, fed
  Gaussian images of the base shape up-sampled by pixel copy (each pixel a ``k x k`` block, as the
  paper's Section 4.2 up-samples CIFAR-10); the units are the inputs (the question is about this
  one model).  Pixel copies are perfectly correlated inputs, not the i.i.d. inputs of the per-size
  law: no prediction is shown, every row is reported.

Both settings also estimate the adversarial vulnerability (Definition 1): the share of inputs
whose predicted label changes under an ``l_inf`` PGD attack of size ``eps`` (reported).  A model
that accepts only one input size is measured at that size only (no slope).

    >>> import torch
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> upsample(x, 2)[0, 0]
    tensor([[0., 0., 1., 1.],
            [0., 0., 1., 1.],
            [2., 2., 3., 3.],
            [2., 2., 3., 3.]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from advdim.models import (
    make_model,
    takes_input_shape,
)
from advdim.trace import Traced

if TYPE_CHECKING:
    from advdim.simulate import FamilyResult
    from advdim.store import RunStore

from advdim._measure_base import (  # noqa: E402 - the public names of advdim.measure
    UPSAMPLED_REASON,
    MeasureConfig,
    Measured,
    Sample,
    Setting,
    Theory,
    parse_ints,
    parse_qs,
    parse_shape,
    per_size_verdicts,
    q_text,
    vulnerability_verdicts,
)
from advdim._measure_per_size import (  # noqa: E402
    analyse_per_size,
    canonical_factory,
    prepass,
    sample_per_size,
    theory_per_size,
)
from advdim._measure_upsampled import (  # noqa: E402
    sample_upsampled,
    theory_upsampled,
    upsample,
    upsampled_verdicts,
)

__all__ = ["UPSAMPLED_REASON", "MeasureConfig", "Measured", "Sample", "Setting", "Theory", "analyse_per_size",
           "canonical_factory", "measure", "parse_ints", "parse_qs", "parse_shape", "per_size_verdicts", "prepass",
           "q_text", "sample_per_size", "sample_upsampled", "theory_per_size", "theory_upsampled", "upsample",
           "upsampled_verdicts", "vulnerability_verdicts"]


def measure(factory: Callable[..., Any], cfg: MeasureConfig, device: torch.device, name: str = "model",
            store: RunStore | None = None, workers: int = 0, resume: bool = True, progress: bool = False
            ) -> Measured:
    """Measure the model(s) of ``factory`` in the setting its signature calls for (module docstring).

    Args:
        factory: ``() -> nn.Module`` (up-sampled inputs) or ``(input_shape=(C, H, W)) -> nn.Module``
            (a new model per size and draw: the units of a study).
        cfg: sizes, norms, inputs, draws, attack, seed.
        device: where the models run.
        name: the model's name (``MODULE:FACTORY``): the rows' claims and the cells' store key.
        store, workers, resume, progress: the sweep of the per-size cells (:func:`advdim.sweep.run_sweep`).
    Returns:
        The verdict rows (slopes and prefactor, then vulnerability), notes, the sample and the theory's side.
    """
    setting = Setting.PER_SIZE if takes_input_shape(factory) else Setting.UPSAMPLED
    cfg.check(setting)
    results: dict[str, FamilyResult] = {}
    if setting is Setting.PER_SIZE:
        info = prepass(factory, cfg, device)
        theory = theory_per_size(name, cfg, info.factors, info)
        sample = sample_per_size(factory, name, cfg, device, info, store, workers, resume, progress)
        if len(sample.ds) >= 2:
            results = analyse_per_size(name, sample, theory, cfg)
        verdicts = per_size_verdicts(sample, results, independent=not info.same_weights)
        head = (f"setting: per-size draws: a new model for every size and draw (factory(input_shape=(C, kH, kW)) "
                f"after torch.manual_seed({cfg.seed} + draw)), each on its own i.i.d. N(0, 1) inputs; the draws are "
                "the independent units of the study")
    else:
        model = make_model(factory)
        sample = sample_upsampled(model, cfg, device)
        theory = theory_upsampled(model, cfg)
        verdicts = upsampled_verdicts(sample, cfg)
        head = ("setting: up-sampled inputs: one model (the factory takes no input_shape), Gaussian inputs up-sampled "
                "by pixel copy; the inputs are the units (--draws applies only to factories that take input_shape)")
    base = next(iter(theory.traces.values()), None)  # the smallest size's trace
    judged = theory.reason is None
    notes = [head,
             f"trace: {base.spec.to_text()}" if isinstance(base, Traced) else
             f"trace: none ({base.reason if base is not None else 'not attempted'})",
             f"initialisation: {theory.init.reason if theory.init is not None else 'not examined (no trace)'}",
             "slope rows judged against the theory's prediction for this model" if judged
             else f"no path-sum prediction: {theory.reason}; each slope row says whether its exponent is consistent "
                  f"with the law {theory.token_law.name()} (docs/theory.md; never a FAIL: the law is asymptotic)"
             if theory.token_law is not None
             else f"no prediction: {theory.reason}" + ("; each slope row says whether it is consistent with the "
                                                       "paper's d^(1/q - 1/2) (inconsistent: FAIL)"
                                                       if setting is Setting.PER_SIZE else ""),
             *theory.notes, *sample.notes,
             f"vulnerability attack: {sample.attack}, eps = {cfg.eps:g} (input units), {cfg.steps} steps"]
    verdicts += vulnerability_verdicts(sample, cfg)
    return Measured(setting, verdicts, notes, sample, theory, results)
