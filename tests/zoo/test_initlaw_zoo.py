"""Init laws of models as torchvision and timm build them (issue 20, item 4): each layer's law
recognised from the library's own draw, and the law of those variances written into the traced spec.
Runs in the zoo venv (``make test``'s second pytest run)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torchvision
from torch import nn

from advdim.arch import Conv, Dense, Residual, Scale, Spec
from advdim.initlaw import InitGuess, InitStats, module_weights, spec_with_init, variance_ratios
from advdim.trace import Traced, trace_module


def _recognise(model: nn.Module) -> InitGuess:
    names, weights = module_weights(model)
    s = InitStats(names)
    s.add(weights)
    return s.result()


def test_torchvision_resnet18_has_he_fan_out_convs_and_a_default_fc() -> None:
    """``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` on every conv, PyTorch's default on the fc."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    guess = _recognise(model)
    assert [x.law for x in guess.layers] == ["he_fan_out"] * 20 + ["torch"], guess.reason
    assert guess.summary == "he_fan_out x20, torch x1"
    assert guess.reason.startswith("per layer: he_fan_out x20, torch x1")
    assert guess.scheme is None and guess.base == "he" and not guess.estimated
    # the stem (fan_in 147, fan_out 3136) is also within the tests of Glorot (4.5% apart): named as the other convs
    assert "conv1 consistent with he_fan_out, glorot" in guess.reason
    fans = [x.fans for x in guess.layers]
    assert [x.ratio for x in guess.layers] == pytest.approx([f[0] / f[1] for f in fans[:-1]] + [1 / 6])


def test_torchvision_resnet18_traced_gets_its_law_as_scale_layers() -> None:
    """The traced spec with the recognised variances: ``scale(sqrt(C_in / C_out))`` after each conv whose
    channels change (``sqrt(3 / 64)`` after the stem), the projections' through the block's scale,
    ``scale(sqrt(1/6))`` after the fc."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10)
    traced = trace_module(model, (3, 32, 32))
    if not isinstance(traced, Traced):
        pytest.skip(f"resnet18 is not traced here: {traced.reason}")
    s = InitStats(traced.spec)
    s.add(traced.weights(model))
    guess = s.result()
    assert guess.summary == "he_fan_out x20, torch x1"
    law = spec_with_init(traced.spec, guess)
    ratios = variance_ratios(traced.spec, guess)
    assert ratios[0] == pytest.approx(3 / 64) and ratios[-1] == pytest.approx(1 / 6)
    assert isinstance(law, Spec) and law.layers[1] == Scale(math.sqrt(3 / 64))
    assert law.layers[-1] == Scale(math.sqrt(1 / 6)) and isinstance(law.layers[-2], Dense)
    blocks = [x for x in law.layers if isinstance(x, Residual)]
    assert [b.scale for b in blocks if b.projbn] == pytest.approx([math.sqrt(2)] * 3)  # 1x1 projections: C_in/C_out
    assert sum(isinstance(x, Scale) for b in blocks for x in b.branch) == 3  # the strided first conv of each stage
    assert isinstance(law.layers[0], Conv)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vits_have_linear_layers_of_std_0_02(name: str) -> None:
    """timm's ``trunc_normal_(std=0.02)`` on every Linear (bounds +-2: no cut, bar float32's clamp of an
    infinite draw at -2, about once per 17 million weights), PyTorch's default on the patch conv."""
    torch.manual_seed(2)
    model = timm.create_model(name, pretrained=False, num_classes=10, img_size=32)
    guess = _recognise(model)
    laws = {x.layer: x.law_text() for x in guess.layers}
    assert laws.pop("patch_embed.proj") == "torch"
    assert set(laws.values()) == {"fixed_normal(std=0.02)"} and len(laws) == 49, guess.reason
    assert guess.summary == "torch x1, fixed_normal(std=0.02) x49"


def test_a_planted_variance_in_resnet18_is_estimated() -> None:
    """The same resnet18 with one conv's weights scaled by sqrt(1.3): that layer alone is estimated."""
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        model.layer3[0].conv2.weight.mul_(math.sqrt(1.3))
    guess = _recognise(model)
    assert [x.layer for x in guess.estimated] == ["layer3.0.conv2"]
    est = guess.estimated[0]
    assert est.variance / (2 / est.fans[1]) == pytest.approx(1.3, abs=5 * 1.3 * est.se)
    assert guess.reason.startswith("unknown: layer3.0.conv2")


@pytest.mark.parametrize(("make", "summary"), [
    (lambda: torchvision.models.efficientnet_b0(num_classes=10), "he_fan_out x81, uniform_fan_out x1"),
    (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), "he_fan_out x52, fixed_normal(std=0.01) x2"),
    (lambda: torchvision.models.densenet121(num_classes=10), "he x120, torch x1"),
    (lambda: timm.create_model("convnext_atto", num_classes=10), "fixed_normal(std=0.02) x41"),
    (lambda: timm.create_model("mixer_s16_224", num_classes=10, img_size=32),
     "lecun_truncated x1, xavier_uniform x32, estimated x1"),
], ids=["efficientnet_b0", "mobilenet_v3_small", "densenet121", "timm convnext_atto", "timm mixer_s16_224"])
def test_other_zoo_models_get_their_laws(make: object, summary: str) -> None:
    """EfficientNet's head ``uniform_(+-1/sqrt(out_features))``, the 0.01 heads, DenseNet's fan_in convs,
    timm's ``lecun_normal_`` stem (a normal cut at 2 std); the mixer's zero head has no law."""
    torch.manual_seed(4)
    guess = _recognise(make())  # type: ignore[operator]
    assert guess.summary == summary, guess.reason
    if "estimated" in summary:
        assert guess.no_law is not None and "every weight is 0" in guess.no_law and guess.base is None
