"""``advdim measure``'s up-sampled setting: one fixed model, Gaussian inputs up-sampled by pixel copy
(see :mod:`advdim.measure`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from advdim.errors import AdvdimError
from advdim.gradients import Target, input_gradient, lp_norm
from advdim.models import (
    Probe,
    check_batch,
    check_gradient,
    check_size_fits,
    first_line,
    probe,
    vulnerability,
)
from advdim.stats import ALPHA, critical, fit_slope
from advdim.trace import InitStats, Traced, trace_module
from advdim.verdict import Verdict

if TYPE_CHECKING:
    pass

from advdim._measure_base import (
    _NAMES,
    UPSAMPLED_REASON,
    MeasureConfig,
    Sample,
    Setting,
    Theory,
    _dtype,
    _one_size_row,
    _series,
    q_text,
)


# ---------------------------------------------------------------------------------------------
# Probing a model (does it take this size? does the size fit in memory?)
# ---------------------------------------------------------------------------------------------
def probe_factors(model: nn.Module, cfg: MeasureConfig, device: torch.device, dtype: torch.dtype
                  ) -> tuple[list[Probe], dict[int, str]]:
    """:func:`probe` the model at each factor (ascending) that is estimated to fit in memory, the
    activations of a factor extrapolated from the last accepted one (in proportion to the pixels)
    before it runs, and checked with its own probe after; a factor that does not fit is an
    :class:`AdvdimError`.  Returns the probes of the accepted factors and the error of each other."""
    C, H, W = cfg.input_shape
    itemsize = torch.empty((), dtype=dtype).element_size()
    for k in cfg.factors:  # the inputs alone, before the model runs at any size
        check_size_fits(cfg.inputs, C * H * W * k * k, k, itemsize, None, device)
    probes: list[Probe] = []
    errors: dict[int, str] = {}
    for k in sorted(cfg.factors):
        d = C * H * W * k * k
        if probes:
            last = probes[-1]
            check_size_fits(cfg.inputs, d, k, itemsize, last.saved_bytes * k * k // last.factor**2, device)
        got = probe(model, cfg.input_shape, k, device, dtype)
        if isinstance(got, str):
            errors[k] = got
            continue
        check_size_fits(cfg.inputs, d, k, itemsize, got.saved_bytes, device)
        if probes and got.logits != probes[0].logits:
            raise AdvdimError(f"the model returns {probes[0].logits} logits at d = {C * H * W * probes[0].factor**2} "
                              f"but {got.logits} at d = {d}: the number of classes must not depend on the input size")
        probes.append(got)
    return probes, errors


# ---------------------------------------------------------------------------------------------
# Up-sampled inputs to one fixed model
# ---------------------------------------------------------------------------------------------
def upsample(x: torch.Tensor, k: int) -> torch.Tensor:
    """Pixel-copy up-sampling: ``(B, C, H, W)`` -> ``(B, C, kH, kW)``, each pixel a ``k x k`` block."""
    return x if k == 1 else x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def _measure_batch(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, cfg: MeasureConfig, k_out: int,
                   where: str) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, np.ndarray], int, str]:
    """Per input ``||d_x f_0||_q``, ``||d_x L||_q`` and ``||.||_2^2``, and the labels the attack changed."""
    logits = check_batch(model, x, where, k_out)
    norms, sq = {}, {}
    try:
        for target in (Target.LOGIT, Target.LOSS):
            g = input_gradient(model, x, target, 0, labels if target is Target.LOSS else None)
            check_gradient(g, target, where)
            g = g.double()
            for q in cfg.qs:
                norms[(target.value, q_text(q))] = lp_norm(g, q).cpu().numpy()
            sq[target.value] = g.reshape(g.shape[0], -1).square().sum(dim=1).cpu().numpy()
        n_vul, attack = vulnerability(model, x, cfg.eps, cfg.steps, logits.argmax(dim=1))
    except AdvdimError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model failed on the measurement's inputs
        raise AdvdimError(f"the model failed at {where}: {first_line(e)}") from None
    return norms, sq, n_vul, attack


def sample_upsampled(model: nn.Module, cfg: MeasureConfig, device: torch.device) -> Sample:
    """One model, Gaussian inputs of the base shape up-sampled by each factor (per-input norms)."""
    model = model.to(device)
    dtype = _dtype(model)
    C, H, W = cfg.input_shape
    probes, errors = probe_factors(model, cfg, device, dtype)
    factors = [p.factor for p in probes]
    notes = []
    if not factors:
        k0 = cfg.factors[0]
        which = f"inputs of shape {C}x{H}x{W}" if k0 == 1 else f"any of the up-sampled sizes of {C}x{H}x{W} asked for"
        raise AdvdimError(f"the model does not accept {which}: at factor {k0} it raised {errors[k0]}")
    if len(factors) < len(cfg.factors):
        rejected = [k for k in cfg.factors if k not in factors]
        notes.append(f"the model does not accept the up-sampling factors {rejected} (a fixed input size?): "
                     f"measured at factors {factors} only" + ("; no slope can be fitted" if len(factors) < 2 else ""))
    gen = torch.Generator().manual_seed(cfg.seed)
    x0 = torch.randn(cfg.inputs, C, H, W, generator=gen, dtype=torch.float64)
    k_out = probes[0].logits
    labels = torch.randint(0, k_out, (cfg.inputs,), generator=gen).to(device)
    cols: dict[tuple[str, str], list[np.ndarray]] = {}
    sqs: dict[str, list[np.ndarray]] = {}
    changed = []
    attack = ""
    for k in factors:
        norms, sq, n_vul, attack = _measure_batch(model, upsample(x0, k).to(device, dtype), labels, cfg, k_out,
                                                  f"d = {cfg.d_at(k)} (factor {k})")
        for key, v in norms.items():
            cols.setdefault(key, []).append(v)
        for t, v in sq.items():
            sqs.setdefault(t, []).append(v)
        changed.append(n_vul)
    values = {key: np.stack(v, axis=1) for key, v in cols.items()}
    return Sample(Setting.UPSAMPLED, factors, [cfg.d_at(k) for k in factors], values,
                  {t: np.stack(v, axis=1) for t, v in sqs.items()}, np.array([changed], dtype=np.int64), cfg.inputs,
                  attack, notes)


def theory_upsampled(model: nn.Module, cfg: MeasureConfig) -> Theory:
    """The trace and init of the fixed model (reported); no prediction for up-sampled inputs."""
    traced = trace_module(model, cfg.input_shape)
    init = None
    if isinstance(traced, Traced):
        stats = InitStats(traced.spec)
        stats.add(traced.weights(model))
        init = stats.result()
    return Theory({1: traced}, init, None, UPSAMPLED_REASON)


def upsampled_verdicts(sample: Sample, cfg: MeasureConfig) -> list[Verdict]:
    """Reported rows of the up-sampled setting: per (target, q) the slope over the inputs of one model."""
    ds, out = sample.ds, []
    C, H, W = cfg.input_shape
    for (tgt, key), mat in sample.values.items():
        name = _NAMES[tgt]
        claim = f"slope of E||d_x {name}||_{key} in d"
        series, extra = _series(tgt, key, ds, mat, sample)
        if len(ds) < 2:
            out.append(_one_size_row(tgt, key, ds[0], mat[:, 0], "inputs", extra))
            continue
        fit = fit_slope(np.asarray(ds, dtype=np.float64), mat, seed=cfg.seed)
        tol = critical(ALPHA, fit.units) * fit.se
        lx = np.log(ds)
        series["fit"] = np.exp(fit.intercept + fit.slope * lx).tolist()
        out.append(Verdict(claim, "Thm 4-5, Cor 6", None, fit.slope, (fit.slope - tol, fit.slope + tol), None,
                           f"reported, not judged: {UPSAMPLED_REASON}; {fit.n} Gaussian inputs of {C}x{H}x{W} "
                           f"up-sampled x{sample.factors}: {1 - ALPHA:.0%} interval over the inputs of this one model "
                           f"(c*se, {fit.units:.1f} effective inputs)", extra))
    return out
