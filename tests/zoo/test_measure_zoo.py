"""``advdim measure`` on models built by torchvision and timm (issue 20): a row for every q, and a
planted ``d^0.1`` flagged.  Runs in the zoo venv (``make test``'s second pytest run)."""

from __future__ import annotations

import math

import pytest
import timm  # noqa: F401
import torch
import torchvision  # noqa: F401 - the zoo venv must have the real libraries
from torch import nn

from advdim import zoo
from advdim.measure import MeasureConfig, measure
from advdim.stats import CANNOT_TELL, CONSISTENT, INCONSISTENT

CPU = torch.device("cpu")
WORDS = {CONSISTENT, INCONSISTENT, CANNOT_TELL}


class _Planted(nn.Module):
    """The model's logits times ``d^0.1``: every slope moves by +0.1 (the loss rows about so)."""

    def __init__(self, model: nn.Module, d: int) -> None:
        super().__init__()
        self.model, self.factor = model, float(d) ** 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.model(x)


def _planted(factory):
    def make(input_shape):
        return _Planted(factory(input_shape), math.prod(input_shape))
    return make


def _slope_rows(m):
    return {v.claim.split(" in d")[0].removeprefix("slope of "): v
            for v in m.verdicts if v.claim.startswith("slope of")}


@pytest.mark.parametrize("name", [m.name for m in zoo.ZOO])
def test_every_zoo_factory_builds_its_library_model(name):
    model = getattr(zoo, name)((3, 32, 32)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, zoo.CLASSES)


def test_a_zero_initialised_head_is_redrawn_by_the_drawn_head_variant():
    assert not zoo.tv_vit_small((3, 32, 32)).heads.head.weight.any()  # torchvision's own init: zeros
    assert zoo.tv_vit_small_drawn_head((3, 32, 32)).heads.head.weight.any()


CFG = MeasureConfig(input_shape=(3, 32, 32), factors=(1, 2, 4), inputs=8, draws=8, steps=1, seed=0)


@pytest.mark.parametrize("factory", [zoo.tv_resnet18, zoo.timm_vit_tiny_patch16_224])
def test_measure_gives_every_q_a_verdict_and_flags_a_planted_exponent(factory):
    rows = _slope_rows(measure(factory, CFG, CPU, name=f"advdim.zoo:{factory.__name__}"))
    # f_0 and loss, q = 1, 2, inf: judged against a prediction, or a consistency word
    assert len(rows) == 6
    for claim, v in rows.items():
        assert (v.predicted is not None and v.outcome.judged) or v.extra.get("consistency") in WORDS, claim
    planted = _slope_rows(measure(_planted(factory), CFG, CPU, name=f"planted:{factory.__name__}"))
    for claim, v in planted.items():  # every slope moved by +0.1 (logit rows exactly)
        assert v.measured == pytest.approx(rows[claim].measured + 0.1, abs=0.03 if "f_0" in claim else 0.06), claim
    flagged = [c for c, v in planted.items() if v.outcome.value == "fail"]
    assert flagged, "the planted d^0.1 went unflagged"
