"""``advdim measure`` on models built by torchvision and timm (issue 20): a row for every q, and a
planted ``d^0.1`` flagged.  Runs in the zoo venv (``make test``'s second pytest run)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import timm  # noqa: F401
import torch
import torchvision  # noqa: F401 - the zoo venv must have the real libraries
from advdim.theory._tokens import CANNOT_TELL_INF

from advdim import zoo
from advdim.measure import MeasureConfig, analyse_per_size, measure, per_size_verdicts
from advdim.stats import CANNOT_TELL, CONSISTENT, INCONSISTENT

CPU = torch.device("cpu")
WORDS = {CONSISTENT, INCONSISTENT, CANNOT_TELL, CANNOT_TELL_INF}


def _planted(m, cfg: MeasureConfig, exponent: float = 0.1):
    """The same draws, every measured norm times ``d^exponent``: what a model whose logits carry a
    factor ``d^exponent`` gives on the logit rows (``(d^a f)' = d^a f'``), re-analysed by the same
    pipeline (one measurement instead of two: the real libraries' models are slow to build)."""
    sample, d = m.sample, np.asarray(m.sample.ds, dtype=np.float64)
    planted = replace(sample, values={k: v * d**exponent for k, v in sample.values.items()},
                      sq={k: v * d ** (2 * exponent) for k, v in sample.sq.items()})
    return per_size_verdicts(planted, analyse_per_size("planted", planted, m.theory, cfg))


def _slope_rows(verdicts):
    return {v.claim.split(" in d")[0].removeprefix("slope of "): v
            for v in verdicts if v.claim.startswith("slope of")}


@pytest.mark.parametrize("name", [m.name for m in zoo.ZOO])
def test_every_zoo_factory_builds_its_library_model(name):
    model = getattr(zoo, name)((3, 32, 32)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, zoo.CLASSES)


def test_a_zero_initialised_head_is_redrawn_by_the_drawn_head_variant():
    assert not zoo.tv_vit_small((3, 32, 32)).heads.head.weight.any()  # torchvision's own init: zeros
    assert zoo.tv_vit_small_drawn_head((3, 32, 32)).heads.head.weight.any()


#: sides 16, 32, 64 for resnet18 (its cost is the largest side's: 4x cheaper than 32-128); 32-256 for the
#: ViT (patch 16: 4, 16, 64, 256 tokens; its token-readout law is fitted on the last three, docs/theory.md)
CFGS = {"tv_resnet18": MeasureConfig(input_shape=(3, 16, 16), inputs=8, draws=8, steps=1, seed=0),
        "timm_vit_tiny_patch16_224": MeasureConfig(input_shape=(3, 32, 32), factors=(1, 2, 4, 8), inputs=2,
                                                   draws=64, steps=1, seed=0)}


def _flagged(v) -> bool:
    """A planted error is flagged by a FAIL, or on an exponent-only row (never a FAIL) by its word."""
    return v.outcome.value == "fail" or (v.extra.get("level") == "exponent only"
                                         and v.extra.get("consistency") == INCONSISTENT)


@pytest.mark.parametrize("name", list(CFGS))
def test_measure_gives_every_q_a_verdict_and_flags_a_planted_exponent(name):
    m = measure(getattr(zoo, name), CFGS[name], CPU, name=f"advdim.zoo:{name}")
    rows = _slope_rows(m.verdicts)
    # f_0 and loss, q = 1, 2, inf: judged against a prediction, or a consistency word
    assert len(rows) == 6
    for claim, v in rows.items():
        assert (v.predicted is not None and v.outcome.judged) or v.extra.get("consistency") in WORDS, claim
        if v.predicted is not None:  # the model follows its stated law: no FAIL
            assert v.outcome.value != "fail", (claim, v.measured, v.predicted, v.detail)
    if name.startswith("timm_vit"):  # judged against the token-readout law, not the paper's
        assert all(v.extra.get("level") == "exponent only" and v.outcome.value != "fail" for v in rows.values())
        assert not any(_flagged(v) for v in rows.values()), {c: v.detail for c, v in rows.items()}
    planted = _slope_rows(_planted(m, CFGS[name]))
    for claim, v in planted.items():  # every slope moved by exactly +0.1
        assert v.measured == pytest.approx(rows[claim].measured + 0.1, abs=1e-9), claim
    flagged = [c for c, v in planted.items() if _flagged(v)]
    assert flagged, "the planted d^0.1 went unflagged"
